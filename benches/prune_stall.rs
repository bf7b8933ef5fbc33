//! How long a pruning pass holds up the job store's writers: 10,000
//! finished jobs pruned in one pass while another thread enqueues one job
//! at a time, printing the pass's time and the slowest enqueue meanwhile
//! (BENCHMARKS.md). A latency, so a plain run rather than criterion's
//! repetitions.
//!
//! `cargo bench --bench prune_stall` (fjall, in a temp dir), or with
//! `PULSE_BENCH_POSTGRES=postgres://USER@HOST/DB` (an empty database) on
//! PostgreSQL.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_ledger::ledger::{Ledger, LedgerConfig};
use pulse_ledger::pulse::{CancelReason, GroupOp, Job, JobRequest, JobStore};
use pulse_ledger::storage::{PostgresBackend, Storage};
use pulse_ledger::{Did, HandlerSchema};

const JOBS: usize = 10_000;

fn main() {
    let dir = std::env::temp_dir().join(format!("pulse-prune-stall-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = LedgerConfig::new(&dir, "bench.example/prune");
    let (ledger, engine) = match std::env::var("PULSE_BENCH_POSTGRES") {
        Ok(url) => {
            let storage = Storage::new(PostgresBackend::open(&url).unwrap());
            let ledger = Ledger::open_on(storage, &dir.join("log.key"), config).unwrap();
            (ledger, "PostgreSQL")
        }
        Err(_) => (Ledger::open(config).unwrap(), "fjall"),
    };
    let store = Arc::new(JobStore::open(&ledger).unwrap());
    let (_, handler) = pulse_ledger::loadgen::bench_key("prune stall", 0);
    let (_, plugin) = pulse_ledger::loadgen::bench_key("prune stall", 1);
    let schema = HandlerSchema::new("h", "1.0.0", plugin);
    let item = (handler.clone(), schema.clone(), JobRequest::default());
    let mut ids = Vec::with_capacity(JOBS);
    for _ in 0..JOBS / 1_000 {
        for r in store.enqueue_batch(&vec![item.clone(); 1_000], 1_000) {
            ids.push(r.unwrap().0.id);
        }
    }
    for chunk in ids.chunks(1_000) {
        let cancel = |j: &mut Job| j.cancel(CancelReason::Requested, 2_000).map(|_| ());
        let ops = chunk
            .iter()
            .map(|id| (*id, Box::new(cancel) as GroupOp<()>))
            .collect();
        for r in store.update_many(2_000, ops) {
            r.unwrap();
        }
    }
    let pruner = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            let t = Instant::now();
            let n = store.prune_finished(10_000, JOBS).unwrap();
            (n, t.elapsed())
        })
    };
    let (mut slowest, mut enqueues) = (Duration::ZERO, 0);
    while !pruner.is_finished() {
        let t = Instant::now();
        enqueue_one(&store, &handler, &schema);
        slowest = slowest.max(t.elapsed());
        enqueues += 1;
    }
    let (pruned, took) = pruner.join().unwrap();
    println!(
        "prune_stall ({engine}): {pruned} jobs pruned in one pass in {:.1} ms; \
         {enqueues} enqueues meanwhile, the slowest {:.1} ms",
        took.as_secs_f64() * 1e3,
        slowest.as_secs_f64() * 1e3
    );
    drop(store);
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
}

fn enqueue_one(store: &JobStore, handler: &Did, schema: &HandlerSchema) {
    store
        .enqueue(handler, schema, &JobRequest::default(), 5_000)
        .unwrap();
}
