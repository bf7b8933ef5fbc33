//! The gRPC plugin executor: runs each attempt on the session of the
//! plugin it was authorised for, and turns the plugin's event stream into
//! Pulse's [`ExecEvent`]s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::session::{Link, Session, Sessions};
use crate::api::proto::{self, job_event::Event};
use crate::pulse::{
    AsyncExecutor, AttemptSpec, EventStream, ExecEvent, JobId, LeaseToken, Progress, cut_text,
};

/// Runs attempts on plugin sessions.
pub struct PluginExecutor {
    sessions: Arc<Sessions>,
    running: Running,
    /// How long a cancelled attempt on a stream may take to end before
    /// its events are no longer waited for (`cancel_grace_ms`).
    cancel_grace: std::time::Duration,
    /// Handlers' output_schema documents, compiled once each.
    output_schemas: Arc<crate::pulse::SchemaCache>,
}

/// Attempts in flight: where to send their cancel.
type Running = Arc<Mutex<HashMap<JobId, (LeaseToken, Arc<Session>)>>>;

impl PluginExecutor {
    /// An executor over `sessions`.
    pub fn new(sessions: Arc<Sessions>) -> PluginExecutor {
        PluginExecutor {
            sessions,
            running: Arc::default(),
            cancel_grace: std::time::Duration::from_millis(
                crate::pulse::DispatchConfig::default().grace_ms,
            ),
            output_schemas: Arc::default(),
        }
    }

    /// The same, waiting `grace` at most for a cancelled attempt on a
    /// stream to end (the dispatcher's `cancel_grace_ms`).
    #[must_use]
    pub fn with_cancel_grace(mut self, grace: std::time::Duration) -> PluginExecutor {
        self.cancel_grace = grace;
        self
    }
}

/// Longest progress message a plugin may send, bytes (plugin.proto).
pub const MAX_PROGRESS_MESSAGE_BYTES: usize = 1_024;
/// Largest progress checkpoint a plugin may send, bytes (plugin.proto).
pub const MAX_PLUGIN_CHECKPOINT_BYTES: usize = 64 * 1024;
/// Longest error message kept from a plugin, bytes; longer ones are cut.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4_096;
/// Largest result a plugin may return, bytes: 14 MiB, so that the job
/// with its result (and a payload of up to 1 MiB, a checkpoint, and the
/// errors of up to 100 attempts) still fits the Jobs API's 16 MiB
/// responses. A larger one would make the job unreadable.
pub const MAX_RESULT_BYTES: usize = 14 * 1024 * 1024;

/// Converts one wire event: `Ok(None)` for an event with no body (ignored),
/// `Err` with the broken rule for an event plugin.proto forbids
/// (spec/plugin.md, "Protocol violations").
///
/// # Errors
/// `progress_percent` (over 100), `progress_message` (over 1 KiB),
/// `progress_checkpoint` (over 64 KiB), each with the values found.
pub fn exec_event(e: proto::JobEvent) -> Result<Option<ExecEvent>, String> {
    let Some(event) = e.event else {
        return Ok(None);
    };
    Ok(Some(match event {
        Event::Heartbeat(_) => ExecEvent::Heartbeat,
        Event::Progress(p) => {
            if p.percent > 100 {
                return Err(format!(
                    "progress_percent: progress of {}% is over 100",
                    p.percent
                ));
            }
            if p.message.len() > MAX_PROGRESS_MESSAGE_BYTES {
                return Err(format!(
                    "progress_message: a progress message of {} bytes is over the {MAX_PROGRESS_MESSAGE_BYTES}-byte limit",
                    p.message.len()
                ));
            }
            if p.checkpoint.len() > MAX_PLUGIN_CHECKPOINT_BYTES {
                return Err(format!(
                    "progress_checkpoint: a checkpoint of {} bytes is over the {MAX_PLUGIN_CHECKPOINT_BYTES}-byte limit",
                    p.checkpoint.len()
                ));
            }
            ExecEvent::Progress(Progress {
                percent: u8::try_from(p.percent).unwrap_or(100),
                message: p.message,
                checkpoint: p.checkpoint,
            })
        }
        Event::Cost(c) => ExecEvent::Cost(c.units),
        Event::Log(l) => ExecEvent::Log(l.line),
        Event::Result(r) => {
            if r.output.len() > MAX_RESULT_BYTES {
                return Err(format!(
                    "result_too_large: a result of {} bytes is over the {MAX_RESULT_BYTES}-byte limit",
                    r.output.len()
                ));
            }
            ExecEvent::Succeeded(r.output)
        }
        Event::Error(e) => ExecEvent::Failed {
            error: cut_text(e.message, MAX_ERROR_MESSAGE_BYTES),
            retryable: e.retryable,
            retry_after_ms: (e.retry_after_ms != 0).then_some(e.retry_after_ms),
        },
    }))
}

