//! Listings of jobs for people and tools: by state, handler and time,
//! in pages.

use super::queues::id_of_queue_key;
use super::{
    DONE_BYTES, Did, Jk, Job, JobError, JobId, JobState, JobStore, KeyRange, Order, Stored,
    byte_keyed, corrupt, keyed, record_from_slice, state_byte, storage,
};
use crate::storage::Snapshot;

/// Stored bytes of jobs [`JobStore::list`] returns at most in one page
/// (beyond its first job): a page of jobs with megabyte payloads and
/// results stays far below the API's message limit.
pub const LIST_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Most records one page of [`JobStore::list_for`] reads.
pub const LIST_SCAN: usize = 10_000;

/// The jobs a listing looks at, in its order: each one's ID and, where
/// the scan read it already, its stored record.
type Candidates<'a> = Box<dyn Iterator<Item = Result<(JobId, Option<Vec<u8>>), JobError>> + 'a>;

/// Which jobs [`JobStore::list_jobs`] returns. The default: every job,
/// newest first.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs in this state (the reason inside is ignored).
    pub state: Option<JobState>,
    /// Without `state`: only live jobs (queued, held, running or
    /// retrying), read in one pass of the live records rather than one
    /// pass per live state (a bulk cancel of every live state). Ignored
    /// with `state`.
    pub live: bool,
    /// Only this handler's jobs.
    pub handler: Option<Did>,
    /// Only jobs created at or after this Unix ms.
    pub since_ms: Option<u64>,
    /// Oldest first instead.
    pub oldest_first: bool,
}

