//! Plugin hosting: spawns declared plugin commands (or dials remote
//! addresses), opens a session after checking the plugin's key proof
//! against the ledger, watches it (child exit, health checks, key
//! rotation, revocation), and restarts it with exponential backoff.
//! On shutdown each plugin gets `Shutdown`, then SIGTERM, then SIGKILL of
//! its process group.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use super::admit::{admit, still_current};
use super::attempt_streams::AttemptStreams;
use super::gateway::Gateway;
use super::handshake::{PROTOCOL_VERSION, parse_handshake};
use super::proof::{Announcement, NONCE_BYTES};
use super::session::{Connection, Link, RefusedProof, Session, Sessions};
use crate::Did;
use crate::api::proto::{self, plugin_client::PluginClient};
use crate::ledger::Ledger;

/// HTTP/2 receive window of each attempt's stream from a plugin, bytes.
const PLUGIN_STREAM_WINDOW: u32 = 256 * 1024;
/// HTTP/2's largest flow-control window (RFC 9113, 6.9.1).
const MAX_HTTP2_WINDOW: u32 = (1 << 31) - 1;

/// Where a plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A command Pulse spawns: program and arguments (no shell).
    Command(Vec<String>),
    /// A plugin already listening at this gRPC address: `https://host:port`
    /// (with `tls`), or `http://` on a loopback address.
    Remote {
        /// The plugin's URL.
        url: String,
        /// How to check its certificate, and the client certificate to
        /// present to a plugin that requires mutual TLS.
        tls: crate::api::tls::ClientTls,
    },
}

/// One declared plugin (the `[[plugin]]` tables of the server config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// A label for logs.
    pub name: String,
    /// How to reach it.
    pub source: PluginSource,
    /// The plugin ID it must prove; any registered plugin if `None`.
    pub expect: Option<Did>,
    /// Extra environment variables for a spawned command.
    pub env: Vec<(String, String)>,
    /// Working directory for a spawned command.
    pub dir: Option<PathBuf>,
    /// How many instances of a spawned command run at once, each with its
    /// own session (a pool); 1 for a dialled address.
    pub instances: u32,
}

/// Timings of the host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Health check period.
    pub health_interval: Duration,
    /// Consecutive failed health checks that end a session.
    pub health_failures: u32,
    /// How long a spawned plugin may take to print its handshake line and
    /// answer Initialize.
    pub start_timeout: Duration,
    /// First restart delay; doubles per failure up to `restart_max`.
    pub restart_min: Duration,
    /// Largest restart delay.
    pub restart_max: Duration,
    /// After Shutdown and SIGTERM, how long to wait before SIGKILL.
    pub stop_grace: Duration,
    /// Sent in Initialize: where this server's APIs listen.
    pub api_endpoint: String,
}

impl Default for HostConfig {
    fn default() -> HostConfig {
        HostConfig {
            health_interval: Duration::from_secs(5),
            health_failures: 3,
            start_timeout: Duration::from_secs(10),
            restart_min: Duration::from_millis(200),
            restart_max: Duration::from_secs(30),
            stop_grace: Duration::from_secs(5),
            api_endpoint: String::new(),
        }
    }
}

/// The running host: one supervisor task per declared plugin.
pub struct PluginHost {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    gateway: Gateway,
    drain: DrainConnected,
}

/// Tells every connected-in session that the server stops: each drains
/// (no new attempt; the stream ends once its attempts have ended), while
/// the dispatcher still records their results.
#[derive(Clone)]
pub struct DrainConnected(Arc<watch::Sender<bool>>);

impl DrainConnected {
    /// Starts the drain (once; later calls change nothing).
    pub fn start(&self) {
        let _ = self.0.send(true);
    }
}

