//! The fjall-backed ledger: verify, then append atomically with group
//! commit; reads, proofs and the full audit.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use ed25519_dalek::SigningKey;

use super::checkpoint::{Checkpoint, is_valid_origin, verify_checkpoint};
use super::error::{LedgerError, LedgerErrorCode};
use super::layout::{
    Ks, META_CHECKPOINT, META_ORIGIN, META_SIZE, SubjectRecord, chain_key, name_key, node_key,
    plugin_key, read_u64, u64_key,
};
use super::merkle::{self, Frontier, Hash, NodeSource};
use super::view::{Snap, View};
pub use super::writer::PendingAppend;
use super::writer::{Job, block_on, writer_loop};
use crate::keyfile;
use crate::storage::{FjallBackend, FjallOptions, Snapshot, Space, Storage};
use crate::{AttestationId, ChainHead, ChainState, Did, Family, Schema, verify_attestation};

/// Most attestations committed under one fsync.
const DEFAULT_MAX_BATCH: usize = 1024;
/// Queue depth in front of the writer (groups of appends): beyond it
/// [`Ledger::enqueue`] answers `overloaded` at once and [`Ledger::append`]
/// waits.
pub const DEFAULT_WRITE_QUEUE_DEPTH: usize = 4096;

/// How to open a ledger.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Directory holding the fjall database (`db/`) and the log key
    /// (`log.key`); created if missing.
    pub data_dir: PathBuf,
    /// The log's name: the first line of its checkpoints and the key name
    /// of their signature. Fixed when the data directory is created.
    pub origin: String,
    /// Most attestations committed under one fsync.
    pub max_batch: usize,
    /// Writes are refused (`disk_full`) while the data dir's file system
    /// has less than this free; 0 turns the guard off.
    pub min_free_bytes: u64,
    /// Appends to the log are refused this much earlier than other writes
    /// (jobs): the log's reserve is `min_free_bytes` plus this, so appends,
    /// which anyone may make, cannot take the room jobs need.
    pub log_reserve_bytes: u64,
    /// Groups of appends queued for the writer at most; beyond it
    /// [`Ledger::enqueue`] answers `overloaded` instead of waiting.
    pub queue_depth: usize,
}

impl LedgerConfig {
    /// A configuration with the default batch size.
    pub fn new(data_dir: impl Into<PathBuf>, origin: impl Into<String>) -> LedgerConfig {
        LedgerConfig {
            data_dir: data_dir.into(),
            origin: origin.into(),
            max_batch: DEFAULT_MAX_BATCH,
            min_free_bytes: super::DEFAULT_MIN_FREE_BYTES,
            log_reserve_bytes: super::DEFAULT_LOG_RESERVE_BYTES,
            queue_depth: DEFAULT_WRITE_QUEUE_DEPTH,
        }
    }
}

/// The newest signed tree head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    /// Number of entries.
    pub size: u64,
    /// Merkle root of those entries.
    pub root: Hash,
    /// The signed checkpoint note for exactly this size and root.
    pub checkpoint: String,
}

/// What an accepted append returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The entry's log index.
    pub index: u64,
    /// The attestation's ID.
    pub id: AttestationId,
    /// True if the attestation was already in the log (nothing was written).
    pub duplicate: bool,
    /// A signed tree head that includes the entry.
    pub head: TreeHead,
}

/// Stored evidence that a key signed two histories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EquivocationRecord {
    /// The subject.
    pub subject: Did,
    /// The seq both statements claim.
    pub seq: u64,
    /// Log index of the statement in the log.
    pub logged_index: u64,
    /// The rejected, conflicting envelope.
    pub rejected: Vec<u8>,
}

/// A filter for [`Ledger::list_subjects`].
#[derive(Debug, Clone, Default)]
pub struct SubjectFilter {
    /// Handlers or plugins (default: handlers).
    pub family: Option<Family>,
    /// Only names starting with this.
    pub name_prefix: String,
    /// Only handlers bound to this plugin.
    pub plugin: Option<Did>,
    /// Include revoked subjects.
    pub include_revoked: bool,
}

/// Largest page of a listing.
pub const MAX_PAGE: usize = 1000;
/// A page of a subject's chain: (log index, envelope) in seq order, and
/// the seq to continue from if the chain goes on.
pub type ChainPage = (Vec<(u64, Vec<u8>)>, Option<u64>);

/// Index keys examined by one listing call at most.
pub const MAX_SCAN: usize = 10_000;
/// Envelope bytes per chain page, about.
pub(super) const CHAIN_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest range of entries returned at once.
pub const MAX_ENTRY_RANGE: u64 = 1000;

pub(super) struct Shared {
    pub(super) storage: Storage,
    pub(super) ks: Vec<Space>,
    pub(super) origin: String,
    pub(super) log_key: SigningKey,
    pub(super) log_did: Did,
    /// The newest signed head, and while a group is being committed a
    /// snapshot of the state at that head. The writer takes the write lock
    /// only to swap these, never across a commit: reads never wait for an
    /// fsync.
    pub(super) published: RwLock<Published>,
    /// Set after a failed commit: the ledger refuses writes (fail-stop).
    pub(super) failed: Mutex<Option<String>>,
    /// Refuses writes while the disk is nearly full.
    /// The log's free-space guard (appends).
    pub(super) space: super::SpaceGuard,
    /// The guard of other writes to this data dir (the job store).
    jobs_space: super::SpaceGuard,
    /// The committed tree size, for watchers (`WatchEntries`).
    pub(super) size_tx: tokio::sync::watch::Sender<u64>,
    /// The subjects of recent entries, for caches of chain state.
    pub(super) changes: Mutex<ChangeLog>,
    /// Group commits refused because another node sharing the store
    /// appended first (each was decided again).
    pub(super) lost_races: std::sync::atomic::AtomicU64,
}

