//! What happened to jobs since the store opened, counted from committed
//! transitions ([`Transition`]) and timed where the work is done: the
//! numbers behind the job metrics of `/metrics` (README, "Operating").

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::job::AttemptOutcome;
use super::schedule_store::FireReport;
use super::transition::Transition;
use crate::histogram::{FAST, Histogram, SLOW};

/// Every attempt outcome, in the order of the counters.
pub const OUTCOMES: [AttemptOutcome; 7] = [
    AttemptOutcome::Succeeded,
    AttemptOutcome::Failed,
    AttemptOutcome::Crashed,
    AttemptOutcome::TimedOut,
    AttemptOutcome::Cancelled,
    AttemptOutcome::BudgetExceeded,
    AttemptOutcome::Interrupted,
];

/// Job counters and timings.
#[derive(Debug)]
pub struct JobCounters {
    enqueued: AtomicU64,
    attempts_started: AtomicU64,
    attempts_ended: [AtomicU64; 7],
    /// (state, reason) → jobs that finished so.
    finished: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    retries: AtomicU64,
    /// Held for budget, cancelled for budget.
    budget: [AtomicU64; 2],
    /// [fired, skipped, missed, failed].
    schedules: [AtomicU64; 4],
    /// From a job's run_at to the start of its attempt.
    pub wait: Histogram,
    /// How long attempts ran.
    pub run: Histogram,
    /// Job store commits (each one fsync).
    pub commit: Histogram,
    /// Dispatcher steps.
    pub step: Histogram,
}

impl Default for JobCounters {
    fn default() -> JobCounters {
        JobCounters {
            enqueued: AtomicU64::new(0),
            attempts_started: AtomicU64::new(0),
            attempts_ended: Default::default(),
            finished: Mutex::default(),
            retries: AtomicU64::new(0),
            budget: Default::default(),
            schedules: Default::default(),
            wait: Histogram::new(FAST),
            run: Histogram::new(SLOW),
            commit: Histogram::new(FAST),
            step: Histogram::new(FAST),
        }
    }
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl JobCounters {
    pub(crate) fn observe(&self, t: &Transition) {
        if t.from == "new" {
            add(&self.enqueued, 1);
        }
        if let Some(ms) = t.waited_ms {
            add(&self.attempts_started, 1);
            self.wait.observe_ms(ms);
        }
        if let Some(outcome) = t.ended {
            if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
                add(&self.attempts_ended[i], 1);
            }
            if let Some(ms) = t.ran_ms {
                self.run.observe_ms(ms);
            }
        }
        if t.from != t.to {
            match (t.to, t.reason) {
                ("retrying", _) => add(&self.retries, 1),
                ("held", "budget") => add(&self.budget[0], 1),
                ("cancelled", "budget") => add(&self.budget[1], 1),
                _ => {}
            }
            if matches!(t.to, "succeeded" | "dead" | "cancelled") {
                *self
                    .finished
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((t.to, t.reason))
                    .or_default() += 1;
            }
        }
    }

    pub(crate) fn schedules_fired(&self, r: &FireReport) {
        for (c, n) in self
            .schedules
            .iter()
            .zip([r.fired, r.skipped, r.missed, r.failed])
        {
            add(c, n);
        }
    }

    /// Jobs enqueued.
    pub fn enqueued(&self) -> u64 {
        get(&self.enqueued)
    }

    /// Attempts started.
    pub fn attempts_started(&self) -> u64 {
        get(&self.attempts_started)
    }

    /// Attempts ended, by outcome (in [`OUTCOMES`] order).
    pub fn attempts_ended(&self) -> [(AttemptOutcome, u64); 7] {
        let mut out = [(AttemptOutcome::Succeeded, 0); 7];
        for (slot, (o, c)) in out
            .iter_mut()
            .zip(OUTCOMES.iter().zip(&self.attempts_ended))
        {
            *slot = (*o, get(c));
        }
        out
    }

    /// Jobs finished, by (state, reason).
    pub fn finished(&self) -> Vec<((&'static str, &'static str), u64)> {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Jobs that went to retrying.
    pub fn retries(&self) -> u64 {
        get(&self.retries)
    }

    /// Budget refusals: (jobs held for budget, jobs cancelled for it).
    pub fn budget_refusals(&self) -> (u64, u64) {
        (get(&self.budget[0]), get(&self.budget[1]))
    }

    /// Schedule occurrences: (fired, skipped, missed, failed).
    pub fn schedule_occurrences(&self) -> (u64, u64, u64, u64) {
        let [a, b, c, d] = &self.schedules;
        (get(a), get(b), get(c), get(d))
    }
}
