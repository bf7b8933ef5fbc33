//! The executor interface: how Pulse hands an attempt to whatever runs it
//! (an in-process fake in tests, a plugin over gRPC later) and hears back.

use std::sync::mpsc::Sender;

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

/// Runs attempts. `start` must not block: the executor reports through
/// the sender it was given, from any thread, in any order across jobs.
pub trait Executor: Send {
    /// Starts an attempt; events go to `reports`.
    fn start(&mut self, attempt: AttemptSpec, reports: Sender<Report>);
    /// Stops an attempt now (cancellation, timeout, budget). Reports that
    /// still arrive for it are refused as stale.
    fn cancel(&mut self, job: JobId, lease: LeaseToken);
}
