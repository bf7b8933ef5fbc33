//! `pulse-ledger serve`: settings from flags, `PULSE_LEDGER_*` environment
//! variables and a TOML file (flags win, then environment, then file, then
//! defaults), then the gRPC server until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Deserialize;

use super::error::CliError;
use crate::api::{ServeConfig, serve};
use crate::plugin::{PluginConfig, PluginSource};

/// Default data directory: embedded storage, created if missing.
pub(crate) const DEFAULT_DATA_DIR: &str = "./pulse-ledger-data";
/// Default gRPC address.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:7300";
/// Default log name (checkpoint origin); set your own for a public log.
pub(crate) const DEFAULT_LOG_NAME: &str = "pulse-ledger.local/log";

/// Run the gRPC registry API on an embedded data dir.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  pulse-ledger serve
  pulse-ledger serve --data-dir /var/lib/pulse-ledger --listen 0.0.0.0:7300 \\
      --log-name ledger.example.com/prod --metrics-listen 127.0.0.1:9300 \\
      --tls-cert server.pem --tls-key server.key --config pulse-ledger.toml
  pulse-ledger serve --http-listen 127.0.0.1:7380   # the web console at http://127.0.0.1:7380/
  PULSE_LEDGER_LISTEN=127.0.0.1:7400 pulse-ledger serve --config pulse-ledger.toml
  pulse-ledger serve --store postgres://pulse@db.internal/pulse --log-key /etc/pulse/log.key
  pulse-ledger serve --store postgres://pulse@db.internal/pulse --log-key /etc/pulse/log.key \
      --node node-a --listen 0.0.0.0:7300

