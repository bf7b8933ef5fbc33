//! Runs a [`Dispatcher`] on its own thread against the wall clock, as the
//! server does: it steps whenever a report, an enqueue or a command
//! arrives, and at least every `idle` otherwise (for run_at, retries,
//! deadlines and held jobs).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use super::budget::BudgetUse;
use super::dispatcher::{Dispatcher, StepReport};
use super::executor::Executor;
use super::job::JobId;
use super::store::JobError;
use crate::Did;

enum Command {
    Cancel(
        Vec<JobId>,
        SyncSender<Result<Vec<Result<(), JobError>>, JobError>>,
    ),
    BudgetUse(Box<Did>, SyncSender<Result<BudgetUse, JobError>>),
    Drain,
    LiveAttempts(SyncSender<Result<usize, JobError>>),
    Stop,
}

/// Talks to a running dispatcher from any thread.
#[derive(Clone)]
pub struct PulseHandle {
    tx: Sender<Command>,
    thread: Thread,
    counters: Arc<PulseCounters>,
}

/// What a running dispatcher has done since it started, for metrics.
#[derive(Debug, Default)]
pub struct PulseCounters {
    stale_reports: AtomicU64,
    /// Unix ms of the dispatcher's last step that did not fail.
    last_good_step_ms: AtomicU64,
}

impl PulseCounters {
    /// Reports refused because their attempt was no longer live (a result
    /// or error sent after the attempt timed out, was cancelled or lost its
    /// lease). Counted once the step that refused them has ended, so a
    /// reader that sees the count also sees that they changed nothing.
    pub fn stale_reports(&self) -> u64 {
        self.stale_reports.load(Ordering::Acquire)
    }

    /// Unix ms of the dispatcher's last step that did not fail (0 before
    /// the first): a dispatcher that stopped stepping, or whose steps fail
    /// (storage), falls behind the clock.
    pub fn last_good_step_ms(&self) -> u64 {
        self.last_good_step_ms.load(Ordering::Acquire)
    }
}

fn stopped() -> JobError {
    JobError::Storage(crate::ledger::LedgerError::new(
        crate::ledger::LedgerErrorCode::Unavailable,
        "the dispatcher has stopped",
    ))
}

impl PulseHandle {
    fn ask<T>(
        &self,
        make: impl FnOnce(SyncSender<Result<T, JobError>>) -> Command,
    ) -> Result<T, JobError> {
        let (tx, rx) = sync_channel(1);
        self.tx.send(make(tx)).map_err(|_| stopped())?;
        self.thread.unpark();
        rx.recv().map_err(|_| stopped())?
    }

    /// Cancels a job through the dispatcher, so a running attempt's
    /// executor is told at once. Blocks until done.
    ///
    /// # Errors
    /// As [`Dispatcher::cancel`].
    pub fn cancel(&self, id: JobId) -> Result<(), JobError> {
        self.cancel_many(vec![id])?
            .pop()
            .unwrap_or(Err(JobError::NotFound(id)))
    }

    /// Cancels jobs through the dispatcher in one group commit; one result
    /// per ID. Blocks until done.
    ///
    /// # Errors
    /// The dispatcher has stopped.
    pub fn cancel_many(&self, ids: Vec<JobId>) -> Result<Vec<Result<(), JobError>>, JobError> {
        self.ask(|tx| Command::Cancel(ids, tx))
    }

    /// A handler's spend and live reservations. Blocks until answered.
    ///
    /// # Errors
    /// As [`Dispatcher::budget_use`].
    pub fn budget_use(&self, handler: Did) -> Result<BudgetUse, JobError> {
        self.ask(|tx| Command::BudgetUse(Box::new(handler), tx))
    }

    /// Stops starting attempts and firing schedules; the running ones go
    /// on and their reports are applied ([`Dispatcher::drain`]).
    pub fn drain(&self) {
        let _ = self.tx.send(Command::Drain);
        self.thread.unpark();
    }

    /// Attempts started and not yet ended. Blocks until answered.
    ///
    /// # Errors
    /// The dispatcher has stopped.
    pub fn live_attempts(&self) -> Result<usize, JobError> {
        self.ask(Command::LiveAttempts)
    }

    /// Asks for a step now (after an enqueue, say).
    pub fn wake(&self) {
        self.thread.unpark();
    }

    /// The dispatcher's counters.
    pub fn counters(&self) -> Arc<PulseCounters> {
        Arc::clone(&self.counters)
    }
}

