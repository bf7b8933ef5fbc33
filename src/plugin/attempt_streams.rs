//! `Plugin.Attempts`: the streams Pulse opens to a spawned or dialled
//! plugin that asked for them in `InitializeResponse.attempt_streams`, so
//! its attempts travel as messages on long-lived streams instead of one
//! `ExecuteJob` call each (spec/plugin.md, "Attempt streams").

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::link::StreamLink;
use super::session::Session;
use crate::api::proto::{self, plugin_client::PluginClient, plugin_message};

/// The most streams Pulse opens to one instance, whatever it asks for.
pub const MAX_ATTEMPT_STREAMS: u32 = 16;

/// Server messages waiting per stream before a sender waits.
const OUT_QUEUE: usize = 256;

/// Opened streams, not yet read.
pub(crate) struct AttemptStreams {
    link: Arc<StreamLink>,
    inbound: Vec<tonic::Streaming<proto::PluginMessage>>,
}

impl AttemptStreams {
    /// Opens `wanted` streams (at most [`MAX_ATTEMPT_STREAMS`]) on the
    /// session's connection. `None`: none wanted, or the plugin does not
    /// implement `Attempts` (UNIMPLEMENTED on the first), so each attempt
    /// is its own `ExecuteJob` call.
    ///
    /// # Errors
    /// A stream could not be opened within `limit`: the session fails.
    pub(crate) async fn open(
        client: &PluginClient<Channel>,
        wanted: u32,
        limit: Duration,
    ) -> Result<Option<AttemptStreams>, String> {
        let count = wanted.min(MAX_ATTEMPT_STREAMS);
        let mut outs = Vec::new();
        let mut inbound = Vec::new();
        for i in 0..count {
            let (tx, rx) = mpsc::channel(OUT_QUEUE);
            // The link's queues carry `Result`s (as the Join stream's
            // answer does); a client stream sends the messages only.
            let requests = ReceiverStream::new(rx).filter_map(Result::ok);
            let answer = tokio::time::timeout(limit, client.clone().attempts(requests))
                .await
                .map_err(|_| format!("opening attempt stream {} timed out", i + 1))?;
            match answer {
                Ok(r) => inbound.push(r.into_inner()),
                Err(s) if i == 0 && s.code() == tonic::Code::Unimplemented => {
                    tracing::warn!(
                        "the plugin asked for attempt streams but does not implement Attempts; \
                         each attempt is an ExecuteJob call"
                    );
                    return Ok(None);
                }
                Err(s) => {
                    return Err(format!(
                        "opening attempt stream {} failed: {}",
                        i + 1,
                        s.message()
                    ));
                }
            }
            outs.push(tx);
        }
        if outs.is_empty() {
            return Ok(None);
        }
        Ok(Some(AttemptStreams {
            link: Arc::new(StreamLink::over(outs)),
            inbound,
        }))
    }

    /// How many are open.
    pub(crate) fn count(&self) -> u32 {
        u32::try_from(self.inbound.len()).unwrap_or(u32::MAX)
    }

    /// The link attempts are sent on.
    pub(crate) fn link(&self) -> Arc<StreamLink> {
        Arc::clone(&self.link)
    }

    /// Reads every stream until the session ends. Events go to their
    /// attempts; `drain` makes the session take no new attempt. A stream
    /// that ends or breaks ends the session (as the end of a connected-in
    /// stream does): its attempts can no longer report.
    pub(crate) fn read(self, session: &Arc<Session>) {
        for mut inbound in self.inbound {
            let link = Arc::clone(&self.link);
            let session = Arc::clone(session);
            let mut ended = session.ended.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        msg = inbound.next() => match msg {
                            Some(Ok(m)) => match m.message {
                                Some(plugin_message::Message::Event(e)) => link.deliver(e).await,
                                Some(plugin_message::Message::Drain(_)) => session.drain(),
                                _ => {}
                            },
                            _ => {
                                session.lost.set();
                                break;
                            }
                        },
                        _ = async { ended.wait_for(|e| *e).await.map(|_| ()) } => break,
                    }
                }
                link.close();
            });
        }
    }
}
