//! Which memtable to flush early: that of a space nobody writes any more.
//!
//! Why: fjall flushes, all at once, every keyspace that still holds data in
//! its oldest journal when the journal reaches its size limit. A space that
//! was written and then left alone (the log's spaces while only jobs
//! arrive) keeps its memtable, and so its place in that burst, until then:
//! tens of flushes and compactions within ~200 ms, on the cores and the
//! disk the fsyncs of acknowledged writes need (BENCHMARKS.md, issue 22).
//! Flushing such a memtable once it has been idle for a while, one at a
//! time, does the same work early and spread out.
//!
//! This is the pure choice; the fjall backend observes its keyspaces and
//! flushes what it is told.

use std::time::{Duration, Instant};

/// What one space's active memtable looked like at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observation {
    /// The memtable's id: a new one after every flush.
    pub memtable: u64,
    /// Its highest sequence number; `None` while it is empty.
    pub highest_seqno: Option<u64>,
}

/// A non-empty memtable, since when it has not changed.
#[derive(Debug, Clone, Copy)]
struct Seen {
    memtable: u64,
    seqno: u64,
    since: Instant,
}

/// Remembers, per space, since when its memtable has been unchanged.
#[derive(Debug)]
pub(crate) struct IdleFlush {
    idle: Duration,
    seen: Vec<Option<Seen>>,
}

impl IdleFlush {
    /// Flush a memtable once it has not been written for `idle`.
    pub(crate) fn new(idle: Duration) -> IdleFlush {
        IdleFlush {
            idle,
            seen: Vec::new(),
        }
    }

    /// Records this tick's observations (by space index) and returns the
    /// space whose memtable to flush now, if any: of those unchanged for
    /// at least `idle`, the one unchanged longest. One per tick, so that
    /// the flushes never come in a burst of their own.
    pub(crate) fn choose(&mut self, now: Instant, observed: &[Observation]) -> Option<usize> {
        self.seen.resize(observed.len().max(self.seen.len()), None);
        let mut oldest: Option<(usize, Instant)> = None;
        for (i, o) in observed.iter().enumerate() {
            let Some(seqno) = o.highest_seqno else {
                self.seen[i] = None;
                continue;
            };
            let seen = match self.seen[i] {
                Some(s) if s.memtable == o.memtable && s.seqno == seqno => s,
                _ => Seen {
                    memtable: o.memtable,
                    seqno,
                    since: now,
                },
            };
            self.seen[i] = Some(seen);
            let idle_for = now.saturating_duration_since(seen.since);
            if idle_for >= self.idle && oldest.is_none_or(|(_, since)| seen.since < since) {
                oldest = Some((i, seen.since));
            }
        }
        let (chosen, _) = oldest?;
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
        let mut p = IdleFlush::new(IDLE);
        let t0 = Instant::now();
        for tick in 0..40u64 {
            let now = t0 + Duration::from_millis(250 * tick);
            assert_eq!(p.choose(now, &[full(1, tick)]), None, "tick {tick}");
        }
    }

    #[test]
    fn an_empty_memtable_is_never_chosen() {
        let mut p = IdleFlush::new(IDLE);
        let t0 = Instant::now();
        for tick in 0..40u64 {
            let now = t0 + Duration::from_millis(250 * tick);
            assert_eq!(p.choose(now, &[EMPTY, EMPTY]), None);
        }
    }

    #[test]
    fn an_idle_memtable_is_chosen_once_after_the_idle_time_and_not_again() {
        let mut p = IdleFlush::new(IDLE);
        let t0 = Instant::now();
        assert_eq!(p.choose(t0, &[full(1, 5)]), None);
        assert_eq!(
            p.choose(t0 + Duration::from_millis(999), &[full(1, 5)]),
            None
        );
        assert_eq!(p.choose(t0 + IDLE, &[full(1, 5)]), Some(0));
        // The flush has not replaced the memtable yet: not chosen at once again.
        assert_eq!(
            p.choose(t0 + IDLE + Duration::from_millis(250), &[full(1, 5)]),
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
                }]
            ),
            None
        );
        // Written again, then idle again: chosen again.
        assert_eq!(p.choose(later, &[full(2, 8)]), None);
        assert_eq!(p.choose(later + IDLE, &[full(2, 8)]), Some(0));
    }

    #[test]
    fn a_write_restarts_the_idle_time() {
        let mut p = IdleFlush::new(IDLE);
        let t0 = Instant::now();
        assert_eq!(p.choose(t0, &[full(1, 5)]), None);
        assert_eq!(
            p.choose(t0 + Duration::from_millis(900), &[full(1, 6)]),
            None
        );
        assert_eq!(
            p.choose(t0 + Duration::from_millis(1500), &[full(1, 6)]),
            None
        );
        assert_eq!(
            p.choose(t0 + Duration::from_millis(1900), &[full(1, 6)]),
            Some(0)
        );
    }

    #[test]
    fn of_several_idle_memtables_one_per_tick_longest_idle_first() {
        let mut p = IdleFlush::new(IDLE);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(p.choose(t0, &[EMPTY, full(1, 3)]), None);
        assert_eq!(p.choose(t1, &[full(4, 7), full(1, 3), full(2, 9)]), None);
        let at = t1 + IDLE;
        let now = [full(4, 7), full(1, 3), full(2, 9)];
        assert_eq!(p.choose(at, &now), Some(1));
        let mut rest = vec![
            p.choose(at + Duration::from_millis(250), &now),
            p.choose(at + Duration::from_millis(500), &now),
        ];
        rest.sort();
        assert_eq!(rest, vec![Some(0), Some(2)]);
        assert_eq!(p.choose(at + Duration::from_millis(750), &now), None);
    }
}
