//! Retention: deleting finished jobs once they are old enough
//! (spec/pulse.md, "Retention").
//!
//! A pass works in two halves so that the store's writers wait only for
//! the deletes: before the writer lock it reads the finished records and
//! the log keys of the jobs due (on PostgreSQL, round trips that would
//! otherwise each hold the lock); under the lock it checks that no
//! finished job was written since (reading the records again only if one
//! was) and commits.

use std::sync::atomic::Ordering;

use super::{
    DONE_BYTES, Jk, JobError, JobId, JobStore, Stored, byte_keyed, corrupt, keyed,
    record_from_slice, storage,
};

/// What a pass read before taking the writer lock.
pub(super) struct PrunePlan {
    /// [`JobStore::finished_writes`] before the records were read.
    seen: u64,
    due: Vec<Due>,
}

/// A finished job that is due, as the pass read it.
struct Due {
    /// Its key in job_done.
    key: Vec<u8>,
    id: JobId,
    /// The record and its stored bytes.
    record: (Stored, Vec<u8>),
    /// The keys of the job's log lines.
    logs: Vec<Vec<u8>>,
}

impl JobStore {
    /// Deletes finished jobs (succeeded, dead, cancelled) that finished
    /// before `cutoff_ms`, with their log lines and idempotency keys. A
    /// pass reads at most `limit` finished records, in job ID order per
    /// finished state, going on where the previous pass stopped and
    /// starting over once it reaches the end: only records of jobs created
    /// before the cutoff are read (a job finishes after it is created), so
    /// a pass costs what it reads however many finished jobs are kept, and
    /// the jobs it keeps (created before the cutoff, finished after it)
    /// never stop it from reaching the ones behind them. The writer lock
    /// is taken only to delete. The ledger is never pruned.
    ///
    /// # Errors
    /// Storage failures.
    pub fn prune_finished(&self, cutoff_ms: u64, limit: usize) -> Result<usize, JobError> {
        let plan = self.plan_prune(cutoff_ms, limit)?;
        self.apply_prune(plan, cutoff_ms)
    }

    /// Passes of at most `pass` records ([`JobStore::prune_finished`]),
    /// one after another with the writer lock free between them, until one
    /// reaches the end of the records it could read or `max_passes` have
    /// run: so one call deletes up to `pass` × `max_passes` jobs, not
    /// `pass`. Returns the jobs deleted.
    ///
    /// # Errors
    /// Storage failures (the jobs deleted by earlier passes stay deleted).
    pub fn prune_due(
        &self,
        cutoff_ms: u64,
        pass: usize,
        max_passes: usize,
    ) -> Result<usize, JobError> {
        let mut pruned = 0;
        for _ in 0..max_passes {
            pruned += self.prune_finished(cutoff_ms, pass)?;
            if !self.prune_goes_on() {
                break;
            }
        }
        Ok(pruned)
    }

