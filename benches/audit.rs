//! The audit rate of a large log (BENCHMARKS.md, "Audit"), next to two
//! ceilings measured in the same run:
//!
//! - raw: `verify_strict` of distinct signatures on one thread (the
//!   audit target's yardstick);
//! - batched, all cores: ed25519 batch verification of distinct
//!   signatures in the audit's batches of 64 on every core, nothing else
//!   (the most any batched, all-core audit can reach);
//! - auditor: `LogAuditor` over a stopped data dir's entries, all cores
//!   (what `verify log` does per entry);
//! - `verify log --data-dir` and `verify log --server` through the real
//!   binary, end to end.
//!
//! `cargo bench --bench audit` builds a 1,000,000-entry log first (a few
//! minutes). `AUDIT_BENCH_ENTRIES=N` changes the size; `AUDIT_BENCH_DIR=DIR`
//! keeps the log there and reuses it on the next run.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use ed25519_dalek::SigningKey;
use pulse_ledger::audit::{LogAuditor, available_threads};
use pulse_ledger::ledger::{Ledger, LedgerConfig, StoredLog, verify_checkpoint};
use pulse_ledger::{
    Action, Attestation, Did, Family, HandlerSchema, PluginSchema, Schema, Statement,
    sign_statement,
};

const ORIGIN: &str = "bench.example/audit";
const BATCH: u64 = 10_000;

fn key(i: u64) -> (SigningKey, Did) {
    let sk = SigningKey::from_bytes(&blake3::derive_key(
        "pulse-ledger audit bench",
        &i.to_le_bytes(),
    ));
    let did = Did::from_verifying_key(&sk.verifying_key()).unwrap();
    (sk, did)
}

fn register(i: u64, plugin: &Did) -> (Attestation, SigningKey) {
    let (sk, did) = key(i);
    let st = Statement {
        family: Family::Handler,
        subject: did.clone(),
        signer: did,
        seq: 0,
        prev: None,
        issued_at: 1_000,
        action: Action::Register(Schema::Handler(HandlerSchema::new(
            format!("bench.h{i}"),
            "1.0.0",
            plugin.clone(),
        ))),
    };
    (sign_statement(&st, &sk, None).unwrap(), sk)
}

fn update(prev: &Attestation, sk: &SigningKey, plugin: &Did) -> Attestation {
    let p = prev.statement();
    let st = Statement {
        family: Family::Handler,
        subject: p.subject.clone(),
        signer: p.subject.clone(),
        seq: 1,
        prev: Some(prev.id()),
        issued_at: 1_001,
        action: Action::Update(Schema::Handler(HandlerSchema::new(
            "bench.updated",
            "1.1.0",
            plugin.clone(),
        ))),
    };
    sign_statement(&st, sk, None).unwrap()
}

/// Envelopes for log indexes `start..end` (index 0 is the plugin; then
/// handlers, every tenth followed by an update).
fn envelopes(start: u64, end: u64, plugin: &Did) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = start.max(1);
    while out.len() < (end - start) as usize {
        let (h, sk) = register(i, plugin);
        out.push(h.envelope().to_vec());
        if i % 10 == 0 {
            out.push(update(&h, &sk, plugin).envelope().to_vec());
        }
        i += 1;
    }
    out.truncate((end - start) as usize);
    out
}

