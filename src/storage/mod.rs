//! Ordered key-value storage: what the ledger and the job store are
//! written on, and the one place a storage engine is named.
//!
//! Both stores keep their records as keys and values in named *spaces*
//! (the ledger's entries, tree nodes and indexes; the jobs, their queue
//! indexes, logs, budgets and schedules), read single keys and ordered key
//! ranges, read from point-in-time snapshots, and write by committing a
//! batch that is atomic and durable before the call returns. That is the
//! whole contract ([`Backend`]); everything above it — the Merkle tree,
//! chain rules, record formats, indexes and the job state machine — is
//! written once and shared by every backend.
//!
//! Backends: [`FjallBackend`] (embedded, the default: a data dir) and
//! [`PostgresBackend`] (the same contract on a PostgreSQL server).

mod early_flush;
mod fjall_backend;
mod last_owner;
pub mod postgres;
mod range;

use std::ops::RangeBounds;
use std::sync::Arc;

pub use fjall_backend::{FjallBackend, FjallOptions};
pub use postgres::PostgresBackend;
pub use range::KeyRange;

/// Runs a future to completion on this thread, parking between polls: a
/// blocking wait that works from any thread, inside an async runtime too
/// (it never enters the runtime, so it cannot deadlock on one). Used for
/// the ledger writer's answers and for the PostgreSQL backend's calls.
pub(crate) fn wait<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    // Outside tokio's cooperative budget: called from a runtime thread
    // (a blocking read inside an async fn), a tokio future polled after
    // the task's budget is spent answers Pending and wakes at once, and
    // this loop would spin for ever (the budget only refills when the
    // task yields, which a blocking wait never does).
    let mut f = std::pin::pin!(tokio::task::unconstrained(f));
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Why a storage call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageError {
    message: String,
    kind: FailureKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    Failure,
    Unavailable,
    Conflict,
}

impl StorageError {
    /// A failure of the storage itself (I/O, corruption, a refused write).
    pub fn new(message: impl Into<String>) -> StorageError {
        StorageError {
            message: message.into(),
            kind: FailureKind::Failure,
        }
    }

    /// The storage could not be reached (a database server down or out of
    /// connections): nothing was written, and the same call may succeed
    /// later.
    pub fn unavailable(message: impl Into<String>) -> StorageError {
        StorageError {
            message: message.into(),
            kind: FailureKind::Unavailable,
        }
    }

    /// A key a batch expected ([`WriteBatch::expect`]) held another value
    /// when the batch was applied: another writer got there first, and
    /// nothing of the batch was written.
    pub fn conflict(message: impl Into<String>) -> StorageError {
        StorageError {
            message: message.into(),
            kind: FailureKind::Conflict,
        }
    }

    /// Whether this is [`StorageError::unavailable`].
    pub fn is_unavailable(&self) -> bool {
        self.kind == FailureKind::Unavailable
    }

    /// Whether this is [`StorageError::conflict`].
    pub fn is_conflict(&self) -> bool {
        self.kind == FailureKind::Conflict
    }
}

/// A message another process sharing the store committed
/// ([`WriteBatch::announce`]), or word that some may have been missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `payload` on `topic`, committed by another process.
    Message {
        /// What the message is about (`log`, `jobs`).
        topic: String,
        /// Its text.
        payload: String,
    },
    /// Messages may have been lost (the listening connection broke, or a
    /// reader fell behind): a reader must read what it follows again.
    Gap,
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StorageError {}

/// A space's number within its backend, as [`Backend::open_space`] gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpaceId(pub u16);

/// Keys in ascending or descending order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Smallest key first.
    Ascending,
    /// Largest key first.
    Descending,
}

/// One stored key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Entries of a scan, in the order asked for. Lazy: a backend may read
/// them a page at a time, so an error can come at any item.
pub type Entries = Box<dyn Iterator<Item = Result<Entry, StorageError>> + Send>;

/// Reads at one point in time: the backend's current state, or a
/// [`Snapshot`].
pub trait ReadView: Send + Sync {
    /// The value stored under `key`.
    ///
    /// # Errors
    /// When the storage cannot be read.
    fn get(&self, space: SpaceId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// The entries whose keys are in `range`, in `order` (keys compare as
    /// unsigned bytes, shorter first on a common prefix).
    fn scan(&self, space: SpaceId, range: KeyRange, order: Order) -> Entries;

    /// The values of several keys, in order: one round trip on a database
    /// server, where one [`ReadView::get`] each would cost one each.
    ///
    /// # Errors
    /// When the storage cannot be read.
    fn get_many(&self, keys: &[(SpaceId, Vec<u8>)]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        keys.iter().map(|(s, k)| self.get(*s, k)).collect()
    }
}

/// A storage engine under the ledger and the job store.
pub trait Backend: ReadView {
    /// The space called `name`, created empty if it does not exist.
    ///
    /// # Errors
    /// When the storage cannot create it.
    fn open_space(&self, name: &str) -> Result<SpaceId, StorageError>;

