//! The job state machine, exhaustively: every event from every state, the
//! retry, poison, budget and cancel policies, and a seeded random walk that
//! checks the invariants after every step.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

mod common;

use pulse_ledger::pulse::{
    AttemptOutcome, Backoff, CancelReason, DeadReason, HoldReason, Job, JobId, JobLimits,
    JobRequest, JobState, LeaseToken, POISON_CRASHES, POISON_INTERRUPTIONS, Progress,
    PulseErrorCode, RetryPolicy, check_request,
};
use pulse_ledger::{HandlerSchema, ledger};

const POLICY: RetryPolicy = RetryPolicy {
    backoff: Backoff {
        base_ms: 1_000,
        cap_ms: 60_000,
    },
    random: 0,
};

fn lease(n: u8) -> LeaseToken {
    LeaseToken([n; 16])
}

fn job(max_attempts: u32, max_cost: Option<u64>) -> Job {
    let handler = common::key("machine-h").did;
    let limits = JobLimits {
        max_attempts,
        timeout_ms: 10_000,
        max_cost,
    };
    Job::new(
        JobId::new(1_000, 1),
        handler,
        &JobRequest {
            priority: 5,
            ..Default::default()
        },
        limits,
        1_000,
    )
}

/// A job brought into `state` by legal transitions.
fn in_state(state: &str) -> Job {
    let mut j = job(3, Some(100));
    match state {
        "queued" => {}
        "held" => j.hold(HoldReason::Budget, 1_000).unwrap(),
        "running" => {
            j.dispatch(lease(1), 1_000).unwrap();
        }
        "retrying" => {
            j.dispatch(lease(1), 1_000).unwrap();
            j.fail(&lease(1), "boom".into(), true, None, POLICY, 1_100)
                .unwrap();
        }
        "succeeded" => {
            j.dispatch(lease(1), 1_000).unwrap();
            j.succeed(&lease(1), b"ok".to_vec(), 1_100).unwrap();
        }
        "dead" => {
            j.dispatch(lease(1), 1_000).unwrap();
            j.fail(&lease(1), "bad input".into(), false, None, POLICY, 1_100)
                .unwrap();
        }
        "cancelled" => {
            j.cancel(CancelReason::Requested, 1_000).unwrap();
        }
        other => panic!("{other}"),
    }
    j
}

const STATES: [&str; 7] = [
    "queued",
    "held",
    "running",
    "retrying",
    "succeeded",
    "dead",
    "cancelled",
];

