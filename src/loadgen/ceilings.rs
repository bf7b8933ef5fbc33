//! The physical ceilings, measured in the bench's own run: strict ed25519
//! verification on one core (and batch verification on every core, for
//! the audit), fsyncs on the data dir's disk into a preallocated file, and
//! bare gRPC round trips to the test plugin with no Pulse in between.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, Signer, VerifyingKey};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use super::bench_key;
use crate::api::proto::{self, plugin_client::PluginClient};
use crate::plugin::parse_handshake;

/// 20,000 distinct (key, message, signature) triples, the same in every
/// verification ceiling.
fn signed_messages() -> Vec<(VerifyingKey, Vec<u8>, Signature)> {
    (0..20_000u64)
        .map(|i| {
            let (sk, _) = bench_key("verify", i);
            let msg = i.to_le_bytes().repeat(40);
            let sig = sk.sign(&msg);
            (sk.verifying_key(), msg, sig)
        })
        .collect()
}

/// Strict verifications per second on this thread: 20,000 distinct
/// signatures, median of 3 runs.
pub fn verify_rate() -> f64 {
    let sigs = signed_messages();
    let mut rates: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            for (vk, msg, sig) in &sigs {
                let _ = std::hint::black_box(vk.verify_strict(msg, sig));
            }
            sigs.len() as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[1]
}

/// Bytes the fsync probe preallocates: written as zeros and synced before
/// the timed loop, then overwritten in place 512 bytes at a time (wrapping
/// round), so no timed fdatasync has to extend the file or allocate
/// blocks. 16 MiB: more than a second of 512-byte writes at 30k fsyncs/s.
const FSYNC_PROBE_BYTES: u64 = 16 << 20;

/// fdatasync calls per second on the disk holding `dir`: 512-byte writes
/// in place into a preallocated file, one second. This is the durable
/// write ceiling (a preallocated journal, like fjall's, cannot beat it);
/// [`fsync_append_rate`] is the slower case of a growing file.
///
/// # Errors
/// I/O errors, as text.
pub fn fsync_rate(dir: &Path) -> Result<f64, String> {
    fsync_probe(dir, true)
}

/// fdatasync calls per second on the disk holding `dir` when every write
/// appends 512 bytes to a growing file (each sync also persists the new
/// length and blocks), one second: for comparison with [`fsync_rate`].
///
/// # Errors
/// I/O errors, as text.
pub fn fsync_append_rate(dir: &Path) -> Result<f64, String> {
    fsync_probe(dir, false)
}

fn fsync_probe(dir: &Path, preallocated: bool) -> Result<f64, String> {
    let path = dir.join("fsync-probe");
    let result = fsync_loop(&path, preallocated).map_err(|e| format!("{}: {e}", path.display()));
    let _ = std::fs::remove_file(&path);
    result
}

