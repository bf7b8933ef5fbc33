//! Group commit on one connection, while this server holds the database
//! alone: every unconditional batch (the log's groups, the job store's
//! enqueue groups and dispatcher steps) joins a queue, and one task
//! commits what queued while the group before it was committed as one
//! statement, once that group is answered.
//! So writers that overlap share a commit and its WAL flush, as they share
//! an fsync on fjall, and a writer that only writes
//! ([`crate::storage::Backend::write`]) lets the next writer in at once.
//!
//! Batches commit in queue order and a group is sent only once the one
//! before it is answered, so a later batch is never committed without an
//! earlier one. A failed group fails every batch queued behind it too
//! (they were built on the state the failed one would have made), and if
//! any of them was a `write`'s, the next `write` is refused as well: its
//! writer may not have heard of the failure yet, and reads its state again
//! when refused.
//!
//! A group whose connection broke while it ran may still commit: its
//! session can outlive the socket. Before that failure is answered (and
//! so before anyone reads the state again), the task settles it: on
//! another connection it waits until that session is gone, terminating it
//! if it is still there. Until it is settled no later group is sent.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use deadpool_postgres::{ClientWrapper, Object, Pool};
use tokio_postgres::Statement;

use super::cache::{Known, ValueCache};
use super::{StorageError, pool_error, query_error, space_param};
use crate::storage::{SpaceId, Written};

/// Rows and key and value bytes a group holds at most: a longer queue is
/// committed in several groups (each batch whole). A job record can be
/// 16 MiB, and PostgreSQL takes no message or array over 1 GB.
const GROUP_ROWS: usize = 20_000;
const GROUP_BYTES: usize = 64 * 1024 * 1024;

/// How the writer of a batch waits for its commit.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Writer {
    /// It waits before it does anything else ([`crate::storage::Backend::commit`]).
    Waits,
    /// It goes on first ([`crate::storage::Backend::write`]): reads must
    /// see the batch at once, and after a failed group its next batch is
    /// refused, since it may have built it on what failed.
    GoesOn,
}

/// One statement, so one round trip: a statement is its own transaction
/// (all or nothing), committed with the server's synchronous commit
/// before the answer comes back.
pub(super) const COMMIT: &str = "WITH deleted AS (
         DELETE FROM pulse_kv WHERE (space, key) IN
         (SELECT * FROM unnest($1::int2[], $2::bytea[]))
     )
     INSERT INTO pulse_kv (space, key, value)
     SELECT * FROM unnest($3::int2[], $4::bytea[], $5::bytea[])
     ON CONFLICT (space, key) DO UPDATE SET value = excluded.value";

/// The refusal of a batch behind a failed one.
const BEHIND_A_FAILURE: &str = "not written: a commit queued before it failed, and it may depend on that one; read the state again and retry";

/// A batch waiting for its group: its last write per key, and where its
/// answer goes.
struct Queued {
    writes: Vec<Known>,
    answer: std::sync::mpsc::SyncSender<Result<(), StorageError>>,
    writer: Writer,
}

#[derive(Default)]
struct Queue {
    batches: Vec<Queued>,
    /// A group that held a batch of a writer that goes on failed (or one
    /// queued behind it), and no such batch has been refused since.
    failed: bool,
    /// The committing task runs.
    started: bool,
}

/// Batches queued and answered, for [`GroupCommit::drain`].
#[derive(Default)]
struct Progress {
    queued: u64,
    answered: u64,
    /// The last batch queued by a writer that goes on: scans and
    /// snapshots must see it. (A writer that waits sees its batch once it
    /// returns, and a read that overlaps a commit may see it or not.)
    last_gone_on: u64,
}

/// The queue, its committing task and its connection.
#[derive(Default)]
pub(super) struct GroupCommit {
    queue: Mutex<Queue>,
    more: tokio::sync::Notify,
    progress: Mutex<Progress>,
    answered: Condvar,
}

