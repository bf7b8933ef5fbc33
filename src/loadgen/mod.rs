//! The load generator behind `pulse-ledger bench` (BENCHMARKS.md): every
//! figure next to the physical ceiling it is a fraction of, measured in the
//! same run on the same machine — ed25519 verification on one core, fsyncs
//! on the data dir's disk, a bare gRPC round trip to the same plugin.

mod ceilings;
mod cpu;
mod cpu_timeline;
mod jobs;
mod registrations;
mod resolution;
mod table;
mod targets;

pub use ceilings::{
    VERIFY_BATCH, bare_plugin_rate, batch_verify_rate, fsync_append_rate, fsync_rate, verify_rate,
};
pub use cpu::{CpuReading, MachineCpu, PhaseCpu, process_cpu};
pub use cpu_timeline::{CPU_INTERVAL, CpuTimeline};
pub use jobs::{
    Arrival, BENCH_PLUGIN_NAME, JobBench, JobFigures, JobSample, StageBreakdown, job_rate,
    register_test_plugin,
};
pub use registrations::{registration_rate, registration_stream_rate, submit_latency};
pub use resolution::resolution_cost;
pub use table::{Row, Table};
pub use targets::{Bound, TARGETS, Target, misses};

use std::path::PathBuf;

use ed25519_dalek::SigningKey;

use crate::Did;

/// What to measure, and with what.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// A scratch directory (data dirs, keys, probe files).
    pub dir: PathBuf,
    /// The `pulse-ledger` binary to run as the server.
    pub server_bin: PathBuf,
    /// The test plugin binary (`pulse-test-plugin`).
    pub plugin_bin: PathBuf,
    /// Jobs for the throughput run.
    pub jobs: usize,
    /// Registrations per concurrency level.
    pub registrations: usize,
    /// Seconds of open-loop arrivals for the latency run.
    pub latency_secs: f64,
}

/// A deterministic key for benchmark subjects (never a real key).
pub fn bench_key(label: &str, i: u64) -> (SigningKey, Did) {
    let mut seed = blake3::Hasher::new_derive_key("pulse-ledger bench keys");
    seed.update(label.as_bytes());
    seed.update(&i.to_le_bytes());
    let sk = SigningKey::from_bytes(seed.finalize().as_bytes());
    let did = Did::from_verifying_key(&sk.verifying_key())
        .unwrap_or_else(|e| unreachable!("a derived key is a valid key: {e}"));
    (sk, did)
}

/// The signed envelope of a genesis statement (`family.register` with
/// `action`'s schema) by `sk`, the subject's own key.
///
/// # Errors
/// The statement breaks a rule (never, for the schemas the bench makes).
pub fn genesis_envelope(
    sk: &SigningKey,
    did: &Did,
    family: crate::Family,
    action: crate::Action,
) -> Result<Vec<u8>, String> {
    let st = crate::Statement {
        family,
        subject: did.clone(),
        signer: did.clone(),
        seq: 0,
        prev: None,
        issued_at: 1_000,
        action,
    };
    crate::sign_statement(&st, sk, None)
        .map(|a| a.envelope().to_vec())
        .map_err(|e| e.to_string())
}

/// A plugin's genesis statement, for key `(label, i)`.
///
/// # Errors
/// As [`genesis_envelope`].
pub fn plugin_genesis(label: &str, i: u64) -> Result<Vec<u8>, String> {
    let (sk, did) = bench_key(label, i);
    genesis_envelope(
        &sk,
        &did,
        crate::Family::Plugin,
        crate::Action::Register(crate::Schema::Plugin(crate::PluginSchema::new(
            "bench", "1.0.0",
        ))),
    )
}

/// The key the bench's test plugin proves (never a real key).
pub fn bench_plugin_key() -> (SigningKey, Did) {
    bench_key("plugin", 0)
}

/// Unix time in microseconds: the clock the stamp handler reports in, and
/// the server's timeline.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The p-th quantile of sorted microseconds, in milliseconds.
pub fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}
