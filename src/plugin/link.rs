//! Attempts multiplexed over streams: the one `PluginGateway.Join`
//! stream of a plugin that connected in, or the `Plugin.Attempts` streams
//! Pulse opens to a spawned or dialled plugin that asked for them.
//! Attempts and cancels go out as server messages; events come back
//! naming their job and lease, and are handed to the attempt they belong
//! to (spec/plugin.md, "Connecting in", "Attempt streams").

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::api::proto::{self, server_message::Message};
use crate::pulse::{JobId, LeaseToken};

/// Events waiting per attempt before the stream's reader waits (and the
/// plugin's stream with it): back-pressure, not memory growth.
const ATTEMPT_QUEUE: usize = 64;

/// One outgoing stream of server messages.
type Outgoing = mpsc::Sender<Result<proto::ServerMessage, tonic::Status>>;

/// Where one running attempt's events go, and the stream it was sent on
/// (its cancel goes there too).
type Attempts = HashMap<(JobId, LeaseToken), (mpsc::Sender<proto::JobEvent>, usize)>;

/// The server's side of one session's streams.
pub struct StreamLink {
    outs: Vec<Outgoing>,
    next: AtomicUsize,
    attempts: Mutex<Attempts>,
}

impl StreamLink {
    /// A link sending on one stream (a connected-in session).
    pub fn new(out: Outgoing) -> StreamLink {
        StreamLink::over(vec![out])
    }

    /// A link sending attempts round robin over `outs`, and control
    /// messages on the first.
    ///
    /// # Panics
    /// `outs` is empty.
    pub fn over(outs: Vec<Outgoing>) -> StreamLink {
        assert!(!outs.is_empty(), "a stream link needs a stream");
        StreamLink {
            outs,
            next: AtomicUsize::new(0),
            attempts: Mutex::default(),
        }
    }

    /// Sends one message to the plugin on the first stream.
    ///
    /// # Errors
    /// The stream is gone.
    pub async fn send(&self, message: Message) -> Result<(), String> {
        self.send_on(0, message).await
    }

    async fn send_on(&self, stream: usize, message: Message) -> Result<(), String> {
        self.outs[stream]
            .send(Ok(proto::ServerMessage {
                message: Some(message),
            }))
            .await
            .map_err(|_| "the plugin's stream is gone".to_owned())
    }

    /// Sends a control message on the first stream if its queue has room
    /// (`false` if not): the session's loop must never wait on its own
    /// stream.
    pub fn try_send(&self, message: Message) -> bool {
        self.outs[0]
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
        let stream = self.next.fetch_add(1, Ordering::Relaxed) % self.outs.len();
        self.lock().insert(key, (tx, stream));
        if let Err(e) = self.send_on(stream, Message::Execute(request)).await {
            self.lock().remove(&key);
            return Err(e);
        }
        Ok(rx)
    }

    /// Tells the plugin to stop an attempt.
    pub async fn cancel(&self, job: JobId, lease: LeaseToken) {
        let stream = self.lock().get(&(job, lease)).map_or(0, |(_, s)| *s);
        let _ = self
            .send_on(
                stream,
                Message::Cancel(proto::CancelRequest {
                    job_id: job.0.to_vec(),
                    lease: lease.0.to_vec(),
                }),
            )
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
        let Some(tx) = self.lock().get(&key).map(|(tx, _)| tx.clone()) else {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Attempts> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn attempt_key(job: &[u8], lease: &[u8]) -> Option<(JobId, LeaseToken)> {
    Some((
        JobId(job.try_into().ok()?),
        LeaseToken(lease.try_into().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(job: u8) -> proto::ExecuteJobRequest {
        proto::ExecuteJobRequest {
            job_id: vec![job; 16],
            lease: vec![job; 16],
            ..Default::default()
        }
    }

    fn job_of(m: Option<Result<proto::ServerMessage, tonic::Status>>) -> (&'static str, u8) {
        match m.and_then(Result::ok).and_then(|m| m.message) {
            Some(Message::Execute(r)) => ("execute", r.job_id[0]),
            Some(Message::Cancel(c)) => ("cancel", c.job_id[0]),
            other => panic!("unexpected message {other:?}"),
        }
    }

    #[tokio::test]
    async fn attempts_go_round_robin_and_their_cancel_follows_them() {
        let (a_tx, mut a) = mpsc::channel(8);
        let (b_tx, mut b) = mpsc::channel(8);
        let link = StreamLink::over(vec![a_tx, b_tx]);
        let mut first = link.execute(request(1)).await.unwrap();
        let _second = link.execute(request(2)).await.unwrap();
        let _third = link.execute(request(3)).await.unwrap();
        assert_eq!(job_of(a.recv().await), ("execute", 1));
        assert_eq!(job_of(b.recv().await), ("execute", 2));
        assert_eq!(job_of(a.recv().await), ("execute", 3));
        // The cancel of the attempt sent on the second stream goes there.
        link.cancel(JobId([2; 16]), LeaseToken([2; 16])).await;
        assert_eq!(job_of(b.recv().await), ("cancel", 2));
        assert!(a.try_recv().is_err());
        // Events reach their attempt whichever stream they came back on.
        link.deliver(proto::AttemptEvent {
            job_id: vec![1; 16],
            lease: vec![1; 16],
            event: Some(proto::JobEvent::default()),
        })
        .await;
        assert!(first.recv().await.is_some());
        // Events of an attempt that is not running, or with a malformed
        // ID, are dropped; the session's end ends every attempt's events.
        link.deliver(proto::AttemptEvent {
            job_id: vec![9; 16],
            lease: vec![9; 16],
            event: Some(proto::JobEvent::default()),
        })
        .await;
        link.deliver(proto::AttemptEvent {
            job_id: vec![1; 3],
            lease: vec![1; 16],
            event: Some(proto::JobEvent::default()),
        })
        .await;
        link.close();
        assert!(first.recv().await.is_none());
    }
}