fn fsync_loop(path: &Path, preallocated: bool) -> std::io::Result<f64> {
    use std::os::unix::fs::FileExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    if preallocated {
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..FSYNC_PROBE_BYTES / zeros.len() as u64 {
            f.write_all(&zeros)?;
        }
        f.sync_all()?;
    }
    let mut block = [0u8; 512];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        block[..8].copy_from_slice(&n.to_le_bytes());
        if preallocated {
            f.write_all_at(&block, (n * 512) % FSYNC_PROBE_BYTES)?;
        } else {
            f.write_all(&block)?;
        }
        f.sync_data()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Signatures per ed25519 batch in [`batch_verify_rate`]: the audit's
/// batch size (src/audit/batch.rs). The ceiling batches with
/// ed25519-dalek's `verify_batch`, without the audit's torsion screen: the
/// most any batched check of these signatures can reach.
pub const VERIFY_BATCH: usize = 128;

/// ed25519 batch verification on `threads` threads at once: signatures/s
/// over 20,000 distinct signatures checked in batches of
/// [`VERIFY_BATCH`], the signatures split evenly between the threads;
/// median of 3 runs. The ceiling for anything that verifies in batches on
/// every core (the log audit): nothing but the curve arithmetic.
pub fn batch_verify_rate(threads: usize) -> f64 {
    let threads = threads.max(1);
    let sigs = signed_messages();
    let per_thread = sigs.len().div_ceil(threads);
    let mut rates: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            std::thread::scope(|s| {
                for part in sigs.chunks(per_thread) {
                    s.spawn(move || {
                        for batch in part.chunks(VERIFY_BATCH) {
                            let msgs: Vec<&[u8]> = batch.iter().map(|(_, m, _)| &m[..]).collect();
                            let sigs: Vec<_> = batch.iter().map(|(_, _, s)| *s).collect();
                            let keys: Vec<_> = batch.iter().map(|(k, _, _)| *k).collect();
                            let ok = ed25519_dalek::verify_batch(&msgs, &sigs, &keys);
                            assert!(ok.is_ok(), "a batch of valid signatures failed");
                        }
                    });
                }
            });
            sigs.len() as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[1]
}

/// Runs one ExecuteJob(noop) to its result.
async fn execute(client: &mut PluginClient<Channel>, n: u64) -> Result<(), String> {
    let req = proto::ExecuteJobRequest {
        job_id: n.to_be_bytes().repeat(2),
        lease: vec![1; 16],
        attempt: 1,
        handler_name: "noop".into(),
        deadline_ms: u64::MAX,
        heartbeat_interval_ms: 10_000,
        ..Default::default()
    };
    let mut s = client
        .execute_job(req)
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut done = false;
    while let Some(e) = s.next().await {
        let e = e.map_err(|e| e.to_string())?;
        done |= matches!(e.event, Some(proto::job_event::Event::Result(_)));
    }
    if done {
        Ok(())
    } else {
        Err("the plugin sent no result".into())
    }
}

/// Bare gRPC to the test plugin started from `plugin_bin` with
/// `plugin_key`: (calls/s with `in_flight` concurrent calls over `n`
/// calls, p50 ms, p99 ms of one call at a time).
///
/// # Errors
/// The plugin could not be started or answered wrongly.
pub async fn bare_plugin_rate(
    plugin_bin: &Path,
    plugin_key: &Path,
    n: usize,
    in_flight: usize,
) -> Result<(f64, f64, f64), String> {
    let mut child = Command::new(plugin_bin)
        .arg("--key")
        .arg(plugin_key)
        // Exits when this process does.
        .env(crate::plugin::sdk::WATCH_STDIN_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", plugin_bin.display()))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
    }
    let result = async {
        let addr = parse_handshake(line.trim_end())?;
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let client = PluginClient::new(channel);
        let mut one = client.clone();
        for i in 0..500 {
            execute(&mut one, i).await?;
        }
        let mut lat = Vec::new();
        for i in 0..2_000 {
            let t = Instant::now();
            execute(&mut one, i).await?;
            lat.push(t.elapsed().as_micros() as u64);
        }
        lat.sort_unstable();
        let next = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let tasks: Vec<_> = (0..in_flight)
            .map(|_| {
                let (mut c, next) = (client.clone(), Arc::clone(&next));
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n as u64 {
                            return Ok::<(), String>(());
                        }
                        execute(&mut c, i).await?;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.map_err(|e| e.to_string())??;
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        Ok((
            rate,
            super::percentile_ms(&lat, 0.5),
            super::percentile_ms(&lat, 0.99),
        ))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_fsync_probes_measure_and_leave_no_file_behind() {
        let dir = std::env::temp_dir().join(format!("pulse-fsync-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for rate in [fsync_rate(&dir), fsync_append_rate(&dir)] {
            let r = rate.unwrap();
            assert!(r.is_finite() && r > 0.0, "{r}");
        }
        assert!(!dir.join("fsync-probe").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