impl PluginHost {
    /// Starts supervising `plugins`; sessions appear in `sessions` as
    /// plugins prove their keys. Must be called inside a tokio runtime.
    pub fn start(
        plugins: Vec<PluginConfig>,
        ledger: Arc<Ledger>,
        sessions: Arc<Sessions>,
        config: HostConfig,
    ) -> PluginHost {
        let (stop, stopped) = watch::channel(false);
        let config = Arc::new(config);
        let (drain, draining) = watch::channel(false);
        let gateway = Gateway {
            ledger: Arc::clone(&ledger),
            sessions: Arc::clone(&sessions),
            config: Arc::clone(&config),
            stop: draining,
            unproven: Arc::new(tokio::sync::Semaphore::new(
                super::gateway::MAX_UNPROVEN_STREAMS,
            )),
        };
        let tasks = plugins
            .into_iter()
            .flat_map(|p| {
                let n = p.instances.max(1);
                (1..=n).map(move |i| {
                    let mut p = p.clone();
                    if n > 1 {
                        p.name = format!("{}#{i}", p.name);
                    }
                    p
                })
            })
            .map(|p| {
                let sup = Supervisor {
                    plugin: p,
                    ledger: Arc::clone(&ledger),
                    sessions: Arc::clone(&sessions),
                    config: Arc::clone(&config),
                    stop: stopped.clone(),
                };
                tokio::spawn(sup.run())
            })
            .collect();
        PluginHost {
            tasks,
            stop,
            gateway,
            drain: DrainConnected(Arc::new(drain)),
        }
    }

    /// What drains the connected-in sessions when the server starts to
    /// stop (before its gRPC server waits for open streams to end).
    pub fn drain_connected(&self) -> DrainConnected {
        self.drain.clone()
    }

    /// Where plugins that connect in are admitted: their sessions join
    /// the same pools, and drain when the host stops.
    pub fn gateway(&self) -> Gateway {
        self.gateway.clone()
    }

    /// Stops every plugin (Shutdown, SIGTERM, SIGKILL of the group) and
    /// waits for the supervisors.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.drain.start();
        // Connected-in sessions drain: wait (bounded) for their attempts.
        let until = Instant::now() + self.gateway.config.stop_grace;
        while Instant::now() < until
            && self
                .gateway
                .sessions
                .all()
                .iter()
                .any(|s| s.connection == Connection::ConnectedIn)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

struct Supervisor {
    plugin: PluginConfig,
    ledger: Arc<Ledger>,
    sessions: Arc<Sessions>,
    config: Arc<HostConfig>,
    stop: watch::Receiver<bool>,
}

/// How one run of a plugin ended.
enum Ended {
    /// The host is stopping.
    Stopped,
    /// The plugin failed (exited, could not start, was refused); restart
    /// it after the backoff.
    Failed(String),
    /// The host ended the session (key rotated, plugin revoked, health
    /// checks failed): stop the plugin gently, then restart it after the
    /// backoff so it proves its current key.
    Retired(String),
}

/// A spawned plugin process, killed with its group when dropped.
struct Child {
    child: tokio::process::Child,
    pgid: Option<i32>,
    /// Never written: the plugin sees EOF on stdin when this process
    /// dies, however it dies, and exits (no orphaned plugins).
    _stdin: Option<tokio::process::ChildStdin>,
}

impl Child {
    fn signal(&self, sig: i32) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) with a negative pid signals the process group
            // we created for this child; it touches no memory.
            unsafe {
                libc::kill(-pgid, sig);
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

impl Supervisor {
    async fn run(mut self) {
        let mut delay = self.config.restart_min;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let started = Instant::now();
            match self.run_once().await {
                Ended::Stopped => return,
                Ended::Failed(why) => {
                    tracing::warn!(plugin = %self.plugin.name, reason = %why, retry_in = ?delay, "plugin stopped");
                }
                Ended::Retired(why) => {
                    tracing::info!(plugin = %self.plugin.name, reason = %why, retry_in = ?delay, "plugin session ended by the host");
                }
            }
            // A plugin that ran a good while starts over from the shortest
            // delay; one that keeps failing backs off.
            if started.elapsed() > self.config.restart_max * 2 {
                delay = self.config.restart_min;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped(&mut self.stop) => return,
            }
            delay = (delay * 2).min(self.config.restart_max);
        }
    }

    async fn spawn(&self, argv: &[String]) -> Result<(Child, String), String> {
        let (program, args) = argv.split_first().ok_or("the command is empty")?;
        let mut cmd = tokio::process::Command::new(program);
        // The server's own settings (a token, TLS key paths) are not the
        // plugin's business.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PULSE_LEDGER_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args)
            .envs(self.plugin.env.iter().cloned())
            .stdin(std::process::Stdio::piped())
            .env(super::sdk::WATCH_STDIN_ENV, "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            // Its own process group, so SIGTERM/SIGKILL reach its children.
            .process_group(0);
        if let Some(d) = &self.plugin.dir {
            cmd.current_dir(d);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let pgid = child.id().and_then(|p| i32::try_from(p).ok());
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stdin = child.stdin.take();
        let child = Child {
            child,
            pgid,
            _stdin: stdin,
        };
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(self.config.start_timeout, lines.next_line())
            .await
            .map_err(|_| format!("no handshake line within {:?}", self.config.start_timeout))?
            .map_err(|e| format!("reading the handshake line: {e}"))?
            .ok_or("the plugin exited before its handshake line")?;
        let addr = parse_handshake(&first)?;
        // A spawned plugin is dialed in plaintext, so it must be on this
        // host's loopback.
        if !addr.ip().is_loopback() {
            return Err(format!(
                "plaintext_not_loopback: the plugin announced {addr}; a spawned plugin listens on a loopback address"
            ));
        }
        // The rest of stdout is the plugin's to use: keep it drained.
        let name = self.plugin.name.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(plugin = %name, "{line}");
            }
        });
        Ok((child, format!("http://{addr}")))
    }

