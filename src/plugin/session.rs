//! Live plugin sessions: a plugin that proved possession of its current
//! key, with the client to reach it. The router reads them before each
//! dispatch; the host adds and ends them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tonic::transport::Channel;

use super::proof::Announcement;
use crate::Did;
use crate::api::proto::plugin_client::PluginClient;

/// One open session.
pub struct Session {
    /// What the plugin proved and announced.
    pub announcement: Announcement,
    /// Its gRPC client (cheap to clone: one HTTP/2 connection).
    pub client: PluginClient<Channel>,
    /// Becomes true when the session ends (crash, exit, shutdown), so
    /// attempts running on it end at once.
    pub ended: tokio::sync::watch::Receiver<bool>,
    /// Distinguishes sessions of one plugin across restarts.
    pub generation: u64,
    /// Set when a call found the session's connection gone; the host
    /// ends the session at once and proves the key again on a new one.
    pub lost: SessionLost,
}

/// The signal that a session's connection is gone.
#[derive(Default)]
pub struct SessionLost {
    flag: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl SessionLost {
    /// Marks the connection gone and wakes the session's host.
    pub fn set(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_one();
    }

    /// Whether the connection is known to be gone.
    pub fn is_set(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once the connection is known to be gone.
    pub async fn wait(&self) {
        while !self.is_set() {
            self.notify.notified().await;
        }
    }
}

/// The sessions open now, by plugin ID.
#[derive(Default)]
pub struct Sessions {
    map: RwLock<HashMap<Did, Arc<Session>>>,
}

impl Sessions {
    /// The plugin's session, if one is open and its connection is not
    /// known to be gone.
    pub fn get(&self, plugin: &Did) -> Option<Arc<Session>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(plugin)
            .filter(|s| !s.lost.is_set())
            .cloned()
    }

    /// Opens (or replaces) the plugin's session.
    pub fn open(&self, session: Arc<Session>) {
        let plugin = session.announcement.plugin.clone();
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(plugin, session);
    }

    /// Ends the plugin's session if it is still `generation`.
    pub fn close(&self, plugin: &Did, generation: u64) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.get(plugin).is_some_and(|s| s.generation == generation) {
            map.remove(plugin);
        }
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
