//! Shared test helpers: deterministic keys and statement builders.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod cdp;
pub mod cluster;
pub mod console;

use std::path::PathBuf;

use ed25519_dalek::SigningKey;
use pulse_ledger::{
    Action, Attestation, Did, Family, HandlerSchema, PluginSchema, Schema, Statement,
    sign_statement,
};

pub struct Key {
    pub sk: SigningKey,
    pub did: Did,
}

pub fn key(label: &str) -> Key {
    let sk = SigningKey::from_bytes(&blake3::derive_key("pulse-ledger tests", label.as_bytes()));
    let did = Did::from_verifying_key(&sk.verifying_key()).unwrap();
    Key { sk, did }
}

pub fn plugin_register(k: &Key, name: &str) -> Attestation {
    let st = Statement {
        family: Family::Plugin,
        subject: k.did.clone(),
        signer: k.did.clone(),
        seq: 0,
        prev: None,
        issued_at: 1_000,
        action: Action::Register(Schema::Plugin(PluginSchema::new(name, "1.0.0"))),
    };
    sign_statement(&st, &k.sk, None).unwrap()
}

pub fn handler_register(k: &Key, name: &str, plugin: &Did) -> Attestation {
    handler_register_with(k, name, plugin, |_| {})
}

/// A handler genesis whose schema `edit` adjusts.
pub fn handler_register_with(
    k: &Key,
    name: &str,
    plugin: &Did,
    edit: impl FnOnce(&mut HandlerSchema),
) -> Attestation {
    let mut schema = HandlerSchema::new(name, "1.0.0", plugin.clone());
    edit(&mut schema);
    let st = Statement {
        family: Family::Handler,
        subject: k.did.clone(),
        signer: k.did.clone(),
        seq: 0,
        prev: None,
        issued_at: 1_000,
        action: Action::Register(Schema::Handler(schema)),
    };
    sign_statement(&st, &k.sk, None).unwrap()
}

/// The statement after `prev`, signed by `signer` (and `new_key` for a rotation).
pub fn next(
    prev: &Attestation,
    signer: &Key,
    action: Action,
    new_key: Option<&Key>,
) -> Attestation {
    let p = prev.statement();
    let st = Statement {
        family: p.family,
        subject: p.subject.clone(),
        signer: signer.did.clone(),
        seq: p.seq + 1,
        prev: Some(prev.id()),
        issued_at: p.issued_at + 1,
        action,
    };
    sign_statement(&st, &signer.sk, new_key.map(|k| &k.sk)).unwrap()
}

pub fn update_handler(
    prev: &Attestation,
    signer: &Key,
    name: &str,
    plugin: &Did,
    version: &str,
) -> Attestation {
    let schema = HandlerSchema::new(name, version, plugin.clone());
    next(prev, signer, Action::Update(Schema::Handler(schema)), None)
}

/// Writes `k` as a key file in `dir` (the format `keygen` writes).
pub fn key_file(dir: &std::path::Path, k: &Key) -> PathBuf {
    let path = dir.join(format!("{}.key", &k.did.to_string()[8..20]));
    std::fs::write(
        &path,
        format!(
            "# did: {}\nPULSE-LEDGER-SECRET-KEY-1 {}\n",
            k.did,
            hex::encode(k.sk.to_bytes())
        ),
    )
    .unwrap();
    path
}

pub fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pulse-ledger-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `pulse-ledger serve` process on an ephemeral port, killed when
/// dropped.
pub struct Serve {
    pub child: std::process::Child,
    /// `http://ADDR` of the gRPC API.
    pub url: String,
    /// `ADDR` of the Prometheus endpoint, when ARGS had `--metrics-listen`.
    pub metrics: Option<String>,
}

impl Serve {
    /// Runs `serve --listen 127.0.0.1:0 ARGS --data-dir DIR` and waits for
    /// its first line (the address it listens on), and the second (the
    /// metrics address) if ARGS has `--metrics-listen`. Its stderr goes to
    /// the test's.
    pub fn start(args: &[&str], data_dir: &std::path::Path) -> Serve {
        Serve::start_with_env(args, data_dir, &[])
    }

    /// [`Serve::start`] with extra environment variables.
    pub fn start_with_env(
        args: &[&str],
        data_dir: &std::path::Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Serve {
        let mut cmd = Serve::command(args, data_dir);
        cmd.envs(env.iter().copied());
        Serve::spawn(cmd, args.contains(&"--metrics-listen"))
    }

    /// The command [`Serve::start`] runs, for a caller to adjust (its
    /// stderr, its limits) before [`Serve::spawn`].
    pub fn command(args: &[&str], data_dir: &std::path::Path) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn");
        cmd
    }

