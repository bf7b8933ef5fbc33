from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Family(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAMILY_UNSPECIFIED: _ClassVar[Family]
    FAMILY_HANDLER: _ClassVar[Family]
    FAMILY_PLUGIN: _ClassVar[Family]
FAMILY_UNSPECIFIED: Family
FAMILY_HANDLER: Family
FAMILY_PLUGIN: Family

class SubmitRequest(_message.Message):
    __slots__ = ("envelope",)
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    def __init__(self, envelope: _Optional[bytes] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("size", "root_hash", "note")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    size: int
    root_hash: bytes
    note: str
    def __init__(self, size: _Optional[int] = ..., root_hash: _Optional[bytes] = ..., note: _Optional[str] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("index", "attestation_id", "duplicate", "checkpoint", "inclusion_proof")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    INCLUSION_PROOF_FIELD_NUMBER: _ClassVar[int]
    index: int
    attestation_id: bytes
    duplicate: bool
    checkpoint: Checkpoint
    inclusion_proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, index: _Optional[int] = ..., attestation_id: _Optional[bytes] = ..., duplicate: _Optional[bool] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., inclusion_proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SubmitError(_message.Message):
    __slots__ = ("status_code", "code", "message")
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status_code: int
    code: str
    message: str
    def __init__(self, status_code: _Optional[int] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SubmitStreamResponse(_message.Message):
    __slots__ = ("position", "accepted", "rejected")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    position: int
    accepted: SubmitResponse
    rejected: SubmitError
    def __init__(self, position: _Optional[int] = ..., accepted: _Optional[_Union[SubmitResponse, _Mapping]] = ..., rejected: _Optional[_Union[SubmitError, _Mapping]] = ...) -> None: ...

class GetSubjectRequest(_message.Message):
    __slots__ = ("did",)
    DID_FIELD_NUMBER: _ClassVar[int]
    did: str
    def __init__(self, did: _Optional[str] = ...) -> None: ...

class Subject(_message.Message):
    __slots__ = ("did", "family", "current_key", "seq", "head_id", "issued_at_ms", "revoked", "name", "plugin", "schema_json", "statement_indexes")
    DID_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    CURRENT_KEY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_INDEXES_FIELD_NUMBER: _ClassVar[int]
    did: str
    family: Family
    current_key: str
    seq: int
    head_id: bytes
    issued_at_ms: int
    revoked: bool
    name: str
    plugin: str
    schema_json: str
    statement_indexes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, did: _Optional[str] = ..., family: _Optional[_Union[Family, str]] = ..., current_key: _Optional[str] = ..., seq: _Optional[int] = ..., head_id: _Optional[bytes] = ..., issued_at_ms: _Optional[int] = ..., revoked: _Optional[bool] = ..., name: _Optional[str] = ..., plugin: _Optional[str] = ..., schema_json: _Optional[str] = ..., statement_indexes: _Optional[_Iterable[int]] = ...) -> None: ...

class GetSubjectResponse(_message.Message):
    __slots__ = ("subject",)
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    subject: Subject
    def __init__(self, subject: _Optional[_Union[Subject, _Mapping]] = ...) -> None: ...

class GetChainRequest(_message.Message):
    __slots__ = ("did", "from_seq", "page_size")
    DID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    did: str
    from_seq: int
    page_size: int
    def __init__(self, did: _Optional[str] = ..., from_seq: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class ChainEntry(_message.Message):
    __slots__ = ("index", "envelope", "inclusion_proof")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    INCLUSION_PROOF_FIELD_NUMBER: _ClassVar[int]
    index: int
    envelope: bytes
    inclusion_proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, index: _Optional[int] = ..., envelope: _Optional[bytes] = ..., inclusion_proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetChainResponse(_message.Message):
    __slots__ = ("checkpoint", "entries", "more", "next_seq")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    entries: _containers.RepeatedCompositeFieldContainer[ChainEntry]
    more: bool
    next_seq: int
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., entries: _Optional[_Iterable[_Union[ChainEntry, _Mapping]]] = ..., more: _Optional[bool] = ..., next_seq: _Optional[int] = ...) -> None: ...

class ListHandlersRequest(_message.Message):
    __slots__ = ("name_prefix", "plugin", "include_revoked", "page_size", "page_token", "family")
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    name_prefix: str
    plugin: str
    include_revoked: bool
    page_size: int
    page_token: bytes
    family: Family
    def __init__(self, name_prefix: _Optional[str] = ..., plugin: _Optional[str] = ..., include_revoked: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[bytes] = ..., family: _Optional[_Union[Family, str]] = ...) -> None: ...

class ListHandlersResponse(_message.Message):
    __slots__ = ("handlers", "next_page_token")
    HANDLERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    handlers: _containers.RepeatedCompositeFieldContainer[Subject]
    next_page_token: bytes
    def __init__(self, handlers: _Optional[_Iterable[_Union[Subject, _Mapping]]] = ..., next_page_token: _Optional[bytes] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("index", "envelope")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    index: int
    envelope: bytes
    def __init__(self, index: _Optional[int] = ..., envelope: _Optional[bytes] = ...) -> None: ...

class GetEntriesRequest(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class GetEntriesResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ...) -> None: ...

class GetInclusionProofRequest(_message.Message):
    __slots__ = ("index", "attestation_id", "tree_size")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_ID_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    index: int
    attestation_id: bytes
    tree_size: int
    def __init__(self, index: _Optional[int] = ..., attestation_id: _Optional[bytes] = ..., tree_size: _Optional[int] = ...) -> None: ...

class GetInclusionProofResponse(_message.Message):
    __slots__ = ("index", "tree_size", "leaf_hash", "path", "checkpoint", "tree_root")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    TREE_ROOT_FIELD_NUMBER: _ClassVar[int]
    index: int
    tree_size: int
    leaf_hash: bytes
    path: _containers.RepeatedScalarFieldContainer[bytes]
    checkpoint: Checkpoint
    tree_root: bytes
    def __init__(self, index: _Optional[int] = ..., tree_size: _Optional[int] = ..., leaf_hash: _Optional[bytes] = ..., path: _Optional[_Iterable[bytes]] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., tree_root: _Optional[bytes] = ...) -> None: ...

class GetConsistencyProofRequest(_message.Message):
    __slots__ = ("old_size", "new_size")
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEW_SIZE_FIELD_NUMBER: _ClassVar[int]
    old_size: int
    new_size: int
    def __init__(self, old_size: _Optional[int] = ..., new_size: _Optional[int] = ...) -> None: ...

class GetConsistencyProofResponse(_message.Message):
    __slots__ = ("old_size", "new_size", "proof", "old_root", "new_root")
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEW_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    OLD_ROOT_FIELD_NUMBER: _ClassVar[int]
    NEW_ROOT_FIELD_NUMBER: _ClassVar[int]
    old_size: int
    new_size: int
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    old_root: bytes
    new_root: bytes
    def __init__(self, old_size: _Optional[int] = ..., new_size: _Optional[int] = ..., proof: _Optional[_Iterable[bytes]] = ..., old_root: _Optional[bytes] = ..., new_root: _Optional[bytes] = ...) -> None: ...

class GetLogInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLogInfoResponse(_message.Message):
    __slots__ = ("log_did", "origin", "size", "verifier_key", "root_hash")
    LOG_DID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_KEY_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    log_did: str
    origin: str
    size: int
    verifier_key: str
    root_hash: bytes
    def __init__(self, log_did: _Optional[str] = ..., origin: _Optional[str] = ..., size: _Optional[int] = ..., verifier_key: _Optional[str] = ..., root_hash: _Optional[bytes] = ...) -> None: ...

class WatchEntriesRequest(_message.Message):
    __slots__ = ("start",)
    START_FIELD_NUMBER: _ClassVar[int]
    start: int
    def __init__(self, start: _Optional[int] = ...) -> None: ...

class ListEquivocationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: bytes
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[bytes] = ...) -> None: ...

class EquivocationEvidence(_message.Message):
    __slots__ = ("subject", "seq", "logged_index", "logged_envelope", "rejected_envelope")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LOGGED_INDEX_FIELD_NUMBER: _ClassVar[int]
    LOGGED_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    subject: str
    seq: int
    logged_index: int
    logged_envelope: bytes
    rejected_envelope: bytes
    def __init__(self, subject: _Optional[str] = ..., seq: _Optional[int] = ..., logged_index: _Optional[int] = ..., logged_envelope: _Optional[bytes] = ..., rejected_envelope: _Optional[bytes] = ...) -> None: ...

class ListEquivocationsResponse(_message.Message):
    __slots__ = ("evidence", "next_page_token")
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    evidence: _containers.RepeatedCompositeFieldContainer[EquivocationEvidence]
    next_page_token: bytes
    def __init__(self, evidence: _Optional[_Iterable[_Union[EquivocationEvidence, _Mapping]]] = ..., next_page_token: _Optional[bytes] = ...) -> None: ...
