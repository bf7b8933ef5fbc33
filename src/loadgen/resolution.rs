//! The cost of resolving a job to its plugin (spec/plugin.md,
//! "Resolution"): a verdict from the cache, and a cold resolution of a
//! handler whose chain has 10 statements.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::bench_key;
use crate::ledger::{Ledger, LedgerConfig};
use crate::plugin::{ChainRouter, Sessions, resolve_chains};
use crate::{
    Action, Attestation, Family, HandlerSchema, PluginSchema, Schema, Statement, sign_statement,
};

fn signed(st: &Statement, sk: &ed25519_dalek::SigningKey) -> Result<Attestation, String> {
    sign_statement(st, sk, None).map_err(|e| e.to_string())
}

/// (cached µs, cold µs) per resolution, on a ledger in `dir`.
///
/// # Errors
/// The ledger could not be written or read.
pub fn resolution_cost(dir: &Path) -> Result<(f64, f64), String> {
    let ledger = Arc::new(
        Ledger::open(LedgerConfig::new(
            dir.join("resolve"),
            "bench.example/resolve",
        ))
        .map_err(|e| e.to_string())?,
    );
    let (psk, pdid) = bench_key("resolve-plugin", 0);
    let (hsk, hdid) = bench_key("resolve-handler", 0);
    let base = |family, seq, prev: Option<&Attestation>, action| Statement {
        family,
        subject: if family == Family::Plugin {
            pdid.clone()
        } else {
            hdid.clone()
        },
        signer: if family == Family::Plugin {
            pdid.clone()
        } else {
            hdid.clone()
        },
        seq,
        prev: prev.map(Attestation::id),
        issued_at: 1_000 + seq,
        action,
    };
    let p = signed(
        &base(
            Family::Plugin,
            0,
            None,
            Action::Register(Schema::Plugin(PluginSchema::new("bench", "1.0.0"))),
        ),
        &psk,
    )?;
    ledger.append(p.envelope()).map_err(|e| e.to_string())?;
    let mut prev = signed(
        &base(
            Family::Handler,
            0,
            None,
            Action::Register(Schema::Handler(HandlerSchema::new(
                "noop",
                "1.0.0",
                pdid.clone(),
            ))),
        ),
        &hsk,
    )?;
    ledger.append(prev.envelope()).map_err(|e| e.to_string())?;
    for seq in 1..10 {
        let schema = HandlerSchema::new("noop", format!("1.0.{seq}"), pdid.clone());
        let next = signed(
            &base(
                Family::Handler,
                seq,
                Some(&prev),
                Action::Update(Schema::Handler(schema)),
            ),
            &hsk,
        )?;
        ledger.append(next.envelope()).map_err(|e| e.to_string())?;
        prev = next;
    }
    let mut router = ChainRouter::new(Arc::clone(&ledger), Arc::new(Sessions::default()));
    router
        .verdict(&hdid)
        .map_err(|e| e.to_string())?
        .map_err(|(why, d)| format!("{}: {d}", why.as_str()))?;
    let n = 1_000_000;
    let t = Instant::now();
    for _ in 0..n {
        let _ = std::hint::black_box(router.verdict(&hdid));
    }
    let cached = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let n = 2_000;
    let t = Instant::now();
    for _ in 0..n {
        let _ = std::hint::black_box(resolve_chains(&ledger, &hdid));
    }
    let cold = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    ledger.close();
    Ok((cached, cold))
}
