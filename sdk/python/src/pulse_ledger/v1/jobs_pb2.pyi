from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnqueueRequest(_message.Message):
    __slots__ = ("handler", "payload", "priority", "run_at_ms", "idempotency_key", "max_attempts", "timeout_ms", "max_cost", "parent")
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_MS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    handler: str
    payload: bytes
    priority: int
    run_at_ms: int
    idempotency_key: str
    max_attempts: int
    timeout_ms: int
    max_cost: int
    parent: bytes
    def __init__(self, handler: _Optional[str] = ..., payload: _Optional[bytes] = ..., priority: _Optional[int] = ..., run_at_ms: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., max_attempts: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., max_cost: _Optional[int] = ..., parent: _Optional[bytes] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "handler", "state", "reason", "priority", "run_at_ms", "attempts", "max_attempts", "timeout_ms", "max_cost", "total_cost", "progress_percent", "progress_message", "result", "last_error", "retry_at_ms", "updated_at_ms", "idempotency_key", "parent", "attempt_history", "series_start", "payload")
    ID_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRY_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_HISTORY_FIELD_NUMBER: _ClassVar[int]
    SERIES_START_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    handler: str
    state: str
    reason: str
    priority: int
    run_at_ms: int
    attempts: int
    max_attempts: int
    timeout_ms: int
    max_cost: int
    total_cost: int
    progress_percent: int
    progress_message: str
    result: bytes
    last_error: str
    retry_at_ms: int
    updated_at_ms: int
    idempotency_key: str
    parent: bytes
    attempt_history: _containers.RepeatedCompositeFieldContainer[JobAttempt]
    series_start: int
    payload: bytes
    def __init__(self, id: _Optional[bytes] = ..., handler: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., priority: _Optional[int] = ..., run_at_ms: _Optional[int] = ..., attempts: _Optional[int] = ..., max_attempts: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., max_cost: _Optional[int] = ..., total_cost: _Optional[int] = ..., progress_percent: _Optional[int] = ..., progress_message: _Optional[str] = ..., result: _Optional[bytes] = ..., last_error: _Optional[str] = ..., retry_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., parent: _Optional[bytes] = ..., attempt_history: _Optional[_Iterable[_Union[JobAttempt, _Mapping]]] = ..., series_start: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class JobAttempt(_message.Message):
    __slots__ = ("number", "started_at_ms", "ended_at_ms", "outcome", "error", "cost", "authorised", "handler_index", "plugin_index", "lease", "node")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    AUTHORISED_FIELD_NUMBER: _ClassVar[int]
    HANDLER_INDEX_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_INDEX_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    number: int
    started_at_ms: int
    ended_at_ms: int
    outcome: str
    error: str
    cost: int
    authorised: bool
    handler_index: int
    plugin_index: int
    lease: bytes
    node: str
    def __init__(self, number: _Optional[int] = ..., started_at_ms: _Optional[int] = ..., ended_at_ms: _Optional[int] = ..., outcome: _Optional[str] = ..., error: _Optional[str] = ..., cost: _Optional[int] = ..., authorised: _Optional[bool] = ..., handler_index: _Optional[int] = ..., plugin_index: _Optional[int] = ..., lease: _Optional[bytes] = ..., node: _Optional[str] = ...) -> None: ...

class EnqueueResponse(_message.Message):
    __slots__ = ("job", "existing")
    JOB_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    job: Job
    existing: bool
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., existing: _Optional[bool] = ...) -> None: ...

