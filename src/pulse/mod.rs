//! Pulse, the job system: the job model and its state machine (pure), with
//! the durable queue, scheduler and executors to follow (spec/pulse.md).

mod backoff;
mod budget;
mod dispatcher;
mod error;
mod executor;
mod handler_load;
mod job;
mod job_changes;
mod job_metrics;
mod live_records;
mod machine;
mod payload_schema;
mod record;
mod route;
mod runner;
mod schedule;
mod schedule_store;
mod store;
mod transition;

pub use backoff::Backoff;
pub use budget::{Budget, BudgetUse};
pub use dispatcher::{ConcurrencyLimits, DispatchConfig, Dispatcher, SchemaSource, StepReport};
pub use error::{PulseError, PulseErrorCode};
pub use executor::{
    AsyncExecutor, AsyncExecutorAdapter, AttemptSpec, EventStream, ExecEvent, Executor,
    REPORT_QUEUE, Report, ReportSender,
};
pub use handler_load::{HandlerLoad, LoadDelta};
pub use job::{
    Attempt, AttemptOutcome, CancelReason, DeadReason, HoldReason, Job, JobId, JobLimits,
    JobRequest, JobState, LeaseToken, MAX_CHECKPOINT_BYTES, MAX_IDEMPOTENCY_KEY_BYTES,
    MAX_PAYLOAD_BYTES, MAX_PRIORITY, POISON_CRASHES, POISON_INTERRUPTIONS, Progress, Refusal,
    check_request, cut_text,
};
pub use job_changes::{ChangeWatch, JobChanges};
pub use job_metrics::{JobCounters, OUTCOMES};
pub use machine::{MAX_RETRY_AFTER_MS, RetryPolicy};
pub use payload_schema::{Checked, PayloadSchema, SchemaCache};
pub use route::{Authorization, OpenRouter, Route, Router};
pub use runner::{PulseCounters, PulseHandle, PulseRunner};
pub use schedule::{
    Firing, MAX_EVERY_MS, MIN_EVERY_MS, Missed, Overlap, Recurrence, Schedule, ScheduleId,
    occurrence_key,
};
pub use schedule_store::{FIRE_PER_STEP, FireReport, ScheduleRequest};
pub use store::{
    GroupOp, JobError, JobFilter, JobStore, LIST_PAGE_BYTES, LIST_SCAN, LogLine,
    MAX_LOG_LINE_BYTES, MAX_LOG_LINES, ReadyCursor,
};
