//! The durable job store: live jobs by ID and finished jobs by state in
//! the ledger's storage (fjall or PostgreSQL), and the queues in memory. Every
//! transition is one atomic, durable batch; dequeue reads the first key of
//! an ordered set in memory (O(log n)).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::storage::{KeyRange, Order, Space, Storage, WriteBatch};
use serde::{Deserialize, Serialize};

use super::budget::Budget;
use super::error::PulseError;
use super::handler_load::{HandlerLoad, LoadDelta};
use super::job::{
    Job, JobId, JobLimits, JobRequest, JobState, LeaseToken, MAX_PRIORITY, check_request,
};
use super::job_metrics::JobCounters;
use super::live_records::{self, LiveRecords, RecordWrite};
use super::record::{decode as record_from_slice, encode as record_to_vec};
use super::transition::Transition;
use crate::ledger::{Ledger, LedgerError, LedgerErrorCode};
use crate::{Did, HandlerSchema};

mod budgets;
mod ids;
mod listing;
mod logs;
mod pruning;
mod queues;

pub(super) use ids::IdSource;
pub use listing::{JobFilter, LIST_PAGE_BYTES, LIST_SCAN};
pub use logs::{LogLine, MAX_LOG_LINE_BYTES, MAX_LOG_LINES};
use queues::load_queues;
pub(super) use queues::{Move, Queues};

/// Job store keyspaces. The four queues (`Ready` to `Held`) are kept in
/// memory ([`Queues`]) with these keys, rebuilt at open from the live
/// records; their spaces stay (the numbering is by position) but are
/// empty ([`META_QUEUES_IN_MEMORY`]), as are `ByState` and `Finished`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Jk {
    /// job ID (16) → stored record of a live job (queued, held, running
    /// or retrying); a finished job's is in [`Jk::Done`].
    Jobs = 0,
    /// (9 − priority) (1) ‖ job ID (16) → empty: queued jobs that are due,
    /// highest priority first, then oldest first.
    Ready = 1,
    /// time (u64 BE) ‖ job ID → empty: queued jobs before their run_at and
    /// retrying jobs before their retry time.
    Delayed = 2,
    /// deadline (u64 BE) ‖ job ID → empty: running jobs by attempt deadline.
    Running = 3,
    /// held reason (1) ‖ job ID → empty.
    Held = 4,
    /// handler key (32) ‖ idempotency key → job ID.
    Idem = 5,
    /// Empty since [`META_FINISHED_APART`]: earlier versions kept an entry
    /// per job here (state (1) ‖ job ID), the live ones under one byte.
    ByState = 6,
    /// handler key (32; all zero for the default) → budget record.
    Budget = 7,
    /// handler key (32) ‖ minute (u64 BE) → cost spent in that minute.
    Spend = 8,
    /// job ID (16) ‖ sequence number (u64 BE, from 1) → [`LogLine`].
    Log = 9,
    /// Empty since [`META_FINISH_IN_STATE`]: earlier versions kept here
    /// time the job finished (u64 BE) ‖ job ID, for pruning, a second
    /// entry per finished job.
    Finished = 10,
    /// name → value: the store's own markers ([`META_FINISHED_APART`],
    /// [`META_QUEUES_IN_MEMORY`], …).
    Meta = 11,
    /// schedule ID (16) → stored [`Schedule`](super::Schedule).
    Schedules = 12,
    /// handler key (32) → [`HandlerLoad`]: its attempts running on all
    /// nodes and their reservations; kept only while several nodes share
    /// the store ([`META_LOADS`]).
    Loads = 13,
    /// state (1: succeeded 4, dead 5, cancelled 6) ‖ job ID (16) → stored
    /// record of a finished job, so that a listing of a finished state and
    /// pruning read one space in ID order, and a job's end moves its record
    /// here (two writes) instead of rewriting it and moving an index entry
    /// (three).
    Done = 14,
}

/// Set once the records of finished jobs have moved to [`Jk::Done`] and
/// the state index ([`Jk::ByState`]) is emptied: a no-op job writes 4
/// entries in its life instead of 6.
const META_FINISHED_APART: &[u8] = b"finished_apart";

/// Set once the finished index ([`Jk::Finished`]) written by earlier
/// versions has been emptied: a finished job's state entry carries the
/// time it finished, and pruning reads those, so a job's end writes one
/// index entry instead of two.
const META_FINISH_IN_STATE: &[u8] = b"finish_in_state";

/// Set once the queue spaces (ready, delayed, running, held) written by
/// earlier versions have been emptied: the queues are kept in memory only,
/// rebuilt at open from the live jobs' records, so a transition writes two
/// fewer index entries.
const META_QUEUES_IN_MEMORY: &[u8] = b"queues_in_memory";

/// Set while the handler loads ([`Jk::Loads`]) count every running
/// attempt: written by the first node to open a shared store (which counts
/// them), removed by a single server (which does not keep them up to date).
const META_LOADS: &[u8] = b"handler_loads";

const KEYSPACES: [(Jk, &str); 15] = [
    (Jk::Jobs, "jobs"),
    (Jk::Ready, "job_ready"),
    (Jk::Delayed, "job_delayed"),
    (Jk::Running, "job_running"),
    (Jk::Held, "job_held"),
    (Jk::Idem, "job_idem"),
    (Jk::ByState, "job_by_state"),
    (Jk::Budget, "job_budget"),
    (Jk::Spend, "job_spend"),
    (Jk::Log, "job_log"),
    (Jk::Finished, "job_finished"),
    (Jk::Meta, "job_meta"),
    (Jk::Schedules, "job_schedules"),
    (Jk::Loads, "job_load"),
    (Jk::Done, "job_done"),
];

/// Commits lost in a row to other nodes sharing the store before a write
/// is answered as failed (each loss means another node wrote the same
/// job, idempotency key or spend record).
const MAX_RACES: usize = 16;

/// The notice topic of changed jobs ([`JobStore::announce`]).
pub(super) const JOBS_TOPIC: &str = "jobs";

/// Why a job store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// The request or transition broke a rule of spec/pulse.md.
    #[error("{0}")]
    Rejected(#[from] PulseError),
    /// No job with that ID.
    #[error("not_found: no job {0}")]
    NotFound(JobId),
    /// No schedule with that ID.
    #[error("not_found: no schedule {0}")]
    ScheduleNotFound(super::ScheduleId),
    /// Storage failed or stored data is corrupt.
    #[error("{0}")]
    Storage(#[from] LedgerError),
    /// An attempt could not start: the handler's attempts on all nodes
    /// already fill its concurrency or its budget (several nodes only).
    #[error("handler_full: handler {0} is at its max_concurrency or budget on all nodes")]
    HandlerFull(Box<Did>),
}

/// Where a page of [`JobStore::ready_after`] ended.
#[derive(Debug, Clone)]
pub struct ReadyCursor(Vec<u8>);

/// A job-store batch written and visible, not yet known durable
/// ([`JobStore::write_batch`]).
pub(super) struct PendingCommit {
    written: crate::storage::Written,
    started: std::time::Instant,
    span: Option<crate::timeline::Span>,
    ops: u64,
}

/// A group of transitions written and visible, not yet known durable
/// ([`JobStore::begin_group`]): its results stand only once
/// [`JobStore::finish_group`] returns them.
pub(super) struct GroupInFlight<T> {
    results: Vec<Result<T, JobError>>,
    /// The commit to wait for, and what to record once it is durable;
    /// `None` if nothing was written (the results are final).
    commit: Option<(PendingCommit, Vec<Transition>, Vec<JobId>)>,
}

impl<T> GroupInFlight<T> {
    fn done(results: Vec<Result<T, JobError>>) -> GroupInFlight<T> {
        GroupInFlight {
            results,
            commit: None,
        }
    }

    /// Whether a batch was written that is not yet durable.
    pub(super) fn writes(&self) -> bool {
        self.commit.is_some()
    }
}

/// A job as stored: the job and the queue index key it currently has.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Stored {
    job: Job,
    /// (keyspace tag, key) of its queue index entry, if any.
    placement: Option<(u8, Vec<u8>)>,
}

/// One transition of a group commit ([`JobStore::update_many`]). It may be
/// run more than once: when another node sharing the store changed one of
/// the group's jobs first, the whole group is run again on what that node
/// wrote, so a transition must give the same answer for the same job.
pub type GroupOp<T> = Box<dyn FnMut(&mut Job) -> Result<T, PulseError>>;

