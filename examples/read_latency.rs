//! Latency of GetLogInfo and of Submit, over gRPC, while 64 clients keep
//! the ledger's writer committing (issue 15: reads must not wait for the
//! writer's fsync). Starts `SERVER serve` on a scratch data dir, so two
//! builds of the server can be compared with one client.
//!
//! ```text
//! cargo run --release --example read_latency -- [SERVER] [REGISTRATIONS]
//! ```
//!
//! SERVER defaults to `target/release/pulse-ledger`, REGISTRATIONS to
//! 20,000. A prober calls GetLogInfo every millisecond meanwhile.

#![allow(clippy::unwrap_used)] // a benchmark harness: a panic is a report

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pulse_ledger::api::proto::{self, registry_client::RegistryClient};
use pulse_ledger::loadgen::plugin_genesis;

fn quantiles(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "{name}: {} calls, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        v.len(),
        q(0.5),
        q(0.99),
        q(0.999),
        q(1.0)
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let server = args
        .next()
        .unwrap_or_else(|| "target/release/pulse-ledger".into());
    let count: usize = args.next().map_or(20_000, |n| n.parse().unwrap());
    let dir = std::env::temp_dir().join(format!("pulse-read-latency-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = std::process::Command::new(&server)
        .args(["serve", "--listen", "127.0.0.1:0", "--submit-rate", "0"])
        .arg("--data-dir")
        .arg(&dir)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let first = std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let url = format!("http://{}", first.split_whitespace().nth(3).unwrap());
    let envelopes: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..count as u64)
            .map(|i| plugin_genesis("read-latency", i).unwrap())
            .collect(),
    );
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let (mut reg, done) = (RegistryClient::new(channel.clone()), Arc::clone(&done));
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                reg.get_log_info(proto::GetLogInfoRequest {}).await.unwrap();
                lat.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            lat
        })
    };
    let started = Instant::now();
    let submitters: Vec<_> = (0..64)
        .map(|_| {
            let (mut reg, next, envelopes) = (
                RegistryClient::new(channel.clone()),
                Arc::clone(&next),
                Arc::clone(&envelopes),
            );
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(envelope) = envelopes.get(i) else {
                        return lat;
                    };
                    let t = Instant::now();
                    reg.submit(proto::SubmitRequest {
                        envelope: envelope.clone(),
                    })
                    .await
                    .unwrap();
                    lat.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut submits = Vec::new();
    for s in submitters {
        submits.extend(s.await.unwrap());
    }
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let probes = prober.await.unwrap();
    println!(
        "{server}: {count} registrations in {:.2} s ({:.0}/s, 64 clients)",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64()
    );
    quantiles("GetLogInfo", probes);
    quantiles("Submit", submits);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
