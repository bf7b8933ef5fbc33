//! Live plugin sessions: processes that proved possession of their
//! plugin's current key on the connection they are reached by. A plugin
//! ID may have a pool of them (spawned instances, dialled addresses,
//! processes that connected in), each with its own proof and slots. The
//! router and executor read them before each dispatch; the host and the
//! gateway add and end them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tonic::transport::Channel;

use super::link::StreamLink;
use super::proof::Announcement;
use crate::Did;
use crate::api::proto::plugin_client::PluginClient;

/// How a session's process is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// A command the server started; dialled on its loopback address.
    Spawned,
    /// A plugin listening at an address of the server's config.
    Dialled,
    /// A plugin that dialled the server (`PluginGateway.Connect`).
    ConnectedIn,
}

impl Connection {
    /// Its name in `plugin sessions`: `spawned`, `dialled`, `connected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Connection::Spawned => "spawned",
            Connection::Dialled => "dialled",
            Connection::ConnectedIn => "connected",
        }
    }
}

/// Where attempts go: the gRPC client of a spawned or dialled plugin
/// (one connection, never re-made), or the stream of one that connected
/// in.
#[derive(Clone)]
pub enum Link {
    /// A plugin this server calls (`Plugin` service).
    Client(PluginClient<Channel>),
    /// A plugin that called this server (`PluginGateway.Connect`).
    Stream(Arc<StreamLink>),
}

/// One open session.
pub struct Session {
    /// What the plugin proved and announced.
    pub announcement: Announcement,
    /// How to send it attempts.
    pub link: Link,
    /// How it is connected.
    pub connection: Connection,
    /// Its address, for people.
    pub address: String,
    /// Attempts it runs at once; 0 for no limit announced.
    pub slots: u32,
    /// Becomes true when the session ends (crash, exit, shutdown), so
    /// attempts running on it end at once.
    pub ended: tokio::sync::watch::Receiver<bool>,
    /// Distinguishes sessions, across restarts and within a pool.
    pub generation: u64,
    /// Set when a call found the session's connection gone; its owner
    /// ends the session at once, and a new one proves the key again.
    pub lost: SessionLost,
    /// Unix ms it opened.
    pub opened_ms: u64,
    /// `Plugin.Attempts` streams its attempts go on (0: none).
    pub attempt_streams: u32,
    running: AtomicU32,
    draining: AtomicBool,
    last_health_ms: AtomicU64,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl Session {
    /// A session that opened now. `ended` turns true when it ends.
    pub fn new(
        announcement: Announcement,
        link: Link,
        connection: Connection,
        address: String,
        slots: u32,
        ended: tokio::sync::watch::Receiver<bool>,
    ) -> Session {
        let now = crate::clock::unix_ms();
        Session {
            announcement,
            link,
            connection,
            address,
            slots,
            ended,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            lost: SessionLost::default(),
            opened_ms: now,
            attempt_streams: 0,
            running: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            last_health_ms: AtomicU64::new(now),
        }
    }

    /// Attempts running on it now.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::SeqCst)
    }

    /// Whether it takes no new attempt (it is finishing its running ones
    /// before it leaves).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// It takes no new attempt from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Unix ms of its last successful health check (its opening before
    /// the first).
    pub fn last_health_ms(&self) -> u64 {
        self.last_health_ms.load(Ordering::Acquire)
    }

    /// Records a successful health check.
    pub fn healthy(&self) {
        self.last_health_ms
            .store(crate::clock::unix_ms(), Ordering::Release);
    }

    /// Whether it may be sent new attempts: its connection is not known
    /// to be gone and it is not draining.
    pub fn takes_attempts(&self) -> bool {
        !self.lost.is_set() && !self.draining()
    }