/// A dispatcher running on its own thread.
pub struct PulseRunner {
    handle: PulseHandle,
    join: Option<JoinHandle<()>>,
}

impl PulseRunner {
    /// Starts the thread: `build` makes the dispatcher there (given the
    /// thread, for executors that wake it), then the dispatcher recovers
    /// attempts left running by a previous process and starts stepping.
    pub fn spawn<E, F>(build: F, idle: Duration) -> PulseRunner
    where
        E: Executor + 'static,
        F: FnOnce(Thread) -> Dispatcher<E> + Send + 'static,
    {
        let (tx, rx) = channel();
        let counters = Arc::new(PulseCounters::default());
        let counting = Arc::clone(&counters);
        let join = std::thread::Builder::new()
            .name("pulse-dispatcher".into())
            .spawn(move || {
                let d = build(std::thread::current());
                run(d, &rx, idle, &counting);
            })
            .unwrap_or_else(|e| panic!("cannot start the dispatcher thread: {e}"));
        let handle = PulseHandle {
            tx,
            thread: join.thread().clone(),
            counters,
        };
        PulseRunner {
            handle,
            join: Some(join),
        }
    }

    /// A handle for commands.
    pub fn handle(&self) -> PulseHandle {
        self.handle.clone()
    }

    /// Stops the thread after its current step. Attempts still running
    /// stay recorded as running, and are recovered as interrupted on the
    /// next start.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.handle.tx.send(Command::Stop);
        self.handle.thread.unpark();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for PulseRunner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run<E: Executor>(
    mut d: Dispatcher<E>,
    rx: &Receiver<Command>,
    idle: Duration,
    counters: &PulseCounters,
) {
    let jobs = d.job_counters();
    match d.recover(crate::clock::unix_ms()) {
        Ok(0) => {}
        Ok(n) => tracing::info!(interrupted = n, "recovered attempts left running"),
        Err(e) => tracing::error!(error = %e, "recovering running attempts failed"),
    }
    loop {
        let mut commands = rx.try_iter().peekable();
        if commands.peek().is_some() {
            // A command sees every step finished: a cancel must find the
            // attempts of the steps in flight started, a stop leaves none
            // written and not started.
            let now = crate::clock::unix_ms();
            let settled = d.finish_in_flight();
            record_step(&mut d, &settled, now, counters);
        }
        for cmd in commands {
            match cmd {
                Command::Cancel(ids, reply) => {
                    let _ = reply.send(Ok(d.cancel_many(&ids, crate::clock::unix_ms())));
                }
                Command::BudgetUse(h, reply) => {
                    let _ = reply.send(d.budget_use(&h, crate::clock::unix_ms()));
                }
                Command::Drain => d.drain(),
                Command::LiveAttempts(reply) => {
                    let _ = reply.send(Ok(d.live_attempts()));
                }
                Command::Stop => return,
            }
        }
        let started = std::time::Instant::now();
        let now = crate::clock::unix_ms();
        // Overlapped: this step is staged and written while the steps
        // before it commit (spec/pulse.md, "Overlapped steps").
        let mut step = d.step_overlapped(now);
        if step.is_err() {
            // Not left in flight through the wait below.
            step = step.and(d.finish_in_flight());
        }
        jobs.step.observe(started.elapsed());
        record_step(&mut d, &step, now, counters);
        match step {
            // Work done may have made more work (results free slots), and
            // steps in flight are finished by later ones: step again before
            // sleeping.
            Ok(r) if r.dispatched > 0 || r.applied > 0 || r.stale > 0 || d.in_flight() => {
                continue;
            }
            Ok(_) => std::thread::park_timeout(idle),
            Err(e) => {
                tracing::error!(error = %e, "dispatcher step failed; retrying");
                std::thread::park_timeout(idle.max(Duration::from_millis(100)));
            }
        }
    }
}

/// Counts a step's outcome: the dispatcher's failure clock, stale reports
/// and the time of the last good step.
fn record_step<E: Executor>(
    d: &mut Dispatcher<E>,
    step: &Result<StepReport, JobError>,
    now: u64,
    counters: &PulseCounters,
) {
    match step {
        Ok(r) => {
            d.step_succeeded(now);
            counters
                .stale_reports
                .fetch_add(r.stale as u64, Ordering::Release);
            counters
                .last_good_step_ms
                .store(crate::clock::unix_ms(), Ordering::Release);
        }
        Err(_) => d.step_failed(now),
    }
}