    /// Whether the last pass stopped before the end of the records it
    /// could read (it read its whole limit): the next one goes on from
    /// there.
    fn prune_goes_on(&self) -> bool {
        !self
            .prune_from
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// The first half of a pass: the finished jobs due and their log
    /// keys, read without the writer lock.
    pub(super) fn plan_prune(&self, cutoff_ms: u64, limit: usize) -> Result<PrunePlan, JobError> {
        // Taken under the writer lock, so that every write counted before
        // it is already visible to the reads below.
        let seen = {
            let _guard = self.writer();
            self.finished_writes.load(Ordering::Relaxed)
        };
        let mut due = Vec::new();
        for (key, raw) in self.finished_before(cutoff_ms, limit)? {
            let id = byte_keyed(&key, "finished job")?;
            let record = decoded(&id, raw)?;
            if record.0.job.updated_at >= cutoff_ms {
                continue;
            }
            let logs = self
                .ks(Jk::Log)
                .prefix(id.0)
                .map(|kv| kv.map(|(k, _)| k).map_err(storage))
                .collect::<Result<_, _>>()?;
            due.push(Due {
                key,
                id,
                record,
                logs,
            });
        }
        Ok(PrunePlan { seen, due })
    }

    /// The second half of a pass: under the writer lock, deletes the jobs
    /// of `plan` that are due, reading their records again only if a
    /// finished job was written since they were read. A log line appended
    /// to a job meanwhile (an executor's late line) is left behind, as one
    /// appended after the job is gone would be.
    pub(super) fn apply_prune(&self, plan: PrunePlan, cutoff_ms: u64) -> Result<usize, JobError> {
        if plan.due.is_empty() {
            return Ok(0);
        }
        let _guard = self.writer();
        // Nodes sharing the store expect each record as read: a change by
        // another node fails the commit instead.
        let stale = !self.shared && self.finished_writes.load(Ordering::Relaxed) != plan.seen;
        let mut batch = self.batch();
        let mut pruned = 0;
        for due in plan.due {
            let record = if stale {
                self.ks(Jk::Done)
                    .get(&due.key)
                    .map_err(storage)?
                    .map(|raw| decoded(&due.id, raw))
                    .transpose()?
            } else {
                Some(due.record)
            };
            // Gone from there (retried, so live again): kept.
            let Some((stored, raw)) = record else {
                continue;
            };
            let job = &stored.job;
            // Finished again since it was read (retried and ended): kept.
            if job.updated_at >= cutoff_ms {
                continue;
            }
            if self.shared {
                batch.expect(self.ks(Jk::Done), &due.key, Some(&raw));
            }
            batch.remove(self.ks(Jk::Done), due.key);
            for key in due.logs {
                batch.remove(self.ks(Jk::Log), key);
            }
            if let Some(k) = &job.idempotency_key {
                let mut idem = job.handler.public_key().to_vec();
                idem.extend_from_slice(k.as_bytes());
                batch.remove(self.ks(Jk::Idem), idem);
            }
            pruned += 1;
        }
        self.finished_writes.fetch_add(1, Ordering::Relaxed);
        // Not retried (a job retried on another node meanwhile is not
        // finished any more): the next pass over it prunes what is left.
        match self.storage.commit(batch) {
            Err(e) if e.is_conflict() => Ok(0),
            other => other
                .map(|()| pruned)
                .map_err(|e| storage(format!("prune not persisted: {e}"))),
        }
    }

    /// Up to `limit` finished records (key, record) of jobs created
    /// before `cutoff_ms`, in key order after the last pass's, and where
    /// the next pass goes on: after the last record read, or from the
    /// start once fewer than `limit` were left.
    fn finished_before(
        &self,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<Vec<crate::storage::Entry>, JobError> {
        use std::ops::Bound::{Excluded, Included};
        let mut from = self.prune_from.lock().unwrap_or_else(|p| p.into_inner());
        let mut read = Vec::new();
        for byte in DONE_BYTES {
            let left = limit.saturating_sub(read.len());
            // IDs begin with their creation time (u64 BE).
            let end = keyed(&[byte], &JobId::new(cutoff_ms, 0));
            if left == 0 {
                break;
            }
            if *from >= end {
                continue;
            }
            let start = if *from >= vec![byte] {
                Excluded(from.clone())
            } else {
                Included(vec![byte])
            };
            for kv in self.ks(Jk::Done).range((start, Excluded(end))).take(left) {
                read.push(kv.map_err(storage)?);
            }
        }
        *from = match read.last() {
            Some((key, _)) if read.len() >= limit => key.clone(),
            _ => Vec::new(),
        };
        Ok(read)
    }
}

/// A job record read by a pass, with its bytes.
fn decoded(id: &JobId, raw: Vec<u8>) -> Result<(Stored, Vec<u8>), JobError> {
    record_from_slice(&raw)
        .map(|stored| (stored, raw))
        .map_err(|e| corrupt(&format!("job {id}: {e}")))
}
