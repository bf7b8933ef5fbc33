//! The job state machine (spec/pulse.md, "State machine"). Every method
//! either applies one transition or returns the broken rule and leaves the
//! job unchanged; the store writes each transition atomically.

use super::backoff::Backoff;
use super::error::{PulseError, PulseErrorCode};
use super::job::{
    Attempt, AttemptOutcome, CancelReason, DeadReason, HoldReason, Job, JobId, JobLimits,
    JobRequest, JobState, LeaseToken, MAX_CHECKPOINT_BYTES, POISON_CRASHES, POISON_INTERRUPTIONS,
    Progress, Refusal,
};
use crate::Did;

/// What the retry policy needs from the caller: the backoff and one random
/// number for its jitter (pure code draws no randomness itself).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Delay growth.
    pub backoff: Backoff,
    /// Jitter source for this decision.
    pub random: u64,
}

/// Longest retry delay an executor may request, ms (one day).
pub const MAX_RETRY_AFTER_MS: u64 = 86_400_000;

fn wrong_state(job: &Job, what: &str) -> PulseError {
    PulseError::new(
        PulseErrorCode::WrongState,
        format!(
            "cannot {what} job {} in state {}",
            job.id,
            job.state.as_str()
        ),
    )
}

impl Job {
    /// A new, queued job. The request must already have passed
    /// [`check_request`](super::check_request) and its limits
    /// [`JobLimits::resolve`].
    pub fn new(id: JobId, handler: Did, req: &JobRequest, limits: JobLimits, now: u64) -> Job {
        Job {
            id,
            handler,
            payload: req.payload.clone(),
            priority: req.priority,
            // From the clock, not the ID: an ID's time may run a little
            // ahead of `now` (IDs never go backwards, and batches reach the
            // store's writer out of clock order), and a job must not wait
            // for that.
            run_at: req.run_at_ms.max(now),
            idempotency_key: req.idempotency_key.clone(),
            limits,
            parent: req.parent,
            state: JobState::Queued,
            attempts: Vec::new(),
            progress: Progress::default(),
            total_cost: 0,
            result: None,
            last_error: None,
            consecutive_crashes: 0,
            retry_at: None,
            updated_at: now,
            series_start: 0,
            trace_parent: req.trace_parent.clone(),
        }
    }

    /// The live attempt, if the job is running.
    pub fn live_attempt(&self) -> Option<&Attempt> {
        match self.state {
            JobState::Running => self.attempts.last().filter(|a| a.outcome.is_none()),
            _ => None,
        }
    }

    /// Starts a new attempt under `lease`: queued and due → running.
    ///
    /// # Errors
    /// `wrong_state` unless queued; `not_due` before `run_at`.
    pub fn dispatch(&mut self, lease: LeaseToken, now: u64) -> Result<&Attempt, PulseError> {
        if self.state != JobState::Queued {
            return Err(wrong_state(self, "dispatch"));
        }
        if now < self.run_at {
            return Err(PulseError::new(
                PulseErrorCode::NotDue,
                format!("job {} runs at {}, it is {now}", self.id, self.run_at),
            ));
        }
        let number = self.attempts.len() as u32 + 1;
        self.attempts.push(Attempt {
            number,
            lease,
            started_at: now,
            last_heartbeat: now,
            ended_at: None,
            outcome: None,
            error: None,
            cost: 0,
            authorised_under: None,
            node: None,
            reserved: 0,
        });
        self.state = JobState::Running;
        self.updated_at = now;
        Ok(&self.attempts[self.attempts.len() - 1])
    }

    /// Queued → held: waits for budget or its plugin without using an
    /// attempt.
    ///
    /// # Errors
    /// `wrong_state` unless queued.
    pub fn hold(&mut self, reason: HoldReason, now: u64) -> Result<(), PulseError> {
        if self.state != JobState::Queued {
            return Err(wrong_state(self, "hold"));
        }
        self.state = JobState::Held(reason);
        self.updated_at = now;
        Ok(())
    }

