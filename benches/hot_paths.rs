//! Criterion benches of the hot paths behind the `pulse-ledger bench`
//! figures (BENCHMARKS.md): group-committed appends, inclusion and
//! consistency proofs (made and checked), and job enqueue and dispatch
//! through an in-process executor. Attestation and chain verification are
//! in `benches/attest.rs`.
//!
//! `cargo bench --bench hot_paths`

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use pulse_ledger::ledger::{Ledger, LedgerConfig, leaf_hash, verify_consistency, verify_inclusion};
use pulse_ledger::pulse::{
    AttemptSpec, DispatchConfig, Dispatcher, ExecEvent, Executor, JobId, JobRequest, JobStore,
    LeaseToken, Report, ReportSender,
};
use pulse_ledger::{Did, HandlerSchema};
use std::hint::black_box;

fn key(i: u64) -> (SigningKey, Did) {
    pulse_ledger::loadgen::bench_key("hot paths", i)
}

fn registration(i: u64) -> Vec<u8> {
    pulse_ledger::loadgen::plugin_genesis("hot paths", i).unwrap()
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pulse-hot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

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

fn ledger(c: &mut Criterion) {
    let dir = tempdir("ledger");
    let ledger = Ledger::open(LedgerConfig::new(&dir, "bench.example/hot")).unwrap();
    let mut next = 0u64;
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(100));
    g.sample_size(20);
    g.bench_function("append_batch_100_group_commit", |b| {
        b.iter_batched(
            || {
                let batch: Vec<Vec<u8>> = (next..next + 100).map(registration).collect();
                next += 100;
                batch
            },
            |batch| {
                for r in ledger.append_batch(&batch) {
                    r.unwrap();
                }
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
    // The proofs need a tree, whether or not the append bench ran (a
    // filter may skip it).
    while ledger.size() < 1_000 {
        let batch: Vec<Vec<u8>> = (next..next + 100).map(registration).collect();
        next += 100;
        for r in ledger.append_batch(&batch) {
            r.unwrap();
        }
    }
    let size = ledger.size();
    let entry = ledger.entry(size / 2).unwrap();
    let root = ledger.root_at(size).unwrap();
    let old = size / 3;
    let old_root = ledger.root_at(old).unwrap();
    let mut g = c.benchmark_group("proofs");
    g.bench_function("inclusion_proof_make", |b| {
        b.iter(|| ledger.inclusion_proof(size / 2, size).unwrap());
    });
    let path = ledger.inclusion_proof(size / 2, size).unwrap();
    let leaf = leaf_hash(&entry);
    g.bench_function("inclusion_proof_verify", |b| {
        b.iter(|| verify_inclusion(&leaf, size / 2, size, &path, &root).unwrap());
    });
    g.bench_function("consistency_proof_make", |b| {
        b.iter(|| ledger.consistency_proof(old, size).unwrap());
    });
    let proof = ledger.consistency_proof(old, size).unwrap();
    g.bench_function("consistency_proof_verify", |b| {
        b.iter(|| verify_consistency(old, size, &old_root, &root, &proof).unwrap());
    });
    g.finish();
    ledger.close();
    let _ = std::fs::remove_dir_all(&dir);
}

fn pulse(c: &mut Criterion) {
    let dir = tempdir("pulse");
    let ledger = Ledger::open(LedgerConfig::new(&dir, "bench.example/hot")).unwrap();
    let store = Arc::new(JobStore::open(&ledger).unwrap());
    let (_, handler) = key(1);
    let (_, plugin) = key(2);
    let schema = HandlerSchema::new("bench", "1.0.0", plugin);
    let items: Vec<_> = (0..100)
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
    let mut d = Dispatcher::new(
        Arc::clone(&store),
        Noop,
        DispatchConfig {
            max_running: 100,
            ..DispatchConfig::default()
        },
        Box::new(|_| None),
        1,
    );
    let mut g = c.benchmark_group("pulse");
    g.throughput(Throughput::Elements(100));
    g.sample_size(20);
    g.bench_function("enqueue_batch_100", |b| {
        b.iter(|| {
            for r in store.enqueue_batch(&items, 1) {
                r.unwrap();
            }
        });
    });
    // Run what the enqueue bench left, untimed.
    while d.step(2).unwrap().dispatched > 0 || !store.ready(1).unwrap().is_empty() {}
    d.step(2).unwrap();
    // Dispatch 100 queued jobs and apply their results: two steps.
    g.bench_function("dispatch_and_finish_100", |b| {
        b.iter_batched(
            || {
                for r in store.enqueue_batch(&items, 1) {
                    r.unwrap();
                }
            },
            |()| {
                while d.step(2).unwrap().dispatched > 0 || !store.ready(1).unwrap().is_empty() {}
                d.step(2).unwrap();
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
    drop(d);
    ledger.close();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Authenticating one call: an operator token (a blake3 hash and a map
/// lookup), a DID token already seen (the same, from memory), and a DID
/// token's first call (its strict signature check), next to a raw
/// ed25519 verify.
fn auth(c: &mut Criterion) {
    use pulse_ledger::auth::{
        Access, AccessCell, DidToken, Scope, TokenHash, TokenRule, new_token,
    };
    let ops = new_token().unwrap();
    let access = Access::with_tokens(vec![TokenRule {
        name: "ops".into(),
        hash: TokenHash::of(&ops).unwrap(),
        scopes: vec![Scope::Admin],
    }])
    .unwrap();
    let (_, log) = key(1);
    let (client, _) = key(2);
    let cell = AccessCell::new(access).with_did_tokens(log.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let did_token = DidToken::sign(&client, &log, now, now + 3_600_000).unwrap();
    let operator_header = format!("Bearer {ops}").into_bytes();
    let did_header = format!("Bearer {did_token}").into_bytes();
    let mut g = c.benchmark_group("auth");
    g.throughput(Throughput::Elements(1));
    g.bench_function("operator_token", |b| {
        b.iter(|| {
            cell.authenticate(Some(black_box(&operator_header)))
                .unwrap()
        })
    });
    g.bench_function("did_token_seen", |b| {
        b.iter(|| cell.authenticate(Some(black_box(&did_header))).unwrap())
    });
    g.bench_function("did_token_first_call", |b| {
        b.iter(|| DidToken::verify(black_box(&did_token), &log, now + 1).unwrap())
    });
    let msg = b"pulse-ledger/did-token/v1\0 a message of about the same size";
    use ed25519_dalek::Signer;
    let sig = client.sign(msg);
    let vk = client.verifying_key();
    g.bench_function("raw_ed25519_verify_strict", |b| {
        b.iter(|| vk.verify_strict(black_box(msg), &sig).unwrap())
    });
    g.finish();
}

/// The check every enqueue to a handler with an `input_schema` pays
/// (issue 19): a cached, compiled schema against a small JSON payload,
/// next to the plain JSON parse of the same payload.
fn payload_schema(c: &mut Criterion) {
    use pulse_ledger::pulse::{Checked, SchemaCache};
    let schema = r#"{"type":"object","required":["a","b"],
        "properties":{"a":{"type":"integer"},"b":{"type":"integer"},
        "note":{"type":"string","maxLength":256}}}"#;
    let payload = br#"{"a": 2, "b": 3, "note": "a typical small job payload"}"#;
    let cache = SchemaCache::default();
    cache.check(schema, payload, Checked::Payload).unwrap();
    let mut g = c.benchmark_group("payload_schema");
    g.throughput(Throughput::Elements(1));
    g.bench_function("check_cached", |b| {
        b.iter(|| {
            cache
                .check(schema, black_box(payload), Checked::Payload)
                .unwrap()
        })
    });
    g.bench_function("json_parse_only", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(payload)).unwrap())
    });
    g.finish();
}

criterion_group!(hot, ledger, pulse, auth, payload_schema);
criterion_main!(hot);
