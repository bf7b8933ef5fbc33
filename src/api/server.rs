//! `pulse-ledger serve`: the registry, health and reflection services on
//! one tonic server over an embedded ledger.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tonic::transport::Server;

use super::jobs::JobsService;
use super::metrics::{Metrics, serve_metrics};
use super::proto::{self, jobs_server::JobsServer, registry_server::RegistryServer};
use super::registry::RegistryService;
use crate::ledger::{Ledger, LedgerConfig, LedgerError};

/// Largest request message accepted (an envelope is at most 64 KiB).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest Jobs request (a batch of jobs with payloads up to 1 MiB each is
/// sent as several batches).
pub const MAX_JOBS_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Concurrent HTTP/2 streams per connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Largest response message sent.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Data directory (fjall database and log key).
    pub data_dir: PathBuf,
    /// A PostgreSQL database to keep the log and the jobs in instead of
    /// the data dir's fjall database (`postgres://USER@HOST/DB`).
    pub store: Option<String>,
    /// The log's signing key file (default: `log.key` in the data dir).
    pub log_key: Option<PathBuf>,
    /// This server's name as one of several nodes sharing `store`
    /// (`serve --node`); `None`: the only server of its store.
    pub node: Option<String>,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// The log's name (checkpoint origin).
    pub log_name: String,
    /// Prometheus metrics listen address; `None` disables metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// The web console's HTTP listen address (pages and the JSON API,
    /// spec/console.md); `None` serves no console. Over TLS when `tls` is
    /// set, with the same certificate.
    pub http_listen: Option<SocketAddr>,
    /// OTLP/gRPC collector to export traces to; `None` exports none.
    pub otlp_endpoint: Option<String>,
    /// Finished jobs are deleted this long after their last change, hours.
    pub job_retention_hours: u64,
    /// Declared plugins.
    pub plugins: Vec<crate::plugin::PluginConfig>,
    /// Attempts running at once over all handlers.
    pub max_running: usize,
    /// While two or more handlers have ready jobs, the most slots one may
    /// hold, in percent of `max_running`.
    pub fair_share_percent: usize,
    /// The most attempts of one handler at once, whatever its schema
    /// claims (`None`: its schema decides).
    pub max_handler_concurrency: Option<u32>,
    /// The longest attempt timeout a job may have, ms (`None`: no cap).
    pub max_timeout_ms: Option<u64>,
    /// How long a job is held waiting for its plugin, ms.
    pub plugin_wait_ms: u64,
    /// An attempt silent this long is timed out, ms.
    pub heartbeat_timeout_ms: u64,
    /// After pushing a cancel for a late attempt, how long before it is
    /// recorded timed out, ms.
    pub cancel_grace_ms: u64,
    /// Plugin health check period, ms.
    pub plugin_health_interval_ms: u64,
    /// Bearer tokens for the Jobs API. None: the Jobs API is open, which
    /// `serve` allows only on a loopback address unless
    /// `allow_unauthenticated`.
    pub tokens: Vec<crate::auth::TokenRule>,
    /// Serve an open Jobs API (no tokens) on a non-loopback address.
    pub allow_unauthenticated: bool,
    /// Accept DID tokens: callers that prove a did:key get the rights
    /// handlers' access lists give it (spec/security.md, "Handler owners").
    pub did_tokens: bool,
    /// Submissions (`Submit`, `SubmitStream` envelopes) per client address.
    pub submit_rate: crate::auth::RateLimit,
    /// Submissions per client address a day (0: no daily limit).
    pub submit_daily: u32,
    /// What DID callers may enqueue per client address: units (one per
    /// started 64 KiB of payload) a second, and the burst.
    pub did_enqueue_rate: crate::auth::RateLimit,
    /// Registry reads per client address (anyone may read the log).
    pub read_rate: crate::auth::RateLimit,
    /// Rate-limit loopback clients too (a proxy on this host).
    pub rate_limit_loopback: bool,
    /// TLS for the gRPC listener; None: plaintext, which `serve` allows
    /// only on a loopback address unless `allow_plaintext`.
    pub tls: Option<super::tls::ServerTls>,
    /// Serve plaintext gRPC on a non-loopback address.
    pub allow_plaintext: bool,
    /// Writes are refused (`disk_full`) while the data dir's file system
    /// has less than this free; 0 turns the guard off.
    pub min_free_bytes: u64,
    /// Appends to the log stop this much earlier than jobs (the log's
    /// reserve is `min_free_bytes` plus this).
    pub log_reserve_bytes: u64,
    /// Groups of appends queued for the ledger's writer at most; beyond
    /// it Submit answers `overloaded` (RESOURCE_EXHAUSTED) at once.
    pub write_queue_depth: usize,
    /// The config file whose `[[token]]` tables are read again on SIGHUP.
    pub tokens_file: Option<PathBuf>,
    /// Most connections open at once (lowered to fit the descriptor limit
    /// less a reserve for storage).
    pub max_connections: usize,
    /// Most connections open at once from one client (an IPv4 address or an
    /// IPv6 /64); loopback is exempt unless `rate_limit_loopback`.
    pub max_connections_per_client: usize,
    /// Time a new connection has to start speaking (HTTP/2 preface or TLS).
    pub handshake_timeout_ms: u64,
    /// Most calls one client holds open at once over all its connections
    /// (loopback exempt unless `rate_limit_loopback`).
    pub max_streams_per_client: usize,
    /// Time a connection may stay open with no call in flight.
    pub idle_timeout_ms: u64,
    /// Time a stopping server waits for calls in flight before it closes
    /// the connections that still hold some.
    pub drain_grace_ms: u64,
}