/// An attempt's events as they arrive, from either kind of link.
type WireEvents = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<proto::JobEvent, tonic::Status>> + Send>,
>;

/// Why an attempt sent on a link did not run there.
enum NotRun {
    /// It never reached the process: the connection is gone, or the
    /// stream was refused before the plugin accepted it.
    Gone(String),
    /// The process drains (`UNAVAILABLE`, message `draining: …`): it
    /// takes no new attempt, and finishes the ones it runs.
    Draining(String),
    /// The plugin answered with an error instead of a stream.
    Refused(tonic::Status),
}

impl Link {
    /// Sends an attempt.
    ///
    /// # Errors
    /// Why it did not run ([`NotRun`]).
    async fn execute(&self, request: proto::ExecuteJobRequest) -> Result<WireEvents, NotRun> {
        match self {
            Link::Client(client) => {
                match client.clone().execute_job(with_traceparent(request)).await {
                    Ok(r) => Ok(Box::pin(r.into_inner())),
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        if s.message().starts_with("draining") {
                            Err(NotRun::Draining(s.message().to_owned()))
                        } else {
                            Err(NotRun::Gone(s.message().to_owned()))
                        }
                    }
                    Err(s) => Err(NotRun::Refused(s)),
                }
            }
            Link::Stream(link) => {
                let rx = link.execute(request).await.map_err(NotRun::Gone)?;
                Ok(Box::pin(ReceiverStream::new(rx).map(Ok)))
            }
        }
    }

    /// Tells the plugin to stop an attempt.
    async fn cancel(&self, job: JobId, lease: LeaseToken) {
        match self {
            Link::Client(client) => {
                let req = proto::CancelRequest {
                    job_id: job.0.to_vec(),
                    lease: lease.0.to_vec(),
                };
                if let Err(e) = client.clone().cancel(req).await {
                    tracing::warn!(%job, error = %e.message(), "pushing a cancel to the plugin failed");
                }
            }
            // The attempt's events still arrive until the plugin ends it
            // (its final event, once its handler has stopped): until then
            // it keeps its slot. The executor forgets it after the cancel
            // grace if the plugin sends nothing.
            Link::Stream(link) => link.cancel(job, lease).await,
        }
    }

    /// Forgets an attempt that ended.
    fn forget(&self, job: JobId, lease: LeaseToken) {
        if let Link::Stream(link) = self {
            link.forget(job, lease);
        }
    }
}

/// The request with its `traceparent` as metadata too, where generic
/// gRPC tracing finds it.
fn with_traceparent(request: proto::ExecuteJobRequest) -> tonic::Request<proto::ExecuteJobRequest> {
    let value = tonic::metadata::MetadataValue::try_from(request.traceparent.as_str()).ok();
    let mut r = tonic::Request::new(request);
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        r.metadata_mut().insert("traceparent", v);
    }
    r
}