    /// Held → queued.
    ///
    /// # Errors
    /// `wrong_state` unless held.
    pub fn release(&mut self, now: u64) -> Result<(), PulseError> {
        if !matches!(self.state, JobState::Held(_)) {
            return Err(wrong_state(self, "release"));
        }
        self.state = JobState::Queued;
        self.updated_at = now;
        Ok(())
    }

    /// Queued or held → dead, refused by resolution before any attempt.
    ///
    /// # Errors
    /// `wrong_state` unless queued or held.
    pub fn refuse(&mut self, why: Refusal, detail: String, now: u64) -> Result<(), PulseError> {
        if !matches!(self.state, JobState::Queued | JobState::Held(_)) {
            return Err(wrong_state(self, "refuse"));
        }
        self.state = JobState::Dead(DeadReason::Refused(why));
        self.last_error = Some(format!("{}: {detail}", why.as_str()));
        self.updated_at = now;
        Ok(())
    }

    /// Retrying → queued once its retry time has come.
    ///
    /// # Errors
    /// `wrong_state` unless retrying; `not_due` before the retry time.
    pub fn wake(&mut self, now: u64) -> Result<(), PulseError> {
        if self.state != JobState::Retrying {
            return Err(wrong_state(self, "wake"));
        }
        let at = self.retry_at.unwrap_or(0);
        if now < at {
            return Err(PulseError::new(
                PulseErrorCode::NotDue,
                format!("job {} retries at {at}, it is {now}", self.id),
            ));
        }
        self.state = JobState::Queued;
        self.run_at = at;
        self.retry_at = None;
        self.updated_at = now;
        Ok(())
    }

    /// The index of the live attempt if `lease` is its lease.
    fn live(&self, lease: &LeaseToken) -> Result<usize, PulseError> {
        match self.live_attempt() {
            Some(a) if a.lease == *lease => Ok(self.attempts.len() - 1),
            _ => Err(PulseError::new(
                PulseErrorCode::StaleLease,
                format!(
                    "job {} has no live attempt with that lease (state {}); the event is from a lost or finished attempt",
                    self.id,
                    self.state.as_str()
                ),
            )),
        }
    }

    /// Records a heartbeat of the live attempt.
    ///
    /// # Errors
    /// `stale_lease` for anything but the live attempt.
    pub fn heartbeat(&mut self, lease: &LeaseToken, now: u64) -> Result<(), PulseError> {
        let i = self.live(lease)?;
        self.attempts[i].last_heartbeat = now;
        self.updated_at = now;
        Ok(())
    }

    /// Records progress (also a heartbeat). Progress is kept across
    /// attempts and handed to the next one.
    ///
    /// # Errors
    /// `stale_lease`; `invalid_progress` for a percent above 100 or an
    /// oversized checkpoint.
    pub fn report_progress(
        &mut self,
        lease: &LeaseToken,
        progress: Progress,
        now: u64,
    ) -> Result<(), PulseError> {
        let i = self.live(lease)?;
        if progress.percent > 100 || progress.checkpoint.len() > MAX_CHECKPOINT_BYTES {
            return Err(PulseError::new(
                PulseErrorCode::InvalidProgress,
                format!("percent is 0..=100 and a checkpoint at most {MAX_CHECKPOINT_BYTES} bytes"),
            ));
        }
        self.attempts[i].last_heartbeat = now;
        self.progress = progress;
        self.updated_at = now;
        Ok(())
    }

    /// Adds reported cost to the live attempt and the job. Returns whether
    /// the job is now over its `max_cost` (the caller then cancels it with
    /// [`CancelReason::Budget`]).
    ///
    /// # Errors
    /// `stale_lease`.
    pub fn report_cost(
        &mut self,
        lease: &LeaseToken,
        amount: u64,
        now: u64,
    ) -> Result<bool, PulseError> {
        let i = self.live(lease)?;
        self.attempts[i].cost = self.attempts[i].cost.saturating_add(amount);
        self.attempts[i].last_heartbeat = now;
        self.total_cost = self.total_cost.saturating_add(amount);
        self.updated_at = now;
        Ok(self
            .limits
            .max_cost
            .is_some_and(|max| self.total_cost > max))
    }

