//! The embedded backend: one fjall database in a directory, each space a
//! keyspace, each commit one batch written to the journal and then made
//! durable by a journal fsync (`SyncAll`) that may cover other writers'
//! batches too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

use super::early_flush::{EarlyFlush, Observation};
use super::last_owner::LastOwner;
use super::{
    Backend, Entries, KeyRange, Order, ReadView, Snapshot, SpaceId, StorageError, WriteBatch,
    WriteOp, Written, short_hex,
};

/// Sizes of the fjall database's buffers.
#[derive(Debug, Clone, Copy)]
pub struct FjallOptions {
    /// Journal kept before memtables must be flushed (bounds the replay
    /// after a crash); at least 64 MiB. fjall seals a journal file and
    /// starts the next once it passes 64 MB; a limit above that lets the
    /// sealed file go once the memtables it holds data of are flushed,
    /// which the upkeep thread does one at a time ([`EarlyFlush`]), instead
    /// of fjall flushing all of them at the seal.
    pub journal_bytes: u64,
    /// Block cache for reads.
    pub cache_bytes: u64,
    /// Memtable size of each space.
    pub memtable_bytes: u64,
    /// Size at which compaction splits a space's tables, for spaces
    /// created by this open (fjall keeps a space's compaction settings
    /// from its creation).
    pub table_bytes: u64,
}

impl Default for FjallOptions {
    /// Bounded memory and start-up: at most 96 MiB of journal to replay
    /// after a crash, and small memtables per space; the
    /// fjall defaults (512 MiB journal, 64 MiB per memtable) cost ~1 GB of
    /// RSS and ~9 s of replay at 1M log entries. Small memtables also mean
    /// the journal's limit forces many small flushes, never one large one.
    fn default() -> FjallOptions {
        FjallOptions {
            journal_bytes: 96 * 1024 * 1024,
            cache_bytes: 64 * 1024 * 1024,
            memtable_bytes: 8 * 1024 * 1024,
            // fjall's default is 64 MiB. Job IDs grow with time, so a
            // space's new writes overlap only its newest table; with one
            // large table, each merge of level 0 rewrote all of it (a
            // 20 MiB table, 80–150 ms of a core, after ten seconds of
            // jobs), and the larger it grew the longer the merge. Tables
            // of 8 MiB bound a merge to level 0 and the one or two tables
            // it overlaps (BENCHMARKS.md, issue 22).
            table_bytes: 8 * 1024 * 1024,
        }
    }
}

/// One open fjall database and its keyspaces, by [`SpaceId`]. Snapshots
/// and scans hold it, so it is closed (and its lock file released) only
/// once the last of them is gone. The keyspaces grow in place: a snapshot
/// taken before a space was opened can still read it.
struct Open {
    db: Database,
    handles: RwLock<Vec<Keyspace>>,
    /// Batches written to the journal so far (counted after each write).
    written: AtomicU64,
    /// Group fsync of the journal: how far it is synced, and whether a
    /// writer is syncing it now for the others.
    sync: Mutex<JournalSync>,
    synced: Condvar,
    /// Journal fsyncs made by writers, for tests and metrics.
    syncs: AtomicU64,
}

#[derive(Default)]
struct JournalSync {
    /// Every batch counted up to here is durable.
    through: u64,
    syncing: bool,
    /// Raised by [`Backend::end_patience`]: writers waiting with patience
    /// since before it stop waiting.
    patience_ended: u64,
    /// Why the journal could not be synced (and whether fjall was
    /// poisoned, to be reopened): nothing written before it is
    /// acknowledged.
    failed: Option<(bool, String)>,
}