/// The signed head readers see.
pub(super) struct Published {
    pub(super) head: TreeHead,
    /// A snapshot of the state at `head`, taken before the group being
    /// committed wrote anything, and held only while that commit is in
    /// flight (or for good after a failed one: the ledger is then
    /// fail-stopped and the failed group must stay invisible). Otherwise
    /// `None`, and a reader snapshots the database itself, which is then
    /// exactly the state at `head`. Holding no snapshot between commits
    /// lets fjall drop old versions of everything (the job store's too).
    pub(super) in_commit: Option<Snapshot>,
    /// Counts the writer's commits begun and heads published: a read that
    /// saw no change of it saw exactly the head's state.
    pub(super) generation: u64,
}

/// Subjects of the most recent entries, oldest first: `subjects[i]` is
/// the subject of entry `start + i`. Bounded; older changes are dropped.
pub(super) struct ChangeLog {
    pub(super) start: u64,
    pub(super) subjects: std::collections::VecDeque<[u8; 32]>,
}

/// Entries whose subjects [`Ledger::changed_since`] remembers.
pub const CHANGE_LOG_ENTRIES: usize = 65_536;

impl Shared {
    pub(super) fn ks(&self, k: Ks) -> &Space {
        &self.ks[k as usize]
    }

    /// The newest signed head.
    pub(super) fn head(&self) -> TreeHead {
        self.published
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .head
            .clone()
    }

    /// The newest signed head and a snapshot of the state at it. Only this
    /// writer writes the log's keyspaces, and it marks a commit in flight
    /// (under the write lock) before writing anything, so a snapshot
    /// taken under the read lock with no commit in flight is exactly the
    /// head's state.
    /// The published head, the snapshot of a commit in flight if there is
    /// one, and the generation (see [`Published::generation`]).
    pub(super) fn optimistic_read_point(&self) -> (TreeHead, Option<Snapshot>, u64) {
        let p = self.published.read().unwrap_or_else(|p| p.into_inner());
        (p.head.clone(), p.in_commit.clone(), p.generation)
    }

    /// See [`Published::generation`].
    pub(super) fn generation(&self) -> u64 {
        self.published
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    pub(super) fn read_point(&self) -> Result<(TreeHead, Snapshot), LedgerError> {
        let p = self.published.read().unwrap_or_else(|p| p.into_inner());
        let snap = match &p.in_commit {
            Some(s) => s.clone(),
            None => self
                .storage
                .snapshot()
                .map_err(|e| LedgerError::storage("snapshot", e))?,
        };
        Ok((p.head.clone(), snap))
    }

    /// Marks a commit in flight: readers use a snapshot of the state
    /// before it until [`Shared::publish`].
    pub(super) fn begin_commit(&self) -> Result<(), LedgerError> {
        let snap = self
            .storage
            .snapshot()
            .map_err(|e| LedgerError::storage("snapshot", e))?;
        let mut p = self.published.write().unwrap_or_else(|p| p.into_inner());
        p.in_commit = Some(snap);
        p.generation += 1;
        Ok(())
    }

    /// Ends the commit in flight: `head`, just committed, is what readers
    /// see from now on. After a failed commit (`None`) readers keep the
    /// snapshot from before it.
    pub(super) fn publish(&self, head: Option<TreeHead>) {
        let mut p = self.published.write().unwrap_or_else(|p| p.into_inner());
        if let Some(head) = head {
            p.head = head;
            p.in_commit = None;
            p.generation += 1;
        }
    }

    /// Forgets the snapshot of a commit that failed (on a store that goes
    /// on after one), so readers read the store itself again.
    pub(super) fn drop_commit_snapshot(&self) {
        let mut p = self.published.write().unwrap_or_else(|p| p.into_inner());
        p.in_commit = None;
        p.generation += 1;
    }

    pub(super) fn get(&self, k: Ks, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        self.ks(k)
            .get(key)
            .map_err(|e| LedgerError::storage("read", e))
    }
}

/// A stored tree node's hash, or `integrity` if it is missing or not 32
/// bytes.
pub(super) fn stored_node(
    value: Option<Vec<u8>>,
    level: u8,
    index: u64,
) -> Result<Hash, LedgerError> {
    let v = value.ok_or_else(|| {
        LedgerError::new(
            LedgerErrorCode::Integrity,
            format!("tree node at level {level} index {index} is missing"),
        )
    })?;
    v.as_slice()
        .try_into()
        .map_err(|_| LedgerError::new(LedgerErrorCode::Integrity, "a tree node is not 32 bytes"))
}

impl NodeSource for Shared {
    fn node(&self, level: u8, index: u64) -> Result<Hash, LedgerError> {
        stored_node(self.get(Ks::Nodes, &node_key(level, index))?, level, index)
    }
}

/// An append-only, verified attestation log in one fjall database.
///
/// Appends verify the attestation in the caller's thread, then queue for a
/// single writer that checks chain rules against the stored heads and
/// commits many appends under one fsync. Reads go straight to fjall.
pub struct Ledger {
    shared: Arc<Shared>,
    /// The writer's queue; shared with the thread that follows other
    /// nodes' appends, which asks the writer to read the head again.
    queue: Arc<Mutex<Option<SyncSender<Vec<Job>>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// The names of the storage spaces the ledger keeps (for copying a store).
pub fn space_names() -> Vec<&'static str> {
    Ks::ALL.iter().map(|k| k.name()).collect()
}

impl Ledger {
    /// Opens (or creates) the ledger in `config.data_dir`. Start-up reads
    /// O(log n) tree nodes; it does not replay history.
    ///
    /// # Errors
    /// `config` for a bad origin, a foreign data dir or an unusable key file;
    /// `integrity` if the stored tree head does not match the newest signed
    /// checkpoint; `storage` for I/O failures.
    pub fn open(config: LedgerConfig) -> Result<Ledger, LedgerError> {
        let cfg_err = |m: String| LedgerError::new(LedgerErrorCode::Config, m);
        if !is_valid_origin(&config.origin) {
            return Err(cfg_err(format!(
                "log name {:?} must be 1-255 printable ASCII characters without spaces or '+'",
                config.origin
            )));
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| cfg_err(format!("{}: {e}", config.data_dir.display())))?;
        let backend = FjallBackend::open(&config.data_dir.join("db"), FjallOptions::default())
            .map_err(|e| LedgerError::storage("opening the database", e))?;
        let key_path = config.data_dir.join("log.key");
        Ledger::open_on(Storage::new(backend), &key_path, config)
    }

