//! A handler's load across every node sharing a store: how many of its
//! attempts run and how much cost they hold reserved. Kept in the store
//! beside the jobs and changed in the same conditional batch as the job
//! records whose attempts start or end, so two nodes can never both take
//! the last slot of a handler's `max_concurrency` or the last units of its
//! budget (spec/pulse.md, "Several nodes"). Pure: the store reads and
//! writes it.

use super::budget::{Budget, BudgetUse};
use super::job::{Job, JobState};

/// Attempts of one handler running on all nodes, and the cost they hold
/// reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HandlerLoad {
    /// Running attempts.
    pub running: u32,
    /// Cost reserved by the running attempts when they started.
    pub reserved: u64,
}

/// Stored length: running (u32 BE) ‖ reserved (u64 BE).
const LEN: usize = 12;

impl HandlerLoad {
    /// The stored bytes.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..4].copy_from_slice(&self.running.to_be_bytes());
        out[4..].copy_from_slice(&self.reserved.to_be_bytes());
        out
    }

    /// Reads stored bytes (absent: no load).
    ///
    /// # Errors
    /// Bytes that are not 12 long.
    pub fn decode(bytes: Option<&[u8]>) -> Result<HandlerLoad, String> {
        let Some(bytes) = bytes else {
            return Ok(HandlerLoad::default());
        };
        let b: &[u8; LEN] = bytes
            .try_into()
            .map_err(|_| format!("handler load record is {} bytes, not {LEN}", bytes.len()))?;
        let (r, c) = b.split_at(4);
        Ok(HandlerLoad {
            running: u32::from_be_bytes(r.try_into().unwrap_or_default()),
            reserved: u64::from_be_bytes(c.try_into().unwrap_or_default()),
        })
    }

    /// This load after `delta`, never below zero (a store whose loads were
    /// counted before an attempt began to be counted only gives back what
    /// it has).
    #[must_use]
    pub fn plus(self, delta: LoadDelta) -> HandlerLoad {
        HandlerLoad {
            running: add_signed(u64::from(self.running), delta.running)
                .try_into()
                .unwrap_or(u32::MAX),
            reserved: add_signed(self.reserved, delta.reserved),
        }
    }

    /// Whether this load, reached by starting attempts, is within the
    /// handler's concurrency `limit` and, with `spent` (hour, day) already
    /// spent, its budget.
    pub fn fits(&self, limit: Option<u32>, budget: &Budget, spent: (u64, u64)) -> bool {
        let used = BudgetUse {
            spent_hour: spent.0,
            spent_day: spent.1,
            reserved: 0,
        };
        limit.is_none_or(|l| self.running <= l)
            && (!budget.is_limited() || budget.admits(&used, self.reserved))
    }
}

fn add_signed(value: u64, delta: i128) -> u64 {
    (i128::from(value) + delta).clamp(0, i128::from(u64::MAX)) as u64
}

/// How a group of job writes changes one handler's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadDelta {
    /// Attempts started minus attempts ended.
    pub running: i128,
    /// Reservations taken minus reservations given back.
    pub reserved: i128,
}

impl LoadDelta {
    /// The change a job's write from `old` to `new` makes: an attempt
    /// that starts takes a slot and its reservation, one that ends gives
    /// them back.
    pub fn of(old: Option<&Job>, new: &Job) -> LoadDelta {
        let hold = |j: &Job| -> Option<u64> {
            match j.state {
                JobState::Running => Some(j.live_attempt().map_or(0, |a| a.reserved)),
                _ => None,
            }
        };
        let (was, is) = (old.and_then(hold), hold(new));
        let same_attempt = match (old.and_then(Job::live_attempt), new.live_attempt()) {
            (Some(a), Some(b)) => a.lease == b.lease,
            _ => false,
        };
        if was.is_some() && is.is_some() && same_attempt {
            return LoadDelta::default();
        }
        let side = |h: Option<u64>| h.map_or((0, 0), |r| (1, i128::from(r)));
        let (r0, c0) = side(was);
        let (r1, c1) = side(is);
        LoadDelta {
            running: r1 - r0,
            reserved: c1 - c0,
        }
    }

    /// Both deltas together.
    pub fn add(&mut self, other: LoadDelta) {
        self.running += other.running;
        self.reserved += other.reserved;
    }

    /// Whether it changes nothing.
    pub fn is_zero(&self) -> bool {
        self.running == 0 && self.reserved == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_wrong_lengths_are_named() {
        let l = HandlerLoad {
            running: 3,
            reserved: 1 << 40,
        };
        assert_eq!(HandlerLoad::decode(Some(&l.encode())).unwrap(), l);
        assert_eq!(HandlerLoad::decode(None).unwrap(), HandlerLoad::default());
        let e = HandlerLoad::decode(Some(&[0u8; 11])).unwrap_err();
        assert!(e.contains("11 bytes, not 12"), "{e}");
    }

    #[test]
    fn loads_never_go_below_zero() {
        let l = HandlerLoad {
            running: 1,
            reserved: 5,
        }
        .plus(LoadDelta {
            running: -3,
            reserved: -9,
        });
        assert_eq!(l, HandlerLoad::default());
        let up = l.plus(LoadDelta {
            running: 2,
            reserved: 7,
        });
        assert_eq!(
            up,
            HandlerLoad {
                running: 2,
                reserved: 7
            }
        );
    }

    #[test]
    fn fits_checks_concurrency_and_both_budget_windows() {
        let l = HandlerLoad {
            running: 2,
            reserved: 40,
        };
        let none = Budget::default();
        assert!(l.fits(Some(2), &none, (0, 0)));
        assert!(!l.fits(Some(1), &none, (0, 0)));
        assert!(l.fits(None, &none, (u64::MAX, u64::MAX)));
        let hour = Budget {
            per_hour: Some(100),
            per_day: None,
        };
        assert!(l.fits(None, &hour, (60, 0)), "60 + 40 = 100");
        assert!(!l.fits(None, &hour, (61, 0)));
        let day = Budget {
            per_hour: None,
            per_day: Some(50),
        };
        assert!(!l.fits(None, &day, (0, 11)), "11 + 40 > 50");
    }
}