    /// The live attempt returned a result: running → succeeded.
    ///
    /// # Errors
    /// `stale_lease`: a result from a lost or finished attempt is refused.
    pub fn succeed(
        &mut self,
        lease: &LeaseToken,
        result: Vec<u8>,
        now: u64,
    ) -> Result<(), PulseError> {
        let i = self.live(lease)?;
        self.end_attempt(i, AttemptOutcome::Succeeded, None, now);
        self.result = Some(result);
        self.state = JobState::Succeeded;
        Ok(())
    }

    /// The live attempt reported an error. Retryable errors retry after
    /// `retry_after_ms` if the executor asked for a delay, else after the
    /// policy's backoff; non-retryable ones end the job dead.
    ///
    /// # Errors
    /// `stale_lease`.
    pub fn fail(
        &mut self,
        lease: &LeaseToken,
        error: String,
        retryable: bool,
        retry_after_ms: Option<u64>,
        policy: RetryPolicy,
        now: u64,
    ) -> Result<(), PulseError> {
        let i = self.live(lease)?;
        self.end_attempt(i, AttemptOutcome::Failed, Some(error), now);
        self.after_attempt(false, retryable, retry_after_ms, policy, now);
        Ok(())
    }

    /// The executor died or disconnected during the live attempt. Counted
    /// as a crash; after [`POISON_CRASHES`] in a row the job is dead
    /// (`poison`).
    ///
    /// # Errors
    /// `stale_lease`.
    pub fn crash(
        &mut self,
        lease: &LeaseToken,
        policy: RetryPolicy,
        now: u64,
    ) -> Result<(), PulseError> {
        let i = self.live(lease)?;
        self.end_attempt(
            i,
            AttemptOutcome::Crashed,
            Some("the executor crashed or disconnected".into()),
            now,
        );
        self.after_attempt(true, true, None, policy, now);
        Ok(())
    }

    /// The live attempt never reached a process that proved the plugin's
    /// key (no live session, connection refused, the stream refused
    /// before the plugin accepted it): it is taken back as if never made,
    /// and the job is held for its plugin, which costs no attempt
    /// (spec/pulse.md, "Holding"). An attempt that already reported cost
    /// evidently ran somewhere, so it is a crash instead.
    ///
    /// # Errors
    /// `stale_lease`.
    pub fn unreachable(
        &mut self,
        lease: &LeaseToken,
        detail: String,
        policy: RetryPolicy,
        now: u64,
    ) -> Result<(), PulseError> {
        let i = self.live(lease)?;
        if self.attempts[i].cost > 0 {
            return self.crash(lease, policy, now);
        }
        self.attempts.pop();
        self.last_error = Some(format!("plugin_not_connected: {detail}"));
        self.state = JobState::Held(HoldReason::Plugin);
        self.updated_at = now;
        Ok(())
    }

    /// The server stopped while the live attempt ran (found at start-up).
    /// The attempt uses none of the job's attempts and is not a crash; the
    /// job is queued again at once. After [`POISON_INTERRUPTIONS`] such
    /// attempts in a row the job is dead (`poison`).
    ///
    /// # Errors
    /// `stale_lease`.
    pub fn interrupt(&mut self, lease: &LeaseToken, now: u64) -> Result<(), PulseError> {
        let i = self.live(lease)?;
        let a = &mut self.attempts[i];
        a.ended_at = Some(now);
        a.outcome = Some(AttemptOutcome::Interrupted);
        a.error = Some("the server stopped while the attempt ran".into());
        self.last_error.clone_from(&a.error);
        self.updated_at = now;
        let in_a_row = self
            .attempts
            .iter()
            .skip(self.series_start as usize)
            .rev()
            .take_while(|a| a.outcome == Some(AttemptOutcome::Interrupted))
            .count();
        if in_a_row >= POISON_INTERRUPTIONS {
            self.state = JobState::Dead(DeadReason::Poison);
        } else {
            self.retry_at = Some(now);
            self.state = JobState::Retrying;
        }
        Ok(())
    }

