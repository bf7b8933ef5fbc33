//! Pulse throughput: acknowledged enqueues (one per commit and batched) and
//! dispatches through an in-process no-op executor, next to the disk's
//! fsync rate measured in the same run. Results go to BENCHMARKS.md.
//!
//! ```text
//! cargo run --release --example pulse_bench -- [JOBS]
//! cargo run --release --example pulse_bench -- startup [JOBS]
//! ```
//!
//! `startup` stores JOBS queued jobs (default 1,000,000) with 100 of them
//! running, closes everything, and times reopening the ledger and the job
//! store, recovering the interrupted attempts and dispatching the first job.
//!
//! `flood cost|log|progress [EVENTS]` runs one job with a 1 MiB payload
//! through the async executor adapter (the plugin proxy's path, without
//! the network), whose attempt sends EVENTS (default 50,000) reports of
//! that kind as fast as it can, then succeeds; it prints how long the
//! dispatcher took to apply them and the process's peak RSS.

#![allow(clippy::unwrap_used)] // a benchmark harness: a panic is a report

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use pulse_ledger::ledger::{Ledger, LedgerConfig};
use pulse_ledger::pulse::{
    AttemptSpec, DispatchConfig, Dispatcher, ExecEvent, Executor, JobId, JobRequest, JobStore,
    LeaseToken, Report, ReportSender,
};
use pulse_ledger::{Did, HandlerSchema};

/// Succeeds every attempt at once.
struct Noop;

impl Executor for Noop {
    fn start(&mut self, a: AttemptSpec, reports: ReportSender) {
        let _ = reports.try_send(Report {
            job: a.job,
            lease: a.lease,
            event: ExecEvent::Succeeded(Vec::new()),
        });
    }
    fn cancel(&mut self, _: JobId, _: LeaseToken) {}
}

/// The loadgen's fsync ceiling: 512-byte writes in place into a
/// preallocated file, each followed by fdatasync.
fn fsync_rate(dir: &std::path::Path) -> f64 {
    pulse_ledger::loadgen::fsync_rate(dir).unwrap()
}

