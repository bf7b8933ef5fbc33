//! `EnqueueStream`: jobs sent one by one on one call. Each job is enqueued
//! as it arrives, through the same group commit as a unary `Enqueue` (so
//! jobs arriving together share an fsync), and answered in request order
//! once it is durable. A client that produces jobs one at a time saves the
//! cost of a call per job (headers, routing, a task, the token check)
//! without batching them itself, which would make each job wait for its
//! batch to fill.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::{BoxStream, JobsService, WATCH_POLL_MS, enqueue_units, job_error, job_status};
use crate::api::proto;
use crate::auth::Grant;
use crate::pulse::{Job, JobError};

/// Who opened the stream, and how to check them again.
pub(in crate::api) struct Caller {
    pub grant: Arc<Grant>,
    /// The call's `authorization` header: the token is checked again as
    /// the stream goes on, so one revoked (or a DID token expired) while
    /// the stream is open enqueues nothing more.
    pub header: Option<Vec<u8>>,
    pub peer: Option<std::net::SocketAddr>,
    /// The trace the call carried, given to each job.
    pub trace: Option<String>,
}

/// Jobs of one stream read and not yet answered. The reader stops there
/// until the oldest is answered, so a stream holds bounded memory however
/// fast its client sends.
pub(super) const STREAM_IN_FLIGHT: usize = 64;

/// What answers one message of the stream, in its turn.
enum Answer {
    /// Refused before the store (a rule of the request, the caller's
    /// scope or allowance).
    Refused(Status),
    /// Handed to the group commit; its outcome comes here, answered as
    /// the grant it was checked with may see it.
    Stored(oneshot::Receiver<Result<(Job, bool), JobError>>, Arc<Grant>),
    /// The stream cannot go on (a message that cannot be read, or the
    /// server is stopping): this ends it, after the answers before it.
    End(Status),
}

fn unavailable() -> Status {
    Status::unavailable("unavailable: the server is shutting down")
}

impl JobsService {
    /// Serves one `EnqueueStream` call for `caller`.
    pub(super) fn stream_enqueues(
        &self,
        mut caller: Caller,
        mut inbound: Streaming<proto::EnqueueRequest>,
    ) -> BoxStream<proto::EnqueueStreamResponse> {
        let (pending_tx, mut pending_rx) = mpsc::channel::<Answer>(STREAM_IN_FLIGHT);
        let (out_tx, out_rx) = mpsc::channel(STREAM_IN_FLIGHT);
        let reader = self.clone();
        tokio::spawn(async move {
            let recheck = std::time::Duration::from_millis(WATCH_POLL_MS);
            let mut checked = std::time::Instant::now();
            while let Some(item) = inbound.next().await {
                if checked.elapsed() >= recheck {
                    checked = std::time::Instant::now();
                    match reader.access.authenticate(caller.header.as_deref()) {
                        Ok(grant) => caller.grant = grant,
                        Err(e) => {
                            let refused = reader.refuse(&e, caller.peer);
                            let _ = pending_tx.send(Answer::End(refused)).await;
                            return;
                        }
                    }
                }
                let answer = match item {
                    Ok(req) => reader.stream_one(&req, &caller).await,
                    Err(status) => Answer::End(crate::api::normalize::normalize_status(status)),
                };
                let end = matches!(answer, Answer::End(_));
                if pending_tx.send(answer).await.is_err() || end {
                    return;
                }
            }
        });
        let writer = self.clone();
        tokio::spawn(async move {
            let mut position = 0u64;
            while let Some(answer) = pending_rx.recv().await {
                let result = match answer {
                    Answer::Refused(status) => {
                        proto::enqueue_stream_response::Result::Rejected(job_error(&status))
                    }
                    Answer::Stored(outcome, grant) => match outcome.await {
                        Ok(Ok((job, existing))) => {
                            writer.wake();
                            // The caller has the payload it sent; answers
                            // waiting to be read hold no copy of it.
                            let mut message = writer.enqueued_message(&grant, &job, existing);
                            message.payload = Vec::new();
                            proto::enqueue_stream_response::Result::Accepted(
                                proto::EnqueueResponse {
                                    job: Some(message),
                                    existing,
                                },
                            )
                        }
                        Ok(Err(e)) => proto::enqueue_stream_response::Result::Rejected(job_error(
                            &job_status(&e),
                        )),
                        Err(_) => {
                            let _ = out_tx.send(Err(unavailable())).await;
                            return;
                        }
                    },
                    Answer::End(status) => {
                        let _ = out_tx.send(Err(status)).await;
                        return;
                    }
                };
                let reply = proto::EnqueueStreamResponse {
                    position,
                    result: Some(result),
                };
                if out_tx.send(Ok(reply)).await.is_err() {
                    return;
                }
                position += 1;
            }
        });
        Box::pin(ReceiverStream::new(out_rx))
    }

    /// Checks one message and hands it to the group commit.
    async fn stream_one(&self, req: &proto::EnqueueRequest, caller: &Caller) -> Answer {
        let (grant, peer) = (&caller.grant, caller.peer);
        let checked = self
            .admit_enqueue(grant, enqueue_units(req.payload.len()), peer)
            .and_then(|()| self.request(req, grant, peer, caller.trace.clone()));
        let item = match checked {
            Ok(item) => item,
            Err(status) => return Answer::Refused(status),
        };
        let (reply, outcome) = oneshot::channel();
        match self.enqueuer.send((item, reply)).await {
            Ok(()) => Answer::Stored(outcome, Arc::clone(grant)),
            Err(_) => Answer::End(unavailable()),
        }
    }
}