type Event = (&'static str, fn(&mut Job) -> Result<(), PulseErrorCode>);

fn events() -> Vec<Event> {
    vec![
        ("dispatch", |j: &mut Job| {
            j.dispatch(lease(2), 1_000_000)
                .map(|_| ())
                .map_err(|e| e.code())
        }),
        ("hold", |j: &mut Job| {
            j.hold(HoldReason::Plugin, 2_000).map_err(|e| e.code())
        }),
        ("release", |j: &mut Job| {
            j.release(2_000).map_err(|e| e.code())
        }),
        ("wake", |j: &mut Job| {
            j.wake(1_000_000).map_err(|e| e.code())
        }),
        ("heartbeat", |j: &mut Job| {
            j.heartbeat(&lease(1), 2_000).map_err(|e| e.code())
        }),
        ("stale heartbeat", |j: &mut Job| {
            j.heartbeat(&lease(9), 2_000).map_err(|e| e.code())
        }),
        ("progress", |j: &mut Job| {
            j.report_progress(
                &lease(1),
                Progress {
                    percent: 50,
                    ..Default::default()
                },
                2_000,
            )
            .map_err(|e| e.code())
        }),
        ("cost", |j: &mut Job| {
            j.report_cost(&lease(1), 5, 2_000)
                .map(|_| ())
                .map_err(|e| e.code())
        }),
        ("succeed", |j: &mut Job| {
            j.succeed(&lease(1), vec![1], 2_000).map_err(|e| e.code())
        }),
        ("stale succeed", |j: &mut Job| {
            j.succeed(&lease(9), vec![1], 2_000).map_err(|e| e.code())
        }),
        ("fail", |j: &mut Job| {
            j.fail(&lease(1), "x".into(), true, None, POLICY, 2_000)
                .map_err(|e| e.code())
        }),
        ("crash", |j: &mut Job| {
            j.crash(&lease(1), POLICY, 2_000).map_err(|e| e.code())
        }),
        ("interrupt", |j: &mut Job| {
            j.interrupt(&lease(1), 2_000).map_err(|e| e.code())
        }),
        ("stale interrupt", |j: &mut Job| {
            j.interrupt(&lease(9), 2_000).map_err(|e| e.code())
        }),
        ("time out", |j: &mut Job| {
            j.time_out(&lease(1), POLICY, 2_000).map_err(|e| e.code())
        }),
        ("cancel", |j: &mut Job| {
            j.cancel(CancelReason::Requested, 2_000)
                .map(|_| ())
                .map_err(|e| e.code())
        }),
        ("retry", |j: &mut Job| j.retry(3_000).map_err(|e| e.code())),
    ]
}

/// Which (state, event) pairs are allowed, and the error of the others.
fn expected(state: &str, event: &str) -> Result<(), PulseErrorCode> {
    let live_event = matches!(
        event,
        "heartbeat" | "progress" | "cost" | "succeed" | "fail" | "crash" | "time out" | "interrupt"
    );
    let stale_event = event.starts_with("stale");
    match (state, event) {
        ("queued", "dispatch" | "hold") | ("held", "release") | ("retrying", "wake") => Ok(()),
        ("running", _) if live_event => Ok(()),
        ("dead" | "cancelled", "retry") => Ok(()),
        (s, "cancel") if !matches!(s, "succeeded" | "dead" | "cancelled") => Ok(()),
        (_, "cancel") => Err(PulseErrorCode::WrongState),
        _ if live_event || stale_event => Err(PulseErrorCode::StaleLease),
        _ => Err(PulseErrorCode::WrongState),
    }
}

#[test]
fn every_event_from_every_state() {
    for state in STATES {
        for (name, event) in events() {
            let mut j = in_state(state);
            let before = j.clone();
            let got = event(&mut j);
            assert_eq!(got, expected(state, name), "{name} in {state}");
            if got.is_err() {
                assert_eq!(j, before, "a refused {name} in {state} changed the job");
            } else if name != "heartbeat" && name != "progress" && name != "cost" {
                assert_ne!(
                    j.state, before.state,
                    "{name} in {state} did not move the job"
                );
            }
        }
    }
}

#[test]
fn retries_back_off_then_exhaust_attempts() {
    let mut j = job(3, None);
    for attempt in 1..=3u8 {
        let now = j.run_at;
        j.dispatch(lease(attempt), now).unwrap();
        assert_eq!(j.attempts.len(), attempt as usize);
        j.fail(
            &lease(attempt),
            format!("try {attempt}"),
            true,
            None,
            POLICY,
            now + 10,
        )
        .unwrap();
        if attempt < 3 {
            assert_eq!(j.state, JobState::Retrying);
            let full = 1_000u64 << (attempt - 1);
            let at = j.retry_at.unwrap();
            assert!(
                at >= now + 10 + full / 2 && at <= now + 10 + full,
                "retry {attempt} at {at}"
            );
            assert_eq!(j.wake(at - 1).unwrap_err().code(), PulseErrorCode::NotDue);
            j.wake(at).unwrap();
            assert_eq!(
                j.dispatch(lease(99), at - 1).unwrap_err().code(),
                PulseErrorCode::NotDue
            );
        }
    }
    assert_eq!(j.state, JobState::Dead(DeadReason::AttemptsExhausted));
    assert_eq!(j.last_error.as_deref(), Some("try 3"));
}

#[test]
fn executor_retry_delay_is_honoured_and_non_retryable_is_dead() {
    let mut j = job(5, None);
    j.dispatch(lease(1), 1_000).unwrap();
    j.fail(
        &lease(1),
        "rate limited".into(),
        true,
        Some(42_000),
        POLICY,
        2_000,
    )
    .unwrap();
    assert_eq!(j.retry_at, Some(44_000));
    j.wake(44_000).unwrap();
    j.dispatch(lease(2), 44_000).unwrap();
    j.fail(
        &lease(2),
        "schema mismatch".into(),
        false,
        None,
        POLICY,
        45_000,
    )
    .unwrap();
    assert_eq!(j.state, JobState::Dead(DeadReason::NonRetryable));
    let mut k = job(5, None);
    k.dispatch(lease(1), 1_000).unwrap();
    k.fail(
        &lease(1),
        "come back never".into(),
        true,
        Some(u64::MAX),
        POLICY,
        2_000,
    )
    .unwrap();
    assert_eq!(
        k.retry_at,
        Some(2_000 + pulse_ledger::pulse::MAX_RETRY_AFTER_MS),
        "requested delays are capped at a day"
    );
}

#[test]
fn repeated_crashes_quarantine_the_job_and_other_outcomes_reset_the_count() {
    let mut j = job(100, None);
    let mut n = 0u8;
    let mut run = |j: &mut Job, f: &dyn Fn(&mut Job, &LeaseToken)| {
        n += 1;
        if j.state == JobState::Retrying {
            let at = j.retry_at.unwrap();
            j.wake(at).unwrap();
        }
        let now = j.run_at;
        j.dispatch(lease(n), now).unwrap();
        f(j, &lease(n));
    };
    for _ in 0..POISON_CRASHES - 1 {
        run(&mut j, &|j, l| {
            j.crash(l, POLICY, j.updated_at + 1).unwrap()
        });
    }
    run(&mut j, &|j, l| {
        j.time_out(l, POLICY, j.updated_at + 1).unwrap()
    });
    assert_eq!(j.consecutive_crashes, 0, "a timeout is not a crash");
    for _ in 0..POISON_CRASHES {
        run(&mut j, &|j, l| {
            j.crash(l, POLICY, j.updated_at + 1).unwrap()
        });
    }
    assert_eq!(j.state, JobState::Dead(DeadReason::Poison));
    assert_eq!(
        j.attempts
            .iter()
            .filter(|a| a.outcome == Some(AttemptOutcome::Crashed))
            .count() as u32,
        2 * POISON_CRASHES - 1
    );
}

#[test]
fn interruptions_use_no_attempts_keep_the_crash_count_and_are_bounded() {
    let mut j = job(1, None);
    j.dispatch(lease(1), 1_000).unwrap();
    j.interrupt(&lease(1), 1_200).unwrap();
    assert_eq!((j.state, j.retry_at), (JobState::Retrying, Some(1_200)));
    assert_eq!(j.attempts_used(), 0);
    j.wake(1_200).unwrap();
    j.dispatch(lease(2), 1_300).unwrap();
    j.crash(&lease(2), POLICY, 1_400).unwrap();
    assert_eq!(
        j.state,
        JobState::Dead(DeadReason::AttemptsExhausted),
        "the one real attempt is used by the crash, not by the interruption"
    );

    let mut j = job(100, None);
    let mut n = 0u8;
    for round in 1..=POISON_INTERRUPTIONS {
        if j.state == JobState::Retrying {
            j.wake(j.retry_at.unwrap()).unwrap();
        }
        n += 1;
        j.dispatch(lease(n), j.run_at).unwrap();
        if round == 2 {
            // A crash in between: the count of interruptions in a row starts over.
            j.crash(&lease(n), POLICY, j.updated_at + 1).unwrap();
            j.wake(j.retry_at.unwrap()).unwrap();
            n += 1;
            j.dispatch(lease(n), j.run_at).unwrap();
        }
        j.interrupt(&lease(n), j.updated_at + 1).unwrap();
    }
    assert_eq!(
        j.consecutive_crashes, 1,
        "interruptions leave the crash count"
    );
    // Rounds 2..=10 are in a row: one short.
    assert_eq!(j.state, JobState::Retrying);
    j.wake(j.retry_at.unwrap()).unwrap();
    j.dispatch(lease(n + 1), j.run_at).unwrap();
    j.interrupt(&lease(n + 1), j.updated_at + 1).unwrap();
    assert_eq!(j.state, JobState::Dead(DeadReason::Poison));
}

#[test]
fn an_attempt_that_reached_no_plugin_is_taken_back_and_the_job_held() {
    let mut j = job(1, None);
    j.dispatch(lease(1), 1_000).unwrap();
    j.unreachable(&lease(1), "connection refused".into(), POLICY, 1_100)
        .unwrap();
    assert_eq!(j.state, JobState::Held(HoldReason::Plugin));
    assert!(j.attempts.is_empty(), "the attempt is taken back");
    assert_eq!(j.attempts_used(), 0);
    assert!(
        j.last_error
            .as_deref()
            .unwrap()
            .starts_with("plugin_not_connected: connection refused")
    );
    // Its lease is stale now.
    assert_eq!(
        j.succeed(&lease(1), vec![], 1_150).map_err(|e| e.code()),
        Err(PulseErrorCode::StaleLease)
    );
    // Its one attempt is still there to be used.
    j.release(1_200).unwrap();
    j.dispatch(lease(2), 1_300).unwrap();
    assert_eq!(j.attempts[0].number, 1);
    j.succeed(&lease(2), b"ok".to_vec(), 1_400).unwrap();
    assert_eq!(j.state, JobState::Succeeded);

    // An attempt that reported cost ran somewhere: a crash, not a hold.
    let mut j = job(2, None);
    j.dispatch(lease(1), 1_000).unwrap();
    j.report_cost(&lease(1), 5, 1_050).unwrap();
    j.unreachable(&lease(1), "gone".into(), POLICY, 1_100)
        .unwrap();
    assert_eq!(j.state, JobState::Retrying);
    assert_eq!(j.attempts[0].outcome, Some(AttemptOutcome::Crashed));
    assert_eq!(j.total_cost, 5);
}

#[test]
fn cancelling_a_running_job_stales_its_lease_and_keeps_progress() {
    let mut j = job(3, Some(100));
    j.dispatch(lease(1), 1_000).unwrap();
    j.report_progress(
        &lease(1),
        Progress {
            percent: 40,
            message: "half".into(),
            checkpoint: b"resume-here".to_vec(),
        },
        1_500,
    )
    .unwrap();
    j.fail(&lease(1), "flaky".into(), true, Some(0), POLICY, 1_600)
        .unwrap();
    j.wake(1_600).unwrap();
    j.dispatch(lease(2), 1_600).unwrap();
    assert_eq!(
        j.progress.checkpoint, b"resume-here",
        "progress survives into the next attempt"
    );
    assert!(!j.report_cost(&lease(2), 60, 1_700).unwrap());
    assert!(
        j.report_cost(&lease(2), 50, 1_800).unwrap(),
        "110 > max_cost 100"
    );
    let pushed = j.cancel(CancelReason::Budget, 1_800).unwrap();
    assert_eq!(
        pushed,
        Some(lease(2)),
        "the live lease is returned so the cancel can be pushed"
    );
    assert_eq!(j.state, JobState::Cancelled(CancelReason::Budget));
    assert_eq!(j.attempts[1].outcome, Some(AttemptOutcome::BudgetExceeded));
    assert_eq!(
        j.succeed(&lease(2), vec![], 1_900).unwrap_err().code(),
        PulseErrorCode::StaleLease,
        "a late result is refused"
    );
    assert_eq!(j.total_cost, 110);
}

/// A job retry (issue 20): a dead or cancelled job is queued again with a
/// new series of attempts, keeping its ID, history and cost; the next
/// series has the full attempt limit and its own crash and interruption
/// counts; a succeeded or unfinished job cannot be retried.
#[test]
fn a_retried_job_runs_a_new_series_and_keeps_its_history() {
    let mut j = job(2, None);
    for n in 1..=2u8 {
        j.dispatch(lease(n), 1_000_200).unwrap();
        j.fail(&lease(n), "boom".into(), true, Some(0), POLICY, 1_000_100)
            .unwrap();
        if n == 1 {
            j.wake(1_000_100).unwrap();
        }
    }
    assert_eq!(j.state, JobState::Dead(DeadReason::AttemptsExhausted));
    let id = j.id;
    j.retry(2_000_000).unwrap();
    assert_eq!((j.id, j.state, j.run_at), (id, JobState::Queued, 2_000_000));
    assert_eq!(
        (j.attempts.len(), j.attempts_used(), j.series_start),
        (2, 0, 2)
    );
    assert_eq!(j.last_error.as_deref(), Some("boom"), "history is kept");
    // The new series has both attempts again.
    j.dispatch(lease(3), 2_000_000).unwrap();
    j.fail(&lease(3), "again".into(), true, Some(0), POLICY, 2_000_100)
        .unwrap();
    assert_eq!(j.state, JobState::Retrying);
    j.wake(2_000_100).unwrap();
    j.dispatch(lease(4), 2_000_200).unwrap();
    assert_eq!(j.attempts.last().unwrap().number, 4);
    j.succeed(&lease(4), b"ok".to_vec(), 2_000_300).unwrap();
    let err = j.retry(3_000_000).unwrap_err();
    assert_eq!(err.code(), PulseErrorCode::WrongState);
    // A job dead of interruptions gets a fresh count after a retry.
    let mut p = job(5, None);
    for n in 1..=POISON_INTERRUPTIONS as u8 {
        p.dispatch(lease(n), 1_000_000).unwrap();
        p.interrupt(&lease(n), 1_000_000).unwrap();
        if p.state == JobState::Retrying {
            p.wake(1_000_000).unwrap();
        }
    }
    assert_eq!(p.state, JobState::Dead(DeadReason::Poison));
    p.retry(1_000_001).unwrap();
    p.dispatch(lease(50), 1_000_001).unwrap();
    p.interrupt(&lease(50), 1_000_002).unwrap();
    assert_eq!(
        p.state,
        JobState::Retrying,
        "one interruption after a retry is not poison"
    );
    // Cancelled jobs can be retried too; a queued one cannot.
    let mut c = job(1, None);
    assert_eq!(c.retry(1).unwrap_err().code(), PulseErrorCode::WrongState);
    c.cancel(CancelReason::Requested, 1).unwrap();
    c.retry(2).unwrap();
    assert_eq!(c.state, JobState::Queued);
}

#[test]
fn held_jobs_use_no_attempts() {
    let mut j = job(1, None);
    for _ in 0..5 {
        j.hold(HoldReason::Budget, 1_000).unwrap();
        j.release(1_000).unwrap();
    }
    assert!(j.attempts.is_empty());
    j.dispatch(lease(1), 1_000).unwrap();
    j.succeed(&lease(1), b"done".to_vec(), 1_001).unwrap();
    assert_eq!(j.result.as_deref(), Some(&b"done"[..]));
}

#[test]
fn requests_and_limits_are_checked() {
    let schema = HandlerSchema::new("h", "1.0.0", common::key("lim-p").did);
    let base = JobRequest::default();
    let limits = JobLimits::resolve(&schema, &base).unwrap();
    assert_eq!(
        (limits.max_attempts, limits.timeout_ms, limits.max_cost),
        (3, 300_000, None)
    );
    let lower = JobRequest {
        max_attempts: Some(1),
        timeout_ms: Some(5),
        max_cost: Some(7),
        ..Default::default()
    };
    let l = JobLimits::resolve(&schema, &lower).unwrap();
    assert_eq!((l.max_attempts, l.timeout_ms, l.max_cost), (1, 5, Some(7)));
    let code = |r: JobRequest| JobLimits::resolve(&schema, &r).unwrap_err().code();
    assert_eq!(
        code(JobRequest {
            max_attempts: Some(4),
            ..Default::default()
        }),
        PulseErrorCode::LimitAboveHandler
    );
    assert_eq!(
        code(JobRequest {
            timeout_ms: Some(300_001),
            ..Default::default()
        }),
        PulseErrorCode::LimitAboveHandler
    );
    assert_eq!(
        code(JobRequest {
            max_attempts: Some(0),
            ..Default::default()
        }),
        PulseErrorCode::InvalidLimit
    );
    let mut capped = schema.clone();
    capped.max_cost = Some(10);
    assert_eq!(
        JobLimits::resolve(
            &capped,
            &JobRequest {
                max_cost: Some(11),
                ..Default::default()
            }
        )
        .unwrap_err()
        .code(),
        PulseErrorCode::LimitAboveHandler
    );
    assert_eq!(
        JobLimits::resolve(
            &schema,
            &JobRequest {
                max_cost: Some(1 << 53),
                ..Default::default()
            }
        )
        .unwrap_err()
        .code(),
        PulseErrorCode::InvalidLimit,
        "a job's max_cost stays within the schema's range"
    );
    let c = |r: JobRequest| check_request(&r).unwrap_err().code();
    assert_eq!(
        c(JobRequest {
            priority: 10,
            ..Default::default()
        }),
        PulseErrorCode::InvalidPriority
    );
    assert_eq!(
        c(JobRequest {
            payload: vec![0; 1024 * 1024 + 1],
            ..Default::default()
        }),
        PulseErrorCode::PayloadTooLarge
    );
    assert_eq!(
        c(JobRequest {
            idempotency_key: Some("has space".into()),
            ..Default::default()
        }),
        PulseErrorCode::InvalidIdempotencyKey
    );
    assert_eq!(
        c(JobRequest {
            idempotency_key: Some(String::new()),
            ..Default::default()
        }),
        PulseErrorCode::InvalidIdempotencyKey
    );
    check_request(&JobRequest {
        priority: 9,
        idempotency_key: Some("order-42".into()),
        ..Default::default()
    })
    .unwrap();
    let _ = ledger::MAX_PAGE;
}

/// Seeded random walks: any sequence of events keeps the invariants.
#[test]
fn random_walks_keep_the_invariants() {
    for seed in 0..300u64 {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut j = job(1 + (next() % 5) as u32, Some(50 + next() % 100));
        let mut now = 1_000u64;
        let mut leases_issued = 0u8;
        for step in 0..60 {
            now += next() % 5_000;
            let live = j.live_attempt().map(|a| a.lease);
            let any_lease = if next() % 4 == 0 {
                lease(200)
            } else {
                live.unwrap_or(lease(201))
            };
            let policy = RetryPolicy {
                backoff: Backoff::default(),
                random: next(),
            };
            let was_terminal = j.state.is_terminal();
            let before = j.clone();
            let retried = next() % 14 == 13;
            let r = match next() % 13 {
                _ if retried => j.retry(now),
                0 => {
                    leases_issued = leases_issued.wrapping_add(1);
                    j.dispatch(lease(leases_issued), now).map(|_| ())
                }
                1 => j.hold(HoldReason::Plugin, now),
                2 => j.release(now),
                3 => j.wake(now),
                4 => j.heartbeat(&any_lease, now),
                5 => j
                    .report_cost(&any_lease, next() % 40, now)
                    .and_then(|over| {
                        if over {
                            j.cancel(CancelReason::Budget, now).map(|_| ())
                        } else {
                            Ok(())
                        }
                    }),
                6 => j.succeed(&any_lease, vec![1], now),
                7 => j.fail(&any_lease, "e".into(), next() % 3 != 0, None, policy, now),
                8 => j.crash(&any_lease, policy, now),
                9 => j.time_out(&any_lease, policy, now),
                10 => j.interrupt(&any_lease, now),
                11 => j.unreachable(&any_lease, "gone".into(), policy, now),
                _ => j.cancel(CancelReason::Requested, now).map(|_| ()),
            };
            let ctx = format!("seed {seed} step {step}: {r:?}");
            if r.is_err() {
                assert_eq!(j, before, "{ctx}: a refused event changed the job");
            }
            if was_terminal && !retried {
                assert_eq!(j.state, before.state, "{ctx}: a terminal job moved");
            }
            if retried && r.is_ok() {
                assert!(was_terminal && j.state == JobState::Queued, "{ctx}");
                assert_eq!(j.attempts_used(), 0, "{ctx}: a retry starts a new series");
            }
            let open: Vec<_> = j.attempts.iter().filter(|a| a.outcome.is_none()).collect();
            assert!(open.len() <= 1, "{ctx}: two live attempts");
            assert_eq!(
                open.len() == 1,
                j.state == JobState::Running,
                "{ctx}: live attempt iff running"
            );
            assert!(
                j.attempts_used() <= j.limits.max_attempts,
                "{ctx}: too many attempts"
            );
            for (i, a) in j.attempts.iter().enumerate() {
                assert_eq!(a.number as usize, i + 1, "{ctx}");
            }
            assert_eq!(
                j.total_cost,
                j.attempts.iter().map(|a| a.cost).sum::<u64>(),
                "{ctx}"
            );
            if let JobState::Cancelled(CancelReason::Budget) = j.state {
                assert!(j.total_cost > j.limits.max_cost.unwrap(), "{ctx}");
            }
        }
    }
}
