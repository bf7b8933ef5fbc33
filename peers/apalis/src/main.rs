//! apalis + SQLite running N no-op jobs, for `pulse-ledger bench
//! --peer-apalis`:
//!
//! ```text
//! apalis-peer N DIR [--batch-size B] [--poll-interval-ms P] [--concurrency C]
//! ```
//!
//! prints one JSON object: the jobs, the rate, the backlog and every
//! setting the rate depends on, so the bench can state them in its row.
//!
//! Durability as pulse-ledger's: every connection of the pool uses WAL with
//! `synchronous=FULL` (an fsync per commit). apalis-sqlite's `setup` runs
//! `PRAGMA synchronous = OFF` (and its cache and temp-store pragmas) on
//! whichever one pooled connection it gets, so it runs on a pool of its
//! own that is closed before the measured pool opens; the measured pool
//! sets apalis's pragmas and `synchronous=FULL` as connect options, which
//! apply to every connection it opens, and the peer reads the setting back
//! from every connection before the run.
//!
//! Tuned for throughput (the defaults are apalis 1.0's): `--batch-size` is
//! how many jobs one fetch locks (apalis-sqlite's `Config::batch_size`,
//! default 10), `--poll-interval-ms` wakes the worker on an interval as
//! well as when a job finishes (`BackendExt::poll_with_interval`; 0, the
//! default, adds no interval: apalis 1.0 then fetches again only when a
//! running job finishes or a heartbeat is due), `--concurrency` is how many
//! jobs run at once (64, as `pulse-ledger bench`).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_sqlite::{Config, SqliteStorage};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// Pool size: sqlx's default for SQLite.
const CONNECTIONS: u32 = 10;

struct Settings {
    jobs: usize,
    dir: String,
    batch_size: usize,
    poll_interval_ms: u64,
    concurrency: usize,
    workers: usize,
}

fn settings() -> Result<Settings, String> {
    let mut s = Settings {
        jobs: 20_000,
        dir: std::env::temp_dir().display().to_string(),
        batch_size: 10,
        poll_interval_ms: 0,
        concurrency: 64,
        workers: 1,
    };
    let mut args = std::env::args().skip(1);
    let mut positional = 0;
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .and_then(|v| v.parse::<u64>().map_err(|e| format!("{name}: {e}")))
        };
        match a.as_str() {
            "--batch-size" => s.batch_size = value(&a)?.max(1) as usize,
            "--poll-interval-ms" => s.poll_interval_ms = value(&a)?,
            "--concurrency" => s.concurrency = value(&a)?.max(1) as usize,
            "--workers" => s.workers = value(&a)?.max(1) as usize,
            _ if a.starts_with("--") => return Err(format!("unknown flag {a}")),
            _ if positional == 0 => {
                s.jobs = a.parse().map_err(|e| format!("N: {e}"))?;
                positional += 1;
            }
            _ if positional == 1 => {
                s.dir = a;
                positional += 1;
            }
            _ => return Err(format!("unexpected argument {a}")),
        }
    }
    Ok(s)
}

async fn noop(
    _job: u64,
    _wrk: WorkerContext,
    done: Data<Arc<AtomicUsize>>,
) -> Result<(), BoxDynError> {
    done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[tokio::main]
async fn main() {
    let s = settings().unwrap_or_else(|e| {
        eprintln!("apalis-peer: {e}");
        std::process::exit(2)
    });
    let n = s.jobs;
    let path = format!("{}/apalis-peer-{}.db", s.dir, std::process::id());
    let url = format!("sqlite://{path}");
    // apalis's own setup (schema, and its per-connection pragmas on one
    // connection) on a pool that is then closed.
    let setup = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::from_str(&url)
                .expect("sqlite url")
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal),
        )
        .await
        .expect("open sqlite");
    SqliteStorage::setup(&setup).await.expect("setup");
    setup.close().await;
    // The measured pool: apalis's pragmas, but fsync per commit, on every
    // connection.
    let options = SqliteConnectOptions::from_str(&url)
        .expect("sqlite url")
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .pragma("temp_store", "MEMORY")
        .pragma("cache_size", "64000")
        .pragma("journal_size_limit", "67108864");
    let pool = SqlitePoolOptions::new()
        .max_connections(CONNECTIONS)
        .min_connections(CONNECTIONS)
        .connect_with(options)
        .await
        .expect("open sqlite");
    // Read synchronous back from every connection (all held at once, so
    // each is a different one): 2 is FULL.
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut c = pool.acquire().await.expect("connection");
        let (sync,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(&mut *c)
            .await
            .expect("PRAGMA synchronous");
        assert_eq!(sync, 2, "a pooled connection is not synchronous=FULL");
        held.push(c);
    }
    drop(held);

    let config = Config::default()
        .queue(std::any::type_name::<u64>())
        .batch_size(s.batch_size);
    let mut backend: SqliteStorage<u64> = SqliteStorage::new(&pool).with_config(config);
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
    // `workers` workers (each its own name, so its own locks), sharing
    // `concurrency` running jobs.
    let per_worker = s.concurrency.div_ceil(s.workers);
    let runs: Vec<_> = (0..s.workers)
        .map(|w| {
            let builder = WorkerBuilder::new(format!("peer-{w}"));
            let backend = backend.clone();
            let done = Arc::clone(&done);
            if s.poll_interval_ms > 0 {
                let poll = Duration::from_millis(s.poll_interval_ms);
                let worker = builder
                    .backend(backend.poll_with_interval(poll))
                    .data(done)
                    .concurrency(per_worker)
                    .build(noop);
                tokio::spawn(async move { worker.run().await })
            } else {
                let worker = builder
                    .backend(backend)
                    .data(done)
                    .concurrency(per_worker)
                    .build(noop);
                tokio::spawn(async move { worker.run().await })
            }
        })
        .collect();
    // Done means stored as done (the ack committed), as pulse-ledger's
    // jobs count once their result is stored: the handler's own count
    // runs ahead of apalis's batched acks.
    while done.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ran = start.elapsed().as_secs_f64();
    loop {
        let (stored,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM Jobs WHERE status = 'Done'")
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
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    println!(
        "{}",
        serde_json::json!({
            "jobs": n, "jobs_per_second": n as f64 / secs, "backlog": n,
            "enqueue_seconds": enqueued, "handlers_done_seconds": ran, "batch_size": s.batch_size,
            "poll_interval_ms": s.poll_interval_ms, "concurrency": s.concurrency,
            "workers": s.workers,
            "synchronous": "FULL", "connections": CONNECTIONS,
        })
    );
}
