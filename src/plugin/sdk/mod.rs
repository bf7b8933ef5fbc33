//! The Rust plugin SDK: implement [`JobHandler`] for each handler, give
//! them to a [`PluginServer`] with the plugin's key, and call
//! [`PluginServer::serve`]. The SDK prints the handshake line, answers
//! `Initialize` with the key proof, streams heartbeats while a job runs,
//! forwards progress, cost and log events, and stops a job when Pulse
//! cancels it.
//!
//! A plugin that runs code from handler schemas runs strangers' code: run
//! each attempt's code in a separate process confined with
//! [`crate::plugin::confine::Confinement::apply`] (called in a fresh,
//! single-threaded child right before it executes the code: see
//! `src/bin/pulse-script-plugin.rs`, which runs itself with
//! `--confined-exec`), or through `pulse-script-plugin --confined-exec`
//! from any language (spec/plugin.md, "Confining user code"). Never run
//! such code in the plugin's own process: it could read the plugin's key.
//!
//! ```no_run
//! use pulse_ledger::plugin::sdk::{JobContext, JobError, JobHandler, PluginServer, load_key};
//!
//! struct Upper;
//!
//! #[pulse_ledger::plugin::sdk::async_trait]
//! impl JobHandler for Upper {
//!     async fn execute(&self, ctx: JobContext, payload: Vec<u8>) -> Result<Vec<u8>, JobError> {
//!         ctx.progress(50, "uppercasing", Vec::new()).await;
//!         ctx.cost(1).await;
//!         Ok(payload.to_ascii_uppercase())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let key = load_key("plugin.key".as_ref())?;
//!     PluginServer::new(key)
//!         .metadata("upper", "1.0.0", "uppercases text")
//!         .handler("upper", Upper)
//!         .serve()
//!         .await?;
//!     Ok(())
//! }
//! ```

mod attempts;
mod connect;
mod listen;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tokio::sync::watch;

use super::handshake::{PROTOCOL_VERSION, handshake_line};
use super::proof::AnnouncedHandler;
use crate::Did;
use crate::api::proto::{self, job_event::Event};

pub use connect::ConnectOptions;

pub use tonic::async_trait;

/// How long a cancelled handler may take to wind down before its future
/// is dropped, unless [`PluginServer::cancel_grace`] says otherwise.
pub const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Attempt streams a plugin asks for unless [`PluginServer::attempt_streams`]
/// says otherwise: the Python SDK's default too. A message on an open
/// stream costs the plugin and Pulse less CPU than a call per attempt
/// (BENCHMARKS.md, "Attempt streams by default"), and four streams spread
/// the attempts over more than one HTTP/2 flow-control window.
pub const DEFAULT_ATTEMPT_STREAMS: u32 = 4;

/// Set by Pulse for the plugins it spawns: the plugin then exits when its
/// stdin reaches EOF, which happens when Pulse dies, however it dies; its
/// running attempts are dropped, not drained (their retries may start
/// elsewhere at once).
pub const WATCH_STDIN_ENV: &str = "PULSE_PLUGIN_WATCH_STDIN";

/// Resolves when stdin reaches EOF (or fails). Reads on a plain thread:
/// a tokio blocking read would keep the runtime from shutting down.
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            let _ = tx.send(());
        });
    if spawned.is_ok() {
        let _ = rx.await;
    } else {
        std::future::pending::<()>().await;
    }
}

/// Why a job failed, as the handler tells Pulse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    /// For people (the job's `last_error`).
    pub message: String,
    /// Whether trying again may help.
    pub retryable: bool,
    /// The handler's own retry delay.
    pub retry_after: Option<Duration>,
}