/// The limits a group's starts are admitted under, per handler key: its
/// concurrency (`None`: none) and its budget.
pub(super) type Admission = HashMap<[u8; 32], (Option<u32>, Budget)>;

/// A job's record and, when other nodes share the store, its stored bytes.
type StoredRaw = (Stored, Option<Vec<u8>>);

/// A job a group touches: its first version as stored (and its bytes,
/// when other nodes share the store), and its latest version.
type Touched = (Stored, Option<Vec<u8>>, Job);

/// Handler loads as read: the stored bytes and what they say.
type StoredLoads = HashMap<[u8; 32], (Option<Vec<u8>>, HandlerLoad)>;

/// Writes each handler's load after `deltas`, expecting the record read
/// (`loads`) unchanged: a start or end on another node in between makes
/// the batch a conflict, run again on what is stored then. A load back at
/// zero is removed.
fn stage_loads(
    space: &Space,
    batch: &mut WriteBatch,
    loads: &StoredLoads,
    deltas: &[([u8; 32], LoadDelta)],
) {
    for (handler, delta) in deltas {
        if delta.is_zero() {
            continue;
        }
        let (raw, load) = loads.get(handler).cloned().unwrap_or_default();
        batch.expect(space, handler, raw.as_deref());
        let new = load.plus(*delta);
        if new == HandlerLoad::default() {
            batch.remove(space, handler);
        } else {
            batch.insert(space, handler, new.encode());
        }
    }
}

/// The durable job queue.
pub struct JobStore {
    pub(super) storage: Storage,
    ks: Vec<Space>,
    /// Serialises writers (so idempotency checks and index moves are
    /// atomic) and hands out job IDs.
    writer: Mutex<IdSource>,
    /// The queues (ready, delayed, running, held), in memory only: every
    /// dispatcher step scans them, and storing them cost two writes per
    /// transition. Rebuilt at open ([`load_queues`]); changed after each
    /// commit, under `writer`.
    queues: Mutex<Queues>,
    /// Set when a commit failed on a store that goes on after one
    /// (PostgreSQL): whether it was written is unknown, so the queue
    /// indexes are read again from the store before the next write.
    queues_stale: std::sync::atomic::AtomicBool,
    /// New jobs are refused while the disk is nearly full (the ledger's
    /// guard); reports and results of running jobs still go through.
    space: crate::ledger::SpaceGuard,
    /// Schedules that are not paused, by next occurrence: (next_at, ID).
    /// Loaded at open; changed after each commit, under `writer`.
    pub(super) due: Mutex<std::collections::BTreeSet<(u64, [u8; 16])>>,
    /// What happened to jobs, for metrics.
    counters: std::sync::Arc<JobCounters>,
    /// Who waits for which job to change (WatchJob).
    changes: std::sync::Arc<super::JobChanges>,
    /// Whether other nodes share the store: changes are then announced to
    /// them, and theirs followed ([`JobStore::follow_other_nodes`]).
    shared: bool,
    /// This node's name, when it is one of several ([`JobStore::as_node`]).
    node: Option<String>,
    /// Writes refused because another node changed what they expected
    /// (each was run again).
    lost_races: std::sync::atomic::AtomicU64,
    /// The records of live jobs as last written, on a single server.
    live: LiveRecords<Stored>,
    /// Called when an enqueue has written jobs ready to run, before its
    /// fsync ([`JobStore::wake_on_ready`]).
    on_ready: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// The job_done key the last pruning pass read up to, where the next
    /// one goes on (empty: from the first finished record).
    prune_from: Mutex<Vec<u8>>,
    /// Writes of finished jobs' records so far, counted under `writer`
    /// as they are staged: pruning reads records before it takes the
    /// writer lock, and reads them again under it only if this moved.
    finished_writes: std::sync::atomic::AtomicU64,
}

/// How long an enqueue that woke the dispatcher waits for the
/// dispatcher's step to write and fsync before it fsyncs itself: about a
/// step's work before its commit. Past it, the enqueue's own fsync goes
/// ahead, so at worst an acknowledgement waits this much longer.
const SHARED_FSYNC_PATIENCE: std::time::Duration = std::time::Duration::from_micros(1500);

/// What a staged batch changes in memory once it is written
/// ([`JobStore::apply`]): the queue moves and, on a single server, the
/// records of the jobs it writes.
#[derive(Default)]
pub(super) struct Effects {
    moves: Vec<Move>,
    records: Vec<RecordWrite<Stored>>,
}

pub(super) fn storage(e: impl std::fmt::Display) -> JobError {
    JobError::Storage(LedgerError::storage("job store", e))
}

pub(super) fn corrupt(what: &str) -> JobError {
    JobError::Storage(LedgerError::new(
        LedgerErrorCode::Integrity,
        format!("job store: {what}"),
    ))
}

fn state_byte(s: &JobState) -> u8 {
    match s {
        JobState::Queued => 0,
        JobState::Held(_) => 1,
        JobState::Running => 2,
        JobState::Retrying => 3,
        JobState::Succeeded => 4,
        JobState::Dead(_) => 5,
        JobState::Cancelled(_) => 6,
    }
}

/// The first key bytes of finished jobs in [`Jk::Done`] (their
/// [`state_byte`]s), in the order listings and pruning read them.
const DONE_BYTES: [u8; 3] = [4, 5, 6];

/// Where a job's record is stored: a live job's in `jobs` under its ID, a
/// finished one's in `job_done` under its state byte ‖ ID.
fn record_place(state: &JobState, id: &JobId) -> (Jk, Vec<u8>) {
    if state.is_terminal() {
        (Jk::Done, keyed(&[state_byte(state)], id))
    } else {
        (Jk::Jobs, id.0.to_vec())
    }
}

/// Every place a job's record may be, live first.
fn record_places(id: &JobId) -> [(Jk, Vec<u8>); 4] {
    let done = |byte: u8| (Jk::Done, keyed(&[byte], id));
    [
        (Jk::Jobs, id.0.to_vec()),
        done(DONE_BYTES[0]),
        done(DONE_BYTES[1]),
        done(DONE_BYTES[2]),
    ]
}

fn keyed(prefix: &[u8], id: &JobId) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.0);
    k
}

/// The job of a key made by [`keyed`] from a one-byte prefix (the ready,
/// held and state keys); `integrity` naming `what` when it is not one.
pub(super) fn byte_keyed(key: &[u8], what: &str) -> Result<JobId, JobError> {
    key.get(1..17)
        .and_then(|k| k.try_into().ok())
        .map(JobId)
        .ok_or_else(|| corrupt(&format!("{what} key")))
}

/// The time and job of a key made by [`keyed`] from a big-endian time
/// (the delayed and running keys); `integrity` naming `what`
/// when it is not one.
pub(super) fn time_keyed(key: &[u8], what: &str) -> Result<(u64, JobId), JobError> {
    let bad = || corrupt(&format!("{what} key"));
    let time = key
        .get(..8)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(bad)?;
    let id = key
        .get(8..24)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(bad)?;
    Ok((u64::from_be_bytes(time), JobId(id)))
}

/// Where a job belongs in the queue indexes at time `now`.
fn placement(job: &Job, now: u64) -> Option<(u8, Vec<u8>)> {
    match job.state {
        JobState::Queued if job.run_at > now => {
            Some((Jk::Delayed as u8, keyed(&job.run_at.to_be_bytes(), &job.id)))
        }
        JobState::Queued => Some((
            Jk::Ready as u8,
            keyed(&[MAX_PRIORITY - job.priority.min(MAX_PRIORITY)], &job.id),
        )),
        JobState::Retrying => Some((
            Jk::Delayed as u8,
            keyed(&job.retry_at.unwrap_or(0).to_be_bytes(), &job.id),
        )),
        JobState::Running => {
            let started = job.live_attempt().map_or(now, |a| a.started_at);
            let deadline = started.saturating_add(job.limits.timeout_ms);
            Some((Jk::Running as u8, keyed(&deadline.to_be_bytes(), &job.id)))
        }
        JobState::Held(reason) => Some((Jk::Held as u8, keyed(&[reason as u8], &job.id))),
        _ => None,
    }
}

/// The job of a key in `jobs` (its ID).
pub(super) fn id_keyed(key: &[u8]) -> Result<JobId, JobError> {
    key.try_into()
        .map(JobId)
        .map_err(|_| corrupt("job key is not 16 bytes"))
}