    /// A consistent view of everything committed so far: later commits are
    /// not seen through it, and no commit is ever seen in part.
    ///
    /// # Errors
    /// When the storage cannot take one (a database server unreachable).
    fn snapshot(&self) -> Result<Snapshot, StorageError>;

    /// Writes every operation of `batch`, in order, atomically: all of them
    /// or none, durable (on disk, or committed by the database with
    /// synchronous commit) before this returns `Ok` unless the batch is
    /// [`WriteBatch::unsynced`].
    ///
    /// # Errors
    /// When the batch was not written. After an error that
    /// [`StorageError::is_unavailable`] says nothing about, whether it was
    /// written is unknown to the caller.
    fn commit(&self, batch: WriteBatch) -> Result<(), StorageError>;

    /// [`Backend::commit`] in two halves: writes `batch` (all of it or
    /// none; an expectation that does not hold fails here) and returns
    /// before it is durable; [`Written::durable`] then waits for that.
    /// Later commits and reads see the batch at once, and a later batch
    /// is never durable without it. A caller that holds a lock while it
    /// writes can so let the next writer in during its fsync, and one
    /// fsync can cover several writers' batches. The default commits
    /// before it returns.
    ///
    /// # Errors
    /// As [`Backend::commit`].
    fn write(&self, batch: WriteBatch) -> Result<Written, StorageError> {
        self.commit(batch)?;
        Ok(Written::durable_now())
    }

    /// Tells the writers waiting with patience ([`Written::durable_within`])
    /// that the writer they woke has nothing to write: they stop waiting
    /// and sync by themselves. The default has no patient writers.
    fn end_patience(&self) {}

    /// The engine's name, for logs and `--help` ("fjall", "postgres").
    fn engine(&self) -> &'static str;

    /// Says that values of `space`, once written, are never changed or
    /// removed (the log's entries and tree nodes): a backend that keeps
    /// no values in memory while other processes share the store may keep
    /// these. The default ignores it.
    fn declare_write_once(&self, space: SpaceId) {
        let _ = space;
    }

    /// Messages that other processes sharing this store commit
    /// ([`WriteBatch::announce`]); `None` when nothing else can write it
    /// (an embedded store is one process's alone).
    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        None
    }

    /// Whether other processes may write this store at the same time
    /// ([`Backend::notices`] answers then).
    fn is_shared(&self) -> bool {
        false
    }

    /// Whether the stores may go on writing after the commit that just
    /// failed, once they have read their state again. A database server's
    /// state is whatever it committed, so a writer reads it again and goes
    /// on once the server is back (PostgreSQL). After a failed journal
    /// write fjall's state in memory is unknown, so the stores stop
    /// writing until the server is restarted; after a failed background
    /// flush fjall wrote nothing and is reopened, so they go on (the
    /// default answers no).
    fn survives_failed_commit(&self) -> bool {
        false
    }
}

/// Refuses a batch whose keys, expected keys or notices break the rules
/// every backend keeps; nothing of it is written.
fn check_batch(batch: &WriteBatch) -> Result<(), StorageError> {
    if let Some(op) = batch.ops.iter().find(|op| {
        let len = match op {
            WriteOp::Put { key, .. } | WriteOp::Delete { key, .. } => key.len(),
        };
        len == 0 || len > MAX_KEY_BYTES
    }) {
        return Err(StorageError::new(format!(
            "a key must be 1 to {MAX_KEY_BYTES} bytes; nothing of the batch was written ({op:?})"
        )));
    }
    if let Some(e) = batch
        .expected
        .iter()
        .find(|e| e.key.is_empty() || e.key.len() > MAX_KEY_BYTES)
    {
        return Err(StorageError::new(format!(
            "an expected key must be 1 to {MAX_KEY_BYTES} bytes; nothing of the batch was written ({} bytes)",
            e.key.len()
        )));
    }
    if let Some(n) = batch.notices.iter().find(|n| !is_notice(n)) {
        return Err(StorageError::new(format!(
            "a notice's topic must be 1 to 32 lowercase ASCII letters or '_' and its text at most {MAX_NOTICE_BYTES} bytes; nothing of the batch was written (topic {:?})",
            n.0
        )));
    }
    Ok(())
}