impl GroupCommit {
    /// Queues `writes` (the batch's last write per key, possibly none)
    /// behind every batch queued before; reads see them at once through
    /// the cache's pinned values. A batch of a writer that goes on is
    /// refused (nothing queued) if a group failed since the last refusal.
    ///
    /// # Errors
    /// That refusal.
    pub(super) fn queue(
        self: &Arc<Self>,
        handle: &tokio::runtime::Handle,
        pool: &Pool,
        cache: &Arc<ValueCache>,
        writes: Vec<Known>,
        writer: Writer,
    ) -> Result<Written, StorageError> {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.failed && writer == Writer::GoesOn {
                queue.failed = false;
                return Err(StorageError::new(BEHIND_A_FAILURE));
            }
            let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            progress.queued += 1;
            if writer == Writer::GoesOn {
                progress.last_gone_on = progress.queued;
            }
            // Under the queue's lock, so the cache takes values in the
            // order they commit.
            cache.pin(progress.queued, &writes);
            drop(progress);
            queue.batches.push(Queued {
                writes,
                answer,
                writer,
            });
            if !queue.started {
                queue.started = true;
                handle.spawn(Arc::clone(self).commit_groups(pool.clone(), Arc::clone(cache)));
            }
        }
        self.more.notify_one();
        Ok(Written::after(move |_patience| {
            answered.recv().unwrap_or_else(|_| {
                Err(StorageError::unavailable(
                    "the PostgreSQL commit task ended without an answer",
                ))
            })
        }))
    }

    /// Waits until every batch queued so far by a writer that goes on has
    /// been answered: a scan or a snapshot on another connection then sees
    /// it (or it failed).
    pub(super) fn drain(&self) {
        self.wait_for(|p| p.last_gone_on);
    }

    /// Waits until every batch queued so far has been answered: a commit
    /// on another connection then comes after them.
    pub(super) fn drain_all(&self) {
        self.wait_for(|p| p.queued);
    }

    /// Waits until the batches up to the number `target` names, as it is
    /// now, have been answered.
    fn wait_for(&self, target: impl Fn(&Progress) -> u64) {
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        let target = target(&p);
        while p.answered < target {
            p = self.answered.wait(p).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The committing task: for as long as the backend's runtime lives.
    async fn commit_groups(self: Arc<Self>, pool: Pool, cache: Arc<ValueCache>) {
        let mut running = Running {
            group: Arc::clone(&self),
            cache: Arc::clone(&cache),
            in_hand: 0,
        };
        let mut lane: Option<Lane> = None;
        // The session of a group whose outcome is not known yet.
        let mut unsettled: Option<Session> = None;
        loop {
            let group = loop {
                let group = self.take_group();
                if !group.is_empty() {
                    break group;
                }
                self.more.notified().await;
            };
            running.in_hand = group.len();
            let c = Columns::of(group.iter().flat_map(|b| &b.writes));
            let mut result = match &unsettled {
                Some(session) => settle(&pool, session).await,
                None => Ok(()),
            };
            if result.is_ok() {
                unsettled = None;
                if lane.as_ref().is_none_or(|l| l.client.is_closed()) {
                    result = open(&pool).await.map(|opened| lane = Some(opened));
                }
            }
            // On the timeline (`serve --timeline`): the statement's round
            // trip, its rows and the batches it holds, next to the job
            // store's and the log's commit spans that wait for it.
            let span = crate::timeline::span("pg_commit");
            let (rows, batches) = (
                (c.del_keys.len() + c.put_keys.len()) as u64,
                group.len() as u64,
            );
            // The error, and whether the group may have committed all the same.
            let result = match (result, &lane) {
                // A group of empty batches only waited its turn.
                (Ok(()), _) if c.is_empty() => Ok(()),
                (Ok(()), Some(l)) => l
                    .client
                    .execute(
                        &l.statement,
                        &[
                            &c.del_spaces,
                            &c.del_keys,
                            &c.put_spaces,
                            &c.put_keys,
                            &c.put_values,
                        ],
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| (query_error("commit", &e), !definitely_not_committed(&e))),
                (Err(e), _) => Err((e, false)),
                (Ok(()), None) => {
                    Err((StorageError::unavailable("no PostgreSQL connection"), false))
                }
            };
            let result = match result {
                Ok(()) => Ok(()),
                Err((e, unknown)) => {
                    // Its session may still commit it: settle that before
                    // the failure is heard of.
                    if let Some(l) = lane.take_if(|_| unknown) {
                        if let Err(why) = settle(&pool, &l.session).await {
                            tracing::error!(error = %why, "a PostgreSQL commit whose connection broke may still commit; no write goes out until its session is gone");
                            unsettled = Some(l.session);
                        }
                    }
                    Err(e)
                }
            };
            crate::timeline::end(span, &[("rows", rows), ("batches", batches)]);
            self.answer(&cache, group, &result);
            running.in_hand = 0;
        }
    }

    /// Answers the batches of a group that was just committed, or failed
    /// (and then every batch queued behind it too).
    fn answer(&self, cache: &ValueCache, group: Vec<Queued>, result: &Result<(), StorageError>) {
        // Under the queue's lock: a batch queued meanwhile must be either
        // behind the failure or pinned after the cache is emptied.
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut behind = Vec::new();
        if result.is_err() {
            behind = std::mem::take(&mut queue.batches);
            queue.failed |= group
                .iter()
                .chain(&behind)
                .any(|b| b.writer == Writer::GoesOn);
        }
        let answered = (group.len() + behind.len()) as u64;
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        // Batches are numbered in queue order, and these are the oldest
        // unanswered ones.
        cache.unpin(p.answered + answered, result.is_ok());
        p.answered += answered;
        self.answered.notify_all();
        drop((p, queue));
        for batch in group {
            let _ = batch.answer.send(result.clone());
        }
        for batch in behind {
            let _ = batch.answer.send(Err(StorageError::new(BEHIND_A_FAILURE)));
        }
    }

    /// The batches at the head of the queue, up to [`GROUP_ROWS`] rows
    /// and [`GROUP_BYTES`] bytes (at least one batch).
    fn take_group(&self) -> Vec<Queued> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let (mut rows, mut bytes) = (0, 0);
        let mut take = 0;
        for batch in &queue.batches {
            rows += batch.writes.len();
            bytes += batch
                .writes
                .iter()
                .map(|((_, k), v)| k.len() + v.as_ref().map_or(0, Vec::len))
                .sum::<usize>();
            if take > 0 && (rows > GROUP_ROWS || bytes > GROUP_BYTES) {
                break;
            }
            take += 1;
        }
        queue.batches.drain(..take).collect()
    }
}