impl JobStore {
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
            out.push(byte_keyed(&key, "held")?);
        }
        Ok(out)
    }

    /// Jobs in `state`, oldest first, after `cursor`: at most `limit`
    /// (1..=1,000) and, past the first job, at most [`LIST_PAGE_BYTES`] of
    /// stored records, so a page of large jobs stays small. The flag says
    /// whether the page stopped early (more may follow).
    ///
    /// # Errors
    /// Storage failures.
    pub fn list(
        &self,
        state: &JobState,
        cursor: Option<&JobId>,
        limit: usize,
    ) -> Result<(Vec<Job>, bool), JobError> {
        let filter = JobFilter {
            state: Some(*state),
            oldest_first: true,
            ..JobFilter::default()
        };
        let mut cursor = cursor.copied();
        loop {
            let (jobs, next) = self.list_jobs(&filter, cursor.as_ref(), limit)?;
            // A page of a live state may have skipped only jobs in other
            // live states: go on from where it stopped, so that a page is
            // empty only at the end.
            if !jobs.is_empty() || next.is_none() {
                return Ok((jobs, next.is_some()));
            }
            cursor = next;
        }
    }

    /// [`JobStore::list`] for one handler's jobs; see
    /// [`JobStore::list_jobs`] for its cursor.
    ///
    /// # Errors
    /// Storage failures.
    pub fn list_for(
        &self,
        state: &JobState,
        handler: &Did,
        cursor: Option<&JobId>,
        limit: usize,
    ) -> Result<(Vec<Job>, Option<JobId>), JobError> {
        let filter = JobFilter {
            state: Some(*state),
            handler: Some(handler.clone()),
            oldest_first: true,
            ..JobFilter::default()
        };
        self.list_jobs(&filter, cursor, limit)
    }

    /// Jobs that pass `filter`, in creation order (newest first unless
    /// `oldest_first`), after `cursor`: at most `limit` (1..=1,000) and,
    /// past the first job, at most [`LIST_PAGE_BYTES`] of stored records.
    /// The records are read in ID order (a finished state's from
    /// job_done; a live state's from the live records, skipping the other
    /// live states; with no state, both, merged) and jobs of other
    /// handlers are skipped, at most [`LIST_SCAN`] records per page, so a
    /// page may hold fewer jobs than asked (even none) and still have a
    /// next cursor: the ID to continue after, `None` at the end. A
    /// listing of every job reads both spaces in one snapshot, so a job
    /// moving between them meanwhile is listed once. A single server lists
    /// its running and held jobs from its queues in memory instead of the
    /// records.
    ///
    /// # Errors
    /// Storage failures.
    pub fn list_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<&JobId>,
        limit: usize,
    ) -> Result<(Vec<Job>, Option<JobId>), JobError> {
        // Each candidate's ID and, when the scan read it, its record.
        let queued = filter
            .state
            .as_ref()
            .and_then(|s| self.queued_ids(s, filter, cursor));
        let candidates: Candidates<'_> = match queued {
            Some(ids) => Box::new(ids.into_iter().map(|id| Ok((id, None)))),
            None => self.scanned(filter, cursor),
        };
        let limit = limit.clamp(1, 1000);
        let mut out: Vec<Job> = Vec::new();
        let mut bytes = 0usize;
        let mut last: Option<JobId> = None;
        for (scanned, candidate) in candidates.enumerate() {
            if out.len() >= limit || scanned >= LIST_SCAN {
                return Ok((out, last));
            }
            let (id, record) = candidate?;
            // A live job in another live state is skipped without decoding
            // its record where it is in memory (a single server).
            let elsewhere = filter.state.is_some_and(|s| {
                self.live
                    .get(&id)
                    .is_some_and(|kept| state_byte(&kept.job.state) != state_byte(&s))
            });
            if elsewhere {
                last = Some(id);
                continue;
            }
            let record = match record {
                Some(r) => r,
                // Listed from a queue, so live when the queue was read.
                None => match self.ks(Jk::Jobs).get(id.0).map_err(storage)? {
                    Some(r) => r,
                    // Finished since: not part of the page.
                    None => continue,
                },
            };
            if bytes.saturating_add(record.len()) > LIST_PAGE_BYTES && !out.is_empty() {
                return Ok((out, last));
            }
            let stored: Stored =
                record_from_slice(&record).map_err(|e| corrupt(&format!("job {id}: {e}")))?;
            last = Some(id);
            // The live records hold every live state.
            let state_holds = match filter.state {
                Some(s) => state_byte(&s) == state_byte(&stored.job.state),
                None => !filter.live || !stored.job.state.is_terminal(),
            };
            if state_holds
                && filter
                    .handler
                    .as_ref()
                    .is_none_or(|h| *h == stored.job.handler)
            {
                bytes = bytes.saturating_add(record.len());
                out.push(stored.job);
            }
        }
        Ok((out, None))
    }

    /// The IDs of the jobs in `state`, in the listing's order, from
    /// `since` and after `cursor`, from the queue in memory that holds
    /// every job in that state and no other, where the queues are complete
    /// (running and held jobs on a single server) and it holds at most
    /// [`LIST_SCAN`] jobs. Otherwise `None`: queued and retrying jobs
    /// share the delayed queue, nodes sharing a store read the records,
    /// and a larger queue is not copied under its lock (the dispatcher's)
    /// for every page: jobs in that state are then plenty in the records
    /// too.
    fn queued_ids(
        &self,
        state: &JobState,
        filter: &JobFilter,
        cursor: Option<&JobId>,
    ) -> Option<Vec<JobId>> {
        let tag = match state {
            _ if self.is_shared() => return None,
            JobState::Running => Jk::Running,
            JobState::Held(_) => Jk::Held,
            _ => return None,
        };
        let since = filter.since_ms.map(|ms| JobId::new(ms, 0));
        let queues = self.queues();
        let queue = queues.set(tag);
        if queue.len() > LIST_SCAN {
            return None;
        }
        let mut ids: Vec<JobId> = queue
            .iter()
            .filter_map(|key| id_of_queue_key(key).map(JobId))
            .filter(|id| since.is_none_or(|s| *id >= s))
            .filter(|id| cursor.is_none_or(|c| if filter.oldest_first { id > c } else { id < c }))
            .collect();
        drop(queues);
        ids.sort_unstable();
        ids.dedup();
        if !filter.oldest_first {
            ids.reverse();
        }
        Some(ids)
    }

    /// The records the listing reads, in its order, from `since` and after
    /// `cursor`: one state's from the space that holds it, or every job's
    /// from both spaces, merged by ID.
    fn scanned(&self, filter: &JobFilter, cursor: Option<&JobId>) -> Candidates<'_> {
        let one = |k: Jk, byte: Option<u8>| self.scanned_in(None, k, byte, filter, cursor);
        match filter.state {
            Some(s) if s.is_terminal() => one(Jk::Done, Some(state_byte(&s))),
            Some(_) => one(Jk::Jobs, None),
            None if filter.live => one(Jk::Jobs, None),
            None => {
                // One view of both spaces, so that a job moving between
                // them meanwhile is read once, not twice or not at all.
                let view = match self.storage.snapshot() {
                    Ok(view) => view,
                    Err(e) => return Box::new(std::iter::once(Err(storage(e)))),
                };
                let in_view = |k: Jk, byte: Option<u8>| {
                    self.scanned_in(Some(&view), k, byte, filter, cursor)
                        .peekable()
                };
                let mut scans = vec![in_view(Jk::Jobs, None)];
                scans.extend(DONE_BYTES.map(|b| in_view(Jk::Done, Some(b))));
                Box::new(InIdOrder {
                    scans,
                    ascending: filter.oldest_first,
                })
            }
        }
    }

    /// The records of space `k` (under the key byte `byte`, if any, then
    /// the ID) read in the listing's order, from `since` and after
    /// `cursor`: in `view` if given, else as stored now.
    fn scanned_in(
        &self,
        view: Option<&Snapshot>,
        k: Jk,
        byte: Option<u8>,
        filter: &JobFilter,
        cursor: Option<&JobId>,
    ) -> Candidates<'_> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let prefix: Vec<u8> = byte.into_iter().collect();
        let since = filter.since_ms.map(|ms| keyed(&prefix, &JobId::new(ms, 0)));
        let mut low = since.map_or_else(|| Included(prefix.clone()), Included);
        let mut high = match byte {
            Some(b) => Excluded(vec![b + 1]),
            None => Unbounded,
        };
        if let Some(c) = cursor {
            if filter.oldest_first {
                low = Excluded(keyed(&prefix, c));
            } else {
                high = Excluded(keyed(&prefix, c));
            }
        }
        let order = if filter.oldest_first {
            Order::Ascending
        } else {
            Order::Descending
        };
        let range = KeyRange {
            start: low,
            end: high,
        };
        let entries = match view {
            Some(view) => view.scan(self.ks(k), range, order),
            None => self.ks(k).scan(range, order),
        };
        let id_at = prefix.len();
        Box::new(entries.map(move |kv| {
            let (key, record) = kv.map_err(storage)?;
            let id = JobId(
                key.get(id_at..id_at + 16)
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| corrupt("job key"))?,
            );
            Ok((id, Some(record)))
        }))
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
            let (deadline, id) = super::time_keyed(&key, "running")?;
            if deadline > now {
                break;
            }
            out.push(self.get(&id)?);
        }
        Ok(out)
    }
}

/// Scans of several spaces, each in ID order, merged into one (a failed
/// read first).
struct InIdOrder<'a> {
    scans: Vec<std::iter::Peekable<Candidates<'a>>>,
    ascending: bool,
}

impl Iterator for InIdOrder<'_> {
    type Item = Result<(JobId, Option<Vec<u8>>), JobError>;

    fn next(&mut self) -> Option<Self::Item> {
        let ascending = self.ascending;
        let mut next: Option<(usize, JobId)> = None;
        for (i, scan) in self.scans.iter_mut().enumerate() {
            match scan.peek() {
                None => {}
                Some(Err(_)) => return scan.next(),
                Some(Ok((id, _))) => {
                    let first = next.is_none_or(|(_, n)| if ascending { *id < n } else { *id > n });
                    if first {
                        next = Some((i, *id));
                    }
                }
            }
        }
        next.and_then(|(i, _)| self.scans[i].next())
    }
}