/// A batch written by [`Backend::write`]: visible, and durable once
/// [`Written::durable`] returns `Ok`.
#[must_use = "a written batch is not durable until `durable` returns"]
pub struct Written(Option<DurableFn>);

/// Makes a written batch durable; the argument is how long it may first
/// wait for another writer's fsync to cover the batch.
type DurableFn = Box<dyn FnOnce(std::time::Duration) -> Result<(), StorageError> + Send>;

impl Written {
    /// A batch that is durable already.
    pub fn durable_now() -> Written {
        Written(None)
    }

    /// A batch made durable by `sync`, called with the patience of
    /// [`Written::durable_within`] (zero for [`Written::durable`]).
    pub fn after(
        sync: impl FnOnce(std::time::Duration) -> Result<(), StorageError> + Send + 'static,
    ) -> Written {
        Written(Some(Box::new(sync)))
    }

    /// Waits until the batch is durable.
    ///
    /// # Errors
    /// When the batch was not made durable (an fsync or a commit failed,
    /// or one it was queued behind): fjall then stops writing; PostgreSQL
    /// goes on, and the stores read their state again.
    pub fn durable(self) -> Result<(), StorageError> {
        self.durable_within(std::time::Duration::ZERO)
    }

    /// [`Written::durable`], but when no fsync is under way, waits up to
    /// `patience` for an fsync of another writer's that covers this batch
    /// to end, before making one itself: for a writer that has just woken
    /// another who is about to write (an enqueue waking the dispatcher),
    /// so that one fsync serves both batches. [`Backend::end_patience`]
    /// ends the wait early.
    ///
    /// # Errors
    /// As [`Written::durable`].
    pub fn durable_within(self, patience: std::time::Duration) -> Result<(), StorageError> {
        match self.0 {
            Some(sync) => sync(patience),
            None => Ok(()),
        }
    }
}

/// The first bytes of `key` in hex, for messages.
fn short_hex(key: &[u8]) -> String {
    let mut text = hex::encode(&key[..key.len().min(16)]);
    if key.len() > 16 {
        text.push('…');
    }
    text
}

/// Longest key any backend stores (fjall's limit).
pub const MAX_KEY_BYTES: usize = 65_535;

/// A handle on one storage engine, shared by the ledger and the job store.
#[derive(Clone)]
pub struct Storage(Arc<dyn Backend>);

impl Storage {
    /// Wraps a backend.
    pub fn new(backend: impl Backend + 'static) -> Storage {
        Storage(Arc::new(backend))
    }

    /// The space called `name`, created empty if missing.
    ///
    /// # Errors
    /// When the storage cannot create it.
    pub fn space(&self, name: &str) -> Result<Space, StorageError> {
        Ok(Space {
            backend: Arc::clone(&self.0),
            id: self.0.open_space(name)?,
        })
    }

    /// See [`Backend::snapshot`].
    ///
    /// # Errors
    /// As there.
    pub fn snapshot(&self) -> Result<Snapshot, StorageError> {
        self.0.snapshot()
    }

    /// The values of several keys of any spaces, in order (one round trip
    /// on PostgreSQL).
    ///
    /// # Errors
    /// When the storage cannot be read.
    pub fn get_many(&self, keys: &[(&Space, &[u8])]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let keys: Vec<(SpaceId, Vec<u8>)> = keys.iter().map(|(s, k)| (s.id, k.to_vec())).collect();
        self.0.get_many(&keys)
    }

    /// A new, empty batch.
    pub fn batch(&self) -> WriteBatch {
        WriteBatch::default()
    }

    /// See [`Backend::commit`].
    ///
    /// # Errors
    /// As there.
    /// Keys are 1 to [`MAX_KEY_BYTES`] bytes on every backend; a batch
    /// with another key is refused whole.
    pub fn commit(&self, batch: WriteBatch) -> Result<(), StorageError> {
        check_batch(&batch)?;
        self.0.commit(batch)
    }

    /// See [`Backend::write`]. Keys are checked as by
    /// [`Storage::commit`].
    ///
    /// # Errors
    /// As there.
    pub fn write(&self, batch: WriteBatch) -> Result<Written, StorageError> {
        check_batch(&batch)?;
        self.0.write(batch)
    }

