//! The connect-in transport: the plugin dials the server
//! (`PluginGateway.Join`), proves its key on that stream, and runs the
//! attempts the server sends over it. It reconnects with backoff, proving
//! its key again on every new stream, until it is stopped; a stop drains
//! first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use super::PluginServer;
use super::attempts::Attempts;
use crate::api::Bearer;
use crate::api::proto::{
    self, plugin_gateway_client::PluginGatewayClient, plugin_message, server_message::Message,
};

/// Where and how a plugin connects in.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The server's gRPC URL: `https://host:port`, or `http://` on a
    /// loopback address.
    pub url: String,
    /// How to check the server's certificate, and a client certificate
    /// for a server that requires mutual TLS.
    pub tls: crate::api::tls::ClientTls,
    /// `authorization: Bearer …` for servers with tokens (a token with the
    /// `plugin` scope, or a DID token of the plugin's own key).
    pub bearer: Bearer,
    /// First reconnect delay; doubles per failure up to `retry_max`.
    pub retry_min: Duration,
    /// Longest reconnect delay.
    pub retry_max: Duration,
}

impl ConnectOptions {
    /// Options for `url`, no TLS settings beyond the public roots, no
    /// token, reconnecting after 200 ms up to 30 s.
    pub fn new(url: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            url: url.into(),
            tls: crate::api::tls::ClientTls::default(),
            bearer: Bearer::none(),
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
        }
    }

    /// Options for `url` from the environment: `PULSE_PLUGIN_TOKEN` (a
    /// bearer token), `PULSE_PLUGIN_SERVER_CA` (PEM CA of the server's
    /// certificate), `PULSE_PLUGIN_CLIENT_CERT` and
    /// `PULSE_PLUGIN_CLIENT_KEY` (for mutual TLS), and
    /// `PULSE_PLUGIN_ALLOW_PLAINTEXT=1` to send a token over plaintext
    /// off loopback.
    ///
    /// # Errors
    /// A client certificate without its key (or the reverse), or a token
    /// that may not be sent to `url`.
    pub fn from_env(url: impl Into<String>) -> Result<ConnectOptions, String> {
        let mut o = ConnectOptions::new(url);
        let env = |k: &str| std::env::var_os(k).map(std::path::PathBuf::from);
        o.tls.ca = env("PULSE_PLUGIN_SERVER_CA");
        o.tls.identity = match (
            env("PULSE_PLUGIN_CLIENT_CERT"),
            env("PULSE_PLUGIN_CLIENT_KEY"),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(
                    "PULSE_PLUGIN_CLIENT_CERT and PULSE_PLUGIN_CLIENT_KEY go together".into(),
                );
            }
        };
        if let Ok(token) = std::env::var("PULSE_PLUGIN_TOKEN") {
            let plaintext = std::env::var("PULSE_PLUGIN_ALLOW_PLAINTEXT").is_ok_and(|v| v == "1");
            o.bearer = Bearer::new(&token, &o.url, plaintext)?;
        }
        Ok(o)
    }
}

/// How one session over the gateway ended.
enum Ended {
    /// Stopped by the process: drained, nothing more to do.
    Stopped,
    /// Lost or ended by the server: connect again.
    Again(String),
}

impl PluginServer {
    /// Connects in to the server at `options.url` and serves over that
    /// stream until SIGTERM or SIGINT, reconnecting (with a new proof) when
    /// the stream is lost or the server stops. A stop drains first: the
    /// server is told, sends no new attempt, and the running ones finish.
    ///
    /// # Errors
    /// The URL or TLS settings are unusable (connection failures are
    /// retried, not returned).
    pub async fn connect(
        self,
        options: ConnectOptions,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.connect_until(options, super::signals()).await
    }

    /// Connects in to `connect` (or `PULSE_PLUGIN_CONNECT`) if given, with
    /// [`ConnectOptions::from_env`]; otherwise listens as
    /// [`PluginServer::serve`] does. What the reference plugins do.
    ///
    /// # Errors
    /// As [`PluginServer::connect`] or [`PluginServer::serve`].
    pub async fn run(
        self,
        connect: Option<String>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        match connect.or_else(|| std::env::var("PULSE_PLUGIN_CONNECT").ok()) {
            Some(url) => self.connect(ConnectOptions::from_env(url)?).await,
            None => self.serve().await,
        }
    }

    /// [`PluginServer::connect`], stopping (after a drain) when `shutdown`
    /// resolves instead of on signals.
    ///
    /// # Errors
    /// The URL or TLS settings are unusable.
    pub async fn connect_until(
        self,
        options: ConnectOptions,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut endpoint = Endpoint::from_shared(options.url.clone())
            .map_err(|e| format!("bad server URL {}: {e}", options.url))?;
        if options.url.starts_with("https://") {
            endpoint = endpoint.tls_config(options.tls.load()?)?;
        } else {
            crate::api::tls::check_plaintext(&options.url, false)?;
        }
        let endpoint = endpoint
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30));
        let attempts = Arc::new(Attempts::new(Arc::new(self)));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let mut delay = options.retry_min;
        loop {
            let started = Instant::now();
            match session(&endpoint, &options, &attempts, stop.clone()).await {
                Ended::Stopped => return Ok(()),
                Ended::Again(why) => {
                    eprintln!(
                        "pulse-ledger plugin: session with {} ended: {why}; connecting again in {delay:?}",
                        options.url
                    );
                }
            }
            if *stop.borrow() {
                attempts.drain().await;
                return Ok(());
            }
            if started.elapsed() > options.retry_max * 2 {
                delay = options.retry_min;
            }
            let mut s = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = s.wait_for(|s| *s) => {
                    attempts.drain().await;
                    return Ok(());
                }
            }
            delay = (delay * 2).min(options.retry_max);
        }
    }
}

