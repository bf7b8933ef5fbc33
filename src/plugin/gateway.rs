//! Sessions of plugins that connect in (`PluginGateway.Connect`): the
//! server sends a nonce on the stream, the plugin proves its key and
//! announces its handlers and slots, and the session lives on that one
//! stream (spec/plugin.md, "Connecting in"). Transport and tokens are the
//! API layer's; this is the session.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};

use super::admit::{Refused, admit, still_current};
use super::handshake::PROTOCOL_VERSION;
use super::host::HostConfig;
use super::link::StreamLink;
use super::proof::NONCE_BYTES;
use super::session::{Connection, Link, RefusedProof, Session, Sessions};
use crate::Did;
use crate::api::proto::{self, plugin_message, server_message::Message};
use crate::ledger::Ledger;

/// Server messages waiting to be written to one plugin's stream.
const OUT_QUEUE: usize = 256;

/// What the gateway needs to run connected-in sessions. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(super) ledger: Arc<Ledger>,
    pub(super) sessions: Arc<Sessions>,
    pub(super) config: Arc<HostConfig>,
    pub(super) stop: watch::Receiver<bool>,
    /// Streams that have not proved a key yet: each may hold a message of
    /// up to 16 MiB for the start timeout, and anyone may open one.
    pub(super) unproven: Arc<tokio::sync::Semaphore>,
}

/// Streams that may be proving a key at once, over every client: what
/// strangers can make the server hold before a proof is bounded (16 of
/// them, 16 MiB each at most, for 10 s).
pub(super) const MAX_UNPROVEN_STREAMS: usize = 16;

/// The messages a connected-in plugin sends: its request stream.
pub type Inbound = std::pin::Pin<
    Box<dyn Stream<Item = Result<proto::PluginMessage, tonic::Status>> + Send + 'static>,
>;

/// The messages the server sends it: the response stream.
pub type Outbound =
    tokio_stream::wrappers::ReceiverStream<Result<proto::ServerMessage, tonic::Status>>;