    /// See [`Backend::declare_write_once`].
    pub fn declare_write_once(&self, space: &Space) {
        self.0.declare_write_once(space.id);
    }

    /// See [`Backend::notices`].
    pub fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        self.0.notices()
    }

    /// See [`Backend::is_shared`].
    pub fn is_shared(&self) -> bool {
        self.0.is_shared()
    }

    /// See [`Backend::end_patience`].
    pub fn end_patience(&self) {
        self.0.end_patience();
    }

    /// See [`Backend::engine`].
    pub fn engine(&self) -> &'static str {
        self.0.engine()
    }

    /// See [`Backend::survives_failed_commit`].
    pub fn survives_failed_commit(&self) -> bool {
        self.0.survives_failed_commit()
    }
}

/// The first entry of a scan in `order`: the smallest or largest key.
fn first(
    view: &dyn ReadView,
    space: SpaceId,
    range: KeyRange,
    order: Order,
) -> Result<Option<Entry>, StorageError> {
    view.scan(space, range, order).next().transpose()
}

/// One named space of a backend, read in its current state.
#[derive(Clone)]
pub struct Space {
    backend: Arc<dyn Backend>,
    id: SpaceId,
}

impl Space {
    /// The value under `key`.
    ///
    /// # Errors
    /// When the storage cannot be read.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StorageError> {
        self.backend.get(self.id, key.as_ref())
    }

    /// The values of several keys of this space, in order (one round trip
    /// on PostgreSQL).
    ///
    /// # Errors
    /// When the storage cannot be read.
    pub fn get_many<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let keys: Vec<(SpaceId, Vec<u8>)> = keys
            .iter()
            .map(|k| (self.id, k.as_ref().to_vec()))
            .collect();
        self.backend.get_many(&keys)
    }

    /// Whether `key` holds a value.
    ///
    /// # Errors
    /// When the storage cannot be read.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, StorageError> {
        Ok(self.get(key)?.is_some())
    }

    /// Entries with keys in `range`, ascending.
    pub fn range<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Entries {
        self.backend
            .scan(self.id, KeyRange::from_bounds(range), Order::Ascending)
    }

    /// Entries with keys in `range`, in `order`.
    pub fn scan(&self, range: KeyRange, order: Order) -> Entries {
        self.backend.scan(self.id, range, order)
    }

    /// Entries whose keys start with `prefix`, ascending.
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Entries {
        self.scan(KeyRange::prefix(prefix.as_ref()), Order::Ascending)
    }

    /// Every entry, ascending.
    pub fn iter(&self) -> Entries {
        self.scan(KeyRange::all(), Order::Ascending)
    }

    /// The entry with the largest key in `range`.
    ///
    /// # Errors
    /// When the storage cannot be read.
    pub fn last_in(&self, range: KeyRange) -> Result<Option<Entry>, StorageError> {
        first(&*self.backend, self.id, range, Order::Descending)
    }

    /// The entry with the largest key.
    ///
    /// # Errors
    /// When the storage cannot be read.
    pub fn last_key_value(&self) -> Result<Option<Entry>, StorageError> {
        self.last_in(KeyRange::all())
    }
}

/// A point-in-time view ([`Backend::snapshot`]); clones share it.
#[derive(Clone)]
pub struct Snapshot(Arc<dyn ReadView>);

impl Snapshot {
    /// Wraps a backend's view.
    pub fn new(view: impl ReadView + 'static) -> Snapshot {
        Snapshot(Arc::new(view))
    }

    /// The value under `key` in `space`.
    ///
    /// # Errors
    /// When the storage cannot be read.
    pub fn get(
        &self,
        space: &Space,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.0.get(space.id, key.as_ref())
    }

    /// Entries of `space` with keys in `range`, ascending.
    pub fn range<K: AsRef<[u8]>>(&self, space: &Space, range: impl RangeBounds<K>) -> Entries {
        self.0
            .scan(space.id, KeyRange::from_bounds(range), Order::Ascending)
    }

    /// Entries of `space` with keys in `range`, in `order`.
    pub fn scan(&self, space: &Space, range: KeyRange, order: Order) -> Entries {
        self.0.scan(space.id, range, order)
    }

    /// Entries of `space` whose keys start with `prefix`, ascending.
    pub fn prefix(&self, space: &Space, prefix: impl AsRef<[u8]>) -> Entries {
        self.0.scan(
            space.id,
            KeyRange::prefix(prefix.as_ref()),
            Order::Ascending,
        )
    }