/// The newest job ID stored, live or finished (new IDs go after it).
fn newest_id(ks: &[Space]) -> Result<Option<JobId>, JobError> {
    let live = ks[Jk::Jobs as usize].last_key_value().map_err(storage)?;
    let mut newest = live.map(|(key, _)| id_keyed(&key)).transpose()?;
    for byte in DONE_BYTES {
        let last = ks[Jk::Done as usize]
            .last_in(KeyRange::prefix(&[byte]))
            .map_err(storage)?;
        if let Some((key, _)) = last {
            newest = newest.max(Some(byte_keyed(&key, "finished job")?));
        }
    }
    Ok(newest)
}

/// The answers to a group whose commit failed: every result that
/// succeeded becomes the storage failure (`what` not persisted); refused
/// ones keep their own error.
fn fail_all<T>(
    results: Vec<Result<T, JobError>>,
    what: &str,
    e: &crate::storage::StorageError,
) -> Vec<Result<T, JobError>> {
    let err = storage(format!("{what} not persisted: {e}"));
    results
        .into_iter()
        .map(|r| r.and(Err(err.clone())))
        .collect()
}

/// The answers to an enqueue group whose batch was not persisted: every
/// job it created fails, and so does a repeat of one created in the same
/// batch (`in_batch`). Repeats of jobs stored before stand only when the
/// batch lost a race (a conflict: what it met was read from the store):
/// after any other failure a repeat may name a job of a group written just
/// before and not yet durable, which the same failure may have lost.
fn not_persisted(
    results: Vec<Result<(Job, bool), JobError>>,
    in_batch: &[(Vec<u8>, Job)],
    e: &crate::storage::StorageError,
) -> Vec<Result<(Job, bool), JobError>> {
    let err = storage(format!("enqueue not persisted: {e}"));
    let unwritten: Vec<JobId> = in_batch.iter().map(|(_, j)| j.id).collect();
    results
        .into_iter()
        .map(|r| match r {
            Ok((job, true)) if e.is_conflict() && !unwritten.contains(&job.id) => Ok((job, true)),
            Ok(_) => Err(err.clone()),
            Err(e) => Err(e),
        })
        .collect()
}

