//! The test plugin: handlers that succeed, fail, crash, hang, sleep and
//! report progress and cost, for end-to-end tests and benchmarks.
//!
//! ```text
//! pulse-test-plugin --key plugin.key [--plugin DID] [--announce-id DID]...
//!     [--connect URL] [--slots N]
//! ```
//!
//! It listens (Pulse spawns or dials it) unless `--connect URL` (or
//! `PULSE_PLUGIN_CONNECT`) names a server to connect in to; `--slots N`
//! announces how many attempts it runs at once.
//!
//! Handlers (by schema name): `echo` (returns the payload), `noop` (returns
//! nothing), `sleep` (payload: milliseconds), `fail` (payload `fatal` for a
//! non-retryable error, else retryable), `crash` (exits the process; payload
//! `once` crashes only the first attempt), `hang` (stops heartbeating and
//! never returns; payload `once` hangs only the first attempt), `progress`
//! (10 steps with checkpoints, resuming from the previous attempt's; a
//! number as payload is each step's ms, 20 by default; payload `oversized` sends a 70,000-byte checkpoint, over the protocol's
//! limit, then waits),
//! `cost` (payload: units, reported one at a time every 20 ms), `stamp`
//! (returns the Unix time in microseconds at which it started), `attempt`
//! (payload: milliseconds to sleep; returns `attempt N`, so a result
//! names the attempt that produced it), `flood` (payload: a number of
//! events, then optionally `progress` (the default), `cost` (1 unit each)
//! or `log` (`line N`); sent as fast as possible, then returns), `late`
//! (payload: milliseconds, or the path of a file; the first attempt stops
//! heartbeating, ignores cancel, sleeps that long or until that file
//! exists, and then returns `late`; later attempts return `on time` at
//! once).
//!
//! `PULSE_TEST_PLUGIN_ATTEMPT_STREAMS` asks for that many attempt streams
//! (the SDK's default, 4, when unset; 0: an `ExecuteJob` call per attempt).
//! `PULSE_TEST_PLUGIN_CANCEL_GRACE_MS` sets how long a cancelled handler
//! may run on (the SDK's `cancel_grace`).
//!
//! `PULSE_TEST_PLUGIN_START_DELAY_MS` delays the handshake (a plugin that
//! is slow to start).
//!
//! `PULSE_TEST_PLUGIN_SPANS=FILE` records when each attempt's run began
//! and ended ([`Span`]).
//!
//! With `PULSE_TEST_PLUGIN_EVENTS=FILE` it appends one line per event
//! (`start JOB ATTEMPT PID UNIX_MICROS`, `cancelled JOB ATTEMPT`,
//! `done JOB ATTEMPT`, and `trace JOB ATTEMPT TRACEPARENT` when the attempt
//! came with trace context) so tests and benchmarks can see what reached
//! the plugin and when.

use std::io::Write;
use std::time::Duration;

use pulse_ledger::Did;
use pulse_ledger::plugin::sdk::{
    JobContext, JobError, JobHandler, PluginServer, async_trait, load_key,
};

fn note(line: String) {
    if let Ok(path) = std::env::var("PULSE_TEST_PLUGIN_EVENTS") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            // One write(2) per line: `writeln!` writes the text and the
            // newline separately, and two attempts' lines interleave.
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// With `PULSE_TEST_PLUGIN_SPANS=FILE`, one line per attempt when its run
/// ends however it ends (answered, cancelled, or dropped with the process):
/// `span JOB ATTEMPT PID START_MICROS END_MICROS`, so a test can check that
/// no two attempts of a job ran at once.
struct Span {
    job: String,
    attempt: u32,
    start: u128,
}

fn micros_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Ok(path) = std::env::var("PULSE_TEST_PLUGIN_SPANS") {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = f.write_all(
                    format!(
                        "span {} {} {} {} {}\n",
                        self.job,
                        self.attempt,
                        std::process::id(),
                        self.start,
                        micros_now()
                    )
                    .as_bytes(),
                );
            }
        }
    }
}

