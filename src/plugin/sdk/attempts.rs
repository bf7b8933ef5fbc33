//! What a plugin does whichever way it is connected: answer the nonce
//! with its proof, run attempts (heartbeats, events, cancel with a
//! grace), and drain. The listening service and the connect-in loop are
//! two transports over this.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::{JobContext, JobHandler, PluginServer};
use crate::Did;
use crate::api::proto::{self, job_event::Event};
use crate::plugin::handshake::PROTOCOL_VERSION;
use crate::plugin::proof::{Announcement, NONCE_BYTES, sign_proof};

/// An attempt's events, as sent to Pulse.
pub(super) type EventTx = mpsc::Sender<Result<proto::JobEvent, Status>>;

/// (job, lease) of an attempt.
pub(super) type AttemptKey = ([u8; 16], Vec<u8>);

/// Most early cancels remembered.
const MAX_EARLY_CANCELS: usize = 10_000;

/// The attempts of one plugin process, over every session it has.
pub(super) struct Attempts {
    pub(super) plugin: Arc<PluginServer>,
    running: Mutex<HashMap<AttemptKey, watch::Sender<bool>>>,
    /// Cancels that arrived before their attempt (Pulse may send both
    /// at once): the attempt ends as soon as it arrives.
    early: Mutex<HashSet<AttemptKey>>,
    /// Set once the process drains: no new attempt starts.
    draining: AtomicBool,
    /// Told each time an attempt ends, so a drain can wait for the last.
    ended: tokio::sync::Notify,
}

impl Attempts {
    pub(super) fn new(plugin: Arc<PluginServer>) -> Attempts {
        Attempts {
            plugin,
            running: Mutex::default(),
            early: Mutex::default(),
            draining: AtomicBool::new(false),
            ended: tokio::sync::Notify::new(),
        }
    }

