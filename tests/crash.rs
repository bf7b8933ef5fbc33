//! The crash suite: concurrent registrations and jobs against a real
//! `serve` with a real plugin, SIGKILLed at random moments, with a
//! checker that replays the client-visible history after every restart
//! (spec/security.md, "Crash suite").
//!
//! `PULSE_CRASH_CYCLES=N` runs N kill cycles instead of 10, and
//! `PULSE_CRASH_SEED=S` replays a run (the seed is printed).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Serve, handler_register_with, job, key, key_file, log_info, plugin_register, tempdir,
};
use pulse_ledger::api::proto::{self, jobs_client::JobsClient, registry_client::RegistryClient};
use pulse_ledger::{AttestationId, Did};
use tonic::transport::Channel;

/// A client-visible outcome: acknowledged, refused by a rule, or unknown
/// (the connection broke before an answer).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome<T> {
    Acked(T),
    Refused(String),
    Unknown,
}

fn outcome<T>(r: Result<T, tonic::Status>) -> Outcome<T> {
    match r {
        Ok(v) => Outcome::Acked(v),
        // A status the service chose carries its rule; a broken
        // connection does not, and its effect is unknown.
        Err(s)
            if s.code() == tonic::Code::Unavailable
                || s.code() == tonic::Code::Unknown
                || s.code() == tonic::Code::Cancelled =>
        {
            Outcome::Unknown
        }
        Err(s) => Outcome::Refused(format!("{:?}: {}", s.code(), s.message())),
    }
}

