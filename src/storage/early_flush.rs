//! Which memtable to flush early, before fjall would: that of a space
//! nobody writes any more, or one that keeps a sealed journal alive.
//!
//! Why: fjall flushes, all at once, every keyspace that still holds data in
//! its oldest journal when the journals together reach their size limit:
//! tens of flushes and compactions within ~200 ms, on the cores and the
//! disk the fsyncs of acknowledged writes need (BENCHMARKS.md, issue 22).
//! Two kinds of space end up in that burst:
//!
//! - a space that was written and then left alone (the log's spaces while
//!   only jobs arrive) keeps its memtable until then: it is flushed once it
//!   has been idle for a while;
//! - a space written slowly but steadily (the job store's finished records)
//!   never fills its memtable before the journal fills: once fjall has
//!   sealed a journal and started the next, each memtable that was already
//!   being written keeps the sealed one alive, and is flushed, oldest
//!   first, long before the journals reach their limit.
//!
//! One memtable per choice, so that the flushes never come in a burst of
//! their own. This is the pure choice; the fjall backend observes its
//! keyspaces and journals and flushes what it is told.

use std::time::{Duration, Instant};

/// What one space's active memtable looked like at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observation {
    /// The memtable's id: a new one after every flush.
    pub memtable: u64,
    /// Its highest sequence number; `None` while it is empty.
    pub highest_seqno: Option<u64>,
}

/// A non-empty memtable as seen so far.
#[derive(Debug, Clone, Copy)]
struct Seen {
    memtable: u64,
    seqno: u64,
    /// Since when it has not changed.
    since: Instant,
    /// When it was first seen holding data.
    filled: Instant,
    /// Chosen for a sealed journal already (not again while it stays).
    asked: bool,
}

/// Remembers, per space, its memtable's history, and when a journal was
/// sealed.
#[derive(Debug)]
pub(crate) struct EarlyFlush {
    idle: Duration,
    seen: Vec<Option<Seen>>,
    /// The first tick that saw more than one journal, while there are.
    sealed: Option<Instant>,
}

impl EarlyFlush {
    /// Flush a memtable once it has not been written for `idle`, or once
    /// it holds data of a sealed journal.
    pub(crate) fn new(idle: Duration) -> EarlyFlush {
        EarlyFlush {
            idle,
            seen: Vec::new(),
            sealed: None,
        }
    }

