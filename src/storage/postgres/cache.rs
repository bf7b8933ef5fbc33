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

use std::collections::HashMap;
use std::sync::Mutex;

use crate::storage::SpaceId;

/// One current value: (space, key) and the value (`None`: absent).
pub(super) type Known = ((SpaceId, Vec<u8>), Option<Vec<u8>>);

/// Entries kept at most, and value bytes, before the cache is emptied.
const MAX_ENTRIES: usize = 200_000;
const MAX_BYTES: usize = 64 * 1024 * 1024;

#[derive(Default)]
struct Inner {
    /// `None`: known absent.
    values: HashMap<(SpaceId, Vec<u8>), Option<Vec<u8>>>,
    bytes: usize,
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
        let inner = self.inner();
        match inner.values.get(&(space, key.to_vec())) {
            Some(v) => Ok(v.clone()),
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

    /// A commit begins: reads from now on are not kept until it ends.
    pub(super) fn begin(&self) {
        let mut inner = self.inner();
        inner.in_flight += 1;
        inner.generation += 1;
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
                    insert(&mut inner, k, v);
                }
            }
            None => {
                inner.values.clear();
                inner.bytes = 0;
            }
        }
    }
}

fn insert(inner: &mut Inner, k: (SpaceId, Vec<u8>), v: Option<Vec<u8>>) {
    if inner.values.len() >= MAX_ENTRIES || inner.bytes >= MAX_BYTES {
        // Emptied rather than evicted one by one: simple, and a full
        // cache refills with what is read next.
        inner.values.clear();
        inner.bytes = 0;
    }
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
