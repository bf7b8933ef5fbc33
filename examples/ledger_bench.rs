//! Ledger throughput and scale, measured against the machine's ceilings in
//! the same run. Results go to BENCHMARKS.md.
//!
//! ```text
//! cargo run --release --example ledger_bench -- group-commit [COUNT]
//! cargo run --release --example ledger_bench -- scale [COUNT]
//! ```
//!
//! `group-commit` (default COUNT 20000) prints the raw single-core ed25519
//! verify rate, the raw fsync rate of the data dir's disk, and appends/s
//! with 1 and with 64 concurrent appenders.
//!
//! `scale` (default COUNT 1000000) appends COUNT pre-signed handler
//! registrations with 64 appenders and prints the start and end rates, disk
//! bytes per entry, peak RSS, reopen time, and p50/p99 of subject lookups
//! and inclusion-proof generation.

#![allow(clippy::unwrap_used)] // a benchmark harness: a panic is a report

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use pulse_ledger::ledger::{Ledger, LedgerConfig};
use pulse_ledger::{Action, Did, Family, HandlerSchema, Schema, Statement};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("group-commit");
    let count: Option<u64> = args.get(1).map(|c| c.parse().expect("COUNT is a number"));
    let dir = std::env::temp_dir().join(format!("pulse-ledger-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    match mode {
        "group-commit" => group_commit(&dir, count.unwrap_or(20_000)),
        "scale" => scale(&dir, count.unwrap_or(1_000_000)),
        "reads" => reads_during_appends(&dir, count.unwrap_or(20_000)),
        other => panic!("unknown mode {other}; use group-commit, scale or reads"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn plugin_did() -> Did {
    Did::from_verifying_key(&SigningKey::from_bytes(&[0xaa; 32]).verifying_key()).unwrap()
}

/// A signed handler registration for seed `i` (signed without the
/// self-check `sign_statement` does, to pre-sign quickly).
fn registration(i: u64, plugin: &Did) -> Vec<u8> {
    let seed = blake3::derive_key("pulse-ledger bench", &i.to_le_bytes());
    let sk = SigningKey::from_bytes(&seed);
    let did = Did::from_verifying_key(&sk.verifying_key()).unwrap();
    let st = Statement {
        family: Family::Handler,
        subject: did.clone(),
        signer: did,
        seq: 0,
        prev: None,
        issued_at: 1_767_225_600_000,
        action: Action::Register(Schema::Handler(HandlerSchema::new(
            format!("bench.h{i}"),
            "1.0.0",
            plugin.clone(),
        ))),
    };
    pulse_ledger::internal::seal(st.to_body(), &[&sk])
}

/// Pre-signs `count` registrations into a file (4-byte length + bytes each)
/// using every core, so the appenders measure the ledger only.
fn presign(dir: &Path, count: u64) -> PathBuf {
    let path = dir.join("presigned.bin");
    let plugin = plugin_did();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let chunk = 10_000u64;
    let mut out = BufWriter::new(File::create(&path).unwrap());
    let mut next = 0u64;
    while next < count {
        let end = (next + chunk * threads).min(count);
        let parts: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let plugin = plugin.clone();
                    s.spawn(move || {
                        let lo = next + t * chunk;
                        let hi = (lo + chunk).min(end);
                        (lo..hi)
                            .map(|i| registration(i, &plugin))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for env in parts.into_iter().flatten() {
            out.write_all(&(env.len() as u32).to_be_bytes()).unwrap();
            out.write_all(&env).unwrap();
        }
        next = end;
    }
    out.flush().unwrap();
    path
}

struct Feed(Mutex<BufReader<File>>);

impl Feed {
    fn open(path: &Path) -> Feed {
        Feed(Mutex::new(BufReader::new(File::open(path).unwrap())))
    }
    fn next(&self) -> Option<Vec<u8>> {
        let mut r = self.0.lock().unwrap();
        let mut len = [0u8; 4];
        r.read_exact(&mut len).ok()?;
        let mut env = vec![0u8; u32::from_be_bytes(len) as usize];
        r.read_exact(&mut env).unwrap();
        Some(env)
    }
}

/// Appends everything in the feed with `appenders` threads; returns the
/// time at which every `every`-th append completed.
fn run(ledger: &Arc<Ledger>, feed: &Arc<Feed>, appenders: usize, limit: u64) -> (u64, Duration) {
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..appenders {
            let (ledger, feed, done) = (Arc::clone(ledger), Arc::clone(feed), Arc::clone(&done));
            s.spawn(move || {
                while done.load(std::sync::atomic::Ordering::Relaxed) < limit {
                    let Some(env) = feed.next() else { break };
                    ledger.append(&env).unwrap();
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    (
        done.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed(),
    )
}

/// Latency of the reads Submit and GetLogInfo make (an inclusion proof
/// against the newest head; the head itself) while 64 appenders keep the
/// writer committing: reads must not wait for the writer's fsync.
fn reads_during_appends(dir: &Path, count: u64) {
    let feed = Arc::new(Feed::open(&presign(dir, count)));
    let ledger =
        Arc::new(Ledger::open(LedgerConfig::new(dir.join("log"), "bench.example/reads")).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (ledger, stop) = (Arc::clone(&ledger), Arc::clone(&stop));
        std::thread::spawn(move || {
            let (mut heads, mut proofs) = (Vec::new(), Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let head = ledger.head();
                heads.push(t.elapsed());
                if head.size > 0 {
                    let t = Instant::now();
                    ledger.inclusion_proof(head.size / 2, head.size).unwrap();
                    proofs.push(t.elapsed());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            (heads, proofs)
        })
    };
    let (done, took) = run(&ledger, &feed, 64, count);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut heads, mut proofs) = reader.join().unwrap();
    println!(
        "appends: {done} in {:.2}s ({:.0}/s, 64 appenders)",
        took.as_secs_f64(),
        done as f64 / took.as_secs_f64()
    );
    for (name, v) in [
        ("head (GetLogInfo)", &mut heads),
        ("inclusion proof (Submit)", &mut proofs),
    ] {
        v.sort();
        let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
        println!(
            "{name}: {} reads, p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
            v.len(),
            q(0.5),
            q(0.99),
            q(0.999),
            q(1.0)
        );
    }
}

fn verify_rate() -> f64 {
    let sk = SigningKey::from_bytes(&[1; 32]);
    let msg = [7u8; 300];
    let sig = sk.sign(&msg);
    let vk = sk.verifying_key();
    let n = 5000;
    let start = Instant::now();
    for _ in 0..n {
        vk.verify_strict(std::hint::black_box(&msg), &sig).unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The loadgen's fsync ceiling: 512-byte writes in place into a
/// preallocated file, each followed by fdatasync.
fn fsync_rate(dir: &Path) -> f64 {
    pulse_ledger::loadgen::fsync_rate(dir).unwrap()
}

/// One fjall batch of one 400-byte insert committed with SyncAll, in a loop:
/// the durable-write ceiling a single appender can reach.
fn fjall_commit_rate(dir: &Path) -> f64 {
    let db = fjall::Database::builder(dir.join("fjall-probe"))
        .open()
        .unwrap();
    let ks = db
        .keyspace("probe", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let value = [3u8; 400];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        let mut b = db.batch().durability(Some(fjall::PersistMode::SyncAll));
        b.insert(&ks, n.to_be_bytes(), value);
        b.commit().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn group_commit(dir: &Path, count: u64) {
    let verify = verify_rate();
    let fsync = fsync_rate(dir);
    let fjall_rate = fjall_commit_rate(dir);
    println!("ceiling: ed25519 verify_strict, 1 core      {verify:>10.0} /s");
    println!("ceiling: fsync (512 B in place, preallocated) {fsync:>10.0} /s");
    println!("ceiling: fjall 1-insert batch, SyncAll       {fjall_rate:>10.0} /s");
    let path = presign(dir, count * 2);
    let ledger = Arc::new(Ledger::open(LedgerConfig::new(dir.join("data"), "bench/log")).unwrap());
    let feed = Arc::new(Feed::open(&path));
    for appenders in [1usize, 64] {
        let limit = if appenders == 1 { count / 4 } else { count };
        let (n, t) = run(&ledger, &feed, appenders, limit);
        let rate = n as f64 / t.as_secs_f64();
        println!(
            "appends/s with {appenders:>2} appender(s)           {rate:>10.0} /s  ({n} appends; {:.2}× fsync, {:.2}× fjall commit, {:.2}× verify ceiling)",
            rate / fsync,
            rate / fjall_rate,
            rate / verify
        );
    }
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            };
        }
    }
    total
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn scale(dir: &Path, count: u64) {
    let verify = verify_rate();
    println!("ceiling: ed25519 verify_strict, 1 core {verify:.0} /s");
    let t = Instant::now();
    let path = presign(dir, count);
    println!(
        "pre-signed {count} registrations in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let data = dir.join("data");
    let ledger = Arc::new(Ledger::open(LedgerConfig::new(&data, "bench/log")).unwrap());
    let feed = Arc::new(Feed::open(&path));
    let window = (count / 20).max(1);
    let mut rates = Vec::new();
    let mut appended = 0;
    while appended < count {
        let (n, t) = run(&ledger, &feed, 64, window.min(count - appended));
        appended += n;
        rates.push(n as f64 / t.as_secs_f64());
        eprintln!("  {appended:>9} appended, {:.0}/s", rates[rates.len() - 1]);
    }
    let (start_rate, end_rate) = (rates[0], rates[rates.len() - 1]);
    println!(
        "append rate, first 5 %: {start_rate:.0}/s; last 5 %: {end_rate:.0}/s; end/start {:.2}",
        end_rate / start_rate
    );
    let size = ledger.head().size;
    let plugin = plugin_did();
    let mut lookups = Vec::new();
    let mut proofs = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = x % count;
        let seed = blake3::derive_key("pulse-ledger bench", &i.to_le_bytes());
        let did = Did::from_verifying_key(&SigningKey::from_bytes(&seed).verifying_key()).unwrap();
        let t = Instant::now();
        let rec = ledger.subject(&did).unwrap();
        lookups.push(t.elapsed());
        assert_eq!(rec.plugin.as_ref(), Some(&plugin));
        let t = Instant::now();
        let _ = ledger.inclusion_proof(rec.head_index, size).unwrap();
        proofs.push(t.elapsed());
    }
    let (l50, l99) = percentiles(lookups);
    let (p50, p99) = percentiles(proofs);
    println!("subject lookup p50 {l50:?}, p99 {l99:?}");
    println!("inclusion proof p50 {p50:?}, p99 {p99:?}");
    ledger.close();
    drop(ledger);
    let bytes = dir_bytes(&data);
    println!(
        "disk: {bytes} bytes in the data dir, {:.0} bytes per entry",
        bytes as f64 / size as f64
    );
    let t = Instant::now();
    let reopened = Ledger::open(LedgerConfig::new(&data, "bench/log")).unwrap();
    println!(
        "reopen with {} entries: {:?}",
        reopened.head().size,
        t.elapsed()
    );
    println!("peak RSS: {:.0} MB", peak_rss_mb());
}