fn build(dir: &Path, n: u64) {
    let ledger = Ledger::open(LedgerConfig::new(dir, ORIGIN)).unwrap();
    let (psk, pdid) = key(u64::MAX);
    let p = sign_statement(
        &Statement {
            family: Family::Plugin,
            subject: pdid.clone(),
            signer: pdid.clone(),
            seq: 0,
            prev: None,
            issued_at: 1_000,
            action: Action::Register(Schema::Plugin(PluginSchema::new("bench", "1.0.0"))),
        },
        &psk,
        None,
    )
    .unwrap();
    ledger.append(p.envelope()).unwrap();
    // Handler numbers advance by batch: each batch signs its own handlers
    // (on every core) while the ledger appends the previous one.
    let started = Instant::now();
    let mut next_handler = 1u64;
    while ledger.size() < n {
        let want = BATCH.min(n - ledger.size());
        let threads = available_threads() as u64;
        let per = want.div_ceil(threads);
        let first = next_handler;
        let parts: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
            (0..threads)
                .map(|t| {
                    let pdid = &pdid;
                    s.spawn(move || {
                        // ~1.1 entries per handler number: handlers are
                        // spaced so parts never overlap.
                        let lo = first + t * per;
                        envelopes(lo, lo + per, pdid)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect()
        });
        next_handler = first + threads * per;
        let batch: Vec<Vec<u8>> = parts.into_iter().flatten().take(want as usize).collect();
        for r in ledger.append_batch(&batch) {
            r.unwrap();
        }
        eprint!(
            "\rbuilding the log: {}/{n} entries ({:.0}/s)",
            ledger.size(),
            ledger.size() as f64 / started.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    ledger.close();
}

fn auditor_rate(dir: &Path, did: &Did) -> (u64, f64) {
    let t = Instant::now();
    let stored = StoredLog::open(dir).unwrap();
    let cp = verify_checkpoint(&stored.checkpoint, did).unwrap();
    let mut a = LogAuditor::new(available_threads());
    let mut start = 0;
    while start < cp.size {
        let end = (start + 4_000).min(cp.size);
        a.push(&stored.entries(start, end).unwrap()).unwrap();
        start = end;
    }
    let s = a.finish(&cp).unwrap();
    (s.entries, s.entries as f64 / t.elapsed().as_secs_f64())
}

fn cli_rate(args: &[&str], entries: u64) -> f64 {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args(args)
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    entries as f64 / secs
}

fn main() {
    let n: u64 = std::env::var("AUDIT_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::var("AUDIT_BENCH_DIR").map_or_else(
        |_| std::env::temp_dir().join(format!("pulse-ledger-audit-bench-{n}")),
        PathBuf::from,
    );
    let ledger_did = |dir: &Path| {
        let l = Ledger::open(LedgerConfig::new(dir, ORIGIN)).unwrap();
        let (size, did) = (l.size(), l.log_did().clone());
        l.close();
        (size, did)
    };
    if !dir.join("db").exists() || ledger_did(&dir).0 != n {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        build(&dir, n);
    }
    let (_, did) = ledger_did(&dir);
    let threads = available_threads();
    let raw = pulse_ledger::loadgen::verify_rate();
    let batched = pulse_ledger::loadgen::batch_verify_rate(threads);
    let (entries, lib) = auditor_rate(&dir, &did);
    let did_text = did.to_string();
    let dir_text = dir.display().to_string();
    let data_dir = cli_rate(
        &[
            "verify",
            "log",
            "--data-dir",
            &dir_text,
            "--log-key",
            &did_text,
        ],
        entries,
    );
    // The same log served, audited over gRPC.
    let mut server = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-name",
            ORIGIN,
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = BufReader::new(server.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let url = format!("http://{}", first.split_whitespace().nth(3).unwrap());
    let remote = cli_rate(
        &["verify", "log", "--server", &url, "--log-key", &did_text],
        entries,
    );
    let _ = server.kill();
    let _ = server.wait();
    println!("audit of a {entries}-entry log, {threads} threads");
    println!(
        "{:<44} {:>12} {:>8} {:>8}",
        "measure", "per second", "÷ raw", "÷ batch"
    );
    println!(
        "{:<44} {:>12.0} {:>8} {:>8.2}",
        "raw ed25519 verify_strict, one core",
        raw,
        "1.00",
        raw / batched
    );
    println!(
        "{:<44} {:>12.0} {:>8.2} {:>8}",
        format!(
            "ed25519 batch verify ({}/batch), {threads} cores",
            pulse_ledger::loadgen::VERIFY_BATCH
        ),
        batched,
        batched / raw,
        "1.00"
    );
    for (name, rate) in [
        ("LogAuditor over the data dir's entries", lib),
        ("verify log --data-dir (entries + store)", data_dir),
        ("verify log --server (download + verify)", remote),
    ] {
        println!(
            "{name:<44} {rate:>12.0} {:>8.2} {:>8.2}",
            rate / raw,
            rate / batched
        );
    }
}
