//! Who waits for which job to change: `WatchJob` streams register here and
//! are woken after each commit that changed their job, instead of polling
//! the store (a 200 ms poll made `job wait` return ~180 ms after the
//! result was stored). Each watcher has its own [`Notify`], so a change
//! between its read and its wait is never missed (the permit is kept).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::JobId;

/// Each job's watchers: (token, its wake-up).
type Waiting = HashMap<JobId, Vec<(u64, Arc<Notify>)>>;

/// The watchers of each job.
#[derive(Debug, Default)]
pub struct JobChanges {
    waiting: Mutex<Waiting>,
    watchers: AtomicUsize,
    next: std::sync::atomic::AtomicU64,
}

impl JobChanges {
    /// Starts watching `id`: the returned watch is woken after each change
    /// committed from now on, until it is dropped.
    pub fn watch(self: &Arc<Self>, id: JobId) -> ChangeWatch {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.lock()
            .entry(id)
            .or_default()
            .push((token, Arc::clone(&notify)));
        self.watchers.fetch_add(1, Ordering::Release);
        ChangeWatch {
            changes: Arc::clone(self),
            id,
            token,
            notify,
        }
    }

    /// Wakes the watchers of each job in `ids` (after their commit).
    pub fn changed(&self, ids: impl IntoIterator<Item = JobId>) {
        // No watcher, no lock: the commit path pays one atomic load.
        if self.watchers.load(Ordering::Acquire) == 0 {
            return;
        }
        let waiting = self.lock();
        for id in ids {
            for (_, n) in waiting.get(&id).into_iter().flatten() {
                n.notify_one();
            }
        }
    }

    /// Wakes every watcher: changes may have been missed (another node's,
    /// while its notices could not be heard), and each reads its job again.
    pub fn changed_all(&self) {
        if self.watchers.load(Ordering::Acquire) == 0 {
            return;
        }
        for (_, n) in self.lock().values().flatten() {
            n.notify_one();
        }
    }

    /// Watches open now.
    pub fn len(&self) -> usize {
        self.watchers.load(Ordering::Acquire)
    }

    /// Whether no watch is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One watcher of one job; unregisters when dropped.
#[derive(Debug)]
pub struct ChangeWatch {
    changes: Arc<JobChanges>,
    id: JobId,
    token: u64,
    notify: Arc<Notify>,
}

impl ChangeWatch {
    /// Resolves after the next change to the job (at once if one was
    /// committed since the last call).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for ChangeWatch {
    fn drop(&mut self) {
        let mut waiting = self.changes.lock();
        if let Some(list) = waiting.get_mut(&self.id) {
            list.retain(|(t, _)| *t != self.token);
            if list.is_empty() {
                waiting.remove(&self.id);
            }
        }
        self.changes.watchers.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_wakes_the_job_s_watchers_and_is_not_lost_before_the_wait() {
        let changes = Arc::new(JobChanges::default());
        let (a, b) = (JobId([1; 16]), JobId([2; 16]));
        let wa = changes.watch(a);
        let wb = changes.watch(b);
        assert_eq!(changes.len(), 2);
        // Committed before anyone waits: the permit is kept.
        changes.changed([a]);
        tokio::time::timeout(std::time::Duration::from_secs(1), wa.changed())
            .await
            .expect("the watcher of the changed job wakes");
        // The other job's watcher is not woken.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), wb.changed())
                .await
                .is_err()
        );
        drop(wa);
        drop(wb);
        assert!(changes.is_empty());
        assert!(
            changes.lock().is_empty(),
            "dropped watches leave nothing behind"
        );
    }
}
