//! `pulse-ledger bench`: the load generator (BENCHMARKS.md). Starts a
//! server with the test plugin on a scratch data dir (or targets one) and
//! prints every figure with its ratio to the ceiling measured in the same
//! run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Instant;

use serde_json::json;
use tonic::transport::Channel;

use crate::api::proto::registry_client::RegistryClient;

use super::client::{ServerArg, runtime};
use super::error::CliError;
use crate::loadgen::{
    Arrival, CpuTimeline, JobBench, JobFigures, Table, bare_plugin_rate, fsync_append_rate,
    fsync_rate, percentile_ms, registration_rate, registration_stream_rate, resolution_cost,
    submit_latency, verify_rate,
};

/// Concurrent calls for the throughput figures (jobs running at once, and
/// bare calls in flight).
const IN_FLIGHT: usize = 64;

/// How the latency runs at half load and under the mixed load send their
/// jobs: one message per job on 4 `EnqueueStream` calls, the way a
/// producer of thousands of jobs a second sends them one by one. A call
/// per job costs the server about twice the CPU of the batches the job
/// rate is measured with, so at half that rate single calls would be most
/// of the single-call capacity, not half a load; they get a run of their
/// own at half their own rate.
const LATENCY_ARRIVAL: Arrival = Arrival::Streams(4);

/// The apalis peer's settings, tuned for throughput on this workload
/// (BENCHMARKS.md, "peer"): 64 workers running one job each (apalis-sqlite
/// re-reads every row a worker has ever locked on each acknowledgement, so
/// one worker with 64 slots slows as its history grows), each fetching 200
/// jobs at a time, woken every 10 ms as well as when a job finishes (so
/// the last acknowledgements do not wait for a heartbeat).
const APALIS_WORKERS: usize = IN_FLIGHT;
const APALIS_BATCH: usize = 200;
const APALIS_POLL_MS: u64 = 10;

/// `bench`'s flags.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  pulse-ledger bench
  pulse-ledger bench --jobs 50000 --json > bench.json
  pulse-ledger bench --server http://127.0.0.1:7300 --yes
  pulse-ledger bench --server http://127.0.0.1:7611 --spread http://127.0.0.1:7612 --yes
  pulse-ledger bench --python-bench sdk/python/tools/bench.py --python .venv/bin/python
  pulse-ledger bench --check          # exit 1 naming each figure that misses its target
  pulse-ledger bench --runs 1 --trace trace.jsonl   # each job's stages and the server's timeline

