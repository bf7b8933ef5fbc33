//! End to end through Pulse to the test plugin, next to a bare tonic
//! client calling the same plugin directly, in one run (BENCHMARKS.md):
//!
//! - bare: ExecuteJob(noop) on the plugin, 64 in flight, and one at a time
//!   for latency;
//! - Pulse: `pulse-ledger serve` with the plugin declared in its config;
//!   jobs enqueued (batches of 500) and run to a stored result, 64 running;
//! - enqueue → plugin-start latency at 50 % of that rate, open loop;
//! - resolution: a cached verdict and a cold one for a 10-statement chain.
//!
//! `cargo bench --bench plugin_e2e` (`PULSE_BENCH_JOBS=N`, default 20,000).

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use pulse_ledger::api::proto::{
    self, jobs_client::JobsClient, plugin_client::PluginClient, registry_client::RegistryClient,
};
use pulse_ledger::ledger::{Ledger, LedgerConfig};
use pulse_ledger::plugin::{ChainRouter, Sessions, parse_handshake, resolve_chains};
use pulse_ledger::{
    Action, Attestation, Did, Family, HandlerSchema, PluginSchema, Schema, Statement,
    sign_statement,
};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

const IN_FLIGHT: usize = 64;

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn keyed(seed: u8) -> (SigningKey, Did) {
    let sk = SigningKey::from_bytes(&[seed; 32]);
    let did = Did::from_verifying_key(&sk.verifying_key()).unwrap();
    (sk, did)
}

fn statement(
    sk: &SigningKey,
    did: &Did,
    family: Family,
    seq: u64,
    prev: Option<&Attestation>,
    action: Action,
) -> Attestation {
    let st = Statement {
        family,
        subject: did.clone(),
        signer: did.clone(),
        seq,
        prev: prev.map(Attestation::id),
        issued_at: 1_000 + seq,
        action,
    };
    sign_statement(&st, sk, None).unwrap()
}

fn plugin_statement(sk: &SigningKey, did: &Did) -> Attestation {
    statement(
        sk,
        did,
        Family::Plugin,
        0,
        None,
        Action::Register(Schema::Plugin(PluginSchema::new("bench", "1.0.0"))),
    )
}

fn handler_statement(sk: &SigningKey, did: &Did, name: &str, plugin: &Did) -> Attestation {
    let schema = HandlerSchema::new(name, "1.0.0", plugin.clone());
    statement(
        sk,
        did,
        Family::Handler,
        0,
        None,
        Action::Register(Schema::Handler(schema)),
    )
}