#[derive(Default)]
struct History {
    /// Every registration sent: its ID, envelope and outcome (the index).
    registrations: Vec<(AttestationId, Vec<u8>, Outcome<u64>)>,
    /// Every job sent: its handler kind and outcome (the job ID).
    jobs: Vec<(Kind, Outcome<Vec<u8>>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The `attempt` handler: its result names the attempt that made it.
    Attempt,
    /// The `cost` handler, under a budget.
    Cost,
}

/// Jobs' first terminal state seen, which must never change.
type Terminal = HashMap<Vec<u8>, (String, Vec<u8>)>;

/// A small deterministic generator (xorshift64*), seeded per run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const BUDGET_PER_HOUR: u64 = 40;
const COST_CONCURRENCY: u32 = 2;
const TERMINAL: [&str; 4] = ["succeeded", "dead", "cancelled", "failed"];

struct Fixture {
    dir: std::path::PathBuf,
    config: String,
    /// A PostgreSQL store (the database stays up across the kills), or
    /// the data dir's fjall database.
    store: Option<String>,
    log_did: Option<String>,
    attempt_handler: Did,
    cost_handler: Did,
}

impl Fixture {
    fn start(&self) -> Serve {
        match &self.store {
            Some(url) => Serve::start(
                &["--config", &self.config, "--store", url],
                &self.dir.join("data"),
            ),
            None => Serve::start(&["--config", &self.config], &self.dir.join("data")),
        }
    }
}

async fn clients(url: &str) -> (RegistryClient<Channel>, JobsClient<Channel>) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let (Ok(r), Ok(j)) = (
            RegistryClient::connect(url.to_owned()).await,
            JobsClient::connect(url.to_owned()).await,
        ) {
            return (r, j);
        }
        assert!(Instant::now() < until, "the server did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Load: registration and job clients until `stop`.
async fn load(
    url: String,
    cycle: u64,
    fx: Arc<(Did, Did)>,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let (reg, jobs) = clients(&url).await;
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in 0..4u64 {
        let (mut reg, history, stop, counter) = (
            reg.clone(),
            Arc::clone(&history),
            Arc::clone(&stop),
            Arc::clone(&counter),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let att =
                    plugin_register(&key(&format!("crash-{seed}-{cycle}-{client}-{n}")), "load");
                let r = reg
                    .submit(proto::SubmitRequest {
                        envelope: att.envelope().to_vec(),
                    })
                    .await
                    .map(|r| r.into_inner().index);
                let o = outcome(r);
                let unknown = o == Outcome::Unknown;
                history
                    .lock()
                    .unwrap()
                    .registrations
                    .push((att.id(), att.envelope().to_vec(), o));
                if unknown {
                    return;
                }
            }
        }));
    }
    for client in 0..2u64 {
        let (mut jobs, history, stop, fx) = (
            jobs.clone(),
            Arc::clone(&history),
            Arc::clone(&stop),
            Arc::clone(&fx),
        );
        let mut rng = Rng(seed ^ (cycle << 8) ^ client ^ 0x9e37_79b9_7f4a_7c15);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (kind, req) = if rng.below(5) == 0 {
                    (
                        Kind::Cost,
                        proto::EnqueueRequest {
                            handler: fx.1.to_string(),
                            payload: b"3".to_vec(),
                            ..Default::default()
                        },
                    )
                } else {
                    let ms = rng.below(60).to_string();
                    (
                        Kind::Attempt,
                        proto::EnqueueRequest {
                            handler: fx.0.to_string(),
                            payload: ms.into_bytes(),
                            ..Default::default()
                        },
                    )
                };
                let r = jobs
                    .enqueue(req)
                    .await
                    .map(|r| r.into_inner().job.unwrap().id);
                let o = outcome(r);
                let unknown = o == Outcome::Unknown;
                history.lock().unwrap().jobs.push((kind, o));
                if unknown {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(rng.below(5))).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Every check of the history against a running server.
async fn check(
    url: &str,
    fx: &Fixture,
    history: &History,
    terminal: &mut Terminal,
    events: &std::path::Path,
) {
    let (mut reg, mut jobs) = clients(url).await;
    // 1. Every acknowledged registration is in the log at its index.
    let size = log_info(&mut reg).await.size;
    let mut at: HashMap<AttestationId, u64> = HashMap::new();
    let mut start = 0;
    while start < size {
        let page = reg
            .get_entries(proto::GetEntriesRequest { start, end: size })
            .await
            .unwrap()
            .into_inner()
            .entries;
        assert!(!page.is_empty());
        for e in page {
            let previous = at.insert(AttestationId::of(&e.envelope), e.index);
            assert!(previous.is_none(), "entry {} is logged twice", e.index);
            start = e.index + 1;
        }
    }
    for (id, _, o) in &history.registrations {
        match o {
            Outcome::Acked(index) => assert_eq!(
                at.get(id),
                Some(index),
                "acknowledged registration {id} is not at {index}"
            ),
            Outcome::Refused(why) => panic!("a fresh registration was refused: {why}"),
            Outcome::Unknown => {}
        }
    }
    // 2. The full audit passes, with the key the log started with.
    let log_did = fx.log_did.as_deref().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args([
            "verify",
            "log",
            "--server",
            url,
            "--log-key",
            log_did,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // 3. Every acknowledged job exists; a terminal state never changes; no
    // two attempts overlap; a success carries its own attempt's result.
    for (kind, o) in &history.jobs {
        let id = match o {
            Outcome::Acked(id) => id,
            Outcome::Refused(why) => panic!("an enqueue was refused: {why}"),
            Outcome::Unknown => continue,
        };
        let j = jobs
            .get_job(proto::GetJobRequest { id: id.clone() })
            .await
            .unwrap_or_else(|s| panic!("acknowledged job {} lost: {s}", hex::encode(id)))
            .into_inner()
            .job
            .unwrap();
        if TERMINAL.contains(&j.state.as_str()) {
            let now = (j.state.clone(), j.result.clone());
            let first = terminal.entry(id.clone()).or_insert_with(|| now.clone());
            assert_eq!(
                *first,
                now,
                "job {} changed after it ended",
                hex::encode(id)
            );
        } else {
            assert!(
                !terminal.contains_key(id),
                "job {} left its terminal state",
                hex::encode(id)
            );
        }
        let mut attempts = j.attempt_history.clone();
        attempts.sort_by_key(|a| (a.started_at_ms, a.number));
        for pair in attempts.windows(2) {
            assert!(
                pair[0].ended_at_ms != 0 && pair[1].started_at_ms >= pair[0].ended_at_ms,
                "job {}: attempts overlap: {:?}",
                hex::encode(id),
                attempts
            );
        }
        if *kind == Kind::Attempt && j.state == "succeeded" {
            let last = attempts
                .iter()
                .filter(|a| a.outcome != "interrupted")
                .map(|a| a.number)
                .max()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&j.result),
                format!("attempt {last}"),
                "job {}: a result from another attempt was accepted: {:?}",
                hex::encode(id),
                attempts
            );
        }
    }
    // 4. Within one plugin process, a job never runs twice at once.
    let text = std::fs::read_to_string(events).unwrap_or_default();
    let mut running: HashSet<(String, String)> = HashSet::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["start", job, _attempt, pid, _] => assert!(
                running.insert(((*job).into(), (*pid).into())),
                "job {job} started twice at once in plugin {pid}"
            ),
            ["done" | "cancelled", job, _] => {
                running.retain(|(j, _)| j != job);
            }
            _ => {}
        }
    }
    // 5. Spend stays within the budget plus one report per live attempt.
    let b = jobs
        .get_budget(proto::GetBudgetRequest {
            handler: fx.cost_handler.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        b.spent_hour <= BUDGET_PER_HOUR + u64::from(COST_CONCURRENCY),
        "spent {} of a budget of {BUDGET_PER_HOUR}",
        b.spent_hour
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_acknowledged_and_breaks_no_rule() {
    crash_suite("crash", None).await;
}

/// The same suite with the log and the jobs on PostgreSQL: `serve` is
/// SIGKILLed, the database stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_sigkill_at_random_moments_loses_nothing_acknowledged_and_breaks_no_rule() {
    if let Some(url) = common::postgres_database("crash") {
        crash_suite("crash-pg", Some(url)).await;
    }
}

async fn crash_suite(name: &str, store: Option<String>) {
    let cycles: u64 = std::env::var("PULSE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("PULSE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash suite: {cycles} cycles, PULSE_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempdir(name);
    let events = dir.join("events.log");
    let (p, a, c) = (key("crash-plugin"), key("crash-attempt"), key("crash-cost"));
    let config = dir.join("pulse.toml");
    std::fs::write(
        &config,
        format!(
            "heartbeat_timeout_ms = 1000\ncancel_grace_ms = 300\nplugin_health_interval_ms = 200\nplugin_wait_secs = 60\nmin_free_mb = 0\n[[plugin]]\nname = \"tools\"\ncommand = [{:?}, \"--key\", {:?}]\nenv = {{ PULSE_TEST_PLUGIN_EVENTS = {:?} }}\n",
            env!("CARGO_BIN_EXE_pulse-test-plugin"),
            key_file(&dir, &p).display().to_string(),
            events.display().to_string()
        ),
    )
    .unwrap();
    let mut fx = Fixture {
        dir: dir.clone(),
        config: config.display().to_string(),
        store,
        log_did: None,
        attempt_handler: a.did.clone(),
        cost_handler: c.did.clone(),
    };
    let history = Arc::new(Mutex::new(History::default()));
    let mut terminal = Terminal::new();

    // The plugin, its handlers and the budget, before any crash.
    let server = fx.start();
    let (mut reg, mut jobs) = clients(&server.url).await;
    fx.log_did = Some(log_info(&mut reg).await.log_did);
    for att in [
        plugin_register(&p, "tools"),
        handler_register_with(&a, "attempt", &p.did, |s| s.max_concurrency = Some(8)),
        handler_register_with(&c, "cost", &p.did, |s| {
            s.max_concurrency = Some(COST_CONCURRENCY)
        }),
    ] {
        let index = reg
            .submit(proto::SubmitRequest {
                envelope: att.envelope().to_vec(),
            })
            .await
            .unwrap()
            .into_inner()
            .index;
        history.lock().unwrap().registrations.push((
            att.id(),
            att.envelope().to_vec(),
            Outcome::Acked(index),
        ));
    }
    jobs.set_budget(proto::SetBudgetRequest {
        handler: c.did.to_string(),
        per_hour: BUDGET_PER_HOUR,
        per_day: 0,
    })
    .await
    .unwrap();
    let handlers = Arc::new((fx.attempt_handler.clone(), fx.cost_handler.clone()));
    let mut server = Some(server);

    for cycle in 0..cycles {
        let s = server.take().unwrap_or_else(|| fx.start());
        let stop = Arc::new(AtomicBool::new(false));
        let driver = tokio::spawn(load(
            s.url.clone(),
            cycle,
            Arc::clone(&handlers),
            Arc::clone(&history),
            Arc::clone(&stop),
            seed,
        ));
        tokio::time::sleep(Duration::from_millis(150 + rng.below(600))).await;
        let mut s = s;
        s.child.kill().unwrap(); // SIGKILL
        s.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        driver.await.unwrap();
        drop(s);
        let restarted = fx.start();
        let h = std::mem::take(&mut *history.lock().unwrap());
        check(&restarted.url, &fx, &h, &mut terminal, &events).await;
        *history.lock().unwrap() = h;
        server = Some(restarted);
    }

    // Finally: every acknowledged job reaches one terminal state. Jobs the
    // budget holds wait for the hour to pass; they are cancelled, which is
    // a terminal state too.
    let s = server.take().unwrap();
    let (_, mut jobs) = clients(&s.url).await;
    let h = std::mem::take(&mut *history.lock().unwrap());
    let acked: Vec<(Kind, Vec<u8>)> = h
        .jobs
        .iter()
        .filter_map(|(k, o)| match o {
            Outcome::Acked(id) => Some((*k, id.clone())),
            _ => None,
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(90);
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut interrupted = 0;
    for (kind, id) in &acked {
        loop {
            let j = job(&mut jobs, id).await;
            if TERMINAL.contains(&j.state.as_str()) {
                *states.entry(j.state).or_default() += 1;
                interrupted +=
                    usize::from(j.attempt_history.iter().any(|a| a.outcome == "interrupted"));
                break;
            }
            if *kind == Kind::Cost && j.state == "held" {
                jobs.cancel_job(proto::CancelJobRequest { id: id.clone() })
                    .await
                    .unwrap();
                continue;
            }
            assert!(
                Instant::now() < until,
                "job {} still {} ({})",
                hex::encode(id),
                j.state,
                j.reason
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    check(&s.url, &fx, &h, &mut terminal, &events).await;
    let acked_regs = h
        .registrations
        .iter()
        .filter(|(_, _, o)| matches!(o, Outcome::Acked(_)))
        .count();
    eprintln!(
        "crash suite: {cycles} kills; {acked_regs} registrations and {} jobs acknowledged ({} unknown); {interrupted} jobs interrupted by a kill; final states {states:?}",
        acked.len(),
        h.jobs.len() - acked.len()
    );
    assert!(
        acked.len() > 10 && acked_regs > 10,
        "too little load to mean anything"
    );
    s.stop();
}
