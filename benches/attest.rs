//! Attestation verification cost next to the raw ed25519 verify it is built on.
//!
//! `cargo bench --bench attest`; results and ratios are recorded in
//! BENCHMARKS.md.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use std::hint::black_box;

use pulse_ledger::{
    Action, Attestation, Did, Family, HandlerSchema, Schema, Statement, sign_statement,
    signing_message, verify_attestation, verify_chain,
};

fn key(n: u8) -> (SigningKey, Did) {
    let sk = SigningKey::from_bytes(&[n; 32]);
    let did = Did::from_verifying_key(&sk.verifying_key()).unwrap();
    (sk, did)
}

/// A 10-statement chain: register, 8 updates, revoke.
fn chain() -> Vec<Attestation> {
    let (sk, did) = key(1);
    let (_, plugin) = key(2);
    let schema = HandlerSchema::new("python.script", "1.0.0", plugin);
    let mut st = Statement {
        family: Family::Handler,
        subject: did.clone(),
        signer: did,
        seq: 0,
        prev: None,
        issued_at: 1_767_225_600_000,
        action: Action::Register(Schema::Handler(schema.clone())),
    };
    let mut out: Vec<Attestation> = Vec::new();
    for i in 0..10u64 {
        if let Some(prev) = out.last() {
            st.seq = i;
            st.prev = Some(prev.id());
            st.issued_at += 1;
            st.action = if i == 9 {
                Action::Revoke { reason: None }
            } else {
                let mut s = schema.clone();
                s.version = format!("1.0.{i}");
                Action::Update(Schema::Handler(s))
            };
        }
        out.push(sign_statement(&st, &sk, None).unwrap());
    }
    out
}

fn benches(c: &mut Criterion) {
    let atts = chain();
    let genesis = atts[0].clone();
    let (sk, _) = key(1);
    let msg = signing_message(genesis.body());
    let sig = sk.sign(&msg);
    let vk = sk.verifying_key();

    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ed25519_verify_strict_raw", |b| {
        b.iter(|| vk.verify_strict(black_box(&msg), black_box(&sig)).unwrap())
    });
    let key_bytes = vk.to_bytes();
    g.bench_function("ed25519_key_from_bytes_and_verify_strict_raw", |b| {
        b.iter(|| {
            ed25519_dalek::VerifyingKey::from_bytes(black_box(&key_bytes))
                .unwrap()
                .verify_strict(black_box(&msg), black_box(&sig))
                .unwrap()
        })
    });
    g.bench_function("did_parse", |b| {
        let text = genesis.statement().subject.to_string();
        b.iter(|| Did::parse(black_box(&text)).unwrap())
    });
    g.bench_function("verify_attestation", |b| {
        b.iter(|| verify_attestation(black_box(genesis.envelope())).unwrap())
    });
    g.finish();

    let envs: Vec<&[u8]> = atts.iter().map(|a| a.envelope()).collect();
    let mut g = c.benchmark_group("chain");
    g.throughput(Throughput::Elements(envs.len() as u64));
    g.bench_function("verify_chain_10", |b| {
        b.iter(|| verify_chain(black_box(&envs)).unwrap())
    });
    g.finish();

    let st = genesis.statement().clone();
    c.bench_function("sign_statement", |b| {
        b.iter(|| sign_statement(black_box(&st), &sk, None).unwrap())
    });
}

criterion_group!(attest, benches);
criterion_main!(attest);
