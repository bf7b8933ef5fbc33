//! Schedules in the job store: created, paused and deleted by people,
//! fired by the dispatcher's clock. A firing writes the occurrence's job
//! (with its idempotency key, spec/pulse.md "Schedules") and the
//! schedule's new bookkeeping in one fsynced batch, so an occurrence is
//! enqueued exactly once whatever restarts or crashes come between.

use super::job::{JobId, JobLimits, JobRequest, check_request};
use super::record::{decode as record_from_slice, encode as record_to_vec};
use super::schedule::{Missed, Overlap, Recurrence, Schedule, ScheduleId};
use super::store::{Jk, JobError, JobStore, corrupt, storage};
use crate::storage::{KeyRange, Order};
use crate::{Did, HandlerSchema};

/// What one call of [`JobStore::fire_schedules`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FireReport {
    /// Occurrences that enqueued a job.
    pub fired: u64,
    /// Occurrences skipped because the previous job still ran.
    pub skipped: u64,
    /// Occurrences that passed unfired (the server was stopped).
    pub missed: u64,
    /// Occurrences that could not enqueue (the handler was revoked, say).
    pub failed: u64,
}

impl FireReport {
    /// Both reports' counts added.
    #[must_use]
    pub fn merged(self, other: FireReport) -> FireReport {
        FireReport {
            fired: self.fired + other.fired,
            skipped: self.skipped + other.skipped,
            missed: self.missed + other.missed,
            failed: self.failed + other.failed,
        }
    }
}

/// What a new schedule is made of ([`JobStore::create_schedule`]).
#[derive(Debug, Clone)]
pub struct ScheduleRequest {
    /// The handler.
    pub handler: Did,
    /// When it fires.
    pub recurrence: Recurrence,
    /// Each occurrence's job (its run_at, idempotency key and parent are
    /// the schedule's to set: they must be empty).
    pub job: JobRequest,
    /// Overlap policy.
    pub overlap: Overlap,
    /// Missed-occurrence policy.
    pub missed: Missed,
}

/// The notice topic of changed schedules.
pub(super) const SCHEDULES_TOPIC: &str = "schedules";

/// Most schedules one step fires.
pub const FIRE_PER_STEP: usize = 256;

impl JobStore {
    /// Loads the due index of the schedules that are not paused.
    pub(super) fn load_schedules(&self) -> Result<(), JobError> {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        due.clear();
        for kv in self.ks(Jk::Schedules).iter() {
            let (_, value) = kv.map_err(storage)?;
            let s: Schedule =
                record_from_slice(&value).map_err(|e| corrupt(&format!("schedule: {e}")))?;
            if let (false, Some(at)) = (s.paused, s.next_at) {
                due.insert((at, s.id.0));
            }
        }
        Ok(())
    }

    fn load_schedule(&self, id: &ScheduleId) -> Result<Option<Schedule>, JobError> {
        Ok(self.load_schedule_raw(id)?.map(|(s, _)| s))
    }

    /// A schedule and its stored bytes, which a firing expects unchanged:
    /// of nodes sharing the store that fire it at once, one commits.
    fn load_schedule_raw(&self, id: &ScheduleId) -> Result<Option<(Schedule, Vec<u8>)>, JobError> {
        match self.ks(Jk::Schedules).get(id.0).map_err(storage)? {
            Some(v) => record_from_slice(&v)
                .map(|s| Some((s, v)))
                .map_err(|e| corrupt(&format!("schedule {id}: {e}"))),
            None => Ok(None),
        }
    }

    /// Tells the other nodes sharing the store that schedules changed.
    fn announce_schedules(&self, batch: &mut crate::storage::WriteBatch) {
        if self.is_shared() {
            batch.announce(SCHEDULES_TOPIC, "");
        }
    }

    /// Moves a schedule in the due index from `old` to `new`'s place.
    fn reindex(&self, old: Option<&Schedule>, new: Option<&Schedule>) {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        let place = |s: &Schedule| s.next_at.filter(|_| !s.paused).map(|at| (at, s.id.0));
        if let Some(p) = old.and_then(place) {
            due.remove(&p);
        }
        if let Some(p) = new.and_then(place) {
            due.insert(p);
        }
    }

