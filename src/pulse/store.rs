//! The durable job store: jobs and their queue indexes in the ledger's
//! fjall database. Every transition is one atomic, fsynced batch; dequeue
//! reads the first key of an ordered index (O(log n)).

use std::sync::Mutex;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::{Deserialize, Serialize};

use super::budget::Budget;
use super::error::PulseError;
use super::job::{
    Job, JobId, JobLimits, JobRequest, JobState, LeaseToken, MAX_PRIORITY, check_request,
};
use crate::attest::cbor::{record_from_slice, record_to_vec};
use crate::ledger::{Ledger, LedgerError, LedgerErrorCode};
use crate::{Did, HandlerSchema};

/// Job store keyspaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Jk {
    /// job ID (16) → stored job record.
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
    /// state (1) ‖ job ID → empty: for listings by state.
    ByState = 6,
    /// handler key (32; all zero for the default) → budget record.
    Budget = 7,
    /// handler key (32) ‖ minute (u64 BE) → cost spent in that minute.
    Spend = 8,
    /// job ID (16) ‖ sequence number (u64 BE, from 1) → [`LogLine`].
    Log = 9,
}

const KEYSPACES: [(Jk, &str); 10] = [
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
];

/// Log lines kept per job: the most recent ones; older ones are dropped
/// (their sequence numbers show the gap).
pub const MAX_LOG_LINES: u64 = 1_000;
/// Longest log line kept, bytes; longer lines are cut at a character
/// boundary and marked.
pub const MAX_LOG_LINE_BYTES: usize = 4_096;

/// One line of a job's log, as an executor reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its number in the job's log, from 1.
    #[serde(skip)]
    pub seq: u64,
    /// The attempt that reported it.
    pub attempt: u32,
    /// When Pulse received it, Unix ms.
    pub at_ms: u64,
    /// The text (at most [`MAX_LOG_LINE_BYTES`]).
    pub line: String,
}

const MINUTE_MS: u64 = 60_000;

/// Memtable size of each job keyspace: small, so the shared journal's
/// limit never forces one large flush (a stall every few tens of thousands
/// of jobs) but many small ones.
const JOB_MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;

/// Why a job store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// The request or transition broke a rule of spec/pulse.md.
    #[error("{0}")]
    Rejected(#[from] PulseError),
    /// No job with that ID.
    #[error("not_found: no job {0}")]
    NotFound(JobId),
    /// Storage failed or stored data is corrupt.
    #[error("{0}")]
    Storage(#[from] LedgerError),
}

/// Where a page of [`JobStore::ready_after`] ended.
#[derive(Debug, Clone)]
pub struct ReadyCursor(Vec<u8>);

/// A job as stored: the job and the queue index key it currently has.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    job: Job,
    /// (keyspace tag, key) of its queue index entry, if any.
    placement: Option<(u8, Vec<u8>)>,
}

/// One transition of a group commit ([`JobStore::update_many`]).
pub type GroupOp<T> = Box<dyn FnOnce(&mut Job) -> Result<T, PulseError>>;

/// The durable job queue.
pub struct JobStore {
    db: Database,
    ks: Vec<Keyspace>,
    /// Serialises writers (so idempotency checks and index moves are
    /// atomic) and makes job IDs unique within a millisecond.
    writer: Mutex<u64>,
    /// The queue indexes (ready, delayed, running, held), mirrored in
    /// memory: every dispatcher step scans them, and in the LSM tree a
    /// queue's head is a long run of tombstones that each scan would step
    /// over. Loaded at open; changed after each commit, under `writer`.
    queues: Mutex<Queues>,
    /// New jobs are refused while the disk is nearly full (the ledger's
    /// guard); reports and results of running jobs still go through.
    space: crate::ledger::SpaceGuard,
}

/// The in-memory queue indexes, by keyspace tag.
#[derive(Default)]
struct Queues([std::collections::BTreeSet<Vec<u8>>; 5]);

/// A queue index change staged with a batch: (tag, key, inserted).
type Move = (u8, Vec<u8>, bool);

fn is_queue(tag: u8) -> bool {
    (Jk::Ready as u8..=Jk::Held as u8).contains(&tag)
}

impl Queues {
    fn apply(&mut self, moves: Vec<Move>) {
        for (tag, key, inserted) in moves {
            if is_queue(tag) {
                let set = &mut self.0[tag as usize];
                if inserted {
                    set.insert(key);
                } else {
                    set.remove(&key);
                }
            }
        }
    }

    fn set(&self, k: Jk) -> &std::collections::BTreeSet<Vec<u8>> {
        &self.0[k as usize]
    }
}

