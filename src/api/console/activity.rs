//! What the overview shows of the last minutes: jobs enqueued, started and
//! finished per second, and how long started jobs waited (from their
//! run_at to their attempt's start), sampled from the job counters every
//! [`EVERY`] and kept for [`KEPT`] samples. The window arithmetic is pure;
//! [`sample`] is the only part that reads a clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::pulse::JobCounters;

/// How often the counters are sampled.
pub(super) const EVERY: Duration = Duration::from_secs(5);
/// Samples kept: ten minutes.
pub(super) const KEPT: usize = 120;

/// The job counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sample {
    pub(super) at_ms: u64,
    pub(super) enqueued: u64,
    pub(super) started: u64,
    pub(super) ended: u64,
    /// The wait histogram's counts per bucket.
    pub(super) waits: Vec<u64>,
    /// Waits counted, also those past the last bucket.
    pub(super) wait_count: u64,
}

impl Sample {
    fn of(counters: &JobCounters, at_ms: u64) -> Sample {
        Sample {
            at_ms,
            enqueued: counters.enqueued(),
            started: counters.attempts_started(),
            ended: counters.attempts_ended().iter().map(|(_, n)| n).sum(),
            waits: counters.wait.buckets().0,
            wait_count: counters.wait.count(),
        }
    }
}

/// The last samples, oldest first.
#[derive(Debug, Default)]
pub(super) struct Activity {
    samples: Mutex<VecDeque<Sample>>,
}

impl Activity {
    fn push(&self, s: Sample) {
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == KEPT {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// Each interval between two samples: `{at_ms, enqueued_per_s,
    /// started_per_s, ended_per_s, wait_p50_ms, wait_p99_ms}` (the waits
    /// as the upper bound of their histogram bucket, `null` when no job
    /// started in the interval or the wait passed the last bound).
    pub(super) fn intervals(&self, bounds: &[f64]) -> Value {
        let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let out: Vec<Value> = q
            .iter()
            .zip(q.iter().skip(1))
            .map(|(a, b)| interval(a, b, bounds))
            .collect();
        Value::Array(out)
    }
}

/// One interval's rates and waits.
fn interval(a: &Sample, b: &Sample, bounds: &[f64]) -> Value {
    let secs = (b.at_ms.saturating_sub(a.at_ms) as f64 / 1000.0).max(0.001);
    let rate = |x: u64, y: u64| (y.saturating_sub(x) as f64 / secs * 10.0).round() / 10.0;
    let waits: Vec<u64> = b
        .waits
        .iter()
        .zip(a.waits.iter().chain(std::iter::repeat(&0)))
        .map(|(y, x)| y.saturating_sub(*x))
        .collect();
    let total = b.wait_count.saturating_sub(a.wait_count);
    json!({
        "at_ms": b.at_ms,
        "enqueued_per_s": rate(a.enqueued, b.enqueued),
        "started_per_s": rate(a.started, b.started),
        "ended_per_s": rate(a.ended, b.ended),
        "wait_p50_ms": quantile_ms(&waits, total, bounds, 0.5),
        "wait_p99_ms": quantile_ms(&waits, total, bounds, 0.99),
    })
}

/// The upper bound (ms) of the bucket holding the `q` quantile of `total`
/// durations of which `counts` fell in the buckets (per bucket, not
/// cumulative; the rest were past the last bound), or `None` for none or
/// one past the last bound.
fn quantile_ms(counts: &[u64], total: u64, bounds: &[f64], q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let want = (total as f64 * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (n, bound) in counts.iter().zip(bounds) {
        seen += n;
        if seen >= want {
            return Some(bound * 1000.0);
        }
    }
    None
}

/// Samples `counters` every [`EVERY`] into `activity`, for as long as the
/// task runs.
pub(super) async fn sample(counters: Arc<JobCounters>, activity: Arc<Activity>) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        activity.push(Sample::of(&counters, crate::clock::unix_ms()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, n: u64, waits: Vec<u64>) -> Sample {
        Sample {
            at_ms,
            enqueued: n,
            started: n / 2,
            ended: n / 4,
            wait_count: waits.iter().sum(),
            waits,
        }
    }

    #[test]
    fn intervals_give_rates_and_wait_quantiles_of_what_happened_in_them() {
        let bounds = [0.001, 0.01, 0.1];
        let a = Activity::default();
        a.push(sample(0, 0, vec![0, 0, 0]));
        a.push(sample(5_000, 100, vec![90, 9, 1]));
        a.push(sample(10_000, 100, vec![90, 9, 1]));
        let v = a.intervals(&bounds);
        assert_eq!(v[0]["enqueued_per_s"], 20.0);
        assert_eq!(v[0]["started_per_s"], 10.0);
        assert_eq!(v[0]["ended_per_s"], 5.0);
        assert_eq!(v[0]["wait_p50_ms"], 1.0);
        assert_eq!(v[0]["wait_p99_ms"], 10.0);
        assert_eq!(v[1]["enqueued_per_s"], 0.0);
        assert_eq!(v[1]["wait_p50_ms"], Value::Null, "nothing started");
        assert_eq!(v.as_array().unwrap().len(), 2);
    }

    #[test]
    fn only_the_last_samples_are_kept() {
        let a = Activity::default();
        for i in 0..(KEPT as u64 + 10) {
            a.push(sample(i * 5_000, i, vec![]));
        }
        let v = a.intervals(&[]);
        assert_eq!(v.as_array().unwrap().len(), KEPT - 1);
        assert_eq!(v[0]["at_ms"], 11 * 5_000);
    }

    #[test]
    fn a_quantile_past_the_last_bound_is_unknown() {
        let bounds = [0.001, 0.01];
        assert_eq!(quantile_ms(&[1, 0], 1, &bounds, 0.5), Some(1.0));
        assert_eq!(quantile_ms(&[0, 0], 0, &bounds, 0.5), None);
        // Two of four past the last bound: the median is the last bound,
        // the p99 beyond it.
        assert_eq!(quantile_ms(&[1, 1], 4, &bounds, 0.5), Some(10.0));
        assert_eq!(quantile_ms(&[1, 1], 4, &bounds, 0.99), None);
    }
}