    /// Records this tick's observations (by space index) and the number
    /// of journals, and returns the space whose memtable to flush now, if
    /// any. First a memtable written since before a journal was sealed
    /// (the one holding data longest); else, of those unchanged for at
    /// least `idle`, the one unchanged longest.
    pub(crate) fn choose(
        &mut self,
        now: Instant,
        observed: &[Observation],
        journals: usize,
    ) -> Option<usize> {
        self.sealed = match self.sealed {
            _ if journals <= 1 => None,
            None => Some(now),
            kept => kept,
        };
        self.seen.resize(observed.len().max(self.seen.len()), None);
        // (space, since when): the longest idle, and the longest holding data
        // of a sealed journal.
        let mut oldest_idle: Option<(usize, Instant)> = None;
        let mut pinning: Option<(usize, Instant)> = None;
        for (i, o) in observed.iter().enumerate() {
            let Some(seqno) = o.highest_seqno else {
                self.seen[i] = None;
                continue;
            };
            let seen = match self.seen[i] {
                Some(s) if s.memtable == o.memtable && s.seqno == seqno => s,
                Some(s) if s.memtable == o.memtable => Seen {
                    seqno,
                    since: now,
                    ..s
                },
                _ => Seen {
                    memtable: o.memtable,
                    seqno,
                    since: now,
                    filled: now,
                    asked: false,
                },
            };
            self.seen[i] = Some(seen);
            // A memtable first seen at the tick that saw the seal may hold
            // data written before it: counted as pinning.
            if self.sealed.is_some_and(|sealed| seen.filled <= sealed)
                && !seen.asked
                && pinning.is_none_or(|(_, filled)| seen.filled < filled)
            {
                pinning = Some((i, seen.filled));
            }
            let idle_for = now.saturating_duration_since(seen.since);
            if idle_for >= self.idle && oldest_idle.is_none_or(|(_, since)| seen.since < since) {
                oldest_idle = Some((i, seen.since));
            }
        }
        if let Some((chosen, _)) = pinning {
            if let Some(s) = self.seen[chosen].as_mut() {
                // Its flush replaces it; until then, not chosen again.
                s.asked = true;
                s.since = now;
            }
            return Some(chosen);
        }
        let (chosen, _) = oldest_idle?;
        // Not again for another idle time, should the flush not happen.
        if let Some(s) = self.seen[chosen].as_mut() {
            s.since = now;
        }
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(1);

    fn full(memtable: u64, seqno: u64) -> Observation {
        Observation {
            memtable,
            highest_seqno: Some(seqno),
        }
    }

    const EMPTY: Observation = Observation {
        memtable: 9,
        highest_seqno: None,
    };

    #[test]
    fn a_memtable_still_written_is_never_chosen() {
        let mut p = EarlyFlush::new(IDLE);
        let t0 = Instant::now();
        for tick in 0..40u64 {
            let now = t0 + Duration::from_millis(250 * tick);
            assert_eq!(p.choose(now, &[full(1, tick)], 1), None, "tick {tick}");
        }
    }

    #[test]
    fn an_empty_memtable_is_never_chosen() {
        let mut p = EarlyFlush::new(IDLE);
        let t0 = Instant::now();
        for tick in 0..40u64 {
            let now = t0 + Duration::from_millis(250 * tick);
            assert_eq!(p.choose(now, &[EMPTY, EMPTY], 1), None);
        }
    }

    #[test]
    fn an_idle_memtable_is_chosen_once_after_the_idle_time_and_not_again() {
        let mut p = EarlyFlush::new(IDLE);
        let t0 = Instant::now();
        assert_eq!(p.choose(t0, &[full(1, 5)], 1), None);
        assert_eq!(
            p.choose(t0 + Duration::from_millis(999), &[full(1, 5)], 1),
            None
        );
        assert_eq!(p.choose(t0 + IDLE, &[full(1, 5)], 1), Some(0));
        // The flush has not replaced the memtable yet: not chosen at once again.
        assert_eq!(
            p.choose(t0 + IDLE + Duration::from_millis(250), &[full(1, 5)], 1),
            None
        );
        // Flushed: a new, empty memtable.
        let later = t0 + 3 * IDLE;
        assert_eq!(
            p.choose(
                later,
                &[Observation {
                    memtable: 2,
                    highest_seqno: None
                }],
                1
            ),
            None
        );
        // Written again, then idle again: chosen again.
        assert_eq!(p.choose(later, &[full(2, 8)], 1), None);
        assert_eq!(p.choose(later + IDLE, &[full(2, 8)], 1), Some(0));
    }

    #[test]
    fn a_write_restarts_the_idle_time() {
        let mut p = EarlyFlush::new(IDLE);
        let t0 = Instant::now();
        assert_eq!(p.choose(t0, &[full(1, 5)], 1), None);
        assert_eq!(
            p.choose(t0 + Duration::from_millis(900), &[full(1, 6)], 1),
            None
        );
        assert_eq!(
            p.choose(t0 + Duration::from_millis(1500), &[full(1, 6)], 1),
            None
        );
        assert_eq!(
            p.choose(t0 + Duration::from_millis(1900), &[full(1, 6)], 1),
            Some(0)
        );
    }

    #[test]
    fn of_several_idle_memtables_one_per_tick_longest_idle_first() {
        let mut p = EarlyFlush::new(IDLE);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(p.choose(t0, &[EMPTY, full(1, 3)], 1), None);
        assert_eq!(p.choose(t1, &[full(4, 7), full(1, 3), full(2, 9)], 1), None);
        let at = t1 + IDLE;
        let now = [full(4, 7), full(1, 3), full(2, 9)];
        assert_eq!(p.choose(at, &now, 1), Some(1));
        let mut rest = vec![
            p.choose(at + Duration::from_millis(250), &now, 1),
            p.choose(at + Duration::from_millis(500), &now, 1),
        ];
        rest.sort();
        assert_eq!(rest, vec![Some(0), Some(2)]);
        assert_eq!(p.choose(at + Duration::from_millis(750), &now, 1), None);
    }

    #[test]
    fn memtables_written_before_a_journal_was_sealed_are_flushed_oldest_first_once_each() {
        let mut p = EarlyFlush::new(IDLE);
        let t0 = Instant::now();
        let tick = |n: u64| t0 + Duration::from_millis(50 * n);
        // Space 1 holds data from tick 0, space 0 from tick 2; space 2 is
        // empty. All are still being written, so none is idle.
        assert_eq!(p.choose(tick(0), &[EMPTY, full(1, 1), EMPTY], 1), None);
        assert_eq!(p.choose(tick(2), &[full(5, 2), full(1, 3), EMPTY], 1), None);
        // fjall seals the journal; space 2 is first written in this tick.
        let now = |s: u64| [full(5, s), full(1, s + 1), full(7, s + 2)];
        assert_eq!(p.choose(tick(3), &now(10), 2), Some(1));
        assert_eq!(p.choose(tick(4), &now(20), 2), Some(0));
        assert_eq!(p.choose(tick(5), &now(30), 2), Some(2));
        // Each asked once: not again while its flush is on its way.
        assert_eq!(p.choose(tick(6), &now(40), 2), None);
        // Flushed: new memtables, written after the seal, keep nothing of
        // the sealed journal.
        let fresh = [full(8, 50), full(9, 51), full(10, 52)];
        assert_eq!(p.choose(tick(7), &fresh, 2), None);
        // The sealed journal is gone; the next seal asks for the
        // memtables written before it, and only those.
        assert_eq!(p.choose(tick(8), &fresh, 1), None);
        assert_eq!(
            p.choose(tick(9), &[full(8, 60), full(9, 61), EMPTY], 1),
            None
        );
        assert_eq!(
            p.choose(tick(10), &[full(8, 70), full(9, 71), EMPTY], 2),
            Some(0)
        );
        // Space 2 is first written after that seal.
        assert_eq!(
            p.choose(tick(11), &[full(8, 80), full(9, 81), full(11, 82)], 2),
            Some(1)
        );
        assert_eq!(
            p.choose(tick(12), &[full(8, 90), full(9, 91), full(11, 92)], 2),
            None
        );
    }

    #[test]
    fn a_sealed_journal_comes_before_an_idle_memtable() {
        let mut p = EarlyFlush::new(IDLE);
        let t0 = Instant::now();
        assert_eq!(p.choose(t0, &[full(1, 1), full(2, 2)], 1), None);
        // Space 0 is idle from t0, space 1 still written; then a seal.
        let at = t0 + IDLE;
        assert_eq!(p.choose(at, &[full(1, 1), full(2, 3)], 2), Some(0));
        assert_eq!(
            p.choose(at + Duration::from_millis(50), &[full(1, 1), full(2, 4)], 2),
            Some(1)
        );
        // Space 0 was asked for the seal already; as idle it waits for
        // another idle time.
        assert_eq!(
            p.choose(
                at + Duration::from_millis(100),
                &[full(1, 1), full(2, 5)],
                2
            ),
            None
        );
        assert_eq!(p.choose(at + IDLE, &[full(1, 1), full(2, 6)], 2), Some(0));
    }
}