/// The queue's connection, out of the pool, with the statement prepared
/// on it and the session it is.
struct Lane {
    client: ClientWrapper,
    statement: Statement,
    session: Session,
}

/// A PostgreSQL session: its backend's process ID and start time (a
/// process ID alone may be reused by a later session).
struct Session {
    pid: i32,
    started: String,
}

/// What a session-start query returns as text, to compare as it was read.
const SESSION: &str =
    "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()";

/// How long a session told to end may take to go.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

async fn open(pool: &Pool) -> Result<Lane, StorageError> {
    let conn = pool.get().await.map_err(|e| pool_error(&e))?;
    let statement = conn
        .prepare(COMMIT)
        .await
        .map_err(|e| query_error("commit", &e))?;
    let row = conn
        .query_one(SESSION, &[])
        .await
        .map_err(|e| query_error("commit", &e))?;
    Ok(Lane {
        client: Object::take(conn),
        statement,
        session: Session {
            pid: row.get(0),
            started: row.get(1),
        },
    })
}

/// Whether a failed commit statement certainly committed nothing: the
/// server answered it with an error (its transaction rolled back). A
/// broken connection, or a session ended under it, leaves it unknown.
fn definitely_not_committed(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        matches!(
            db.parsed_severity(),
            Some(tokio_postgres::error::Severity::Error)
        )
    })
}

