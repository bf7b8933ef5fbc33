//! Deterministic simulation: Pulse against a simulated clock and scripted
//! fake executors (succeed, fail, crash, hang, ignore cancel, flood
//! progress, overspend), many seeds, invariants checked after every step.
//! A failing seed is printed; rerun one with PULSE_SIM_SEED=N. Odd seeds
//! step as the server does, each step overlapped with the one before
//! (`Dispatcher::step_overlapped`); even seeds take whole steps.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use pulse_ledger::HandlerSchema;
use pulse_ledger::ledger::{Ledger, LedgerConfig};
use pulse_ledger::pulse::{
    AttemptOutcome, AttemptSpec, Backoff, Budget, CancelReason, DispatchConfig, Dispatcher,
    ExecEvent, Executor, HoldReason, Job, JobRequest, JobState, JobStore, LeaseToken, Progress,
    Report, ReportSender,
};

const STEP_MS: u64 = 1_000;
const BEHAVIOURS: u8 = 9;
const MAX_COST: u64 = 100;
const COST_STEP: u64 = 40;
const HOURLY: u64 = 400;

struct Active {
    lease: LeaseToken,
    behaviour: u8,
    steps: u32,
    cancelled: bool,
    reports: ReportSender,
    attempt: u32,
}

#[derive(Default)]
struct Fake {
    active: HashMap<pulse_ledger::pulse::JobId, Vec<Active>>,
    /// Results sent by attempts after they were cancelled.
    zombie_results: Vec<(pulse_ledger::pulse::JobId, LeaseToken)>,
    random: u64,
}

impl Executor for Fake {
    fn start(&mut self, a: AttemptSpec, reports: ReportSender) {
        let behaviour = a.payload[0] % BEHAVIOURS;
        self.active.entry(a.job).or_default().push(Active {
            lease: a.lease,
            behaviour,
            steps: 0,
            cancelled: false,
            reports,
            attempt: a.number,
        });
    }

    fn cancel(&mut self, job: pulse_ledger::pulse::JobId, lease: LeaseToken) {
        for a in self.active.get_mut(&job).into_iter().flatten() {
            if a.lease == lease {
                a.cancelled = true;
            }
        }
    }
}