Prints one row per figure: the ceilings (strict ed25519 verify on one core,
fsyncs in place into a preallocated file on the scratch dir's disk, bare
gRPC round trips to the test plugin), then registrations/s at 1, 16 and 64
clients (ratio to the verify rate), jobs/s end to end with 64 running
(ratio to the bare round trips; the test plugin takes its attempts on the
SDK's default 4 attempt streams), with the share of all cores busy and
the server's and the bench's CPU per job (from /proc), the rate of single
Enqueue calls from 64 callers, scheduled-send→plugin-start latency at half
the batched rate (each job sent alone on one of 4 EnqueueStream calls) and
at half the single-call rate (one Enqueue call per job), open loop, the
same latencies under a mixed load, jobs/s through the spawned plugin on one
ExecuteJob call per attempt and through one plugin instance that
connected in (each a ratio to the spawned one), 50 ms jobs through one and three
connected-in instances of 4 slots (ratio three ÷ one), and the cost of
resolving a job to its plugin.
With --server the ceilings are still measured here, on the client host,
and are labelled so; the bench's test plugin connects in to that server
with a key made for the bench (or give --plugin-key for a test plugin the
server runs itself: a key already registered as anything but the bench's
plugin is refused). A bench appends entries for good: against a log that
holds entries already it needs --yes. Each figure is the median of --runs runs (3 by
default: about 90 seconds).")]
pub(crate) struct Args {
    /// Measure this server instead of starting one (--token if it
    /// requires tokens: enqueue, read and plugin scopes). Writes entries
    /// to its log for good: see --yes.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// With --server: another node of the same service (`serve --node` on
    /// the same database), repeatable. Registrations, enqueues and watches
    /// are then spread over --server and every --spread node, and the
    /// bench's test plugin connects in to each of them.
    #[arg(long, value_name = "URL", requires = "server")]
    spread: Vec<String>,
    /// With --server: the key file of a pulse-test-plugin that server
    /// runs itself (default: the bench starts its own, which connects in).
    /// Refused if the key is registered as anything but the bench's plugin.
    #[arg(long, value_name = "FILE", requires = "server")]
    plugin_key: Option<PathBuf>,
    /// With --server: a bearer token with the enqueue and read scopes, for
    /// a server that requires tokens (ignored for the server the bench
    /// starts itself).
    #[arg(
        long,
        env = "PULSE_LEDGER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// With an https:// --server: trust this PEM CA instead of the public
    /// roots.
    #[arg(long, value_name = "PEM", requires = "server")]
    ca: Option<PathBuf>,
    /// Jobs in the throughput run.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(500..))]
    jobs: u64,
    /// Registrations per concurrency level (1 client gets a quarter).
    #[arg(long, default_value_t = 4_000, value_parser = clap::value_parser!(u64).range(100..))]
    registrations: u64,
    /// Runs; every figure is the median over them (ratios are taken
    /// within each run first).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    runs: u64,
    /// Seconds of open-loop arrivals in the latency run.
    #[arg(long, default_value_t = 5)]
    latency_secs: u64,
    /// The pulse-test-plugin binary [default: next to this one].
    #[arg(long, value_name = "FILE")]
    plugin_bin: Option<PathBuf>,
    /// Also run the same no-op workload through apalis + SQLite: the
    /// binary built from peers/apalis (`cargo build --release
    /// --manifest-path peers/apalis/Cargo.toml`).
    #[arg(long, value_name = "FILE")]
    peer_apalis: Option<PathBuf>,
    /// Then run the Python SDK's bench script (sdk/python/tools/bench.py)
    /// with --python: no-op jobs through a Python plugin next to the Rust
    /// test plugin, both spawned and then both connected in, and their
    /// ratios (not with --server).
    #[arg(long, value_name = "SCRIPT", conflicts_with = "server")]
    python_bench: Option<PathBuf>,
    /// The Python that runs --python-bench (one with the SDK's
    /// dependencies installed, e.g. a venv's python).
    #[arg(long, value_name = "PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Write a timeline of the latency run to FILE (JSON lines, appended
    /// per run): each job's scheduled, called, acked, dispatched and
    /// started times (Unix µs), and the server's dispatcher steps, group
    /// commits, journal fsyncs (with the batches each made durable) and
    /// storage flushes, and every 100 ms where the cores went: the
    /// machine's busy share, the server's threads by name, the plugin and
    /// the bench (not with --server).
    #[arg(long, value_name = "FILE", conflicts_with = "server")]
    trace: Option<PathBuf>,
    /// Exit 1 if a figure misses its target (enqueue → start p99 < 5 ms at
    /// half load; registrations over a SubmitStream and jobs each ≥ 0.5×
    /// their ceiling),
    /// naming each miss on stderr. For a person comparing builds: the
    /// machines CI runs on are too noisy for it.
    #[arg(long)]
    check: bool,
    /// Also measure every figure with the spawned server on this
    /// PostgreSQL database (postgres://USER@HOST/DB), in the same sitting,
    /// and print each next to the fjall one (ratio PostgreSQL ÷ fjall).
    /// The database must hold no pulse-ledger data: the bench empties it
    /// after each run.
    #[arg(long, value_name = "URL", conflicts_with = "server")]
    store: Option<String>,
    /// With --store: also run the same no-op workload through apalis +
    /// PostgreSQL on that database (the binary built from
    /// peers/apalis-postgres; it makes its own schema and drops it) in
    /// every run, after the run's PostgreSQL figures, and print PostgreSQL
    /// jobs ÷ the peer (the median of the runs, as every figure).
    #[arg(long, value_name = "FILE", requires = "store")]
    peer_apalis_postgres: Option<PathBuf>,
    /// Print the table as JSON.
    #[arg(long)]
    json: bool,
    /// With --server: write the bench's entries into a log that already
    /// holds entries. They stay for ever (the log is append-only).
    #[arg(long, requires = "server")]
    yes: bool,
}

pub(super) fn failed(what: &str) -> impl FnOnce(String) -> CliError + '_ {
    move |e| CliError::Usage(format!("bench: {what}: {e}"))
}

/// A process this bench started; stopped (SIGTERM) when dropped.
pub(super) struct Spawned(pub(super) Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child's own pid; no memory is touched.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

/// The `[[plugin]]` table that spawns the test plugin.
pub(super) fn spawned_plugin(plugin_bin: &Path, key: &Path) -> String {
    format!(
        "[[plugin]]\nname = \"bench\"\ncommand = [{:?}, \"--key\", {:?}]\n",
        plugin_bin.display().to_string(),
        key.display().to_string()
    )
}

/// Starts a server on a data dir in `dir` with `plugins` (`[[plugin]]`
/// tables, or nothing for plugins that connect in).
/// `timeline`: the server appends its timeline there (`serve --timeline`).
pub(super) fn spawn_server(
    dir: &Path,
    plugins: &str,
    timeline: Option<&Path>,
    store: Option<&str>,
) -> Result<(Spawned, String), CliError> {
    let me = std::env::current_exe().map_err(|e| failed("this binary")(e.to_string()))?;
    let config = format!("max_running = {IN_FLIGHT}\n{plugins}");
    let path = dir.join("pulse.toml");
    std::fs::write(&path, config).map_err(super::files::io(&path))?;
    let mut cmd = Command::new(me);
    if let Some(t) = timeline {
        cmd.arg("serve").arg("--timeline").arg(t);
    } else {
        cmd.arg("serve");
    }
    cmd.args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.join("data"));
    if let Some(url) = store {
        cmd.args(["--store", url])
            .arg("--log-key")
            .arg(dir.join("postgres-log.key"));
    }
    let mut child = cmd
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| failed("starting the server")(e.to_string()))?;
    let mut first = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut first);
    }
    let spawned = Spawned(child);
    let addr = first
        .split_whitespace()
        .nth(3)
        .ok_or_else(|| failed("starting the server")(format!("unexpected first line {first:?}")))?;
    Ok((spawned, format!("http://{addr}")))
}

