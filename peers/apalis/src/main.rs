//! apalis + SQLite running N no-op jobs, for `pulse-ledger bench
//! --peer-apalis`: prints `{"jobs": N, "jobs_per_second": R, "backlog": N}`.
//!
//! Durability as pulse-ledger's: every connection of the pool uses WAL with
//! `synchronous=FULL` (an fsync per commit), set in the connect options so
//! it holds on each pooled connection.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use apalis::prelude::*;
use apalis_sqlite::SqliteStorage;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let dir = args.next().unwrap_or_else(|| std::env::temp_dir().display().to_string());
    let path = format!("{dir}/apalis-peer-{}.db", std::process::id());
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
        .expect("sqlite url")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .expect("open sqlite");
    SqliteStorage::setup(&pool).await.expect("setup");
    let mut backend: SqliteStorage<u64> = SqliteStorage::new(&pool);
    let start = Instant::now();
    // Enqueued in batches of 500, as `pulse-ledger bench` enqueues.
    let mut next = 0u64;
    while next < n as u64 {
        let end = (next + 500).min(n as u64);
        let mut batch = futures::stream::iter(next..end);
        backend.push_stream(&mut batch).await.expect("push");
        next = end;
    }
    let done = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&done);
    async fn noop(_job: u64, wrk: WorkerContext, done: Data<Arc<AtomicUsize>>) -> Result<(), BoxDynError> {
        let _ = wrk;
        done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    let worker = WorkerBuilder::new("peer")
        .backend(backend)
        .data(counter)
        .concurrency(64)
        .build(noop);
    let run = tokio::spawn(async move { worker.run().await });
    while done.load(Ordering::Relaxed) < n {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    run.abort();
    let _ = std::fs::remove_file(&path);
    println!(
        "{}",
        serde_json::json!({"jobs": n, "jobs_per_second": n as f64 / secs, "backlog": n})
    );
}