impl Gateway {
    /// Runs one connected-in session from `peer` in the background and
    /// returns what to send it. `authorise` decides, once the plugin has
    /// proved its ID, whether the caller's credentials may connect as that
    /// plugin (`Err` carries the refusal code and detail).
    pub fn connect(
        &self,
        inbound: Inbound,
        peer: String,
        authorise: impl FnOnce(&Did) -> Result<(), Refused> + Send + 'static,
    ) -> Outbound {
        let (out, rx) = mpsc::channel(OUT_QUEUE);
        let me = self.clone();
        tokio::spawn(async move {
            let link = Arc::new(StreamLink::new(out.clone()));
            let why = me.run(inbound, &peer, authorise, &link, &out).await;
            link.close();
            match why {
                Ok(reason) => tracing::info!(%peer, %reason, "connected-in plugin session ended"),
                Err(status) => {
                    tracing::warn!(%peer, error = %status.message(), "connected-in plugin session ended");
                    let _ = out.send(Err(status)).await;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// The session: proof, then attempts until either side ends it.
    /// `Ok` with why it ended, or the status to end the stream with.
    async fn run(
        &self,
        mut inbound: Inbound,
        peer: &str,
        authorise: impl FnOnce(&Did) -> Result<(), Refused>,
        link: &Arc<StreamLink>,
        out: &mpsc::Sender<Result<proto::ServerMessage, tonic::Status>>,
    ) -> Result<String, tonic::Status> {
        let Ok(unproven) = Arc::clone(&self.unproven).try_acquire_owned() else {
            return Err(tonic::Status::resource_exhausted(format!(
                "overloaded: {MAX_UNPROVEN_STREAMS} plugins are proving their keys already; connect again shortly"
            )));
        };
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce)
            .map_err(|e| tonic::Status::internal(format!("no randomness: {e}")))?;
        link.send(Message::Initialize(proto::InitializeRequest {
            nonce: nonce.to_vec(),
            registry_endpoint: self.config.api_endpoint.clone(),
            jobs_endpoint: self.config.api_endpoint.clone(),
            protocol: PROTOCOL_VERSION,
        }))
        .await
        .map_err(tonic::Status::cancelled)?;
        let first = tokio::time::timeout(self.config.start_timeout, inbound.next())
            .await
            .map_err(|_| {
                refusal(
                    "bad_announcement",
                    format!(
                        "no initialize message within {:?}",
                        self.config.start_timeout
                    ),
                )
            })?;
        let answer = match first {
            Some(Ok(proto::PluginMessage {
                message: Some(plugin_message::Message::Initialize(a)),
            })) => a,
            Some(Err(s)) => return Err(s),
            None => return Ok("the plugin left before proving its key".into()),
            Some(Ok(_)) => {
                return Err(refusal(
                    "bad_announcement",
                    "the first message must be initialize (the proof)".into(),
                ));
            }
        };
        let admitted = admit(&self.ledger, None, &nonce, &answer)
            .and_then(|a| authorise(&a.plugin).map(|()| a));
        drop(unproven);
        let announcement = match admitted {
            Ok(a) => a,
            Err(refused) => {
                self.sessions.refused(RefusedProof {
                    plugin: answer.plugin.clone(),
                    address: peer.to_owned(),
                    code: refused.code.to_owned(),
                    message: refused.message.clone(),
                    at_ms: crate::clock::unix_ms(),
                });
                return Err(refusal(refused.code, refused.message));
            }
        };
        let (ended_tx, ended) = watch::channel(false);
        let session = Arc::new(Session::new(
            announcement,
            Link::Stream(Arc::clone(link)),
            Connection::ConnectedIn,
            peer.to_owned(),
            answer.slots,
            ended,
        ));
        let plugin = session.announcement.plugin.clone();
        tracing::info!(
            id = %plugin,
            %peer,
            handlers = session.announcement.handlers.len(),
            serves_any = session.announcement.serves_any,
            slots = session.slots,
            "plugin session open (connected in)"
        );
        self.sessions.open(Arc::clone(&session));
        let reason = self.serve(&session, &mut inbound, link, out).await;
        // Closed first, so no new attempt goes to it; then the running
        // ones end (crashes, retried elsewhere).
        self.sessions.close(&plugin, session.generation);
        let _ = ended_tx.send(true);
        reason
    }

    /// The open session's loop.
    async fn serve(
        &self,
        session: &Session,
        inbound: &mut Inbound,
        link: &StreamLink,
        out: &mpsc::Sender<Result<proto::ServerMessage, tonic::Status>>,
    ) -> Result<String, tonic::Status> {
        let mut tick = tokio::time::interval(self.config.health_interval);
        tick.tick().await;
        let mut unanswered = 0u32;
        let mut stop = self.stop.clone();
        let mut stopping = false;
        // While draining, how often to look whether the last attempt ended.
        let mut drained = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(m)) => match m.message {
                        Some(plugin_message::Message::Event(e)) => link.deliver(e).await,
                        Some(plugin_message::Message::Health(h)) => {
                            unanswered = 0;
                            if h.serving {
                                session.healthy();
                            }
                        }
                        Some(plugin_message::Message::Drain(_)) => {
                            tracing::info!(plugin = %session.announcement.plugin, peer = %session.address, running = session.running(), "plugin instance draining");
                            session.drain();
                        }
                        Some(plugin_message::Message::Initialize(_)) => {
                            return Err(refusal("protocol_violation", "initialize sent twice on one session".into()));
                        }
                        None => {}
                    },
                    Some(Err(s)) => return Ok(format!("the stream broke: {}", s.message())),
                    None => return Ok("the plugin ended the stream".into()),
                },
                _ = session.lost.wait() => return Ok("the stream is gone".into()),
                _ = out.closed() => return Ok("the plugin went away".into()),
                _ = stopped(&mut stop), if !stopping => {
                    // The server stops: the plugin drains and may come back
                    // to the next server.
                    stopping = true;
                    session.drain();
                    // Never waited for: the session is draining here
                    // whether or not the plugin hears it now.
                    link.try_send(Message::Shutdown(proto::ShutdownRequest {}));
                }
                _ = drained.tick(), if session.draining() => {
                    if session.running() == 0 {
                        return Ok("drained".into());
                    }
                }
                _ = tick.tick() => {
                    if let Err(why) = still_current(&self.ledger, &session.announcement) {
                        return Err(refusal(if why.starts_with("plugin_revoked") { "plugin_revoked" } else { "bad_proof" }, why));
                    }
                    if unanswered >= self.config.health_failures {
                        return Ok(format!("{unanswered} health checks unanswered"));
                    }
                    unanswered += 1;
                    // A full queue: this check goes unanswered, as a plugin
                    // too busy to read would leave it.
                    link.try_send(Message::Health(proto::HealthRequest {}));
                }
            }
        }
    }
}

/// A refused or ended session, as the plugin sees it: PERMISSION_DENIED
/// with a google.rpc.ErrorInfo naming the code (as the registry API's
/// refusals do).
fn refusal(code: &str, message: String) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    tonic::Status::with_error_details(
        tonic::Code::PermissionDenied,
        format!("{code}: {message}"),
        ErrorDetails::with_error_info(
            code,
            crate::api::ERROR_DOMAIN,
            std::collections::HashMap::new(),
        ),
    )
}

/// Resolves once the server is stopping.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