/// Makes sure, on a connection of the pool, that `session` is gone,
/// terminating it if it is still there and waiting (up to
/// [`SETTLE_WAIT`]) for it to end, so whatever it was committing is
/// committed or not for good. If PostgreSQL cannot be reached it fails at
/// once: the next group tries again.
async fn settle(pool: &Pool, session: &Session) -> Result<(), StorageError> {
    let unknown = |why: String| {
        StorageError::unavailable(format!(
            "the outcome of a commit whose connection broke is not known yet ({why}); no write goes out until its session is gone"
        ))
    };
    let until = tokio::time::Instant::now() + SETTLE_WAIT;
    let conn = pool
        .get()
        .await
        .map_err(|e| unknown(pool_error(&e).to_string()))?;
    loop {
        let still_there = conn
            .query_opt(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND backend_start::text = $2",
                &[&session.pid, &session.started],
            )
            .await
            .map_err(|e| unknown(query_error("settling", &e).to_string()))?;
        if still_there.is_none() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= until {
            return Err(unknown(format!(
                "session {} still runs after being told to end",
                session.pid
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The committing task's guard: if the task ends (its runtime shut down,
/// or a panic), the batches in its hands and in the queue are answered
/// as failed (their writers hear it as a closed channel), the drains are
/// released, and the next batch starts a new task.
struct Running {
    group: Arc<GroupCommit>,
    cache: Arc<ValueCache>,
    /// Batches the task has taken and not answered.
    in_hand: usize,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut queue = self.group.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.started = false;
        let behind = std::mem::take(&mut queue.batches);
        // The batches in hand may have held a writer that goes on.
        queue.failed |= self.in_hand > 0 || behind.iter().any(|b| b.writer == Writer::GoesOn);
        let mut p = self
            .group
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let answered = (self.in_hand + behind.len()) as u64;
        self.cache.unpin(p.answered + answered, false);
        p.answered += answered;
        self.group.answered.notify_all();
        drop((p, queue));
        for batch in behind {
            let _ = batch.answer.send(Err(StorageError::unavailable(
                "the PostgreSQL commit task ended without an answer",
            )));
        }
    }
}

/// Writes as the commit statement's columns, the last write to each key
/// winning in order; what is left touches each key once, so the order
/// within the statement does not matter.
#[derive(Default)]
pub(super) struct Columns {
    pub(super) del_spaces: Vec<i16>,
    pub(super) del_keys: Vec<Vec<u8>>,
    pub(super) put_spaces: Vec<i16>,
    pub(super) put_keys: Vec<Vec<u8>>,
    pub(super) put_values: Vec<Vec<u8>>,
}

impl Columns {
    fn is_empty(&self) -> bool {
        self.del_keys.is_empty() && self.put_keys.is_empty()
    }

    pub(super) fn of<'a>(writes: impl Iterator<Item = &'a Known>) -> Columns {
        let mut last: HashMap<&(SpaceId, Vec<u8>), &Option<Vec<u8>>> = HashMap::new();
        for (key, value) in writes {
            last.insert(key, value);
        }
        let mut c = Columns::default();
        for ((space, key), value) in last {
            match value {
                Some(v) => {
                    c.put_spaces.push(space_param(*space));
                    c.put_keys.push(key.clone());
                    c.put_values.push(v.clone());
                }
                None => {
                    c.del_spaces.push(space_param(*space));
                    c.del_keys.push(key.clone());
                }
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_batches(
        group: &GroupCommit,
        sizes: &[(usize, usize)],
    ) -> Vec<std::sync::mpsc::Receiver<Result<(), StorageError>>> {
        let mut queue = group.queue.lock().unwrap();
        let mut answers = Vec::new();
        for (n, &(rows, value_bytes)) in sizes.iter().enumerate() {
            let writes = (0..rows)
                .map(|i| {
                    let key = format!("{n}/{i}").into_bytes();
                    ((SpaceId(0), key), Some(vec![0; value_bytes]))
                })
                .collect();
            let (answer, answered) = std::sync::mpsc::sync_channel(1);
            answers.push(answered);
            queue.batches.push(Queued {
                writes,
                answer,
                writer: Writer::GoesOn,
            });
        }
        answers
    }

    #[test]
    fn a_committing_task_that_ends_answers_what_waits_for_it() {
        let group = Arc::new(GroupCommit::default());
        let cache = Arc::new(ValueCache::default());
        let answers = queue_batches(&group, &[(1, 1), (1, 1), (1, 1)]);
        {
            let mut p = group.progress.lock().unwrap();
            p.queued = 4;
            p.last_gone_on = 4;
        }
        group.queue.lock().unwrap().started = true;
        // One batch in the task's hands (taken from the queue), three behind.
        drop(Running {
            group: Arc::clone(&group),
            cache,
            in_hand: 1,
        });
        for answered in answers {
            let err = answered.recv().unwrap().unwrap_err();
            assert!(err.is_unavailable(), "{err}");
        }
        let queue = group.queue.lock().unwrap();
        assert!(queue.batches.is_empty());
        assert!(!queue.started, "the next batch starts a new task");
        assert!(queue.failed, "the next write is refused");
        drop(queue);
        // The drains do not wait for ever.
        group.drain_all();
        assert_eq!(group.progress.lock().unwrap().answered, 4);
    }

    #[test]
    fn a_group_takes_whole_batches_within_its_rows_and_bytes() {
        let group = GroupCommit::default();
        // Rows: the third batch would pass 20,000.
        let _answers = queue_batches(&group, &[(9_000, 0), (9_000, 0), (9_000, 0), (0, 0)]);
        assert_eq!(group.take_group().len(), 2);
        // The rest (and an empty batch) together.
        assert_eq!(group.take_group().len(), 2);
        assert!(group.take_group().is_empty());
        // Bytes: 40 MiB each, so one per group; a batch over the cap
        // alone still goes, whole.
        let mib = 1024 * 1024;
        let _answers = queue_batches(&group, &[(1, 40 * mib), (1, 40 * mib), (1, 70 * mib)]);
        for _ in 0..3 {
            assert_eq!(group.take_group().len(), 1);
        }
        assert!(group.take_group().is_empty());
    }
}
