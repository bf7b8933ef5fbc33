//! The records of live jobs, kept in memory by a store no other process
//! writes (a single server), so that the dispatcher's reads of a job it
//! enqueued, dispatches and settles are not a storage read and a decode
//! each (a job is read three times between its enqueue and its end).
//!
//! Only the job store's writers fill it, after their batch is written and
//! under the writer lock, with what they wrote; readers never do, so a
//! reader can never put back a version a writer has since replaced. A
//! record leaves when its job ends (finished jobs are read by people, not
//! the dispatcher) and everything leaves when a commit fails (the store is
//! the truth again). Bounded by the bytes of the records it holds: past
//! that, new records are simply not kept and are read from storage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::job::JobId;

/// Stored bytes of the records kept at most.
pub(super) const MAX_BYTES: usize = 64 * 1024 * 1024;

/// Job records by ID, as last written (see the module's comment).
pub(super) struct LiveRecords<R> {
    /// Off where other processes share the store: their writes would not
    /// reach it.
    enabled: bool,
    max_bytes: usize,
    inner: Mutex<Inner<R>>,
}

struct Inner<R> {
    records: HashMap<JobId, (Arc<R>, usize)>,
    bytes: usize,
}

/// A write to apply once its batch is written: the job's new record and
/// its stored size, or `None` when it is no longer live.
pub(super) type RecordWrite<R> = (JobId, Option<(R, usize)>);

impl<R> LiveRecords<R> {
    /// An empty set, or one that keeps nothing (`enabled` false).
    pub(super) fn new(enabled: bool, max_bytes: usize) -> LiveRecords<R> {
        LiveRecords {
            enabled,
            max_bytes,
            inner: Mutex::new(Inner {
                records: HashMap::new(),
                bytes: 0,
            }),
        }
    }

    /// Whether writers should hand it their records.
    pub(super) fn is_enabled(&self) -> bool {
        self.enabled
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner<R>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record of job `id`, if kept.
    pub(super) fn get(&self, id: &JobId) -> Option<Arc<R>> {
        if !self.enabled {
            return None;
        }
        self.inner().records.get(id).map(|(r, _)| Arc::clone(r))
    }

    /// Applies the writes of one written batch, in order. The caller holds
    /// the job store's writer lock.
    pub(super) fn apply(&self, writes: Vec<RecordWrite<R>>) {
        if !self.enabled || writes.is_empty() {
            return;
        }
        let mut inner = self.inner();
        for (id, record) in writes {
            if let Some((_, size)) = inner.records.remove(&id) {
                inner.bytes -= size;
            }
            if let Some((r, size)) = record {
                if inner.bytes + size <= self.max_bytes {
                    inner.bytes += size;
                    inner.records.insert(id, (Arc::new(r), size));
                }
            }
        }
    }

    /// Forgets every record: after a failed commit, whose effect on the
    /// store is not known.
    pub(super) fn clear(&self) {
        let mut inner = self.inner();
        inner.records.clear();
        inner.bytes = 0;
    }

    /// Records kept and their stored bytes.
    #[cfg(test)]
    pub(super) fn size(&self) -> (usize, usize) {
        let inner = self.inner();
        (inner.records.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> JobId {
        JobId([n; 16])
    }

    #[test]
    fn the_last_write_of_a_job_is_kept_and_an_ended_job_leaves() {
        let live = LiveRecords::new(true, 1_000);
        live.apply(vec![(id(1), Some(("a", 10))), (id(2), Some(("b", 20)))]);
        live.apply(vec![(id(1), Some(("a2", 15)))]);
        assert_eq!(live.get(&id(1)).as_deref(), Some(&"a2"));
        assert_eq!(live.size(), (2, 35));
        live.apply(vec![(id(2), None)]);
        assert!(live.get(&id(2)).is_none());
        assert_eq!(live.size(), (1, 15));
    }

    #[test]
    fn past_its_bytes_new_records_are_not_kept_and_old_ones_are_dropped() {
        let live = LiveRecords::new(true, 100);
        live.apply(vec![(id(1), Some(("a", 60)))]);
        live.apply(vec![(id(2), Some(("b", 50)))]);
        assert!(live.get(&id(2)).is_none(), "over the bound");
        // A new version too large to keep: the old one must not stay.
        live.apply(vec![(id(1), Some(("a2", 101)))]);
        assert!(live.get(&id(1)).is_none());
        assert_eq!(live.size(), (0, 0));
        live.apply(vec![(id(2), Some(("b", 50)))]);
        assert_eq!(live.get(&id(2)).as_deref(), Some(&"b"));
    }

    #[test]
    fn cleared_or_disabled_it_answers_nothing() {
        let live = LiveRecords::new(true, 100);
        live.apply(vec![(id(1), Some(("a", 10)))]);
        live.clear();
        assert!(live.get(&id(1)).is_none());
        assert_eq!(live.size(), (0, 0));
        let off = LiveRecords::new(false, 100);
        off.apply(vec![(id(1), Some(("a", 10)))]);
        assert!(off.get(&id(1)).is_none());
        assert!(!off.is_enabled());
    }
}