    /// Spawns a `serve` command and waits for its address line, and the
    /// metrics line when `metrics` (it was given `--metrics-listen`).
    pub fn spawn(mut cmd: std::process::Command, metrics: bool) -> Serve {
        use std::io::BufRead;
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let addr = first.split_whitespace().nth(3).unwrap().to_owned();
        // "metrics on http://ADDR/metrics"
        let metrics = metrics.then(|| {
            let second = lines.next().unwrap().unwrap();
            let url = second.split_whitespace().nth(2).unwrap();
            url.trim_start_matches("http://")
                .trim_end_matches("/metrics")
                .to_owned()
        });
        Serve {
            child,
            url: format!("http://{addr}"),
            metrics,
        }
    }

    /// The value of the sample `name` (with its labels, as written, e.g.
    /// `x_total{outcome="applied"}`) on the metrics endpoint; 0 when absent.
    pub async fn metric(&self, name: &str) -> u64 {
        let body = self.http_get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    /// The whole HTTP response (status line, headers, body) to `GET path`
    /// on the metrics listener.
    pub async fn http_get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self
            .metrics
            .as_deref()
            .expect("started with --metrics-listen");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body
    }

    /// Waits until the sample `name` is at least `want` (at most 30 s: a
    /// bound against hanging, not a timing the test relies on).
    pub async fn metric_reaches(&self, name: &str, want: u64) -> u64 {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let got = self.metric(name).await;
            if got >= want {
                return got;
            }
            assert!(
                std::time::Instant::now() < until,
                "{name} is {got}, never reached {want}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(mut self) {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's log info (size, log key, origin).
pub async fn log_info(
    reg: &mut pulse_ledger::api::proto::registry_client::RegistryClient<tonic::transport::Channel>,
) -> pulse_ledger::api::proto::GetLogInfoResponse {
    reg.get_log_info(pulse_ledger::api::proto::GetLogInfoRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// One job, which must exist.
pub async fn job(
    jobs: &mut pulse_ledger::api::proto::jobs_client::JobsClient<tonic::transport::Channel>,
    id: &[u8],
) -> pulse_ledger::api::proto::Job {
    jobs.get_job(pulse_ledger::api::proto::GetJobRequest { id: id.to_vec() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

/// The spec code of a refusal: its google.rpc.ErrorInfo reason.
pub fn reason(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    s.get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Runs `pulse-ledger verify log --server URL --log-key DID` and asserts
/// that the audit passes (printing its output if not).
pub fn verify_log_passes(url: &str, log_did: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args(["verify", "log", "--server", url, "--log-key", log_did])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls until the job is finished (succeeded, dead or cancelled), at
/// most `secs`.
pub async fn finished(
    jobs: &mut pulse_ledger::api::proto::jobs_client::JobsClient<tonic::transport::Channel>,
    id: &[u8],
    secs: u64,
) -> pulse_ledger::api::proto::Job {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let j = job(jobs, id).await;
        if ["succeeded", "dead", "cancelled"].contains(&j.state.as_str()) {
            return j;
        }
        assert!(
            std::time::Instant::now() < until,
            "job {} still {} ({}) after {secs} s: {}",
            hex::encode(id),
            j.state,
            j.reason,
            j.last_error
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An operator token and its `[[token]]` config table, from
/// `pulse-ledger token create`.
pub fn operator_token(name: &str, scopes: &[&str]) -> (String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"));
    cmd.args(["token", "create", "--name", name, "--json"])
        .env_remove("PULSE_LEDGER_TOKEN")
        .env_remove("PULSE_LEDGER_AS_KEY");
    for s in scopes {
        cmd.args(["--scope", s]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["token"].as_str().unwrap().to_owned(),
        v["config"].as_str().unwrap().to_owned(),
    )
}

/// The path of a TLS fixture (`tests/fixtures/tls/NAME`).
pub fn fixture(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
        .display()
        .to_string()
}

/// A `[[plugin]]` config table that spawns the test plugin with `args`,
/// logging its events to `events`.
pub fn plugin_table(name: &str, args: &[String], events: &std::path::Path) -> String {
    plugin_table_with(name, args, events, &[])
}

/// The same, with more environment variables for the plugin.
pub fn plugin_table_with(
    name: &str,
    args: &[String],
    events: &std::path::Path,
    env: &[(&str, &str)],
) -> String {
    let mut argv = vec![format!("{:?}", env!("CARGO_BIN_EXE_pulse-test-plugin"))];
    argv.extend(args.iter().map(|a| format!("{a:?}")));
    let mut vars = vec![format!(
        "PULSE_TEST_PLUGIN_EVENTS = {:?}",
        events.display().to_string()
    )];
    vars.extend(env.iter().map(|(k, v)| format!("{k} = {v:?}")));
    format!(
        "[[plugin]]\nname = {name:?}\ncommand = [{}]\nenv = {{ {} }}\n",
        argv.join(", "),
        vars.join(", ")
    )
}

/// Runs `pulse-ledger ARGS --server URL` with no token in the
/// environment; (exit code, stdout, stderr).
pub fn cli_at(url: &str, args: &[&str]) -> (i32, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args(args)
        .args(["--server", url])
        .env_remove("PULSE_LEDGER_TOKEN")
        .env_remove("PULSE_LEDGER_AS_KEY")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

/// A new, empty PostgreSQL database for one test, on the server that
/// `PULSE_TEST_POSTGRES` names (a URL whose user may create databases;
/// `.ci/run` starts one). `None`, with a printed notice, when it is not
/// set; in CI (`PULSE_LEDGER_CI`) its absence fails the test instead, so
/// the PostgreSQL suites never skip there.
pub fn postgres_database(name: &str) -> Option<String> {
    let Ok(admin) = std::env::var("PULSE_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("PULSE_LEDGER_CI").is_none(),
            "PULSE_TEST_POSTGRES is not set: CI must run the PostgreSQL suites (.ci/run starts a cluster)"
        );
        eprintln!(
            "skipped on PostgreSQL ({name}): set PULSE_TEST_POSTGRES=postgres://USER@HOST:PORT/postgres to run it"
        );
        return None;
    };
    // PostgreSQL cuts names at 63 bytes: a short prefix, and a hash of
    // the whole name so that two long names cannot meet.
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let db = format!("pl_{clean}_{:08x}_{}", hash as u32, std::process::id());
    let statements = [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ];
    let admin_url = admin.clone();
    // Its own thread and runtime: a test may already be inside one.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("PULSE_TEST_POSTGRES={admin_url}: {e}"));
            tokio::spawn(conn);
            drop_leftovers(&client).await;
            // One at a time: neither may run inside a transaction block.
            for s in &statements {
                client.batch_execute(s).await.unwrap();
            }
        });
    })
    .join()
    .unwrap();
    let (base, _) = admin.rsplit_once('/').expect("a URL ending in /DATABASE");
    Some(format!("{base}/{db}"))
}

/// Drops, once per test process, the databases that [`postgres_database`]
/// made for test processes no longer running (their names end in the
/// process ID), so that a developer's cluster does not gain a database
/// per PostgreSQL test on every run. A database of a live process (one
/// test process per test, or an ID reused) is left alone, and so is one
/// that has a connection (a test on another machine sharing the cluster:
/// no `WITH (FORCE)`). Where processes cannot be looked up (no /proc),
/// nothing is dropped.
async fn drop_leftovers(client: &tokio_postgres::Client) {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    {
        let mut done = ONCE.lock().unwrap_or_else(|p| p.into_inner());
        if *done {
            return;
        }
        *done = true;
    }
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'pl\\_%'",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let name: String = row.get(0);
        let Some(pid) = name.rsplit('_').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Refused while it has a connection; another process may be
        // dropping it too.
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
            .await;
    }
}

/// Where a test keeps its log and jobs: a fjall data dir, or a fresh
/// PostgreSQL database (with a data dir beside it for the log key).
#[derive(Clone, Debug)]
pub enum Place {
    Fjall(PathBuf),
    Postgres { dir: PathBuf, url: String },
}

impl Place {
    /// A new place on `backend` ("fjall" or "postgres"); `None` when
    /// PostgreSQL is not configured ([`postgres_database`]).
    pub fn new(backend: &str, name: &str) -> Option<Place> {
        let dir = tempdir(&format!("{name}-{backend}"));
        match backend {
            "fjall" => Some(Place::Fjall(dir)),
            _ => postgres_database(name).map(|url| Place::Postgres { dir, url }),
        }
    }

    /// The data dir (PostgreSQL: where the log key is).
    pub fn dir(&self) -> &std::path::Path {
        match self {
            Place::Fjall(dir) | Place::Postgres { dir, .. } => dir,
        }
    }

    /// The storage itself, to look under the stores (or tamper with them).
    pub fn storage(&self) -> pulse_ledger::storage::Storage {
        use pulse_ledger::storage::{FjallBackend, FjallOptions, PostgresBackend, Storage};
        match self {
            Place::Fjall(dir) => {
                Storage::new(FjallBackend::open(&dir.join("db"), FjallOptions::default()).unwrap())
            }
            Place::Postgres { url, .. } => Storage::new(PostgresBackend::open(url).unwrap()),
        }
    }

    /// Handles on the storage for `n` writers: on PostgreSQL `n` backends
    /// of their own, opened to each other ([`PostgresBackend::share`]) as
    /// the nodes of a cluster are; fjall, which one process opens, shares
    /// one handle.
    pub fn writers(&self, n: usize) -> Vec<pulse_ledger::storage::Storage> {
        use pulse_ledger::storage::{PostgresBackend, Storage};
        match self {
            Place::Fjall(_) => vec![self.storage(); n],
            Place::Postgres { url, .. } => (0..n)
                .map(|_| {
                    let pg = PostgresBackend::open(url).unwrap();
                    pg.share().unwrap();
                    Storage::new(pg)
                })
                .collect(),
        }
    }

    /// Opens the ledger here with `config` (its data dir is this place's).
    pub fn open_ledger(
        &self,
        mut config: pulse_ledger::ledger::LedgerConfig,
    ) -> Result<pulse_ledger::ledger::Ledger, pulse_ledger::ledger::LedgerError> {
        config.data_dir = self.dir().to_path_buf();
        match self {
            Place::Fjall(_) => pulse_ledger::ledger::Ledger::open(config),
            Place::Postgres { dir, .. } => {
                pulse_ledger::ledger::Ledger::open_on(self.storage(), &dir.join("log.key"), config)
            }
        }
    }

    /// Opens the ledger here, named `origin`.
    pub fn ledger(&self, origin: &str) -> pulse_ledger::ledger::Ledger {
        self.open_ledger(pulse_ledger::ledger::LedgerConfig::new(self.dir(), origin))
            .unwrap()
    }
}

/// Defines `mod NAME { fn fjall(); fn postgres(); }`: the test function
/// NAME(place) run on each backend (PostgreSQL when configured).
#[macro_export]
macro_rules! on_every_backend {
    ($name:ident) => {
        mod $name {
            #[test]
            fn fjall() {
                super::$name($crate::common::Place::new("fjall", stringify!($name)).unwrap());
            }

            #[test]
            fn postgres() {
                if let Some(place) = $crate::common::Place::new("postgres", stringify!($name)) {
                    super::$name(place);
                }
            }
        }
    };
}

/// The storage a `serve` under test keeps its data in.
#[derive(Clone, Debug)]
pub enum Backend {
    /// The data dir's fjall database (the default).
    Fjall,
    /// A PostgreSQL database (`--store URL`).
    Postgres(String),
}

impl Backend {
    /// `name`, told apart per backend (for temp dirs: both variants of a
    /// test run at once).
    pub fn dir_name(&self, name: &str) -> String {
        match self {
            Backend::Fjall => format!("{name}-fjall"),
            Backend::Postgres(_) => format!("{name}-postgres"),
        }
    }

    /// The `serve` arguments that choose it.
    pub fn args(&self) -> Vec<String> {
        match self {
            Backend::Fjall => Vec::new(),
            Backend::Postgres(url) => vec!["--store".into(), url.clone()],
        }
    }
}

/// Defines `mod NAME { async fn fjall(); async fn postgres(); }`: the
/// async test NAME(backend) run against a `serve` on each backend
/// (PostgreSQL when configured).
#[macro_export]
macro_rules! serve_on_every_backend {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fjall() {
                super::$name($crate::common::Backend::Fjall).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(url) = $crate::common::postgres_database(stringify!($name)) {
                    super::$name($crate::common::Backend::Postgres(url)).await;
                }
            }
        }
    };
}

/// Submits each attestation, in order, through `reg`.
pub async fn submit_all(
    reg: &mut pulse_ledger::api::proto::registry_client::RegistryClient<tonic::transport::Channel>,
    attestations: &[Attestation],
) {
    for a in attestations {
        reg.submit(pulse_ledger::api::proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
}