Config file keys (TOML): data_dir, store, log_key, node, listen, log_name, metrics_listen, http_listen, otlp_endpoint,
job_retention_hours, max_running, fair_share_percent, max_handler_concurrency,
max_timeout_ms, plugin_wait_secs, heartbeat_timeout_ms,
cancel_grace_ms, plugin_health_interval_ms, tls_cert, tls_key,
tls_client_ca, allow_plaintext, allow_unauthenticated, did_tokens, submit_rate,
submit_burst, submit_daily, did_enqueue_rate, did_enqueue_burst, read_rate, read_burst, rate_limit_loopback, min_free_mb, log_reserve_mb,
write_queue_depth,
max_connections, max_connections_per_client, handshake_timeout_ms,
max_streams_per_client, idle_timeout_ms, drain_grace_ms, one [[plugin]]
table per plugin and one
[[token]] table per bearer token (pulse-ledger token create prints it):

  [[plugin]]
  name = \"tools\"
  command = [\"./target/release/pulse-test-plugin\", \"--key\", \"plugin.key\"]
  # or: address = \"https://plugins.internal:7400\"   (already running)
  #     tls_ca = \"ca.pem\"  tls_cert = \"client.pem\"  tls_key = \"client.key\"
  # id = \"did:key:z6Mk...\"   (the plugin ID it must prove; optional)
  # env = { RUST_LOG = \"debug\" }   dir = \"/srv/plugins\"
  # instances = 4   (a pool: the command started 4 times, each proving the key)

  [[token]]
  name = \"ci\"
  hash = \"blake3:00c6cc13...\"
  scopes = [\"enqueue\", \"read\"]

Off loopback, serve needs TLS and at least one token, or refuses to start
(spec/security.md). Precedence: flags, then PULSE_LEDGER_* variables, then
the file, then defaults.
Logs go to stderr (RUST_LOG=debug for more). SIGINT/SIGTERM stop accepting,
finish in-flight appends, persist, and exit 0. SIGHUP reads the config
file's [[token]] tables again (tokens added or revoked without a restart).

Try it: grpcurl -plaintext 127.0.0.1:7300 list")]
pub(crate) struct Args {
    /// Data directory (fjall database + log key); created if missing
    /// [default: ./pulse-ledger-data].
    #[arg(long, env = "PULSE_LEDGER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep the log and the jobs in this PostgreSQL database instead of
    /// the data dir (postgres://USER[:PASSWORD]@HOST[:PORT]/DB); its schema
    /// is created or migrated at start. Over a network add
    /// ?sslmode=require&sslrootcert=CA.pem: the server's certificate is
    /// always verified (spec/storage.md).
    #[arg(long, env = "PULSE_LEDGER_STORE", value_name = "URL")]
    store: Option<String>,
    /// The log's signing key file, with --store [default: DIR/log.key].
    /// Created with a new log; required afterwards (never stored in the
    /// database).
    #[arg(long, env = "PULSE_LEDGER_LOG_KEY", value_name = "FILE")]
    log_key: Option<PathBuf>,
    /// Run as the node NAME of several servers sharing the --store
    /// database (every one with its own --node name and the same
    /// --log-key); without it a server holds its store alone
    /// (spec/ledger.md and spec/pulse.md, "Several nodes").
    #[arg(long, env = "PULSE_LEDGER_NODE", value_name = "NAME")]
    node: Option<String>,
    /// gRPC listen address [default: 127.0.0.1:7300].
    #[arg(long, env = "PULSE_LEDGER_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The log's name: its checkpoints' origin line; fixed when the data dir
    /// is created [default: pulse-ledger.local/log].
    #[arg(long, env = "PULSE_LEDGER_LOG_NAME", value_name = "NAME")]
    log_name: Option<String>,
    /// Serve Prometheus metrics over HTTP here (off by default), with
    /// /healthz and /readyz.
    #[arg(long, env = "PULSE_LEDGER_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve the web console here (off by default): pages for jobs,
    /// handlers, plugins and the log, and their JSON API under /api/v1/
    /// (spec/console.md), over TLS with --tls-cert, with the same tokens
    /// and scopes as the gRPC API.
    #[arg(long, env = "PULSE_LEDGER_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Export traces over OTLP/gRPC to this collector
    /// (`http://127.0.0.1:4317`; off by default): a span per RPC and per
    /// attempt, carried into plugins as W3C trace context.
    #[arg(long, env = "PULSE_LEDGER_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Diagnostics: append a timeline of the hot paths to FILE, one JSON
    /// line per dispatcher step, group commit (the job store's and the
    /// log's; on PostgreSQL also each statement, `pg_commit`), journal
    /// fsync and storage event (flush, compaction, write halt), with start
    /// and duration in µs, to match a latency stall to its cause
    /// (BENCHMARKS.md; `bench --trace`).
    #[arg(long, value_name = "FILE")]
    timeline: Option<std::path::PathBuf>,
    /// Delete finished jobs this many hours after their last change
    /// [default: 168]. The ledger is never pruned.
    #[arg(long, env = "PULSE_LEDGER_JOB_RETENTION_HOURS", value_name = "HOURS")]
    job_retention_hours: Option<u64>,
    /// Attempts running at once over all handlers [default: 64].
    #[arg(long, env = "PULSE_LEDGER_MAX_RUNNING", value_name = "N")]
    max_running: Option<usize>,
    /// How long a job waits, held, for its plugin to connect before it
    /// fails with plugin_not_connected [default: 60].
    #[arg(long, env = "PULSE_LEDGER_PLUGIN_WAIT_SECS", value_name = "SECS")]
    plugin_wait_secs: Option<u64>,
    /// TOML file with the same settings, and the [[plugin]] and [[token]]
    /// tables.
    #[arg(long, env = "PULSE_LEDGER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve gRPC over TLS with this PEM certificate chain (with --tls-key).
    #[arg(
        long,
        env = "PULSE_LEDGER_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        env = "PULSE_LEDGER_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA (mutual TLS).
    #[arg(long, env = "PULSE_LEDGER_TLS_CLIENT_CA", value_name = "PEM")]
    tls_client_ca: Option<PathBuf>,
    /// Serve plaintext gRPC on a non-loopback address (behind a proxy that
    /// terminates TLS).
    #[arg(long, env = "PULSE_LEDGER_ALLOW_PLAINTEXT")]
    allow_plaintext: bool,
    /// Serve the Jobs API without tokens on a non-loopback address.
    #[arg(long, env = "PULSE_LEDGER_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// Submissions per second per client address; 0 turns the limit off
    /// [default: 100].
    #[arg(long, env = "PULSE_LEDGER_SUBMIT_RATE", value_name = "N")]
    submit_rate: Option<u32>,
    /// Submissions a quiet client may make at once [default: 1000].
    #[arg(long, env = "PULSE_LEDGER_SUBMIT_BURST", value_name = "N")]
    submit_burst: Option<u32>,
    /// Refuse writes (disk_full) while the data dir's disk has less than
    /// this many MiB free; 0 turns the guard off [default: 128].
    #[arg(long, env = "PULSE_LEDGER_MIN_FREE_MB", value_name = "MIB")]
    min_free_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    store: Option<String>,
    log_key: Option<PathBuf>,
    node: Option<String>,
    listen: Option<SocketAddr>,
    log_name: Option<String>,
    metrics_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    otlp_endpoint: Option<String>,
    job_retention_hours: Option<u64>,
    max_running: Option<usize>,
    plugin_wait_secs: Option<u64>,
    heartbeat_timeout_ms: Option<u64>,
    cancel_grace_ms: Option<u64>,
    plugin_health_interval_ms: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    allow_plaintext: Option<bool>,
    allow_unauthenticated: Option<bool>,
    did_tokens: Option<bool>,
    submit_rate: Option<u32>,
    submit_burst: Option<u32>,
    submit_daily: Option<u32>,
    did_enqueue_rate: Option<u32>,
    did_enqueue_burst: Option<u32>,
    rate_limit_loopback: Option<bool>,
    min_free_mb: Option<u64>,
    write_queue_depth: Option<usize>,
    log_reserve_mb: Option<u64>,
    fair_share_percent: Option<usize>,
    read_rate: Option<u32>,
    read_burst: Option<u32>,
    max_handler_concurrency: Option<u32>,
    max_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    max_streams_per_client: Option<usize>,
    idle_timeout_ms: Option<u64>,
    drain_grace_ms: Option<u64>,
    #[serde(default)]
    plugin: Vec<PluginTable>,
    #[serde(default)]
    token: Vec<crate::auth::TokenTable>,
}

/// One `[[plugin]]` table: a command to spawn or a remote address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginTable {
    name: String,
    command: Option<Vec<String>>,
    address: Option<String>,
    id: Option<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    dir: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_domain: Option<String>,
    #[serde(default)]
    allow_plaintext: bool,
    instances: Option<u32>,
}

/// Most instances one `[[plugin]]` command may be started as.
const MAX_INSTANCES: u32 = 256;

impl PluginTable {
    fn resolve(self, file: &std::path::Path) -> Result<PluginConfig, CliError> {
        let bad = |why: String| {
            CliError::Usage(format!(
                "{}: [[plugin]] {:?}: {why}",
                file.display(),
                self.name
            ))
        };
        let tls = crate::api::tls::ClientTls {
            ca: self.tls_ca.clone(),
            identity: match (&self.tls_cert, &self.tls_key) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                (None, None) => None,
                _ => return Err(bad("give both tls_cert and tls_key, or neither".into())),
            },
            domain: self.tls_domain.clone(),
        };
        let source = match (&self.command, &self.address) {
            (Some(c), None) if !c.is_empty() => {
                if !tls.is_empty() || self.allow_plaintext {
                    return Err(bad(
                        "tls_* and allow_plaintext apply to an address, not a spawned command (it listens on loopback)".into(),
                    ));
                }
                PluginSource::Command(c.clone())
            }
            _ if self.instances.is_some() && self.command.is_none() => {
                return Err(bad(
                    "instances applies to a spawned command; for several dialled instances, give one [[plugin]] table per address".into(),
                ));
            }
            (None, Some(a)) if a.starts_with("https://") => PluginSource::Remote {
                url: a.clone(),
                tls,
            },
            (None, Some(a)) if a.starts_with("http://") => {
                if !tls.is_empty() {
                    return Err(bad(format!(
                        "address {a:?} is plaintext but tls_* settings are given: use https://"
                    )));
                }
                crate::api::tls::check_plaintext(a, self.allow_plaintext)
                    .map_err(|e| bad(format!("{e} (allow_plaintext = true)")))?;
                PluginSource::Remote {
                    url: a.clone(),
                    tls,
                }
            }
            (None, Some(a)) => {
                return Err(bad(format!(
                    "address {a:?} must start with https:// or http://"
                )));
            }
            _ => {
                return Err(bad(
                    "give exactly one of command (a non-empty array) or address".into(),
                ));
            }
        };
        let expect = match &self.id {
            Some(d) => Some(crate::Did::parse(d).map_err(|e| bad(format!("id: {e}")))?),
            None => None,
        };
        let instances = self.instances.unwrap_or(1);
        if !(1..=MAX_INSTANCES).contains(&instances) {
            return Err(bad(format!(
                "instances = {instances}: give 1 to {MAX_INSTANCES}"
            )));
        }
        Ok(PluginConfig {
            name: self.name,
            source,
            expect,
            instances,
            env: self.env.into_iter().collect(),
            dir: self.dir,
        })
    }
}

