//! What this server last wrote or read, kept in memory: with one server
//! per database (the server lock), nothing else writes, so a value read
//! once or written here stays right until this server changes it. Saves a
//! round trip per read of a job record or a subject the server has just
//! written.
//!
//! A read that raced a commit must not put the old value back after the
//! commit updated the cache: a read's result is kept only if no commit
//! began or ended while it ran (the generation), and while a commit is in
//! flight nothing read is kept. A failed commit, whose outcome is unknown,
//! empties the cache.
//!
//! Batches queued for a group commit are pinned until answered: their
//! values are read first and never evicted, so a key that no queued batch
//! writes is current in the database and a read need not wait for the
//! queue.
//!
//! Bounded in two generations: when the young one is full it becomes the
//! old one and the previous old one is dropped; a value found in the old
//! one moves back to the young. So a full cache keeps what was used
//! lately instead of starting empty: emptying it whole in the middle of a
//! run of jobs (after a registration phase had filled it) sent every job
//! record read back to the database.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::storage::SpaceId;

/// One current value: (space, key) and the value (`None`: absent).
pub(super) type Known = ((SpaceId, Vec<u8>), Option<Vec<u8>>);

/// Entries, and key and value bytes, of one generation: the cache holds at
/// most twice these.
const MAX_ENTRIES: usize = 100_000;
const MAX_BYTES: usize = 32 * 1024 * 1024;

type Values = HashMap<(SpaceId, Vec<u8>), Option<Vec<u8>>>;

/// Values of queued batches, each with the number of the last batch that
/// wrote it.
type Pinned = HashMap<(SpaceId, Vec<u8>), (Option<Vec<u8>>, u64)>;

#[derive(Default)]
struct Inner {
    /// Writes of batches queued and not yet answered (group commit), with
    /// the number of the last batch that wrote each: newer than
    /// everything else, never evicted, so a key that is in none of the
    /// maps is current in the database.
    pinned: Pinned,
    /// `None`: known absent. Newer than `old` wherever both hold a key.
    values: Values,
    bytes: usize,
    /// The previous generation.
    old: Values,
    /// Changes when a commit begins or ends.
    generation: u64,
    in_flight: usize,
}

/// The cache of current values (never used for snapshot reads).
#[derive(Default)]
pub(super) struct ValueCache(Mutex<Inner>);

/// A read's ticket: whether its result may be kept.
pub(super) struct ReadTicket(u64);

impl ValueCache {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached value (outer `None`: not cached), or a ticket to keep
    /// what the database answers.
    pub(super) fn get(&self, space: SpaceId, key: &[u8]) -> Result<Option<Vec<u8>>, ReadTicket> {
        let mut inner = self.inner();
        let k = (space, key.to_vec());
        if let Some((v, _)) = inner.pinned.get(&k) {
            return Ok(v.clone());
        }
        if let Some(v) = inner.values.get(&k) {
            return Ok(v.clone());
        }
        match inner.old.remove(&k) {
            Some(v) => {
                insert(&mut inner, k, v.clone());
                Ok(v)
            }
            None => Err(ReadTicket(inner.generation)),
        }
    }

    /// Keeps a value read from the database, unless a commit began or
    /// ended since the ticket was taken.
    pub(super) fn keep(
        &self,
        ticket: ReadTicket,
        space: SpaceId,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) {
        let mut inner = self.inner();
        if inner.generation != ticket.0 || inner.in_flight > 0 {
            return;
        }
        insert(&mut inner, (space, key), value);
    }

    /// [`ValueCache::keep`] for several values read together.
    pub(super) fn keep_all(&self, ticket: ReadTicket, values: Vec<Known>) {
        let mut inner = self.inner();
        if inner.generation != ticket.0 || inner.in_flight > 0 {
            return;
        }
        for (k, v) in values {
            insert(&mut inner, k, v);
        }
    }