    /// Opens (or creates) the ledger on `storage`, with the log's signing
    /// key in `key_path` (created with a new log, required afterwards).
    /// `config.data_dir` names the place in messages and is the directory
    /// the free-space guards watch.
    ///
    /// # Errors
    /// As [`Ledger::open`].
    pub fn open_on(
        storage: Storage,
        key_path: &Path,
        config: LedgerConfig,
    ) -> Result<Ledger, LedgerError> {
        let cfg_err = |m: String| LedgerError::new(LedgerErrorCode::Config, m);
        if !is_valid_origin(&config.origin) {
            return Err(cfg_err(format!(
                "log name {:?} must be 1-255 printable ASCII characters without spaces or '+'",
                config.origin
            )));
        }
        let ks = Ks::ALL
            .iter()
            .map(|k| storage.space(k.name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LedgerError::storage("opening keyspaces", e))?;
        // Entries, tree nodes and the ID and chain indexes are written once
        // and never changed (append only): safe to keep in memory even on a
        // store other nodes write.
        for k in [Ks::Entries, Ks::Nodes, Ks::ById, Ks::Chains] {
            storage.declare_write_once(&ks[k as usize]);
        }
        // In one read: on a store other nodes share, one may commit
        // between two reads, and a size from before its commit with a
        // checkpoint from after would look like a store that contradicts
        // itself.
        let meta = &ks[Ks::Meta as usize];
        let [stored_origin, size, note]: [Option<Vec<u8>>; 3] = storage
            .get_many(&[
                (meta, META_ORIGIN),
                (meta, META_SIZE),
                (meta, META_CHECKPOINT),
            ])
            .map_err(|e| LedgerError::storage("read", e))?
            .try_into()
            .map_err(|_| {
                LedgerError::new(
                    LedgerErrorCode::Integrity,
                    "a read of three keys gave another count",
                )
            })?;
        let size = match size {
            Some(v) => read_u64(&v)?,
            None => 0,
        };
        if let Some(o) = &stored_origin {
            if o.as_slice() != config.origin.as_bytes() {
                return Err(cfg_err(format!(
                    "{} holds the log {:?}, not {:?}: a log's name is fixed when it is created",
                    config.data_dir.display(),
                    String::from_utf8_lossy(o),
                    config.origin
                )));
            }
        }
        // The log key exists exactly when the log does: a data dir with a
        // checkpoint but no key is refused, never given a new key.
        let (log_key, log_did) = load_or_create_key(key_path, note.is_none())?;
        let placeholder = Published {
            head: TreeHead {
                size: 0,
                root: merkle::empty_root(),
                checkpoint: String::new(),
            },
            in_commit: None,
            generation: 0,
        };
        let shared = Arc::new(Shared {
            storage,
            ks,
            origin: config.origin.clone(),
            log_key,
            log_did,
            published: RwLock::new(placeholder),
            failed: Mutex::new(None),
            space: super::SpaceGuard::new(
                &config.data_dir,
                match config.min_free_bytes {
                    0 => 0,
                    m => m.saturating_add(config.log_reserve_bytes),
                },
            ),
            jobs_space: super::SpaceGuard::new(&config.data_dir, config.min_free_bytes),
            size_tx: tokio::sync::watch::Sender::new(size),
            changes: Mutex::new(ChangeLog {
                start: size,
                subjects: std::collections::VecDeque::new(),
            }),
            lost_races: std::sync::atomic::AtomicU64::new(0),
        });
        let frontier = Frontier::load(&*shared, size)?;
        let head = match note {
            Some(note) => {
                let text = String::from_utf8(note).map_err(|_| {
                    LedgerError::new(LedgerErrorCode::Integrity, "stored checkpoint is not UTF-8")
                })?;
                let cp = verify_checkpoint(&text, &shared.log_did).map_err(|e| {
                    LedgerError::new(
                        LedgerErrorCode::Integrity,
                        format!("the stored checkpoint does not verify with this data dir's log key: {e}"),
                    )
                })?;
                if cp.origin != config.origin {
                    return Err(cfg_err(format!(
                        "the stored checkpoint is for the log {:?}, not {:?}",
                        cp.origin, config.origin
                    )));
                }
                if cp.size != size || cp.root != frontier.root() {
                    return Err(LedgerError::new(
                        LedgerErrorCode::Integrity,
                        format!(
                            "stored tree (size {size}, root {}) does not match the newest signed checkpoint (size {}, root {}); refusing to serve",
                            hex::encode(frontier.root()),
                            cp.size,
                            hex::encode(cp.root)
                        ),
                    ));
                }
                TreeHead {
                    size,
                    root: cp.root,
                    checkpoint: text,
                }
            }
            None if size == 0 => {
                // A new log: sign and store the empty tree's checkpoint so a
                // signed head exists from the first moment.
                let cp = Checkpoint {
                    origin: config.origin.clone(),
                    size: 0,
                    root: merkle::empty_root(),
                };
                let text = cp.sign(&shared.log_key);
                let mut b = shared.storage.batch();
                b.insert(shared.ks(Ks::Meta), META_ORIGIN, config.origin.as_bytes());
                b.insert(shared.ks(Ks::Meta), META_SIZE, u64_key(0));
                b.insert(shared.ks(Ks::Meta), META_CHECKPOINT, text.as_bytes());
                // Nodes sharing a new store start together: one creates
                // the log, and the others open what it created.
                b.expect(shared.ks(Ks::Meta), META_CHECKPOINT, None);
                match shared.storage.commit(b) {
                    Err(e) if e.is_conflict() => {
                        let storage = shared.storage.clone();
                        drop(shared);
                        return Ledger::open_on(storage, key_path, config);
                    }
                    other => other.map_err(|e| LedgerError::storage("initialising the log", e))?,
                }
                TreeHead {
                    size: 0,
                    root: cp.root,
                    checkpoint: text,
                }
            }
            None => {
                return Err(LedgerError::new(
                    LedgerErrorCode::Integrity,
                    format!("the log has {size} entries but no signed checkpoint"),
                ));
            }
        };
        shared.publish(Some(head));
        let (tx, rx) = sync_channel::<Vec<Job>>(config.queue_depth.max(1));
        let writer_shared = Arc::clone(&shared);
        let max_batch = config.max_batch.max(1);
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer_loop(&writer_shared, &rx, frontier, max_batch))
            .map_err(|e| LedgerError::storage("starting the writer thread", e))?;
        let queue = Arc::new(Mutex::new(Some(tx)));
        if let Some(notices) = shared.storage.notices() {
            follow_other_nodes(notices, size, Arc::clone(&queue))?;
        }
        Ok(Ledger {
            shared,
            queue,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Why the ledger stopped accepting writes (a failed commit: storage
    /// is in an unknown state until a restart), or `None` while it writes.
    pub fn write_failure(&self) -> Option<String> {
        self.shared
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Ok while the data dir has the jobs' free-space reserve.
    ///
    /// # Errors
    /// `disk_full`, with the free and reserved bytes.
    pub fn space_check(&self) -> Result<(), LedgerError> {
        self.shared.jobs_space.check()
    }

    /// The free-space guard other writes to this data dir (jobs) go
    /// through: the log's own reserve is larger.
    pub(crate) fn space_guard(&self) -> &super::SpaceGuard {
        &self.shared.jobs_space
    }

    /// The storage the log lives in, for the job store's spaces.
    pub(crate) fn storage(&self) -> &Storage {
        &self.shared.storage
    }

    /// The log's own key, whose signature is on every checkpoint.
    pub fn log_did(&self) -> &Did {
        &self.shared.log_did
    }

    /// The log's name (checkpoint origin).
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// A receiver of the committed tree size, updated after every commit:
    /// wait on it to follow the log as it grows.
    pub fn watch_size(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.size_tx.subscribe()
    }

    /// The committed tree size (cheaper than [`Ledger::head`]).
    pub fn size(&self) -> u64 {
        *self.shared.size_tx.borrow()
    }

    /// Group commits this node lost to another node sharing the store
    /// (each was decided again on the new head).
    pub fn lost_races(&self) -> u64 {
        self.shared
            .lost_races
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The log size the store holds now, read from it: on a store several
    /// nodes share, this node's [`Ledger::size`] may trail it by the
    /// moments until it hears of the others' appends.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn stored_size(&self) -> Result<u64, LedgerError> {
        match self.shared.get(Ks::Meta, META_SIZE)? {
            Some(v) => read_u64(&v),
            None => Ok(0),
        }
    }

    /// The subject keys of entries `from..` (the current size), in log
    /// order, with the size they run up to; `None` if entries that old are
    /// no longer remembered (at most [`CHANGE_LOG_ENTRIES`] are), so a
    /// cache must then start over. For caches of chain state: a subject
    /// not listed has not changed since `from`.
    pub fn changed_since(&self, from: u64) -> Option<(Vec<[u8; 32]>, u64)> {
        let log = self
            .shared
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let end = log.start + log.subjects.len() as u64;
        if from < log.start || from > end {
            return None;
        }
        let skip = (from - log.start) as usize;
        Some((log.subjects.iter().skip(skip).copied().collect(), end))
    }

    /// The newest signed tree head. Never waits for a commit.
    pub fn head(&self) -> TreeHead {
        self.shared.head()
    }

    /// Verifies and appends one attestation. Returns once the entry is
    /// fsynced, with a signed tree head that includes it. Re-submitting an
    /// attestation already in the log returns its existing index. Blocks
    /// this thread (also while the writer's queue is full): for threads
    /// that may block, never an async worker.
    ///
    /// # Errors
    /// `Rejected` with the spec code for an attestation or chain rule (nothing
    /// stored); `Equivocation` for a second history signed by the same key
    /// (the pair is stored as evidence); `storage` / `unavailable` if the disk
    /// failed (nothing acknowledged).
    pub fn append(&self, envelope: &[u8]) -> Result<Receipt, LedgerError> {
        let att = verify_attestation(envelope)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.sender()?
            .send(vec![Job { att, reply }])
            .map_err(|_| unavailable())?;
        PendingAppend { answer }.wait()
    }

    fn sender(&self) -> Result<SyncSender<Vec<Job>>, LedgerError> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(unavailable)
    }

    /// Verifies an attestation and queues it for the writer without
    /// waiting for the commit. Attestations queued one after another are
    /// decided in that order (so a chain can be streamed), and share group
    /// commits. [`PendingAppend::wait`] gives the same result as
    /// [`Ledger::append`].
    ///
    /// Never blocks, so it may be called from an async worker: when the
    /// writer's queue is full (a slow or stalled disk) it answers
    /// `overloaded` at once, and nothing is queued.
    ///
    /// # Errors
    /// `Rejected` if the attestation does not verify; `overloaded`;
    /// `unavailable`.
    pub fn enqueue(&self, envelope: &[u8]) -> Result<PendingAppend, LedgerError> {
        let att = verify_attestation(envelope)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        match self.sender()?.try_send(vec![Job { att, reply }]) {
            Ok(()) => Ok(PendingAppend { answer }),
            Err(TrySendError::Full(_)) => Err(LedgerError::new(
                LedgerErrorCode::Overloaded,
                "the writer's queue is full (the disk is slower than the appends); \
                 nothing was queued: retry after a short wait",
            )),
            Err(TrySendError::Disconnected(_)) => Err(unavailable()),
        }
    }

    /// Appends several attestations as one unit of work: they reach the
    /// writer together and, up to the batch size, share one group commit.
    /// Results are in input order; each is what [`Ledger::append`] would
    /// return for it, judged after the ones before it.
    pub fn append_batch<B: AsRef<[u8]>>(
        &self,
        envelopes: &[B],
    ) -> Vec<Result<Receipt, LedgerError>> {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut jobs = Vec::new();
        let mut answers = Vec::new();
        for envelope in envelopes {
            match verify_attestation(envelope.as_ref()) {
                Ok(att) => {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    jobs.push(Job { att, reply });
                    answers.push(Ok(answer));
                }
                Err(e) => answers.push(Err(LedgerError::Rejected(e))),
            }
        }
        let sent = !jobs.is_empty() && queue.is_some_and(|q| q.send(jobs).is_ok());
        answers
            .into_iter()
            .map(|a| match a {
                Ok(rx) if sent => block_on(rx).map_err(|_| unavailable())?,
                Ok(_) => Err(unavailable()),
                Err(e) => Err(e),
            })
            .collect()
    }

    /// The envelope at `index`.
    ///
    /// # Errors
    /// `index_out_of_range` beyond the signed tree size.
    pub fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        self.reach(index.saturating_add(1));
        self.read(|v| v.entry(index))
    }

    /// Entries `start .. end` (end capped at the tree size and at
    /// `start + MAX_ENTRY_RANGE`), in order.
    ///
    /// # Errors
    /// `index_out_of_range` if `start` is beyond the tree size.
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, LedgerError> {
        self.reach(start.saturating_add(1));
        self.read(|v| v.entries(start, end))
    }

    /// [`Self::entries`], but stopping before the entry that would take
    /// the envelopes read past `max_bytes` (at least one entry is read when
    /// any is in range): what a server reads for one client is bounded in
    /// bytes, not only in entries.
    ///
    /// # Errors
    /// As [`Self::entries`].
    pub fn entries_within(
        &self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, LedgerError> {
        self.reach(start.saturating_add(1));
        self.read(|v| v.entries_within(start, end, max_bytes))
    }

    /// The log index of an attestation.
    ///
    /// # Errors
    /// `not_found` if it is not in the log.
    pub fn index_of(&self, id: &AttestationId) -> Result<u64, LedgerError> {
        self.read(|v| v.index_of(id))
    }

    /// The stored record of a subject.
    ///
    /// # Errors
    /// `not_found` if no statement about it is in the log.
    pub fn subject(&self, subject: &Did) -> Result<SubjectRecord, LedgerError> {
        self.read(|v| v.subject(subject))
    }

    /// The subject's full current state, schema included.
    ///
    /// # Errors
    /// As [`Ledger::subject`]; `integrity` if the schema entry is unreadable.
    pub fn subject_state(&self, subject: &Did) -> Result<ChainState, LedgerError> {
        self.read(|v| v.subject_state(subject))
    }

    /// The log index of each of a subject's statements, by seq.
    ///
    /// # Errors
    /// `not_found` if the subject is unknown.
    pub fn statement_indexes(&self, subject: &Did) -> Result<Vec<u64>, LedgerError> {
        self.read(|v| v.statement_indexes(subject))
    }

    /// A subject's statements from seq `from_seq` on, in order, with their
    /// log indexes: at most `limit` (≤ [`MAX_ENTRY_RANGE`]) and about 4 MiB
    /// of envelopes. Returns the page and the seq to continue from, if any.
    ///
    /// # Errors
    /// `not_found` if the subject is unknown.
    pub fn chain(
        &self,
        subject: &Did,
        from_seq: u64,
        limit: usize,
    ) -> Result<ChainPage, LedgerError> {
        self.read(|v| v.chain(subject, from_seq, limit))
    }

    /// Subjects in a stable order (family, name, ID), after `cursor` (the
    /// last key of the previous page), at most `limit` (≤ [`MAX_PAGE`]).
    /// Returns the page and the cursor for the next one, if any. One call
    /// examines at most [`MAX_SCAN`] index keys, so a selective filter may
    /// return a short (even empty) page with a cursor: keep paging until
    /// the cursor is `None`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn list_subjects(
        &self,
        filter: &SubjectFilter,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<SubjectRecord>, Option<Vec<u8>>), LedgerError> {
        self.read(|v| v.list_subjects(filter, cursor, limit))
    }

    /// Handlers whose current schema names `plugin`, in handler-ID order,
    /// after `cursor` (a handler DID's key), at most `limit`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn handlers_of_plugin(
        &self,
        plugin: &Did,
        cursor: Option<&Did>,
        limit: usize,
    ) -> Result<Vec<SubjectRecord>, LedgerError> {
        self.read(|v| v.handlers_of_plugin(plugin, cursor, limit))
    }

    /// Stored equivocation evidence in (subject key, seq, rejected ID)
    /// order, after `cursor` (the key of the last record of the previous
    /// page), at most `limit` (≤ [`MAX_PAGE`]). Returns the page and the
    /// cursor for the next one, if any.
    ///
    /// # Errors
    /// Storage failures.
    pub fn equivocations(
        &self,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<EquivocationRecord>, Option<Vec<u8>>), LedgerError> {
        self.read(|v| v.equivocations(cursor, limit))
    }

    /// The audit path of entry `index` in the tree of `size` entries
    /// (`size` ≤ the signed tree size).
    ///
    /// # Errors
    /// `index_out_of_range` or `size_out_of_range`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, LedgerError> {
        self.reach(size);
        self.tree().inclusion_proof(index, size)
    }

    /// The log index of attestation `id` and its audit path in the tree of
    /// `size` entries.
    ///
    /// # Errors
    /// `not_found`, or `index_out_of_range` if the entry is not within
    /// `size`.
    pub fn inclusion_proof_by_id(
        &self,
        id: &AttestationId,
        size: u64,
    ) -> Result<(u64, Vec<Hash>), LedgerError> {
        self.read(|v| v.inclusion_proof_by_id(id, size))
    }

    /// The consistency proof between two tree sizes (both ≤ the signed size).
    ///
    /// # Errors
    /// `size_out_of_range`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, LedgerError> {
        self.reach(new);
        self.tree().consistency_proof(old, new)
    }

