//! Being the last owner of what fjall lets go of, so that freeing it
//! happens on a thread of ours, outside fjall's locks.
//!
//! Why: fjall frees a flushed memtable when the last version that refers
//! to it leaves the keyspace's version history, and that happens under
//! the history's write lock (at the next memtable rotation). Every write
//! to the keyspace needs that lock's read side, so while tens of thousands
//! of entries are freed (~20 ms for the `jobs` space under load) every
//! writer waits, and with them each enqueue and dispatch: the periodic
//! stall in the tail of enqueue → start (BENCHMARKS.md, issue 22). Holding
//! one more reference to each memtable makes fjall's drop a decrement; the
//! backend's upkeep thread drops its reference once it is the only one
//! left.

use std::sync::Arc;

/// Per space, the things held so that their last drop is ours.
#[derive(Debug)]
pub(crate) struct LastOwner<T> {
    held: Vec<(usize, Arc<T>)>,
}

impl<T> Default for LastOwner<T> {
    fn default() -> LastOwner<T> {
        LastOwner { held: Vec::new() }
    }
}

impl<T> LastOwner<T> {
    /// Holds `thing` of `space` too, unless it is held already.
    pub(crate) fn hold(&mut self, space: usize, thing: Arc<T>) {
        let known = self
            .held
            .iter()
            .any(|(s, t)| *s == space && Arc::ptr_eq(t, &thing));
        if !known {
            self.held.push((space, thing));
        }
    }

    /// Drops, here, everything nobody else holds any more; how many.
    pub(crate) fn release_unshared(&mut self) -> usize {
        let before = self.held.len();
        // A count of 1 cannot rise again: nobody else can reach it.
        self.held.retain(|(_, t)| Arc::strong_count(t) > 1);
        before - self.held.len()
    }

    /// Things held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its drops, and on which thread the last one was.
    struct Tracked(Arc<std::sync::Mutex<Vec<std::thread::ThreadId>>>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.lock().unwrap().push(std::thread::current().id());
        }
    }

    #[test]
    fn what_others_let_go_of_is_dropped_here_and_the_rest_kept() {
        let drops = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut owner = LastOwner::default();
        let a = Arc::new(Tracked(Arc::clone(&drops)));
        let b = Arc::new(Tracked(Arc::clone(&drops)));
        owner.hold(0, Arc::clone(&a));
        owner.hold(0, Arc::clone(&a));
        owner.hold(1, Arc::clone(&b));
        assert_eq!(owner.len(), 2, "one hold per thing");
        assert_eq!(owner.release_unshared(), 0);
        // The other owner lets go on another thread: that is a decrement,
        // and the drop comes here.
        std::thread::spawn(move || drop(a)).join().unwrap();
        assert!(drops.lock().unwrap().is_empty());
        assert_eq!(owner.release_unshared(), 1);
        assert_eq!(*drops.lock().unwrap(), [std::thread::current().id()]);
        assert_eq!(owner.len(), 1);
        drop(b);
        assert_eq!(owner.release_unshared(), 1);
        assert_eq!(drops.lock().unwrap().len(), 2);
        assert_eq!(owner.len(), 0);
    }
}