fn startup(jobs: usize) {
    let dir = std::env::temp_dir().join(format!("pulse-bench-start-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let (handler, schema) = parties();
    {
        let ledger = Ledger::open(LedgerConfig::new(&data, "bench/log")).unwrap();
        let store = Arc::new(JobStore::open(&ledger).unwrap());
        let items: Vec<_> = (0..1000)
            .map(|_| {
                (
                    handler.clone(),
                    schema.clone(),
                    JobRequest {
                        payload: vec![0; 64],
                        ..Default::default()
                    },
                )
            })
            .collect();
        let start = Instant::now();
        for _ in 0..jobs / items.len() {
            for r in store.enqueue_batch(&items, 1_000) {
                r.unwrap();
            }
        }
        println!(
            "stored {jobs} jobs in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        for n in 0..100u64 {
            let mut t = [0u8; 16];
            t[..8].copy_from_slice(&n.to_be_bytes());
            store.dispatch_next(LeaseToken(t), 2_000).unwrap().unwrap();
        }
    }
    let start = Instant::now();
    let ledger = Ledger::open(LedgerConfig::new(&data, "bench/log")).unwrap();
    let store = Arc::new(JobStore::open(&ledger).unwrap());
    let mut d = Dispatcher::new(
        Arc::clone(&store),
        Noop,
        DispatchConfig::default(),
        Box::new(|_| None),
        1,
    );
    let recovered = d.recover(3_000).unwrap();
    let report = d.step(3_001).unwrap();
    println!(
        "reopen + recover {recovered} interrupted attempts + first dispatch ({} jobs) with {jobs} stored: {:?}",
        report.dispatched,
        start.elapsed()
    );
    drop(d);
    drop(store);
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An attempt that floods reports of one kind, then succeeds.
struct Flood {
    kind: String,
    events: u64,
}

#[pulse_ledger::plugin::sdk::async_trait]
impl pulse_ledger::pulse::AsyncExecutor for Flood {
    async fn dispatch(&self, _: AttemptSpec) -> Result<pulse_ledger::pulse::EventStream, String> {
        let kind = self.kind.clone();
        let events = (0..self.events)
            .map(move |i| match kind.as_str() {
                "cost" => ExecEvent::Cost(1),
                "log" => ExecEvent::Log(format!("line {i}")),
                _ => ExecEvent::Progress(pulse_ledger::pulse::Progress {
                    percent: (i % 100) as u8,
                    message: "flood".into(),
                    checkpoint: Vec::new(),
                }),
            })
            .chain(std::iter::once(ExecEvent::Succeeded(b"done".to_vec())));
        Ok(Box::pin(tokio_stream::iter(events)))
    }

    async fn cancel(&self, _: JobId, _: LeaseToken) {}
}

/// The benchmarks' handler and its schema (naming a plugin no one runs:
/// the executors here are in-process).
fn parties() -> (Did, HandlerSchema) {
    let handler =
        Did::from_verifying_key(&SigningKey::from_bytes(&[1; 32]).verifying_key()).unwrap();
    let plugin =
        Did::from_verifying_key(&SigningKey::from_bytes(&[2; 32]).verifying_key()).unwrap();
    (handler, HandlerSchema::new("bench", "1.0.0", plugin))
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn flood(kind: &str, events: u64) {
    let dir = std::env::temp_dir().join(format!("pulse-bench-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ledger = Ledger::open(LedgerConfig::new(dir.join("data"), "bench/log")).unwrap();
    let store = Arc::new(JobStore::open(&ledger).unwrap());
    let (handler, schema) = parties();
    let req = JobRequest {
        payload: vec![7; 1024 * 1024],
        ..Default::default()
    };
    let (job, _) = store.enqueue(&handler, &schema, &req, 1_000).unwrap();
    let executor = pulse_ledger::pulse::AsyncExecutorAdapter::new(
        Flood {
            kind: kind.into(),
            events,
        },
        runtime.handle().clone(),
    )
    .with_waker(std::thread::current());
    let mut d = Dispatcher::new(
        Arc::clone(&store),
        executor,
        DispatchConfig::default(),
        Box::new(|_| None),
        1,
    );
    let start = Instant::now();
    let mut steps = 0u64;
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let r = d.step(now).unwrap();
        steps += 1;
        if store.get(&job.id).unwrap().state.is_terminal() {
            break;
        }
        if r.applied == 0 && r.dispatched == 0 {
            std::thread::park_timeout(Duration::from_millis(1));
        }
    }
    let took = start.elapsed();
    let j = store.get(&job.id).unwrap();
    println!(
        "flood {kind}: {events} reports applied in {:.2} s ({:.0}/s, {steps} steps), job {}, total cost {}, peak RSS {:.0} MiB",
        took.as_secs_f64(),
        events as f64 / took.as_secs_f64(),
        j.state.as_str(),
        j.total_cost,
        peak_rss_mib()
    );
    drop(d);
    drop(store);
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("flood") {
        args.next();
        let kind = args.next().unwrap_or_else(|| "cost".into());
        flood(&kind, args.next().map_or(50_000, |n| n.parse().unwrap()));
        return;
    }
    if args.peek().map(String::as_str) == Some("startup") {
        args.next();
        startup(args.next().map_or(1_000_000, |n| n.parse().unwrap()));
        return;
    }
    let jobs: usize = args.next().map_or(5_000, |n| n.parse().unwrap());
    let dir = std::env::temp_dir().join(format!("pulse-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fsync = fsync_rate(&dir);
    println!("ceiling: fsync (512 B in place, prealloc.) {fsync:>9.0} /s");

    let ledger = Ledger::open(LedgerConfig::new(dir.join("data"), "bench/log")).unwrap();
    let store = Arc::new(JobStore::open(&ledger).unwrap());
    let (handler, schema) = parties();
    let req = JobRequest {
        payload: vec![0; 64],
        ..Default::default()
    };

    let single = jobs / 5;
    let start = Instant::now();
    for _ in 0..single {
        store.enqueue(&handler, &schema, &req, 1_000).unwrap();
    }
    let rate = single as f64 / start.elapsed().as_secs_f64();
    println!(
        "enqueue, one per commit                   {rate:>9.0} /s  ({:.2}× fsync)",
        rate / fsync
    );

    let items: Vec<_> = (0..100)
        .map(|_| (handler.clone(), schema.clone(), req.clone()))
        .collect();
    let start = Instant::now();
    let mut batched = 0;
    while batched < jobs {
        for r in store.enqueue_batch(&items, 1_000) {
            r.unwrap();
        }
        batched += items.len();
    }
    let rate = batched as f64 / start.elapsed().as_secs_f64();
    println!(
        "enqueue, batches of 100                   {rate:>9.0} /s  ({:.1}× fsync)",
        rate / fsync
    );

    let total = single + batched;
    let config = DispatchConfig {
        max_running: 256,
        scan: 256,
        ..Default::default()
    };
    let mut d = Dispatcher::new(Arc::clone(&store), Noop, config, Box::new(|_| None), 7);
    let start = Instant::now();
    let mut done = 0usize;
    let mut now = 2_000u64;
    while done < total {
        now += 1;
        let r = d.step(now).unwrap();
        done += r.applied;
        if r.dispatched == 0 && r.applied == 0 {
            break;
        }
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    println!(
        "dispatch + succeed (no-op executor)       {rate:>9.0} /s  ({done} jobs; each step commits its dispatches and its results as two group commits: {:.2}× fsync)",
        rate / fsync
    );
    drop(d);
    drop(store);
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
}
