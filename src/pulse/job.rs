//! The job model: what a job is, its limits, attempts and progress. Pure.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::{PulseError, PulseErrorCode};
use crate::{Did, HandlerSchema};

/// Largest job payload, bytes.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Largest progress checkpoint, bytes.
pub const MAX_CHECKPOINT_BYTES: usize = 1024 * 1024;
/// Longest idempotency key, bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// Highest priority (0 is the lowest).
pub const MAX_PRIORITY: u8 = 9;
/// Consecutive executor crashes after which a job is quarantined.
pub const POISON_CRASHES: u32 = 3;
/// Consecutive attempts cut short by a server stop after which a job is
/// quarantined: a job that takes the server down with it must not do so
/// for ever.
pub const POISON_INTERRUPTIONS: usize = 10;

/// `text`, cut to at most `max` bytes at a character boundary and marked
/// " …[cut]" if it was longer.
pub fn cut_text(mut text: String, max: usize) -> String {
    const MARK: &str = " …[cut]";
    if text.len() > max {
        let mut at = max.saturating_sub(MARK.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        text.push_str(MARK);
    }
    text
}

/// A job's ID: 8 bytes of creation time (Unix ms, big-endian) then 8
/// bytes that make it unique, so IDs sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub [u8; 16]);

impl JobId {
    /// The ID for a job created at `created_at_ms` with uniqueness `tail`.
    pub fn new(created_at_ms: u64, tail: u64) -> JobId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&created_at_ms.to_be_bytes());
        b[8..].copy_from_slice(&tail.to_be_bytes());
        JobId(b)
    }

    /// Creation time, Unix ms.
    pub fn created_at_ms(&self) -> u64 {
        u64::from_be_bytes(self.0[..8].try_into().unwrap_or([0; 8]))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({self})")
    }
}

/// Identifies one attempt: only events carrying the live attempt's lease
/// are accepted.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct LeaseToken(pub [u8; 16]);

/// What a client asks for when it enqueues a job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobRequest {
    /// Opaque input, at most 1 MiB.
    pub payload: Vec<u8>,
    /// 0..=9, higher first.
    pub priority: u8,
    /// Do not start before this Unix ms (0: now).
    pub run_at_ms: u64,
    /// Enqueueing an existing key returns the existing job.
    pub idempotency_key: Option<String>,
    /// Lower the handler's attempt limit.
    pub max_attempts: Option<u32>,
    /// Lower the handler's per-attempt timeout, ms.
    pub timeout_ms: Option<u64>,
    /// Lower the handler's per-job cost limit.
    pub max_cost: Option<u64>,
    /// A parent job.
    pub parent: Option<JobId>,
    /// The W3C `traceparent` of the call that enqueued it, when traces
    /// are on: its attempts' spans are children of it.
    pub trace_parent: Option<String>,
}

/// The limits a job runs under: the handler's, possibly lowered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLimits {
    /// Attempts, at least 1.
    pub max_attempts: u32,
    /// Per-attempt timeout, ms.
    pub timeout_ms: u64,
    /// Cost limit; `None` means no per-job limit.
    pub max_cost: Option<u64>,
}

impl JobLimits {
    /// The handler's limits with the request's lower values applied.
    ///
    /// # Errors
    /// `limit_above_handler` if the request raises a limit; `invalid_limit`
    /// for a zero.
    pub fn resolve(schema: &HandlerSchema, req: &JobRequest) -> Result<JobLimits, PulseError> {
        let handler = JobLimits {
            max_attempts: schema.effective_max_attempts(),
            timeout_ms: schema.effective_timeout_ms(),
            max_cost: schema.max_cost,
        };
        fn lower<T: PartialOrd + Copy + fmt::Display>(
            name: &str,
            asked: Option<T>,
            allowed: T,
            zero: T,
        ) -> Result<T, PulseError> {
            match asked {
                None => Ok(allowed),
                Some(v) if v == zero => Err(PulseError::new(
                    PulseErrorCode::InvalidLimit,
                    format!("{name} must be at least 1"),
                )),
                Some(v) if v > allowed => Err(PulseError::new(
                    PulseErrorCode::LimitAboveHandler,
                    format!("{name} {v} is above the handler's {allowed}; a job may only lower it"),
                )),
                Some(v) => Ok(v),
            }
        }
        Ok(JobLimits {
            max_attempts: lower("max_attempts", req.max_attempts, handler.max_attempts, 0)?,
            timeout_ms: lower("timeout_ms", req.timeout_ms, handler.timeout_ms, 0)?,
            max_cost: match (req.max_cost, handler.max_cost) {
                (None, h) => h,
                (Some(v), Some(h)) => Some(lower("max_cost", Some(v), h, 0)?),
                (Some(0), None) => {
                    return Err(PulseError::new(
                        PulseErrorCode::InvalidLimit,
                        "max_cost must be at least 1",
                    ));
                }
                (Some(v), None) if v > crate::limits::MAX_MAX_COST => {
                    return Err(PulseError::new(
                        PulseErrorCode::InvalidLimit,
                        format!("max_cost is at most {}", crate::limits::MAX_MAX_COST),
                    ));
                }
                (Some(v), None) => Some(v),
            },
        })
    }
}