    /// The proof for `nonce`, with the announcement.
    pub(super) fn answer(
        &self,
        request: &proto::InitializeRequest,
    ) -> Result<proto::InitializeResponse, Status> {
        // 0 is an older Pulse that did not say; anything else must match.
        if request.protocol != 0 && request.protocol != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "unsupported_protocol: this plugin speaks protocol {PROTOCOL_VERSION}, Pulse asked for {}",
                request.protocol
            )));
        }
        let nonce = &request.nonce;
        if nonce.len() != NONCE_BYTES {
            return Err(Status::invalid_argument(format!(
                "bad_nonce: the nonce is {NONCE_BYTES} bytes, not {}",
                nonce.len()
            )));
        }
        let p = &self.plugin;
        let key = Did::from_verifying_key(&p.key.verifying_key())
            .map_err(|e| Status::internal(e.to_string()))?;
        let a = Announcement {
            plugin: p.plugin.clone(),
            key,
            handlers: p.handlers.iter().map(|(a, _)| a.clone()).collect(),
            serves_any: p.any.is_some(),
        };
        let signature = sign_proof(nonce, &a, &p.key);
        Ok(proto::InitializeResponse {
            plugin: a.plugin.to_string(),
            key: a.key.to_string(),
            handlers: a
                .handlers
                .iter()
                .map(|h| proto::AnnouncedHandler {
                    id: h.id.as_ref().map(Did::to_string).unwrap_or_default(),
                    name: h.name.clone(),
                })
                .collect(),
            serves_any: a.serves_any,
            signature: signature.to_vec(),
            slots: p.slots,
            attempt_streams: p.attempt_streams,
        })
    }

    fn find(&self, handler: &str, name: &str) -> Option<Arc<dyn JobHandler>> {
        let handlers = &self.plugin.handlers;
        let by_id = handlers
            .iter()
            .find(|(a, _)| a.id.as_ref().is_some_and(|d| d.to_string() == handler));
        let by_name = || {
            handlers
                .iter()
                .find(|(a, _)| !a.name.is_empty() && a.name == name)
        };
        by_id
            .or_else(by_name)
            .map(|(_, h)| Arc::clone(h))
            .or_else(|| self.plugin.any.clone())
    }

    /// Starts an attempt; its events go to `tx`, which is dropped when the
    /// attempt is over (after its result, or after a cancel).
    ///
    /// # Errors
    /// `UNAVAILABLE` while draining (Pulse holds the job, using no
    /// attempt); `INVALID_ARGUMENT` for a job ID that is not 16 bytes.
    pub(super) async fn start(
        self: &Arc<Self>,
        r: proto::ExecuteJobRequest,
        tx: EventTx,
    ) -> Result<(), Status> {
        if self.draining() {
            return Err(Status::unavailable(
                "draining: this plugin instance takes no new attempt",
            ));
        }
        self.run(r, tx).await
    }

    /// [`Attempts::start`], even while draining (the drain waits for it).
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for a job ID that is not 16 bytes.
    pub(super) async fn run(
        self: &Arc<Self>,
        r: proto::ExecuteJobRequest,
        tx: EventTx,
    ) -> Result<(), Status> {
        let job: [u8; 16] = r
            .job_id
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument("invalid_job_id: a job ID is 16 bytes"))?;
        let Some(handler) = self.find(&r.handler, &r.handler_name) else {
            let _ = tx
                .send(event(Event::Error(proto::ErrorEvent {
                    message: format!("this plugin does not serve handler {}", r.handler_name),
                    retryable: false,
                    retry_after_ms: 0,
                })))
                .await;
            return Ok(());
        };
        let key = (job, r.lease.clone());
        if self.lock_early().remove(&key) {
            // Cancelled before it started: never run it, and say so.
            let _ = tx
                .send(event(Event::Error(proto::ErrorEvent {
                    message: "cancelled before it started".into(),
                    retryable: true,
                    retry_after_ms: 0,
                })))
                .await;
            return Ok(());
        }
        let (cancel_tx, cancel) = watch::channel(false);
        self.lock_running().insert(key.clone(), cancel_tx);
        let grace = self.plugin.cancel_grace;
        let heartbeats = Arc::new(AtomicBool::new(true));
        let ctx = JobContext {
            job,
            attempt: r.attempt,
            handler: r.handler,
            handler_name: r.handler_name,
            handler_attestation: r.handler_attestation,
            handler_attestation_id: r.handler_attestation_id,
            deadline_ms: r.deadline_ms,
            checkpoint: r.checkpoint,
            trace_parent: (!r.traceparent.is_empty()).then_some(r.traceparent),
            events: tx.clone(),
            cancel: cancel.clone(),
            heartbeats: Arc::clone(&heartbeats),
        };
        let every = Duration::from_millis(match r.heartbeat_interval_ms {
            0 => 10_000,
            n => n.max(20),
        });
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut work = handler.execute(ctx, r.payload);
            // The first heartbeat is one interval after the start. (Not
            // `interval(every)` and a first `tick().await`: that tick waits
            // for the timer wheel's next millisecond, a millisecond added
            // to every attempt before its handler runs.)
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let mut cancel = cancel;
            let mut stopped: Option<String> = None;
            loop {
                tokio::select! {
                    out = &mut work => {
                        let _ = tx.send(event(final_event(out))).await;
                        break;
                    }
                    _ = tick.tick() => {
                        if heartbeats.load(Ordering::Relaxed)
                            && tx.send(event(Event::Heartbeat(proto::Heartbeat {}))).await.is_err()
                        {
                            break;
                        }
                    }
                    // Cancelled: the handler may see ctx.cancelled() and wind
                    // down for up to the cancel grace, then its future is
                    // dropped (it stops at its next await point). What it
                    // returned is not sent: a handler that returns early on
                    // a cancel has not done its work.
                    _ = async { let _ = cancel.wait_for(|c| *c).await; } => {
                        stopped = Some(match tokio::time::timeout(grace, &mut work).await {
                            Ok(_) => "cancelled: the handler stopped".to_owned(),
                            Err(_) => format!(
                                "cancelled: the handler did not stop within the cancel grace ({} ms)",
                                grace.as_millis()
                            ),
                        });
                        break;
                    }
                }
            }
            // The handler's future (and what it holds) is dropped before
            // the final event tells Pulse it has stopped: until that event
            // the attempt keeps its slot (spec/plugin.md, "Plugin service").
            drop(work);
            if let Some(message) = stopped {
                let _ = tx
                    .send(event(Event::Error(proto::ErrorEvent {
                        message,
                        retryable: true,
                        retry_after_ms: 0,
                    })))
                    .await;
            }
            me.lock_running().remove(&key);
            me.ended.notify_waiters();
        });
        Ok(())
    }

    /// Runs an attempt that came as a message on a stream (connected in,
    /// or an attempt stream), even while draining, and sends its events on
    /// `out` as `AttemptEvent`s. Its (job, lease), to stop it if the
    /// stream ends first.
    pub(super) async fn run_streamed(
        self: &Arc<Self>,
        req: proto::ExecuteJobRequest,
        out: &mpsc::Sender<proto::PluginMessage>,
    ) -> Option<AttemptKey> {
        let (job, lease) = (req.job_id.clone(), req.lease.clone());
        let key = <[u8; 16]>::try_from(job.as_slice())
            .ok()
            .map(|id| (id, lease.clone()));
        let (tx, mut events) = mpsc::channel(64);
        let _ = self.run(req, tx).await;
        let out = out.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = events.recv().await {
                let m = proto::plugin_message::Message::Event(proto::AttemptEvent {
                    job_id: job.clone(),
                    lease: lease.clone(),
                    event: Some(event),
                });
                if out
                    .send(proto::PluginMessage { message: Some(m) })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        key
    }

    /// Cancels an attempt; whether it was running here.
    pub(super) fn cancel(&self, job: [u8; 16], lease: Vec<u8>) -> bool {
        let key = (job, lease);
        let found = match self.lock_running().get(&key) {
            Some(c) => c.send(true).is_ok(),
            None => false,
        };
        if !found {
            let mut early = self.lock_early();
            if early.len() >= MAX_EARLY_CANCELS {
                early.clear();
            }
            early.insert(key);
        }
        found
    }

    /// Whether this attempt runs here now.
    pub(super) fn is_running(&self, job: [u8; 16], lease: &[u8]) -> bool {
        self.lock_running().contains_key(&(job, lease.to_vec()))
    }

    /// Stops an attempt if it runs here (as a cancel does), remembering
    /// nothing otherwise.
    pub(super) fn stop(&self, job: [u8; 16], lease: &[u8]) {
        if let Some(c) = self.lock_running().get(&(job, lease.to_vec())) {
            let _ = c.send(true);
        }
    }

    /// Attempts running now.
    pub(super) fn running(&self) -> usize {
        self.lock_running().len()
    }

    /// Whether the process drains.
    pub(super) fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Takes no new attempt from now on; resolves once the running ones
    /// have ended.
    pub(super) async fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        loop {
            let ended = self.ended.notified();
            if self.running() == 0 {
                return;
            }
            ended.await;
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<AttemptKey, watch::Sender<bool>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_early(&self) -> std::sync::MutexGuard<'_, HashSet<AttemptKey>> {
        self.early.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn event(e: Event) -> Result<proto::JobEvent, Status> {
    Ok(proto::JobEvent { event: Some(e) })
}

/// The event that ends an attempt whose handler returned `out`.
fn final_event(out: Result<Vec<u8>, super::JobError>) -> Event {
    match out {
        Ok(output) => Event::Result(proto::ResultEvent { output }),
        Err(e) => Event::Error(proto::ErrorEvent {
            message: e.message,
            retryable: e.retryable,
            retry_after_ms: e.retry_after.map_or(0, |d| d.as_millis() as u64),
        }),
    }
}