/// Default submissions per second per client address.
pub const DEFAULT_SUBMIT_RATE: u32 = 100;
/// Default burst of submissions per client address.
pub const DEFAULT_SUBMIT_BURST: u32 = 1_000;
/// Default enqueue units (one per started 64 KiB of payload) a second a DID
/// caller's address may use.
pub const DEFAULT_DID_ENQUEUE_RATE: u32 = 100;
/// Default burst of those units.
pub const DEFAULT_DID_ENQUEUE_BURST: u32 = 1_000;
/// Default submissions a day per client address.
pub const DEFAULT_SUBMIT_DAILY: u32 = 10_000;
/// Default Registry reads per second per client address.
pub const DEFAULT_READ_RATE: u32 = 1_000;
/// Default burst of Registry reads per client address.
pub const DEFAULT_READ_BURST: u32 = 5_000;

impl ServeConfig {
    /// A configuration with every default, on `data_dir` and `listen`.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> ServeConfig {
        let d = crate::pulse::DispatchConfig::default();
        ServeConfig {
            data_dir: data_dir.into(),
            store: None,
            log_key: None,
            node: None,
            listen,
            log_name: "pulse-ledger.local/log".into(),
            metrics_listen: None,
            http_listen: None,
            otlp_endpoint: None,
            job_retention_hours: DEFAULT_JOB_RETENTION_HOURS,
            plugins: Vec::new(),
            max_running: d.max_running,
            fair_share_percent: d.fair_share_percent,
            max_handler_concurrency: d.max_handler_concurrency,
            max_timeout_ms: d.max_timeout_ms,
            plugin_wait_ms: d.plugin_wait_ms,
            heartbeat_timeout_ms: d.heartbeat_timeout_ms,
            cancel_grace_ms: d.grace_ms,
            plugin_health_interval_ms: 5_000,
            tokens: Vec::new(),
            allow_unauthenticated: false,
            did_tokens: true,
            submit_rate: crate::auth::RateLimit {
                per_second: DEFAULT_SUBMIT_RATE,
                burst: DEFAULT_SUBMIT_BURST,
            },
            submit_daily: DEFAULT_SUBMIT_DAILY,
            did_enqueue_rate: crate::auth::RateLimit {
                per_second: DEFAULT_DID_ENQUEUE_RATE,
                burst: DEFAULT_DID_ENQUEUE_BURST,
            },
            read_rate: crate::auth::RateLimit {
                per_second: DEFAULT_READ_RATE,
                burst: DEFAULT_READ_BURST,
            },
            rate_limit_loopback: false,
            tls: None,
            allow_plaintext: false,
            min_free_bytes: crate::ledger::DEFAULT_MIN_FREE_BYTES,
            log_reserve_bytes: crate::ledger::DEFAULT_LOG_RESERVE_BYTES,
            write_queue_depth: crate::ledger::DEFAULT_WRITE_QUEUE_DEPTH,
            tokens_file: None,
            max_connections: super::incoming::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: super::incoming::DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            handshake_timeout_ms: super::incoming::DEFAULT_HANDSHAKE_TIMEOUT_MS,
            max_streams_per_client: super::streams::DEFAULT_MAX_STREAMS_PER_CLIENT,
            idle_timeout_ms: super::streams::DEFAULT_IDLE_TIMEOUT_MS,
            drain_grace_ms: DEFAULT_DRAIN_GRACE_MS,
        }
    }
}