impl Open {
    /// Waits until the `seq`-th written batch is durable. One writer at a
    /// time fsyncs the journal, for every batch written before it began;
    /// writers that arrive meanwhile wait for that fsync or the next. With
    /// no fsync under way, a writer first waits up to `patience` for
    /// another to begin one (after writing its own batch, which then
    /// covers both).
    fn sync_through(&self, seq: u64, patience: std::time::Duration) -> Result<(), fjall::Error> {
        let patient_until = std::time::Instant::now().checked_add(patience);
        let mut state = lock(&self.sync);
        let patience_ended = state.patience_ended;
        loop {
            if state.through >= seq {
                return Ok(());
            }
            if let Some((poisoned, why)) = &state.failed {
                // Every waiter gets the leader's kind of failure, so all
                // of them mark the backend alike.
                return Err(if *poisoned {
                    fjall::Error::Poisoned
                } else {
                    fjall::Error::Io(std::io::Error::other(why.clone()))
                });
            }
            if state.syncing {
                state = self.synced.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let now = std::time::Instant::now();
            if state.patience_ended == patience_ended && patient_until.is_none_or(|t| now < t) {
                state = match patient_until {
                    Some(t) => {
                        self.synced
                            .wait_timeout(state, t - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    None => self.synced.wait(state).unwrap_or_else(|p| p.into_inner()),
                };
                continue;
            }
            state.syncing = true;
            let target = self.written.load(Ordering::Acquire);
            let from = state.through;
            drop(state);
            let span = crate::timeline::span("journal_fsync");
            let r = self.db.persist(PersistMode::SyncAll);
            crate::timeline::end(span, &[("batches", target.saturating_sub(from))]);
            self.syncs.fetch_add(1, Ordering::Relaxed);
            state = lock(&self.sync);
            state.syncing = false;
            match &r {
                Ok(()) => state.through = state.through.max(target),
                Err(e) => {
                    state.failed = Some((matches!(e, fjall::Error::Poisoned), e.to_string()));
                }
            }
            self.synced.notify_all();
            r?;
        }
    }
}

impl Open {
    fn get(&self, space: SpaceId) -> Result<Keyspace, StorageError> {
        handle(
            &self.handles.read().unwrap_or_else(|p| p.into_inner()),
            space,
        )
        .cloned()
    }
}

fn handle(handles: &[Keyspace], space: SpaceId) -> Result<&Keyspace, StorageError> {
    handles
        .get(usize::from(space.0))
        .ok_or_else(|| StorageError::new(format!("no space number {}", space.0)))
}

/// Whether writes go on.
#[derive(Debug)]
enum Health {
    Good,
    /// A commit's own journal write or fsync failed: what is on disk and in
    /// memory may disagree, so writes stop until the server is restarted.
    Fault(String),
    /// A background flush or compaction failed (fjall then refuses every
    /// write: it is "poisoned"). Nothing acknowledged is at risk — it is
    /// all in the fsynced journal — so the database is closed and opened
    /// again, which replays the journal as a restart would.
    Reopening,
}

/// First wait before reopening, and the longest between two attempts.
const REOPEN_FIRST: Duration = Duration::from_millis(100);
const REOPEN_MAX: Duration = Duration::from_secs(30);

struct Inner {
    path: PathBuf,
    /// `None`: fjall's defaults (a reader of a stopped server's dir).
    options: Option<FjallOptions>,
    /// Space names by [`SpaceId`], to open them again in the same order.
    names: Mutex<Vec<String>>,
    /// `None` while the database is closed to be reopened.
    open: RwLock<Option<Arc<Open>>>,
    health: Mutex<Health>,
    /// Wakes the reopening thread when the backend is dropped.
    closing: Condvar,
    closed: AtomicBool,
    /// The thread flushing idle memtables early, joined on drop (so the
    /// database is closed when the backend is).
    pacer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held from checking a conditional batch's expectations to its
    /// commit, so that two such batches are applied one at a time.
    conditional: Mutex<()>,
}

/// A fjall database as a [`Backend`].
///
/// A failed background flush or compaction (running out of file
/// descriptors is the usual cause) does not stop the server: commits
/// answer `unavailable` while a thread closes the database and opens it
/// again, retrying with a growing wait, and then go on
/// (spec/storage.md, "Failures").
pub struct FjallBackend(Arc<Inner>);

fn storage(context: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::new(format!("{context}: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens the database and the spaces named in `names`, in order.
fn open_db(
    path: &Path,
    options: Option<FjallOptions>,
    names: &[String],
) -> Result<Open, StorageError> {
    let builder = Database::builder(path);
    let builder = match options {
        Some(o) => builder
            .max_journaling_size(o.journal_bytes.max(64 * 1024 * 1024))
            .cache_size(o.cache_bytes),
        None => builder,
    };
    let db = builder
        .open()
        .map_err(|e| storage("opening the database", e))?;
    let handles = names
        .iter()
        .map(|name| open_keyspace(&db, options, name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Open {
        db,
        handles: RwLock::new(handles),
        written: AtomicU64::new(0),
        sync: Mutex::default(),
        synced: Condvar::new(),
        syncs: AtomicU64::new(0),
    })
}

fn open_keyspace(
    db: &Database,
    options: Option<FjallOptions>,
    name: &str,
) -> Result<Keyspace, StorageError> {
    let sizes = options.unwrap_or_default();
    db.keyspace(name, || {
        KeyspaceCreateOptions::default()
            .max_memtable_size(sizes.memtable_bytes)
            .compaction_strategy(Arc::new(
                fjall::compaction::Leveled::default().with_table_target_size(sizes.table_bytes),
            ))
    })
    .map_err(|e| storage(&format!("opening the keyspace {name}"), e))
}

impl FjallBackend {
    /// Journal fsyncs made for commits since the database was (last)
    /// opened: fewer than the commits when writers overlap.
    pub fn journal_syncs(&self) -> u64 {
        self.0
            .current()
            .map_or(0, |open| open.syncs.load(Ordering::Relaxed))
    }

    /// Opens (or creates) the database in `path`.
    ///
    /// # Errors
    /// When fjall cannot open it (another process holds it, I/O).
    pub fn open(path: &Path, options: FjallOptions) -> Result<FjallBackend, StorageError> {
        FjallBackend::with(path, Some(options))
    }

    /// Opens an existing database to read it with fjall's default buffer
    /// sizes (an audit of a stopped server's data dir).
    ///
    /// # Errors
    /// When fjall cannot open it.
    pub fn open_for_reading(path: &Path) -> Result<FjallBackend, StorageError> {
        FjallBackend::with(path, None)
    }

    fn with(path: &Path, options: Option<FjallOptions>) -> Result<FjallBackend, StorageError> {
        let open = open_db(path, options, &[])?;
        let inner = Arc::new(Inner {
            path: path.to_owned(),
            options,
            names: Mutex::default(),
            open: RwLock::new(Some(Arc::new(open))),
            health: Mutex::new(Health::Good),
            closing: Condvar::new(),
            closed: AtomicBool::new(false),
            pacer: Mutex::new(None),
            conditional: Mutex::new(()),
        });
        // A reader of a stopped server's dir writes nothing to flush.
        if options.is_some() {
            let weak = Arc::downgrade(&inner);
            let pacer = std::thread::Builder::new()
                .name("fjall-upkeep".into())
                .spawn(move || upkeep(&weak))
                .map_err(|e| storage("starting the storage upkeep thread", e))?;
            *lock(&inner.pacer) = Some(pacer);
        }
        Ok(FjallBackend(inner))
    }
}

/// How often the upkeep thread looks at the memtables: often enough to
/// see each one while it is active (a busy space fills one in ~0.5 s) and
/// to free a flushed one soon after fjall lets go of it ([`LastOwner`]).
const UPKEEP_TICK: Duration = Duration::from_millis(50);
/// Every this many ticks it may flush one memtable early: one that holds
/// data of a sealed journal, or has stayed unwritten for
/// `IDLE_FLUSH_AFTER` ([`EarlyFlush`]).
const EARLY_FLUSH_EVERY: u32 = 5;
const IDLE_FLUSH_AFTER: Duration = Duration::from_secs(2);

/// Until the backend is dropped: holds every memtable so that it is freed
/// here rather than under fjall's locks, and flushes, one at a time, the
/// memtables that keep a sealed journal alive or whose spaces stopped
/// being written.
fn upkeep(inner: &std::sync::Weak<Inner>) {
    use fjall::AbstractTree as _;
    let mut policy = EarlyFlush::new(IDLE_FLUSH_AFTER);
    let mut owner = LastOwner::default();
    let mut tick = 0u32;
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        {
            let health = lock(&inner.health);
            let (_health, _) = inner
                .closing
                .wait_timeout_while(health, UPKEEP_TICK, |_| {
                    !inner.closed.load(Ordering::Acquire)
                })
                .unwrap_or_else(|p| p.into_inner());
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
        }
        // Freed first, holding nothing of the database: a reopen waits
        // for readers of the old one to let go.
        owner.release_unshared();
        // While the database is being reopened there is nothing to flush.
        let Ok(open) = inner.current() else {
            continue;
        };
        let handles = open
            .handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let observed: Vec<Observation> = handles
            .iter()
            .enumerate()
            .map(|(i, ks)| {
                let memtable = ks.tree.active_memtable();
                let seen = Observation {
                    memtable: memtable.id(),
                    highest_seqno: memtable.get_highest_seqno(),
                };
                owner.hold(i, memtable);
                seen
            })
            .collect();
        tick = tick.wrapping_add(1);
        if tick % EARLY_FLUSH_EVERY != 0 {
            continue;
        }
        let journals = open.db.journal_count();
        if let Some(i) = policy.choose(std::time::Instant::now(), &observed, journals) {
            // `rotate_memtable` is hidden from fjall's docs but public: it
            // seals the memtable and queues its flush, as the journal
            // limit would (fjall is held to 3.1.x in Cargo.toml for it).
            if let Err(e) = handles[i].rotate_memtable() {
                tracing::debug!(error = %e, "flushing an idle memtable failed; fjall retries at its own limits");
            }
        }
    }
}

impl Drop for FjallBackend {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        {
            let _guard = lock(&self.0.health);
            self.0.closing.notify_all();
        }
        let pacer = lock(&self.0.pacer).take();
        if let Some(pacer) = pacer {
            let _ = pacer.join();
        }
    }
}

impl Inner {
    /// The open database, or `unavailable` while it is being reopened.
    fn current(&self) -> Result<Arc<Open>, StorageError> {
        self.open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                StorageError::unavailable(
                    "the database is being reopened after a failed background flush; try again shortly",
                )
            })
    }

    /// Starts reopening after fjall refused a write as poisoned, unless a
    /// commit's own failure already stopped writes.
    fn poisoned(self: &Arc<Self>) -> StorageError {
        let mut health = lock(&self.health);
        match &*health {
            Health::Fault(why) => {
                return StorageError::new(format!("writes stopped after a storage failure: {why}"));
            }
            Health::Reopening => {}
            Health::Good => {
                tracing::error!(
                    path = %self.path.display(),
                    "a background flush or compaction failed (fjall logged its cause above); \
                     closing the database and opening it again"
                );
                *health = Health::Reopening;
                let inner = Arc::clone(self);
                let spawned = std::thread::Builder::new()
                    .name("fjall-reopen".into())
                    .spawn(move || inner.reopen_loop());
                if let Err(e) = spawned {
                    *health = Health::Fault(format!("the database could not be reopened: {e}"));
                }
            }
        }
        StorageError::unavailable(
            "the storage engine stopped after a failed background flush and is being reopened; nothing of this write was stored, try again shortly",
        )
    }

    /// Reopens the database, waiting longer after each failed attempt,
    /// until it is open again, a commit's own failure stops writes, or the
    /// backend is dropped.
    fn reopen_loop(&self) {
        let mut wait = REOPEN_FIRST;
        let mut attempts = 0u32;
        loop {
            {
                let health = lock(&self.health);
                let (health, _) = self
                    .closing
                    .wait_timeout_while(health, wait, |_| !self.closed.load(Ordering::Acquire))
                    .unwrap_or_else(|p| p.into_inner());
                // A commit that failed by itself in the meantime means the
                // poison may have come from it: stop, do not reopen.
                if self.closed.load(Ordering::Acquire) || !matches!(*health, Health::Reopening) {
                    return;
                }
            }
            attempts += 1;
            match self.reopen() {
                Ok(()) => {
                    tracing::warn!(attempts, path = %self.path.display(), "the database was reopened; writes go on");
                    *lock(&self.health) = Health::Good;
                    return;
                }
                Err(e) => {
                    tracing::warn!(attempts, error = %e, retry_in = ?wait * 2, "the database could not be reopened yet");
                    wait = (wait * 2).min(REOPEN_MAX);
                }
            }
        }
    }

    /// One attempt: closes the poisoned database once nothing reads from
    /// it any more, then opens it again (replaying its journal).
    fn reopen(&self) -> Result<(), StorageError> {
        // While descriptors are still short (the usual cause), closing the
        // database would only stop reads too: keep it until a file can be
        // opened.
        std::fs::File::open(&self.path)
            .map_err(|e| storage("the data dir cannot be opened yet", e))?;
        let old = {
            let mut slot = self.open.write().unwrap_or_else(|p| p.into_inner());
            if let Some(old) = slot.as_ref() {
                let holders = Arc::strong_count(old) - 1;
                if holders > 0 {
                    return Err(StorageError::new(format!(
                        "{holders} snapshot(s) or scan(s) still read the old database"
                    )));
                }
            }
            // From here readers answer `unavailable` instead of waiting for
            // the journal's replay.
            slot.take()
        };
        // Nothing else holds it: dropping it stops fjall's workers and
        // releases its lock file before the new open takes it.
        drop(old);
        let names = lock(&self.names).clone();
        let open = open_db(&self.path, self.options, &names)?;
        *self.open.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(open));
        Ok(())
    }
}

/// A scan's iterator, holding the database it reads open.
struct HeldIter {
    iter: fjall::Iter,
    _open: Arc<Open>,
}

impl Iterator for HeldIter {
    type Item = fjall::Guard;
    fn next(&mut self) -> Option<fjall::Guard> {
        self.iter.next()
    }
}

impl DoubleEndedIterator for HeldIter {
    fn next_back(&mut self) -> Option<fjall::Guard> {
        self.iter.next_back()
    }
}

/// fjall's iterators own what they read from, so a scan needs no borrow.
fn scan_with(
    open: Result<Arc<Open>, StorageError>,
    space: SpaceId,
    range: KeyRange,
    order: Order,
    run: impl FnOnce(&Keyspace, (std::ops::Bound<Vec<u8>>, std::ops::Bound<Vec<u8>>)) -> fjall::Iter,
) -> Entries {
    if range.is_empty() {
        return Box::new(std::iter::empty());
    }
    let open = match open {
        Ok(open) => open,
        Err(e) => return Box::new(std::iter::once(Err(e))),
    };
    let iter = match open.get(space) {
        Ok(ks) => run(&ks, (range.start, range.end)),
        Err(e) => return Box::new(std::iter::once(Err(e))),
    };
    let entry = |kv: fjall::Guard| {
        kv.into_inner()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .map_err(|e| storage("read", e))
    };
    let held = HeldIter { iter, _open: open };
    match order {
        Order::Ascending => Box::new(held.map(entry)),
        Order::Descending => Box::new(held.rev().map(entry)),
    }
}

fn space_id(index: usize) -> Result<SpaceId, StorageError> {
    u16::try_from(index)
        .map(SpaceId)
        .map_err(|_| StorageError::new("too many spaces"))
}

fn get_from(open: &Open, space: SpaceId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
    open.get(space)?
        .get(key)
        .map(|v| v.map(|v| v.to_vec()))
        .map_err(|e| storage("read", e))
}

impl ReadView for FjallBackend {
    fn get(&self, space: SpaceId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        get_from(&*self.0.current()?, space, key)
    }

    fn scan(&self, space: SpaceId, range: KeyRange, order: Order) -> Entries {
        scan_with(self.0.current(), space, range, order, |ks, r| ks.range(r))
    }
}

impl Backend for FjallBackend {
    fn open_space(&self, name: &str) -> Result<SpaceId, StorageError> {
        let mut names = lock(&self.0.names);
        if let Some(i) = names.iter().position(|n| n == name) {
            return space_id(i);
        }
        let id = space_id(names.len())?;
        let open = self.0.current()?;
        let ks = open_keyspace(&open.db, self.0.options, name)?;
        // Under the names lock, so handles and names stay in step.
        open.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(ks);
        names.push(name.to_owned());
        Ok(id)
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        let open = self.0.current()?;
        Ok(Snapshot::new(FjallSnapshot {
            snap: open.db.snapshot(),
            open,
        }))
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.write(batch)?.durable()
    }

    fn end_patience(&self) {
        if let Ok(open) = self.0.current() {
            let mut state = lock(&open.sync);
            state.patience_ended += 1;
            open.synced.notify_all();
        }
    }

    /// Writes the batch to the journal and the memtables without an
    /// fsync; the [`Written`] fsyncs the journal (or waits for another
    /// writer's fsync that covers it). The journal is one file written in
    /// order, so a batch is never durable without those before it: a
    /// reader that acts on a batch not yet durable makes its own write
    /// durable first, and so that batch too.
    fn write(&self, batch: WriteBatch) -> Result<Written, StorageError> {
        if let Health::Fault(why) = &*lock(&self.0.health) {
            return Err(StorageError::new(format!(
                "writes stopped after a storage failure: {why}"
            )));
        }
        let open = self.0.current()?;
        let synced = batch.is_synced();
        let mut b = open.db.batch();
        // Notices are for other processes, and no other process opens
        // this database.
        let (ops, expected, _notices) = batch.into_parts();
        let conditional = if expected.is_empty() {
            None
        } else {
            let held = lock(&self.0.conditional);
            for (i, e) in expected.iter().enumerate() {
                if get_from(&open, e.space, &e.key)? != e.value {
                    return Err(StorageError::conflict(format!(
                        "expectation {} of the batch (space {}, key {}) no longer holds; nothing of the batch was written",
                        i + 1,
                        e.space.0,
                        short_hex(&e.key)
                    )));
                }
            }
            Some(held)
        };
        {
            let handles = open.handles.read().unwrap_or_else(|p| p.into_inner());
            for op in ops {
                match op {
                    WriteOp::Put { space, key, value } => {
                        b.insert(handle(&handles, space)?, key, value);
                    }
                    WriteOp::Delete { space, key } => b.remove(handle(&handles, space)?, key),
                }
            }
        }
        let committed = b.commit();
        let seq = open.written.fetch_add(1, Ordering::AcqRel) + 1;
        drop(conditional);
        match committed {
            Ok(()) if !synced => Ok(Written::durable_now()),
            Ok(()) => {
                let inner = Arc::clone(&self.0);
                Ok(Written::after(move |patience| {
                    match open.sync_through(seq, patience) {
                        Ok(()) => Ok(()),
                        Err(fjall::Error::Poisoned) => Err(StorageError::new(format!(
                            "the journal was not synced ({}); the batch may or may not have been written",
                            inner.poisoned()
                        ))),
                        Err(e) => {
                            let why = format!("journal fsync: {e}");
                            let mut health = lock(&inner.health);
                            if matches!(*health, Health::Good) {
                                *health = Health::Fault(why.clone());
                            }
                            Err(StorageError::new(why))
                        }
                    }
                }))
            }
            // fjall checks its poison flag before writing anything.
            Err(fjall::Error::Poisoned) => Err(self.0.poisoned()),
            Err(e) => {
                let why = format!("commit: {e}");
                let mut health = lock(&self.0.health);
                *health = Health::Fault(why.clone());
                Err(StorageError::new(why))
            }
        }
    }

    fn engine(&self) -> &'static str {
        "fjall"
    }

    /// After a failed background flush, yes (the database is reopened and
    /// nothing was written); after a commit's own failed write, no.
    fn survives_failed_commit(&self) -> bool {
        !matches!(*lock(&self.0.health), Health::Fault(_))
    }
}

/// A fjall snapshot and the database it reads.
struct FjallSnapshot {
    snap: fjall::Snapshot,
    open: Arc<Open>,
}

impl ReadView for FjallSnapshot {
    fn get(&self, space: SpaceId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.snap
            .get(&self.open.get(space)?, key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| storage("read", e))
    }