class EnqueueBatchRequest(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[EnqueueRequest]
    def __init__(self, jobs: _Optional[_Iterable[_Union[EnqueueRequest, _Mapping]]] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("status_code", "code", "message")
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status_code: int
    code: str
    message: str
    def __init__(self, status_code: _Optional[int] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class EnqueueResult(_message.Message):
    __slots__ = ("accepted", "rejected")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    accepted: EnqueueResponse
    rejected: JobError
    def __init__(self, accepted: _Optional[_Union[EnqueueResponse, _Mapping]] = ..., rejected: _Optional[_Union[JobError, _Mapping]] = ...) -> None: ...

class EnqueueStreamResponse(_message.Message):
    __slots__ = ("position", "accepted", "rejected")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    position: int
    accepted: EnqueueResponse
    rejected: JobError
    def __init__(self, position: _Optional[int] = ..., accepted: _Optional[_Union[EnqueueResponse, _Mapping]] = ..., rejected: _Optional[_Union[JobError, _Mapping]] = ...) -> None: ...

class EnqueueBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EnqueueResult]
    def __init__(self, results: _Optional[_Iterable[_Union[EnqueueResult, _Mapping]]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    def __init__(self, id: _Optional[bytes] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state", "page_size", "page_token", "handler", "since_ms", "oldest_first")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    state: str
    page_size: int
    page_token: bytes
    handler: str
    since_ms: int
    oldest_first: bool
    def __init__(self, state: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[bytes] = ..., handler: _Optional[str] = ..., since_ms: _Optional[int] = ..., oldest_first: _Optional[bool] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: bytes
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[bytes] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    def __init__(self, id: _Optional[bytes] = ...) -> None: ...

class GetJobLogRequest(_message.Message):
    __slots__ = ("id", "after_seq", "page_size")
    ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    after_seq: int
    page_size: int
    def __init__(self, id: _Optional[bytes] = ..., after_seq: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class JobLogLine(_message.Message):
    __slots__ = ("seq", "attempt", "at_ms", "line")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    attempt: int
    at_ms: int
    line: str
    def __init__(self, seq: _Optional[int] = ..., attempt: _Optional[int] = ..., at_ms: _Optional[int] = ..., line: _Optional[str] = ...) -> None: ...

class GetJobLogResponse(_message.Message):
    __slots__ = ("lines", "next_after_seq", "finished")
    LINES_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[JobLogLine]
    next_after_seq: int
    finished: bool
    def __init__(self, lines: _Optional[_Iterable[_Union[JobLogLine, _Mapping]]] = ..., next_after_seq: _Optional[int] = ..., finished: _Optional[bool] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    def __init__(self, id: _Optional[bytes] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class CancelJobsRequest(_message.Message):
    __slots__ = ("handler", "state")
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    handler: str
    state: str
    def __init__(self, handler: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class CancelJobsResponse(_message.Message):
    __slots__ = ("cancelled", "more")
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    cancelled: int
    more: bool
    def __init__(self, cancelled: _Optional[int] = ..., more: _Optional[bool] = ...) -> None: ...

class RetryJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    def __init__(self, id: _Optional[bytes] = ...) -> None: ...

class RetryJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ("handler",)
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    handler: str
    def __init__(self, handler: _Optional[str] = ...) -> None: ...

class GetBudgetResponse(_message.Message):
    __slots__ = ("per_hour", "per_day", "spent_hour", "spent_day", "reserved")
    PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    PER_DAY_FIELD_NUMBER: _ClassVar[int]
    SPENT_HOUR_FIELD_NUMBER: _ClassVar[int]
    SPENT_DAY_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    per_hour: int
    per_day: int
    spent_hour: int
    spent_day: int
    reserved: int
    def __init__(self, per_hour: _Optional[int] = ..., per_day: _Optional[int] = ..., spent_hour: _Optional[int] = ..., spent_day: _Optional[int] = ..., reserved: _Optional[int] = ...) -> None: ...

class SetBudgetRequest(_message.Message):
    __slots__ = ("handler", "per_hour", "per_day")
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    PER_DAY_FIELD_NUMBER: _ClassVar[int]
    handler: str
    per_hour: int
    per_day: int
    def __init__(self, handler: _Optional[str] = ..., per_hour: _Optional[int] = ..., per_day: _Optional[int] = ...) -> None: ...

class SetBudgetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("hash",)
    HASH_FIELD_NUMBER: _ClassVar[int]
    hash: str
    def __init__(self, hash: _Optional[str] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "store_log_size", "answered_by")
    NODES_FIELD_NUMBER: _ClassVar[int]
    STORE_LOG_SIZE_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[ServerNode]
    store_log_size: int
    answered_by: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[ServerNode, _Mapping]]] = ..., store_log_size: _Optional[int] = ..., answered_by: _Optional[str] = ...) -> None: ...

class ServerNode(_message.Message):
    __slots__ = ("name", "listen", "started_ms", "last_seen_ms", "live", "log_size", "sessions", "running", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    LOG_SIZE_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    listen: str
    started_ms: int
    last_seen_ms: int
    live: bool
    log_size: int
    sessions: int
    running: int
    version: str
    def __init__(self, name: _Optional[str] = ..., listen: _Optional[str] = ..., started_ms: _Optional[int] = ..., last_seen_ms: _Optional[int] = ..., live: _Optional[bool] = ..., log_size: _Optional[int] = ..., sessions: _Optional[int] = ..., running: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class ListPluginSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPluginSessionsResponse(_message.Message):
    __slots__ = ("sessions", "refusals")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    REFUSALS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[PluginSession]
    refusals: _containers.RepeatedCompositeFieldContainer[SessionRefusalRecord]
    def __init__(self, sessions: _Optional[_Iterable[_Union[PluginSession, _Mapping]]] = ..., refusals: _Optional[_Iterable[_Union[SessionRefusalRecord, _Mapping]]] = ...) -> None: ...

class PluginSession(_message.Message):
    __slots__ = ("plugin", "name", "key", "connection", "address", "handlers", "serves_any", "slots", "running", "draining", "opened_ms", "last_health_ms", "session", "attempt_streams")
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HANDLERS_FIELD_NUMBER: _ClassVar[int]
    SERVES_ANY_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    OPENED_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEALTH_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_STREAMS_FIELD_NUMBER: _ClassVar[int]
    plugin: str
    name: str
    key: str
    connection: str
    address: str
    handlers: _containers.RepeatedScalarFieldContainer[str]
    serves_any: bool
    slots: int
    running: int
    draining: bool
    opened_ms: int
    last_health_ms: int
    session: int
    attempt_streams: int
    def __init__(self, plugin: _Optional[str] = ..., name: _Optional[str] = ..., key: _Optional[str] = ..., connection: _Optional[str] = ..., address: _Optional[str] = ..., handlers: _Optional[_Iterable[str]] = ..., serves_any: _Optional[bool] = ..., slots: _Optional[int] = ..., running: _Optional[int] = ..., draining: _Optional[bool] = ..., opened_ms: _Optional[int] = ..., last_health_ms: _Optional[int] = ..., session: _Optional[int] = ..., attempt_streams: _Optional[int] = ...) -> None: ...

class SessionRefusalRecord(_message.Message):
    __slots__ = ("plugin", "address", "code", "message", "at_ms")
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    plugin: str
    address: str
    code: str
    message: str
    at_ms: int
    def __init__(self, plugin: _Optional[str] = ..., address: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., at_ms: _Optional[int] = ...) -> None: ...

class CreateScheduleRequest(_message.Message):
    __slots__ = ("handler", "cron", "timezone", "every_ms", "payload", "priority", "max_attempts", "timeout_ms", "max_cost", "overlap", "missed")
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    EVERY_MS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    handler: str
    cron: str
    timezone: str
    every_ms: int
    payload: bytes
    priority: int
    max_attempts: int
    timeout_ms: int
    max_cost: int
    overlap: str
    missed: str
    def __init__(self, handler: _Optional[str] = ..., cron: _Optional[str] = ..., timezone: _Optional[str] = ..., every_ms: _Optional[int] = ..., payload: _Optional[bytes] = ..., priority: _Optional[int] = ..., max_attempts: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., max_cost: _Optional[int] = ..., overlap: _Optional[str] = ..., missed: _Optional[str] = ...) -> None: ...

class GetScheduleRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    def __init__(self, id: _Optional[bytes] = ...) -> None: ...

class ListSchedulesRequest(_message.Message):
    __slots__ = ("handler", "page_size", "page_token")
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    handler: str
    page_size: int
    page_token: bytes
    def __init__(self, handler: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[bytes] = ...) -> None: ...

class ListSchedulesResponse(_message.Message):
    __slots__ = ("schedules", "next_page_token")
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[Schedule]
    next_page_token: bytes
    def __init__(self, schedules: _Optional[_Iterable[_Union[Schedule, _Mapping]]] = ..., next_page_token: _Optional[bytes] = ...) -> None: ...

class PauseScheduleRequest(_message.Message):
    __slots__ = ("id", "paused")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    paused: bool
    def __init__(self, id: _Optional[bytes] = ..., paused: _Optional[bool] = ...) -> None: ...

class ScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class Schedule(_message.Message):
    __slots__ = ("id", "handler", "cron", "timezone", "every_ms", "payload", "priority", "max_attempts", "timeout_ms", "max_cost", "overlap", "missed", "paused", "created_at_ms", "next_at_ms", "last_fired_at_ms", "last_job", "fired", "skipped", "missed_count", "last_error", "updated_at_ms", "upcoming_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    EVERY_MS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIRED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_JOB_FIELD_NUMBER: _ClassVar[int]
    FIRED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    MISSED_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPCOMING_MS_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    handler: str
    cron: str
    timezone: str
    every_ms: int
    payload: bytes
    priority: int
    max_attempts: int
    timeout_ms: int
    max_cost: int
    overlap: str
    missed: str
    paused: bool
    created_at_ms: int
    next_at_ms: int
    last_fired_at_ms: int
    last_job: bytes
    fired: int
    skipped: int
    missed_count: int
    last_error: str
    updated_at_ms: int
    upcoming_ms: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, id: _Optional[bytes] = ..., handler: _Optional[str] = ..., cron: _Optional[str] = ..., timezone: _Optional[str] = ..., every_ms: _Optional[int] = ..., payload: _Optional[bytes] = ..., priority: _Optional[int] = ..., max_attempts: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., max_cost: _Optional[int] = ..., overlap: _Optional[str] = ..., missed: _Optional[str] = ..., paused: _Optional[bool] = ..., created_at_ms: _Optional[int] = ..., next_at_ms: _Optional[int] = ..., last_fired_at_ms: _Optional[int] = ..., last_job: _Optional[bytes] = ..., fired: _Optional[int] = ..., skipped: _Optional[int] = ..., missed_count: _Optional[int] = ..., last_error: _Optional[str] = ..., updated_at_ms: _Optional[int] = ..., upcoming_ms: _Optional[_Iterable[int]] = ...) -> None: ...