/// Default job retention: one week.
pub const DEFAULT_JOB_RETENTION_HOURS: u64 = 168;

/// Finished jobs a pruning pass reads at most.
const PRUNE_PASS: usize = 10_000;

/// Pruning passes a tick runs at most (a million jobs).
const PRUNE_PASSES: usize = 100;

/// Deletes finished jobs older than the retention, on a timer: every minute,
/// or every second when the retention is under 10 minutes. A tick runs
/// passes of [`PRUNE_PASS`] one after another until the jobs due are gone
/// (at most [`PRUNE_PASSES`]), so retention keeps up with up to a million
/// finished jobs a tick; between passes the job store's writer is free.
/// The ledger is never pruned.
async fn prune_jobs(store: Arc<crate::pulse::JobStore>, retention_hours: u64) {
    let retention_ms = retention_hours.saturating_mul(3_600_000);
    let every = std::time::Duration::from_millis((retention_ms / 10).clamp(1_000, 60_000));
    loop {
        tokio::time::sleep(every).await;
        let store = Arc::clone(&store);
        let pruned = tokio::task::spawn_blocking(move || {
            let now = crate::clock::unix_ms();
            store.prune_due(now.saturating_sub(retention_ms), PRUNE_PASS, PRUNE_PASSES)
        })
        .await;
        match pruned {
            Ok(Ok(n)) if n > 0 => tracing::info!(pruned = n, "pruned finished jobs"),
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning finished jobs failed"),
            _ => {}
        }
    }
}

/// Starts the plugin host and the dispatcher: every job is resolved
/// against the ledger and the plugin sessions, then run on its plugin.
fn start_pulse(
    config: &ServeConfig,
    local: SocketAddr,
    ledger: &Arc<Ledger>,
    store: &Arc<crate::pulse::JobStore>,
    sessions: &Arc<crate::plugin::Sessions>,
) -> (crate::pulse::PulseRunner, crate::plugin::PluginHost) {
    use crate::plugin::{ChainRouter, HostConfig, PluginExecutor, PluginHost};
    use crate::pulse::{AsyncExecutorAdapter, DispatchConfig, Dispatcher, PulseRunner};
    let host = PluginHost::start(
        config.plugins.clone(),
        Arc::clone(ledger),
        Arc::clone(sessions),
        HostConfig {
            health_interval: std::time::Duration::from_millis(config.plugin_health_interval_ms),
            api_endpoint: if config.tls.is_some() {
                format!("https://{local}")
            } else {
                format!("http://{local}")
            },
            ..HostConfig::default()
        },
    );
    let dispatch = DispatchConfig {
        max_running: config.max_running,
        fair_share_percent: config.fair_share_percent,
        max_handler_concurrency: config.max_handler_concurrency,
        max_timeout_ms: config.max_timeout_ms,
        heartbeat_timeout_ms: config.heartbeat_timeout_ms,
        grace_ms: config.cancel_grace_ms,
        plugin_wait_ms: config.plugin_wait_ms,
        deadline_scan_ms: 100,
        ..DispatchConfig::default()
    };
    let runtime = tokio::runtime::Handle::current();
    let grace = std::time::Duration::from_millis(config.cancel_grace_ms);
    let (ledger, store, sessions) = (Arc::clone(ledger), Arc::clone(store), Arc::clone(sessions));
    let runner = PulseRunner::spawn(
        move |me| {
            let executor = AsyncExecutorAdapter::new(
                PluginExecutor::new(Arc::clone(&sessions)).with_cancel_grace(grace),
                runtime,
            )
            .with_waker(me);
            // Each attempt's authorisation carries its schema's
            // max_concurrency; no other limits.
            let limits: crate::pulse::ConcurrencyLimits = Box::new(|_| None);
            let mut seed = [0u8; 8];
            let _ = getrandom::fill(&mut seed);
            let schemas = Arc::clone(&ledger);
            Dispatcher::new(store, executor, dispatch, limits, u64::from_le_bytes(seed))
                .with_router(Box::new(ChainRouter::new(ledger, sessions)))
                .with_schedules(Box::new(move |did| handler_schema(&schemas, did)))
        },
        std::time::Duration::from_millis(10),
    );
    (runner, host)
}

