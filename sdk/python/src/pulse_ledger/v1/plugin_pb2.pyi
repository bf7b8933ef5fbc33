from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServerMessage(_message.Message):
    __slots__ = ("initialize", "execute", "cancel", "health", "shutdown")
    INITIALIZE_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    initialize: InitializeRequest
    execute: ExecuteJobRequest
    cancel: CancelRequest
    health: HealthRequest
    shutdown: ShutdownRequest
    def __init__(self, initialize: _Optional[_Union[InitializeRequest, _Mapping]] = ..., execute: _Optional[_Union[ExecuteJobRequest, _Mapping]] = ..., cancel: _Optional[_Union[CancelRequest, _Mapping]] = ..., health: _Optional[_Union[HealthRequest, _Mapping]] = ..., shutdown: _Optional[_Union[ShutdownRequest, _Mapping]] = ...) -> None: ...

class PluginMessage(_message.Message):
    __slots__ = ("initialize", "event", "health", "drain")
    INITIALIZE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    initialize: InitializeResponse
    event: AttemptEvent
    health: HealthResponse
    drain: DrainRequest
    def __init__(self, initialize: _Optional[_Union[InitializeResponse, _Mapping]] = ..., event: _Optional[_Union[AttemptEvent, _Mapping]] = ..., health: _Optional[_Union[HealthResponse, _Mapping]] = ..., drain: _Optional[_Union[DrainRequest, _Mapping]] = ...) -> None: ...

class AttemptEvent(_message.Message):
    __slots__ = ("job_id", "lease", "event")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    job_id: bytes
    lease: bytes
    event: JobEvent
    def __init__(self, job_id: _Optional[bytes] = ..., lease: _Optional[bytes] = ..., event: _Optional[_Union[JobEvent, _Mapping]] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SessionRefusal(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SessionRefusedResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MetadataRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MetadataResponse(_message.Message):
    __slots__ = ("name", "version", "description", "protocol")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    description: str
    protocol: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., description: _Optional[str] = ..., protocol: _Optional[int] = ...) -> None: ...

class InitializeRequest(_message.Message):
    __slots__ = ("nonce", "registry_endpoint", "jobs_endpoint", "protocol")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    JOBS_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    registry_endpoint: str
    jobs_endpoint: str
    protocol: int
    def __init__(self, nonce: _Optional[bytes] = ..., registry_endpoint: _Optional[str] = ..., jobs_endpoint: _Optional[str] = ..., protocol: _Optional[int] = ...) -> None: ...

class AnnouncedHandler(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class InitializeResponse(_message.Message):
    __slots__ = ("plugin", "key", "handlers", "serves_any", "signature", "slots", "attempt_streams")
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    HANDLERS_FIELD_NUMBER: _ClassVar[int]
    SERVES_ANY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_STREAMS_FIELD_NUMBER: _ClassVar[int]
    plugin: str
    key: str
    handlers: _containers.RepeatedCompositeFieldContainer[AnnouncedHandler]
    serves_any: bool
    signature: bytes
    slots: int
    attempt_streams: int
    def __init__(self, plugin: _Optional[str] = ..., key: _Optional[str] = ..., handlers: _Optional[_Iterable[_Union[AnnouncedHandler, _Mapping]]] = ..., serves_any: _Optional[bool] = ..., signature: _Optional[bytes] = ..., slots: _Optional[int] = ..., attempt_streams: _Optional[int] = ...) -> None: ...

class ExecuteJobRequest(_message.Message):
    __slots__ = ("job_id", "lease", "attempt", "handler", "handler_name", "handler_attestation_id", "handler_attestation", "handler_index", "plugin_index", "payload", "deadline_ms", "checkpoint", "heartbeat_interval_ms", "traceparent")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    HANDLER_NAME_FIELD_NUMBER: _ClassVar[int]
    HANDLER_ATTESTATION_ID_FIELD_NUMBER: _ClassVar[int]
    HANDLER_ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    HANDLER_INDEX_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_INDEX_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    job_id: bytes
    lease: bytes
    attempt: int
    handler: str
    handler_name: str
    handler_attestation_id: bytes
    handler_attestation: bytes
    handler_index: int
    plugin_index: int
    payload: bytes
    deadline_ms: int
    checkpoint: bytes
    heartbeat_interval_ms: int
    traceparent: str
    def __init__(self, job_id: _Optional[bytes] = ..., lease: _Optional[bytes] = ..., attempt: _Optional[int] = ..., handler: _Optional[str] = ..., handler_name: _Optional[str] = ..., handler_attestation_id: _Optional[bytes] = ..., handler_attestation: _Optional[bytes] = ..., handler_index: _Optional[int] = ..., plugin_index: _Optional[int] = ..., payload: _Optional[bytes] = ..., deadline_ms: _Optional[int] = ..., checkpoint: _Optional[bytes] = ..., heartbeat_interval_ms: _Optional[int] = ..., traceparent: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("heartbeat", "progress", "cost", "log", "result", "error")
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    heartbeat: Heartbeat
    progress: ProgressEvent
    cost: CostEvent
    log: LogEvent
    result: ResultEvent
    error: ErrorEvent
    def __init__(self, heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., progress: _Optional[_Union[ProgressEvent, _Mapping]] = ..., cost: _Optional[_Union[CostEvent, _Mapping]] = ..., log: _Optional[_Union[LogEvent, _Mapping]] = ..., result: _Optional[_Union[ResultEvent, _Mapping]] = ..., error: _Optional[_Union[ErrorEvent, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProgressEvent(_message.Message):
    __slots__ = ("percent", "message", "checkpoint")
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    percent: int
    message: str
    checkpoint: bytes
    def __init__(self, percent: _Optional[int] = ..., message: _Optional[str] = ..., checkpoint: _Optional[bytes] = ...) -> None: ...

class CostEvent(_message.Message):
    __slots__ = ("units",)
    UNITS_FIELD_NUMBER: _ClassVar[int]
    units: int
    def __init__(self, units: _Optional[int] = ...) -> None: ...

class LogEvent(_message.Message):
    __slots__ = ("line",)
    LINE_FIELD_NUMBER: _ClassVar[int]
    line: str
    def __init__(self, line: _Optional[str] = ...) -> None: ...

class ResultEvent(_message.Message):
    __slots__ = ("output",)
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    output: bytes
    def __init__(self, output: _Optional[bytes] = ...) -> None: ...

class ErrorEvent(_message.Message):
    __slots__ = ("message", "retryable", "retry_after_ms")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    message: str
    retryable: bool
    retry_after_ms: int
    def __init__(self, message: _Optional[str] = ..., retryable: _Optional[bool] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("job_id", "lease")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    job_id: bytes
    lease: bytes
    def __init__(self, job_id: _Optional[bytes] = ..., lease: _Optional[bytes] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("serving", "running")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    running: int
    def __init__(self, serving: _Optional[bool] = ..., running: _Optional[int] = ...) -> None: ...

class ShutdownRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShutdownResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