impl JobError {
    /// A failure worth retrying (per the job's retry policy).
    pub fn retryable(message: impl Into<String>) -> JobError {
        JobError {
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }

    /// A failure that will not go away: the job ends dead at once.
    pub fn fatal(message: impl Into<String>) -> JobError {
        JobError {
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    /// Asks Pulse to retry after `delay` instead of its own backoff.
    pub fn after(mut self, delay: Duration) -> JobError {
        self.retry_after = Some(delay);
        self
    }
}

/// What a running job can see and say.
pub struct JobContext {
    job: [u8; 16],
    attempt: u32,
    handler: String,
    handler_name: String,
    handler_attestation: Vec<u8>,
    handler_attestation_id: Vec<u8>,
    deadline_ms: u64,
    checkpoint: Vec<u8>,
    trace_parent: Option<String>,
    events: attempts::EventTx,
    cancel: watch::Receiver<bool>,
    heartbeats: Arc<AtomicBool>,
}

impl JobContext {
    /// The job's ID.
    pub fn job_id(&self) -> [u8; 16] {
        self.job
    }

    /// 1 for the first attempt.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The handler's did:key.
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// The handler's schema name.
    pub fn handler_name(&self) -> &str {
        &self.handler_name
    }

    /// The envelope of the handler statement this attempt was authorised
    /// under, and its ID: verify it yourself before trusting its schema
    /// (the script plugin does, to run only signed code).
    pub fn handler_attestation(&self) -> (&[u8], &[u8]) {
        (&self.handler_attestation, &self.handler_attestation_id)
    }

    /// Unix ms by which the attempt must finish.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// The checkpoint the previous attempt left in its progress (empty at
    /// first): resume from it.
    pub fn checkpoint(&self) -> &[u8] {
        &self.checkpoint
    }

    /// The W3C trace context (`traceparent`) of this attempt's span, when
    /// the server exports traces: make the handler's spans its children
    /// (with OpenTelemetry, `TraceContextPropagator::extract` on a carrier
    /// holding it) and pass it on as `traceparent` metadata in the calls
    /// the handler makes, so they all join the job's trace.
    pub fn trace_parent(&self) -> Option<&str> {
        self.trace_parent.as_deref()
    }

    async fn send(&self, event: Event) {
        let _ = self
            .events
            .send(Ok(proto::JobEvent { event: Some(event) }))
            .await;
    }

    /// Reports progress: percent (0..=100), a message, and a checkpoint
    /// handed to the next attempt if this one fails.
    pub async fn progress(&self, percent: u8, message: impl Into<String>, checkpoint: Vec<u8>) {
        self.send(Event::Progress(proto::ProgressEvent {
            percent: u32::from(percent.min(100)),
            message: message.into(),
            checkpoint,
        }))
        .await;
    }

    /// Reports cost units spent since the last report. Crossing the job's
    /// `max_cost` or the handler's budget cancels the attempt.
    pub async fn cost(&self, units: u64) {
        self.send(Event::Cost(proto::CostEvent { units })).await;
    }

    /// A line for the job's log.
    pub async fn log(&self, line: impl Into<String>) {
        self.send(Event::Log(proto::LogEvent { line: line.into() }))
            .await;
    }

    /// Whether Pulse cancelled this attempt.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves when Pulse cancels this attempt (the SDK drops the
    /// handler's future after the cancel grace; this is for work outside
    /// it, or for stopping sooner).
    pub async fn cancelled(&self) {
        let mut c = self.cancel.clone();
        let _ = c.wait_for(|c| *c).await;
    }

    /// Stops the SDK's automatic heartbeats for this attempt. Only for
    /// testing Pulse's heartbeat timeout: a real handler never calls it.
    pub fn stop_heartbeats(&self) {
        self.heartbeats.store(false, Ordering::Relaxed);
    }
}

/// One handler's code.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// Runs one attempt: the payload in, the result out.
    async fn execute(&self, ctx: JobContext, payload: Vec<u8>) -> Result<Vec<u8>, JobError>;
}

/// Loads a plugin key file (as written by `pulse-ledger keygen`).
///
/// # Errors
/// The file is unreadable or not a key file.
pub fn load_key(path: &Path) -> Result<SigningKey, String> {
    crate::keyfile::load(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A plugin: its key, its handlers, and the gRPC service that runs them.
pub struct PluginServer {
    key: SigningKey,
    plugin: Did,
    metadata: proto::MetadataResponse,
    handlers: Vec<(AnnouncedHandler, Arc<dyn JobHandler>)>,
    any: Option<Arc<dyn JobHandler>>,
    tls: Option<crate::api::tls::ServerTls>,
    cancel_grace: Duration,
    slots: u32,
    attempt_streams: u32,
}

impl PluginServer {
    /// A plugin whose ID is `key`'s did:key (use [`PluginServer::plugin_id`]
    /// after a rotation).
    pub fn new(key: SigningKey) -> PluginServer {
        let plugin = Did::from_verifying_key(&key.verifying_key())
            .unwrap_or_else(|e| unreachable!("a signing key's public key is valid: {e}"));
        PluginServer {
            key,
            plugin,
            metadata: proto::MetadataResponse {
                protocol: PROTOCOL_VERSION,
                ..Default::default()
            },
            handlers: Vec::new(),
            any: None,
            tls: None,
            cancel_grace: CANCEL_GRACE,
            slots: 0,
            attempt_streams: DEFAULT_ATTEMPT_STREAMS,
        }
    }

    /// Announces that this instance runs at most `n` attempts at once
    /// (0, the default: no limit announced). Pulse sends it no more, and
    /// spreads a pool's attempts by free slots.
    pub fn slots(mut self, n: u32) -> PluginServer {
        self.slots = n;
        self
    }

    /// Asks a Pulse that spawns or dials this plugin to send its attempts
    /// as messages on `n` long-lived `Attempts` streams (at most 16 are
    /// opened; [`DEFAULT_ATTEMPT_STREAMS`] unless set) instead of one
    /// `ExecuteJob` call each (0: calls). A message costs less than a
    /// call, tonic's too, so busy plugins of short jobs run more of them
    /// (spec/plugin.md, "Attempt streams"). A connected-in session
    /// ignores it.
    pub fn attempt_streams(mut self, n: u32) -> PluginServer {
        self.attempt_streams = n;
        self
    }

    /// How long a cancelled handler may wind down (seeing
    /// [`JobContext::cancelled`]) before its future is dropped;
    /// [`CANCEL_GRACE`] by default. Whatever it returns after the cancel is
    /// not sent: the attempt ends with an error saying it stopped, and
    /// keeps its slot until then. Keep it shorter than the server's
    /// `cancel_grace_ms` (5 s by default), which caps that wait.
    pub fn cancel_grace(mut self, grace: Duration) -> PluginServer {
        self.cancel_grace = grace;
        self
    }

    /// Serves over TLS with this certificate and key; with a client CA,
    /// only a Pulse presenting a certificate it signed may connect.
    pub fn tls(mut self, tls: crate::api::tls::ServerTls) -> PluginServer {
        self.tls = Some(tls);
        self
    }

    /// The plugin's ID when `key` is a rotated key (the ID is the genesis
    /// key's did:key).
    pub fn plugin_id(mut self, plugin: Did) -> PluginServer {
        self.plugin = plugin;
        self
    }

    /// What `Metadata` answers.
    pub fn metadata(
        mut self,
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> PluginServer {
        self.metadata.name = name.into();
        self.metadata.version = version.into();
        self.metadata.description = description.into();
        self
    }

    /// Serves handlers with this schema name.
    pub fn handler(mut self, name: impl Into<String>, h: impl JobHandler) -> PluginServer {
        let a = AnnouncedHandler {
            id: None,
            name: name.into(),
        };
        self.handlers.push((a, Arc::new(h)));
        self
    }

    /// Serves the handler with this ID.
    pub fn handler_id(mut self, id: Did, h: impl JobHandler) -> PluginServer {
        let a = AnnouncedHandler {
            id: Some(id),
            name: String::new(),
        };
        self.handlers.push((a, Arc::new(h)));
        self
    }

    /// Serves every handler whose schema names this plugin (a runner of
    /// user-created handlers); announced handlers still go to their own.
    pub fn serve_any(mut self, h: impl JobHandler) -> PluginServer {
        self.any = Some(Arc::new(h));
        self
    }

    /// Listens on `PULSE_PLUGIN_LISTEN` (default `127.0.0.1:0`), prints the
    /// handshake line on stdout, and serves until Pulse calls `Shutdown`
    /// or the process gets SIGTERM or SIGINT.
    ///
    /// TLS comes from `PULSE_PLUGIN_TLS_CERT` and `PULSE_PLUGIN_TLS_KEY`
    /// (and `PULSE_PLUGIN_TLS_CLIENT_CA` for mutual TLS). A non-loopback
    /// address needs TLS unless `PULSE_PLUGIN_ALLOW_PLAINTEXT=1`: job
    /// payloads and results would otherwise cross the network in clear.
    ///
    /// # Errors
    /// The address cannot be bound, the TLS settings are incomplete, the
    /// address needs TLS, or the transport fails.
    pub async fn serve(mut self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let addr: SocketAddr = std::env::var("PULSE_PLUGIN_LISTEN")
            .ok()
            .map(|a| a.parse())
            .transpose()
            .map_err(|e| format!("PULSE_PLUGIN_LISTEN: {e}"))?
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let env = |k: &str| std::env::var_os(k).map(std::path::PathBuf::from);
        match (env("PULSE_PLUGIN_TLS_CERT"), env("PULSE_PLUGIN_TLS_KEY")) {
            (Some(cert), Some(key)) => {
                self.tls = Some(crate::api::tls::ServerTls {
                    cert,
                    key,
                    client_ca: env("PULSE_PLUGIN_TLS_CLIENT_CA"),
                });
            }
            (None, None) if env("PULSE_PLUGIN_TLS_CLIENT_CA").is_some() => {
                return Err("PULSE_PLUGIN_TLS_CLIENT_CA needs PULSE_PLUGIN_TLS_CERT and PULSE_PLUGIN_TLS_KEY: mutual TLS is TLS first".into());
            }
            (None, None) => {}
            _ => return Err("PULSE_PLUGIN_TLS_CERT and PULSE_PLUGIN_TLS_KEY go together".into()),
        }
        let forced = std::env::var("PULSE_PLUGIN_ALLOW_PLAINTEXT").is_ok_and(|v| v == "1");
        if self.tls.is_none() && !addr.ip().is_loopback() && !forced {
            return Err(format!(
                "plaintext_not_loopback: PULSE_PLUGIN_LISTEN={addr} is not a loopback address; set PULSE_PLUGIN_TLS_CERT and PULSE_PLUGIN_TLS_KEY, or PULSE_PLUGIN_ALLOW_PLAINTEXT=1"
            )
            .into());
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", handshake_line(local))?;
            out.flush()?;
        }
        if std::env::var_os(WATCH_STDIN_ENV).is_none() {
            return self.serve_on(listener, signals()).await;
        }
        // Pulse died (stdin closed): no answer can reach it any more, and
        // it, or another node, will retry these attempts. Stop at once
        // rather than drain, so that no attempt runs on beside its retry;
        // returning drops the running attempts with the runtime.
        tokio::select! {
            r = self.serve_on(listener, signals()) => r,
            () = stdin_closed() => Ok(()),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn signals() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Tells the plugin's operator why Pulse refused its proof (on stderr,
/// which a spawned plugin shares with the server).
fn report_refusal(code: &str, message: &str) {
    eprintln!("pulse-ledger refused this plugin's session: {code}: {message}");
    tracing::error!(%code, %message, "pulse-ledger refused this plugin's session");
}