fn write_key(path: &Path, sk: &SigningKey, did: &Did) {
    std::fs::write(
        path,
        format!(
            "# did: {did}\nPULSE-LEDGER-SECRET-KEY-1 {}\n",
            hex::encode(sk.to_bytes())
        ),
    )
    .unwrap();
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn execute(client: &mut PluginClient<Channel>, n: u64) {
    let req = proto::ExecuteJobRequest {
        job_id: n.to_be_bytes().repeat(2),
        lease: vec![1; 16],
        attempt: 1,
        handler_name: "noop".into(),
        deadline_ms: u64::MAX,
        heartbeat_interval_ms: 10_000,
        ..Default::default()
    };
    let mut s = client.execute_job(req).await.unwrap().into_inner();
    let mut done = false;
    while let Some(e) = s.next().await {
        done |= matches!(e.unwrap().event, Some(proto::job_event::Event::Result(_)));
    }
    assert!(done, "no result");
}

/// Bare tonic to the plugin: (calls/s with 64 in flight, p50 ms, p99 ms).
async fn bare(plugin_key: &Path, n: usize) -> (f64, f64, f64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulse-test-plugin"))
        .arg("--key")
        .arg(plugin_key)
        // Exits when this process does, even on a panic.
        .env(pulse_ledger::plugin::sdk::WATCH_STDIN_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = parse_handshake(line.trim_end()).unwrap();
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let client = PluginClient::new(channel);
    let mut one = client.clone();
    for i in 0..500 {
        execute(&mut one, i).await;
    }
    let mut lat = Vec::new();
    for i in 0..2_000 {
        let t = Instant::now();
        execute(&mut one, i).await;
        lat.push(t.elapsed().as_micros() as u64);
    }
    lat.sort_unstable();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (mut c, next) = (client.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n as u64 {
                        return;
                    }
                    execute(&mut c, i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    (rate, percentile(&lat, 0.5), percentile(&lat, 0.99))
}

async fn enqueue_batch(
    jobs: &mut JobsClient<Channel>,
    handler: &Did,
    n: usize,
    payload: &[u8],
) -> Vec<Vec<u8>> {
    let reqs = (0..n)
        .map(|_| proto::EnqueueRequest {
            handler: handler.to_string(),
            payload: payload.to_vec(),
            ..Default::default()
        })
        .collect();
    jobs.enqueue_batch(proto::EnqueueBatchRequest { jobs: reqs })
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            proto::enqueue_result::Result::Accepted(a) => a.job.unwrap().id,
            proto::enqueue_result::Result::Rejected(e) => panic!("{}", e.message),
        })
        .collect()
}

/// Whether no job is queued or running.
async fn idle(jobs: &mut JobsClient<Channel>) -> bool {
    for state in ["queued", "running", "retrying", "held"] {
        let page = jobs
            .list_jobs(proto::ListJobsRequest {
                state: state.into(),
                page_size: 1,
                page_token: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        if !page.jobs.is_empty() {
            return false;
        }
    }
    true
}

async fn job(jobs: &mut JobsClient<Channel>, id: &[u8]) -> proto::Job {
    jobs.get_job(proto::GetJobRequest { id: id.to_vec() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

async fn wait_done(jobs: &mut JobsClient<Channel>, id: &[u8]) -> proto::Job {
    loop {
        let j = job(jobs, id).await;
        match j.state.as_str() {
            "succeeded" => return j,
            "dead" | "cancelled" => {
                panic!("job {} ended {} {}", hex::encode(id), j.state, j.last_error)
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// Cached and cold resolution of a handler with a 10-statement chain, µs.
fn resolution(dir: &Path) -> (f64, f64) {
    let ledger = Arc::new(
        Ledger::open(LedgerConfig::new(dir.join("resolve"), "bench.example/log")).unwrap(),
    );
    let (psk, pdid) = keyed(41);
    let (hsk, hdid) = keyed(42);
    ledger
        .append(plugin_statement(&psk, &pdid).envelope())
        .unwrap();
    let mut prev = handler_statement(&hsk, &hdid, "noop", &pdid);
    ledger.append(prev.envelope()).unwrap();
    for seq in 1..10 {
        let schema = HandlerSchema::new("noop", format!("1.0.{seq}"), pdid.clone());
        let next = statement(
            &hsk,
            &hdid,
            Family::Handler,
            seq,
            Some(&prev),
            Action::Update(Schema::Handler(schema)),
        );
        ledger.append(next.envelope()).unwrap();
        prev = next;
    }
    let mut router = ChainRouter::new(Arc::clone(&ledger), Arc::new(Sessions::default()));
    assert!(router.verdict(&hdid).unwrap().is_ok());
    let n = 1_000_000;
    let t = Instant::now();
    for _ in 0..n {
        let _ = std::hint::black_box(router.verdict(&hdid));
    }
    let cached = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let n = 2_000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(resolve_chains(&ledger, &hdid).unwrap().unwrap());
    }
    let cold = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    (cached, cold)
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let n: usize = std::env::var("PULSE_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = std::env::temp_dir().join(format!("pulse-plugin-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(&dir, n));
    let _ = std::fs::remove_dir_all(&dir);
}

async fn run(dir: &Path, n: usize) {
    let (psk, pdid) = keyed(7);
    let key_path = dir.join("plugin.key");
    write_key(&key_path, &psk, &pdid);

    let (bare_rate, bare_p50, bare_p99) = bare(&key_path, n).await;

    let config = format!(
        "max_running = {IN_FLIGHT}\n[[plugin]]\nname = \"bench\"\ncommand = [{:?}, \"--key\", {:?}]\n",
        env!("CARGO_BIN_EXE_pulse-test-plugin"),
        key_path.display().to_string()
    );
    std::fs::write(dir.join("pulse.toml"), config).unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(dir.join("pulse.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = format!("http://{}", first.split_whitespace().nth(3).unwrap());
    let mut reg = RegistryClient::connect(url.clone()).await.unwrap();
    let (nsk, noop) = keyed(8);
    let (ssk, stamp) = keyed(9);
    for a in [
        plugin_statement(&psk, &pdid),
        handler_statement(&nsk, &noop, "noop", &pdid),
        handler_statement(&ssk, &stamp, "stamp", &pdid),
    ] {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
    let mut jobs = JobsClient::connect(url.clone()).await.unwrap();
    // Warm-up: the plugin session opens, caches fill.
    let warm = enqueue_batch(&mut jobs, &noop, 500, b"").await;
    wait_done(&mut jobs, warm.last().unwrap()).await;

    // Throughput: every job enqueued (durably) and run to a stored result.
    let t = Instant::now();
    let mut last = Vec::new();
    let mut senders = Vec::new();
    for chunk in 0..n.div_ceil(500) {
        let mut c = jobs.clone();
        let count = 500.min(n - chunk * 500);
        senders.push(tokio::spawn(async move {
            enqueue_batch(&mut c, &noop_did(), count, b"").await
        }));
    }
    for s in senders {
        last = s.await.unwrap();
    }
    wait_done(&mut jobs, last.last().unwrap()).await;
    // Every job, not just the last sent, must be finished.
    while !idle(&mut jobs).await {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let pulse_rate = n as f64 / t.elapsed().as_secs_f64();

    // Latency at half that rate, open loop: each job is sent at its
    // scheduled time whatever happened to the previous ones.
    let rate = pulse_rate / 2.0;
    let count = (rate * 5.0) as usize;
    let start = Instant::now();
    let mut sent = Vec::with_capacity(count);
    for i in 0..count {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let mut c = jobs.clone();
        let stamp = stamp.clone();
        sent.push(tokio::spawn(async move {
            let t0 = now_us();
            let id = c
                .enqueue(proto::EnqueueRequest {
                    handler: stamp.to_string(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap()
                .id;
            (t0, id)
        }));
    }
    let mut lat = Vec::with_capacity(count);
    for s in sent {
        let (t0, id) = s.await.unwrap();
        let j = wait_done(&mut jobs, &id).await;
        let started: u64 = String::from_utf8(j.result).unwrap().parse().unwrap();
        lat.push(started.saturating_sub(t0));
    }
    lat.sort_unstable();
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();

    let (cached, cold) = resolution(dir);
    let rows = [
        ("bare tonic ExecuteJob, 64 in flight (calls/s)", bare_rate),
        ("bare tonic ExecuteJob p50 (ms)", bare_p50),
        ("bare tonic ExecuteJob p99 (ms)", bare_p99),
        ("Pulse end to end, 64 running (jobs/s)", pulse_rate),
        ("  ratio to bare tonic", pulse_rate / bare_rate),
        (
            "enqueue->plugin start at 50% rate, p50 (ms)",
            percentile(&lat, 0.5),
        ),
        ("enqueue->plugin start p99 (ms)", percentile(&lat, 0.99)),
        ("enqueue->plugin start p99.9 (ms)", percentile(&lat, 0.999)),
        ("resolution, cached (us)", cached),
        ("resolution, cold, 10-statement chain (us)", cold),
    ];
    println!(
        "plugin_e2e: {n} jobs, {} latency samples at {rate:.0} jobs/s",
        lat.len()
    );
    for (name, v) in rows {
        println!("{name:<48} {v:>12.3}");
    }
    let json: serde_json::Map<String, serde_json::Value> = rows
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
        .collect();
    println!("{}", serde_json::Value::Object(json));
}

fn noop_did() -> Did {
    keyed(8).1
}