/// Checks the parts of a request that need no handler.
///
/// # Errors
/// `payload_too_large`, `invalid_priority` or `invalid_idempotency_key`.
pub fn check_request(req: &JobRequest) -> Result<(), PulseError> {
    if req.payload.len() > MAX_PAYLOAD_BYTES {
        return Err(PulseError::new(
            PulseErrorCode::PayloadTooLarge,
            format!(
                "payload is {} bytes; the limit is {MAX_PAYLOAD_BYTES}",
                req.payload.len()
            ),
        ));
    }
    if req.priority > MAX_PRIORITY {
        return Err(PulseError::new(
            PulseErrorCode::InvalidPriority,
            format!("priority {} is not in 0..={MAX_PRIORITY}", req.priority),
        ));
    }
    if let Some(k) = &req.idempotency_key {
        if k.is_empty()
            || k.len() > MAX_IDEMPOTENCY_KEY_BYTES
            || !k.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(PulseError::new(
                PulseErrorCode::InvalidIdempotencyKey,
                format!(
                    "an idempotency key is 1..={MAX_IDEMPOTENCY_KEY_BYTES} printable ASCII characters"
                ),
            ));
        }
    }
    Ok(())
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttemptOutcome {
    /// The executor returned a result.
    Succeeded,
    /// The executor reported an error.
    Failed,
    /// The executor died or lost its connection mid-attempt.
    Crashed,
    /// The attempt ran past its timeout or missed heartbeats.
    TimedOut,
    /// The job was cancelled while this attempt ran.
    Cancelled,
    /// The attempt crossed the job's or handler's cost budget.
    BudgetExceeded,
    /// The server stopped while the attempt ran. Not the job's fault: it
    /// uses no attempt and is not a crash.
    Interrupted,
}

impl AttemptOutcome {
    /// The outcome's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Crashed => "crashed",
            AttemptOutcome::TimedOut => "timed_out",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::BudgetExceeded => "budget_exceeded",
            AttemptOutcome::Interrupted => "interrupted",
        }
    }
}

/// One try at running a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// Its lease: events with another lease are stale.
    pub lease: LeaseToken,
    /// Unix ms.
    pub started_at: u64,
    /// Unix ms of the last heartbeat (or the start).
    pub last_heartbeat: u64,
    /// Unix ms, once ended.
    pub ended_at: Option<u64>,
    /// How it ended.
    pub outcome: Option<AttemptOutcome>,
    /// The executor's error message, if any.
    pub error: Option<String>,
    /// Cost reported during this attempt.
    pub cost: u64,
    /// Log indexes of the handler and plugin statements this attempt was
    /// authorised under, when it went through resolution.
    #[serde(default)]
    pub authorised_under: Option<(u64, u64)>,
    /// The node that runs it, when several `serve` nodes share the store
    /// (`serve --node`); absent on a single server, which runs them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Cost reserved from the handler's budget when it started, counted
    /// in the handler's load while it runs, when several nodes share the
    /// store (0, and not written, on a single server).
    #[serde(default, skip_serializing_if = "is_no_cost")]
    pub reserved: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_no_cost(n: &u64) -> bool {
    *n == 0
}

/// What the executor last said about progress; kept across attempts and
/// handed to the next attempt.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Progress {
    /// 0..=100.
    pub percent: u8,
    /// For people.
    pub message: String,
    /// Opaque resume state for the next attempt.
    #[serde(with = "serde_bytes")]
    pub checkpoint: Vec<u8>,
}

/// Why a job is held (not running, not consuming attempts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HoldReason {
    /// Its handler's budget cannot cover the reservation.
    Budget,
    /// Its plugin is not connected.
    Plugin,
}

/// Why a job ended dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeadReason {
    /// Every attempt was used.
    AttemptsExhausted,
    /// The executor said the error will not go away.
    NonRetryable,
    /// The job crashed its executor several times in a row.
    Poison,
    /// Resolution before dispatch refused it (spec/plugin.md,
    /// "Resolution"): no attempt was made.
    Refused(Refusal),
}