    /// The root of the tree of `size` entries (≤ the signed size).
    ///
    /// # Errors
    /// `size_out_of_range`.
    pub fn root_at(&self, size: u64) -> Result<Hash, LedgerError> {
        self.reach(size);
        self.tree().root_at(size)
    }

    /// Read-your-writes across nodes: a caller asking for a size beyond
    /// this node's may have been answered that size by another node
    /// sharing the store a moment ago. If the store holds it, the writer
    /// reads the head again and this waits (at most a second) until it is
    /// published; otherwise, and on a store no other node shares, nothing
    /// is done and the read answers as it would have.
    fn reach(&self, size: u64) {
        if size <= self.size() || !self.shared.storage.is_shared() {
            return;
        }
        if self.stored_size().map_or(true, |stored| stored < size) {
            return;
        }
        let mut sizes = self.watch_size();
        let Some(queue) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        let _ = queue.try_send(Vec::new());
        let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while *sizes.borrow_and_update() < size && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    fn tree(&self) -> super::view::TreeView<'_> {
        super::view::TreeView {
            shared: &self.shared,
            head: self.shared.head(),
        }
    }

    fn view(&self) -> Result<View<'_>, LedgerError> {
        let (head, snap) = self.shared.read_point()?;
        Ok(View {
            shared: &self.shared,
            snap: Some(snap),
            head,
        })
    }

