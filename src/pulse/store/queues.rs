//! The queues of live jobs, in memory only (spec/pulse.md, "Queues"):
//! rebuilt at open from the live jobs' records.

use std::collections::HashMap;

use super::{Jk, JobError, Space, Stored, corrupt, id_keyed, record_from_slice, storage};

/// The in-memory queue indexes, by keyspace tag, and the ready index by
/// handler (for fair dispatch between handlers).
#[derive(Default)]
pub(in crate::pulse) struct Queues {
    pub(super) sets: [std::collections::BTreeSet<Vec<u8>>; 5],
    pub(super) ready_by_handler: HashMap<[u8; 32], std::collections::BTreeSet<Vec<u8>>>,
    /// Where each queued job is, by ID: to move a job another node
    /// changed, whose old place only this node's queues know.
    pub(super) placed: HashMap<[u8; 16], (u8, Vec<u8>, [u8; 32])>,
}

/// The job ID at the end of every queue key.
pub(super) fn id_of_queue_key(key: &[u8]) -> Option<[u8; 16]> {
    key.len()
        .checked_sub(16)
        .and_then(|start| key[start..].try_into().ok())
}

/// A queue index change staged with a batch: (tag, key, inserted, the
/// job's handler key).
pub(in crate::pulse) type Move = (u8, Vec<u8>, bool, [u8; 32]);

fn is_queue(tag: u8) -> bool {
    (Jk::Ready as u8..=Jk::Held as u8).contains(&tag)
}

impl Queues {
    pub(in crate::pulse) fn apply(&mut self, moves: Vec<Move>) {
        for (tag, key, inserted, handler) in moves {
            if tag == Jk::Ready as u8 {
                self.index_ready(handler, key.clone(), inserted);
            }
            if is_queue(tag) {
                if let Some(id) = id_of_queue_key(&key) {
                    if inserted {
                        self.placed.insert(id, (tag, key.clone(), handler));
                    } else if self
                        .placed
                        .get(&id)
                        .is_some_and(|(t, k, _)| *t == tag && *k == key)
                    {
                        self.placed.remove(&id);
                    }
                }
                let set = &mut self.sets[tag as usize];
                if inserted {
                    set.insert(key);
                } else {
                    set.remove(&key);
                }
            }
        }
    }

    fn index_ready(&mut self, handler: [u8; 32], key: Vec<u8>, inserted: bool) {
        if inserted {
            self.ready_by_handler
                .entry(handler)
                .or_default()
                .insert(key);
        } else if let Some(set) = self.ready_by_handler.get_mut(&handler) {
            set.remove(&key);
            if set.is_empty() {
                self.ready_by_handler.remove(&handler);
            }
        }
    }

    pub(super) fn set(&self, k: Jk) -> &std::collections::BTreeSet<Vec<u8>> {
        &self.sets[k as usize]
    }

    /// The moves that put job `id` (of `handler`) at `new` from wherever
    /// these queues have it.
    pub(super) fn moves_to(
        &self,
        id: &[u8; 16],
        new: Option<(u8, Vec<u8>)>,
        handler: [u8; 32],
    ) -> Vec<Move> {
        let old = self.placed.get(id).cloned();
        if old.as_ref().map(|(t, k, _)| (*t, k.clone())) == new {
            return Vec::new();
        }
        let mut moves = Vec::new();
        if let Some((tag, key, was)) = old {
            moves.push((tag, key, false, was));
        }
        if let Some((tag, key)) = new {
            moves.push((tag, key, true, handler));
        }
        moves
    }
}

/// The queues, rebuilt from what is stored: every live job's record
/// (the `jobs` space holds only those), put where it says (the placement
/// written with it). Finished jobs are never read.
pub(super) fn load_queues(ks: &[Space]) -> Result<Queues, JobError> {
    let mut queues = Queues::default();
    let mut moves: Vec<Move> = Vec::new();
    for kv in ks[Jk::Jobs as usize].iter() {
        let (key, record) = kv.map_err(storage)?;
        let id = id_keyed(&key)?;
        let stored: Stored =
            record_from_slice(&record).map_err(|e| corrupt(&format!("live job {id}: {e}")))?;
        if let Some((tag, key)) = stored.placement {
            if !is_queue(tag) {
                return Err(corrupt(&format!("job {id} placed in space {tag}")));
            }
            moves.push((tag, key, true, *stored.job.handler.public_key()));
        }
        if moves.len() >= 256 {
            queues.apply(std::mem::take(&mut moves));
        }
    }
    queues.apply(moves);
    Ok(queues)
}
