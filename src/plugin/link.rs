//! The attempts of a plugin that connected in, multiplexed over its one
//! `PluginGateway.Connect` stream: attempts and cancels go out as server
//! messages; events come back naming their job and lease, and are handed
//! to the attempt they belong to (spec/plugin.md, "Connecting in").

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::api::proto::{self, server_message::Message};
use crate::pulse::{JobId, LeaseToken};

/// Events waiting per attempt before the stream's reader waits (and the
/// plugin's stream with it): back-pressure, not memory growth.
const ATTEMPT_QUEUE: usize = 64;

/// The server's side of one connected-in session.
pub struct StreamLink {
    out: mpsc::Sender<Result<proto::ServerMessage, tonic::Status>>,
    attempts: Mutex<HashMap<(JobId, LeaseToken), mpsc::Sender<proto::JobEvent>>>,
}

impl StreamLink {
    /// A link sending on `out`.
    pub fn new(out: mpsc::Sender<Result<proto::ServerMessage, tonic::Status>>) -> StreamLink {
        StreamLink {
            out,
            attempts: Mutex::default(),
        }
    }

    /// Sends one message to the plugin.
    ///
    /// # Errors
    /// The stream is gone.
    pub async fn send(&self, message: Message) -> Result<(), String> {
        self.out
            .send(Ok(proto::ServerMessage {
                message: Some(message),
            }))
            .await
            .map_err(|_| "the plugin's stream is gone".to_owned())
    }

    /// Sends a control message if the queue has room (`false` if not): the
    /// session's loop must never wait on its own stream.
    pub fn try_send(&self, message: Message) -> bool {
        self.out
            .try_send(Ok(proto::ServerMessage {
                message: Some(message),
            }))
            .is_ok()
    }

    /// Starts an attempt: its events arrive on the receiver, which ends
    /// when the session does.
    ///
    /// # Errors
    /// The stream is gone (nothing was sent).
    pub async fn execute(
        &self,
        request: proto::ExecuteJobRequest,
    ) -> Result<mpsc::Receiver<proto::JobEvent>, String> {
        let key = attempt_key(&request.job_id, &request.lease)
            .ok_or("an attempt without a 16-byte job ID and lease")?;
        let (tx, rx) = mpsc::channel(ATTEMPT_QUEUE);
        self.lock().insert(key, tx);
        if let Err(e) = self.send(Message::Execute(request)).await {
            self.lock().remove(&key);
            return Err(e);
        }
        Ok(rx)
    }

    /// Tells the plugin to stop an attempt.
    pub async fn cancel(&self, job: JobId, lease: LeaseToken) {
        let _ = self
            .send(Message::Cancel(proto::CancelRequest {
                job_id: job.0.to_vec(),
                lease: lease.0.to_vec(),
            }))
            .await;
    }

    /// Forgets an attempt that ended.
    pub fn forget(&self, job: JobId, lease: LeaseToken) {
        self.lock().remove(&(job, lease));
    }

    /// Hands an event from the plugin to its attempt, waiting while the
    /// attempt's queue is full. Events for attempts that are not running
    /// here (ended, cancelled, never sent) are dropped, as a dialled
    /// plugin's stream of a cancelled attempt is.
    pub async fn deliver(&self, event: proto::AttemptEvent) {
        let Some(key) = attempt_key(&event.job_id, &event.lease) else {
            return;
        };
        let Some(body) = event.event else { return };
        let Some(tx) = self.lock().get(&key).cloned() else {
            return;
        };
        if tx.send(body).await.is_err() {
            self.lock().remove(&key);
        }
    }

    /// Ends every attempt's event stream: the session is over.
    pub fn close(&self) {
        self.lock().clear();
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(JobId, LeaseToken), mpsc::Sender<proto::JobEvent>>>
    {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn attempt_key(job: &[u8], lease: &[u8]) -> Option<(JobId, LeaseToken)> {
    Some((
        JobId(job.try_into().ok()?),
        LeaseToken(lease.try_into().ok()?),
    ))
}