/// A node leaving: no new attempt starts here, and the running ones get
/// up to `grace` to end before the node stops (and hands over the rest).
async fn drain_attempts(pulse: &crate::pulse::PulseHandle, grace: std::time::Duration) {
    pulse.drain();
    let until = tokio::time::Instant::now() + grace;
    loop {
        let p = pulse.clone();
        let live = tokio::task::spawn_blocking(move || p.live_attempts())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        if live == 0 || tokio::time::Instant::now() >= until {
            if live > 0 {
                tracing::warn!(
                    running = live,
                    "attempts still running after the drain grace"
                );
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The schema in force for a handler that takes jobs, or why it takes
/// none (for schedules' occurrences).
fn handler_schema(ledger: &Ledger, did: &crate::Did) -> Result<crate::HandlerSchema, String> {
    let rec = ledger.subject(did).map_err(|e| e.to_string())?;
    if rec.head.revoked {
        return Err(format!(
            "handler_revoked: {did} is revoked; it takes no jobs"
        ));
    }
    match ledger.subject_state(did).map_err(|e| e.to_string())?.schema {
        crate::Schema::Handler(schema) => Ok(schema),
        _ => Err(format!("not_a_handler: {did} is a plugin")),
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The ledger refused to open.
    #[error("{0}")]
    Ledger(#[from] LedgerError),
    /// A socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The transport failed.
    #[error("server: {0}")]
    Transport(String),
    /// The settings break a rule (spec/security.md): nothing was started.
    #[error("{rule}: {message}")]
    Refused {
        /// The rule's code, e.g. `plaintext_not_loopback`.
        rule: &'static str,
        /// What to change.
        message: String,
    },
}

/// Reads the `[[token]]` tables of `file` again at every SIGHUP and puts
/// them in force: tokens can be added and revoked without a restart. A
/// file that does not parse, or a reload that would leave no token (and
/// so open the jobs API), changes nothing and is logged. Each reload is
/// counted by outcome (`pulse_ledger_token_reloads_total`) once that
/// outcome is in force.
async fn reload_tokens_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    file: PathBuf,
    access: Arc<crate::auth::AccessCell>,
    metrics: Arc<Metrics>,
) {
    while hup.recv().await.is_some() {
        let loaded = crate::auth::read_token_rules(&file).and_then(|rules| {
            if rules.is_empty() {
                // Open stays open; tokens never become open by a reload.
                return if access.current().is_open() {
                    Ok((crate::auth::Access::Open, 0))
                } else {
                    Err("the reloaded config has no [[token]] table; a reload never opens the jobs API (restart to do that)".into())
                };
            }
            let n = rules.len();
            crate::auth::Access::with_tokens(rules).map(|a| (a, n))
        });
        match loaded {
            Ok((a, n)) => {
                access.replace(a);
                metrics.token_reload(true);
                tracing::info!(tokens = n, file = %file.display(), "tokens reloaded");
            }
            Err(e) => {
                metrics.token_reload(false);
                tracing::error!(error = %e, "tokens not reloaded; the previous ones stay in force")
            }
        }
    }
}

/// Opens the log on the data dir's fjall database, or on PostgreSQL: its
/// schema migrated to this binary's, the database taken for this server
/// alone, the log key read from `log_key` (default: the data dir's).
fn open_ledger(
    mut config: LedgerConfig,
    store: Option<String>,
    log_key: Option<PathBuf>,
    node: Option<String>,
) -> Result<Ledger, ServeError> {
    let key_path = log_key.unwrap_or_else(|| config.data_dir.join("log.key"));
    if let Some(name) = &node {
        if store.is_none() {
            return Err(ServeError::Refused {
                rule: "node_without_store",
                message: "--node is for servers sharing a PostgreSQL store (--store); a data dir has one server".into(),
            });
        }
        if !is_node_name(name) {
            return Err(ServeError::Refused {
                rule: "invalid_node_name",
                message: format!(
                    "--node {name:?}: a node's name is 1 to 64 ASCII letters, digits, '.', '_' or '-'"
                ),
            });
        }
    }
    let Some(url) = store else {
        if key_path != config.data_dir.join("log.key") {
            return Err(ServeError::Refused {
                rule: "log_key_without_store",
                message: "--log-key is for a PostgreSQL store (--store); a data dir keeps its key as log.key".into(),
            });
        }
        return Ok(Ledger::open(config)?);
    };
    let storage_error =
        |e: crate::storage::StorageError| ServeError::Ledger(LedgerError::storage("PostgreSQL", e));
    if !crate::storage::postgres::is_postgres_url(&url) {
        return Err(ServeError::Refused {
            rule: "invalid_store",
            message: format!(
                "--store {}: give a postgres://USER@HOST[:PORT]/DB URL (the default store is the data dir)",
                crate::storage::postgres::shown_url(&url)
            ),
        });
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        ServeError::Ledger(LedgerError::new(
            crate::ledger::LedgerErrorCode::Config,
            format!("{}: {e}", config.data_dir.display()),
        ))
    })?;
    // A new log's key is created there: its directory too.
    if let Some(parent) = key_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            ServeError::Ledger(LedgerError::new(
                crate::ledger::LedgerErrorCode::Config,
                format!("--log-key {}: {e}", key_path.display()),
            ))
        })?;
    }
    let backend = crate::storage::PostgresBackend::open(&url).map_err(storage_error)?;
    match &node {
        Some(name) => {
            backend.join_nodes().map_err(storage_error)?;
            tracing::info!(store = backend.url(), node = %name, log_key = %key_path.display(), "the log and the jobs are on PostgreSQL, shared with the other nodes");
        }
        None => {
            backend.lock_single_server().map_err(storage_error)?;
            tracing::info!(store = backend.url(), log_key = %key_path.display(), "the log and the jobs are on PostgreSQL");
        }
    }
    // The data dir's disk holds none of the data: its guard is off;
    // PostgreSQL refuses writes itself when its disk is full.
    config.min_free_bytes = 0;
    Ok(Ledger::open_on(
        crate::storage::Storage::new(backend),
        &key_path,
        config,
    )?)
}

/// Whether `name` may name a node: 1 to 64 ASCII letters, digits, `.`,
/// `_` or `-`.
fn is_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The rules `serve` refuses settings by ([`ServeError::Refused`]).
pub const REFUSAL_RULES: [&str; 4] = [
    "plaintext_not_loopback",
    "jobs_api_unauthenticated",
    "bad_tls_file",
    "bad_token_config",
];

/// The Jobs API's access rule and a server builder with TLS set up, or
/// why `config` may not be served (checked before anything is opened).
fn security(config: &ServeConfig) -> Result<(crate::auth::Access, Server), ServeError> {
    let refused = |rule, message: String| ServeError::Refused { rule, message };
    // The console's listener answers the same API over HTTP: the same
    // rules hold for its address.
    let listeners = std::iter::once(config.listen).chain(config.http_listen);
    let any_remote = listeners.clone().any(|a| !a.ip().is_loopback());
    for addr in listeners {
        if config.tls.is_none() && !addr.ip().is_loopback() && !config.allow_plaintext {
            return Err(refused(
                "plaintext_not_loopback",
                format!(
                    "{addr} is not a loopback address: give a TLS certificate and key (tls_cert, tls_key), or --allow-plaintext behind a TLS-terminating proxy",
                ),
            ));
        }
    }
    // rate_limit_loopback says a proxy on this host forwards outside
    // clients: then loopback is no longer "only local users".
    let reachable = any_remote || config.rate_limit_loopback;
    let access = if config.tokens.is_empty() {
        if reachable && !config.allow_unauthenticated {
            let (addr, why) = if !any_remote {
                (
                    config.listen,
                    "rate_limit_loopback says outside clients arrive through a proxy on this host",
                )
            } else {
                let remote = std::iter::once(config.listen)
                    .chain(config.http_listen)
                    .find(|a| !a.ip().is_loopback())
                    .unwrap_or(config.listen);
                (remote, "it is not a loopback address")
            };
            return Err(refused(
                "jobs_api_unauthenticated",
                format!(
                    "{addr}: {why}, and no [[token]] is configured: create one with `pulse-ledger token create`, or --allow-unauthenticated",
                ),
            ));
        }
        crate::auth::Access::Open
    } else {
        crate::auth::Access::with_tokens(config.tokens.clone())
            .map_err(|m| refused("bad_token_config", m))?
    };
    let mut builder = Server::builder();
    if let Some(t) = &config.tls {
        let tls = t.load().map_err(|m| refused("bad_tls_file", m))?;
        builder = builder.tls_config(tls).map_err(|e| {
            refused(
                "bad_tls_file",
                format!(
                    "{} and {} do not load as a certificate chain and its key: {e}",
                    t.cert.display(),
                    t.key.display()
                ),
            )
        })?;
    }
    Ok((access, builder))
}

/// The data dir's file of tokens revoked with `token revoke`.
pub const REVOKED_TOKENS_FILE: &str = "revoked-tokens";

/// Default time a stopping server waits for calls in flight before it
/// closes the connections that still hold some (streams that never end).
pub const DEFAULT_DRAIN_GRACE_MS: u64 = 10_000;

/// A TCP listener on `addr` and the address it got (its port, for `:0`).
async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = l
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    Ok((l, bound))
}