    /// Creates a schedule at `now`, its occurrences' job checked against
    /// `schema` as an enqueue would be.
    ///
    /// # Errors
    /// The job request's rule (`invalid_priority`, `limit_above_handler`,
    /// …), `invalid_schedule` for a run_at, idempotency key or parent set
    /// on the request, storage.
    pub fn create_schedule(
        &self,
        req: ScheduleRequest,
        schema: &HandlerSchema,
        now: u64,
    ) -> Result<Schedule, JobError> {
        if req.job.run_at_ms != 0 || req.job.idempotency_key.is_some() || req.job.parent.is_some() {
            return Err(JobError::Rejected(super::PulseError::new(
                super::PulseErrorCode::InvalidSchedule,
                "a schedule sets its jobs' run time and idempotency key itself; leave run_at, idempotency_key and parent empty",
            )));
        }
        check_request(&req.job)?;
        JobLimits::resolve(schema, &req.job)?;
        self.space_check()?;
        let mut ids = self.writer();
        let id = ScheduleId(ids.next(now).0);
        let schedule = Schedule::new(
            id,
            req.handler,
            req.recurrence,
            &req.job,
            req.overlap,
            req.missed,
            now,
        );
        let mut batch = self.batch();
        batch.insert(self.ks(Jk::Schedules), id.0, record_to_vec(&schedule));
        self.announce_schedules(&mut batch);
        self.storage
            .commit(batch)
            .map_err(|e| storage(format!("schedule not persisted: {e}")))?;
        self.reindex(None, Some(&schedule));
        drop(ids);
        Ok(schedule)
    }

    /// One schedule.
    ///
    /// # Errors
    /// `schedule_not_found`; storage.
    pub fn schedule(&self, id: &ScheduleId) -> Result<Schedule, JobError> {
        self.load_schedule(id)?
            .ok_or(JobError::ScheduleNotFound(*id))
    }