fn storage(e: impl std::fmt::Display) -> JobError {
    JobError::Storage(LedgerError::storage("job store", e))
}

fn corrupt(what: &str) -> JobError {
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

fn keyed(prefix: &[u8], id: &JobId) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.0);
    k
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

fn log_key(id: &JobId, seq: u64) -> Vec<u8> {
    keyed(&[], id)
        .into_iter()
        .chain(seq.to_be_bytes())
        .collect()
}

fn log_seq(key: &[u8]) -> Result<u64, JobError> {
    key.get(16..24)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("log key"))
}

impl JobStore {
    /// Opens the job keyspaces in the ledger's database.
    ///
    /// # Errors
    /// Storage failures.
    pub fn open(ledger: &Ledger) -> Result<JobStore, JobError> {
        let db = ledger.database().clone();
        let ks = KEYSPACES
            .iter()
            .map(|(_, name)| {
                db.keyspace(name, || {
                    KeyspaceCreateOptions::default().max_memtable_size(JOB_MEMTABLE_BYTES)
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        let mut queues = Queues::default();
        for k in [Jk::Ready, Jk::Delayed, Jk::Running, Jk::Held] {
            for kv in ks[k as usize].iter() {
                let key = kv.key().map_err(storage)?;
                queues.0[k as usize].insert(key.to_vec());
            }
        }
        Ok(JobStore {
            db,
            ks,
            writer: Mutex::new(0),
            queues: Mutex::new(queues),
            space: ledger.space_guard().clone(),
        })
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ks(&self, k: Jk) -> &Keyspace {
        &self.ks[k as usize]
    }

    fn load(&self, id: &JobId) -> Result<Option<Stored>, JobError> {
        match self.ks(Jk::Jobs).get(id.0).map_err(storage)? {
            Some(v) => record_from_slice(&v)
                .map(Some)
                .map_err(|e| corrupt(&format!("job {id}: {e}"))),
            None => Ok(None),
        }
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
        let mut counter = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        let mut results = Vec::with_capacity(items.len());
        let mut keys_in_batch: Vec<(Vec<u8>, Job)> = Vec::new();
        let mut moves: Vec<Move> = Vec::new();
        for (handler, schema, req) in items {
            let result = (|| -> Result<(Job, bool), JobError> {
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
                            id.as_ref()
                                .try_into()
                                .map_err(|_| corrupt("idempotency index"))?,
                        );
                        return Ok((self.get(&id)?, true));
                    }
                }
                *counter += 1;
                let id = JobId::new(now, *counter);
                let job = Job::new(id, handler.clone(), req, limits, now);
                let stored = Stored {
                    placement: placement(&job, now),
                    job: job.clone(),
                };
                if let Some((tag, key)) = &stored.placement {
                    batch.insert(&self.ks[*tag as usize], key.clone(), b"");
                    moves.push((*tag, key.clone(), true));
                }
                batch.insert(
                    self.ks(Jk::ByState),
                    keyed(&[state_byte(&job.state)], &id),
                    b"",
                );
                batch.insert(self.ks(Jk::Jobs), id.0, record_to_vec(&stored));
                if let Some(key) = idem_key {
                    batch.insert(self.ks(Jk::Idem), key.clone(), id.0);
                    keys_in_batch.push((key, job.clone()));
                }
                Ok((job, false))
            })();
            results.push(result);
        }
        if let Err(e) = batch.commit() {
            let err = storage(format!("enqueue not persisted: {e}"));
            // A repeat of a job created in this same batch was not
            // persisted either; only repeats of stored jobs stand.
            let unwritten: Vec<JobId> = keys_in_batch.iter().map(|(_, j)| j.id).collect();
            return results
                .into_iter()
                .map(|r| match r {
                    Ok((job, true)) if !unwritten.contains(&job.id) => Ok((job, true)),
                    Ok(_) => Err(err.clone()),
                    Err(e) => Err(e),
                })
                .collect();
        }
        self.queues().apply(moves);
        results
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
        f: impl FnOnce(&mut Job) -> Result<T, PulseError>,
    ) -> Result<T, JobError> {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let stored = self.load(id)?.ok_or(JobError::NotFound(*id))?;
        let mut job = stored.job.clone();
        let out = f(&mut job)?;
        self.write(&stored, job, now)?;
        Ok(out)
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
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // First and latest version of every job the group touches.
        let mut touched: Vec<(Stored, Job)> = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for (id, f) in ops {
            let slot = match touched.iter().position(|(s, _)| s.job.id == id) {
                Some(i) => i,
                None => match self.load(&id) {
                    Ok(Some(stored)) => {
                        let job = stored.job.clone();
                        touched.push((stored, job));
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
            let mut job = touched[slot].1.clone();
            match f(&mut job) {
                Ok(out) => {
                    touched[slot].1 = job;
                    results.push(Ok(out));
                }
                Err(e) => results.push(Err(e.into())),
            }
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        let mut changed = false;
        let mut moves = Vec::new();
        for (old, job) in touched {
            if old.job != job {
                self.stage_write(&mut batch, &mut moves, &old, job, now);
                changed = true;
            }
        }
        if changed {
            if let Err(e) = batch.commit() {
                let err = storage(format!("transitions not persisted: {e}"));
                return results
                    .into_iter()
                    .map(|r| r.and(Err(err.clone())))
                    .collect();
            }
            self.queues().apply(moves);
        }
        results
    }

    fn write(&self, old: &Stored, job: Job, now: u64) -> Result<(), JobError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        let mut moves = Vec::new();
        self.stage_write(&mut batch, &mut moves, old, job, now);
        batch
            .commit()
            .map_err(|e| storage(format!("transition not persisted: {e}")))?;
        self.queues().apply(moves);
        Ok(())
    }

    /// Adds a job's new record and its index moves (from `old`, as stored)
    /// to `batch`.
    fn stage_write(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        moves: &mut Vec<Move>,
        old: &Stored,
        job: Job,
        now: u64,
    ) {
        let new = Stored {
            placement: placement(&job, now),
            job,
        };
        if old.placement != new.placement {
            if let Some((tag, key)) = &old.placement {
                batch.remove(&self.ks[*tag as usize], key.clone());
                moves.push((*tag, key.clone(), false));
            }
            if let Some((tag, key)) = &new.placement {
                batch.insert(&self.ks[*tag as usize], key.clone(), b"");
                moves.push((*tag, key.clone(), true));
            }
        }
        let (a, b) = (state_byte(&old.job.state), state_byte(&new.job.state));
        if a != b {
            batch.remove(self.ks(Jk::ByState), keyed(&[a], &new.job.id));
            batch.insert(self.ks(Jk::ByState), keyed(&[b], &new.job.id), b"");
        }
        batch.insert(self.ks(Jk::Jobs), new.job.id.0, record_to_vec(&new));
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
            let at = u64::from_be_bytes(
                key.get(..8)
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| corrupt("delayed key"))?,
            );
            if at > now {
                break;
            }
            due.push(JobId(
                key.get(8..24)
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| corrupt("delayed key"))?,
            ));
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
        let id = JobId(
            key.get(1..17)
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| corrupt("ready key"))?,
        );
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
            .map(|key| {
                key.get(1..17)
                    .and_then(|k| k.try_into().ok())
                    .map(JobId)
                    .ok_or_else(|| corrupt("ready key"))
            })
            .collect::<Result<_, _>>()?;
        Ok((ids, next))
    }

    /// Every running job (bounded by the dispatcher's worker limit).
    ///
    /// # Errors
    /// Storage failures.
    pub fn running(&self) -> Result<Vec<Job>, JobError> {
        self.running_until(u64::MAX, usize::MAX)
    }

    /// Deletes finished jobs (succeeded, dead, cancelled) last changed
    /// before `cutoff_ms`, with their index entries and idempotency keys; at
    /// most `limit` per call. The ledger is never pruned.
    ///
    /// # Errors
    /// Storage failures.
    pub fn prune_finished(&self, cutoff_ms: u64, limit: usize) -> Result<usize, JobError> {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        let mut pruned = 0;
        for state in [4u8, 5, 6] {
            for kv in self.ks(Jk::ByState).prefix([state]) {
                if pruned == limit {
                    break;
                }
                let key = kv.key().map_err(storage)?;
                let id = JobId(
                    key.get(1..17)
                        .and_then(|k| k.try_into().ok())
                        .ok_or_else(|| corrupt("state key"))?,
                );
                let Some(stored) = self.load(&id)? else {
                    continue;
                };
                if stored.job.updated_at >= cutoff_ms {
                    continue;
                }
                batch.remove(self.ks(Jk::ByState), key.to_vec());
                batch.remove(self.ks(Jk::Jobs), id.0);
                for kv in self.ks(Jk::Log).prefix(id.0) {
                    batch.remove(self.ks(Jk::Log), kv.key().map_err(storage)?.to_vec());
                }
                if let Some(k) = &stored.job.idempotency_key {
                    let mut idem = stored.job.handler.public_key().to_vec();
                    idem.extend_from_slice(k.as_bytes());
                    batch.remove(self.ks(Jk::Idem), idem);
                }
                pruned += 1;
            }
        }
        batch
            .commit()
            .map_err(|e| storage(format!("prune not persisted: {e}")))?;
        Ok(pruned)
    }

    /// Sets a handler's budget (`None`: the default for handlers without
    /// their own).
    ///
    /// # Errors
    /// Storage failures.
    pub fn set_budget(&self, handler: Option<&Did>, budget: Budget) -> Result<(), JobError> {
        let key = handler.map_or([0u8; 32], |h| *h.public_key());
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(self.ks(Jk::Budget), key, record_to_vec(&budget));
        batch.commit().map_err(storage)
    }

    /// The budget that applies to a handler: its own, else the default,
    /// else none.
    ///
    /// # Errors
    /// Storage failures.
    pub fn budget(&self, handler: &Did) -> Result<Budget, JobError> {
        for key in [*handler.public_key(), [0u8; 32]] {
            if let Some(v) = self.ks(Jk::Budget).get(key).map_err(storage)? {
                return record_from_slice(&v).map_err(|e| corrupt(&format!("budget: {e}")));
            }
        }
        Ok(Budget::default())
    }

    /// The default budget (for handlers without their own).
    ///
    /// # Errors
    /// Storage failures.
    pub fn default_budget(&self) -> Result<Budget, JobError> {
        match self.ks(Jk::Budget).get([0u8; 32]).map_err(storage)? {
            Some(v) => record_from_slice(&v).map_err(|e| corrupt(&format!("budget: {e}"))),
            None => Ok(Budget::default()),
        }
    }

    /// Records cost spent by a handler at `now` (durably).
    ///
    /// # Errors
    /// Storage failures.
    pub fn record_spend(&self, handler: &Did, now: u64, amount: u64) -> Result<(), JobError> {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = handler.public_key().to_vec();
        key.extend_from_slice(&(now / MINUTE_MS).to_be_bytes());
        let before = match self.ks(Jk::Spend).get(&key).map_err(storage)? {
            Some(v) => {
                u64::from_be_bytes(v.as_ref().try_into().map_err(|_| corrupt("spend record"))?)
            }
            None => 0,
        };
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(
            self.ks(Jk::Spend),
            key,
            before.saturating_add(amount).to_be_bytes(),
        );
        batch.commit().map_err(storage)
    }

    /// A handler's spend over the last 60 and 1,440 minutes (minute
    /// buckets, the current one included).
    ///
    /// # Errors
    /// Storage failures.
    pub fn spent(&self, handler: &Did, now: u64) -> Result<(u64, u64), JobError> {
        let minute = now / MINUTE_MS;
        let key = |m: u64| {
            let mut k = handler.public_key().to_vec();
            k.extend_from_slice(&m.to_be_bytes());
            k
        };
        let (mut hour, mut day) = (0u64, 0u64);
        for kv in self
            .ks(Jk::Spend)
            .range(key(minute.saturating_sub(1_439))..=key(minute))
        {
            let (k, v) = kv.into_inner().map_err(storage)?;
            let m = u64::from_be_bytes(
                k.get(32..40)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| corrupt("spend key"))?,
            );
            let amount =
                u64::from_be_bytes(v.as_ref().try_into().map_err(|_| corrupt("spend record"))?);
            day = day.saturating_add(amount);
            if m + 60 > minute {
                hour = hour.saturating_add(amount);
            }
        }
        Ok((hour, day))
    }

    /// Appends lines to jobs' logs, keeping each job's last
    /// [`MAX_LOG_LINES`]. Not fsynced on its own: a log is for people, and
    /// the next durable batch persists it (losing the last lines in a
    /// crash is allowed; losing acknowledged state is not).
    ///
    /// # Errors
    /// Storage failures.
    pub fn append_logs(&self, lines: Vec<(JobId, LogLine)>) -> Result<(), JobError> {
        if lines.is_empty() {
            return Ok(());
        }
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next: std::collections::HashMap<JobId, u64> = std::collections::HashMap::new();
        let mut batch = self.db.batch();
        for (id, mut line) in lines {
            let seq = match next.get(&id) {
                Some(n) => *n,
                None => self.last_log_seq(&id)? + 1,
            };
            next.insert(id, seq + 1);
            line.line = super::job::cut_text(line.line, MAX_LOG_LINE_BYTES);
            batch.insert(self.ks(Jk::Log), log_key(&id, seq), record_to_vec(&line));
            if seq > MAX_LOG_LINES {
                batch.remove(self.ks(Jk::Log), log_key(&id, seq - MAX_LOG_LINES));
            }
        }
        batch.commit().map_err(storage)
    }

    fn last_log_seq(&self, id: &JobId) -> Result<u64, JobError> {
        match self.ks(Jk::Log).prefix(id.0).next_back() {
            Some(kv) => log_seq(&kv.key().map_err(storage)?),
            None => Ok(0),
        }
    }

    /// A job's log lines with sequence numbers after `after`, oldest first,
    /// at most `limit`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn log(&self, id: &JobId, after: u64, limit: usize) -> Result<Vec<LogLine>, JobError> {
        let mut out = Vec::new();
        let from = log_key(id, after.saturating_add(1));
        let to = log_key(id, u64::MAX);
        for kv in self.ks(Jk::Log).range(from..=to).take(limit) {
            let (k, v) = kv.into_inner().map_err(storage)?;
            let mut line: LogLine =
                record_from_slice(&v).map_err(|e| corrupt(&format!("log line: {e}")))?;
            line.seq = log_seq(&k)?;
            out.push(line);
        }
        Ok(out)
    }