/// Opens the ledger and serves until `shutdown` resolves; then stops
/// accepting, finishes in-flight requests (for at most `drain_grace_ms`),
/// lets the writer commit what is queued, and returns. `on_ready` is called with the bound addresses.
///
/// # Errors
/// The ledger refuses to open, a socket cannot be bound, or the transport
/// fails.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
    on_ready: impl FnOnce(SocketAddr, Option<SocketAddr>, Option<SocketAddr>, &Ledger),
) -> Result<(), ServeError> {
    let (access, builder) = security(&config)?;
    let console_tls = match &config.tls {
        Some(t) if config.http_listen.is_some() => {
            Some(t.rustls().map_err(|message| ServeError::Refused {
                rule: "bad_tls_file",
                message,
            })?)
        }
        _ => None,
    };
    let telemetry = match &config.otlp_endpoint {
        Some(endpoint) => Some(crate::telemetry::Telemetry::start(endpoint).map_err(
            |message| ServeError::Refused {
                rule: "invalid_otlp_endpoint",
                message,
            },
        )?),
        None => None,
    };
    let mut ledger_config = LedgerConfig::new(&config.data_dir, &config.log_name);
    ledger_config.min_free_bytes = config.min_free_bytes;
    ledger_config.log_reserve_bytes = config.log_reserve_bytes;
    ledger_config.queue_depth = config.write_queue_depth;
    let (store, log_key, node) = (
        config.store.clone(),
        config.log_key.clone(),
        config.node.clone(),
    );
    let ledger = Arc::new(
        tokio::task::spawn_blocking(move || open_ledger(ledger_config, store, log_key, node))
            .await
            .map_err(|e| ServeError::Transport(e.to_string()))??,
    );
    let metrics = Arc::new(Metrics::default());
    metrics.set_log_size(ledger.head().size);

    let (listener, local) = bind(config.listen).await?;
    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let (l, bound) = bind(addr).await?;
            tokio::spawn(serve_metrics(l, Arc::clone(&metrics)));
            Some(bound)
        }
        None => None,
    };
    // Connections are admitted with bounds (number, per client, time to
    // start speaking) under a descriptor limit raised to its maximum, so
    // idle sockets cannot take the descriptors storage needs.
    let fd_limit = super::incoming::raise_fd_limit();
    let admission = super::incoming::Admission {
        max_total: super::incoming::connections_for(fd_limit, config.max_connections),
        max_per_client: config.max_connections_per_client.max(1),
        handshake: std::time::Duration::from_millis(config.handshake_timeout_ms.max(1)),
        tls: config.tls.is_some(),
        limit_loopback: config.rate_limit_loopback,
        idle: std::time::Duration::from_millis(config.idle_timeout_ms.max(1)),
    };
    let streams = Arc::new(super::streams::Streams::new(
        config.max_streams_per_client,
        config.rate_limit_loopback,
    ));
    tracing::info!(
        fd_limit,
        max_connections = admission.max_total,
        per_client = admission.max_per_client,
        "connection bounds"
    );
    let (incoming, connections) = super::incoming::admit(listener, admission, Arc::clone(&streams));
    metrics.watch_connections(connections);
    metrics.watch_streams(Arc::clone(&streams));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RegistryServer<RegistryService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Transport(e.to_string()))?;
    let mut job_store =
        crate::pulse::JobStore::open(&ledger).map_err(|e| ServeError::Transport(e.to_string()))?;
    if let Some(name) = &config.node {
        job_store = job_store.as_node(name.clone());
    }
    let store = Arc::new(job_store);
    tokio::spawn(prune_jobs(Arc::clone(&store), config.job_retention_hours));
    let sessions = Arc::new(crate::plugin::Sessions::default());
    let (runner, host) = start_pulse(&config, local, &ledger, &store, &sessions);
    let pulse = runner.handle();
    store.wake_on_ready({
        let pulse = pulse.clone();
        move || pulse.wake()
    });
    store.follow_other_nodes(move || pulse.wake());
    metrics.watch_pulse(runner.handle().counters());
    metrics.watch_ledger(Arc::clone(&ledger));
    if let Some(name) = &config.node {
        metrics.watch_node(name.clone());
    }
    metrics.watch_jobs(Arc::clone(&store), Arc::clone(&sessions));
    if access.is_open() {
        tracing::warn!(listen = %local, "no [[token]] configured: the Jobs API is open to every client that can connect");
    }
    let revoked = crate::auth::RevokedTokens::open(config.data_dir.join(REVOKED_TOKENS_FILE))
        .map_err(|e| ServeError::Refused {
            rule: "bad_token_config",
            message: e,
        })?;
    let mut access = crate::auth::AccessCell::new(access).with_revocations(revoked);
    if config.did_tokens {
        access = access.with_did_tokens(ledger.log_did().clone());
    }
    let access = Arc::new(access);
    if let Some(file) = &config.tokens_file {
        // Watched from here on, before the server says it is ready, so an
        // early SIGHUP reloads instead of ending the process.
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => {
                tokio::spawn(reload_tokens_on_sighup(
                    hup,
                    file.clone(),
                    Arc::clone(&access),
                    Arc::clone(&metrics),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP: tokens are read only at start")
            }
        }
    }
    metrics.watch_access(Arc::clone(&access));
    let jobs_service = JobsService::new(Arc::clone(&ledger), Arc::clone(&store))
        .with_node(config.node.as_deref(), local)
        .with_dispatcher(runner.handle())
        .with_sessions(Arc::clone(&sessions))
        .with_access(Arc::clone(&access))
        .with_did_enqueue_limit(Arc::new(crate::auth::RateLimiter::new(
            config.did_enqueue_rate,
            config.rate_limit_loopback,
        )));
    let jobs = JobsServer::new(jobs_service.clone())
        .max_decoding_message_size(MAX_JOBS_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    health.set_serving::<JobsServer<JobsService>>().await;
    // Plugins that connect in: their results are as large as any response.
    let gateway = proto::plugin_gateway_server::PluginGatewayServer::new(
        super::gateway::GatewayService::new(host.gateway(), Arc::clone(&access)),
    )
    .max_decoding_message_size(MAX_RESPONSE_BYTES)
    .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let limiter = crate::auth::RateLimiter::new(config.submit_rate, config.rate_limit_loopback);
    let reads = crate::auth::RateLimiter::new(config.read_rate, config.rate_limit_loopback);
    let registry_service = RegistryService::new(Arc::clone(&ledger), metrics)
        .with_rate_limit(Arc::new(limiter))
        .with_daily_limit(Arc::new(crate::auth::RateLimiter::daily(
            config.submit_daily,
            config.rate_limit_loopback,
        )));
    let console_addr = match config.http_listen {
        Some(addr) => {
            let (l, bound) = bind(addr).await?;
            let services = super::console::ConsoleServices {
                jobs: jobs_service.clone(),
                registry: registry_service.clone(),
                counters: store.counters(),
            };
            tokio::spawn(super::console::serve(l, console_tls, services));
            Some(bound)
        }
        None => None,
    };
    let registry = RegistryServer::new(registry_service)
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);

    tracing::info!(
        listen = %local,
        log_did = %ledger.log_did(),
        origin = ledger.origin(),
        size = ledger.head().size,
        "serving"
    );
    let heartbeats = config.node.as_ref().map(|name| {
        tokio::spawn(super::nodes::heartbeats(
            Arc::clone(&ledger),
            Arc::clone(&sessions),
            super::nodes::NodeRecord {
                name: name.clone(),
                listen: local.to_string(),
                started_ms: crate::clock::unix_ms(),
                seen_ms: 0,
                log_size: 0,
                sessions: 0,
                running: 0,
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        ))
    });
    on_ready(local, metrics_addr, console_addr, &ledger);
    // Shutdown stops accepting and lets calls in flight finish, but a
    // stream (a log watcher, a job watcher) may never finish by itself:
    // after the drain grace the connections still open are closed.
    let (stopping, stop_seen) = tokio::sync::watch::channel(false);
    let drain_connected = host.drain_connected();
    let signal = async move {
        shutdown.await;
        let _ = stopping.send(true);
        // Plugins that connected in hold streams open: they drain now, so
        // their attempts finish and their streams end within the grace.
        drain_connected.start();
    };
    let mut grace_seen = stop_seen.clone();
    let drain = std::time::Duration::from_millis(config.drain_grace_ms);
    let grace = async move {
        let _ = grace_seen.wait_for(|s| *s).await;
        tokio::time::sleep(drain).await;
    };
    let serving = builder
        .tcp_nodelay(true)
        // Bounded per-connection work: a client cannot open unlimited
        // concurrent streams (each WatchEntries holds a bounded buffer).
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .layer(super::streams::StreamLayer(Arc::clone(&streams)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(super::normalize::Normalize::new(
            super::read_limit::ReadLimit::new(registry, Arc::new(reads)),
        ))
        .add_service(super::normalize::Normalize::new(super::gate::Gate::new(
            gateway,
            Arc::clone(&access),
            None,
        )))
        .add_service(super::normalize::Normalize::new(super::gate::Gate::new(
            jobs,
            Arc::clone(&access),
            Some(super::body_budget::BodyBudget::new(
                super::body_budget::DID_BODY_BYTES,
                super::body_budget::DID_BODY_BYTES_PER_CLIENT,
                super::body_budget::DID_BODY_TIMEOUT,
            )),
        )))
        .serve_with_incoming_shutdown(incoming, signal);
    let result = tokio::select! {
        r = serving => r,
        () = grace => {
            tracing::warn!(
                drain_grace_ms = drain.as_millis() as u64,
                connections = streams.connections(),
                "calls still open after the drain grace (streams): closing their connections"
            );
            // Each connection runs in a task of its own: told to end, it
            // reads end of input and drops its calls before storage closes.
            streams.close_all();
            let until = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
            while streams.connections() > 0 && tokio::time::Instant::now() < until {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Ok(())
        }
    };
    drop(stop_seen);
    if config.node.is_some() {
        drain_attempts(&runner.handle(), drain).await;
    }
    // The dispatcher stops first, so plugins going away are not recorded
    // as crashes now (attempts still running are recovered as interrupted
    // on the next start: no attempt used, not a crash); then plugins get
    // Shutdown, SIGTERM, SIGKILL.
    let _ = tokio::task::spawn_blocking(move || runner.stop()).await;
    host.shutdown().await;
    if let (Some(name), Some(beating)) = (&config.node, heartbeats) {
        // A node may not come back: what it could not finish is handed
        // to the other nodes now (retried at once, not after the
        // node-liveness timeout), and it leaves the list of nodes.
        beating.abort();
        let (jobs, ledger, name) = (Arc::clone(&store), Arc::clone(&ledger), name.clone());
        let _ = tokio::task::spawn_blocking(move || {
            match jobs.interrupt_own_attempts(crate::clock::unix_ms()) {
                Ok(0) => {}
                Ok(n) => tracing::info!(interrupted = n, "attempts handed to the other nodes"),
                Err(e) => tracing::warn!(error = %e, "attempts not handed over; the other nodes retry them once they fall silent"),
            }
            if let Err(e) = super::nodes::leave(ledger.storage(), &name) {
                tracing::warn!(error = %e, "this node's record not removed");
            }
        })
        .await;
    }
    // In-flight appends have been answered; commit anything still queued
    // and stop the writer before returning.
    let closing = Arc::clone(&ledger);
    let _ = tokio::task::spawn_blocking(move || closing.close()).await;
    if let Some(t) = telemetry {
        // Sends the spans still batched; it waits on exports that run on
        // this runtime, so not from one of its workers.
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    tracing::info!(size = ledger.head().size, "stopped");
    result.map_err(|e| ServeError::Transport(e.to_string()))
}
