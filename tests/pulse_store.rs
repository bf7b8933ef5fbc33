//! The durable job store on each storage backend (a fjall data dir, and a
//! real PostgreSQL database when configured): enqueue and idempotency,
//! dispatch order, delayed jobs and retries, listings, restart recovery.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

#[macro_use]
mod common;

use common::{Place, key};
use pulse_ledger::HandlerSchema;
use pulse_ledger::ledger::Ledger;
use pulse_ledger::pulse::{
    Backoff, JobError, JobId, JobRequest, JobState, JobStore, LeaseToken, PulseErrorCode,
    RetryPolicy,
};

fn open(place: &Place) -> (Ledger, JobStore) {
    let ledger = place.ledger("jobs.test/log");
    let store = JobStore::open(&ledger).unwrap();
    (ledger, store)
}

fn lease(n: u64) -> LeaseToken {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.to_be_bytes());
    LeaseToken(b)
}

const POLICY: RetryPolicy = RetryPolicy {
    backoff: Backoff {
        base_ms: 1_000,
        cap_ms: 10_000,
    },
    random: 0,
};

fn enqueue_is_idempotent_and_dispatch_is_priority_then_fifo(place: Place) {
    let (_ledger, store) = open(&place);
    let h = key("jobs-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("jobs-p").did);
    let req = |priority: u8, key: Option<&str>| JobRequest {
        priority,
        payload: vec![priority],
        idempotency_key: key.map(str::to_owned),
        ..Default::default()
    };
    let (a, existed) = store
        .enqueue(&h, &schema, &req(1, Some("order-1")), 1_000)
        .unwrap();
    assert!(!existed);
    let (again, existed) = store
        .enqueue(&h, &schema, &req(7, Some("order-1")), 1_001)
        .unwrap();
    assert!(existed);
    assert_eq!(
        again.id, a.id,
        "an existing idempotency key returns the existing job"
    );
    let other_handler = key("jobs-h2").did;
    let (b, existed) = store
        .enqueue(&other_handler, &schema, &req(1, Some("order-1")), 1_002)
        .unwrap();
    assert!(!existed && b.id != a.id, "keys are per handler");
    let batch = store.enqueue_batch(
        &[
            (h.clone(), schema.clone(), req(9, None)),
            (h.clone(), schema.clone(), req(5, Some("k"))),
            (h.clone(), schema.clone(), req(5, Some("k"))),
            (h.clone(), schema.clone(), req(10, None)),
            (h.clone(), schema.clone(), req(5, None)),
        ],
        1_003,
    );
    assert!(!batch[1].as_ref().unwrap().1 && batch[2].as_ref().unwrap().1);
    assert_eq!(
        batch[1].as_ref().unwrap().0.id,
        batch[2].as_ref().unwrap().0.id
    );
    match &batch[3] {
        Err(JobError::Rejected(e)) => assert_eq!(e.code(), PulseErrorCode::InvalidPriority),
        other => panic!("{other:?}"),
    }
    let mut order = Vec::new();
    let mut n = 0;
    while let Some(job) = store.dispatch_next(lease(n), 2_000).unwrap() {
        n += 1;
        order.push((job.priority, job.id));
        assert_eq!(job.state, JobState::Running);
    }
    let priorities: Vec<u8> = order.iter().map(|o| o.0).collect();
    assert_eq!(priorities, vec![9, 5, 5, 1, 1], "priority first");
    assert!(order[1].1 < order[2].1, "FIFO within a priority");
    assert_eq!(
        store.list(&JobState::Running, None, 100).unwrap().0.len(),
        5
    );
    assert!(
        store
            .list(&JobState::Queued, None, 100)
            .unwrap()
            .0
            .is_empty()
    );
}
on_every_backend!(enqueue_is_idempotent_and_dispatch_is_priority_then_fifo);

fn delayed_jobs_and_retries_wait_for_their_time(place: Place) {
    let (_ledger, store) = open(&place);
    let h = key("delay-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("delay-p").did);
    let (later, _) = store
        .enqueue(
            &h,
            &schema,
            &JobRequest {
                run_at_ms: 5_000,
                ..Default::default()
            },
            1_000,
        )
        .unwrap();
    assert!(
        store.dispatch_next(lease(1), 1_000).unwrap().is_none(),
        "not due"
    );
    assert_eq!(store.promote_due(4_999, 100).unwrap(), 0);
    assert_eq!(store.promote_due(5_000, 100).unwrap(), 1);
    let job = store.dispatch_next(lease(1), 5_000).unwrap().unwrap();
    assert_eq!(job.id, later.id);
    store
        .update(&job.id, 5_100, |j| {
            j.fail(&lease(1), "flaky".into(), true, None, POLICY, 5_100)
        })
        .unwrap();
    let j = store.get(&job.id).unwrap();
    assert_eq!(j.state, JobState::Retrying);
    let at = j.retry_at.unwrap();
    assert!(
        store.dispatch_next(lease(2), at).unwrap().is_none(),
        "retrying jobs are not ready"
    );
    assert_eq!(store.promote_due(at - 1, 100).unwrap(), 0);
    assert_eq!(store.promote_due(at, 100).unwrap(), 1);
    let again = store.dispatch_next(lease(2), at).unwrap().unwrap();
    assert_eq!((again.id, again.attempts.len()), (job.id, 2));
    // A stale lease changes nothing, on disk either.
    let err = store
        .update(&job.id, at + 1, |j| j.succeed(&lease(1), vec![], at + 1))
        .unwrap_err();
    assert!(matches!(err, JobError::Rejected(e) if e.code() == PulseErrorCode::StaleLease));
    store
        .update(&job.id, at + 2, |j| {
            j.succeed(&lease(2), b"ok".to_vec(), at + 2)
        })
        .unwrap();
    assert_eq!(
        store.get(&job.id).unwrap().result.as_deref(),
        Some(&b"ok"[..])
    );
    assert_eq!(
        store.list(&JobState::Succeeded, None, 10).unwrap().0.len(),
        1
    );
    assert!(store.running_until(u64::MAX, 10).unwrap().is_empty());
}
on_every_backend!(delayed_jobs_and_retries_wait_for_their_time);

/// An executor that never reports: attempts stay running until the
/// "server" stops.
struct Silent;

impl pulse_ledger::pulse::Executor for Silent {
    fn start(&mut self, _: pulse_ledger::pulse::AttemptSpec, _: pulse_ledger::pulse::ReportSender) {
    }
    fn cancel(&mut self, _: pulse_ledger::pulse::JobId, _: LeaseToken) {}
}

fn restart_requeues_running_attempts_as_interrupted_without_using_attempts(place: Place) {
    use pulse_ledger::pulse::{
        AttemptOutcome, DeadReason, DispatchConfig, Dispatcher, POISON_INTERRUPTIONS,
    };
    let h = key("restart-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("restart-p").did);
    let ids = {
        let (_ledger, store) = open(&place);
        let items: Vec<_> = (0..50)
            .map(|i| {
                (
                    h.clone(),
                    schema.clone(),
                    JobRequest {
                        payload: vec![i],
                        max_attempts: Some(2),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let ids: Vec<_> = store
            .enqueue_batch(&items, 1_000)
            .into_iter()
            .map(|r| r.unwrap().0.id)
            .collect();
        for n in 0..10 {
            store.dispatch_next(lease(n), 2_000).unwrap().unwrap();
        }
        ids
    };
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "IDs sort by creation");
    // Each cycle: the process restarts, recovers, runs the jobs again and
    // stops while they run. Restarts are not the jobs' fault: no attempt is
    // used and nothing counts as a crash, until a job has been cut short
    // POISON_INTERRUPTIONS times in a row.
    let mut now = 3_000;
    for cycle in 1..=POISON_INTERRUPTIONS {
        let (_ledger, store) = open(&place);
        let store = std::sync::Arc::new(store);
        let running = store.running_until(u64::MAX, 1000).unwrap();
        assert_eq!(running.len(), 10, "cycle {cycle}: the running index");
        let mut d = Dispatcher::new(
            std::sync::Arc::clone(&store),
            Silent,
            DispatchConfig {
                max_running: 10,
                ..DispatchConfig::default()
            },
            Box::new(|_| None),
            7,
        );
        assert_eq!(d.recover(now).unwrap(), 10);
        for job in &running {
            let j = store.get(&job.id).unwrap();
            let last = j.attempts.last().unwrap();
            assert_eq!(last.outcome, Some(AttemptOutcome::Interrupted));
            assert_eq!(j.consecutive_crashes, 0, "an interruption is not a crash");
            assert_eq!(j.attempts_used(), 0, "an interruption uses no attempt");
            if cycle == POISON_INTERRUPTIONS {
                assert_eq!(j.state, JobState::Dead(DeadReason::Poison));
            } else {
                assert_eq!((j.state, j.retry_at), (JobState::Retrying, Some(now)));
            }
        }
        // The same ten jobs are first in line again and start at once.
        now += 1_000;
        d.step(now).unwrap();
        let live = store.running_until(u64::MAX, 1000).unwrap();
        if cycle < POISON_INTERRUPTIONS {
            let mut a: Vec<_> = live.iter().map(|j| j.id).collect();
            let mut b: Vec<_> = running.iter().map(|j| j.id).collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "cycle {cycle}: the interrupted jobs run again first");
        }
        now += 1_000;
    }
    let (_ledger, store) = open(&place);
    assert_eq!(
        store
            .list(&JobState::Dead(DeadReason::Poison), None, 1000)
            .unwrap()
            .0
            .len(),
        10
    );
}
on_every_backend!(restart_requeues_running_attempts_as_interrupted_without_using_attempts);

fn finished_jobs_are_pruned_after_their_age_and_nothing_else(place: Place) {
    let (ledger, store) = open(&place);
    let h = key("prune-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("prune-p").did);
    let mk = |k: &str| JobRequest {
        idempotency_key: Some(k.into()),
        ..Default::default()
    };
    let (old, _) = store.enqueue(&h, &schema, &mk("old"), 1_000).unwrap();
    let (young, _) = store.enqueue(&h, &schema, &mk("young"), 1_000).unwrap();
    let (waiting, _) = store.enqueue(&h, &schema, &mk("waiting"), 1_000).unwrap();
    store
        .update(&old.id, 2_000, |j| {
            j.cancel(pulse_ledger::pulse::CancelReason::Requested, 2_000)
                .map(|_| ())
        })
        .unwrap();
    store
        .update(&young.id, 9_000, |j| {
            j.cancel(pulse_ledger::pulse::CancelReason::Requested, 9_000)
                .map(|_| ())
        })
        .unwrap();
    let size = ledger.head().size;
    assert_eq!(store.prune_finished(5_000, 100).unwrap(), 1);
    assert!(matches!(store.get(&old.id), Err(JobError::NotFound(_))));
    assert!(store.get(&young.id).is_ok() && store.get(&waiting.id).is_ok());
    assert_eq!(ledger.head().size, size, "the ledger is never pruned");
    // The pruned job's idempotency key is free again; the others still hold.
    assert!(!store.enqueue(&h, &schema, &mk("old"), 10_000).unwrap().1);
    assert!(store.enqueue(&h, &schema, &mk("young"), 10_000).unwrap().1);
}
on_every_backend!(finished_jobs_are_pruned_after_their_age_and_nothing_else);

/// A clock that steps back across a restart (to a millisecond that
/// already has jobs, and before it) gives new jobs new IDs: every stored
/// job is still there, unchanged, and IDs keep increasing.
fn job_ids_stay_unique_when_the_clock_steps_back_across_a_restart(place: Place) {
    let h = key("clock-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("clock-p").did);
    let req = |n: u8| JobRequest {
        payload: vec![n],
        ..Default::default()
    };
    let mut before = Vec::new();
    {
        let (_ledger, store) = open(&place);
        for n in 0..5 {
            before.push(store.enqueue(&h, &schema, &req(n), 10_000).unwrap().0);
        }
    }
    let (_ledger, store) = open(&place);
    let mut after = Vec::new();
    for (n, now) in [(10u8, 10_000), (11, 9_000), (12, 10_000), (13, 1)] {
        let job = store.enqueue(&h, &schema, &req(n), now).unwrap().0;
        // Due at once: an ID's time ahead of the clock delays nothing.
        assert_eq!(job.run_at, now);
        after.push(job);
    }
    let ready = store.ready(100).unwrap();
    assert!(
        after.iter().all(|j| ready.contains(&j.id)),
        "every new job is ready"
    );
    for job in &before {
        assert_eq!(
            &store.get(&job.id).unwrap(),
            job,
            "a stored job was changed"
        );
    }
    let newest = before.iter().map(|j| j.id).max().unwrap();
    let mut last = newest;
    for job in &after {
        assert!(
            job.id > last,
            "IDs go forward after a clock step: {:?}",
            job.id
        );
        last = job.id;
        assert_eq!(store.get(&job.id).unwrap().payload, job.payload);
    }
}
on_every_backend!(job_ids_stay_unique_when_the_clock_steps_back_across_a_restart);

/// Pruning reads finished jobs in ID order and stops at the limit: a pass
/// reads `limit` jobs however many finished jobs are kept, deletes those
/// finished before the cutoff, and the next pass goes on where it stopped.
fn pruning_is_bounded_per_pass_and_in_id_order(place: Place) {
    let (_ledger, store) = open(&place);
    let h = key("pb-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("pb-p").did);
    let mut ids = Vec::new();
    for n in 0..30u64 {
        let (job, _) = store
            .enqueue(&h, &schema, &JobRequest::default(), 1_000)
            .unwrap();
        // Finished in reverse order of creation.
        let at = 100_000 - n * 1_000;
        store
            .update(&job.id, at, |j| {
                j.cancel(pulse_ledger::pulse::CancelReason::Requested, at)
                    .map(|_| ())
            })
            .unwrap();
        ids.push((at, job.id));
    }
    assert_eq!(store.prune_finished(u64::MAX, 10).unwrap(), 10);
    for (i, (_, id)) in ids.iter().enumerate() {
        assert_eq!(store.get(id).is_ok(), i >= 10, "the 10 first created go");
    }
    // Only those finished before the cutoff, even with room for more: of
    // the 20 left, the 5 that finished first (created last).
    let cutoff = ids[25].0 + 1;
    assert_eq!(store.prune_finished(cutoff, 100).unwrap(), 5);
    for (i, (_, id)) in ids.iter().enumerate() {
        assert_eq!(store.get(id).is_ok(), (10..25).contains(&i), "job {i}");
    }
    assert_eq!(store.prune_finished(cutoff, 100).unwrap(), 0);
}
on_every_backend!(pruning_is_bounded_per_pass_and_in_id_order);

/// Jobs kept by pruning (created before the cutoff, finished after it)
/// never stop it: however many come first, passes of a small limit go on
/// past them to the jobs due behind, each pass reading at most its limit.
fn pruning_goes_on_past_the_jobs_it_keeps(place: Place) {
    let (_ledger, store) = open(&place);
    let h = key("pk-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("pk-p").did);
    let finish = |id: &JobId, at: u64| {
        store
            .update(id, at, |j| {
                j.cancel(pulse_ledger::pulse::CancelReason::Requested, at)
                    .map(|_| ())
            })
            .unwrap()
    };
    let mut kept = Vec::new();
    for _ in 0..25 {
        let (job, _) = store
            .enqueue(&h, &schema, &JobRequest::default(), 1_000)
            .unwrap();
        finish(&job.id, 90_000);
        kept.push(job.id);
    }
    let (due, _) = store
        .enqueue(&h, &schema, &JobRequest::default(), 2_000)
        .unwrap();
    finish(&due.id, 3_000);
    let cutoff = 50_000;
    // 25 kept entries come first: passes of 10 read 10, 10, then 5 and
    // the due job.
    assert_eq!(store.prune_finished(cutoff, 10).unwrap(), 0);
    assert_eq!(store.prune_finished(cutoff, 10).unwrap(), 0);
    assert!(store.get(&due.id).is_ok());
    assert_eq!(store.prune_finished(cutoff, 10).unwrap(), 1);
    assert!(store.get(&due.id).is_err());
    // Past the end, the next pass starts over and reads the first 10 kept
    // ones; at a later cutoff, the pass after it goes on with the 15
    // behind them, and the one after that starts over with the 10.
    assert_eq!(store.prune_finished(cutoff, 10).unwrap(), 0);
    assert_eq!(store.prune_finished(90_001, 100).unwrap(), 15);
    assert!(kept[..10].iter().all(|id| store.get(id).is_ok()));
    assert_eq!(store.prune_finished(90_001, 100).unwrap(), 10);
    assert!(kept.iter().all(|id| store.get(id).is_err()));
}
on_every_backend!(pruning_goes_on_past_the_jobs_it_keeps);

/// One call of `prune_due` deletes every job due however many passes it
/// takes, past the jobs kept, and stops at its bound on passes.
fn pruning_runs_passes_until_the_due_jobs_are_gone(place: Place) {
    let (_ledger, store) = open(&place);
    let h = key("pd-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("pd-p").did);
    let mut jobs = Vec::new();
    for n in 0..45u64 {
        let (job, _) = store
            .enqueue(&h, &schema, &JobRequest::default(), 1_000)
            .unwrap();
        // Every third one finishes after the cutoff: kept.
        let at = if n % 3 == 0 { 90_000 } else { 2_000 };
        store
            .update(&job.id, at, |j| {
                j.cancel(pulse_ledger::pulse::CancelReason::Requested, at)
                    .map(|_| ())
            })
            .unwrap();
        jobs.push((job.id, at));
    }
    // Passes of 10 entries: two of them delete 13 (of the 20 read, 7 kept).
    assert_eq!(store.prune_due(50_000, 10, 2).unwrap(), 13);
    // The rest in one call: 30 due in all.
    assert_eq!(store.prune_due(50_000, 10, 100).unwrap(), 17);
    for (id, at) in &jobs {
        assert_eq!(store.get(id).is_ok(), *at == 90_000);
    }
    assert_eq!(store.prune_due(50_000, 10, 100).unwrap(), 0);
}
on_every_backend!(pruning_runs_passes_until_the_due_jobs_are_gone);

/// A page of jobs stops at a byte budget, not only at a count: big jobs
/// come a few per page, and the page says more follow.
fn job_pages_are_capped_by_bytes(place: Place) {
    let (_ledger, store) = open(&place);
    let h = key("page-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("page-p").did);
    let big = JobRequest {
        payload: vec![7; pulse_ledger::pulse::MAX_PAYLOAD_BYTES],
        ..Default::default()
    };
    for _ in 0..10 {
        store.enqueue(&h, &schema, &big, 1_000).unwrap();
    }
    let per_page = pulse_ledger::pulse::LIST_PAGE_BYTES / pulse_ledger::pulse::MAX_PAYLOAD_BYTES;
    let mut seen = 0;
    let mut cursor = None;
    loop {
        let (page, more) = store
            .list(&JobState::Queued, cursor.as_ref(), 1000)
            .unwrap();
        assert!(
            !page.is_empty() && page.len() <= per_page,
            "{} jobs",
            page.len()
        );
        seen += page.len();
        cursor = page.last().map(|j| j.id);
        if !more {
            break;
        }
    }
    assert_eq!(seen, 10, "paging by bytes loses no job");
    // Small jobs fill a page by count.
    let (page, more) = store.list(&JobState::Queued, None, 3).unwrap();
    assert_eq!((page.len(), more), (3, true));
}
on_every_backend!(job_pages_are_capped_by_bytes);

/// An async executor (as the plugin proxy will be) driven through the
/// adapter: events flow back as reports; a stream that ends without a
/// result is a crash; a dispatch error (nothing reached) holds the job and
/// uses no attempt: its next dispatch is its first attempt.
fn async_executors_drive_jobs_through_the_adapter(place: Place) {
    use pulse_ledger::pulse::{
        AsyncExecutor, AsyncExecutorAdapter, AttemptSpec, DispatchConfig, Dispatcher, EventStream,
        ExecEvent, JobId, Progress, StepReport,
    };
    struct Scripted(std::sync::atomic::AtomicBool);
    #[tonic::async_trait]
    impl AsyncExecutor for Scripted {
        async fn dispatch(&self, a: AttemptSpec) -> Result<EventStream, String> {
            match a.payload[0] {
                2 if self.0.swap(true, std::sync::atomic::Ordering::SeqCst) => Ok(Box::pin(
                    tokio_stream::iter(vec![ExecEvent::Succeeded(b"reached".to_vec())]),
                )),
                0 => Ok(Box::pin(tokio_stream::iter(vec![
                    ExecEvent::Progress(Progress {
                        percent: 50,
                        message: "half".into(),
                        checkpoint: vec![],
                    }),
                    ExecEvent::Cost(3),
                    ExecEvent::Succeeded(b"done".to_vec()),
                ]))),
                1 => Ok(Box::pin(tokio_stream::iter(vec![ExecEvent::Heartbeat]))),
                _ => Err("plugin unreachable".into()),
            }
        }
        async fn cancel(&self, _: JobId, _: LeaseToken) {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (_ledger, store) = open(&place);
    let store = std::sync::Arc::new(store);
    let h = key("async-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("async-p").did);
    let ids: Vec<_> = (0u8..3)
        .map(|p| {
            store
                .enqueue(
                    &h,
                    &schema,
                    &JobRequest {
                        payload: vec![p],
                        max_attempts: Some(1),
                        ..Default::default()
                    },
                    1_000,
                )
                .unwrap()
                .0
                .id
        })
        .collect();
    // The adapter wakes this thread after each report it sends, so the
    // loop steps when there is something to apply, however long a step
    // (with its fsync) or a report takes. Six reports are due: progress,
    // cost and the result of job 0; a heartbeat from job 1, then a crash
    // (its stream ends without a result); a crash from job 2 (its
    // dispatch failed), then its result on the next dispatch. Each report
    // is applied by some step, so the bound is on steps: 4 dispatches and 7
    // reports need far fewer than 50.
    let adapter = AsyncExecutorAdapter::new(Scripted(Default::default()), runtime.handle().clone())
        .with_waker(std::thread::current());
    let mut d = Dispatcher::new(
        std::sync::Arc::clone(&store),
        adapter,
        DispatchConfig::default(),
        Box::new(|_| None),
        3,
    );
    let (mut now, mut steps) = (2_000, 0);
    let mut total = StepReport::default();
    // Only against a hang if a report never comes: no timing is assumed.
    let hang = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while total.applied < 7 {
        steps += 1;
        assert!(steps <= 50, "{steps} steps, still {total:?}");
        now += 100;
        let r = d.step(now).unwrap();
        total.dispatched += r.dispatched;
        total.applied += r.applied;
        total.stale += r.stale;
        total.timed_out += r.timed_out;
        if total.applied < 7 && r == StepReport::default() {
            let left = hang.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "no report for 60 s: {total:?}");
            std::thread::park_timeout(left);
        }
    }
    assert_eq!(
        (
            total.dispatched,
            total.applied,
            total.stale,
            total.timed_out
        ),
        (4, 7, 0, 0)
    );
    assert!(
        ids.iter()
            .all(|id| store.get(id).unwrap().state.is_terminal())
    );
    let done = store.get(&ids[0]).unwrap();
    assert_eq!(
        (
            done.state,
            done.result.as_deref(),
            done.total_cost,
            done.progress.percent
        ),
        (JobState::Succeeded, Some(&b"done"[..]), 3, 50)
    );
    let crashed = store.get(&ids[1]).unwrap();
    assert_eq!(
        crashed.attempts[0].outcome,
        Some(pulse_ledger::pulse::AttemptOutcome::Crashed),
        "{:?}",
        crashed.state
    );
    let reached = store.get(&ids[2]).unwrap();
    assert_eq!(
        (
            reached.state,
            reached.result.as_deref(),
            reached.attempts.len()
        ),
        (JobState::Succeeded, Some(&b"reached"[..]), 1)
    );
}
on_every_backend!(async_executors_drive_jobs_through_the_adapter);

/// Answers from a script: the route for each job, by payload byte.
struct Scripted(std::sync::Arc<std::sync::Mutex<Vec<pulse_ledger::pulse::Route>>>);

impl pulse_ledger::pulse::Router for Scripted {
    fn route(&mut self, job: &pulse_ledger::pulse::Job) -> pulse_ledger::pulse::Route {
        self.0.lock().unwrap()[usize::from(job.payload[0])].clone()
    }
}

on_every_backend!(
    held_jobs_are_released_when_they_resolve_and_refused_with_the_holds_reason_after_the_wait
);
fn held_jobs_are_released_when_they_resolve_and_refused_with_the_holds_reason_after_the_wait(
    place: Place,
) {
    use pulse_ledger::pulse::{DeadReason, DispatchConfig, Dispatcher, Refusal, Route};
    let (_ledger, store) = open(&place);
    let store = std::sync::Arc::new(store);
    let h = key("hold-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("hold-p").did);
    let ids: Vec<_> = (0u8..3)
        .map(|p| {
            store
                .enqueue(
                    &h,
                    &schema,
                    &JobRequest {
                        payload: vec![p],
                        ..Default::default()
                    },
                    1_000,
                )
                .unwrap()
                .0
                .id
        })
        .collect();
    let unreadable = Route::Hold(Refusal::LedgerUnreadable, "disk error".into());
    let not_connected = Route::Hold(Refusal::PluginNotConnected, "no session".into());
    let routes = std::sync::Arc::new(std::sync::Mutex::new(vec![
        unreadable.clone(),
        not_connected.clone(),
        unreadable,
    ]));
    let mut d = Dispatcher::new(
        std::sync::Arc::clone(&store),
        Silent,
        DispatchConfig {
            plugin_wait_ms: 5_000,
            ..DispatchConfig::default()
        },
        Box::new(|_| None),
        1,
    )
    .with_router(Box::new(Scripted(std::sync::Arc::clone(&routes))));
    d.step(2_000).unwrap();
    for id in &ids {
        assert_eq!(
            store.get(id).unwrap().state,
            JobState::Held(pulse_ledger::pulse::HoldReason::Plugin)
        );
    }
    // Job 2's ledger becomes readable: it goes, with no attempt used while held.
    routes.lock().unwrap()[2] = Route::Go(None);
    d.step(3_000).unwrap();
    let j2 = store.get(&ids[2]).unwrap();
    assert_eq!((j2.state, j2.attempts.len()), (JobState::Running, 1));
    // Past the wait the others end with their own hold's reason.
    d.step(7_001).unwrap();
    let j0 = store.get(&ids[0]).unwrap();
    let j1 = store.get(&ids[1]).unwrap();
    assert_eq!(
        (j0.state, j1.state),
        (
            JobState::Dead(DeadReason::Refused(Refusal::LedgerUnreadable)),
            JobState::Dead(DeadReason::Refused(Refusal::PluginNotConnected))
        )
    );
    let e0 = j0.last_error.unwrap();
    assert!(
        e0.starts_with("ledger_unreadable: held for 5000 ms") && e0.ends_with("disk error"),
        "{e0}"
    );
    assert!(j1.last_error.unwrap().starts_with("plugin_not_connected: "));
    assert!(j0.attempts.is_empty() && j1.attempts.is_empty());
}

fn job_logs_keep_the_last_lines_cut_long_ones_and_go_with_the_job(place: Place) {
    use pulse_ledger::pulse::{LogLine, MAX_LOG_LINE_BYTES, MAX_LOG_LINES};
    let (_ledger, store) = open(&place);
    let h = key("log-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("log-p").did);
    let mk = |p: u8| {
        store
            .enqueue(
                &h,
                &schema,
                &JobRequest {
                    payload: vec![p],
                    ..Default::default()
                },
                1_000,
            )
            .unwrap()
            .0
            .id
    };
    let (a, b) = (mk(0), mk(1));
    let line = |n: u64| LogLine {
        seq: 0,
        attempt: 1,
        at_ms: n,
        line: format!("line {n}"),
    };
    // Two calls, interleaved jobs: numbering continues per job.
    store
        .append_logs(
            (1..=600)
                .flat_map(|n| [(a, line(n)), (b, line(n))])
                .collect(),
        )
        .unwrap();
    let extra = MAX_LOG_LINES + 5 - 600;
    store
        .append_logs((601..=600 + extra).map(|n| (a, line(n))).collect())
        .unwrap();
    let kept = store.log(&a, 0, 10_000).unwrap();
    assert_eq!(kept.len() as u64, MAX_LOG_LINES);
    assert_eq!((kept[0].seq, kept[0].line.as_str()), (6, "line 6"));
    assert_eq!(kept.last().unwrap().seq, MAX_LOG_LINES + 5);
    assert!(kept.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let page = store.log(&a, 500, 3).unwrap();
    assert_eq!(
        page.iter().map(|l| l.seq).collect::<Vec<_>>(),
        vec![501, 502, 503]
    );
    assert_eq!(store.log(&b, 0, 10_000).unwrap().len(), 600);

    // A long line is cut at a character boundary and marked.
    let long = "é".repeat(MAX_LOG_LINE_BYTES);
    store
        .append_logs(vec![(
            b,
            LogLine {
                line: long,
                ..line(0)
            },
        )])
        .unwrap();
    let last = store.log(&b, 600, 10).unwrap();
    assert_eq!(last.len(), 1);
    assert!(last[0].line.len() <= MAX_LOG_LINE_BYTES);
    assert!(
        last[0].line.ends_with("…[cut]"),
        "{}",
        &last[0].line[4000..]
    );

    // Pruning a finished job removes its log; the other job's stays.
    store
        .update(&a, 2_000, |j| {
            j.cancel(pulse_ledger::pulse::CancelReason::Requested, 2_000)
                .map(|_| ())
        })
        .unwrap();
    assert_eq!(store.prune_finished(3_000, 100).unwrap(), 1);
    assert!(store.log(&a, 0, 10).unwrap().is_empty());
    assert_eq!(store.log(&b, 0, 10_000).unwrap().len(), 601);
}
on_every_backend!(job_logs_keep_the_last_lines_cut_long_ones_and_go_with_the_job);

/// One handler's listing skips the others' jobs, reads a bounded stretch
/// of the index per page (a page may be empty yet have a next cursor),
/// and, followed to the end, yields every one of its jobs once.
fn a_handlers_listing_pages_through_its_jobs_only(place: Place) {
    let (_ledger, store) = open(&place);
    let (mine, theirs) = (key("list-mine").did, key("list-theirs").did);
    let schema = HandlerSchema::new("h", "1.0.0", key("list-p").did);
    let req = JobRequest::default();
    // A stretch of the other handler's jobs longer than one page's scan,
    // with some of mine before and after it.
    let batch = |h: &pulse_ledger::Did, n: usize| -> Vec<_> {
        (0..n)
            .map(|_| (h.clone(), schema.clone(), req.clone()))
            .collect()
    };
    let mut items = batch(&mine, 3);
    items.extend(batch(&theirs, pulse_ledger::pulse::LIST_SCAN + 5));
    items.extend(batch(&mine, 4));
    for r in store.enqueue_batch(&items, 1_000) {
        r.unwrap();
    }
    let mut ids = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let (page, next) = store
            .list_for(&JobState::Queued, &mine, cursor.as_ref(), 2)
            .unwrap();
        assert!(page.len() <= 2);
        assert!(page.iter().all(|j| j.handler == mine));
        ids.extend(page.iter().map(|j| j.id));
        pages += 1;
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!((ids.len(), distinct.len()), (7, 7));
    // Pages of 2: the first two of mine; the third and the scan bound
    // (after 9,999 of theirs); the last 6 of theirs skipped and 2 of mine;
    // my last 2 and the end.
    assert_eq!(pages, 4);
}
on_every_backend!(a_handlers_listing_pages_through_its_jobs_only);

mod schedules {
    //! Recurring schedules on the store, driven by a simulated clock
    //! (issue 20, item 2): exactly once per occurrence across restarts,
    //! missed occurrences, overlap, pause, daylight-saving changes.

    use super::*;
    use pulse_ledger::Did;
    use pulse_ledger::pulse::{
        CancelReason, FireReport, Missed, Overlap, Recurrence, Schedule, ScheduleRequest,
        occurrence_key,
    };

    const T: u64 = 1_800_000_000_000;

    fn request(
        h: &Did,
        recurrence: Recurrence,
        overlap: Overlap,
        missed: Missed,
    ) -> ScheduleRequest {
        ScheduleRequest {
            handler: h.clone(),
            recurrence,
            job: JobRequest {
                payload: b"tick".to_vec(),
                priority: 3,
                ..Default::default()
            },
            overlap,
            missed,
        }
    }

    fn schema() -> HandlerSchema {
        HandlerSchema::new("ticker", "1.0.0", key("sched-p").did)
    }

    fn fire(store: &JobStore, now: u64) -> FireReport {
        store.fire_schedules(now, &mut |_| Ok(schema())).unwrap()
    }

    /// The jobs of `h`, oldest first.
    fn jobs_of(store: &JobStore, h: &Did) -> Vec<pulse_ledger::pulse::Job> {
        let filter = pulse_ledger::pulse::JobFilter {
            handler: Some(h.clone()),
            oldest_first: true,
            ..Default::default()
        };
        store.list_jobs(&filter, None, 1000).unwrap().0
    }

    /// A step fires at most FIRE_PER_STEP schedules; the rest fire at the
    /// next step, each once.
    fn a_step_fires_at_most_its_bound_and_the_next_step_the_rest(place: Place) {
        let h = key("sched-bound-h").did;
        let (_ledger, store) = open(&place);
        let total = pulse_ledger::pulse::FIRE_PER_STEP + 44;
        for _ in 0..total {
            store
                .create_schedule(
                    request(
                        &h,
                        Recurrence::every(10_000).unwrap(),
                        Overlap::Allow,
                        Missed::RunOnce,
                    ),
                    &schema(),
                    T,
                )
                .unwrap();
        }
        assert_eq!(
            fire(&store, T + 10_050).fired,
            pulse_ledger::pulse::FIRE_PER_STEP as u64
        );
        assert_eq!(fire(&store, T + 10_050).fired, 44);
        assert_eq!(fire(&store, T + 10_050).fired, 0);
        assert_eq!(jobs_of(&store, &h).len(), total);
    }
    on_every_backend!(a_step_fires_at_most_its_bound_and_the_next_step_the_rest);

    fn each_occurrence_enqueues_exactly_once_across_restarts(place: Place) {
        let h = key("sched-h").did;
        let id = {
            let (_ledger, store) = open(&place);
            let s = store
                .create_schedule(
                    request(
                        &h,
                        Recurrence::every(10_000).unwrap(),
                        Overlap::Allow,
                        Missed::RunOnce,
                    ),
                    &schema(),
                    T,
                )
                .unwrap();
            assert_eq!(s.next_at, Some(T + 10_000));
            assert_eq!(fire(&store, T + 9_999), FireReport::default());
            let r = fire(&store, T + 10_050);
            assert_eq!((r.fired, r.missed), (1, 0));
            // The same instant again, and a little later: nothing more.
            assert_eq!(fire(&store, T + 10_050).fired, 0);
            assert_eq!(fire(&store, T + 10_900).fired, 0);
            let jobs = jobs_of(&store, &h);
            assert_eq!(jobs.len(), 1);
            assert_eq!(
                jobs[0].idempotency_key,
                Some(occurrence_key(&s.id, T + 10_000))
            );
            assert_eq!(
                (jobs[0].payload.as_slice(), jobs[0].priority),
                (&b"tick"[..], 3)
            );
            s.id
        };
        // A restart: the schedule and its next occurrence are where they were.
        let (_ledger, store) = open(&place);
        assert_eq!(store.next_schedule_at(), Some(T + 10_000 + 10_000));
        assert_eq!(fire(&store, T + 10_950).fired, 0);
        assert_eq!(fire(&store, T + 20_001).fired, 1);
        let s = store.schedule(&id).unwrap();
        assert_eq!(
            (s.fired, s.missed_count, s.next_at),
            (2, 0, Some(T + 30_000))
        );
        assert_eq!(jobs_of(&store, &h).len(), 2);
    }
    on_every_backend!(each_occurrence_enqueues_exactly_once_across_restarts);

    fn occurrences_missed_while_stopped_fire_once_or_not_at_all(place: Place) {
        let (h, quiet) = (key("sched-missed-h").did, key("sched-quiet-h").did);
        let (once, skip) = {
            let (_ledger, store) = open(&place);
            let every = |ms| Recurrence::every(ms).unwrap();
            let once = store
                .create_schedule(
                    request(&h, every(10_000), Overlap::Allow, Missed::RunOnce),
                    &schema(),
                    T,
                )
                .unwrap();
            let skip = store
                .create_schedule(
                    request(&quiet, every(100_000), Overlap::Allow, Missed::Skip),
                    &schema(),
                    T,
                )
                .unwrap();
            assert_eq!(fire(&store, T + 10_000).fired, 1);
            assert_eq!(fire(&store, T + 100_000).fired, 2);
            // T+20s … T+90s had no step: missed.
            assert_eq!(store.schedule(&once.id).unwrap().missed_count, 8);
            (once.id, skip.id)
        };
        // Stopped from T+100s to T+395s.
        let (_ledger, store) = open(&place);
        let r = fire(&store, T + 395_000);
        assert_eq!(
            r.fired, 1,
            "one catch-up run, for the latest occurrence only"
        );
        let s = store.schedule(&once).unwrap();
        // T+110s … T+380s passed unfired; T+390s ran, 5 s late.
        assert_eq!((s.missed_count, s.next_at), (8 + 28, Some(T + 400_000)));
        assert_eq!(s.last_fired.unwrap().0, T + 390_000);
        // T+200s and T+300s passed; the latter is 95 s late: not run.
        let q = store.schedule(&skip).unwrap();
        assert_eq!(
            (q.fired, q.missed_count, q.next_at),
            (1, 2, Some(T + 400_000))
        );
        assert_eq!(
            jobs_of(&store, &quiet).len(),
            1,
            "nothing late for Missed::Skip"
        );
        // On time again: both fire.
        assert_eq!(fire(&store, T + 400_010).fired, 2);
    }
    on_every_backend!(occurrences_missed_while_stopped_fire_once_or_not_at_all);

    fn overlap_skip_waits_for_the_previous_job_and_pause_fires_nothing(place: Place) {
        let (_ledger, store) = open(&place);
        let h = key("sched-overlap-h").did;
        let s = store
            .create_schedule(
                request(
                    &h,
                    Recurrence::every(10_000).unwrap(),
                    Overlap::Skip,
                    Missed::RunOnce,
                ),
                &schema(),
                T,
            )
            .unwrap();
        assert_eq!(fire(&store, T + 10_000).fired, 1);
        // The first job has not run: the next occurrence is skipped.
        let r = fire(&store, T + 20_000);
        assert_eq!((r.fired, r.skipped), (0, 1));
        let first = jobs_of(&store, &h)[0].id;
        store
            .update(&first, T + 25_000, |j| {
                j.cancel(CancelReason::Requested, T + 25_000).map(|_| ())
            })
            .unwrap();
        assert_eq!(
            fire(&store, T + 30_000).fired,
            1,
            "the previous job finished"
        );
        // Paused: nothing fires, nothing is missed; resumed: from the next.
        let paused = store.set_schedule_paused(&s.id, true, T + 31_000).unwrap();
        assert!(paused.paused);
        assert_eq!(store.next_schedule_at(), None);
        assert_eq!(fire(&store, T + 60_000), FireReport::default());
        let resumed = store.set_schedule_paused(&s.id, false, T + 65_000).unwrap();
        assert_eq!(resumed.next_at, Some(T + 70_000));
        assert_eq!(resumed.missed_count, 0);
        let all: Vec<Schedule> = store.schedules(Some(&h), None, 10).unwrap().0;
        assert_eq!(all.len(), 1);
        // Deleted: gone, its jobs stay.
        store.delete_schedule(&s.id).unwrap();
        assert!(matches!(
            store.schedule(&s.id),
            Err(JobError::ScheduleNotFound(_))
        ));
        assert_eq!(fire(&store, T + 70_000), FireReport::default());
        assert_eq!(jobs_of(&store, &h).len(), 2);
    }
    on_every_backend!(overlap_skip_waits_for_the_previous_job_and_pause_fires_nothing);

    /// A daily 01:30 in New York across both daylight-saving changes: the
    /// repeated 01:30 fires once, the missing 02:30 fires at 03:00.
    fn a_time_zone_schedule_fires_once_per_local_day_across_dst_changes(place: Place) {
        let (_ledger, store) = open(&place);
        let h = key("sched-dst-h").did;
        let ms = |text: &str| -> u64 {
            humantime::parse_rfc3339(text)
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        let ny = Some("America/New_York");
        let fall = Recurrence::cron("30 1 * * *", ny).unwrap();
        let s = store
            .create_schedule(
                request(&h, fall, Overlap::Allow, Missed::RunOnce),
                &schema(),
                ms("2026-10-31T12:00:00Z"),
            )
            .unwrap();
        assert_eq!(s.next_at, Some(ms("2026-11-01T05:30:00Z")));
        // Step every 15 minutes through the night of the change.
        let mut fired = Vec::new();
        let mut now = ms("2026-11-01T04:00:00Z");
        while now <= ms("2026-11-02T07:00:00Z") {
            if fire(&store, now).fired > 0 {
                fired.push(now);
            }
            now += 15 * 60_000;
        }
        assert_eq!(
            fired,
            [ms("2026-11-01T05:30:00Z"), ms("2026-11-02T06:30:00Z")],
            "01:30 EDT once, then 01:30 EST the next day"
        );
        let spring = Recurrence::cron("30 2 * * *", ny).unwrap();
        let s = store
            .create_schedule(
                request(
                    &key("sched-dst-spring").did,
                    spring,
                    Overlap::Allow,
                    Missed::RunOnce,
                ),
                &schema(),
                ms("2026-03-07T12:00:00Z"),
            )
            .unwrap();
        assert_eq!(s.next_at, Some(ms("2026-03-08T07:00:00Z")), "03:00 EDT");
        assert_eq!(fire(&store, ms("2026-03-08T07:00:00Z")).fired, 1);
        let s = store.schedule(&s.id).unwrap();
        assert_eq!(s.next_at, Some(ms("2026-03-09T06:30:00Z")));
    }
    on_every_backend!(a_time_zone_schedule_fires_once_per_local_day_across_dst_changes);

    /// An occurrence whose handler takes no jobs enqueues nothing and says
    /// why; the schedule goes on. Bad schedules are refused with the rule.
    fn a_revoked_handler_and_bad_schedules_are_reported_with_the_rule(place: Place) {
        let (_ledger, store) = open(&place);
        let h = key("sched-revoked-h").did;
        let s = store
            .create_schedule(
                request(
                    &h,
                    Recurrence::every(10_000).unwrap(),
                    Overlap::Allow,
                    Missed::RunOnce,
                ),
                &schema(),
                T,
            )
            .unwrap();
        let r = store
            .fire_schedules(T + 10_000, &mut |_| Err("handler_revoked: gone".into()))
            .unwrap();
        assert_eq!((r.fired, r.failed), (0, 1));
        let s = store.schedule(&s.id).unwrap();
        assert_eq!(s.last_error.as_deref(), Some("handler_revoked: gone"));
        assert_eq!(s.next_at, Some(T + 20_000));
        assert_eq!(fire(&store, T + 20_000).fired, 1);
        assert_eq!(store.schedule(&s.id).unwrap().last_error, None);
        // A job request the handler's schema refuses, and one that sets
        // what the schedule sets.
        let mut bad = request(
            &h,
            Recurrence::every(10_000).unwrap(),
            Overlap::Allow,
            Missed::RunOnce,
        );
        bad.job.priority = 12;
        let e = store.create_schedule(bad, &schema(), T).unwrap_err();
        assert!(
            matches!(&e, JobError::Rejected(p) if p.code() == PulseErrorCode::InvalidPriority),
            "{e}"
        );
        let mut keyed = request(
            &h,
            Recurrence::every(10_000).unwrap(),
            Overlap::Allow,
            Missed::RunOnce,
        );
        keyed.job.idempotency_key = Some("mine".into());
        let e = store.create_schedule(keyed, &schema(), T).unwrap_err();
        assert!(
            matches!(&e, JobError::Rejected(p) if p.code() == PulseErrorCode::InvalidSchedule),
            "{e}"
        );
    }
    on_every_backend!(a_revoked_handler_and_bad_schedules_are_reported_with_the_rule);
}