    /// Takes one of its slots, if one is free.
    fn take_slot(&self) -> bool {
        self.running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (self.slots == 0 || n < self.slots).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a slot taken by [`Sessions::take`].
    pub fn release_slot(&self) {
        let _ = self
            .running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Slots free now (`u32::MAX` without a limit).
    fn free(&self) -> u32 {
        if self.slots == 0 {
            u32::MAX
        } else {
            self.slots.saturating_sub(self.running())
        }
    }
}

/// The signal that a session's connection is gone.
#[derive(Default)]
pub struct SessionLost {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl SessionLost {
    /// Marks the connection gone and wakes the session's owner.
    pub fn set(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Whether the connection is known to be gone.
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Resolves once the connection is known to be gone.
    pub async fn wait(&self) {
        while !self.is_set() {
            self.notify.notified().await;
        }
    }
}

/// A refused session proof, as `plugin sessions` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedProof {
    /// The plugin ID the process claimed (as sent, when it did not parse).
    pub plugin: String,
    /// Where the process was.
    pub address: String,
    /// The refusal code (spec/plugin.md, "Verifying a proof").
    pub code: String,
    /// For people.
    pub message: String,
    /// Unix ms.
    pub at_ms: u64,
}

/// Refused proofs logged per second, at most.
const REFUSAL_LOGS_PER_SECOND: u32 = 10;
/// Refused proofs remembered (the latest per claimed plugin ID); the
/// oldest is forgotten first, so strangers cannot grow the list.
const MAX_REFUSALS: usize = 1_000;
/// Longest claimed plugin ID kept with a refusal, bytes (a did:key is 56).
const MAX_REFUSAL_ID_BYTES: usize = 128;
/// Longest refusal message kept, bytes.
const MAX_REFUSAL_MESSAGE_BYTES: usize = 1_024;

/// The sessions open now, pooled by plugin ID, and the last refused
/// proof per plugin.
#[derive(Default)]
pub struct Sessions {
    map: RwLock<HashMap<Did, Vec<Arc<Session>>>>,
    refusals: Mutex<HashMap<String, RefusedProof>>,
    /// (second, refusals logged in it).
    refusal_log: Mutex<(u64, u32)>,
}

impl Sessions {
    /// The plugin's sessions (live, draining or lost), oldest first.
    pub fn pool(&self, plugin: &Did) -> Vec<Arc<Session>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(plugin)
            .cloned()
            .unwrap_or_default()
    }

    /// Takes a slot on the least loaded session of `plugin` that proved
    /// `key`, takes attempts, and serves the handler with this ID and
    /// name; `None` if every such session is full (or there is none).
    pub fn take(&self, plugin: &Did, key: &Did, handler: &Did, name: &str) -> Option<Arc<Session>> {
        let mut pool: Vec<Arc<Session>> = self
            .pool(plugin)
            .into_iter()
            .filter(|s| {
                s.takes_attempts()
                    && s.announcement.key == *key
                    && s.announcement.serves(handler, name)
            })
            .collect();
        // Most free slots first; on a tie, fewest running.
        pool.sort_by_key(|s| (std::cmp::Reverse(s.free()), s.running()));
        // A session may start draining between the filter and the slot.
        // Its owner ends a draining session once it sees no attempt
        // running; so a slot taken is checked again after it is taken (both
        // sides sequentially consistent: one of them sees the other), and
        // given back if the session drains now: the attempt then holds
        // instead of landing on a session about to end.
        pool.into_iter().find(|s| {
            if !s.take_slot() {
                return false;
            }
            if s.takes_attempts() {
                return true;
            }
            s.release_slot();
            false
        })
    }

    /// How many attempts the plugin's sessions that take attempts run at
    /// once together; `None` if one of them announced no limit.
    pub fn capacity(&self, plugin: &Did) -> Option<u32> {
        let mut total = 0u32;
        for s in self.pool(plugin).iter().filter(|s| s.takes_attempts()) {
            if s.slots == 0 {
                return None;
            }
            total = total.saturating_add(s.slots);
        }
        Some(total)
    }

    /// Opens a session, next to the plugin's others.
    pub fn open(&self, session: Arc<Session>) {
        let plugin = session.announcement.plugin.clone();
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(plugin)
            .or_default()
            .push(session);
    }

    /// Ends the plugin's session `generation`.
    pub fn close(&self, plugin: &Did, generation: u64) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = map.get_mut(plugin) {
            if let Some(s) = pool.iter().find(|s| s.generation == generation) {
                tracing::info!(
                    id = %plugin,
                    session = generation,
                    connection = s.connection.as_str(),
                    address = %s.address,
                    "plugin session closed"
                );
            }
            pool.retain(|s| s.generation != generation);
            if pool.is_empty() {
                map.remove(plugin);
            }
        }
    }

    /// Every open session, by plugin then age.
    pub fn all(&self) -> Vec<Arc<Session>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<Arc<Session>> = map.values().flatten().cloned().collect();
        all.sort_by(|a, b| {
            (a.announcement.plugin.to_string(), a.generation)
                .cmp(&(b.announcement.plugin.to_string(), b.generation))
        });
        all
    }