impl Fake {
    fn rand(&mut self) -> u64 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        self.random
    }

    /// Lets every live fake attempt act once.
    fn act(&mut self) {
        let mut zombies = Vec::new();
        let r = self.rand();
        for (job, attempts) in self.active.iter_mut() {
            for a in attempts.iter_mut() {
                a.steps += 1;
                let send = |event| {
                    // The fake runs on the dispatcher's thread: it never
                    // waits, and a full queue would be a dispatcher bug.
                    a.reports
                        .try_send(Report {
                            job: *job,
                            lease: a.lease,
                            event,
                        })
                        .unwrap_or_else(|r| panic!("report queue full: {r:?}"));
                };
                if a.cancelled {
                    // Only the cancel-ignoring script keeps going, and then
                    // returns a result that must be refused.
                    if a.behaviour == 5 && a.steps == 40 {
                        send(ExecEvent::Succeeded(b"zombie".to_vec()));
                        zombies.push((*job, a.lease));
                    }
                    continue;
                }
                match a.behaviour {
                    0 => match a.steps {
                        1 | 2 => send(ExecEvent::Heartbeat),
                        3 => send(ExecEvent::Succeeded(b"ok".to_vec())),
                        _ => {}
                    },
                    1 if a.steps == 2 => send(ExecEvent::Failed {
                        error: "flaky".into(),
                        retryable: true,
                        retry_after_ms: None,
                    }),
                    2 if a.steps == 2 => send(ExecEvent::Failed {
                        error: "bad input".into(),
                        retryable: false,
                        retry_after_ms: None,
                    }),
                    3 if a.steps == 1 => send(ExecEvent::Crashed),
                    4 | 5 => {} // hang: no heartbeats
                    6 => {
                        if a.steps < 4 {
                            for p in 0..50 {
                                send(ExecEvent::Progress(Progress {
                                    percent: p,
                                    message: "busy".into(),
                                    checkpoint: vec![p],
                                }));
                            }
                        } else if a.steps == 4 {
                            send(ExecEvent::Succeeded(b"done".to_vec()));
                        }
                    }
                    7 => send(ExecEvent::Cost(COST_STEP)),
                    8 => match (a.attempt, a.steps, r % 2) {
                        (1, 1, _) => send(ExecEvent::Crashed),
                        (_, 2, _) => send(ExecEvent::Succeeded(b"second time".to_vec())),
                        (_, 1, _) => send(ExecEvent::Log("starting".into())),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        self.zombie_results.extend(zombies);
    }
}

fn check(job: &Job, ctx: &str) {
    let open = job.attempts.iter().filter(|a| a.outcome.is_none()).count();
    assert!(open <= 1, "{ctx}: job {} has two live attempts", job.id);
    assert_eq!(
        open == 1,
        job.state == JobState::Running,
        "{ctx}: job {} live attempt iff running",
        job.id
    );
    assert!(
        job.attempts.len() as u32 <= job.limits.max_attempts,
        "{ctx}: too many attempts"
    );
    if let Some(max) = job.limits.max_cost {
        assert!(
            job.total_cost <= max + COST_STEP,
            "{ctx}: spend {} over budget {max} + one report",
            job.total_cost
        );
    }
    if job.state == JobState::Succeeded {
        assert_eq!(
            job.attempts.last().unwrap().outcome,
            Some(AttemptOutcome::Succeeded),
            "{ctx}"
        );
        assert_ne!(
            job.result.as_deref(),
            Some(&b"zombie"[..]),
            "{ctx}: a stale result was accepted"
        );
    }
}

fn run(seed: u64) {
    let dir = common::tempdir(&format!("sim-{seed}"));
    let ledger = Ledger::open(LedgerConfig::new(&dir, "sim/log")).unwrap();
    let store = Arc::new(JobStore::open(&ledger).unwrap());
    let handlers: Vec<_> = (0..3)
        .map(|i| common::key(&format!("sim-h{i}")).did)
        .collect();
    let mut schema = HandlerSchema::new("h", "1.0.0", common::key("sim-p").did);
    schema.timeout_ms = Some(8_000);
    schema.max_cost = Some(MAX_COST);
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let jobs = 12 + next() % 12;
    let mut now = 1_000_000u64;
    let items: Vec<_> = (0..jobs)
        .map(|_| {
            let h = handlers[(next() % 3) as usize].clone();
            let req = JobRequest {
                payload: vec![(next() % 256) as u8],
                priority: (next() % 10) as u8,
                run_at_ms: now + (next() % 4) * STEP_MS,
                idempotency_key: (next() % 4 == 0).then(|| format!("k{}", next() % 3)),
                ..Default::default()
            };
            (h, schema.clone(), req)
        })
        .collect();
    let all: Vec<Job> = store
        .enqueue_batch(&items, now)
        .into_iter()
        .map(|r| r.unwrap().0)
        .collect();
    // Idempotency keys never make two jobs: every repeat of a key names the
    // job the key first made.
    let mut first_for_key: HashMap<(pulse_ledger::Did, String), pulse_ledger::pulse::JobId> =
        HashMap::new();
    for j in &all {
        if let Some(k) = &j.idempotency_key {
            let first = *first_for_key
                .entry((j.handler.clone(), k.clone()))
                .or_insert(j.id);
            assert_eq!(first, j.id, "seed {seed}: two jobs for one idempotency key");
        }
    }
    let mut enqueued = all.clone();
    enqueued.sort_by_key(|j| j.id);
    enqueued.dedup_by_key(|j| j.id);
    let config = DispatchConfig {
        max_running: 1 + (next() % 6) as usize,
        // One to three steps in flight when overlapped.
        steps_in_flight: 1 + (next() % 3) as usize,
        heartbeat_timeout_ms: 5_000,
        grace_ms: 2_000,
        backoff: Backoff {
            base_ms: 1_000,
            cap_ms: 8_000,
        },
        scan: 100,
        ..DispatchConfig::default()
    };
    let limit = 1 + (next() % 3) as u32;
    // Half the seeds give the first handler a rolling hourly budget.
    let budgeted = next() % 2 == 0;
    if budgeted {
        store
            .set_budget(
                Some(&handlers[0]),
                Budget {
                    per_hour: Some(HOURLY),
                    per_day: None,
                },
            )
            .unwrap();
    }
    let mut d = Dispatcher::new(
        Arc::clone(&store),
        Fake {
            random: seed | 1,
            ..Default::default()
        },
        config,
        Box::new(move |_| Some(limit)),
        seed,
    );
    let cancel_at = next() % 60;
    let overlapped = seed % 2 == 1;
    for step in 0..400u64 {
        now += STEP_MS;
        d.executor_mut().act();
        if step == cancel_at {
            // As the server's runner: a command finds no step in flight.
            d.finish_in_flight()
                .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
            let victim = &enqueued[(next() % enqueued.len() as u64) as usize];
            let _ = d.cancel(&victim.id, now);
        }
        if overlapped {
            d.step_overlapped(now)
        } else {
            d.step(now)
        }
        .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
        let ctx = format!("seed {seed} step {step}");
        let mut running_per_handler: HashMap<_, u32> = HashMap::new();
        let mut all_done = true;
        for j in &enqueued {
            let job = store.get(&j.id).unwrap();
            check(&job, &ctx);
            all_done &= job.state.is_terminal();
            if job.state == JobState::Running {
                *running_per_handler.entry(job.handler.clone()).or_default() += 1;
            }
        }
        if budgeted {
            let (hour, _) = store.spent(&handlers[0], now).unwrap();
            assert!(
                hour <= HOURLY + u64::from(limit) * COST_STEP,
                "{ctx}: spent {hour} over the hourly budget {HOURLY} + one report per live attempt"
            );
        }
        assert!(
            running_per_handler.values().all(|&n| n <= limit),
            "{ctx}: a handler over its concurrency {limit}: {:?}",
            enqueued
                .iter()
                .map(|j| {
                    let j = store.get(&j.id).unwrap();
                    (
                        j.id.to_string()[30..].to_owned(),
                        j.handler.to_string()[9..14].to_owned(),
                        j.state,
                        j.attempts.len(),
                        j.payload[0] % BEHAVIOURS,
                    )
                })
                .collect::<Vec<_>>()
        );
        // Stop once every job has finished and no zombie is still due to
        // send its late result (the ignore-cancel script answers at step 40).
        if all_done && step > 60 {
            break;
        }
    }
    d.finish_in_flight()
        .unwrap_or_else(|e| panic!("seed {seed} at the end: {e}"));
    assert!(!d.in_flight(), "seed {seed}: a step left in flight");
    for j in &enqueued {
        let job = store.get(&j.id).unwrap();
        let waiting_for_budget = budgeted
            && job.handler == handlers[0]
            && job.state == JobState::Held(HoldReason::Budget);
        assert!(
            job.state.is_terminal() || waiting_for_budget,
            "seed {seed}: job {} ended {:?} (behaviour {})",
            job.id,
            job.state,
            job.payload[0] % BEHAVIOURS
        );
        match job.payload[0] % BEHAVIOURS {
            7 if job.state != JobState::Cancelled(CancelReason::Requested) => {
                assert_eq!(
                    job.state,
                    JobState::Cancelled(CancelReason::Budget),
                    "seed {seed}"
                )
            }
            _ => {}
        }
    }
    // FIFO within a priority: of two jobs of one handler with the same
    // priority and run_at, the older one's first attempt starts no later
    // (held jobs and a cancelled victim may be passed legitimately).
    let finals: Vec<Job> = enqueued.iter().map(|j| store.get(&j.id).unwrap()).collect();
    for a in &finals {
        for b in &finals {
            let comparable = a.id < b.id
                && a.handler == b.handler
                && a.priority == b.priority
                && a.run_at == b.run_at
                && !(budgeted && a.handler == handlers[0]);
            if let (true, Some(fa), Some(fb)) = (comparable, a.attempts.first(), b.attempts.first())
            {
                assert!(
                    fa.started_at <= fb.started_at,
                    "seed {seed}: job {} (older) first started at {} after job {} at {}",
                    a.id,
                    fa.started_at,
                    b.id,
                    fb.started_at
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn simulated_seeds_keep_every_invariant() {
    if let Ok(seed) = std::env::var("PULSE_SIM_SEED") {
        run(seed.parse().unwrap());
        return;
    }
    let seeds: u64 = std::env::var("PULSE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    for seed in 0..seeds {
        let result = std::panic::catch_unwind(|| run(seed));
        if let Err(e) = result {
            eprintln!("failing seed: {seed} (replay with PULSE_SIM_SEED={seed})");
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn budgets_hold_jobs_without_using_attempts_and_release_them_when_the_window_moves() {
    let (_dir, store) = sim_store("sim-budget");
    let h = common::key("budget-h").did;
    let mut schema = HandlerSchema::new("h", "1.0.0", common::key("budget-p").did);
    schema.max_cost = Some(100);
    store
        .set_budget(
            None,
            Budget {
                per_hour: Some(250),
                per_day: Some(10_000),
            },
        )
        .unwrap();
    assert_eq!(
        store.budget(&h).unwrap().per_hour,
        Some(250),
        "the default applies"
    );
    let mut now = 10_000_000u64;
    // Behaviour 0 succeeds without spending; reservations alone (100 each)
    // admit two jobs against 250 and hold the third.
    let items: Vec<_> = (0..3)
        .map(|_| {
            (
                h.clone(),
                schema.clone(),
                JobRequest {
                    payload: vec![0],
                    ..Default::default()
                },
            )
        })
        .collect();
    let jobs: Vec<Job> = store
        .enqueue_batch(&items, now)
        .into_iter()
        .map(|r| r.unwrap().0)
        .collect();
    let mut d = Dispatcher::new(
        Arc::clone(&store),
        Fake {
            random: 1,
            ..Default::default()
        },
        DispatchConfig::default(),
        Box::new(|_| None),
        1,
    );
    now += 1_000;
    let r = d.step(now).unwrap();
    assert_eq!(r.dispatched, 2);
    let third = store.get(&jobs[2].id).unwrap();
    assert_eq!(third.state, JobState::Held(HoldReason::Budget));
    assert!(third.attempts.is_empty(), "holding uses no attempt");
    // Spend 240 by hand: once the two finish, 240 + 100 > 250 keeps it held…
    store.record_spend(&h, now, 240).unwrap();
    for _ in 0..5 {
        now += 1_000;
        d.executor_mut().act();
        d.step(now).unwrap();
    }
    assert_eq!(store.get(&jobs[0].id).unwrap().state, JobState::Succeeded);
    assert_eq!(
        store.get(&jobs[2].id).unwrap().state,
        JobState::Held(HoldReason::Budget)
    );
    let used = d.budget_use(&h, now).unwrap();
    assert_eq!((used.spent_hour, used.reserved), (240, 0));
    // …until the spend leaves the hourly window.
    now += 61 * 60_000;
    d.step(now).unwrap();
    let third = store.get(&jobs[2].id).unwrap();
    assert_eq!(third.state, JobState::Running, "released and dispatched");
    assert_eq!(
        d.budget_use(&h, now).unwrap().spent_day,
        240,
        "still in the day window"
    );
}

/// Fair sharing (issue 17, item 3): a flood of high-priority jobs on one
/// handler that holds every slot does not delay another handler's job
/// beyond one job's runtime, and each keeps a share while both wait.
#[test]
fn a_flood_on_one_handler_does_not_starve_another() {
    let (_dir, store) = sim_store("sim-fair");
    let plugin = common::key("fair-p").did;
    let (flood, victim) = (
        common::key("fair-flood").did,
        common::key("fair-victim").did,
    );
    let schema = HandlerSchema::new("h", "1.0.0", plugin);
    let job = |priority: u8| JobRequest {
        payload: vec![0], // behaviour 0: succeeds on its third step
        priority,
        ..Default::default()
    };
    let mut now = 10_000_000u64;
    let items: Vec<_> = (0..200)
        .map(|_| (flood.clone(), schema.clone(), job(9)))
        .collect();
    for r in store.enqueue_batch(&items, now) {
        r.unwrap();
    }
    let config = DispatchConfig {
        max_running: 2,
        ..DispatchConfig::default()
    };
    let mut d = Dispatcher::new(
        Arc::clone(&store),
        Fake {
            random: 1,
            ..Default::default()
        },
        config,
        Box::new(|_| None),
        1,
    );
    now += STEP_MS;
    // Alone, the flood may use every slot.
    assert_eq!(d.step(now).unwrap().dispatched, 2);
    let victim_job = store
        .enqueue_batch(&[(victim.clone(), schema.clone(), job(0))], now)
        .remove(0)
        .unwrap()
        .0;
    // A job runs three steps: the victim's starts when the first slot
    // frees, not after the flood.
    let mut waited = 0;
    while store.get(&victim_job.id).unwrap().state == JobState::Queued {
        now += STEP_MS;
        d.executor_mut().act();
        d.step(now).unwrap();
        waited += 1;
        assert!(
            waited <= 4,
            "the victim waited {waited} steps behind the flood"
        );
    }
    // While both have ready jobs, the flood holds at most its share (one
    // of two slots) whenever the victim has work waiting.
    let more: Vec<_> = (0..5)
        .map(|_| (victim.clone(), schema.clone(), job(0)))
        .collect();
    for r in store.enqueue_batch(&more, now) {
        r.unwrap();
    }
    for _ in 0..12 {
        now += STEP_MS;
        d.executor_mut().act();
        d.step(now).unwrap();
        let running = store.running().unwrap();
        let flooding = running.iter().filter(|j| j.handler == flood).count();
        let (queued, _) = store.list(&JobState::Queued, None, 1000).unwrap();
        if queued.iter().any(|j| j.handler == victim) {
            assert!(
                flooding <= 1,
                "the flood holds {flooding} of 2 slots while the victim waits"
            );
        }
    }
}

/// The operator's caps on what a handler claims (issue 17, item 3): a
/// handler with no concurrency limit and a day-long timeout runs one
/// attempt at a time, each under the capped timeout.
#[test]
fn the_operator_caps_a_handlers_timeout_and_concurrency() {
    let (_dir, store) = sim_store("sim-caps");
    let h = common::key("caps-h").did;
    let mut schema = HandlerSchema::new("h", "1.0.0", common::key("caps-p").did);
    schema.timeout_ms = Some(86_400_000);
    let items: Vec<_> = (0..5)
        .map(|_| {
            (
                h.clone(),
                schema.clone(),
                JobRequest {
                    payload: vec![4], // behaviour 4: hangs
                    ..Default::default()
                },
            )
        })
        .collect();
    let now = 10_000_000u64;
    for r in store.enqueue_batch(&items, now) {
        r.unwrap();
    }
    let config = DispatchConfig {
        max_handler_concurrency: Some(1),
        max_timeout_ms: Some(60_000),
        heartbeat_timeout_ms: 3_600_000,
        ..DispatchConfig::default()
    };
    let mut d = Dispatcher::new(
        Arc::clone(&store),
        Fake {
            random: 1,
            ..Default::default()
        },
        config,
        Box::new(|_| None),
        1,
    );
    assert_eq!(d.step(now + STEP_MS).unwrap().dispatched, 1);
    assert_eq!(d.step(now + 2 * STEP_MS).unwrap().dispatched, 0);
    let running = store.running().unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].limits.timeout_ms, 60_000);
}

/// Routes every job, saying which owner (current key) each handler has.
struct OwnersRouter(HashMap<pulse_ledger::Did, pulse_ledger::Did>);

impl pulse_ledger::pulse::Router for OwnersRouter {
    fn route(&mut self, job: &Job) -> pulse_ledger::pulse::Route {
        let owner = self
            .0
            .get(&job.handler)
            .cloned()
            .unwrap_or(job.handler.clone());
        pulse_ledger::pulse::Route::Go(Some(Arc::new(pulse_ledger::pulse::Authorization {
            handler_name: "h".into(),
            handler_index: 0,
            handler_attestation_id: pulse_ledger::AttestationId([0; 32]),
            handler_attestation: Arc::new(Vec::new()),
            plugin: common::key("owners-p").did,
            plugin_index: 0,
            plugin_key: common::key("owners-p").did,
            max_concurrency: None,
            owner,
            output_schema: None,
        })))
    }
}

/// Fair sharing between owners (issue 17, item 3): one owner's two
/// handlers (rotated to one key) together hold at most one share of the
/// slots while another owner has work waiting, not a share each.
#[test]
fn one_owners_handlers_share_one_share() {
    let (_dir, store) = sim_store("sim-owners");
    let (a1, a2, owner, b) = (
        common::key("owners-a1").did,
        common::key("owners-a2").did,
        common::key("owners-a").did,
        common::key("owners-b").did,
    );
    let schema = HandlerSchema::new("h", "1.0.0", common::key("owners-p").did);
    let job = || JobRequest {
        payload: vec![0], // behaviour 0: succeeds on its third step
        ..Default::default()
    };
    let mut now = 10_000_000u64;
    let mut items: Vec<_> = (0..60)
        .flat_map(|_| {
            [
                (a1.clone(), schema.clone(), job()),
                (a2.clone(), schema.clone(), job()),
            ]
        })
        .collect();
    items.extend((0..20).map(|_| (b.clone(), schema.clone(), job())));
    for r in store.enqueue_batch(&items, now) {
        r.unwrap();
    }
    let config = DispatchConfig {
        max_running: 4,
        ..DispatchConfig::default()
    };
    let owners = HashMap::from([(a1.clone(), owner.clone()), (a2.clone(), owner.clone())]);
    let mut d = Dispatcher::new(
        Arc::clone(&store),
        Fake {
            random: 1,
            ..Default::default()
        },
        config,
        Box::new(|_| None),
        1,
    )
    .with_router(Box::new(OwnersRouter(owners)));
    let mut b_ran = 0;
    for _ in 0..30 {
        now += STEP_MS;
        d.executor_mut().act();
        d.step(now).unwrap();
        let running = store.running().unwrap();
        let owners_a = running.iter().filter(|j| j.handler != b).count();
        let (queued, _) = store.list(&JobState::Queued, None, 1000).unwrap();
        if queued.iter().any(|j| j.handler == b) {
            assert!(
                owners_a <= 2,
                "one owner's two handlers hold {owners_a} of 4 slots while another owner waits"
            );
        }
        b_ran = b_ran.max(running.iter().filter(|j| j.handler == b).count());
    }
    assert_eq!(b_ran, 2, "the other owner used its share");
}

/// Sends what it is told to, for every attempt it was given.
#[derive(Default)]
struct Scripted {
    attempts: Vec<(pulse_ledger::pulse::JobId, LeaseToken, ReportSender)>,
    cancels: usize,
}

impl Executor for Scripted {
    fn start(&mut self, a: AttemptSpec, reports: ReportSender) {
        self.attempts.push((a.job, a.lease, reports));
    }

    fn cancel(&mut self, _: pulse_ledger::pulse::JobId, _: LeaseToken) {
        self.cancels += 1;
    }
}

/// spec/pulse.md, "Deadlines": once a cancel is pushed for silence, the
/// attempt is timed out when the grace period has passed since the push,
/// whatever it reports in between. An attempt that ignores the cancel and
/// starts heart-beating again must not run on for ever.
#[test]
fn a_silent_attempt_that_resumes_heartbeats_after_its_cancel_still_times_out() {
    let (_dir, store) = sim_store("sim-resumed-heartbeats");
    let now = 10_000_000u64;
    let (id, mut d) = one_attempt_job(&store, "resumed", now);
    let mut t = now;
    let mut heartbeats = false;
    for _ in 0..60 {
        t += STEP_MS;
        d.step(t).unwrap();
        if d.executor_mut().cancels > 0 {
            // It ignores the cancel and reports heartbeats again.
            heartbeats = true;
        }
        if heartbeats {
            for (job, lease, reports) in &d.executor_mut().attempts {
                reports
                    .try_send(Report {
                        job: *job,
                        lease: *lease,
                        event: ExecEvent::Heartbeat,
                    })
                    .unwrap();
            }
        }
        if store.get(&id).unwrap().state.is_terminal() {
            break;
        }
    }
    let job = store.get(&id).unwrap();
    assert!(heartbeats, "the silent attempt was never told to stop");
    assert_eq!(
        job.state,
        JobState::Dead(pulse_ledger::pulse::DeadReason::AttemptsExhausted),
        "{job:?}"
    );
    assert_eq!(
        job.attempts[0].outcome,
        Some(AttemptOutcome::TimedOut),
        "{job:?}"
    );
    // Timed out one grace period after the push, not when it went silent.
    let ended = job.attempts[0].ended_at.unwrap();
    assert!(ended >= now + 5_000 + 5_000, "{ended}");
}

/// spec/pulse.md, "Deadlines": the grace period of a pushed cancel runs
/// from the first step begun after the push. A step reads its time when
/// it begins and pushes at its end, after its commit: on a slow store (a
/// PostgreSQL commit of hundreds of ms) the push's own step time would
/// count the commit as grace, and the next step could record the attempt
/// timed out, freeing its slot for another, while its handler had had no
/// time to stop. Here the next step comes one whole grace after the push
/// step's time, as if that step had taken that long.
#[test]
fn the_grace_of_a_pushed_cancel_counts_from_the_next_step() {
    let (_dir, store) = sim_store("sim-grace-next-step");
    let now = 10_000_000u64;
    let (id, mut d) = one_attempt_job(&store, "grace", now);
    let mut t = now;
    while d.executor_mut().cancels == 0 {
        t += STEP_MS;
        d.step(t).unwrap();
        assert!(
            t < now + 60_000,
            "the silent attempt was never told to stop"
        );
    }
    d.step(t + 5_000).unwrap();
    let job = store.get(&id).unwrap();
    assert_eq!(
        job.state,
        JobState::Running,
        "the push may have been made just before this step: no grace has passed: {job:?}"
    );
    d.step(t + 9_999).unwrap();
    assert_eq!(store.get(&id).unwrap().state, JobState::Running);
    d.step(t + 10_000).unwrap();
    let job = store.get(&id).unwrap();
    assert_eq!(
        job.attempts[0].outcome,
        Some(AttemptOutcome::TimedOut),
        "{job:?}"
    );
    assert_eq!(job.attempts[0].ended_at, Some(t + 10_000));
}

/// spec/pulse.md, "Budgets": a job is reserved the handler's average
/// attempt cost so far. An attempt whose cost reports reach the server in
/// the same step as its result (a handler that reports cost and returns at
/// once) counts that cost in the average: the next job is held when the
/// budget has room for no more than what was spent. (The Python SDK's
/// budget test failed once in CI: the cost was dropped from the average,
/// which stayed 0, so the job at the limit ran.)
#[test]
fn a_cost_reported_with_its_result_counts_in_the_handlers_average() {
    let (_dir, store) = sim_store("sim-cost-with-result");
    let h = common::key("cost-result-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", common::key("cost-result-p").did);
    store
        .set_budget(
            Some(&h),
            Budget {
                per_hour: Some(20),
                per_day: None,
            },
        )
        .unwrap();
    let mut now = 10_000_000u64;
    let first = store
        .enqueue(&h, &schema, &JobRequest::default(), now)
        .unwrap()
        .0
        .id;
    let mut d = scripted(&store, DispatchConfig::default(), 1);
    now += STEP_MS;
    assert_eq!(d.step(now).unwrap().dispatched, 1, "nothing spent yet");
    let (job, lease, reports) = &d.executor_mut().attempts[0];
    for event in [ExecEvent::Cost(20), ExecEvent::Succeeded(b"done".to_vec())] {
        reports
            .try_send(Report {
                job: *job,
                lease: *lease,
                event,
            })
            .unwrap();
    }
    now += STEP_MS;
    d.step(now).unwrap();
    assert_eq!(store.get(&first).unwrap().state, JobState::Succeeded);
    assert_eq!(d.budget_use(&h, now).unwrap().spent_hour, 20);
    let second = store
        .enqueue(&h, &schema, &JobRequest::default(), now)
        .unwrap()
        .0
        .id;
    now += STEP_MS;
    assert_eq!(d.step(now).unwrap().dispatched, 0);
    let job = store.get(&second).unwrap();
    assert_eq!(
        job.state,
        JobState::Held(HoldReason::Budget),
        "20 spent + 20 expected (the average) is over 20: {job:?}"
    );
}

/// A job of one attempt and a day's timeout, enqueued at `now` on a
/// handler named after `name`, and a scripted dispatcher with a 5 s
/// heartbeat timeout, a 5 s grace and a deadline scan every step.
fn one_attempt_job(
    store: &Arc<JobStore>,
    name: &str,
    now: u64,
) -> (pulse_ledger::pulse::JobId, Dispatcher<Scripted>) {
    let h = common::key(&format!("{name}-h")).did;
    let mut schema = HandlerSchema::new("h", "1.0.0", common::key(&format!("{name}-p")).did);
    schema.timeout_ms = Some(86_400_000);
    schema.max_attempts = Some(1);
    let id = store
        .enqueue(&h, &schema, &JobRequest::default(), now)
        .unwrap()
        .0
        .id;
    let config = DispatchConfig {
        heartbeat_timeout_ms: 5_000,
        grace_ms: 5_000,
        deadline_scan_ms: 0,
        ..DispatchConfig::default()
    };
    (id, scripted(store, config, 1))
}

/// A job store in a new ledger, in a temp dir named `name`.
fn sim_store(name: &str) -> (std::path::PathBuf, Arc<JobStore>) {
    let dir = common::tempdir(name);
    let ledger = Ledger::open(LedgerConfig::new(&dir, "sim/log")).unwrap();
    let store = Arc::new(JobStore::open(&ledger).unwrap());
    (dir, store)
}

/// A dispatcher over `store` with a [`Scripted`] executor and no
/// concurrency limits.
fn scripted(store: &Arc<JobStore>, config: DispatchConfig, seed: u64) -> Dispatcher<Scripted> {
    Dispatcher::new(
        Arc::clone(store),
        Scripted::default(),
        config,
        Box::new(|_| None),
        seed,
    )
}

/// The jobs of the attempts the executor was given, in order.
fn started_jobs(d: &mut Dispatcher<Scripted>) -> Vec<pulse_ledger::pulse::JobId> {
    d.executor_mut()
        .attempts
        .iter()
        .map(|(job, _, _)| *job)
        .collect()
}

/// Reports the `n`th attempt the executor was given succeeded; its job.
fn succeed(d: &mut Dispatcher<Scripted>, n: usize) -> pulse_ledger::pulse::JobId {
    let (job, lease, reports) = &d.executor_mut().attempts[n];
    reports
        .try_send(Report {
            job: *job,
            lease: *lease,
            event: ExecEvent::Succeeded(b"done".to_vec()),
        })
        .unwrap();
    *job
}

/// spec/pulse.md, "Overlapped steps": a step left in flight has written
/// its dispatches (the jobs are running in the store and out of the ready
/// queue) but starts no attempt; the next step, written first, finishes
/// it. Reports are applied the same way, and a slot freed by a result goes
/// to the dispatches of the step that writes the result.
#[test]
fn an_overlapped_step_starts_its_attempts_only_once_it_is_finished() {
    let (dir, store) = sim_store("sim-overlapped");
    let h = common::key("overlap-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", common::key("overlap-p").did);
    let mut now = 20_000_000u64;
    let ids: Vec<_> = (0..3)
        .map(|_| {
            store
                .enqueue(&h, &schema, &JobRequest::default(), now)
                .unwrap()
                .0
                .id
        })
        .collect();
    let mut d = scripted(
        &store,
        DispatchConfig {
            max_running: 2,
            ..DispatchConfig::default()
        },
        7,
    );
    let state = |id| store.get(id).unwrap().state;

    // Two jobs chosen and written; nothing started yet.
    let first = d.step_overlapped(now).unwrap();
    assert_eq!(first.dispatched, 0, "{first:?}");
    assert!(d.in_flight());
    assert!(
        d.executor_mut().attempts.is_empty(),
        "started before durable"
    );
    assert_eq!(state(&ids[0]), JobState::Running);
    assert_eq!(state(&ids[1]), JobState::Running);
    assert_eq!(state(&ids[2]), JobState::Queued);
    assert_eq!(
        store.queue_sizes().0,
        1,
        "the chosen jobs left the ready queue"
    );

    // The next step has nothing to write (both slots taken): it finishes
    // the one in flight, whose attempts start now.
    now += 1;
    let second = d.step_overlapped(now).unwrap();
    assert_eq!(second.dispatched, 2, "{second:?}");
    assert!(!d.in_flight());
    assert_eq!(d.executor_mut().attempts.len(), 2);

    // A result frees its slot for the same step's dispatches: both are
    // written in one batch, applied and started once it is durable.
    let job = succeed(&mut d, 0);
    now += 1;
    let third = d.step_overlapped(now).unwrap();
    assert_eq!((third.applied, third.dispatched), (0, 0), "{third:?}");
    assert!(d.in_flight());
    assert_eq!(state(&job), JobState::Succeeded, "the result is written");
    assert_eq!(
        state(&ids[2]),
        JobState::Running,
        "its slot went to the third job"
    );
    assert_eq!(d.executor_mut().attempts.len(), 2);
    let settled = d.finish_in_flight().unwrap();
    assert_eq!((settled.applied, settled.dispatched), (1, 1), "{settled:?}");
    assert_eq!(d.executor_mut().attempts.len(), 3);
    assert!(!d.in_flight());

    // A whole step finishes a step in flight first.
    succeed(&mut d, 1);
    now += 1;
    d.step_overlapped(now).unwrap();
    assert!(d.in_flight());
    let whole = d.step(now + 1).unwrap();
    assert_eq!(whole.applied, 1, "{whole:?}");
    assert!(!d.in_flight());
    let _ = std::fs::remove_dir_all(&dir);
}

/// spec/pulse.md, "Overlapped steps": with two steps in flight, a third
/// step that writes finishes the oldest (its attempts start, in the order
/// the steps were written), a job chosen by either step in flight is not
/// chosen again, a step that writes nothing finishes them all, and with
/// one step in flight the second step finishes the first, as before.
#[test]
fn steps_in_flight_are_finished_oldest_first_once_the_pipeline_is_full() {
    for depth in [1usize, 2, 3] {
        let (dir, store) = sim_store(&format!("sim-depth-{depth}"));
        let h = common::key("depth-h").did;
        let schema = HandlerSchema::new("h", "1.0.0", common::key("depth-p").did);
        let t = 40_000_000u64;
        let mut d = scripted(
            &store,
            DispatchConfig {
                steps_in_flight: depth,
                ..DispatchConfig::default()
            },
            13,
        );
        let mut ids = Vec::new();
        let mut started = Vec::new();
        for i in 0..4u64 {
            let id = store
                .enqueue(&h, &schema, &JobRequest::default(), t + i * 10)
                .unwrap()
                .0
                .id;
            ids.push(id);
            let r = d.step_overlapped(t + i * 10 + 5).unwrap();
            started.push(r.dispatched);
            // Each step chose only the job enqueued just before it.
            assert_eq!(
                store.get(&id).unwrap().state,
                JobState::Running,
                "depth {depth}, step {i}"
            );
            // Steps 0..=i are written; the newest `depth` are in flight.
            let finished = (i as usize + 1).saturating_sub(depth);
            assert_eq!(
                started_jobs(&mut d),
                ids[..finished],
                "depth {depth}, step {i}"
            );
        }
        // One attempt per finished step, each started once.
        let expected: Vec<usize> = (0..4).map(|i| usize::from(i + 1 > depth)).collect();
        assert_eq!(started, expected, "depth {depth}");
        // A step that writes nothing (no report, no ready job) finishes
        // every step in flight, oldest first, before itself.
        let rest = d.step_overlapped(t + 100).unwrap();
        assert_eq!(rest.dispatched, depth.min(4), "depth {depth}");
        assert!(!d.in_flight());
        assert_eq!(
            started_jobs(&mut d),
            ids,
            "depth {depth}: every job started once, in order"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A job enqueued after a step read its clock is in the ready queue
/// while that step chooses. It is left for the next step (its dispatch
/// would be refused as not due), and a job the step in flight chose is
/// not chosen again by the next one: once, the refusal of the first
/// choice, finished after the second, ended the second's attempt in
/// memory, so its result was refused as stale and the job stayed
/// running until its heartbeat timeout.
#[test]
fn a_job_enqueued_during_a_step_is_dispatched_once_and_its_result_kept() {
    let (dir, store) = sim_store("sim-enqueued-during");
    let h = common::key("during-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", common::key("during-p").did);
    let t = 30_000_000u64;
    let enqueue = |at| {
        store
            .enqueue(&h, &schema, &JobRequest::default(), at)
            .unwrap()
            .0
            .id
    };
    let early = enqueue(t);
    // Enqueued at t + 50, while a step that read the clock at t + 10 runs.
    let late = enqueue(t + 50);
    let mut d = scripted(&store, DispatchConfig::default(), 11);
    let state = |id| store.get(id).unwrap().state;

    d.step_overlapped(t + 10).unwrap();
    assert!(d.in_flight());
    assert_eq!(state(&early), JobState::Running);
    assert_eq!(state(&late), JobState::Queued, "not due at the step's time");
    // The second step chooses only the late job; with two steps in
    // flight (the default), neither is finished yet.
    let next = d.step_overlapped(t + 60).unwrap();
    assert_eq!(next.dispatched, 0, "{next:?}");
    assert_eq!(state(&late), JobState::Running);
    assert!(
        d.executor_mut().attempts.is_empty(),
        "started before durable"
    );
    let last = d.finish_in_flight().unwrap();
    assert_eq!(last.dispatched, 2, "{last:?}");
    assert_eq!(state(&late), JobState::Running);
    assert_eq!(d.live_attempts(), 2);

    // Both results are applied: neither attempt was lost in memory.
    succeed(&mut d, 0);
    succeed(&mut d, 1);
    let applied = d.step(t + 70).unwrap();
    assert_eq!((applied.applied, applied.stale), (2, 0), "{applied:?}");
    assert_eq!(state(&early), JobState::Succeeded);
    assert_eq!(state(&late), JobState::Succeeded);
    assert_eq!(d.live_attempts(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// spec/pulse.md, "Deadlines": on a single server an attempt is not
/// timed out for silence while reports wait unread, for one more
/// heartbeat timeout at most. One job floods the queue with progress
/// events; another's result waits behind them past the heartbeat
/// timeout, and is applied once the queue drains.
#[test]
fn a_result_queued_behind_a_flood_of_reports_is_not_timed_out() {
    let (dir, store) = sim_store("sim-flood-silence");
    let h = common::key("flood-h").did;
    let mut schema = HandlerSchema::new("h", "1.0.0", common::key("flood-p").did);
    schema.timeout_ms = Some(86_400_000);
    let now = 40_000_000u64;
    let ids: Vec<_> = (0..2)
        .map(|_| {
            store
                .enqueue(&h, &schema, &JobRequest::default(), now)
                .unwrap()
                .0
                .id
        })
        .collect();
    let mut d = scripted(
        &store,
        DispatchConfig {
            heartbeat_timeout_ms: 5_000,
            deadline_scan_ms: 0,
            ..DispatchConfig::default()
        },
        3,
    );
    assert_eq!(d.step(now).unwrap().dispatched, 2);
    let (flooder, quiet) = {
        let a = &d.executor_mut().attempts;
        ((a[0].0, a[0].1, a[0].2.clone()), (a[1].0, a[1].1))
    };
    let progress = |n: u64| Report {
        job: flooder.0,
        lease: flooder.1,
        event: ExecEvent::Progress(Progress {
            percent: (n % 100) as u8,
            message: String::new(),
            checkpoint: Vec::new(),
        }),
    };
    // Two queues' worth: the first step past the timeout takes a full
    // queue and leaves the rest, and the quiet job's result, unread.
    let mut n = 0;
    let mut t = now + 6_000;
    for _ in 0..2 {
        while flooder.2.try_send(progress(n)).is_ok() {
            n += 1;
        }
        d.step(t).unwrap();
        t += 100;
    }
    while flooder.2.try_send(progress(n)).is_ok() {
        n += 1;
    }
    assert_eq!(d.executor_mut().cancels, 0, "told to stop while unheard");
    assert_eq!(store.get(&quiet.0).unwrap().state, JobState::Running);
    // For one more heartbeat timeout at most: a queue kept full does not
    // shield a silent attempt for ever. Told to stop, it has the grace
    // period to answer.
    t = now + 10_001;
    d.step(t).unwrap();
    assert_eq!(d.executor_mut().cancels, 1, "shielded past the bound");
    t += 100;
    // The queue drains, and the quiet job's result is right behind.
    d.step(t).unwrap();
    flooder
        .2
        .try_send(Report {
            job: quiet.0,
            lease: quiet.1,
            event: ExecEvent::Succeeded(b"late but heard".to_vec()),
        })
        .unwrap();
    d.step(t + 100).unwrap();
    assert_eq!(store.get(&quiet.0).unwrap().state, JobState::Succeeded);
    // Once nothing waits unread, silence counts again: the flooder, whose
    // last report was long ago, is told to stop.
    d.step(t + 12_000).unwrap();
    assert_eq!(d.executor_mut().cancels, 2);
    assert_eq!(store.get(&ids[0]).unwrap().state, JobState::Running);
    let _ = std::fs::remove_dir_all(&dir);
}