#[tonic::async_trait]
impl AsyncExecutor for PluginExecutor {
    async fn dispatch(&self, attempt: AttemptSpec) -> Result<EventStream, String> {
        // On the timeline: sent (the call or message made), first event,
        // final event received.
        let mut timed = crate::timeline::span("attempt");
        let auth = attempt
            .authorization
            .clone()
            .ok_or("the attempt was not resolved to a plugin")?;
        // The least loaded instance with a free slot that proved the
        // current key and serves the handler.
        let session = self
            .sessions
            .take(
                &auth.plugin,
                &auth.plugin_key,
                &attempt.handler,
                &auth.handler_name,
            )
            .ok_or_else(|| {
                format!(
                    "plugin {} has no live session with a free slot",
                    auth.plugin
                )
            })?;
        // The attempt's span: a child of the call that enqueued the job,
        // and the parent of the plugin's spans.
        let mut span = crate::telemetry::TraceSpan::start(
            "attempt".into(),
            opentelemetry::trace::SpanKind::Client,
            attempt.trace_parent.as_deref(),
            vec![
                opentelemetry::KeyValue::new("pulse.job", attempt.job.to_string()),
                opentelemetry::KeyValue::new("pulse.attempt", i64::from(attempt.number)),
                opentelemetry::KeyValue::new("pulse.handler", attempt.handler.to_string()),
                opentelemetry::KeyValue::new("pulse.handler_name", auth.handler_name.clone()),
                opentelemetry::KeyValue::new("pulse.plugin", auth.plugin.to_string()),
            ],
        );
        let traceparent = span
            .as_ref()
            .map(crate::telemetry::TraceSpan::traceparent)
            .unwrap_or_default();
        let request = proto::ExecuteJobRequest {
            traceparent,
            job_id: attempt.job.0.to_vec(),
            lease: attempt.lease.0.to_vec(),
            attempt: attempt.number,
            handler: attempt.handler.to_string(),
            handler_name: auth.handler_name.clone(),
            handler_attestation_id: auth.handler_attestation_id.as_bytes().to_vec(),
            handler_attestation: auth.handler_attestation.to_vec(),
            handler_index: auth.handler_index,
            plugin_index: auth.plugin_index,
            payload: attempt.payload,
            deadline_ms: attempt.deadline,
            checkpoint: attempt.checkpoint,
            heartbeat_interval_ms: attempt.heartbeat_interval_ms,
        };
        let (job, lease) = (attempt.job, attempt.lease);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job, (lease, Arc::clone(&session)));
        let mut forgotten = false;
        let mut forget = {
            let running = Arc::clone(&self.running);
            let session = Arc::clone(&session);
            move || {
                // Once: the slot is given back when the final event is
                // known, before it is forwarded, and not again at the end.
                if std::mem::replace(&mut forgotten, true) {
                    return;
                }
                let mut r = running.lock().unwrap_or_else(|p| p.into_inner());
                if r.get(&job).is_some_and(|(l, _)| *l == lease) {
                    r.remove(&job);
                }
                drop(r);
                session.link.forget(job, lease);
                session.release_slot();
            }
        };
        let mut stream = match session.link.execute(request).await {
            Ok(s) => s,
            // No attempt started. The session's owner re-opens it with a
            // new proof.
            Err(NotRun::Gone(why)) => {
                forget();
                if let Some(s) = span.as_mut() {
                    s.fail(format!("unreachable: {why}"));
                }
                session.lost.set();
                return Err(format!(
                    "plugin {} could not be reached: {why}",
                    auth.plugin
                ));
            }
            // No attempt started; the instance finishes the attempts it
            // runs and gets no new one.
            Err(NotRun::Draining(why)) => {
                forget();
                session.drain();
                return Err(format!("plugin {} drains: {why}", auth.plugin));
            }
            // The plugin answered, with an error instead of a stream: the
            // attempt reached it and ended without a result.
            Err(NotRun::Refused(s)) => {
                forget();
                if let Some(span) = span.as_mut() {
                    span.fail(format!("ExecuteJob failed: {}", s.message()));
                }
                tracing::warn!(%job, code = ?s.code(), error = %s.message(), "ExecuteJob failed");
                return Ok(Box::pin(tokio_stream::once(ExecEvent::Crashed)));
            }
        };
        crate::timeline::phase(&mut timed, "sent");
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut ended = session.ended.clone();
        let output = auth
            .output_schema
            .clone()
            .map(|text| (text, Arc::clone(&self.output_schemas)));
        tokio::spawn(async move {
            let mut done = false;
            loop {
                tokio::select! {
                    // Events already received come before the session's
                    // end: a result that arrived is never lost to it.
                    biased;
                    msg = stream.next() => match msg {
                        Some(Ok(e)) => {
                            if timed.as_ref().is_some_and(|t| t.phases() == 1) {
                                crate::timeline::phase(&mut timed, "first_event");
                            }
                            let event = match exec_event(e) {
                                // A result must match the handler's signed
                                // output_schema: one that does not fails the
                                // attempt for good (the plugin would return
                                // it again).
                                Ok(Some(ExecEvent::Succeeded(result))) => match &output {
                                    Some((text, cache)) => match cache.check(text, &result, crate::pulse::Checked::Result) {
                                        Ok(()) => ExecEvent::Succeeded(result),
                                        Err(e) => ExecEvent::Failed {
                                            error: e.to_string(),
                                            retryable: false,
                                            retry_after_ms: None,
                                        },
                                    },
                                    None => ExecEvent::Succeeded(result),
                                },
                                Ok(Some(event)) => event,
                                Ok(None) => continue,
                                Err(rule) => {
                                    // The plugin broke the protocol: the
                                    // attempt fails for good and the plugin
                                    // is told to stop it.
                                    tracing::warn!(%job, %rule, "plugin protocol violation");
                                    let _ = tx.send(ExecEvent::Failed {
                                        error: format!("protocol_violation: {rule}"),
                                        retryable: false,
                                        retry_after_ms: None,
                                    }).await;
                                    session.link.cancel(job, lease).await;
                                    break;
                                }
                            };
                            if let (ExecEvent::Failed { error, .. }, Some(s)) = (&event, span.as_mut()) {
                                s.fail(error.clone());
                            }
                            let last = matches!(event, ExecEvent::Succeeded(_) | ExecEvent::Failed { .. });
                            if last {
                                crate::timeline::phase(&mut timed, "final_event");
                                // The slot is free once the plugin is done,
                                // before the dispatcher hears of it, so its
                                // next attempt finds the slot free.
                                forget();
                            }
                            done |= last;
                            if tx.send(event).await.is_err() {
                                break;
                            }
                            if last {
                                // Read the stream to its end: dropping it
                                // early resets it, and a flood of resets makes
                                // the plugin's HTTP/2 stack close the whole
                                // connection (GOAWAY too_many_internal_resets).
                                if matches!(session.link, Link::Client(_)) {
                                    let drain = async { while stream.next().await.is_some() {} };
                                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
                                }
                                break;
                            }
                        }
                        // The stream broke or ended without a result: the
                        // adapter records a crash.
                        Some(Err(_)) | None => break,
                    },
                    // The session ended (plugin exited or stopped
                    // answering): the attempt is lost.
                    _ = async { let _ = ended.wait_for(|e| *e).await; } => break,
                }
            }
            forget();
            if let (false, Some(s)) = (done, span.as_mut()) {
                s.fail("the attempt ended without a result".into());
            }
            // The attempt's span ends here (a result, an error, or the
            // stream or session ended).
            drop(span);
            crate::timeline::end(timed, &[("ok", u64::from(done))]);
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn cancel(&self, job: JobId, lease: LeaseToken) {
        let session = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&job)
            .filter(|(l, _)| *l == lease)
            .map(|(_, s)| Arc::clone(s));
        if let Some(s) = session {
            if let Link::Stream(link) = &s.link {
                // A plugin that sends nothing more for it (the protocol
                // allows that), or does not read the cancel, has it ended
                // here: its event stream ends, and the attempt's task gives
                // its slot back. Armed before the cancel is sent, which may
                // wait on a full stream.
                let (link, grace) = (Arc::clone(link), self.cancel_grace);
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    link.forget(job, lease);
                });
            }
            s.link.cancel(job, lease).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Did;
    use crate::attest::AttestationId;
    use crate::plugin::link::StreamLink;
    use crate::plugin::proof::Announcement;
    use crate::plugin::session::Connection;
    use crate::pulse::Authorization;

    fn did(seed: u8) -> Did {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        Did::from_verifying_key(&key.verifying_key()).unwrap()
    }

    fn attempt(job: u8, plugin: &Did) -> AttemptSpec {
        AttemptSpec {
            job: JobId([job; 16]),
            lease: LeaseToken([job; 16]),
            number: 1,
            handler: did(3),
            payload: Vec::new(),
            deadline: u64::MAX,
            checkpoint: Vec::new(),
            heartbeat_interval_ms: 60_000,
            authorization: Some(Arc::new(Authorization {
                handler_name: "h".into(),
                handler_index: 1,
                handler_attestation_id: AttestationId([0; 32]),
                handler_attestation: Arc::new(Vec::new()),
                plugin: plugin.clone(),
                plugin_index: 0,
                plugin_key: plugin.clone(),
                max_concurrency: None,
                owner: did(3),
                output_schema: None,
            })),
            trace_parent: None,
        }
    }

    /// spec/plugin.md, "Plugin service": on a stream, a cancelled attempt
    /// keeps its slot and its events until the plugin's final event, and
    /// for `cancel_grace_ms` at most when the plugin sends nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_attempt_on_a_stream_ends_with_its_final_event_or_the_grace() {
        let plugin = did(1);
        let (out, mut sent) = tokio::sync::mpsc::channel(64);
        // What the server sends the plugin is read and dropped.
        tokio::spawn(async move { while sent.recv().await.is_some() {} });
        let link = Arc::new(StreamLink::new(out));
        let (_ended_tx, ended) = tokio::sync::watch::channel(false);
        let session = Arc::new(Session::new(
            Announcement {
                plugin: plugin.clone(),
                key: plugin.clone(),
                handlers: Vec::new(),
                serves_any: true,
            },
            Link::Stream(Arc::clone(&link)),
            Connection::ConnectedIn,
            "test".into(),
            0,
            ended,
        ));
        let sessions = Arc::new(Sessions::default());
        sessions.open(Arc::clone(&session));
        let grace = Duration::from_millis(300);
        let executor = PluginExecutor::new(sessions).with_cancel_grace(grace);

        // The plugin answers after the cancel: its final event arrives.
        let mut answered = executor.dispatch(attempt(1, &plugin)).await.unwrap();
        executor.cancel(JobId([1; 16]), LeaseToken([1; 16])).await;
        link.deliver(proto::AttemptEvent {
            job_id: vec![1; 16],
            lease: vec![1; 16],
            event: Some(proto::JobEvent {
                event: Some(Event::Error(proto::ErrorEvent {
                    message: "cancelled: the handler stopped".into(),
                    retryable: true,
                    retry_after_ms: 0,
                })),
            }),
        })
        .await;
        assert!(matches!(
            answered.next().await,
            Some(ExecEvent::Failed { ref error, .. }) if error == "cancelled: the handler stopped"
        ));
        assert_eq!(answered.next().await, None);

        // The plugin sends nothing: the attempt holds its slot until the
        // grace has passed, then its events end and the slot is free.
        let mut silent = executor.dispatch(attempt(2, &plugin)).await.unwrap();
        assert_eq!(session.running(), 1);
        executor.cancel(JobId([2; 16]), LeaseToken([2; 16])).await;
        assert!(
            tokio::time::timeout(grace / 3, silent.next())
                .await
                .is_err(),
            "the attempt ended before its grace"
        );
        assert_eq!(session.running(), 1, "its slot is kept meanwhile");
        let end = tokio::time::timeout(Duration::from_secs(30), silent.next()).await;
        assert_eq!(end, Ok(None), "the grace ends it");
        // The slot is given back as the attempt's task ends.
        for _ in 0..100 {
            if session.running() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(session.running(), 0);
    }
}