fn job(ctx: &JobContext) -> String {
    hex::encode(ctx.job_id())
}

#[derive(Clone, Copy)]
enum Kind {
    Echo,
    Noop,
    Sleep,
    Fail,
    Crash,
    Hang,
    Progress,
    Cost,
    Stamp,
    Attempt,
    Flood,
    Late,
}

struct Handler(Kind);

async fn run(kind: Kind, ctx: &JobContext, payload: Vec<u8>) -> Result<Vec<u8>, JobError> {
    let text = String::from_utf8_lossy(&payload).trim().to_owned();
    match kind {
        Kind::Echo => Ok(payload),
        Kind::Stamp => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
            .to_string()
            .into_bytes()),
        Kind::Noop => Ok(Vec::new()),
        Kind::Flood => {
            let (n, what) = text.split_once(' ').unwrap_or((&text, "progress"));
            let n: u32 = n.parse().map_err(|_| {
                JobError::fatal("flood: the payload is a number of events [progress|cost|log]")
            })?;
            for i in 0..n {
                match what {
                    "progress" => ctx.progress((i % 100) as u8, "flood", Vec::new()).await,
                    "cost" => ctx.cost(1).await,
                    "log" => ctx.log(format!("line {}", i + 1)).await,
                    other => return Err(JobError::fatal(format!("flood: no event kind {other}"))),
                }
            }
            Ok(format!("flooded {n}").into_bytes())
        }
        Kind::Late => {
            if ctx.attempt() == 1 {
                ctx.stop_heartbeats();
                match text.parse::<u64>() {
                    Ok(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                    // A file the test creates when it wants the answer.
                    Err(_) => {
                        while !std::path::Path::new(&text).exists() {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                return Ok(b"late".to_vec());
            }
            Ok(b"on time".to_vec())
        }
        Kind::Attempt => {
            let ms: u64 = text
                .parse()
                .map_err(|_| JobError::fatal("attempt: the payload is milliseconds"))?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(format!("attempt {}", ctx.attempt()).into_bytes())
        }
        Kind::Sleep => {
            let ms: u64 = text
                .parse()
                .map_err(|_| JobError::fatal("sleep: the payload is milliseconds"))?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(format!("slept {ms}").into_bytes())
        }
        Kind::Fail if text == "fatal" => Err(JobError::fatal("failed on purpose (fatal)")),
        Kind::Fail => Err(JobError::retryable("failed on purpose (retryable)")),
        Kind::Crash => {
            if text != "once" || ctx.attempt() == 1 {
                note(format!("crash {} {}", job(ctx), ctx.attempt()));
                std::process::exit(3);
            }
            Ok(b"survived".to_vec())
        }
        Kind::Hang => {
            if text != "once" || ctx.attempt() == 1 {
                ctx.stop_heartbeats();
                std::future::pending::<()>().await;
            }
            Ok(b"did not hang".to_vec())
        }
        Kind::Progress if text == "oversized" => {
            // Breaks plugin.proto (checkpoints are at most 64 KiB), then
            // waits to be cancelled.
            ctx.progress(50, "too big", vec![0; 70_000]).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(b"not stopped".to_vec())
        }
        Kind::Progress => {
            // The payload may give each step's ms (20 by default).
            let step_ms: u64 = text.parse().unwrap_or(20);
            let from = ctx.checkpoint().first().copied().unwrap_or(0);
            for step in from..10 {
                tokio::time::sleep(Duration::from_millis(step_ms)).await;
                ctx.progress(
                    (step + 1) * 10,
                    format!("step {}", step + 1),
                    vec![step + 1],
                )
                .await;
            }
            Ok(format!("resumed from {from}").into_bytes())
        }
        Kind::Cost => {
            let units: u64 = text
                .parse()
                .map_err(|_| JobError::fatal("cost: the payload is a number of units"))?;
            for _ in 0..units {
                ctx.cost(1).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(format!("spent {units}").into_bytes())
        }
    }
}

#[async_trait]
impl JobHandler for Handler {
    async fn execute(&self, ctx: JobContext, payload: Vec<u8>) -> Result<Vec<u8>, JobError> {
        let micros = micros_now();
        let _span = Span {
            job: job(&ctx),
            attempt: ctx.attempt(),
            start: micros,
        };
        note(format!(
            "start {} {} {} {micros}",
            job(&ctx),
            ctx.attempt(),
            std::process::id()
        ));
        if let Some(t) = ctx.trace_parent() {
            note(format!("trace {} {} {t}", job(&ctx), ctx.attempt()));
        }
        if matches!(self.0, Kind::Late) {
            // Ignores cancel on purpose: it answers whatever happened.
            let out = run(self.0, &ctx, payload).await;
            note(format!("done {} {}", job(&ctx), ctx.attempt()));
            return out;
        }
        let out = tokio::select! {
            out = run(self.0, &ctx, payload) => out,
            _ = ctx.cancelled() => {
                note(format!("cancelled {} {}", job(&ctx), ctx.attempt()));
                return Err(JobError::retryable("cancelled"));
            }
        };
        note(format!("done {} {}", job(&ctx), ctx.attempt()));
        out
    }
}

fn usage(why: &str) -> ! {
    eprintln!(
        "pulse-test-plugin: {why}\nusage: pulse-test-plugin --key FILE [--plugin DID] [--announce-id DID]... [--connect URL] [--slots N]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut key, mut plugin, mut ids) = (None, None, Vec::new());
    let (mut connect, mut slots) = (None, 0u32);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--key" => key = Some(value()),
            "--plugin" => plugin = Some(value()),
            "--announce-id" => ids.push(value()),
            "--connect" => connect = Some(value()),
            "--slots" => {
                slots = value()
                    .parse()
                    .unwrap_or_else(|e| usage(&format!("--slots: {e}")))
            }
            "-h" | "--help" => usage("runs test handlers for pulse-ledger"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let key = key
        .or_else(|| std::env::var("PULSE_PLUGIN_KEY").ok())
        .unwrap_or_else(|| usage("--key is required"));
    let key = load_key(key.as_ref()).unwrap_or_else(|e| usage(&e));
    if let Some(ms) = std::env::var("PULSE_TEST_PLUGIN_START_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut server = PluginServer::new(key).metadata(
        "pulse-test-plugin",
        env!("CARGO_PKG_VERSION"),
        "test handlers: echo, noop, sleep, fail, crash, hang, progress, cost",
    );
    if let Some(ms) = std::env::var("PULSE_TEST_PLUGIN_CANCEL_GRACE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        server = server.cancel_grace(Duration::from_millis(ms));
    }
    if let Some(n) = std::env::var("PULSE_TEST_PLUGIN_ATTEMPT_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        server = server.attempt_streams(n);
    }
    if let Some(p) = plugin {
        server =
            server.plugin_id(Did::parse(&p).unwrap_or_else(|e| usage(&format!("--plugin: {e}"))));
    }
    for id in ids {
        let did = Did::parse(&id).unwrap_or_else(|e| usage(&format!("--announce-id: {e}")));
        server = server.handler_id(did, Handler(Kind::Echo));
    }
    for (name, kind) in [
        ("echo", Kind::Echo),
        ("noop", Kind::Noop),
        ("sleep", Kind::Sleep),
        ("fail", Kind::Fail),
        ("crash", Kind::Crash),
        ("hang", Kind::Hang),
        ("progress", Kind::Progress),
        ("cost", Kind::Cost),
        ("stamp", Kind::Stamp),
        ("attempt", Kind::Attempt),
        ("flood", Kind::Flood),
        ("late", Kind::Late),
    ] {
        server = server.handler(name, Handler(kind));
    }
    if let Err(e) = server.slots(slots).run(connect).await {
        eprintln!("pulse-test-plugin: {e}");
        std::process::exit(1);
    }
}
