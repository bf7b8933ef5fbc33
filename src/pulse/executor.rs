//! The executor interface: how Pulse hands an attempt to whatever runs it
//! (an in-process fake in tests, a plugin over gRPC later) and hears back.

use super::job::{JobId, LeaseToken, Progress};
use crate::Did;

/// One attempt, as handed to an executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptSpec {
    /// The job.
    pub job: JobId,
    /// The attempt's lease: every event must carry it.
    pub lease: LeaseToken,
    /// 1 for the first attempt.
    pub number: u32,
    /// The handler.
    pub handler: Did,
    /// The job's input.
    pub payload: Vec<u8>,
    /// Unix ms by which the attempt must finish.
    pub deadline: u64,
    /// Progress checkpoint left by the previous attempt.
    pub checkpoint: Vec<u8>,
    /// The executor should report (a heartbeat at least) this often, ms.
    pub heartbeat_interval_ms: u64,
    /// What resolution authorised the attempt under, if it was resolved.
    pub authorization: Option<std::sync::Arc<super::route::Authorization>>,
    /// The job's trace parent (W3C `traceparent`), if it has one.
    pub trace_parent: Option<String>,
}

/// What an executor reports about a running attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Still alive.
    Heartbeat,
    /// Progress (also a heartbeat).
    Progress(Progress),
    /// Cost spent since the last report.
    Cost(u64),
    /// A log line, for people.
    Log(String),
    /// Finished with a result.
    Succeeded(Vec<u8>),
    /// Finished with an error.
    Failed {
        /// For people.
        error: String,
        /// Whether trying again may help.
        retryable: bool,
        /// The executor's own retry delay, if it has one.
        retry_after_ms: Option<u64>,
    },
    /// The executor lost the attempt (process died, connection dropped).
    Crashed,
    /// The attempt never reached anything that could run it (no live
    /// plugin session, connection refused): the job is held, with no
    /// attempt used. Only ever the first and only event of an attempt.
    Unreachable(String),
}

/// An event about one attempt, as it arrives at Pulse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The job.
    pub job: JobId,
    /// The attempt's lease; reports with a stale lease are refused.
    pub lease: LeaseToken,
    /// What happened.
    pub event: ExecEvent,
}

/// Reports waiting for the dispatcher at most: an executor that reports
/// faster than Pulse applies its reports waits ([`ReportSender::send`]),
/// and a plugin's stream with it, instead of growing memory.
pub const REPORT_QUEUE: usize = 1024;

/// Where an executor sends its reports: a bounded queue to the
/// dispatcher, shared by every attempt.
#[derive(Debug, Clone)]
pub struct ReportSender {
    tx: tokio::sync::mpsc::Sender<Report>,
}

/// The dispatcher's end of the report queue.
pub(crate) type ReportReceiver = tokio::sync::mpsc::Receiver<Report>;

/// A report queue of `capacity` reports.
pub(crate) fn report_queue(capacity: usize) -> (ReportSender, ReportReceiver) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    (ReportSender { tx }, rx)
}

impl ReportSender {
    /// Sends a report, waiting while the queue is full: the back-pressure
    /// that keeps a flooding executor's reports bounded. `false` once the
    /// dispatcher has stopped.
    pub async fn send(&self, report: Report) -> bool {
        self.tx.send(report).await.is_ok()
    }

    /// Sends a report if the queue has room, for executors that run on
    /// the dispatcher's own thread (which must never wait for itself).
    ///
    /// # Errors
    /// The report back if the queue is full or the dispatcher has stopped.
    pub fn try_send(&self, report: Report) -> Result<(), Report> {
        self.tx.try_send(report).map_err(|e| e.into_inner())
    }
}