    /// Keeps a value of a write-once space ([`crate::storage::Backend::declare_write_once`]):
    /// it never changes once written, so no commit can make it stale and
    /// no ticket is needed.
    pub(super) fn keep_final(&self, space: SpaceId, key: Vec<u8>, value: Vec<u8>) {
        insert(&mut self.inner(), (space, key), Some(value));
    }

    /// A commit begins: reads from now on are not kept until it ends.
    pub(super) fn begin(&self) {
        let mut inner = self.inner();
        inner.in_flight += 1;
        inner.generation += 1;
    }

    /// Batch number `ticket` is queued for a group commit: its `writes`
    /// (the last per key) are what reads see from now on, until it is
    /// answered ([`ValueCache::unpin`]). Batches are numbered in queue
    /// order and answered in that order.
    pub(super) fn pin(&self, ticket: u64, writes: &[Known]) {
        let mut inner = self.inner();
        inner.generation += 1;
        for (k, v) in writes {
            inner.pinned.insert(k.clone(), (v.clone(), ticket));
        }
    }

    /// Batch `ticket` was answered, and every batch before it. Committed:
    /// their writes become cached values. Failed (and so every batch
    /// queued behind it): nothing cached can be trusted.
    pub(super) fn unpin(&self, ticket: u64, committed: bool) {
        let mut inner = self.inner();
        inner.generation += 1;
        if !committed {
            inner.pinned.clear();
            inner.values.clear();
            inner.old.clear();
            inner.bytes = 0;
            return;
        }
        let done: Vec<(SpaceId, Vec<u8>)> = inner
            .pinned
            .iter()
            .filter(|(_, (_, t))| *t <= ticket)
            .map(|(k, _)| k.clone())
            .collect();
        for k in done {
            if let Some((v, _)) = inner.pinned.remove(&k) {
                insert(&mut inner, k, v);
            }
        }
    }

    /// The commit ended: its writes (the last per key) are the current
    /// values if it succeeded; if not, nothing cached can be trusted.
    pub(super) fn end(&self, writes: Option<Vec<Known>>) {
        let mut inner = self.inner();
        inner.in_flight -= 1;
        inner.generation += 1;
        match writes {
            Some(writes) => {
                for (k, v) in writes {
                    if !inner.pinned.contains_key(&k) {
                        insert(&mut inner, k, v);
                    }
                }
            }
            None => {
                inner.pinned.clear();
                inner.values.clear();
                inner.old.clear();
                inner.bytes = 0;
            }
        }
    }
}