impl JobStore {
    /// The names of the storage spaces the job store keeps: jobs, their
    /// indexes and logs, budgets, spending and schedules (for copying a
    /// store).
    pub fn space_names() -> Vec<&'static str> {
        KEYSPACES.iter().map(|(_, name)| *name).collect()
    }

    /// Opens the job keyspaces in the ledger's database.
    ///
    /// # Errors
    /// Storage failures.
    pub fn open(ledger: &Ledger) -> Result<JobStore, JobError> {
        let db = ledger.storage().clone();
        let ks = KEYSPACES
            .iter()
            .map(|(_, name)| db.space(name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        let newest = newest_id(&ks)?;
        let shared = db.is_shared();
        let store = JobStore {
            storage: db,
            ks,
            writer: Mutex::new(IdSource::after(newest)),
            queues: Mutex::default(),
            queues_stale: std::sync::atomic::AtomicBool::new(false),
            space: ledger.space_guard().clone(),
            due: Mutex::default(),
            counters: std::sync::Arc::default(),
            changes: std::sync::Arc::default(),
            shared,
            node: None,
            lost_races: std::sync::atomic::AtomicU64::new(0),
            live: LiveRecords::new(!shared, live_records::MAX_BYTES),
            on_ready: std::sync::OnceLock::new(),
            prune_from: Mutex::default(),
            finished_writes: std::sync::atomic::AtomicU64::new(0),
        };
        store.empty_finished_index()?;
        store.empty_stored_queues()?;
        store.move_finished_records()?;
        *store.queues() = load_queues(&store.ks)?;
        store.count_loads()?;
        store.load_schedules()?;
        Ok(store)
    }

    /// Makes the handler loads ([`Jk::Loads`]) right for how the store is
    /// opened. A single server does not keep them (its dispatcher counts
    /// its own attempts, which are all of them), so it marks them stale;
    /// the first node to open a shared store with stale loads counts every
    /// running attempt once, in a batch that expects the marker still
    /// absent, so that two nodes starting together count once.
    fn count_loads(&self) -> Result<(), JobError> {
        let meta = self.ks(Jk::Meta);
        for _ in 0..MAX_RACES {
            let marked = meta.get(META_LOADS).map_err(storage)?;
            if marked.is_some() == self.shared {
                return Ok(());
            }
            let mut batch = self.batch();
            for kv in self.ks(Jk::Loads).iter() {
                batch.remove(self.ks(Jk::Loads), kv.map_err(storage)?.0);
            }
            if self.shared {
                let mut loads: HashMap<[u8; 32], HandlerLoad> = HashMap::new();
                for job in self.running()? {
                    let d = LoadDelta::of(None, &job);
                    let l = loads.entry(*job.handler.public_key()).or_default();
                    *l = l.plus(d);
                }
                for (h, l) in loads {
                    batch.insert(self.ks(Jk::Loads), h, l.encode());
                }
                batch.expect(meta, META_LOADS, None);
                batch.insert(meta, META_LOADS, b"1");
            } else {
                batch.remove(meta, META_LOADS);
            }
            match self.storage.commit(batch) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(storage(e)),
            }
        }
        Err(storage(
            "handler loads not counted: other nodes kept writing",
        ))
    }

    /// Stores written before finished state entries carried their finish
    /// time hold a second entry per finished job in the finished index:
    /// emptied once (nothing reads it any more).
    fn empty_finished_index(&self) -> Result<(), JobError> {
        let removes = self
            .ks(Jk::Finished)
            .iter()
            .map(|kv| Ok((Jk::Finished, kv.map_err(storage)?.0, None)));
        self.upgrade_once(META_FINISH_IN_STATE, removes)
    }

    /// Stores written before finished records moved to [`Jk::Done`] hold
    /// every record in `jobs` and an entry per job in the state index:
    /// each finished record is moved once (the records are read, not the
    /// index, so a store from any earlier version moves the same way) and
    /// the index is emptied.
    fn move_finished_records(&self) -> Result<(), JobError> {
        let moves = self.ks(Jk::Jobs).iter().flat_map(|kv| {
            let moved = kv.map_err(storage).and_then(|(key, raw)| {
                let id = id_keyed(&key)?;
                let stored: Stored =
                    record_from_slice(&raw).map_err(|e| corrupt(&format!("job {id}: {e}")))?;
                Ok((id, stored.job.state, raw))
            });
            match moved {
                Ok((id, state, raw)) if state.is_terminal() => {
                    let (k, key) = record_place(&state, &id);
                    vec![Ok((k, key, Some(raw))), Ok((Jk::Jobs, id.0.to_vec(), None))]
                }
                Ok(_) => Vec::new(),
                Err(e) => vec![Err(e)],
            }
        });
        let entries = self
            .ks(Jk::ByState)
            .iter()
            .map(|kv| Ok((Jk::ByState, kv.map_err(storage)?.0, None)));
        self.upgrade_once(META_FINISHED_APART, moves.chain(entries))
    }

    /// Stores written before the queues moved to memory still hold the
    /// four queue spaces: emptied once (nothing reads them any more), so
    /// that they neither take space nor go stale.
    fn empty_stored_queues(&self) -> Result<(), JobError> {
        let removes = [Jk::Ready, Jk::Delayed, Jk::Running, Jk::Held]
            .into_iter()
            .flat_map(|k| {
                self.ks(k)
                    .iter()
                    .map(move |kv| Ok((k, kv.map_err(storage)?.0, None)))
            });
        self.upgrade_once(META_QUEUES_IN_MEMORY, removes)
    }

    /// A one-time change to a store written by an earlier version: unless
    /// `marker` is set in job_meta, applies `writes` (space, key, and the
    /// value to put, or `None` to remove it) 10,000 (or 16 MiB) per
    /// commit, then sets `marker` (so an interrupted run starts over,
    /// harmlessly: every write is the same when made again). Nodes sharing
    /// a store expect the marker absent in every commit, so that once one
    /// node has set it (and may serve), the others' commits fail and they
    /// find it set; before that, nodes opening together make the same
    /// writes. No node serves before the marker is set, so nothing else
    /// changes meanwhile (nodes of an earlier version must all be stopped
    /// first, spec/pulse.md).
    fn upgrade_once(
        &self,
        marker: &[u8],
        writes: impl Iterator<Item = Result<(Jk, Vec<u8>, Option<Vec<u8>>), JobError>>,
    ) -> Result<(), JobError> {
        const MAX_WRITES: usize = 10_000;
        const MAX_BYTES: usize = 16 * 1024 * 1024;
        if self.ks(Jk::Meta).get(marker).map_err(storage)?.is_some() {
            return Ok(());
        }
        let commit = |mut batch: WriteBatch, last: bool| {
            self.expect_unchanged(&mut batch, Jk::Meta, marker, None);
            if last {
                batch.insert(self.ks(Jk::Meta), marker, b"1");
            }
            self.storage.commit(batch)
        };
        let (mut batch, mut bytes) = (self.batch(), 0usize);
        for write in writes {
            let (k, key, put) = write?;
            bytes += key.len() + put.as_ref().map_or(0, Vec::len);
            match put {
                Some(value) => batch.insert(self.ks(k), key, value),
                None => batch.remove(self.ks(k), key),
            }
            if batch.len() >= MAX_WRITES || bytes >= MAX_BYTES {
                match commit(std::mem::replace(&mut batch, self.batch()), false) {
                    Err(e) if e.is_conflict() => return Ok(()),
                    other => other.map_err(storage)?,
                }
                bytes = 0;
            }
        }
        match commit(batch, true) {
            // Another node set the marker: it made the change.
            Err(e) if e.is_conflict() => Ok(()),
            other => other.map_err(storage),
        }
    }

    /// The writer lock, and the ID source under it.
    pub(super) fn writer(&self) -> std::sync::MutexGuard<'_, IdSource> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.queues_stale.load(std::sync::atomic::Ordering::Acquire) {
            self.reload_queues();
        }
        guard
    }

    /// Commits a batch of job transitions, timed for the metrics. The
    /// caller holds the writer lock.
    pub(super) fn commit(&self, batch: WriteBatch) -> Result<(), crate::storage::StorageError> {
        let pending = self.write_batch(batch)?;
        self.durable(pending)
    }

    /// The first half of [`JobStore::commit`]: the batch written and
    /// visible, not yet durable. The caller holds the writer lock, applies
    /// the batch's queue moves under it, and may release it before
    /// [`JobStore::durable`], so that the next group (an enqueue while the
    /// dispatcher's step waits for its fsync, say) is written meanwhile
    /// and can share that fsync. Nothing that depends on the batch is
    /// answered or started before `durable` returns; a later batch that
    /// does (a dispatch of a job just enqueued) is durable only with it.
    pub(super) fn write_batch(
        &self,
        batch: WriteBatch,
    ) -> Result<PendingCommit, crate::storage::StorageError> {
        let span = crate::timeline::span("jobs_commit");
        let ops = batch.len() as u64;
        let started = std::time::Instant::now();
        let r = self.storage.write(batch);
        if let Err(e) = &r {
            self.counters.commit.observe(started.elapsed());
            crate::timeline::end(span, &[("ops", ops)]);
            if e.is_conflict() {
                self.lost_races
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                // The writer lock is held: read the indexes again now.
                self.commit_failed();
                if self.storage.survives_failed_commit() {
                    self.reload_queues();
                }
            }
            return Err(e.clone());
        }
        r.map(|written| PendingCommit {
            written,
            started,
            span,
            ops,
        })
    }

    /// The second half of [`JobStore::commit`]: waits until the batch is
    /// durable. The writer lock need not be held.
    pub(super) fn durable(&self, p: PendingCommit) -> Result<(), crate::storage::StorageError> {
        self.durable_within(p, std::time::Duration::ZERO)
    }

    /// [`JobStore::durable`], letting another writer's fsync that begins
    /// within `patience` cover the batch ([`crate::storage::Written::durable_within`]).
    fn durable_within(
        &self,
        p: PendingCommit,
        patience: std::time::Duration,
    ) -> Result<(), crate::storage::StorageError> {
        let r = p.written.durable_within(patience);
        self.counters.commit.observe(p.started.elapsed());
        crate::timeline::end(p.span, &[("ops", p.ops)]);
        if r.is_err() {
            self.commit_failed();
        }
        r
    }

    fn commit_failed(&self) {
        self.live.clear();
        if self.storage.survives_failed_commit() {
            // The batch may have been written all the same: the indexes in
            // memory follow the store, not the answer (read again under
            // the writer lock).
            self.queues_stale
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// This store as the node `name` of several sharing it: the attempts
    /// it starts are recorded as this node's, and only those are recovered
    /// when it starts again (spec/pulse.md, "Several nodes").
    #[must_use]
    pub fn as_node(mut self, name: impl Into<String>) -> JobStore {
        self.node = Some(name.into());
        self
    }

    /// Records as interrupted every attempt left running by this process
    /// (on a node: the attempts recorded as this node's; on a single
    /// server: all), as a restart does, and as a node that stops does for
    /// the attempts it could not finish, so that they are retried at once
    /// elsewhere. Returns how many.
    ///
    /// # Errors
    /// Storage failures.
    pub fn interrupt_own_attempts(&self, now: u64) -> Result<usize, JobError> {
        let mut interrupted = 0;
        for job in self.running()? {
            let Some(a) = job.live_attempt() else {
                continue;
            };
            if self.node.is_some() && a.node != self.node {
                continue;
            }
            let lease = a.lease;
            self.update(&job.id, now, |j| j.interrupt(&lease, now))?;
            interrupted += 1;
        }
        Ok(interrupted)
    }

    /// Writes this node lost to another node sharing the store (each was
    /// run again on what that node wrote).
    pub fn lost_races(&self) -> u64 {
        self.lost_races.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This node's name, if it is one of several.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Whether other nodes share the store.
    pub(super) fn is_shared(&self) -> bool {
        self.shared
    }

    /// A handler's attempts running on all nodes and their reservations,
    /// as stored (kept only while several nodes share the store; a single
    /// server's dispatcher counts its own).
    ///
    /// # Errors
    /// Storage failures.
    pub fn handler_load(&self, handler: &Did) -> Result<HandlerLoad, JobError> {
        let raw = self
            .ks(Jk::Loads)
            .get(handler.public_key())
            .map_err(storage)?;
        HandlerLoad::decode(raw.as_deref()).map_err(|e| corrupt(&e))
    }

    /// Calls `wake` (the dispatcher's) each time an enqueue has written
    /// jobs that are ready to run, before the enqueue's fsync, so that the
    /// dispatcher's next step can write their dispatch behind them and one
    /// fsync makes both durable (spec/pulse.md, "Enqueue and dispatch
    /// share an fsync"). Set once; later calls are ignored.
    pub fn wake_on_ready(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_ready.set(Box::new(wake));
    }

    /// Follows the changes other nodes sharing the store make (nothing to
    /// follow on a store this process has alone): jobs they changed are
    /// read again into the queues and their watchers woken, schedules
    /// they changed into the due index, and `wake` is called (to step the
    /// dispatcher). After notices may have been missed, everything is read
    /// again. The thread ends with the store.
    pub fn follow_other_nodes(self: &std::sync::Arc<Self>, wake: impl Fn() + Send + 'static) {
        use crate::storage::Notice;
        use tokio::sync::broadcast::error::RecvError;
        let Some(mut notices) = self.storage.notices() else {
            return;
        };
        let store = std::sync::Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("jobs-follower".into())
            .spawn(move || {
                loop {
                    let notice = notices.blocking_recv();
                    let Some(store) = store.upgrade() else {
                        return;
                    };
                    match notice {
                        Ok(Notice::Message { topic, payload }) if topic == JOBS_TOPIC => {
                            let ids: Vec<JobId> = payload
                                .split(',')
                                .filter_map(|h| hex::decode(h).ok())
                                .filter_map(|b| b.try_into().ok().map(JobId))
                                .collect();
                            store.refresh_jobs(&ids);
                        }
                        Ok(Notice::Message { topic, .. })
                            if topic == super::schedule_store::SCHEDULES_TOPIC =>
                        {
                            if let Err(e) = store.load_schedules() {
                                tracing::warn!(error = %e, "schedules not read again");
                            }
                        }
                        Ok(Notice::Message { .. }) => continue,
                        Ok(Notice::Gap) | Err(RecvError::Lagged(_)) => {
                            let _writer = store.writer.lock().unwrap_or_else(|p| p.into_inner());
                            store.reload_queues();
                            if let Err(e) = store.load_schedules() {
                                tracing::warn!(error = %e, "schedules not read again");
                            }
                            store.changes.changed_all();
                        }
                        Err(RecvError::Closed) => return,
                    }
                    wake();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot follow other nodes' job changes");
        }
    }

    /// Puts jobs another node changed where their stored records say, and
    /// wakes their watchers. A job whose record cannot be read now leaves
    /// the queues marked stale (read again before the next write).
    fn refresh_jobs(&self, ids: &[JobId]) {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        for page in ids.chunks(256) {
            let records = match self.read_records(page) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "jobs another node changed not read yet");
                    self.queues_stale
                        .store(true, std::sync::atomic::Ordering::Release);
                    return;
                }
            };
            let mut queues = self.queues();
            for (id, record) in page.iter().zip(records) {
                let stored: Option<Stored> = record.and_then(|r| record_from_slice(&r).ok());
                let (new, handler) = match &stored {
                    Some(s) => (s.placement.clone(), *s.job.handler.public_key()),
                    // Pruned: out of every queue.
                    None => (None, [0; 32]),
                };
                let moves = queues.moves_to(&id.0, new, handler);
                queues.apply(moves);
            }
        }
        self.changes.changed(ids.iter().copied());
    }

    /// Tells the other nodes sharing the store that these jobs changed, if
    /// the batch commits (`jobs` notices: IDs in hex, comma-separated).
    pub(super) fn announce(&self, batch: &mut WriteBatch, ids: impl Iterator<Item = JobId>) {
        if !self.shared {
            return;
        }
        let mut text = String::new();
        for id in ids {
            if text.len() + 33 > crate::storage::MAX_NOTICE_BYTES {
                batch.announce(JOBS_TOPIC, std::mem::take(&mut text));
            }
            if !text.is_empty() {
                text.push(',');
            }
            text.push_str(&hex::encode(id.0));
        }
        if !text.is_empty() {
            batch.announce(JOBS_TOPIC, text);
        }
    }

    /// Reads the queue indexes again from the store (under the writer
    /// lock). If the store cannot be read, they stay marked stale and the
    /// next writer tries again.
    fn reload_queues(&self) {
        match load_queues(&self.ks) {
            Ok(q) => {
                *self.queues() = q;
                self.queues_stale
                    .store(false, std::sync::atomic::Ordering::Release);
                tracing::info!("job queue indexes read again from the store after a failed commit");
            }
            Err(e) => tracing::warn!(error = %e, "job queue indexes not read again yet"),
        }
    }

    /// Logs committed transitions and counts them.
    pub(super) fn record_transitions(&self, all: &[Transition]) {
        for t in all {
            t.log();
            self.counters.observe(t);
        }
    }

    /// Starts watching a job: woken after each change to it is committed.
    pub fn watch(&self, id: JobId) -> super::ChangeWatch {
        self.changes.watch(id)
    }

    /// What happened to jobs since the store opened, for metrics.
    pub fn counters(&self) -> std::sync::Arc<JobCounters> {
        std::sync::Arc::clone(&self.counters)
    }

    /// Jobs in the queue indexes now: (ready, delayed, running, held).
    /// Delayed jobs are queued before their run_at, or retrying.
    pub fn queue_sizes(&self) -> (usize, usize, usize, usize) {
        let q = self.queues();
        (
            q.set(Jk::Ready).len(),
            q.set(Jk::Delayed).len(),
            q.set(Jk::Running).len(),
            q.set(Jk::Held).len(),
        )
    }

    /// The `n` handlers with the most ready jobs, most first, and how many
    /// each has; and the number of handlers with ready jobs.
    pub fn deepest_queues(&self, n: usize) -> (Vec<(Did, usize)>, usize) {
        let q = self.queues();
        let mut depths: Vec<([u8; 32], usize)> = q
            .ready_by_handler
            .iter()
            .map(|(k, set)| (*k, set.len()))
            .collect();
        let handlers = depths.len();
        depths.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let top = depths
            .into_iter()
            .take(n)
            .filter_map(|(k, d)| Did::from_public_key(k).ok().map(|did| (did, d)))
            .collect();
        (top, handlers)
    }

    /// Ok unless the disk is nearly full (new work is refused then).
    pub(super) fn space_check(&self) -> Result<(), JobError> {
        self.space.check().map_err(JobError::Storage)
    }

    /// A new batch, fsynced on commit.
    pub(super) fn batch(&self) -> WriteBatch {
        self.storage.batch()
    }

    pub(super) fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn ks(&self, k: Jk) -> &Space {
        &self.ks[k as usize]
    }

    fn load(&self, id: &JobId) -> Result<Option<Stored>, JobError> {
        Ok(self.load_raw(id)?.map(|(stored, _)| stored))
    }

    /// A job's record and, when other nodes share the store, its stored
    /// bytes, which a write of it expects unchanged (another node may have
    /// written it meanwhile). On a single server the record may come from
    /// memory ([`LiveRecords`]).
    fn load_raw(&self, id: &JobId) -> Result<Option<StoredRaw>, JobError> {
        if let Some(kept) = self.live.get(id) {
            return Ok(Some((Stored::clone(&kept), None)));
        }
        match self.read_records(std::slice::from_ref(id))?.pop().flatten() {
            Some(v) => record_from_slice(&v)
                .map(|stored| Some((stored, self.shared.then_some(v))))
                .map_err(|e| corrupt(&format!("job {id}: {e}"))),
            None => Ok(None),
        }
    }

    /// The stored records of these jobs, live or finished, in order: one
    /// read of every place each may be ([`record_places`]; one round trip
    /// on PostgreSQL). The places are not read at one instant, so a job
    /// moved meanwhile (retried, live again, after its place there was
    /// read) may be found in none: those are read once more.
    fn read_records(&self, ids: &[JobId]) -> Result<Vec<Option<Vec<u8>>>, JobError> {
        let mut found = self.read_places(ids)?;
        let missing: Vec<JobId> = ids
            .iter()
            .zip(&found)
            .filter(|(_, r)| r.is_none())
            .map(|(id, _)| *id)
            .collect();
        if !missing.is_empty() {
            let mut again = self.read_places(&missing)?.into_iter();
            for record in found.iter_mut().filter(|r| r.is_none()) {
                *record = again.next().flatten();
            }
        }
        Ok(found)
    }

    /// One read of every place of each job ([`JobStore::read_records`]).
    fn read_places(&self, ids: &[JobId]) -> Result<Vec<Option<Vec<u8>>>, JobError> {
        let places: Vec<(Jk, Vec<u8>)> = ids.iter().flat_map(record_places).collect();
        let keys: Vec<(&Space, &[u8])> = places
            .iter()
            .map(|(k, key)| (self.ks(*k), key.as_slice()))
            .collect();
        let mut found = self.storage.get_many(&keys).map_err(storage)?.into_iter();
        let mut out = Vec::with_capacity(ids.len());
        for _ in ids {
            let mut first = None;
            for record in found.by_ref().take(4) {
                first = first.or(record);
            }
            out.push(first);
        }
        Ok(out)
    }

    /// Adds to `batch` the expectation that `key` in `k` still holds
    /// `value` when it commits, if other nodes share the store. A single
    /// server needs none: every job store write holds the writer lock,
    /// under which the value was read.
    pub(super) fn expect_unchanged(
        &self,
        batch: &mut WriteBatch,
        k: Jk,
        key: impl AsRef<[u8]>,
        value: Option<&[u8]>,
    ) {
        if self.shared {
            batch.expect(self.ks(k), key, value);
        }
    }

    /// Stages the record `new` (its stored bytes `size`) for
    /// [`LiveRecords`], applied once the batch is written.
    fn stage_record(&self, effects: &mut Effects, new: Stored, size: usize) {
        if self.live.is_enabled() {
            let id = new.job.id;
            let live = !new.job.state.is_terminal();
            effects.records.push((id, live.then_some((new, size))));
        }
    }

    /// Applies what a written batch changes in memory. The caller holds
    /// the writer lock.
    pub(super) fn apply(&self, effects: Effects) {
        self.queues().apply(effects.moves);
        self.live.apply(effects.records);
    }

    /// The job with this ID.
    ///
    /// # Errors
    /// `not_found`; storage failures.
    pub fn get(&self, id: &JobId) -> Result<Job, JobError> {
        self.load(id)?.map(|s| s.job).ok_or(JobError::NotFound(*id))
    }

    /// Enqueues one job; see [`JobStore::enqueue_batch`].
    ///
    /// # Errors
    /// As for one item of the batch.
    pub fn enqueue(
        &self,
        handler: &Did,
        schema: &HandlerSchema,
        req: &JobRequest,
        now: u64,
    ) -> Result<(Job, bool), JobError> {
        self.enqueue_batch(&[(handler.clone(), schema.clone(), req.clone())], now)
            .pop()
            .unwrap_or_else(|| Err(corrupt("empty batch result")))
    }

    /// Enqueues jobs under one fsync. Each result is the job and whether it
    /// already existed (same handler and idempotency key: the existing job
    /// is returned and nothing is written for it). Acknowledged only after
    /// the batch is persisted with `SyncAll`.
    pub fn enqueue_batch(
        &self,
        items: &[(Did, HandlerSchema, JobRequest)],
        now: u64,
    ) -> Vec<Result<(Job, bool), JobError>> {
        if let Err(e) = self.space.check() {
            return items
                .iter()
                .map(|_| Err(JobError::Storage(e.clone())))
                .collect();
        }
        let mut counter = self.writer();
        let mut races = 0;
        let (results, effects, pending) = loop {
            let mut batch = self.batch();
            let mut results = Vec::with_capacity(items.len());
            let mut keys_in_batch: Vec<(Vec<u8>, Job)> = Vec::new();
            let mut effects = Effects::default();
            for (handler, schema, req) in items {
                results.push(self.stage_enqueue(
                    &mut counter,
                    &mut batch,
                    &mut effects,
                    &mut keys_in_batch,
                    (handler, schema, req),
                    now,
                ));
            }
            let new_ids: Vec<JobId> = results
                .iter()
                .flatten()
                .filter(|(_, existed)| !existed)
                .map(|(job, _)| job.id)
                .collect();
            if let Err(e) = self.check_unused(&new_ids) {
                return results.into_iter().map(|r| r.and(Err(e.clone()))).collect();
            }
            self.announce(&mut batch, new_ids.into_iter());
            let e = match self.write_batch(batch) {
                Ok(pending) => break (results, effects, pending),
                // Another node took an idempotency key (or, by a chance
                // of one in 2^32, an ID) first: stage again, to find its
                // job.
                Err(e) if e.is_conflict() && races < MAX_RACES => {
                    races += 1;
                    continue;
                }
                Err(e) => e,
            };
            return not_persisted(results, &keys_in_batch, &e);
        };
        let ready = effects
            .moves
            .iter()
            .any(|(tag, _, added, _)| *added && *tag == Jk::Ready as u8);
        self.apply(effects);
        // Visible now; durable below, without the writer lock (see
        // `write_batch`). Jobs found by their idempotency key were
        // durable before this batch, or are only now with it: no answer
        // goes out before the fsync either way.
        drop(counter);
        // The dispatcher may choose the new jobs at once: it starts an
        // attempt only once its own batch is durable, which this one then
        // is too (written before it). Its fsync can so cover both.
        let woken = match self.on_ready.get() {
            Some(wake) if ready => {
                wake();
                SHARED_FSYNC_PATIENCE
            }
            _ => std::time::Duration::ZERO,
        };
        if let Err(e) = self.durable_within(pending, woken) {
            // A repeat may name a job another group wrote just before,
            // which this failed fsync did not make durable either.
            return fail_all(results, "enqueue", &e);
        }
        let new: Vec<Transition> = results
            .iter()
            .flatten()
            .filter(|(_, existed)| !existed)
            .map(|(job, _)| Transition::of(None, job))
            .collect();
        self.record_transitions(&new);
        results
    }

    /// Adds one new job to `batch` (or finds the job its idempotency key
    /// already names, in the store or earlier in the batch: `true`).
    pub(super) fn stage_enqueue(
        &self,
        counter: &mut IdSource,
        batch: &mut WriteBatch,
        effects: &mut Effects,
        keys_in_batch: &mut Vec<(Vec<u8>, Job)>,
        (handler, schema, req): (&Did, &HandlerSchema, &JobRequest),
        now: u64,
    ) -> Result<(Job, bool), JobError> {
        check_request(req)?;
        let limits = JobLimits::resolve(schema, req)?;
        let idem_key = req.idempotency_key.as_ref().map(|k| {
            let mut key = handler.public_key().to_vec();
            key.extend_from_slice(k.as_bytes());
            key
        });
        if let Some(key) = &idem_key {
            if let Some((_, job)) = keys_in_batch.iter().find(|(k, _)| k == key) {
                return Ok((job.clone(), true));
            }
            if let Some(id) = self.ks(Jk::Idem).get(key).map_err(storage)? {
                let id = JobId(
                    id.as_slice()
                        .try_into()
                        .map_err(|_| corrupt("idempotency index"))?,
                );
                return Ok((self.get(&id)?, true));
            }
        }
        // Checked unused with the rest of the group ([`JobStore::check_unused`]).
        let id = counter.next(now);
        let job = Job::new(id, handler.clone(), req, limits, now);
        let stored = Stored {
            placement: placement(&job, now),
            job: job.clone(),
        };
        if let Some((tag, key)) = &stored.placement {
            effects
                .moves
                .push((*tag, key.clone(), true, *job.handler.public_key()));
        }
        let record = record_to_vec(&stored);
        self.stage_record(effects, stored, record.len());
        batch.insert(self.ks(Jk::Jobs), id.0, record);
        self.expect_unchanged(batch, Jk::Jobs, id.0, None);
        if let Some(key) = idem_key {
            self.expect_unchanged(batch, Jk::Idem, &key, None);
            batch.insert(self.ks(Jk::Idem), key.clone(), id.0);
            keys_in_batch.push((key, job.clone()));
        }
        Ok((job, false))
    }

    /// Refuses a group whose new job IDs are already stored in `jobs`,
    /// where their records go. IDs never repeat by construction; checking
    /// as well means no bug or clock can overwrite a stored job (a
    /// finished job's record is in job_done, which an enqueue never
    /// writes, so it is not read: three more keys per job). One read for
    /// the group: one round trip on PostgreSQL, where one per job cost more
    /// than the enqueue itself. The caller holds the writer lock.
    pub(super) fn check_unused(&self, ids: &[JobId]) -> Result<(), JobError> {
        if ids.is_empty() {
            return Ok(());
        }
        let keys: Vec<[u8; 16]> = ids.iter().map(|id| id.0).collect();
        let stored = self.ks(Jk::Jobs).get_many(&keys).map_err(storage)?;
        match ids.iter().zip(&stored).find(|(_, v)| v.is_some()) {
            Some((id, _)) => Err(corrupt(&format!(
                "job ID {id} is already taken; refusing to overwrite a stored job"
            ))),
            None => Ok(()),
        }
    }

    /// Applies one transition to a job and writes the job and its index
    /// moves in one fsynced batch. On error nothing is written.
    ///
    /// # Errors
    /// `not_found`, the transition's own rule, or storage.
    pub fn update<T>(
        &self,
        id: &JobId,
        now: u64,
        mut f: impl FnMut(&mut Job) -> Result<T, PulseError>,
    ) -> Result<T, JobError> {
        let _guard = self.writer();
        let mut races = 0;
        loop {
            let (stored, raw) = self.load_raw(id)?.ok_or(JobError::NotFound(*id))?;
            let mut job = stored.job.clone();
            let out = f(&mut job)?;
            match self.write(&stored, raw.as_deref(), job, now) {
                Ok(()) => return Ok(out),
                // Another node changed the job since it was read: apply
                // the transition again to what it wrote.
                Err(e) if e.is_conflict() && races < MAX_RACES => races += 1,
                Err(e) => return Err(storage(format!("transition not persisted: {e}"))),
            }
        }
    }

    /// Applies several transitions (in order; a job may appear more than
    /// once) and writes all their effects in one fsynced batch: one group
    /// commit for a dispatcher step. Each result is that transition's; a
    /// refused transition changes nothing.
    ///
    /// # Errors
    /// A storage failure fails every transition of the group.
    pub fn update_many<T>(
        &self,
        now: u64,
        ops: Vec<(JobId, GroupOp<T>)>,
    ) -> Vec<Result<T, JobError>> {
        self.update_many_spending(now, ops, |_| 0)
    }

    /// [`JobStore::update_many`], also recording as each job's handler's
    /// spend at `now` the cost `cost(result)` of every transition that
    /// applied, in the same batch: a cost report costs no fsync of its
    /// own.
    pub fn update_many_spending<T>(
        &self,
        now: u64,
        ops: Vec<(JobId, GroupOp<T>)>,
        cost: impl Fn(&T) -> u64,
    ) -> Vec<Result<T, JobError>> {
        self.update_many_admitting(now, ops, cost, &Admission::new())
    }

    /// [`JobStore::update_many_spending`], where on a store shared by
    /// several nodes an attempt started by the group goes ahead only if
    /// its handler's load on all nodes ([`HandlerLoad`]) then stays within
    /// the limits `admission` gives for it (its concurrency, its budget);
    /// the starts that do not fit are refused with
    /// [`JobError::HandlerFull`], the last ones first, and change nothing.
    /// The loads are read and written in the group's conditional batch, so
    /// another node's start or end in between runs the group again.
    pub(super) fn update_many_admitting<T>(
        &self,
        now: u64,
        ops: Vec<(JobId, GroupOp<T>)>,
        cost: impl Fn(&T) -> u64,
        admission: &Admission,
    ) -> Vec<Result<T, JobError>> {
        self.finish_group(self.begin_group(now, ops, cost, admission))
    }

    /// The first half of [`JobStore::update_many_admitting`]: the group's
    /// batch written, visible and applied to the queues in memory, not yet
    /// durable. The writer lock is released before it returns, so the
    /// caller may stage its next group while this one commits; nothing
    /// the group decided (an attempt to start, an answer) may leave the
    /// caller before [`JobStore::finish_group`].
    pub(super) fn begin_group<T>(
        &self,
        now: u64,
        mut ops: Vec<(JobId, GroupOp<T>)>,
        cost: impl Fn(&T) -> u64,
        admission: &Admission,
    ) -> GroupInFlight<T> {
        let guard = self.writer();
        let mut races = 0;
        loop {
            let (results, batch, staged) = self.stage_group(now, &mut ops, &cost, admission);
            let Some((effects, transitions, written)) = staged else {
                // Nothing to write (a dispatcher step with no start and no
                // report): an enqueue that woke the dispatcher and waits
                // to share its fsync makes its own now.
                drop(guard);
                self.storage.end_patience();
                return GroupInFlight::done(results);
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    return GroupInFlight::done(
                        results.into_iter().map(|r| r.and(Err(e.clone()))).collect(),
                    );
                }
            };
            match self.write_batch(batch) {
                Ok(pending) => {
                    self.apply(effects);
                    // Durable without the writer lock (see `write_batch`).
                    return GroupInFlight {
                        results,
                        commit: Some((pending, transitions, written)),
                    };
                }
                // Another node changed a job (or a spend record) of the
                // group since it was read: nothing was written; run the
                // group again on what is stored now.
                Err(e) if e.is_conflict() && races < MAX_RACES => races += 1,
                Err(e) => return GroupInFlight::done(fail_all(results, "transitions", &e)),
            }
        }
    }

    /// The second half of [`JobStore::update_many_admitting`]: waits until
    /// the group is durable, then records its transitions and wakes its
    /// watchers. Groups begun one after another finish in that order.
    pub(super) fn finish_group<T>(&self, group: GroupInFlight<T>) -> Vec<Result<T, JobError>> {
        let Some((pending, transitions, written)) = group.commit else {
            return group.results;
        };
        if let Err(e) = self.durable(pending) {
            return fail_all(group.results, "transitions", &e);
        }
        self.record_transitions(&transitions);
        self.changes.changed(written);
        group.results
    }

    /// Runs a group's transitions on the stored jobs and stages their
    /// writes: each op's result, the batch (or why it could not be
    /// staged), and — if anything changed — the queue moves, transitions
    /// and watched jobs to apply once it commits.
    #[allow(clippy::type_complexity)]
    fn stage_group<T>(
        &self,
        now: u64,
        ops: &mut [(JobId, GroupOp<T>)],
        cost: &impl Fn(&T) -> u64,
        admission: &Admission,
    ) -> (
        Vec<Result<T, JobError>>,
        Result<WriteBatch, JobError>,
        Option<(Effects, Vec<Transition>, Vec<JobId>)>,
    ) {
        // Spend per handler key in this group.
        let mut spend: HashMap<[u8; 32], u64> = HashMap::new();
        // First version (and its stored bytes) and latest version of every
        // job the group touches.
        let mut touched: Vec<Touched> = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        // Attempts the group starts, for admission: (result, touched job,
        // the job before the start).
        let mut starts: Vec<(usize, usize, Job)> = Vec::new();
        for (id, f) in ops.iter_mut() {
            let id = *id;
            let slot = match touched.iter().position(|(s, ..)| s.job.id == id) {
                Some(i) => i,
                None => match self.load_raw(&id) {
                    Ok(Some((stored, raw))) => {
                        let job = stored.job.clone();
                        touched.push((stored, raw, job));
                        touched.len() - 1
                    }
                    Ok(None) => {
                        results.push(Err(JobError::NotFound(id)));
                        continue;
                    }
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                },
            };
            let mut job = touched[slot].2.clone();
            match f(&mut job) {
                Ok(out) => {
                    let spent = cost(&out);
                    if spent > 0 {
                        let total = spend.entry(*job.handler.public_key()).or_default();
                        *total = total.saturating_add(spent);
                    }
                    let before = std::mem::replace(&mut touched[slot].2, job);
                    if self.shared && LoadDelta::of(Some(&before), &touched[slot].2).running > 0 {
                        starts.push((results.len(), slot, before));
                    }
                    results.push(Ok(out));
                }
                Err(e) => results.push(Err(e.into())),
            }
        }
        let mut batch = self.batch();
        // The handlers' loads on all nodes, when they are kept.
        let mut load_deltas: Vec<([u8; 32], LoadDelta)> = Vec::new();
        let mut loads = HashMap::new();
        if self.shared {
            for (old, _, job) in &touched {
                let d = LoadDelta::of(Some(&old.job), job);
                if d.is_zero() {
                    continue;
                }
                let h = *job.handler.public_key();
                match load_deltas.iter_mut().find(|(k, _)| *k == h) {
                    Some((_, sum)) => sum.add(d),
                    None => load_deltas.push((h, d)),
                }
            }
            loads = match self.read_loads(load_deltas.iter().map(|(h, _)| *h)) {
                Ok(l) => l,
                Err(e) => {
                    let e = storage(format!("handler loads not read: {e}"));
                    return (results, Err(e), Some(Default::default()));
                }
            };
            if let Err(e) = self.admit(
                now,
                admission,
                &loads,
                &mut load_deltas,
                (&mut touched, &mut results),
                starts,
            ) {
                return (results, Err(e), Some(Default::default()));
            }
        }
        let mut changed = false;
        let (mut effects, mut transitions) = (Effects::default(), Vec::new());
        for (handler, amount) in spend {
            match self.stage_spend(&mut batch, &handler, now, amount) {
                Ok(()) => changed = true,
                Err(e) => return (results, Err(e), Some(Default::default())),
            }
        }
        // Only gathered while someone watches a job (WatchJob).
        let watched = !self.changes.is_empty();
        let mut written = Vec::new();
        let mut announced = Vec::new();
        for (old, raw, job) in touched {
            if old.job != job {
                if watched {
                    written.push(job.id);
                }
                announced.push(job.id);
                let _ = self.stage_write(
                    &mut batch,
                    (&mut effects, &mut transitions),
                    (&old, raw.as_deref()),
                    job,
                    now,
                );
                changed = true;
            }
        }
        if !changed {
            return (results, Ok(batch), None);
        }
        stage_loads(self.ks(Jk::Loads), &mut batch, &loads, &load_deltas);
        self.announce(&mut batch, announced.into_iter());
        (results, Ok(batch), Some((effects, transitions, written)))
    }

    /// The stored loads of these handlers: each record's bytes (for the
    /// batch to expect unchanged) and what they say.
    fn read_loads(
        &self,
        handlers: impl Iterator<Item = [u8; 32]>,
    ) -> Result<StoredLoads, crate::storage::StorageError> {
        let mut out = HashMap::new();
        for h in handlers {
            let raw = self.ks(Jk::Loads).get(h)?;
            let load = HandlerLoad::decode(raw.as_deref())
                .map_err(|e| crate::storage::StorageError::new(format!("corrupt: {e}")))?;
            out.insert(h, (raw, load));
        }
        Ok(out)
    }

    /// Refuses the group's starts that would take a handler past the
    /// limits `admission` gives it, the last ones first: each such job is
    /// put back as it was before its start, its result made
    /// [`JobError::HandlerFull`], and its handler's delta lowered.
    fn admit<T>(
        &self,
        now: u64,
        admission: &Admission,
        loads: &StoredLoads,
        deltas: &mut [([u8; 32], LoadDelta)],
        (touched, results): (&mut [Touched], &mut [Result<T, JobError>]),
        starts: Vec<(usize, usize, Job)>,
    ) -> Result<(), JobError> {
        for (handler, delta) in deltas.iter_mut() {
            let Some((limit, budget)) = admission.get(handler) else {
                continue;
            };
            let stored = loads.get(handler).map(|(_, l)| *l).unwrap_or_default();
            let spent = if budget.is_limited() {
                let did = touched
                    .iter()
                    .find(|(_, _, j)| j.handler.public_key() == handler)
                    .map(|(_, _, j)| j.handler.clone());
                match did {
                    Some(did) => self.spent(&did, now)?,
                    None => (0, 0),
                }
            } else {
                (0, 0)
            };
            for (result, slot, before) in starts.iter().rev() {
                if stored.plus(*delta).fits(*limit, budget, spent) {
                    break;
                }
                if touched[*slot].2.handler.public_key() != handler {
                    continue;
                }
                let undone = LoadDelta::of(Some(before), &touched[*slot].2);
                delta.running -= undone.running;
                delta.reserved -= undone.reserved;
                touched[*slot].2 = before.clone();
                results[*result] = Err(JobError::HandlerFull(Box::new(before.handler.clone())));
            }
        }
        Ok(())
    }

    fn write(
        &self,
        old: &Stored,
        raw: Option<&[u8]>,
        job: Job,
        now: u64,
    ) -> Result<(), crate::storage::StorageError> {
        let mut batch = self.batch();
        let (mut effects, mut transitions) = (Effects::default(), Vec::new());
        let handler = *job.handler.public_key();
        let delta = self.stage_write(
            &mut batch,
            (&mut effects, &mut transitions),
            (old, raw),
            job,
            now,
        );
        if self.shared && !delta.is_zero() {
            let loads = self.read_loads([handler].into_iter())?;
            stage_loads(self.ks(Jk::Loads), &mut batch, &loads, &[(handler, delta)]);
        }
        let id = old.job.id;
        self.announce(&mut batch, std::iter::once(id));
        self.commit(batch)?;
        self.apply(effects);
        self.record_transitions(&transitions);
        self.changes.changed([id]);
        Ok(())
    }

    /// Adds a job's new record and its index moves (from `old`, as stored
    /// in the bytes `raw`, which the batch expects unchanged when other
    /// nodes share the store) to `batch`. Returns how the write changes
    /// the job's handler's load.
    fn stage_write(
        &self,
        batch: &mut WriteBatch,
        (effects, transitions): (&mut Effects, &mut Vec<Transition>),
        (old, raw): (&Stored, Option<&[u8]>),
        job: Job,
        now: u64,
    ) -> LoadDelta {
        let (was, old_key) = record_place(&old.job.state, &old.job.id);
        if let Some(raw) = raw {
            batch.expect(self.ks(was), &old_key, Some(raw));
        }
        if old.job.state.is_terminal() {
            self.finished_writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let delta = LoadDelta::of(Some(&old.job), &job);
        let new = Stored {
            placement: placement(&job, now),
            job,
        };
        if old.placement != new.placement {
            let handler = *new.job.handler.public_key();
            if let Some((tag, key)) = &old.placement {
                effects.moves.push((*tag, key.clone(), false, handler));
            }
            if let Some((tag, key)) = &new.placement {
                effects.moves.push((*tag, key.clone(), true, handler));
            }
        }
        if old.job.state != new.job.state || old.job.attempts.len() != new.job.attempts.len() {
            transitions.push(Transition::of(Some(&old.job), &new.job));
        }
        // A job that ends (or is retried) moves between the spaces.
        let (is, key) = record_place(&new.job.state, &new.job.id);
        if (was, &old_key) != (is, &key) {
            batch.remove(self.ks(was), &old_key);
        }
        let record = record_to_vec(&new);
        self.stage_record(effects, new, record.len());
        batch.insert(self.ks(is), key, record);
        delta
    }

    /// Moves jobs whose time has come out of the delayed index: queued jobs
    /// to the ready index, retrying jobs back to queued. At most `limit`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn promote_due(&self, now: u64, limit: usize) -> Result<usize, JobError> {
        let mut due = Vec::new();
        let keys: Vec<Vec<u8>> = {
            let q = self.queues();
            q.set(Jk::Delayed)
                .iter()
                .take(limit)
                .take_while(|k| k.get(..8).is_some_and(|t| t <= &now.to_be_bytes()[..]))
                .cloned()
                .collect()
        };
        for key in keys {
            let (at, id) = time_keyed(&key, "delayed")?;
            if at > now {
                break;
            }
            due.push(id);
        }
        for id in &due {
            self.update(id, now, |job| {
                if job.state == JobState::Retrying {
                    job.wake(now)?;
                }
                Ok(())
            })?;
        }
        Ok(due.len())
    }

    /// Dispatches the next ready job — highest priority, then oldest —
    /// under `lease`, or `None` if no job is ready.
    ///
    /// # Errors
    /// Storage failures.
    pub fn dispatch_next(&self, lease: LeaseToken, now: u64) -> Result<Option<Job>, JobError> {
        let Some(key) = self.queues().set(Jk::Ready).first().cloned() else {
            return Ok(None);
        };
        let id = byte_keyed(&key, "ready")?;
        let job = self.update(&id, now, |job| {
            job.dispatch(lease, now)?;
            Ok(job.clone())
        })?;
        Ok(Some(job))
    }

    /// Up to `limit` due jobs in dispatch order (priority, then age),
    /// without dispatching them.
    ///
    /// # Errors
    /// Storage failures.
    pub fn ready(&self, limit: usize) -> Result<Vec<JobId>, JobError> {
        Ok(self.ready_after(None, limit)?.0)
    }

    /// Up to `limit` due jobs in dispatch order after `cursor` (from the
    /// start without one), and the cursor for the next page: the
    /// dispatcher reads only as far as it has slots to fill.
    ///
    /// # Errors
    /// Storage failures.
    pub fn ready_after(
        &self,
        cursor: Option<&ReadyCursor>,
        limit: usize,
    ) -> Result<(Vec<JobId>, Option<ReadyCursor>), JobError> {
        use std::ops::Bound;
        let keys: Vec<Vec<u8>> = {
            let q = self.queues();
            let from = match cursor {
                Some(c) => Bound::Excluded(c.0.clone()),
                None => Bound::Unbounded,
            };
            q.set(Jk::Ready)
                .range((from, Bound::Unbounded))
                .take(limit)
                .cloned()
                .collect()
        };
        let next = keys.last().cloned().map(ReadyCursor);
        let ids = keys
            .iter()
            .map(|key| byte_keyed(key, "ready"))
            .collect::<Result<_, _>>()?;
        Ok((ids, next))
    }

    /// The handlers with ready jobs, each with its first ready job's key
    /// (priority, then age), in that order: the best job first.
    pub fn ready_handlers(&self) -> Vec<([u8; 32], ReadyCursor)> {
        let q = self.queues();
        let mut out: Vec<([u8; 32], ReadyCursor)> = q
            .ready_by_handler
            .iter()
            .filter_map(|(h, set)| set.first().map(|k| (*h, ReadyCursor(k.clone()))))
            .collect();
        out.sort_by(|a, b| a.1.0.cmp(&b.1.0));
        out
    }

    /// One handler's next ready job after `cursor` (from its first when
    /// `None`), in priority then age order, with the cursor past it.
    ///
    /// # Errors
    /// A ready key that is not one (corrupt store).
    pub fn next_ready_of(
        &self,
        handler: &[u8; 32],
        cursor: Option<&ReadyCursor>,
    ) -> Result<Option<(JobId, ReadyCursor)>, JobError> {
        use std::ops::Bound;
        let q = self.queues();
        let Some(set) = q.ready_by_handler.get(handler) else {
            return Ok(None);
        };
        let from = match cursor {
            Some(c) => Bound::Excluded(c.0.clone()),
            None => Bound::Unbounded,
        };
        let Some(key) = set.range((from, Bound::Unbounded)).next() else {
            return Ok(None);
        };
        let id = byte_keyed(key, "ready")?;
        Ok(Some((id, ReadyCursor(key.clone()))))
    }

    /// Every running job (bounded by the dispatcher's worker limit).
    ///
    /// # Errors
    /// Storage failures.
    pub fn running(&self) -> Result<Vec<Job>, JobError> {
        self.running_until(u64::MAX, usize::MAX)
    }
}

#[cfg(test)]
mod tests;
