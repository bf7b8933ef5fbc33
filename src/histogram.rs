//! A Prometheus histogram of durations: fixed bucket bounds, lock-free
//! counts, rendered in the text format by whoever exposes it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bounds (seconds) for work that takes milliseconds: commits, steps,
/// waits in the queue.
pub(crate) const FAST: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Bounds (seconds) for work that takes up to hours: attempts.
pub(crate) const SLOW: &[f64] = &[0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];

/// Counts of durations by bucket, their count and their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Counts one duration.
    pub(crate) fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        // Only the first bucket it fits is counted; render sums them, as
        // Prometheus buckets are cumulative.
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Release);
    }

    /// Counts one duration given in ms.
    pub(crate) fn observe_ms(&self, ms: u64) {
        self.observe(Duration::from_millis(ms));
    }

    /// How many were counted.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// The counts per bucket (not cumulative; durations beyond the last
    /// bound are in none) and the bounds, seconds.
    pub fn buckets(&self) -> (Vec<u64>, &'static [f64]) {
        (
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.bounds,
        )
    }

    /// Writes the histogram as metric `name` with `help`.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let count = self.count();
        let mut cumulative = 0;
        for (b, bound) in self.buckets.iter().zip(self.bounds) {
            cumulative += b.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                cumulative.min(count)
            );
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_everything() {
        let h = Histogram::new(FAST);
        for ms in [0, 3, 3, 40, 9_000] {
            h.observe_ms(ms);
        }
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "test");
        assert!(out.contains("x_seconds_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.05\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"5\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_seconds_sum 9.046\n"), "{out}");
        assert!(out.contains("x_seconds_count 5\n"), "{out}");
    }
}