/// Runs attempts. `start` must not block: the executor reports through
/// the sender it was given, from any thread, in any order across jobs.
pub trait Executor: Send {
    /// Starts an attempt; events go to `reports`.
    fn start(&mut self, attempt: AttemptSpec, reports: ReportSender);
    /// Stops an attempt now (cancellation, timeout, budget). Reports that
    /// still arrive for it are refused as stale.
    fn cancel(&mut self, job: JobId, lease: LeaseToken);
}

/// A stream of events about one attempt.
pub type EventStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = ExecEvent> + Send>>;

/// The async form of an executor, for executors that talk over the network
/// (the gRPC plugin proxy): dispatch returns the attempt's event stream;
/// cancel is pushed at once. Wrap one in [`AsyncExecutorAdapter`] to drive
/// it from the dispatcher.
#[tonic::async_trait]
pub trait AsyncExecutor: Send + Sync + 'static {
    /// Starts an attempt and returns its events. An error means the attempt
    /// never reached anything that could run it; it is reported as
    /// [`ExecEvent::Unreachable`] (the job is held and uses no attempt). An
    /// attempt that was delivered and then lost is a stream that ends
    /// without a result: a crash.
    async fn dispatch(&self, attempt: AttemptSpec) -> Result<EventStream, String>;
    /// Stops an attempt now.
    async fn cancel(&self, job: JobId, lease: LeaseToken);
}

/// Runs an [`AsyncExecutor`] on a tokio runtime behind the dispatcher's
/// [`Executor`] interface: each attempt's stream is forwarded as reports.
/// A stream that ends without a result is reported as a crash; a dispatch
/// error as [`ExecEvent::Unreachable`].
pub struct AsyncExecutorAdapter<A: AsyncExecutor> {
    inner: std::sync::Arc<A>,
    runtime: tokio::runtime::Handle,
    waker: Option<std::thread::Thread>,
}

impl<A: AsyncExecutor> AsyncExecutorAdapter<A> {
    /// An adapter spawning on `runtime`.
    pub fn new(inner: A, runtime: tokio::runtime::Handle) -> AsyncExecutorAdapter<A> {
        AsyncExecutorAdapter {
            inner: std::sync::Arc::new(inner),
            runtime,
            waker: None,
        }
    }

    /// Unparks `thread` after every report, so a dispatcher loop parked
    /// between steps applies it at once.
    pub fn with_waker(mut self, thread: std::thread::Thread) -> AsyncExecutorAdapter<A> {
        self.waker = Some(thread);
        self
    }
}

impl<A: AsyncExecutor> Executor for AsyncExecutorAdapter<A> {
    fn start(&mut self, attempt: AttemptSpec, reports: ReportSender) {
        let inner = std::sync::Arc::clone(&self.inner);
        let waker = self.waker.clone();
        self.runtime.spawn(async move {
            use tokio_stream::StreamExt;
            let (job, lease) = (attempt.job, attempt.lease);
            // While the queue is full this waits, and the stream is not
            // read meanwhile: the executor's sender feels the back-pressure.
            let send = |event| {
                let reports = reports.clone();
                let waker = waker.clone();
                async move {
                    let sent = reports.send(Report { job, lease, event }).await;
                    if let Some(w) = &waker {
                        w.unpark();
                    }
                    sent
                }
            };
            let mut events = match inner.dispatch(attempt).await {
                Ok(s) => s,
                Err(why) => {
                    send(ExecEvent::Unreachable(why)).await;
                    return;
                }
            };
            while let Some(event) = events.next().await {
                let last = matches!(
                    event,
                    ExecEvent::Succeeded(_)
                        | ExecEvent::Failed { .. }
                        | ExecEvent::Crashed
                        | ExecEvent::Unreachable(_)
                );
                if !send(event).await || last {
                    return;
                }
            }
            send(ExecEvent::Crashed).await;
        });
    }

    fn cancel(&mut self, job: JobId, lease: LeaseToken) {
        let inner = std::sync::Arc::clone(&self.inner);
        self.runtime
            .spawn(async move { inner.cancel(job, lease).await });
    }
}