impl Args {
    fn resolve(self) -> Result<ServeConfig, CliError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(super::files::io(path))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };
        let (plugins, tokens) = match &self.config {
            Some(path) => (
                file.plugin
                    .into_iter()
                    .map(|p| p.resolve(path))
                    .collect::<Result<Vec<_>, _>>()?,
                file.token
                    .iter()
                    .map(|t| t.resolve(path))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(CliError::Usage)?,
            ),
            None => (Vec::new(), Vec::new()),
        };
        let tls = match (
            self.tls_cert.or(file.tls_cert),
            self.tls_key.or(file.tls_key),
            self.tls_client_ca.or(file.tls_client_ca),
        ) {
            (Some(cert), Some(key), client_ca) => Some(crate::api::tls::ServerTls {
                cert,
                key,
                client_ca,
            }),
            (None, None, None) => None,
            _ => {
                return Err(CliError::Usage(
                    "TLS needs both tls_cert and tls_key (tls_client_ca only with them)".into(),
                ));
            }
        };
        let defaults = crate::pulse::DispatchConfig::default();
        let max_running = self
            .max_running
            .or(file.max_running)
            .unwrap_or(defaults.max_running);
        if max_running == 0 {
            return Err(CliError::Usage("max_running must be at least 1".into()));
        }
        let ms = |v: Option<u64>, d: u64, what: &str| match v {
            Some(0) => Err(CliError::Usage(format!("{what} must be at least 1"))),
            Some(n) => Ok(n),
            None => Ok(d),
        };
        let default_listen: SocketAddr = DEFAULT_LISTEN
            .parse()
            .unwrap_or_else(|_| unreachable!("valid default"));
        Ok(ServeConfig {
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            store: self.store.clone().or(file.store.clone()),
            log_key: self.log_key.clone().or(file.log_key.clone()),
            node: self.node.clone().or(file.node.clone()),
            listen: self.listen.or(file.listen).unwrap_or(default_listen),
            log_name: self
                .log_name
                .or(file.log_name)
                .unwrap_or_else(|| DEFAULT_LOG_NAME.to_owned()),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            http_listen: self.http_listen.or(file.http_listen),
            otlp_endpoint: self.otlp_endpoint.clone().or(file.otlp_endpoint.clone()),
            job_retention_hours: self
                .job_retention_hours
                .or(file.job_retention_hours)
                .unwrap_or(crate::api::DEFAULT_JOB_RETENTION_HOURS),
            plugins,
            max_running,
            plugin_wait_ms: self
                .plugin_wait_secs
                .or(file.plugin_wait_secs)
                .unwrap_or(defaults.plugin_wait_ms / 1000)
                .saturating_mul(1000),
            heartbeat_timeout_ms: ms(
                file.heartbeat_timeout_ms,
                defaults.heartbeat_timeout_ms,
                "heartbeat_timeout_ms",
            )?,
            cancel_grace_ms: file.cancel_grace_ms.unwrap_or(defaults.grace_ms),
            plugin_health_interval_ms: ms(
                file.plugin_health_interval_ms,
                5_000,
                "plugin_health_interval_ms",
            )?,
            tokens,
            allow_unauthenticated: self.allow_unauthenticated
                || file.allow_unauthenticated.unwrap_or(false),
            did_tokens: file.did_tokens.unwrap_or(true),
            submit_rate: crate::auth::RateLimit {
                per_second: self
                    .submit_rate
                    .or(file.submit_rate)
                    .unwrap_or(crate::api::DEFAULT_SUBMIT_RATE),
                burst: self
                    .submit_burst
                    .or(file.submit_burst)
                    .unwrap_or(crate::api::DEFAULT_SUBMIT_BURST),
            },
            rate_limit_loopback: file.rate_limit_loopback.unwrap_or(false),
            tls,
            allow_plaintext: self.allow_plaintext || file.allow_plaintext.unwrap_or(false),
            min_free_bytes: self
                .min_free_mb
                .or(file.min_free_mb)
                .map_or(crate::ledger::DEFAULT_MIN_FREE_BYTES, |m| {
                    m.saturating_mul(1024 * 1024)
                }),
            fair_share_percent: match file.fair_share_percent {
                Some(p) if !(1..=100).contains(&p) => {
                    return Err(CliError::Usage(format!(
                        "fair_share_percent must be 1 to 100, not {p}"
                    )));
                }
                Some(p) => p,
                None => defaults.fair_share_percent,
            },
            max_handler_concurrency: file
                .max_handler_concurrency
                .map(|n| positive("max_handler_concurrency", Some(n), 1))
                .transpose()?,
            max_timeout_ms: file
                .max_timeout_ms
                .map(|n| positive("max_timeout_ms", Some(n), 1))
                .transpose()?,
            submit_daily: file
                .submit_daily
                .unwrap_or(crate::api::DEFAULT_SUBMIT_DAILY),
            did_enqueue_rate: crate::auth::RateLimit {
                per_second: file
                    .did_enqueue_rate
                    .unwrap_or(crate::api::DEFAULT_DID_ENQUEUE_RATE),
                burst: file
                    .did_enqueue_burst
                    .unwrap_or(crate::api::DEFAULT_DID_ENQUEUE_BURST),
            },
            read_rate: crate::auth::RateLimit {
                per_second: file.read_rate.unwrap_or(crate::api::DEFAULT_READ_RATE),
                burst: file.read_burst.unwrap_or(crate::api::DEFAULT_READ_BURST),
            },
            log_reserve_bytes: file
                .log_reserve_mb
                .map_or(crate::ledger::DEFAULT_LOG_RESERVE_BYTES, |m| {
                    m.saturating_mul(1024 * 1024)
                }),
            write_queue_depth: match file.write_queue_depth {
                Some(0) => {
                    return Err(CliError::Usage(
                        "write_queue_depth must be at least 1".into(),
                    ));
                }
                Some(n) => n,
                None => crate::ledger::DEFAULT_WRITE_QUEUE_DEPTH,
            },
            tokens_file: self.config.clone(),
            max_connections: positive(
                "max_connections",
                file.max_connections,
                crate::api::incoming::DEFAULT_MAX_CONNECTIONS,
            )?,
            max_connections_per_client: positive(
                "max_connections_per_client",
                file.max_connections_per_client,
                crate::api::incoming::DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            )?,
            handshake_timeout_ms: positive(
                "handshake_timeout_ms",
                file.handshake_timeout_ms,
                crate::api::incoming::DEFAULT_HANDSHAKE_TIMEOUT_MS,
            )?,
            max_streams_per_client: positive(
                "max_streams_per_client",
                file.max_streams_per_client,
                crate::api::streams::DEFAULT_MAX_STREAMS_PER_CLIENT,
            )?,
            idle_timeout_ms: positive(
                "idle_timeout_ms",
                file.idle_timeout_ms,
                crate::api::streams::DEFAULT_IDLE_TIMEOUT_MS,
            )?,
            drain_grace_ms: file
                .drain_grace_ms
                .unwrap_or(crate::api::DEFAULT_DRAIN_GRACE_MS),
        })
    }
}