/// One stream: proof, then attempts until it ends.
async fn session(
    endpoint: &Endpoint,
    options: &ConnectOptions,
    attempts: &Arc<Attempts>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Ended {
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return Ended::Again(format!("cannot connect: {e}")),
    };
    let mut client = PluginGatewayClient::with_interceptor(channel, options.bearer.clone())
        .max_decoding_message_size(crate::api::MAX_RESPONSE_BYTES)
        .max_encoding_message_size(crate::api::MAX_RESPONSE_BYTES);
    let (out, rx) = mpsc::channel::<proto::PluginMessage>(256);
    let mut inbound = match client.join(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return refused_or_lost(s),
    };
    // The nonce, then the proof.
    let init = match inbound.message().await {
        Ok(Some(proto::ServerMessage {
            message: Some(Message::Initialize(i)),
        })) => i,
        Ok(_) => return Ended::Again("the server did not start with a nonce".into()),
        Err(s) => return refused_or_lost(s),
    };
    match attempts.answer(&init) {
        Ok(a) => {
            send(&out, plugin_message::Message::Initialize(a)).await;
        }
        Err(s) => return Ended::Again(format!("cannot answer the nonce: {}", s.message())),
    }
    let mut draining = false;
    // Attempts started on this stream: if it ends, the server has ended
    // them (and will run their jobs again elsewhere), so they stop here.
    let mut started: Vec<([u8; 16], Vec<u8>)> = Vec::new();
    // Once our attempts are over while draining: how long the server has
    // to end the stream (it does once it sees none running).
    let mut last_call: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let ended = loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(m)) => match m.message {
                    Some(Message::Execute(req)) => {
                        // Started even while draining: the server sent it
                        // before it heard, and the stream stays open until
                        // the server has seen every attempt end.
                        if let Some(key) = attempts.run_streamed(req, &out).await {
                            started.retain(|(j, l)| attempts.is_running(*j, l));
                            started.push(key);
                        }
                    }
                    Some(Message::Cancel(c)) => {
                        if let Ok(job) = <[u8; 16]>::try_from(c.job_id.as_slice()) {
                            attempts.cancel(job, c.lease);
                        }
                    }
                    Some(Message::Health(_)) => {
                        send_later(&out, plugin_message::Message::Health(proto::HealthResponse {
                            serving: !attempts.draining(),
                            running: attempts.running() as u32,
                        }));
                    }
                    // The server stops: it sends nothing new and ends the
                    // stream once our attempts are over; then we connect
                    // again (to the next server).
                    Some(Message::Shutdown(_)) => {
                        send_later(&out, plugin_message::Message::Drain(proto::DrainRequest {}));
                    }
                    Some(Message::Initialize(_)) | None => {}
                },
                Ok(None) if draining => break Ended::Stopped,
                Ok(None) => break Ended::Again("the server ended the stream".into()),
                Err(_) if draining => break Ended::Stopped,
                Err(s) => break refused_or_lost(s),
            },
            _ = stop.wait_for(|s| *s), if !draining => {
                // Stopping: tell the server, finish what runs, and leave
                // when the server ends the stream.
                draining = true;
                send_later(&out, plugin_message::Message::Drain(proto::DrainRequest {}));
            }
            _ = attempts.drain(), if draining && last_call.is_none() => {
                last_call = Some(Box::pin(tokio::time::sleep(DRAIN_LAST_CALL)));
            }
            _ = async { if let Some(t) = last_call.as_mut() { t.await } }, if last_call.is_some() => {
                break Ended::Stopped;
            }
        }
    };
    // Attempts of a stream that is gone were ended by the server; stop
    // them here so a job never runs in two places at once.
    for (job, lease) in started {
        attempts.stop(job, &lease);
    }
    ended
}

/// After a drain, how long the server may take to end the stream once
/// this process runs no attempt.
const DRAIN_LAST_CALL: Duration = Duration::from_secs(10);

/// Sends a control message without making the stream's reader wait: the
/// reader must keep reading, or both sides could wait on each other's full
/// queues.
fn send_later(out: &mpsc::Sender<proto::PluginMessage>, m: plugin_message::Message) {
    let out = out.clone();
    tokio::spawn(async move {
        let _ = out.send(proto::PluginMessage { message: Some(m) }).await;
    });
}

/// Sends one message on the stream; `false` once it is gone.
async fn send(out: &mpsc::Sender<proto::PluginMessage>, m: plugin_message::Message) -> bool {
    out.send(proto::PluginMessage { message: Some(m) })
        .await
        .is_ok()
}

/// A refused proof is reported (and retried: the key may be registered
/// later); anything else is a lost stream.
fn refused_or_lost(s: tonic::Status) -> Ended {
    use tonic_types::StatusExt;
    if s.code() == tonic::Code::PermissionDenied || s.code() == tonic::Code::Unauthenticated {
        let code = s
            .get_details_error_info()
            .map(|i| i.reason)
            .unwrap_or_else(|| format!("{:?}", s.code()));
        super::report_refusal(&code, s.message());
        return Ended::Again(format!("refused: {code}"));
    }
    Ended::Again(format!("{:?}: {}", s.code(), s.message()))
}