/// Why resolution refused to dispatch a job. Never retried: each names a
/// fact of the ledger or of the plugin sessions that retrying cannot change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Refusal {
    /// The handler has no chain in the log.
    HandlerNotFound,
    /// The handler's chain ends with a revocation.
    HandlerRevoked,
    /// The plugin the handler's schema names has no chain in the log.
    PluginNotRegistered,
    /// The plugin's chain ends with a revocation.
    PluginRevoked,
    /// The named plugin is connected but did not announce this handler.
    PluginNotAuthorised,
    /// The named plugin did not connect within the configured wait.
    PluginNotConnected,
    /// The ledger could not be read for the whole configured wait, so the
    /// job could not be resolved.
    LedgerUnreadable,
}

impl Refusal {
    /// The reason's name in the API and spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::HandlerNotFound => "handler_not_found",
            Refusal::HandlerRevoked => "handler_revoked",
            Refusal::PluginNotRegistered => "plugin_not_registered",
            Refusal::PluginRevoked => "plugin_revoked",
            Refusal::PluginNotAuthorised => "plugin_not_authorised",
            Refusal::PluginNotConnected => "plugin_not_connected",
            Refusal::LedgerUnreadable => "ledger_unreadable",
        }
    }
}

/// Why a job ended cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CancelReason {
    /// A client asked.
    Requested,
    /// It crossed its cost budget.
    Budget,
}

/// Where a job is in its life (spec/pulse.md, "State machine").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting to be dispatched (at or after `run_at`).
    Queued,
    /// Waiting for budget or for its plugin; consumes no attempt.
    Held(HoldReason),
    /// An attempt is live.
    Running,
    /// The last attempt failed; queued again at `retry_at`.
    Retrying,
    /// Finished with a result. Terminal.
    Succeeded,
    /// Finished without one. Terminal.
    Dead(DeadReason),
    /// Stopped on request or by budget. Terminal.
    Cancelled(CancelReason),
}

impl JobState {
    /// Whether nothing more can happen to the job.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead(_) | JobState::Cancelled(_)
        )
    }

    /// Why it is held, dead or cancelled, as the API and spec name it;
    /// empty for the other states.
    pub fn reason(&self) -> &'static str {
        match self {
            JobState::Held(HoldReason::Budget) | JobState::Cancelled(CancelReason::Budget) => {
                "budget"
            }
            JobState::Held(HoldReason::Plugin) => "plugin",
            JobState::Dead(DeadReason::AttemptsExhausted) => "attempts_exhausted",
            JobState::Dead(DeadReason::NonRetryable) => "non_retryable",
            JobState::Dead(DeadReason::Poison) => "poison",
            JobState::Dead(DeadReason::Refused(why)) => why.as_str(),
            JobState::Cancelled(CancelReason::Requested) => "requested",
            _ => "",
        }
    }

    /// The state's name in the API and spec.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Held(_) => "held",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Dead(_) => "dead",
            JobState::Cancelled(_) => "cancelled",
        }
    }
}

/// A job and everything that happened to it. Stored by the job store as
/// a versioned record: see the rule for changing it in `pulse/record.rs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Unique, time-sortable.
    pub id: JobId,
    /// The handler's did:key.
    pub handler: Did,
    /// Opaque input.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// 0..=9, higher first.
    pub priority: u8,
    /// Not before this Unix ms.
    pub run_at: u64,
    /// The key it was enqueued with.
    pub idempotency_key: Option<String>,
    /// Limits in force.
    pub limits: JobLimits,
    /// A parent job.
    pub parent: Option<JobId>,
    /// Where it is.
    pub state: JobState,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// Latest progress, kept across attempts.
    pub progress: Progress,
    /// Cost over all attempts.
    pub total_cost: u64,
    /// The result, once succeeded.
    #[serde(with = "serde_bytes")]
    pub result: Option<Vec<u8>>,
    /// The latest error.
    pub last_error: Option<String>,
    /// Crashes since the last attempt that did not crash.
    pub consecutive_crashes: u32,
    /// When it is queued again, while `Retrying`.
    pub retry_at: Option<u64>,
    /// Unix ms of the last change.
    pub updated_at: u64,
    /// Attempts made before the job's last retry ([`Job::retry`]): they
    /// stay in `attempts` as history but count no more against
    /// `max_attempts`. Written only once a job has been retried, so the
    /// records of other jobs keep their bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub series_start: u32,
    /// The W3C `traceparent` of the call that enqueued it, if traces were
    /// on (written only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