    /// The live attempt passed its timeout or missed its heartbeats (after
    /// the cancel push and grace period): retried like a retryable error.
    ///
    /// # Errors
    /// `stale_lease`.
    pub fn time_out(
        &mut self,
        lease: &LeaseToken,
        policy: RetryPolicy,
        now: u64,
    ) -> Result<(), PulseError> {
        let i = self.live(lease)?;
        self.end_attempt(
            i,
            AttemptOutcome::TimedOut,
            Some("the attempt timed out".into()),
            now,
        );
        self.after_attempt(false, true, None, policy, now);
        Ok(())
    }

    /// Cancels the job at once, from any state but a terminal one. If an
    /// attempt was live it ends (its lease becomes stale) and its lease is
    /// returned, so the caller pushes the cancel to the executor.
    ///
    /// # Errors
    /// `wrong_state` for a finished job.
    pub fn cancel(
        &mut self,
        reason: CancelReason,
        now: u64,
    ) -> Result<Option<LeaseToken>, PulseError> {
        if self.state.is_terminal() {
            return Err(wrong_state(self, "cancel"));
        }
        let live = self.live_attempt().map(|a| a.lease);
        if let Some(lease) = live {
            let i = self.live(&lease)?;
            let outcome = match reason {
                CancelReason::Requested => AttemptOutcome::Cancelled,
                CancelReason::Budget => AttemptOutcome::BudgetExceeded,
            };
            self.end_attempt(i, outcome, None, now);
        }
        self.state = JobState::Cancelled(reason);
        self.retry_at = None;
        self.updated_at = now;
        Ok(live)
    }

    /// A dead or cancelled job runs again (a job retry, asked for by a
    /// person): queued at once with a new series of attempts. It keeps its
    /// ID, its history and its cost; the attempts before the retry count
    /// no more against `max_attempts`, and crashes in a row start from
    /// zero.
    ///
    /// # Errors
    /// `wrong_state` unless dead or cancelled (a succeeded job has its
    /// result; enqueue it again instead).
    pub fn retry(&mut self, now: u64) -> Result<(), PulseError> {
        if !matches!(self.state, JobState::Dead(_) | JobState::Cancelled(_)) {
            return Err(wrong_state(self, "retry"));
        }
        self.series_start = self.attempts.len() as u32;
        self.consecutive_crashes = 0;
        self.state = JobState::Queued;
        self.run_at = now;
        self.retry_at = None;
        self.updated_at = now;
        Ok(())
    }

    /// Attempts that count towards `max_attempts`: those since the last
    /// retry, but for interrupted ones.
    pub fn attempts_used(&self) -> u32 {
        self.attempts
            .iter()
            .skip(self.series_start as usize)
            .filter(|a| a.outcome != Some(AttemptOutcome::Interrupted))
            .count() as u32
    }

    fn end_attempt(&mut self, i: usize, outcome: AttemptOutcome, error: Option<String>, now: u64) {
        if outcome != AttemptOutcome::Crashed {
            self.consecutive_crashes = 0;
        }
        let a = &mut self.attempts[i];
        a.ended_at = Some(now);
        a.outcome = Some(outcome);
        if error.is_some() {
            a.error.clone_from(&error);
            self.last_error = error;
        }
        self.updated_at = now;
    }

    fn after_attempt(
        &mut self,
        crashed: bool,
        retryable: bool,
        retry_after_ms: Option<u64>,
        policy: RetryPolicy,
        now: u64,
    ) {
        self.consecutive_crashes = if crashed {
            self.consecutive_crashes + 1
        } else {
            0
        };
        let used = self.attempts_used();
        self.state = if !retryable {
            JobState::Dead(DeadReason::NonRetryable)
        } else if self.consecutive_crashes >= POISON_CRASHES {
            JobState::Dead(DeadReason::Poison)
        } else if used >= self.limits.max_attempts {
            JobState::Dead(DeadReason::AttemptsExhausted)
        } else {
            // An executor may ask for its own delay, up to a day.
            let delay = retry_after_ms
                .map(|d| d.min(MAX_RETRY_AFTER_MS))
                .unwrap_or_else(|| policy.backoff.delay_ms(used, policy.random));
            self.retry_at = Some(now.saturating_add(delay));
            JobState::Retrying
        };
    }
}