    /// Runs a read at the published head. Without a commit in flight the
    /// store's current state is the head's, so the read goes to the store
    /// itself (no snapshot: on PostgreSQL that is a transaction of its
    /// own); if a commit began meanwhile, the read runs again from a
    /// snapshot, so what it returns is exactly the head's state either way.
    fn read<T>(&self, f: impl Fn(&View<'_>) -> Result<T, LedgerError>) -> Result<T, LedgerError> {
        let (head, snap, generation) = self.shared.optimistic_read_point();
        let direct = snap.is_none();
        let r = f(&View {
            shared: &self.shared,
            snap,
            head,
        });
        if !direct || self.shared.generation() == generation {
            return r;
        }
        f(&self.view()?)
    }

    /// Re-verifies everything from scratch, from one consistent snapshot:
    /// every entry's attestation, every stored tree node and the root
    /// against the signed checkpoint, the ID and chain indexes, every
    /// subject's chain and its stored record and name/plugin index keys,
    /// and that nothing is stored beyond the tree size. Memory stays flat:
    /// chains are re-walked per subject.
    ///
    /// # Errors
    /// `integrity`, naming the first problem found and the index or
    /// subject it concerns.
    pub fn audit(&self) -> Result<AuditReport, LedgerError> {
        self.audit_with(verify_attestation)
    }

    /// [`Ledger::audit`] without checking signatures: for a caller that has
    /// just verified every entry's signatures from the same stopped data
    /// dir (`verify log --data-dir`), so they are not checked twice.
    ///
    /// # Errors
    /// As [`Ledger::audit`].
    pub fn audit_structure(&self) -> Result<AuditReport, LedgerError> {
        self.audit_with(|b| crate::attest::check_except_signatures(b).map(|(a, _)| a))
    }

    fn audit_with(
        &self,
        decode: impl Fn(&[u8]) -> Result<crate::Attestation, crate::Error>,
    ) -> Result<AuditReport, LedgerError> {
        let snap = Snap {
            shared: &self.shared,
            snap: self
                .shared
                .storage
                .snapshot()
                .map_err(|e| LedgerError::storage("snapshot", e))?,
        };
        let fail = |m: String| LedgerError::new(LedgerErrorCode::Integrity, m);
        let size = match snap.get(Ks::Meta, META_SIZE)? {
            Some(v) => read_u64(&v)?,
            None => 0,
        };
        let note = snap
            .get(Ks::Meta, META_CHECKPOINT)?
            .and_then(|n| String::from_utf8(n).ok())
            .ok_or_else(|| fail("no readable signed checkpoint is stored".into()))?;
        let cp = verify_checkpoint(&note, &self.shared.log_did)
            .map_err(|e| fail(format!("stored checkpoint: {e}")))?;
        if cp.size != size || cp.origin != self.shared.origin {
            return Err(fail(format!(
                "the signed checkpoint is for {:?} size {}; the log is {:?} size {size}",
                cp.origin, cp.size, self.shared.origin
            )));
        }
        let mut frontier = Frontier::default();
        for index in 0..size {
            let bytes = snap
                .get(Ks::Entries, &u64_key(index))?
                .ok_or_else(|| missing("entry", index))?;
            let att = decode(&bytes).map_err(|e| fail(format!("entry {index}: {e}")))?;
            for (level, i, hash) in frontier.push(merkle::leaf_hash(&bytes)) {
                if snap.get(Ks::Nodes, &node_key(level, i))?.as_deref() != Some(&hash[..]) {
                    return Err(fail(format!(
                        "entry {index}: stored tree node at level {level} index {i} is wrong or missing"
                    )));
                }
            }
            let st = att.statement();
            let by_id = snap.get(Ks::ById, att.id().as_bytes())?;
            if by_id.map(|v| read_u64(&v)).transpose()? != Some(index) {
                return Err(fail(format!(
                    "entry {index}: the ID index does not point at it"
                )));
            }
            let at = snap.get(Ks::Chains, &chain_key(st.subject.public_key(), st.seq))?;
            if at.map(|v| read_u64(&v)).transpose()? != Some(index) {
                return Err(fail(format!(
                    "entry {index}: the chain index of {} seq {} does not point at it",
                    st.subject, st.seq
                )));
            }
        }
        if frontier.root() != cp.root {
            return Err(fail(format!(
                "recomputed root {} differs from the signed checkpoint's {}",
                hex::encode(frontier.root()),
                hex::encode(cp.root)
            )));
        }
        let last = snap
            .snap
            .last_key_value(self.shared.ks(Ks::Entries))
            .map_err(|e| LedgerError::storage("read", e))?;
        if let Some((k, _)) = last {
            if read_u64(&k)? >= size {
                return Err(fail(format!(
                    "an entry is stored beyond the tree size {size}"
                )));
            }
        }
        let mut subjects = 0u64;
        let mut links = 0u64;
        for kv in snap.snap.iter(self.shared.ks(Ks::Subjects)) {
            let (k, v) = kv.map_err(|e| LedgerError::storage("read", e))?;
            let rec = SubjectRecord::decode(&v)?;
            let who = rec.head.subject.to_string();
            let mut state: Option<ChainHead> = None;
            let (mut genesis_index, mut head_index, mut schema_index) = (None, 0, 0);
            let (mut name, mut plugin) = (String::new(), None);
            for link in snap.snap.prefix(self.shared.ks(Ks::Chains), &k) {
                let (_, iv) = link.map_err(|e| LedgerError::storage("read", e))?;
                let index = read_u64(&iv)?;
                links += 1;
                let bytes = snap
                    .get(Ks::Entries, &u64_key(index))?
                    .ok_or_else(|| missing("entry", index))?;
                let att = decode(&bytes).map_err(|e| fail(format!("entry {index}: {e}")))?;
                match state.as_mut() {
                    None => {
                        state = Some(
                            ChainHead::genesis(&att).map_err(|e| fail(format!("{who}: {e}")))?,
                        );
                        genesis_index = Some(index);
                    }
                    Some(s) => s.apply(&att).map_err(|e| fail(format!("{who}: {e}")))?,
                }
                head_index = index;
                if let Some(schema) = att.statement().schema() {
                    schema_index = index;
                    (name, plugin) = match schema {
                        Schema::Handler(h) => (h.name.clone(), Some(h.plugin.clone())),
                        Schema::Plugin(p) => (p.name.clone(), None),
                    };
                }
            }
            let expected = SubjectRecord {
                head: state.ok_or_else(|| fail(format!("{who}: a record without statements")))?,
                genesis_index: genesis_index.unwrap_or_default(),
                head_index,
                schema_index,
                name,
                plugin,
            };
            if expected != rec {
                return Err(fail(format!(
                    "{who}: the stored record does not match its chain"
                )));
            }
            let subject = rec.head.subject.public_key();
            if snap
                .get(Ks::ByName, &name_key(rec.head.family, &rec.name, subject))?
                .is_none()
            {
                return Err(fail(format!("{who}: missing from the name index")));
            }
            if let Some(p) = &rec.plugin {
                if snap
                    .get(Ks::ByPlugin, &plugin_key(p.public_key(), subject))?
                    .is_none()
                {
                    return Err(fail(format!("{who}: missing from the plugin index")));
                }
            }
            subjects += 1;
        }
        // Every entry belongs to exactly one subject's chain: a chain whose
        // subject lost its record would otherwise escape the chain rules.
        if links != size {
            return Err(fail(format!(
                "the chains of the {subjects} subjects hold {links} statements; the log holds {size}"
            )));
        }
        Ok(AuditReport {
            entries: size,
            subjects,
            root: cp.root,
        })
    }

    /// Stops the writer after the queued appends are committed.
    pub fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.join();
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}

/// Starts the thread that follows the appends of other nodes sharing the
/// store: when one announces a size beyond what this node has seen, or
/// notices may have been missed, the writer is asked (with an empty
/// group) to read the head again. Ends when the ledger closes.
fn follow_other_nodes(
    mut notices: tokio::sync::broadcast::Receiver<crate::storage::Notice>,
    mut seen: u64,
    queue: Arc<Mutex<Option<SyncSender<Vec<Job>>>>>,
) -> Result<(), LedgerError> {
    use crate::storage::Notice;
    use tokio::sync::broadcast::error::RecvError;
    std::thread::Builder::new()
        .name("ledger-follower".into())
        .spawn(move || {
            loop {
                let wanted = match notices.blocking_recv() {
                    Ok(Notice::Message { topic, payload }) if topic == super::writer::LOG_TOPIC => {
                        match payload.parse::<u64>() {
                            Ok(size) if size > seen => {
                                seen = size;
                                true
                            }
                            Ok(_) => false,
                            Err(_) => true,
                        }
                    }
                    Ok(Notice::Message { .. }) => false,
                    Ok(Notice::Gap) | Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return,
                };
                if !wanted {
                    continue;
                }
                let Some(q) = queue.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
                    return;
                };
                // A full queue means the writer is busy with appends, and
                // their commits find the new head themselves.
                if let Err(TrySendError::Disconnected(_)) = q.try_send(Vec::new()) {
                    return;
                }
            }
        })
        .map_err(|e| LedgerError::storage("starting the follower thread", e))?;
    Ok(())
}