pub(crate) fn run(args: Args) -> Result<ExitCode, CliError> {
    let timeline = args.timeline.clone();
    let config = args.resolve()?;
    use std::io::IsTerminal;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    if let Some(path) = &timeline {
        crate::timeline::start(path).map_err(CliError::Usage)?;
    }
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn")
            }),
        );
    // The storage engine's flushes, compactions and write halts, on the
    // timeline only.
    let storage = timeline.is_some().then(|| {
        crate::timeline::StorageEvents.with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("fjall", tracing::Level::DEBUG)
                .with_target("lsm_tree", tracing::Level::DEBUG),
        )
    });
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(storage)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the async runtime: {e}")))?;
    let data_dir = config.data_dir.clone();
    let tls = config.tls.is_some();
    let pid_file = data_dir.join(PID_FILE);
    let served = runtime.block_on(async {
        serve(config, shutdown_signal(), |addr, metrics, console, ledger| {
            // The data dir's lock is held now: say which process holds it
            // (for `kill -HUP $(cat DATA_DIR/serve.pid)` and for a second
            // server started on the same dir).
            if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
                tracing::warn!(file = %pid_file.display(), error = %e, "cannot write the PID file");
            }
            // One line on stdout for scripts and tests; details go to the log.
            println!(
                "pulse-ledger listening on {addr} (log {} {})",
                ledger.origin(),
                ledger.log_did()
            );
            if let Some(m) = metrics {
                println!("metrics on http://{m}/metrics");
            }
            if let Some(c) = console {
                let scheme = if tls { "https" } else { "http" };
                println!("console on {scheme}://{c}/");
            }
        })
        .await
    });
    match served {
        Ok(()) => {
            let _ = std::fs::remove_file(&pid_file);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.to_string().contains("Locked") => {
            let holder = std::fs::read_to_string(&pid_file)
                .ok()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty());
            Err(CliError::Usage(match holder {
                Some(pid) => format!(
                    "serve: data_dir_in_use: another pulse-ledger serve (pid {pid}, from {}) holds {}: stop it (kill -TERM {pid}) or give another --data-dir",
                    pid_file.display(),
                    data_dir.display()
                ),
                None => format!(
                    "serve: data_dir_in_use: another process holds {}: stop the server using it, or give another --data-dir",
                    data_dir.display()
                ),
            }))
        }
        Err(e) => Err(CliError::Usage(format!("serve: {e}"))),
    }
}

/// The file in the data dir that names the PID of the server using it.
pub(crate) const PID_FILE: &str = "serve.pid";

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, not when the future is first polled: the server polls it only
/// once it serves, and a SIGTERM that came between would kill the
/// process instead of stopping it cleanly.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate())
            .and_then(|t| signal(SignalKind::interrupt()).map(|i| (t, i)))
            .ok()
    };
    async move {
        #[cfg(unix)]
        match signals {
            Some((mut term, mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing in-flight requests");
    }
}

/// A config key that must be at least 1, or its default.
fn positive<T: PartialEq + From<u8>>(
    key: &str,
    value: Option<T>,
    default: T,
) -> Result<T, CliError> {
    match value {
        Some(v) if v == T::from(0) => Err(CliError::Usage(format!("{key} must be at least 1"))),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}