    /// How many are open, over every pool.
    pub fn len(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers a refused proof (the latest per claimed plugin ID). The
    /// claimed ID and the message come from a stranger: they are cut, so
    /// the list stays small whatever was sent.
    pub fn refused(&self, mut refusal: RefusedProof) {
        refusal.plugin = crate::pulse::cut_text(refusal.plugin, MAX_REFUSAL_ID_BYTES);
        refusal.message = crate::pulse::cut_text(refusal.message, MAX_REFUSAL_MESSAGE_BYTES);
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        // Logged, but strangers choose how often: at most
        // REFUSAL_LOGS_PER_SECOND lines a second, the rest only kept.
        let second = refusal.at_ms / 1000;
        let mut log = self.refusal_log.lock().unwrap_or_else(|p| p.into_inner());
        if log.0 != second {
            *log = (second, 0);
        }
        if log.1 < REFUSAL_LOGS_PER_SECOND {
            log.1 += 1;
            tracing::warn!(
                id = %refusal.plugin.escape_debug(),
                address = %refusal.address,
                code = %refusal.code,
                message = %refusal.message.escape_debug(),
                "plugin session refused"
            );
        }
        drop(log);
        if r.len() >= MAX_REFUSALS && !r.contains_key(&refusal.plugin) {
            if let Some(oldest) = r.values().min_by_key(|x| x.at_ms).map(|x| x.plugin.clone()) {
                r.remove(&oldest);
            }
        }
        r.insert(refusal.plugin.clone(), refusal);
    }

    /// The last refused proof per plugin, newest first.
    pub fn refusals(&self) -> Vec<RefusedProof> {
        let r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<RefusedProof> = r.values().cloned().collect();
        all.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then(a.plugin.cmp(&b.plugin)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(plugin: String, at_ms: u64) -> RefusedProof {
        RefusedProof {
            plugin,
            address: "peer".into(),
            code: "bad_proof".into(),
            message: "x".repeat(100_000),
            at_ms,
        }
    }

    #[test]
    fn refusals_from_strangers_stay_bounded() {
        let s = Sessions::default();
        // A huge claimed ID and message are cut.
        s.refused(refusal("p".repeat(1_000_000), 1));
        let r = &s.refusals()[0];
        assert!(r.plugin.len() <= MAX_REFUSAL_ID_BYTES, "{}", r.plugin.len());
        assert!(r.message.len() <= MAX_REFUSAL_MESSAGE_BYTES);
        // Many claimed IDs: the oldest go, the count stays at the bound.
        for i in 0..(MAX_REFUSALS as u64 + 50) {
            s.refused(refusal(format!("did:key:z{i}"), 10 + i));
        }
        let all = s.refusals();
        assert_eq!(all.len(), MAX_REFUSALS);
        assert_eq!(
            all[0].plugin,
            format!("did:key:z{}", MAX_REFUSALS as u64 + 49)
        );
        // The same plugin again replaces its own entry.
        s.refused(refusal(
            format!("did:key:z{}", MAX_REFUSALS as u64 + 49),
            99_999,
        ));
        assert_eq!(s.refusals().len(), MAX_REFUSALS);
    }
}
