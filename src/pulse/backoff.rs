//! Retry delays: exponential backoff with jitter and a cap. Pure: the
//! randomness is an input, so schedules are reproducible.

/// How retry delays grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry, ms.
    pub base_ms: u64,
    /// Longest delay, ms.
    pub cap_ms: u64,
}

impl Default for Backoff {
    /// 1 s doubling to at most 1 h.
    fn default() -> Backoff {
        Backoff {
            base_ms: 1_000,
            cap_ms: 3_600_000,
        }
    }
}

impl Backoff {
    /// The delay before retry number `retry` (1 for the first retry):
    /// "equal jitter" — half of min(cap, base · 2^(retry−1)) plus a
    /// uniformly random part of the other half, drawn from `random`.
    pub fn delay_ms(&self, retry: u32, random: u64) -> u64 {
        let exp = retry.saturating_sub(1).min(62);
        let full = self
            .base_ms
            .saturating_mul(1u64 << exp)
            .min(self.cap_ms)
            .max(1);
        let half = full / 2;
        half + random % (full - half + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_doubles_and_stays_within_jitter_and_cap() {
        let b = Backoff::default();
        for retry in 1..=40u32 {
            let full = (1_000u64 << (retry - 1).min(40)).min(3_600_000);
            for r in [0u64, 1, 7, u64::MAX, 123_456_789] {
                let d = b.delay_ms(retry, r);
                assert!(
                    d >= full / 2 && d <= full,
                    "retry {retry}: {d} not in [{}, {full}]",
                    full / 2
                );
            }
        }
        assert_eq!(b.delay_ms(1, 0), 500);
        assert!(b.delay_ms(100, u64::MAX) <= 3_600_000);
    }
}