/// What a successful audit checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Entries re-verified.
    pub entries: u64,
    /// Subjects whose chains were re-walked.
    pub subjects: u64,
    /// The root that matched the signed checkpoint.
    pub root: Hash,
}

pub(super) fn unavailable() -> LedgerError {
    LedgerError::new(
        LedgerErrorCode::Unavailable,
        "the ledger is closed or stopped after a storage failure",
    )
}

pub(super) fn missing(what: &str, index: u64) -> LedgerError {
    LedgerError::new(
        LedgerErrorCode::Integrity,
        format!("{what} {index} is missing below the tree size"),
    )
}

fn load_or_create_key(path: &Path, may_create: bool) -> Result<(SigningKey, Did), LedgerError> {
    let cfg = |m: String| LedgerError::new(LedgerErrorCode::Config, m);
    let key = match keyfile::load(path) {
        Ok(k) => k,
        Err(keyfile::KeyFileError::Io(e))
            if e.kind() == std::io::ErrorKind::NotFound && !may_create =>
        {
            return Err(cfg(format!(
                "{} is missing, but the log already has signed checkpoints: restore the log's key file",
                path.display()
            )));
        }
        Err(keyfile::KeyFileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            let key =
                keyfile::generate().map_err(|e| cfg(format!("generating the log key: {e}")))?;
            let did =
                Did::from_verifying_key(&key.verifying_key()).map_err(|e| cfg(e.to_string()))?;
            match keyfile::create(path, &key, &did) {
                Ok(()) => key,
                // Another node starting on the same directory made it first.
                Err(keyfile::KeyFileError::Exists) => {
                    keyfile::load(path).map_err(|e| cfg(format!("{}: {e}", path.display())))?
                }
                Err(e) => return Err(cfg(format!("{}: {e}", path.display()))),
            }
        }
        Err(e) => return Err(cfg(format!("{}: {e}", path.display()))),
    };
    let did = Did::from_verifying_key(&key.verifying_key())
        .map_err(|e| cfg(format!("{}: {e}", path.display())))?;
    Ok((key, did))
}
