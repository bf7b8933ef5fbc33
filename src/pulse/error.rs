//! Pulse errors: one stable code per rule (spec/pulse.md).

use std::fmt;

/// Why a job request or a state transition was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PulseErrorCode {
    /// The payload is larger than 1 MiB.
    PayloadTooLarge,
    /// Priority outside 0..=9.
    InvalidPriority,
    /// An idempotency key that is empty, longer than 128 bytes, or not
    /// printable ASCII.
    InvalidIdempotencyKey,
    /// A job asked for more attempts, a longer timeout or a higher cost
    /// than its handler's schema allows (a job may only lower them).
    LimitAboveHandler,
    /// A limit of zero.
    InvalidLimit,
    /// The transition is not allowed from the job's current state.
    WrongState,
    /// An event for an attempt that is no longer the job's live attempt
    /// (its lease was lost, or a newer attempt exists).
    StaleLease,
    /// The job is not due yet (its run_at or retry time is in the future).
    NotDue,
    /// A progress percent above 100 or a checkpoint above 1 MiB.
    InvalidProgress,
    /// A payload that is not JSON, or breaks its handler's input_schema.
    InvalidPayload,
    /// A result that is not JSON, or breaks its handler's output_schema.
    InvalidOutput,
    /// A handler's input_schema or output_schema that is not a JSON
    /// Schema the validator can use.
    InvalidJsonSchema,
    /// A schedule whose cron pattern, time zone, interval or policy is not
    /// valid.
    InvalidSchedule,
}

impl PulseErrorCode {
    /// The code as written in spec/pulse.md.
    pub fn as_str(self) -> &'static str {
        match self {
            PulseErrorCode::PayloadTooLarge => "payload_too_large",
            PulseErrorCode::InvalidPriority => "invalid_priority",
            PulseErrorCode::InvalidIdempotencyKey => "invalid_idempotency_key",
            PulseErrorCode::LimitAboveHandler => "limit_above_handler",
            PulseErrorCode::InvalidLimit => "invalid_limit",
            PulseErrorCode::WrongState => "wrong_state",
            PulseErrorCode::StaleLease => "stale_lease",
            PulseErrorCode::NotDue => "not_due",
            PulseErrorCode::InvalidProgress => "invalid_progress",
            PulseErrorCode::InvalidPayload => "invalid_payload",
            PulseErrorCode::InvalidOutput => "invalid_output",
            PulseErrorCode::InvalidJsonSchema => "invalid_json_schema",
            PulseErrorCode::InvalidSchedule => "invalid_schedule",
        }
    }

    /// Every code.
    pub const ALL: &'static [PulseErrorCode] = &[
        PulseErrorCode::PayloadTooLarge,
        PulseErrorCode::InvalidPriority,
        PulseErrorCode::InvalidIdempotencyKey,
        PulseErrorCode::LimitAboveHandler,
        PulseErrorCode::InvalidLimit,
        PulseErrorCode::WrongState,
        PulseErrorCode::StaleLease,
        PulseErrorCode::NotDue,
        PulseErrorCode::InvalidProgress,
        PulseErrorCode::InvalidPayload,
        PulseErrorCode::InvalidOutput,
        PulseErrorCode::InvalidJsonSchema,
        PulseErrorCode::InvalidSchedule,
    ];
}

impl fmt::Display for PulseErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request or transition: the rule and a message naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct PulseError {
    code: PulseErrorCode,
    message: String,
}

impl PulseError {
    pub(crate) fn new(code: PulseErrorCode, message: impl Into<String>) -> PulseError {
        PulseError {
            code,
            message: message.into(),
        }
    }

    /// The rule.
    pub fn code(&self) -> PulseErrorCode {
        self.code
    }

    /// For people.
    pub fn message(&self) -> &str {
        &self.message
    }
}
