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

#![allow(clippy::unwrap_used)] // a benchmark harness: a panic is a report

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use pulse_ledger::ledger::{Ledger, LedgerConfig};
use pulse_ledger::pulse::{
    AttemptSpec, DispatchConfig, Dispatcher, ExecEvent, Executor, JobId, JobRequest, JobStore,
    LeaseToken, Report,
};
use pulse_ledger::{Did, HandlerSchema};

/// Succeeds every attempt at once.
struct Noop;

impl Executor for Noop {
    fn start(&mut self, a: AttemptSpec, reports: Sender<Report>) {
        let _ = reports.send(Report {
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
    let handler =
        Did::from_verifying_key(&SigningKey::from_bytes(&[1; 32]).verifying_key()).unwrap();
    let plugin =
        Did::from_verifying_key(&SigningKey::from_bytes(&[2; 32]).verifying_key()).unwrap();
    let schema = HandlerSchema::new("bench", "1.0.0", plugin);
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

fn main() {
    let mut args = std::env::args().skip(1).peekable();
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
    let handler =
        Did::from_verifying_key(&SigningKey::from_bytes(&[1; 32]).verifying_key()).unwrap();
    let plugin =
        Did::from_verifying_key(&SigningKey::from_bytes(&[2; 32]).verifying_key()).unwrap();
    let schema = HandlerSchema::new("bench", "1.0.0", plugin);
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
