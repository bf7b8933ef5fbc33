//! A job's committed change of state, as operators see it: one structured
//! log line each, at info level under the target `pulse_ledger::jobs`
//! (`RUST_LOG=info,pulse_ledger::jobs=warn` silences them), and the job
//! metrics (`job_metrics.rs`).

use super::job::{AttemptOutcome, Job, JobId};
use crate::Did;

/// One transition: from `old` to `new` (or a new job).
#[derive(Debug, Clone)]
pub(crate) struct Transition {
    pub(crate) id: JobId,
    pub(crate) handler: Did,
    /// The job's latest attempt (0: none yet).
    pub(crate) attempt: u32,
    /// State names; "new" for a job just enqueued.
    pub(crate) from: &'static str,
    pub(crate) to: &'static str,
    /// The new state's reason (held, dead, cancelled).
    pub(crate) reason: &'static str,
    /// The attempt that ended in this transition, its outcome and error.
    pub(crate) ended: Option<AttemptOutcome>,
    pub(crate) error: Option<String>,
    /// For an attempt started: ms from when the job could run (its
    /// run_at) to the start.
    pub(crate) waited_ms: Option<u64>,
    /// For an attempt ended: how long it ran, ms.
    pub(crate) ran_ms: Option<u64>,
}

impl Transition {
    /// From `old` (none for a new job) to `new`.
    pub(crate) fn of(old: Option<&Job>, new: &Job) -> Transition {
        let last = new.attempts.last();
        let was = |number: u32| {
            old.and_then(|o| o.attempts.get(number as usize - 1))
                .map(|a| a.outcome)
        };
        // Ended now: it has an outcome it did not have before.
        let ended =
            last.filter(|a| a.outcome.is_some() && was(a.number).is_none_or(|o| o.is_none()));
        // Started now: it is live and was not there before.
        let started = last.filter(|a| a.outcome.is_none() && was(a.number).is_none());
        Transition {
            id: new.id,
            handler: new.handler.clone(),
            attempt: last.map_or(0, |a| a.number),
            from: old.map_or("new", |o| o.state.as_str()),
            to: new.state.as_str(),
            reason: new.state.reason(),
            ended: ended.and_then(|a| a.outcome),
            error: ended.and_then(|a| a.error.clone()),
            waited_ms: started.map(|a| a.started_at.saturating_sub(new.run_at)),
            ran_ms: ended.map(|a| {
                a.ended_at
                    .unwrap_or(a.started_at)
                    .saturating_sub(a.started_at)
            }),
        }
    }

    pub(crate) fn log(&self) {
        tracing::info!(
            target: "pulse_ledger::jobs",
            job = %self.id,
            handler = %self.handler,
            attempt = self.attempt,
            from = self.from,
            to = self.to,
            reason = (!self.reason.is_empty()).then_some(self.reason),
            outcome = self.ended.map(AttemptOutcome::as_str),
            error = self.error.as_deref().map(|e| e.escape_debug().to_string()),
            "job {} -> {}",
            self.from,
            self.to
        );
    }
}
