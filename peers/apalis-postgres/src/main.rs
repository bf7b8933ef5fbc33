//! apalis + PostgreSQL running N no-op jobs, for `pulse-ledger bench
//! --store URL --peer-apalis-postgres BIN`:
//!
//! ```text
//! apalis-postgres-peer N URL [--concurrency C] [--workers W]
//! ```
//!
//! URL names a database on the same PostgreSQL server as the bench's store
//! (the same durability: the server's synchronous commit). The peer makes
//! its `apalis` schema there and drops it at the end (it refuses a
//! database that has one already).
//! Prints one JSON object: the jobs, the rate and every setting the rate
//! depends on. Done means stored as done (apalis's ack committed), as
//! pulse-ledger's jobs count once their result is stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_postgres::{PgPool, PostgresStorage};

async fn noop(_job: u64, done: Data<Arc<AtomicUsize>>) -> Result<(), BoxDynError> {
    done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let url = args.next().unwrap_or_else(|| {
        eprintln!("apalis-postgres-peer: N URL [--concurrency C] [--workers W]");
        std::process::exit(2)
    });
    let (mut concurrency, mut workers) = (64usize, 1usize);
    while let Some(a) = args.next() {
        let v: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
        match a.as_str() {
            "--concurrency" => concurrency = v,
            "--workers" => workers = v,
            _ => {
                eprintln!("apalis-postgres-peer: unknown flag {a}");
                std::process::exit(2)
            }
        }
    }
    let pool = PgPool::connect(&url).await.expect("connect");
    // The peer's tables are its own and go when it ends: it never touches
    // an apalis schema it did not make.
    let (taken,): (bool,) = sqlx::query_as("SELECT to_regnamespace('apalis') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .expect("schema check");
    if taken {
        eprintln!("apalis-postgres-peer: the database already has an apalis schema");
        std::process::exit(2)
    }
    PostgresStorage::setup(&pool).await.expect("setup");
    let mut backend: PostgresStorage<u64> = PostgresStorage::new(&pool);
    let start = Instant::now();
    // Enqueued in batches of 500, as `pulse-ledger bench` enqueues.
    let mut next = 0u64;
    while next < n as u64 {
        let end = (next + 500).min(n as u64);
        let mut batch = futures::stream::iter(next..end);
        backend.push_stream(&mut batch).await.expect("push");
        next = end;
    }
    let enqueued = start.elapsed().as_secs_f64();
    let done = Arc::new(AtomicUsize::new(0));
    let per_worker = concurrency.div_ceil(workers);
    let runs: Vec<_> = (0..workers)
        .map(|w| {
            let worker = WorkerBuilder::new(format!("peer-{w}"))
                .backend(backend.clone())
                .data(Arc::clone(&done))
                .concurrency(per_worker)
                .build(noop);
            tokio::spawn(async move { worker.run().await })
        })
        .collect();
    while done.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ran = start.elapsed().as_secs_f64();
    loop {
        let (stored,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM apalis.jobs WHERE status = 'Done'")
                .fetch_one(&pool)
                .await
                .expect("count done jobs");
        if stored as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    for run in runs {
        run.abort();
    }
    sqlx::query("DROP SCHEMA apalis CASCADE")
        .execute(&pool)
        .await
        .expect("drop the peer's schema");
    pool.close().await;
    println!(
        "{}",
        serde_json::json!({
            "jobs": n, "jobs_per_second": n as f64 / secs, "enqueue_seconds": enqueued,
            "handlers_done_seconds": ran, "concurrency": concurrency, "workers": workers,
            "durability": "the server's synchronous commit",
        })
    );
}
