//! The durable job store on a real fjall data dir: enqueue and idempotency,
//! dispatch order, delayed jobs and retries, listings, restart recovery.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

mod common;

use common::{key, tempdir};
use pulse_ledger::HandlerSchema;
use pulse_ledger::ledger::{Ledger, LedgerConfig};
use pulse_ledger::pulse::{
    Backoff, JobError, JobRequest, JobState, JobStore, LeaseToken, PulseErrorCode, RetryPolicy,
};

fn open(dir: &std::path::Path) -> (Ledger, JobStore) {
    let ledger = Ledger::open(LedgerConfig::new(dir, "jobs.test/log")).unwrap();
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

#[test]
fn enqueue_is_idempotent_and_dispatch_is_priority_then_fifo() {
    let dir = tempdir("jobs-order");
    let (_ledger, store) = open(&dir);
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
    assert_eq!(store.list(&JobState::Running, None, 100).unwrap().len(), 5);
    assert!(store.list(&JobState::Queued, None, 100).unwrap().is_empty());
}

#[test]
fn delayed_jobs_and_retries_wait_for_their_time() {
    let dir = tempdir("jobs-delay");
    let (_ledger, store) = open(&dir);
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
    assert_eq!(store.list(&JobState::Succeeded, None, 10).unwrap().len(), 1);
    assert!(store.running_until(u64::MAX, 10).unwrap().is_empty());
}

#[test]
fn restart_finds_running_attempts_and_requeues_them_as_crashes() {
    let dir = tempdir("jobs-restart");
    let h = key("restart-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("restart-p").did);
    let ids = {
        let (_ledger, store) = open(&dir);
        let items: Vec<_> = (0..50)
            .map(|i| {
                (
                    h.clone(),
                    schema.clone(),
                    JobRequest {
                        payload: vec![i],
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
    let (_ledger, store) = open(&dir);
    assert_eq!(store.list(&JobState::Queued, None, 1000).unwrap().len(), 40);
    let running = store.running_until(u64::MAX, 1000).unwrap();
    assert_eq!(
        running.len(),
        10,
        "the running index names exactly the interrupted attempts"
    );
    for job in running {
        let live = job.live_attempt().unwrap().lease;
        store
            .update(&job.id, 3_000, |j| j.crash(&live, POLICY, 3_000))
            .unwrap();
        let j = store.get(&job.id).unwrap();
        assert_eq!((j.state, j.consecutive_crashes), (JobState::Retrying, 1));
    }
    assert_eq!(store.promote_due(1_000_000, 1000).unwrap(), 10);
    assert_eq!(store.list(&JobState::Queued, None, 1000).unwrap().len(), 50);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "IDs sort by creation");
}

#[test]
fn finished_jobs_are_pruned_after_their_age_and_nothing_else() {
    let dir = tempdir("jobs-prune");
    let (ledger, store) = open(&dir);
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

/// An async executor (as the plugin proxy will be) driven through the
/// adapter: events flow back as reports; a stream that ends without a
/// result is a crash; a dispatch error is a crash.
#[test]
fn async_executors_drive_jobs_through_the_adapter() {
    use pulse_ledger::pulse::{
        AsyncExecutor, AsyncExecutorAdapter, AttemptSpec, DispatchConfig, Dispatcher, EventStream,
        ExecEvent, JobId, Progress,
    };
    struct Scripted;
    #[tonic::async_trait]
    impl AsyncExecutor for Scripted {
        async fn dispatch(&self, a: AttemptSpec) -> Result<EventStream, String> {
            match a.payload[0] {
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
    let dir = tempdir("jobs-async");
    let (_ledger, store) = open(&dir);
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
    let adapter = AsyncExecutorAdapter::new(Scripted, runtime.handle().clone());
    let mut d = Dispatcher::new(
        std::sync::Arc::clone(&store),
        adapter,
        DispatchConfig::default(),
        Box::new(|_| None),
        3,
    );
    let mut now = 2_000;
    for _ in 0..50 {
        now += 100;
        d.step(now).unwrap();
        if ids
            .iter()
            .all(|id| store.get(id).unwrap().state.is_terminal())
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
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
    for id in &ids[1..] {
        let j = store.get(id).unwrap();
        assert_eq!(
            j.attempts[0].outcome,
            Some(pulse_ledger::pulse::AttemptOutcome::Crashed),
            "{:?}",
            j.state
        );
    }
}