    async fn connect(
        &self,
        uri: &str,
        tls: Option<&crate::api::tls::ClientTls>,
    ) -> Result<Channel, String> {
        let mut endpoint =
            Endpoint::from_shared(uri.to_owned()).map_err(|e| format!("bad address {uri}: {e}"))?;
        if uri.starts_with("https://") {
            let config = tls.cloned().unwrap_or_default().load()?;
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| format!("TLS settings for {uri}: {e}"))?;
        }
        // Per-stream flow control keeps attempts apart on the one
        // connection: an attempt whose reports Pulse is not reading (its
        // report queue is full) holds at most one stream window. The
        // connection window is HTTP/2's largest, so it runs out only after
        // 8,191 stalled attempts, far beyond any max_running: other
        // attempts and the health checks keep flowing. Memory stays
        // bounded by the stream windows, not by this.
        // One connection per channel: the session's proof holds for the
        // connection it was made on, so the channel must never reconnect
        // by itself (to whatever listens at the address by then). When the
        // connection is gone, calls fail, the session ends, and the next
        // session proves the key again on a new connection.
        endpoint
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(PLUGIN_STREAM_WINDOW))
            .initial_connection_window_size(Some(MAX_HTTP2_WINDOW))
            .connect_timeout(self.config.start_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .connect_with_connector(OneConnection::new())
            .await
            .map_err(|e| format!("cannot connect to {uri}: {e}"))
    }

    /// Sends a nonce, checks the proof, and checks the ledger: the plugin
    /// is registered, not revoked, and signed with its current key. A
    /// refused proof is remembered for `plugin sessions` and told to the
    /// plugin (`SessionRefused`).
    async fn initialize(
        &self,
        client: &mut PluginClient<Channel>,
        address: &str,
    ) -> Result<(Announcement, u32, u32), String> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        let req = proto::InitializeRequest {
            nonce: nonce.to_vec(),
            registry_endpoint: self.config.api_endpoint.clone(),
            jobs_endpoint: self.config.api_endpoint.clone(),
            protocol: PROTOCOL_VERSION,
        };
        let resp = tokio::time::timeout(self.config.start_timeout, client.initialize(req))
            .await
            .map_err(|_| "Initialize timed out".to_owned())?
            .map_err(|s| format!("Initialize failed: {}", s.message()))?
            .into_inner();
        match admit(&self.ledger, self.plugin.expect.as_ref(), &nonce, &resp) {
            Ok(a) => Ok((a, resp.slots, resp.attempt_streams)),
            Err(refused) => {
                self.sessions.refused(RefusedProof {
                    plugin: resp.plugin.clone(),
                    address: address.to_owned(),
                    code: refused.code.to_owned(),
                    message: refused.message.clone(),
                    at_ms: crate::clock::unix_ms(),
                });
                // Told so the plugin can log why; one without the call
                // answers UNIMPLEMENTED, which changes nothing.
                let notice = proto::SessionRefusal {
                    code: refused.code.to_owned(),
                    message: refused.message.clone(),
                };
                let _ =
                    tokio::time::timeout(self.config.start_timeout, client.session_refused(notice))
                        .await;
                Err(refused.to_string())
            }
        }
    }

    async fn run_once(&mut self) -> Ended {
        let (mut child, uri, tls, connection) = match &self.plugin.source {
            PluginSource::Command(argv) => match self.spawn(argv).await {
                Ok((c, uri)) => (Some(c), uri, None, Connection::Spawned),
                Err(e) => return Ended::Failed(e),
            },
            PluginSource::Remote { url, tls } => {
                (None, url.clone(), Some(tls.clone()), Connection::Dialled)
            }
        };
        let channel = match self.connect(&uri, tls.as_ref()).await {
            Ok(c) => c,
            Err(e) => return Ended::Failed(e),
        };
        // Results up to the server's response limit.
        let mut client =
            PluginClient::new(channel).max_decoding_message_size(crate::api::MAX_RESPONSE_BYTES);
        let (announcement, slots, streams) = match self.initialize(&mut client, &uri).await {
            Ok(a) => a,
            Err(e) => return Ended::Failed(format!("session refused: {e}")),
        };
        // For people only: who answered. A plugin without Metadata is fine.
        let about = tokio::time::timeout(
            self.config.start_timeout,
            client.metadata(proto::MetadataRequest {}),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(tonic::Response::into_inner)
        .unwrap_or_default();
        let streams = match AttemptStreams::open(&client, streams, self.config.start_timeout).await
        {
            Ok(s) => s,
            Err(e) => return Ended::Failed(e),
        };
        let (ended_tx, ended) = watch::channel(false);
        let plugin = announcement.plugin.clone();
        tracing::info!(
            plugin = %self.plugin.name,
            id = %plugin,
            handlers = announcement.handlers.len(),
            serves_any = announcement.serves_any,
            software = %about.name,
            version = %about.version,
            "plugin session open"
        );
        let link = streams
            .as_ref()
            .map_or_else(|| Link::Client(client.clone()), |s| Link::Stream(s.link()));
        let mut session = Session::new(
            announcement.clone(),
            link,
            connection,
            uri.clone(),
            slots,
            ended,
        );
        session.attempt_streams = streams.as_ref().map_or(0, AttemptStreams::count);
        let session = Arc::new(session);
        let generation = session.generation;
        if let Some(s) = streams {
            s.read(&session);
        }
        self.sessions.open(Arc::clone(&session));
        let outcome = self.watch(&mut client, child.as_mut(), &session).await;
        // Close first, so no new attempt goes to it, then end the running
        // ones.
        self.sessions.close(&plugin, generation);
        let _ = ended_tx.send(true);
        if matches!(outcome, Ended::Stopped | Ended::Retired(_)) {
            self.stop_plugin(&mut client, child.take()).await;
        }
        outcome
    }

    async fn watch(
        &self,
        client: &mut PluginClient<Channel>,
        mut child: Option<&mut Child>,
        session: &Session,
    ) -> Ended {
        let a = &session.announcement;
        let mut tick = tokio::time::interval(self.config.health_interval);
        tick.tick().await;
        let mut failures = 0;
        let mut stop = self.stop.clone();
        // Health calls run on their own task and answer here, so a slow
        // answer never delays crash detection; one at a time.
        let (answer_tx, mut answers) = tokio::sync::mpsc::channel::<Health>(1);
        let mut checking = false;
        loop {
            let exited = async {
                match child.as_mut() {
                    Some(c) => c.child.wait().await.map(|s| s.to_string()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = exited => {
                    return Ended::Failed(match status {
                        Ok(s) => format!("the plugin exited ({s})"),
                        Err(e) => format!("the plugin exited: {e}"),
                    });
                }
                _ = stopped(&mut stop) => return Ended::Stopped,
                // The connection that proved the key is gone: nothing more
                // can be sent on this session.
                _ = session.lost.wait() => {
                    return Ended::Failed("the connection to the plugin is gone".into());
                }
                Some(health) = answers.recv() => {
                    checking = false;
                    if health == Health::Gone {
                        session.lost.set();
                    } else if health == Health::Serving {
                        failures = 0;
                        session.healthy();
                    } else if health == Health::Draining {
                        // It answers, but takes no new attempt: it
                        // finishes the ones it runs, then the session
                        // ends.
                        failures = 0;
                        session.drain();
                        if session.running() == 0 {
                            return Ended::Retired("the plugin drained".into());
                        }
                    } else {
                        failures += 1;
                        if failures >= self.config.health_failures {
                            return Ended::Retired(format!("{failures} health checks failed"));
                        }
                    }
                }
                _ = tick.tick(), if !checking => {
                    if let Err(why) = still_current(&self.ledger, a) {
                        return Ended::Retired(why);
                    }
                    checking = true;
                    let mut client = client.clone();
                    let limit = self.config.health_interval;
                    let tx = answer_tx.clone();
                    tokio::spawn(async move {
                        let answer =
                            tokio::time::timeout(limit, client.health(proto::HealthRequest {})).await;
                        let health = match answer {
                            Ok(Ok(r)) if r.get_ref().serving => Health::Serving,
                            Ok(Ok(_)) => Health::Draining,
                            Ok(Err(s)) if s.code() == tonic::Code::Unavailable => Health::Gone,
                            _ => Health::Failing,
                        };
                        let _ = tx.send(health).await;
                    });
                }
            }
        }
    }

    /// Stops a spawned plugin: Shutdown, SIGTERM, then SIGKILL of its
    /// group. A remote plugin is not ours to stop: it is only left.
    async fn stop_plugin(&self, client: &mut PluginClient<Channel>, child: Option<Child>) {
        let Some(mut child) = child else { return };
        let grace = self.config.stop_grace;
        let _ = tokio::time::timeout(grace, client.shutdown(proto::ShutdownRequest {})).await;
        child.signal(libc::SIGTERM);
        if tokio::time::timeout(grace, child.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(plugin = %self.plugin.name, "plugin ignored SIGTERM; killing its group");
        }
        // Dropping the child SIGKILLs its group (children it left behind).
    }
}

/// The answer to one health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Serving,
    /// Answers, but not serving: it drains.
    Draining,
    /// No answer in time: counted towards the limit.
    Failing,
    /// The connection is gone: the session ends at once.
    Gone,
}

/// Resolves once the host is stopping.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A connector that makes one connection and refuses every later one, so
/// a plugin's channel cannot quietly reconnect to another process after
/// the one that proved the key is gone (spec/plugin.md, "Sessions").
#[derive(Clone)]
struct OneConnection {
    tcp: hyper_util::client::legacy::connect::HttpConnector,
    used: Arc<std::sync::atomic::AtomicBool>,
}

impl OneConnection {
    fn new() -> OneConnection {
        let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
        // https:// too: TLS is layered on top by the endpoint.
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        OneConnection {
            tcp,
            used: Arc::default(),
        }
    }
}

impl tonic::codegen::Service<tonic::codegen::http::Uri> for OneConnection {
    type Response =
        <hyper_util::client::legacy::connect::HttpConnector as tonic::codegen::Service<
            tonic::codegen::http::Uri,
        >>::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        if self.used.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Box::pin(async {
                Err("the connection that proved the plugin's key is gone; a new session must prove it again".into())
            });
        }
        let connecting = self.tcp.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}