    /// Every entry of `space`, ascending.
    pub fn iter(&self, space: &Space) -> Entries {
        self.0.scan(space.id, KeyRange::all(), Order::Ascending)
    }

    /// The entry of `space` with the largest key.
    ///
    /// # Errors
    /// When the storage cannot be read.
    pub fn last_key_value(&self, space: &Space) -> Result<Option<Entry>, StorageError> {
        first(&*self.0, space.id, KeyRange::all(), Order::Descending)
    }
}

/// One write of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Store `value` under `key`, replacing any value.
    Put {
        /// The space.
        space: SpaceId,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key` (nothing if absent).
    Delete {
        /// The space.
        space: SpaceId,
        /// The key.
        key: Vec<u8>,
    },
}

/// A value a batch requires a key to hold when it is applied
/// ([`WriteBatch::expect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// The space.
    pub space: SpaceId,
    /// The key.
    pub key: Vec<u8>,
    /// The value it must hold (`None`: it must be absent).
    pub value: Option<Vec<u8>>,
}

/// Longest text of a notice ([`WriteBatch::announce`]): PostgreSQL's
/// NOTIFY takes under 8,000 bytes.
pub const MAX_NOTICE_BYTES: usize = 7_000;

fn is_notice((topic, text): &(String, String)) -> bool {
    !topic.is_empty()
        && topic.len() <= 32
        && topic.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        && text.len() <= MAX_NOTICE_BYTES
}

/// Writes committed together ([`Backend::commit`]): applied in order, so
/// of two writes to one key the later wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
    synced: bool,
    expected: Vec<Expectation>,
    notices: Vec<(String, String)>,
}

impl Default for WriteBatch {
    fn default() -> WriteBatch {
        WriteBatch {
            ops: Vec::new(),
            synced: true,
            expected: Vec::new(),
            notices: Vec::new(),
        }
    }
}

impl WriteBatch {
    /// A batch committed atomically but not made durable by its own
    /// commit: a crash may lose it (never part of it), and the next synced
    /// commit makes it durable. For data nobody was promised (job log
    /// lines), never for anything acknowledged.
    pub fn unsynced() -> WriteBatch {
        WriteBatch {
            synced: false,
            ..WriteBatch::default()
        }
    }

    /// Makes the batch conditional: it is written only if `key` in `space`
    /// holds `value` (`None`: no value) at the moment it is applied, and
    /// otherwise refused whole with [`StorageError::conflict`]. Commits
    /// that expect the same key are applied one at a time, so of several
    /// writers that read a key and expect it unchanged exactly one wins:
    /// the fencing that lets processes share a store. A commit that writes
    /// the key without expecting it is not held back, so every writer of a
    /// key that others expect must expect it too.
    pub fn expect(&mut self, space: &Space, key: impl AsRef<[u8]>, value: Option<&[u8]>) {
        self.expected.push(Expectation {
            space: space.id,
            key: key.as_ref().to_vec(),
            value: value.map(<[u8]>::to_vec),
        });
    }

    /// Tells the other processes sharing the store `text` on `topic` (1 to
    /// 32 lowercase ASCII letters or `_`; at most [`MAX_NOTICE_BYTES`]
    /// bytes) if and when the batch commits ([`Backend::notices`]). An
    /// embedded store, which no other process shares, drops it.
    pub fn announce(&mut self, topic: &str, text: impl Into<String>) {
        self.notices.push((topic.to_owned(), text.into()));
    }

    /// Whether the commit makes the batch durable before returning.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Stores `value` under `key` in `space`.
    pub fn insert(&mut self, space: &Space, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops.push(WriteOp::Put {
            space: space.id,
            key: key.as_ref().to_vec(),
            value: value.as_ref().to_vec(),
        });
    }

    /// Removes `key` from `space`.
    pub fn remove(&mut self, space: &Space, key: impl AsRef<[u8]>) {
        self.ops.push(WriteOp::Delete {
            space: space.id,
            key: key.as_ref().to_vec(),
        });
    }

    /// Writes in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch writes nothing, expects nothing and announces
    /// nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.expected.is_empty() && self.notices.is_empty()
    }

    /// Whether the batch is conditional ([`WriteBatch::expect`]).
    pub fn has_expectations(&self) -> bool {
        !self.expected.is_empty()
    }

    /// The writes in order, the expectations and the notices.
    pub fn into_parts(self) -> (Vec<WriteOp>, Vec<Expectation>, Vec<(String, String)>) {
        (self.ops, self.expected, self.notices)
    }
}