    /// Schedules oldest first (of one handler, or all), after `cursor`, at
    /// most `limit` (1..=1,000); the cursor of the next page, if any.
    ///
    /// # Errors
    /// Storage failures.
    pub fn schedules(
        &self,
        handler: Option<&Did>,
        cursor: Option<&ScheduleId>,
        limit: usize,
    ) -> Result<(Vec<Schedule>, Option<ScheduleId>), JobError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let low = cursor.map_or(Unbounded, |c| Excluded(c.0.to_vec()));
        let limit = limit.clamp(1, 1000);
        let mut out = Vec::new();
        let mut last = None;
        for (scanned, kv) in self
            .ks(Jk::Schedules)
            .scan(
                KeyRange {
                    start: low,
                    end: Unbounded,
                },
                Order::Ascending,
            )
            .enumerate()
        {
            if out.len() >= limit || scanned >= super::LIST_SCAN {
                return Ok((out, last));
            }
            let (_, value) = kv.map_err(storage)?;
            let s: Schedule =
                record_from_slice(&value).map_err(|e| corrupt(&format!("schedule: {e}")))?;
            last = Some(s.id);
            if handler.is_none_or(|h| *h == s.handler) {
                out.push(s);
            }
        }
        Ok((out, None))
    }

    /// Pauses or resumes a schedule ([`Schedule::set_paused`]).
    ///
    /// # Errors
    /// `schedule_not_found`; storage.
    pub fn set_schedule_paused(
        &self,
        id: &ScheduleId,
        paused: bool,
        now: u64,
    ) -> Result<Schedule, JobError> {
        let _writer = self.writer();
        let old = self.schedule(id)?;
        let mut s = old.clone();
        s.set_paused(paused, now);
        let mut batch = self.batch();
        batch.insert(self.ks(Jk::Schedules), id.0, record_to_vec(&s));
        self.announce_schedules(&mut batch);
        self.storage
            .commit(batch)
            .map_err(|e| storage(format!("schedule not persisted: {e}")))?;
        self.reindex(Some(&old), Some(&s));
        Ok(s)
    }

    /// Deletes a schedule; the jobs it enqueued stay. Returns it as it was.
    ///
    /// # Errors
    /// `schedule_not_found`; storage.
    pub fn delete_schedule(&self, id: &ScheduleId) -> Result<Schedule, JobError> {
        let _writer = self.writer();
        let old = self.schedule(id)?;
        let mut batch = self.batch();
        batch.remove(self.ks(Jk::Schedules), id.0);
        self.announce_schedules(&mut batch);
        self.storage
            .commit(batch)
            .map_err(|e| storage(format!("schedule not deleted: {e}")))?;
        self.reindex(Some(&old), None);
        Ok(old)
    }

    /// The earliest next occurrence of any schedule that is not paused.
    pub fn next_schedule_at(&self) -> Option<u64> {
        let due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        due.first().map(|(at, _)| *at)
    }

    /// Fires the schedules due at `now` (at most [`FIRE_PER_STEP`]), each
    /// as [`Schedule::plan`] decides, in one fsynced batch. `schema_of`
    /// gives a handler's schema, or why it takes no jobs (revoked, not
    /// found): that occurrence then enqueues nothing and says why in the
    /// schedule's last_error. While the disk is nearly full nothing fires
    /// (the occurrences stay due).
    ///
    /// # Errors
    /// Storage failures (nothing was written).
    pub fn fire_schedules(
        &self,
        now: u64,
        schema_of: &mut dyn FnMut(&Did) -> Result<HandlerSchema, String>,
    ) -> Result<FireReport, JobError> {
        let mut report = FireReport::default();
        let due: Vec<ScheduleId> = {
            let due = self.due.lock().unwrap_or_else(|p| p.into_inner());
            due.range(..=(now, [0xff; 16]))
                .take(FIRE_PER_STEP)
                .map(|(_, id)| ScheduleId(*id))
                .collect()
        };
        if due.is_empty() || self.space_check().is_err() {
            return Ok(report);
        }
        let mut ids = self.writer();
        let mut batch = self.batch();
        let mut effects = super::store::Effects::default();
        let mut keys_in_batch = Vec::new();
        let mut changed: Vec<(Schedule, Schedule)> = Vec::new();
        // Jobs this firing makes (not those found by their occurrence's
        // idempotency key).
        let mut created: Vec<JobId> = Vec::new();
        for id in due {
            let Some((old, raw)) = self.load_schedule_raw(&id)? else {
                continue;
            };
            self.expect_unchanged(&mut batch, Jk::Schedules, id.0, Some(&raw));
            let previous_running = match old.last_fired {
                Some((_, job)) => match self.get(&job) {
                    Ok(j) => !j.state.is_terminal(),
                    Err(JobError::NotFound(_)) => false,
                    Err(e) => return Err(e),
                },
                None => false,
            };
            let Some(plan) = old.plan(now, previous_running) else {
                continue;
            };
            let (job, error) = if plan.enqueue {
                let staged = schema_of(&old.handler).map(|schema| {
                    self.stage_enqueue(
                        &mut ids,
                        &mut batch,
                        &mut effects,
                        &mut keys_in_batch,
                        (&old.handler, &schema, &old.job_request(plan.at)),
                        now,
                    )
                });
                match staged {
                    Ok(Ok((job, existed))) => {
                        if !existed {
                            created.push(job.id);
                        }
                        (Some(job.id), None)
                    }
                    Ok(Err(JobError::Storage(e))) => return Err(JobError::Storage(e)),
                    Ok(Err(e)) => (None, Some(e.to_string())),
                    Err(why) => (None, Some(why)),
                }
            } else {
                (None, None)
            };
            report.fired += u64::from(job.is_some());
            report.failed += u64::from(error.is_some());
            report.skipped += u64::from(plan.overlapped);
            report.missed += plan.missed;
            let mut s = old.clone();
            s.record(&plan, job, error, now);
            batch.insert(self.ks(Jk::Schedules), id.0, record_to_vec(&s));
            changed.push((old, s));
        }
        if changed.is_empty() {
            return Ok(report);
        }
        self.announce_schedules(&mut batch);
        let new_ids: Vec<_> = changed
            .iter()
            .filter_map(|(_, s)| s.last_fired.map(|(_, j)| j))
            .collect();
        self.check_unused(&created)?;
        self.announce(&mut batch, new_ids.into_iter());
        match self.commit(batch) {
            Ok(()) => {}
            // Another node fired (or changed) one of these schedules
            // first: nothing was written. The due index is read again, and
            // what is still due fires at the next step.
            Err(e) if e.is_conflict() => {
                drop(ids);
                self.load_schedules()?;
                return Ok(FireReport::default());
            }
            Err(e) => return Err(storage(format!("schedule firing not persisted: {e}"))),
        }
        self.apply(effects);
        for (old, new) in &changed {
            self.reindex(Some(old), Some(new));
        }
        drop(ids);
        let new_jobs: Vec<super::transition::Transition> = keys_in_batch
            .iter()
            .map(|(_, job)| super::transition::Transition::of(None, job))
            .collect();
        self.record_transitions(&new_jobs);
        self.counters().schedules_fired(&report);
        for (_, s) in &changed {
            if let Some(e) = &s.last_error {
                tracing::warn!(schedule = %s.id, handler = %s.handler, error = %e, "schedule occurrence enqueued nothing");
            }
        }
        Ok(report)
    }
}