    fn scan(&self, space: SpaceId, range: KeyRange, order: Order) -> Entries {
        let snap = &self.snap;
        scan_with(Ok(Arc::clone(&self.open)), space, range, order, |ks, r| {
            snap.range(ks, r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;

    /// A reader that took its snapshot before a space was opened (the job
    /// store opens its spaces after the ledger's, while the ledger's views
    /// live on) reads that space as empty, not as an error.
    #[test]
    fn a_snapshot_taken_before_a_space_was_opened_can_read_it() {
        let dir = std::env::temp_dir().join(format!(
            "pulse-fjall-unit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let storage = Storage::new(FjallBackend::open(&dir, FjallOptions::default()).unwrap());
        let first = storage.space("first").unwrap();
        let before = storage.snapshot().unwrap();
        let later = storage.space("later").unwrap();
        let mut batch = storage.batch();
        batch.insert(&later, b"k", b"v");
        batch.insert(&first, b"k", b"v");
        storage.commit(batch).unwrap();
        assert_eq!(before.get(&later, b"k").unwrap(), None);
        assert_eq!(before.range::<&[u8]>(&later, ..).count(), 0);
        assert_eq!(before.get(&first, b"k").unwrap(), None);
        let after = storage.snapshot().unwrap();
        assert_eq!(after.get(&later, b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(later.get(b"k").unwrap(), Some(b"v".to_vec()));
        drop((before, after, first, later, storage));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Opens the database in `dir` again, as a restart does, checks that
    /// each of `keys` of space `s` holds what [`put`] wrote, and removes it.
    fn reopened_holds(dir: &std::path::Path, keys: &[&[u8]]) {
        let backend = FjallBackend::open(dir, FjallOptions::default()).unwrap();
        let space = backend.open_space("s").unwrap();
        for key in keys {
            assert_eq!(backend.get(space, key).unwrap(), Some(b"v".to_vec()));
        }
        drop(backend);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A space created by this open splits its tables at `table_bytes`,
    /// so a merge rewrites only the tables its input overlaps (with one
    /// table per space, every merge rewrote the whole space).
    #[test]
    fn a_space_is_compacted_into_tables_of_the_configured_size() {
        fn tables_after_compaction(table_bytes: u64) -> usize {
            let dir = std::env::temp_dir().join(format!(
                "pulse-fjall-tables-{}-{table_bytes}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let mib = 1024 * 1024;
            let options = FjallOptions {
                memtable_bytes: mib,
                table_bytes,
                ..FjallOptions::default()
            };
            let backend = FjallBackend::open(&dir, options).unwrap();
            let space = backend.open_space("s").unwrap();
            // 6 MiB of values that do not compress, each memtable's keys
            // spread over the whole range, so that every table overlaps
            // the next level's (keys written in order would only move
            // down).
            let mut value = vec![0u8; 4096];
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            for i in 0u32..1536 {
                for byte in value.iter_mut() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *byte = state as u8;
                }
                let mut batch = WriteBatch::default();
                batch.ops.push(WriteOp::Put {
                    space,
                    key: (i * 37 % 1536).to_be_bytes().to_vec(),
                    value: value.clone(),
                });
                backend.write(batch).unwrap().durable().unwrap();
            }
            let open = backend.0.current().unwrap();
            let handles = open.handles.read().unwrap();
            let keyspace = handle(&handles, space).unwrap();
            keyspace.rotate_memtable_and_wait().unwrap();
            // fjall merges level 0 into the next level on its own once it
            // holds 4 tables.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let below_l0 = || keyspace.table_count() - keyspace.l0_table_count();
            while (keyspace.l0_table_count() >= 4 || below_l0() == 0)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let tables = below_l0();
            drop(handles);
            drop((open, backend));
            let _ = std::fs::remove_dir_all(&dir);
            tables
        }
        // The tables below level 0: 4 MiB or more merged in tables of
        // 1 MiB, against one table at fjall's default.
        let small = tables_after_compaction(1024 * 1024);
        assert!(small >= 4, "{small} tables");
        assert_eq!(tables_after_compaction(64 * 1024 * 1024), 1);
    }

    fn put(space: SpaceId, key: &[u8]) -> WriteBatch {
        let mut batch = WriteBatch::default();
        batch.ops.push(WriteOp::Put {
            space,
            key: key.to_vec(),
            value: b"v".to_vec(),
        });
        batch
    }

    /// Two batches written before one fsync are both durable after it:
    /// the second writer's fsync covers the first, which then waits for
    /// nothing. Both are visible at once, and after a reopen.
    #[test]
    fn one_fsync_makes_every_batch_written_before_it_durable() {
        let dir = std::env::temp_dir().join(format!("pulse-fjall-sync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let backend = FjallBackend::open(&dir, FjallOptions::default()).unwrap();
            let space = backend.open_space("s").unwrap();
            let first = backend.write(put(space, b"a")).unwrap();
            let second = backend.write(put(space, b"b")).unwrap();
            assert_eq!(backend.get(space, b"a").unwrap(), Some(b"v".to_vec()));
            assert_eq!(
                backend.journal_syncs(),
                0,
                "nothing is synced before it is asked"
            );
            second.durable().unwrap();
            assert_eq!(backend.journal_syncs(), 1);
            first.durable().unwrap();
            assert_eq!(
                backend.journal_syncs(),
                1,
                "the first batch was synced with the second"
            );
            // A commit still syncs its own batch.
            backend.commit(put(space, b"c")).unwrap();
            assert_eq!(backend.journal_syncs(), 2);
            // An unsynced batch costs no fsync.
            let mut quiet = put(space, b"d");
            quiet.synced = false;
            backend.commit(quiet).unwrap();
            assert_eq!(backend.journal_syncs(), 2);
        }
        reopened_holds(&dir, &[b"a", b"b", b"c"]);
    }

    /// A patient writer lets the fsync of a batch written after its own
    /// cover both; with nobody else writing it syncs by itself, once its
    /// patience runs out or it is told nobody is coming.
    #[test]
    fn a_patient_writer_shares_the_next_writers_fsync() {
        let dir = std::env::temp_dir().join(format!("pulse-fjall-patient-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let backend = Arc::new(FjallBackend::open(&dir, FjallOptions::default()).unwrap());
            let space = backend.open_space("s").unwrap();
            let enqueue = backend.write(put(space, b"a")).unwrap();
            let (waiting_tx, waiting) = std::sync::mpsc::channel();
            let patient = std::thread::spawn(move || {
                waiting_tx.send(()).unwrap();
                // Far longer than the test: only another fsync ends it.
                enqueue.durable_within(std::time::Duration::from_secs(600))
            });
            waiting.recv().unwrap();
            // The woken writer (the dispatcher) writes behind it and syncs.
            let step = backend.write(put(space, b"b")).unwrap();
            step.durable().unwrap();
            patient.join().unwrap().unwrap();
            assert_eq!(
                backend.journal_syncs(),
                1,
                "the second writer's fsync made the first batch durable"
            );
            // Nobody else writes: a short patience runs out, then it syncs.
            let alone = backend.write(put(space, b"c")).unwrap();
            alone
                .durable_within(std::time::Duration::from_millis(5))
                .unwrap();
            assert_eq!(backend.journal_syncs(), 2);
            // The woken writer has nothing to write: at its word the
            // patient one stops waiting and syncs by itself.
            let told = backend.write(put(space, b"d")).unwrap();
            let patient = std::thread::spawn(move || {
                told.durable_within(std::time::Duration::from_secs(600))
            });
            while !patient.is_finished() {
                backend.end_patience();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            patient.join().unwrap().unwrap();
            assert_eq!(backend.journal_syncs(), 3);
        }
        reopened_holds(&dir, &[b"a", b"b", b"c", b"d"]);
    }

    /// Writers on several threads, each answered only once durable, share
    /// fsyncs and lose nothing.
    #[test]
    fn concurrent_commits_are_all_kept() {
        let dir = std::env::temp_dir().join(format!("pulse-fjall-group-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let backend = Arc::new(FjallBackend::open(&dir, FjallOptions::default()).unwrap());
            let space = backend.open_space("s").unwrap();
            let threads: Vec<_> = (0..4u8)
                .map(|t| {
                    let backend = Arc::clone(&backend);
                    std::thread::spawn(move || {
                        for i in 0..100u8 {
                            backend.commit(put(space, &[t, i])).unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
        let backend = FjallBackend::open(&dir, FjallOptions::default()).unwrap();
        let space = backend.open_space("s").unwrap();
        for t in 0..4u8 {
            for i in 0..100u8 {
                assert!(backend.get(space, &[t, i]).unwrap().is_some(), "{t}/{i}");
            }
        }
        drop(backend);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