    /// Held jobs for `reason`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn held(&self, reason: u8, limit: usize) -> Result<Vec<JobId>, JobError> {
        let mut out = Vec::new();
        let keys: Vec<Vec<u8>> = self
            .queues()
            .set(Jk::Held)
            .range(vec![reason]..)
            .take_while(|k| k.first() == Some(&reason))
            .take(limit)
            .cloned()
            .collect();
        for key in keys {
            out.push(JobId(
                key.get(1..17)
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| corrupt("held key"))?,
            ));
        }
        Ok(out)
    }

    /// Jobs in `state`, oldest first, after
    /// `cursor`, at most `limit`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn list(
        &self,
        state: &JobState,
        cursor: Option<&JobId>,
        limit: usize,
    ) -> Result<Vec<Job>, JobError> {
        let b = state_byte(state);
        let start = match cursor {
            Some(c) => {
                let mut k = keyed(&[b], c);
                k.push(0);
                k
            }
            None => vec![b],
        };
        let mut out = Vec::new();
        for kv in self.ks(Jk::ByState).range(start..) {
            let key = kv.key().map_err(storage)?;
            if key.first() != Some(&b) || out.len() >= limit.clamp(1, 1000) {
                break;
            }
            let id = JobId(
                key.get(1..17)
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| corrupt("state key"))?,
            );
            out.push(self.get(&id)?);
        }
        Ok(out)
    }

    /// Running jobs whose attempt deadline is at or before `now`, at most
    /// `limit`, earliest first (for timeouts, and for recovery at start-up
    /// with `now = u64::MAX`).
    ///
    /// # Errors
    /// Storage failures.
    pub fn running_until(&self, now: u64, limit: usize) -> Result<Vec<Job>, JobError> {
        let mut out = Vec::new();
        let keys: Vec<Vec<u8>> = self
            .queues()
            .set(Jk::Running)
            .iter()
            .take(limit)
            .cloned()
            .collect();
        for key in keys {
            let deadline = u64::from_be_bytes(
                key.get(..8)
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| corrupt("running key"))?,
            );
            if deadline > now {
                break;
            }
            let id = JobId(
                key.get(8..24)
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| corrupt("running key"))?,
            );
            out.push(self.get(&id)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records are written packed; records written with field names (by
    /// earlier versions) read the same.
    #[test]
    fn named_and_packed_records_read_alike() {
        let handler = crate::Did::from_public_key([
            0x3b, 0x6a, 0x27, 0xbc, 0xce, 0xb6, 0xa4, 0x2d, 0x62, 0xa3, 0xa8, 0xd0, 0x2a, 0x6f,
            0x0d, 0x73, 0x65, 0x32, 0x15, 0x77, 0x1d, 0xe2, 0x43, 0xa6, 0x3a, 0xc0, 0x48, 0xa1,
            0x8b, 0x59, 0xda, 0x29,
        ])
        .unwrap();
        let schema = crate::HandlerSchema::new("h", "1.0.0", handler.clone());
        let limits = JobLimits::resolve(&schema, &JobRequest::default()).unwrap();
        let mut job = Job::new(JobId::new(5, 6), handler, &JobRequest::default(), limits, 5);
        job.state = JobState::Held(super::super::job::HoldReason::Budget);
        let stored = Stored {
            placement: Some((4, vec![1, 2, 3])),
            job,
        };
        let named = crate::attest::cbor::named_record_to_vec(&stored);
        let packed = record_to_vec(&stored);
        assert!(packed.len() < named.len());
        for bytes in [named, packed] {
            let back: Stored = record_from_slice(&bytes).unwrap();
            assert_eq!(back.job, stored.job);
            assert_eq!(back.placement, stored.placement);
        }
    }
}
