# mypy: ignore-errors
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BundleInfo(_message.Message):
    __slots__ = ("version", "sequence", "digest", "pushed_by", "pushed_at", "active", "shadow", "name", "revision", "key_id", "rule_count")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PUSHED_BY_FIELD_NUMBER: _ClassVar[int]
    PUSHED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_COUNT_FIELD_NUMBER: _ClassVar[int]
    version: str
    sequence: int
    digest: str
    pushed_by: str
    pushed_at: int
    active: bool
    shadow: bool
    name: str
    revision: str
    key_id: str
    rule_count: int
    def __init__(self, version: _Optional[str] = ..., sequence: _Optional[int] = ..., digest: _Optional[str] = ..., pushed_by: _Optional[str] = ..., pushed_at: _Optional[int] = ..., active: _Optional[bool] = ..., shadow: _Optional[bool] = ..., name: _Optional[str] = ..., revision: _Optional[str] = ..., key_id: _Optional[str] = ..., rule_count: _Optional[int] = ...) -> None: ...

class PushBundleRequest(_message.Message):
    __slots__ = ("bundle", "signature", "key_id", "activate")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    bundle: bytes
    signature: bytes
    key_id: str
    activate: bool
    def __init__(self, bundle: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., key_id: _Optional[str] = ..., activate: _Optional[bool] = ...) -> None: ...

class PushBundleResponse(_message.Message):
    __slots__ = ("bundle", "activated")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    bundle: BundleInfo
    activated: bool
    def __init__(self, bundle: _Optional[_Union[BundleInfo, _Mapping]] = ..., activated: _Optional[bool] = ...) -> None: ...

class ListBundlesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBundlesResponse(_message.Message):
    __slots__ = ("bundles",)
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[BundleInfo]
    def __init__(self, bundles: _Optional[_Iterable[_Union[BundleInfo, _Mapping]]] = ...) -> None: ...

class GetBundleRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class GetBundleResponse(_message.Message):
    __slots__ = ("info", "bundle", "signature")
    INFO_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    info: BundleInfo
    bundle: bytes
    signature: bytes
    def __init__(self, info: _Optional[_Union[BundleInfo, _Mapping]] = ..., bundle: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ActivateBundleRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class ActivateBundleResponse(_message.Message):
    __slots__ = ("bundle",)
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle: BundleInfo
    def __init__(self, bundle: _Optional[_Union[BundleInfo, _Mapping]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("bundle",)
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle: BundleInfo
    def __init__(self, bundle: _Optional[_Union[BundleInfo, _Mapping]] = ...) -> None: ...

class CacheStats(_message.Message):
    __slots__ = ("hits", "misses", "size", "max_size")
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    hits: int
    misses: int
    size: int
    max_size: int
    def __init__(self, hits: _Optional[int] = ..., misses: _Optional[int] = ..., size: _Optional[int] = ..., max_size: _Optional[int] = ...) -> None: ...

class CertificateStatus(_message.Message):
    __slots__ = ("name", "subject", "spiffe_id", "serial", "not_after", "days_left")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    DAYS_LEFT_FIELD_NUMBER: _ClassVar[int]
    name: str
    subject: str
    spiffe_id: str
    serial: str
    not_after: int
    days_left: float
    def __init__(self, name: _Optional[str] = ..., subject: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., serial: _Optional[str] = ..., not_after: _Optional[int] = ..., days_left: _Optional[float] = ...) -> None: ...

class AuditStatus(_message.Message):
    __slots__ = ("healthy", "queue_depth", "dropped", "error")
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    healthy: bool
    queue_depth: int
    dropped: int
    error: str
    def __init__(self, healthy: _Optional[bool] = ..., queue_depth: _Optional[int] = ..., dropped: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ShadowReport(_message.Message):
    __slots__ = ("version", "evaluated", "agreed", "agreement_rate", "top_differences")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_FIELD_NUMBER: _ClassVar[int]
    AGREED_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_RATE_FIELD_NUMBER: _ClassVar[int]
    TOP_DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    version: str
    evaluated: int
    agreed: int
    agreement_rate: float
    top_differences: _containers.RepeatedCompositeFieldContainer[ShadowDifference]
    def __init__(self, version: _Optional[str] = ..., evaluated: _Optional[int] = ..., agreed: _Optional[int] = ..., agreement_rate: _Optional[float] = ..., top_differences: _Optional[_Iterable[_Union[ShadowDifference, _Mapping]]] = ...) -> None: ...

class ShadowDifference(_message.Message):
    __slots__ = ("active_rule_id", "shadow_rule_id", "active_decision", "shadow_decision", "count", "sample_request_json")
    ACTIVE_RULE_ID_FIELD_NUMBER: _ClassVar[int]
    SHADOW_RULE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_DECISION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_DECISION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_REQUEST_JSON_FIELD_NUMBER: _ClassVar[int]
    active_rule_id: str
    shadow_rule_id: str
    active_decision: str
    shadow_decision: str
    count: int
    sample_request_json: str
    def __init__(self, active_rule_id: _Optional[str] = ..., shadow_rule_id: _Optional[str] = ..., active_decision: _Optional[str] = ..., shadow_decision: _Optional[str] = ..., count: _Optional[int] = ..., sample_request_json: _Optional[str] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("active_version", "active_sequence", "serving", "cache", "certificates", "audit", "evaluation_errors", "shadow", "replica_id", "started_at")
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ERRORS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    active_version: str
    active_sequence: int
    serving: bool
    cache: CacheStats
    certificates: _containers.RepeatedCompositeFieldContainer[CertificateStatus]
    audit: AuditStatus
    evaluation_errors: int
    shadow: ShadowReport
    replica_id: str
    started_at: int
    def __init__(self, active_version: _Optional[str] = ..., active_sequence: _Optional[int] = ..., serving: _Optional[bool] = ..., cache: _Optional[_Union[CacheStats, _Mapping]] = ..., certificates: _Optional[_Iterable[_Union[CertificateStatus, _Mapping]]] = ..., audit: _Optional[_Union[AuditStatus, _Mapping]] = ..., evaluation_errors: _Optional[int] = ..., shadow: _Optional[_Union[ShadowReport, _Mapping]] = ..., replica_id: _Optional[str] = ..., started_at: _Optional[int] = ...) -> None: ...

class QuarantineEntry(_message.Message):
    __slots__ = ("subject", "until", "reason", "by")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    subject: str
    until: int
    reason: str
    by: str
    def __init__(self, subject: _Optional[str] = ..., until: _Optional[int] = ..., reason: _Optional[str] = ..., by: _Optional[str] = ...) -> None: ...

class ListQuarantineRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListQuarantineResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[QuarantineEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[QuarantineEntry, _Mapping]]] = ...) -> None: ...

class QuarantineRequest(_message.Message):
    __slots__ = ("subject", "ttl_seconds", "reason")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    subject: str
    ttl_seconds: int
    reason: str
    def __init__(self, subject: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class QuarantineResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: QuarantineEntry
    def __init__(self, entry: _Optional[_Union[QuarantineEntry, _Mapping]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("subject",)
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    def __init__(self, subject: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class SetShadowRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class SetShadowResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...