fn insert(inner: &mut Inner, k: (SpaceId, Vec<u8>), v: Option<Vec<u8>>) {
    if inner.values.len() >= MAX_ENTRIES || inner.bytes >= MAX_BYTES {
        inner.old = std::mem::take(&mut inner.values);
        inner.bytes = 0;
    }
    // The young value shadows an old one; the old copy is only memory.
    inner.old.remove(&k);
    let added = k.1.len() + v.as_ref().map_or(0, Vec::len);
    if let Some(old) = inner.values.insert(k.clone(), v) {
        inner.bytes = inner
            .bytes
            .saturating_sub(k.1.len() + old.map_or(0, |o| o.len()));
    }
    inner.bytes += added;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_raced_a_commit_is_not_kept() {
        let c = ValueCache::default();
        let s = SpaceId(0);
        let ticket = c.get(s, b"k").unwrap_err();
        c.begin();
        c.end(Some(vec![((s, b"k".to_vec()), Some(b"new".to_vec()))]));
        // The read started before the commit: its (old) answer is dropped.
        c.keep(ticket, s, b"k".to_vec(), Some(b"old".to_vec()));
        assert_eq!(c.get(s, b"k").ok(), Some(Some(b"new".to_vec())));
    }

    #[test]
    fn a_full_cache_keeps_the_last_generation_and_what_was_read_from_it() {
        let c = ValueCache::default();
        let s = SpaceId(2);
        let key = |i: usize| (i as u64).to_be_bytes().to_vec();
        let write = |from: usize, to: usize| {
            c.begin();
            c.end(Some(
                (from..to).map(|i| ((s, key(i)), Some(vec![1]))).collect(),
            ));
        };
        write(0, MAX_ENTRIES);
        // Full: the next write starts a new generation; all of the last
        // one is still there.
        write(MAX_ENTRIES, MAX_ENTRIES + 1);
        assert!(c.get(s, &key(0)).is_ok() && c.get(s, &key(MAX_ENTRIES - 1)).is_ok());
        // Key 0 was read from the old generation, so it moved to the young
        // one and outlives the next turn; key 1 was not, and is gone.
        write(MAX_ENTRIES + 1, 2 * MAX_ENTRIES + 1);
        assert!(c.get(s, &key(0)).is_ok(), "a value read lately was dropped");
        assert!(c.get(s, &key(1)).is_err(), "two generations back is kept");
        // A newer value in the young generation wins over an old one.
        c.begin();
        c.end(Some(vec![((s, key(MAX_ENTRIES + 5)), None)]));
        assert_eq!(c.get(s, &key(MAX_ENTRIES + 5)).ok(), Some(None));
        // A failed commit empties both.
        c.begin();
        c.end(None);
        assert!(c.get(s, &key(MAX_ENTRIES + 2)).is_err());
        assert!(c.get(s, &key(0)).is_err());
    }

    #[test]
    fn pinned_writes_are_read_first_and_become_values_once_committed() {
        let c = ValueCache::default();
        let s = SpaceId(3);
        let w = |k: &[u8], v: Option<&[u8]>| ((s, k.to_vec()), v.map(<[u8]>::to_vec));
        c.pin(1, &[w(b"a", Some(b"1")), w(b"b", Some(b"1"))]);
        c.pin(2, &[w(b"a", Some(b"2")), w(b"c", None)]);
        assert_eq!(c.get(s, b"a").ok(), Some(Some(b"2".to_vec())));
        assert_eq!(c.get(s, b"c").ok(), Some(None));
        // A read that began before a batch was queued is not kept.
        let ticket = c.get(s, b"d").unwrap_err();
        c.pin(3, &[w(b"d", Some(b"3"))]);
        c.keep(ticket, s, b"d".to_vec(), None);
        assert_eq!(c.get(s, b"d").ok(), Some(Some(b"3".to_vec())));
        // Batch 1 answered: batch 2's value of a stays over it.
        c.unpin(1, true);
        assert_eq!(c.get(s, b"a").ok(), Some(Some(b"2".to_vec())));
        assert_eq!(c.get(s, b"b").ok(), Some(Some(b"1".to_vec())));
        // Batch 2 answered: its values stay, now as cached values; a
        // full young generation may drop them, as any cached value.
        c.unpin(2, true);
        assert_eq!(c.get(s, b"a").ok(), Some(Some(b"2".to_vec())));
        assert_eq!(c.inner().pinned.len(), 1, "only batch 3's write is pinned");
        // Batch 3 failed: nothing is trusted any more.
        c.unpin(3, false);
        assert!(c.get(s, b"d").is_err() && c.get(s, b"a").is_err());
    }

    #[test]
    fn nothing_read_during_a_commit_is_kept_and_a_failed_commit_empties_the_cache() {
        let c = ValueCache::default();
        let s = SpaceId(1);
        c.begin();
        let ticket = c.get(s, b"a").unwrap_err();
        c.keep(ticket, s, b"a".to_vec(), None);
        assert!(c.get(s, b"a").is_err(), "kept during a commit");
        c.end(Some(vec![((s, b"b".to_vec()), None)]));
        assert_eq!(
            c.get(s, b"b").ok(),
            Some(None),
            "a delete is cached as absent"
        );
        let ticket = c.get(s, b"a").unwrap_err();
        c.keep(ticket, s, b"a".to_vec(), Some(b"v".to_vec()));
        assert_eq!(c.get(s, b"a").ok(), Some(Some(b"v".to_vec())));
        c.begin();
        c.end(None);
        assert!(c.get(s, b"a").is_err() && c.get(s, b"b").is_err());
    }
}