pub(crate) fn run(a: Args) -> Result<ExitCode, CliError> {
    if let Some(url) = &a.server {
        confirm_remote(&a, url)?;
    }
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("pulse-ledger-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(super::files::io(&dir))?;
    let postgres = a.store.as_deref().map(bench_database).transpose()?;
    let mut runs = Vec::new();
    let mut on_postgres = Vec::new();
    for run in 0..a.runs {
        eprintln!("bench: run {} of {}", run + 1, a.runs);
        let scratch = dir.join(format!("run-{run}"));
        std::fs::create_dir_all(&scratch).map_err(super::files::io(&scratch))?;
        // The peer is slow: it runs once, in the first run.
        let measured = measure(&a, &scratch, run == 0, None).and_then(|fjall| {
            let (Some(url), Some(db)) = (a.store.as_deref(), postgres.as_ref()) else {
                return Ok((fjall, None));
            };
            eprintln!("bench: run {} of {}, on PostgreSQL", run + 1, a.runs);
            let pg_scratch = dir.join(format!("run-{run}-postgres"));
            std::fs::create_dir_all(&pg_scratch).map_err(super::files::io(&pg_scratch))?;
            let pg = measure(&a, &pg_scratch, false, Some(url));
            // Empty again for the next run, whatever happened.
            let emptied = db
                .delete_all()
                .map_err(|e| failed("--store")(e.to_string()));
            let pg = pg?;
            emptied?;
            let mut versus = pg.versus(&fjall, "fjall");
            // Every run, not once: a single run of the peer varied by a
            // factor of two between sittings (BENCHMARKS.md).
            if let Some(peer) = a.peer_apalis_postgres.as_ref() {
                let rate = apalis_postgres_rate(&a, peer, url)?;
                versus.add(
                    "apalis_postgres",
                    format!(
                        "apalis + PostgreSQL, the same {} no-op jobs, {IN_FLIGHT} running",
                        a.jobs
                    ),
                    rate,
                    "/s",
                );
                if let Some(jobs) = versus.value("jobs") {
                    versus.add_ratio(
                        "jobs_over_apalis_postgres",
                        "jobs end to end on PostgreSQL, ratio to apalis + PostgreSQL",
                        jobs,
                        "/s",
                        "apalis_postgres",
                    );
                }
            }
            Ok((fjall, Some(versus)))
        });
        match measured {
            Ok((t, pg)) => {
                eprintln!("{}", run_summary(run + 1, &t, pg.as_ref()));
                runs.push(t);
                on_postgres.extend(pg);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let table = Table::median(&runs);
    let pg_table = (!on_postgres.is_empty()).then(|| Table::median(&on_postgres));
    let run = json!({
        "cores": crate::audit::available_threads(), "jobs": a.jobs,
        "registrations": a.registrations, "latency_secs": a.latency_secs, "runs": a.runs,
        "server": a.server.as_deref().unwrap_or("spawned"),
        "spread": a.spread,
        "ceilings_measured_on": if a.server.is_some() { "client host" } else { "server host (the bench's own)" },
        "seconds": started.elapsed().as_secs_f64(),
    });
    if a.json {
        let mut out = table.json(run.clone());
        if let Some(pg) = &pg_table {
            out["postgres"] = pg.json(run);
        }
        println!("{out}");
    } else {
        print!("{}", table.text());
        if let Some(pg) = &pg_table {
            println!(
                "\non PostgreSQL ({}), same sitting; ratio: PostgreSQL ÷ fjall, each run's own",
                a.store
                    .as_deref()
                    .map(crate::storage::postgres::shown_url)
                    .unwrap_or_default()
            );
            print!("{}", pg.text());
        }
        println!(
            "(median of {} runs, {:.0} s, {} cores)",
            a.runs,
            started.elapsed().as_secs_f64(),
            run["cores"]
        );
    }
    if let Some(script) = &a.python_bench {
        python_bench(&a, script)?;
    }
    if a.check {
        let misses = crate::loadgen::misses(&table);
        if !misses.is_empty() {
            eprintln!("bench --check: {} target(s) missed:", misses.len());
            for m in &misses {
                eprintln!("  {m}");
            }
            return Ok(ExitCode::from(1));
        }
        eprintln!("bench --check: every target met");
    }
    Ok(ExitCode::SUCCESS)
}

/// One run's jobs figures, for stderr: the table gives only the medians,
/// and a ratio's median is the median of each run's own ratio, which
/// this line lets a reader check.
fn run_summary(run: u64, fjall: &Table, postgres: Option<&Table>) -> String {
    let rate = |t: &Table, key: &str| t.value(key).map_or("-".to_owned(), |v| format!("{v:.0}/s"));
    let mut line = format!("bench: run {run}: jobs end to end {}", rate(fjall, "jobs"));
    if let Some(pg) = postgres {
        line += &format!("; on PostgreSQL {}", rate(pg, "jobs"));
        if let (Some(jobs), Some(peer)) = (pg.value("jobs"), pg.value("apalis_postgres")) {
            line += &format!(
                "; apalis + PostgreSQL {peer:.0}/s, ratio {:.2}",
                jobs / peer
            );
        }
    }
    line
}

/// Runs the apalis + PostgreSQL peer on the bench's database: its rate.
fn apalis_postgres_rate(a: &Args, peer: &Path, url: &str) -> Result<f64, CliError> {
    eprintln!("bench: apalis + PostgreSQL, the same workload…");
    let out = Command::new(peer)
        .arg(a.jobs.to_string())
        .arg(url)
        .args(["--concurrency", &IN_FLIGHT.to_string()])
        .output()
        .map_err(|e| failed("--peer-apalis-postgres")(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        failed("--peer-apalis-postgres")(format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    })?;
    v["jobs_per_second"]
        .as_f64()
        .ok_or_else(|| failed("--peer-apalis-postgres")(format!("no jobs_per_second in {v}")))
}

/// The bench's PostgreSQL database: migrated, and empty (the bench
/// deletes its data after each run, so it must not hold anyone's).
fn bench_database(url: &str) -> Result<crate::storage::PostgresBackend, CliError> {
    let fail = |e: crate::storage::StorageError| failed("--store")(e.to_string());
    if !crate::storage::postgres::is_postgres_url(url) {
        return Err(failed("--store")(format!(
            "{}: not a postgres:// URL",
            crate::storage::postgres::shown_url(url)
        )));
    }
    let db = crate::storage::PostgresBackend::connect(url).map_err(fail)?;
    db.migrate().map_err(fail)?;
    if !db.is_empty().map_err(fail)? {
        return Err(failed("--store")(format!(
            "{} holds pulse-ledger data; give an empty database (the bench deletes what it writes after each run)",
            db.url()
        )));
    }
    Ok(db)
}

/// Runs the Python SDK's bench script against this build: its lines go to
/// standard output after the table.
fn python_bench(a: &Args, script: &Path) -> Result<(), CliError> {
    let me = std::env::current_exe().map_err(|e| failed("this binary")(e.to_string()))?;
    let plugin_bin = a
        .plugin_bin
        .clone()
        .unwrap_or_else(|| me.with_file_name("pulse-test-plugin"));
    eprintln!("bench: the Python SDK's plugin next to the Rust test plugin");
    let status = Command::new(&a.python)
        .arg(script)
        .args(["--jobs", &a.jobs.to_string(), "--mode", "both"])
        .arg("--bin")
        .arg(&me)
        .arg("--test-plugin")
        .arg(&plugin_bin)
        .status()
        .map_err(|e| failed("--python")(format!("{}: {e}", a.python.display())))?;
    if !status.success() {
        return Err(failed("--python-bench")(format!(
            "{} {} failed ({status})",
            a.python.display(),
            script.display()
        )));
    }
    Ok(())
}

/// A process's peak resident set (VmHWM), MB.
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Appends the latency run's jobs to the trace file, one JSON line each.
fn append_jobs(path: &Path, jobs: &[crate::loadgen::JobSample]) -> Result<(), CliError> {
    append_lines(
        path,
        jobs.iter().map(|j| {
            let mut v = serde_json::to_value(j).unwrap_or_default();
            v["kind"] = "job".into();
            v.to_string()
        }),
    )
}

/// Appends whole lines to the trace file (the server appends to it too).
fn append_lines(path: &Path, lines: impl IntoIterator<Item = String>) -> Result<(), CliError> {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(super::files::io(path))?;
    let mut out = std::io::BufWriter::new(file);
    for line in lines {
        writeln!(out, "{line}").map_err(super::files::io(path))?;
    }
    out.flush().map_err(super::files::io(path))
}

/// Entries one run appends, about: registrations at three concurrency
/// levels (the single client does a quarter) and over a SubmitStream, the
/// test plugin and its handlers, then the open-loop Submit runs (half the
/// registration rate, then 40 % of it in the mixed load, each for
/// --latency-secs), estimated at 10,000 registrations/s.
fn entries_per_run(a: &Args) -> u64 {
    a.registrations / 4 + 3 * a.registrations + 4 + a.latency_secs * 9_000
}

/// Says what a bench against `url` writes, and refuses to write into a
/// log that holds entries already unless --yes: they cannot be taken back.
fn confirm_remote(a: &Args, url: &str) -> Result<(), CliError> {
    let server = ServerArg::with_credentials(url.to_owned(), a.token.clone(), a.ca.clone());
    let plugin = match &a.plugin_key {
        Some(p) => {
            let sk = crate::keyfile::load(p).map_err(|e| failed("--plugin-key")(e.to_string()))?;
            Some(
                crate::Did::from_verifying_key(&sk.verifying_key())
                    .map_err(|e| failed("--plugin-key")(e.to_string()))?,
            )
        }
        None => None,
    };
    let (size, taken) = runtime()?.block_on(async {
        use crate::api::proto;
        let channel = server.channel().await?;
        let mut reg = RegistryClient::new(channel);
        let info = reg
            .get_log_info(proto::GetLogInfoRequest {})
            .await
            .map_err(|s| super::client::call_failed(&s))?
            .into_inner();
        // Checked before anything is written: a plugin key that is someone
        // else's plugin in this log must not get a second genesis.
        let taken = match &plugin {
            Some(did) => match reg
                .get_subject(proto::GetSubjectRequest {
                    did: did.to_string(),
                })
                .await
            {
                Ok(r) => Some(r.into_inner().subject.unwrap_or_default().name),
                Err(s) if s.code() == tonic::Code::NotFound => None,
                Err(s) => return Err(super::client::call_failed(&s)),
            },
            None => None,
        };
        Ok::<_, CliError>((info.size, taken))
    })?;
    if let (Some(name), Some(did)) = (taken, &plugin) {
        if name != crate::loadgen::BENCH_PLUGIN_NAME {
            return Err(CliError::Usage(format!(
                "bench: --plugin-key is plugin {did}, registered in this log as {name:?}: the bench would sign a second genesis for that key (an equivocation, reported for ever). Give a key made for the bench, or leave out --plugin-key: the bench then starts its own test plugin, which connects in"
            )));
        }
    }
    let adds = entries_per_run(a) * a.runs;
    eprintln!(
        "bench: this appends about {adds} entries to the log at {url} (registrations by keys made for the bench, and a test plugin named {:?} with its handlers); a log keeps its entries for ever",
        crate::loadgen::BENCH_PLUGIN_NAME
    );
    if size > 0 && !a.yes {
        return Err(CliError::Usage(format!(
            "bench: the log at {url} already holds {size} entries: run the bench against a scratch server (`pulse-ledger serve --data-dir /tmp/scratch`), or give --yes to add about {adds} entries to this one"
        )));
    }
    Ok(())
}

/// One channel that spreads calls over `--server` (`first`) and every
/// `--spread` node, each checked reachable first, with the same TLS and
/// token rules as `--server`.
async fn spread_channel(a: &Args, first: &str, more: &[String]) -> Result<Channel, CliError> {
    let mut endpoints = Vec::new();
    for url in std::iter::once(first).chain(more.iter().map(String::as_str)) {
        let node = ServerArg::with_credentials(url.to_owned(), a.token.clone(), a.ca.clone());
        node.bearer()?;
        node.channel().await?;
        endpoints.push(node.endpoint()?);
    }
    Ok(Channel::balance_list(endpoints.into_iter()))
}

/// Waits (10 s at most) until the node behind `reg` has read `did`'s
/// registration from the shared log.
async fn wait_known(reg: &mut RegistryClient<Channel>, did: &crate::Did) -> Result<(), String> {
    let until = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let asked = reg
            .get_subject(crate::api::proto::GetSubjectRequest {
                did: did.to_string(),
            })
            .await;
        match asked {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound && Instant::now() < until => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(s) => return Err(format!("{did} not readable there: {}", s.message())),
        }
    }
}

/// A ceiling's label: with --server the ceilings are measured on this
/// host (the load generator's), not the server's, and say so.
fn ceiling(a: &Args, label: &str) -> String {
    if a.server.is_some() {
        format!("{label} [client host]")
    } else {
        label.to_owned()
    }
}

fn measure(a: &Args, dir: &Path, with_peer: bool, store: Option<&str>) -> Result<Table, CliError> {
    let mut t = Table::default();
    eprintln!("bench: ceilings…");
    t.add(
        "verify_per_core",
        ceiling(a, "ed25519 verify_strict, one core"),
        verify_rate(),
        "/s",
    );
    t.add(
        "fsync",
        ceiling(a, "fdatasync of 512 B in place, preallocated file"),
        fsync_rate(dir).map_err(failed("fsync probe"))?,
        "/s",
    );
    t.add_ratio(
        "fsync_append",
        ceiling(a, "fdatasync of 512 B appended to a growing file"),
        fsync_append_rate(dir).map_err(failed("fsync probe"))?,
        "/s",
        "fsync",
    );
    let plugin_bin = match &a.plugin_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| failed("this binary")(e.to_string()))?
            .with_file_name("pulse-test-plugin"),
    };
    let (key_path, sk, did) = match &a.plugin_key {
        Some(p) => {
            let sk = crate::keyfile::load(p).map_err(|e| failed("--plugin-key")(e.to_string()))?;
            let did = crate::Did::from_verifying_key(&sk.verifying_key())
                .map_err(|e| failed("--plugin-key")(e.to_string()))?;
            (p.clone(), sk, did)
        }
        None => {
            let (sk, did) = crate::loadgen::bench_plugin_key();
            let p = dir.join("plugin.key");
            crate::keyfile::create(&p, &sk, &did)
                .map_err(|e| failed("plugin key")(e.to_string()))?;
            (p, sk, did)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| failed("runtime")(e.to_string()))?;
    runtime.block_on(async {
        let bare_calls = (a.jobs as usize).max(5_000);
        eprintln!("bench: bare gRPC to the test plugin…");
        let (bare, p50, p99) = bare_plugin_rate(&plugin_bin, &key_path, bare_calls, IN_FLIGHT)
            .await
            .map_err(failed("bare gRPC"))?;
        t.add(
            "bare_grpc",
            ceiling(
                a,
                "bare tonic ExecuteJob(noop) to the test plugin, 64 in flight",
            ),
            bare,
            "/s",
        );
        t.add(
            "bare_grpc_p50",
            ceiling(a, "bare tonic ExecuteJob, one at a time, p50"),
            p50,
            "ms",
        );
        t.add(
            "bare_grpc_p99",
            ceiling(a, "bare tonic ExecuteJob, one at a time, p99"),
            p99,
            "ms",
        );

        let (server_process, url) = match &a.server {
            Some(u) => (None, u.clone()),
            None => {
                let (s, u) = spawn_server(
                    dir,
                    &spawned_plugin(&plugin_bin, &key_path),
                    a.trace.as_deref(),
                    store,
                )?;
                (Some(s), u)
            }
        };
        // The same connection and token rules as every client command.
        let token = a.server.as_ref().and(a.token.clone());
        let server = ServerArg::with_credentials(url.clone(), token, a.ca.clone());
        let bearer = server.bearer()?;
        let channel: Channel = server.channel().await?;
        // Where the load goes: the one server, or spread over the nodes.
        let load = match &a.spread[..] {
            [] => channel.clone(),
            more => spread_channel(a, &url, more).await?,
        };
        let run = format!("{}", crate::clock::unix_ms());
        let mut register_max = 0.0f64;
        for (clients, key, label) in [
            (1, "register_1", "registrations (durable), 1 client"),
            (16, "register_16", "registrations (durable), 16 clients"),
            (64, "register_64", "registrations (durable), 64 clients"),
        ] {
            eprintln!("bench: {label}…");
            let n = if clients == 1 {
                a.registrations / 4
            } else {
                a.registrations
            };
            let rate = registration_rate(load.clone(), n as usize, clients, &run)
                .await
                .map_err(failed(label))?;
            t.add_ratio(key, label, rate, "/s", "verify_per_core");
            register_max = register_max.max(rate);
        }
        {
            let label = "registrations (durable), one SubmitStream, 64 in flight";
            eprintln!("bench: {label}…");
            let rate = registration_stream_rate(load.clone(), a.registrations as usize, 1, &run)
                .await
                .map_err(failed(label))?;
            t.add_ratio("register_stream", label, rate, "/s", "verify_per_core");
        }
        // Against another server without --plugin-key, the test plugin
        // connects in, with the bench's own key: nothing in that server's
        // config, and no key of the user's, is involved.
        let mut connected = Vec::new();
        if let (Some(first), None) = (&a.server, &a.plugin_key) {
            for url in std::iter::once(first).chain(&a.spread) {
                eprintln!(
                    "bench: the test plugin connects in to {url} with a key made for the bench"
                );
                let mut cmd = Command::new(&plugin_bin);
                cmd.arg("--key")
                    .arg(&key_path)
                    .args(["--connect", url])
                    .stdout(Stdio::null());
                if let Some(t) = &a.token {
                    cmd.env("PULSE_PLUGIN_TOKEN", t);
                }
                if let Some(ca) = &a.ca {
                    cmd.env("PULSE_PLUGIN_SERVER_CA", ca);
                }
                connected
                    .push(Spawned(cmd.spawn().map_err(|e| {
                        failed("starting the test plugin")(e.to_string())
                    })?));
            }
        }
        {
            eprintln!("bench: jobs end to end…");
            // Registered through one node; enqueued through all of them
            // once each has read the registrations.
            let bench = JobBench::setup(channel.clone(), bearer.clone(), (&sk, &did))
                .await
                .map_err(failed("jobs"))?;
            let bench = if a.spread.is_empty() {
                bench
            } else {
                for url in &a.spread {
                    let node =
                        ServerArg::with_credentials(url.clone(), a.token.clone(), a.ca.clone());
                    let mut reg = RegistryClient::new(node.channel().await?);
                    for h in bench.handlers() {
                        wait_known(&mut reg, h)
                            .await
                            .map_err(failed(&format!("--spread {url}")))?;
                    }
                }
                bench.through(load.clone(), bearer)
            };
            let server_pid = server_process.as_ref().map(|s| s.0.id());
            let (rate, jobs_cpu) = bench
                .rate(a.jobs as usize, server_pid)
                .await
                .map_err(failed("jobs"))?;
            let secs = a.latency_secs as f64;
            // Where the cores went while the latency run's jobs arrive (and
            // then while they are read back: the lines carry their times).
            let cpu_timeline = a.trace.is_some().then(|| CpuTimeline::start(server_pid));
            let (samples, latency_cpu) = bench
                .start_latency(rate / 2.0, secs, server_pid, LATENCY_ARRIVAL)
                .await
                .map_err(failed("jobs latency"))?;
            if let (Some(path), Some(timeline)) = (&a.trace, cpu_timeline) {
                append_lines(path, timeline.finish())?;
            }
            let f = JobFigures::new(rate, rate / 2.0, samples);
            t.add_ratio(
                "jobs",
                "jobs end to end (enqueue → no-op → result stored), 64 running",
                f.rate,
                "/s",
                "bare_grpc",
            );
            let at = format!(
                "at {:.0} jobs/s open loop, {} samples",
                f.arrival_rate, f.samples
            );
            t.add(
                "start_p50",
                format!("scheduled send → plugin start p50, {at}"),
                f.p50,
                "ms",
            );
            t.add(
                "start_p99",
                "scheduled send → plugin start p99",
                f.p99,
                "ms",
            );
            t.add(
                "start_p999",
                "scheduled send → plugin start p99.9",
                f.p999,
                "ms",
            );
            t.add(
                "start_p99_from_call",
                "enqueue call → plugin start p99 (the former clock, for comparison)",
                f.p99_from_call,
                "ms",
            );
            if let Some(path) = &a.trace {
                append_jobs(path, &f.jobs)?;
            }
            for (key, label, value) in [
                (
                    "tail_sender",
                    "  the slowest 1 %: scheduled → Enqueue called (sender)",
                    f.tail.sender,
                ),
                (
                    "tail_enqueue",
                    "  the slowest 1 %: Enqueue called → acknowledged",
                    f.tail.enqueue,
                ),
                (
                    "tail_queued",
                    "  the slowest 1 %: acknowledged → dispatch step began",
                    f.tail.queued,
                ),
                (
                    "tail_dispatch",
                    "  the slowest 1 %: dispatch step began → plugin start",
                    f.tail.dispatch,
                ),
            ] {
                t.add(key, label, value, "ms");
            }
            jobs_cpu.add_to(
                &mut t,
                ["jobs_cpu_busy", "jobs_cpu_server", "jobs_cpu_bench"],
                "the jobs run",
            );
            latency_cpu.add_to(
                &mut t,
                [
                    "latency_cpu_busy",
                    "latency_cpu_server",
                    "latency_cpu_bench",
                ],
                "the latency run (half load), while sending",
            );
            // Half load for the kind of arrival the latency run sends:
            // single Enqueue calls cost the server about twice the CPU
            // per job of the batches the rate above is measured with, so
            // half that rate keeps the cores most of the time busy.
            eprintln!("bench: single Enqueue calls, then half their rate…");
            let single = bench
                .single_enqueue_rate((a.jobs as usize / 4).max(100), 64)
                .await
                .map_err(failed("single Enqueue rate"))?;
            t.add(
                "jobs_single",
                "jobs end to end, single Enqueue calls from 64 callers (closed loop)",
                single,
                "/s",
            );
            let (samples, single_cpu) = bench
                .start_latency(single / 2.0, secs, server_pid, Arrival::Calls)
                .await
                .map_err(failed("jobs latency"))?;
            let h = JobFigures::new(single, single / 2.0, samples);
            t.add(
                "half_single_start_p50",
                format!(
                    "scheduled send → plugin start p50, at {:.0} jobs/s (half the single-call rate)",
                    h.arrival_rate
                ),
                h.p50,
                "ms",
            );
            t.add(
                "half_single_start_p99",
                "scheduled send → plugin start p99, half the single-call rate",
                h.p99,
                "ms",
            );
            t.add(
                "half_single_start_p999",
                "scheduled send → plugin start p99.9, half the single-call rate",
                h.p999,
                "ms",
            );
            single_cpu.add_to(
                &mut t,
                [
                    "half_single_cpu_busy",
                    "half_single_cpu_server",
                    "half_single_cpu_bench",
                ],
                "half the single-call rate, while sending",
            );
            t.add(
                "enqueue_ack_p50",
                "Enqueue acknowledged (durable), p50",
                f.ack_p50,
                "ms",
            );
            t.add(
                "enqueue_ack_p99",
                "Enqueue acknowledged (durable), p99",
                f.ack_p99,
                "ms",
            );
            eprintln!("bench: job wait…");
            let mut waits = bench.wait_latency(200).await.map_err(failed("job wait"))?;
            waits.sort_unstable();
            t.add(
                "wait_p50",
                "plugin returned → WatchJob (job wait) sees it succeeded, p50",
                percentile_ms(&waits, 0.5),
                "ms",
            );
            t.add(
                "wait_p99",
                "plugin returned → WatchJob (job wait) sees it succeeded, p99",
                percentile_ms(&waits, 0.99),
                "ms",
            );
            eprintln!("bench: Submit latency at half the registration rate…");
            let mut acks = submit_latency(
                load.clone(),
                register_max / 2.0,
                secs,
                &format!("submit-{run}"),
            )
            .await
            .map_err(failed("Submit latency"))?;
            acks.sort_unstable();
            t.add(
                "submit_ack_p50",
                format!(
                    "Submit acknowledged (durable) at {:.0}/s open loop, p50",
                    register_max / 2.0
                ),
                percentile_ms(&acks, 0.5),
                "ms",
            );
            t.add(
                "submit_ack_p99",
                "Submit acknowledged (durable), p99",
                percentile_ms(&acks, 0.99),
                "ms",
            );
            eprintln!("bench: mixed load (registrations and jobs, each at 40 % of its max)…");
            let label = format!("mixed-{run}");
            let (acks, jobs) = tokio::join!(
                submit_latency(load.clone(), register_max * 0.4, secs, &label),
                bench.start_latency(rate * 0.4, secs, server_pid, LATENCY_ARRIVAL),
            );
            let mut acks = acks.map_err(failed("mixed load"))?;
            acks.sort_unstable();
            let (jobs, mixed_cpu) = jobs.map_err(failed("mixed load"))?;
            let m = JobFigures::new(rate, rate * 0.4, jobs);
            t.add(
                "mixed_submit_ack_p50",
                format!(
                    "mixed ({:.0} registrations/s + {:.0} jobs/s): Submit acknowledged, p50",
                    register_max * 0.4,
                    rate * 0.4
                ),
                percentile_ms(&acks, 0.5),
                "ms",
            );
            t.add(
                "mixed_submit_ack_p99",
                "mixed: Submit acknowledged, p99",
                percentile_ms(&acks, 0.99),
                "ms",
            );
            t.add(
                "mixed_enqueue_ack_p99",
                "mixed: Enqueue acknowledged, p99",
                m.ack_p99,
                "ms",
            );
            t.add(
                "mixed_start_p50",
                "mixed: scheduled send → plugin start, p50",
                m.p50,
                "ms",
            );
            t.add(
                "mixed_start_p99",
                "mixed: scheduled send → plugin start, p99",
                m.p99,
                "ms",
            );
            t.add(
                "mixed_start_p999",
                "mixed: scheduled send → plugin start, p99.9",
                m.p999,
                "ms",
            );
            mixed_cpu.add_to(
                &mut t,
                ["mixed_cpu_busy", "mixed_cpu_server", "mixed_cpu_bench"],
                "mixed, while sending",
            );
            if let Some(pid) = server_process.as_ref().map(|s| s.0.id()) {
                if let Some(mb) = peak_rss_mb(pid) {
                    t.add(
                        "server_peak_rss",
                        "server peak RSS so far (VmHWM)",
                        mb,
                        "MB",
                    );
                }
            }
        }
        // The pool figures spawn servers of their own on a data dir: not
        // repeated for a PostgreSQL run.
        if a.server.is_none() && store.is_none() {
            let pool = dir.join("pool");
            std::fs::create_dir_all(&pool).map_err(super::files::io(&pool))?;
            super::bench_pool::measure(
                &mut t,
                &pool,
                &plugin_bin,
                &key_path,
                (&sk, &did),
                a.jobs as usize,
            )
            .await?;
        }
        Ok::<(), CliError>(())
    })?;
    if let Some(peer) = a.peer_apalis.as_ref().filter(|_| with_peer) {
        eprintln!("bench: apalis + SQLite, the same workload…");
        let out = Command::new(peer)
            .arg(a.jobs.to_string())
            .arg(dir)
            .args(["--workers", &APALIS_WORKERS.to_string()])
            .args(["--concurrency", &IN_FLIGHT.to_string()])
            .args(["--batch-size", &APALIS_BATCH.to_string()])
            .args(["--poll-interval-ms", &APALIS_POLL_MS.to_string()])
            .output()
            .map_err(|e| failed("--peer-apalis")(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            failed("--peer-apalis")(format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
        })?;
        let rate = v["jobs_per_second"]
            .as_f64()
            .ok_or_else(|| failed("--peer-apalis")("no jobs_per_second".into()))?;
        // The settings as the peer reports them (an older peer binary
        // ignores flags it does not know of and reports none).
        let setting = |k: &str| v[k].as_u64().map_or("?".to_owned(), |x| x.to_string());
        t.add_ratio(
            "apalis_jobs",
            format!(
                "apalis 1.0 + SQLite (synchronous=FULL), {} no-op jobs, backlog {}, \
                 {} workers × {}, fetch {}, poll {} ms",
                a.jobs,
                setting("backlog"),
                setting("workers"),
                v["concurrency"]
                    .as_u64()
                    .zip(v["workers"].as_u64())
                    .map_or("?".to_owned(), |(c, w)| c.div_ceil(w.max(1)).to_string()),
                setting("batch_size"),
                setting("poll_interval_ms"),
            ),
            rate,
            "/s",
            "fsync",
        );
        if let Some(jobs) = t.value("jobs") {
            t.add_ratio(
                "jobs_vs_apalis",
                "pulse-ledger jobs/s in the same run (value) ÷ apalis jobs/s",
                jobs,
                "/s",
                "apalis_jobs",
            );
        }
    }
    eprintln!("bench: resolution…");
    let (cached, cold) = resolution_cost(dir).map_err(failed("resolution"))?;
    t.add("resolve_cached", "resolution, cached verdict", cached, "µs");
    t.add(
        "resolve_cold",
        "resolution, cold, 10-statement handler chain",
        cold,
        "µs",
    );
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(server: Option<&str>) -> Args {
        Args {
            server: server.map(str::to_owned),
            spread: Vec::new(),
            plugin_key: None,
            token: None,
            ca: None,
            jobs: 500,
            registrations: 100,
            runs: 1,
            latency_secs: 1,
            plugin_bin: None,
            peer_apalis: None,
            python_bench: None,
            trace: None,
            check: false,
            python: "python3".into(),
            store: None,
            peer_apalis_postgres: None,
            json: false,
            yes: false,
        }
    }

    #[test]
    fn ceilings_measured_for_a_remote_server_are_labelled_as_the_client_hosts() {
        let label = "ed25519 verify_strict, one core";
        assert_eq!(ceiling(&args(None), label), label);
        let remote = ceiling(&args(Some("http://10.0.0.2:7300")), label);
        assert!(remote.starts_with(label) && remote.ends_with("[client host]"));
    }

    #[test]
    fn a_run_summary_gives_the_runs_own_peer_ratio() {
        let mut fjall = Table::default();
        fjall.add("jobs", "jobs", 14_000.0, "/s");
        assert_eq!(
            run_summary(1, &fjall, None),
            "bench: run 1: jobs end to end 14000/s"
        );
        let mut pg = Table::default();
        pg.add("jobs", "jobs", 9_000.0, "/s");
        assert_eq!(
            run_summary(2, &fjall, Some(&pg)),
            "bench: run 2: jobs end to end 14000/s; on PostgreSQL 9000/s"
        );
        pg.add("apalis_postgres", "peer", 2_000.0, "/s");
        assert_eq!(
            run_summary(3, &fjall, Some(&pg)),
            "bench: run 3: jobs end to end 14000/s; on PostgreSQL 9000/s; apalis + PostgreSQL 2000/s, ratio 4.50"
        );
    }
}
