# mypy: ignore-errors
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_DENY: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
DECISION_DENY: Decision
DECISION_ALLOW: Decision

class Subject(_message.Message):
    __slots__ = ("type", "id", "properties")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    type: str
    id: str
    properties: _struct_pb2.Struct
    def __init__(self, type: _Optional[str] = ..., id: _Optional[str] = ..., properties: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("name", "properties")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    properties: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., properties: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("type", "id", "properties")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    type: str
    id: str
    properties: _struct_pb2.Struct
    def __init__(self, type: _Optional[str] = ..., id: _Optional[str] = ..., properties: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class AuthorizeRequest(_message.Message):
    __slots__ = ("subject", "action", "resource", "context", "service_token", "explain", "min_bundle_sequence")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    MIN_BUNDLE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    subject: Subject
    action: Action
    resource: Resource
    context: _struct_pb2.Struct
    service_token: str
    explain: bool
    min_bundle_sequence: int
    def __init__(self, subject: _Optional[_Union[Subject, _Mapping]] = ..., action: _Optional[_Union[Action, _Mapping]] = ..., resource: _Optional[_Union[Resource, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., service_token: _Optional[str] = ..., explain: _Optional[bool] = ..., min_bundle_sequence: _Optional[int] = ...) -> None: ...

class RuleTrace(_message.Message):
    __slots__ = ("rule_id", "effect", "matched", "failed_part", "detail")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    FAILED_PART_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    effect: str
    matched: bool
    failed_part: str
    detail: str
    def __init__(self, rule_id: _Optional[str] = ..., effect: _Optional[str] = ..., matched: _Optional[bool] = ..., failed_part: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("decision", "rule_id", "bundle_version", "reason", "decision_id", "cached", "explanation")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    rule_id: str
    bundle_version: str
    reason: str
    decision_id: str
    cached: bool
    explanation: _containers.RepeatedCompositeFieldContainer[RuleTrace]
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., rule_id: _Optional[str] = ..., bundle_version: _Optional[str] = ..., reason: _Optional[str] = ..., decision_id: _Optional[str] = ..., cached: _Optional[bool] = ..., explanation: _Optional[_Iterable[_Union[RuleTrace, _Mapping]]] = ...) -> None: ...

class AuthorizeBatchRequest(_message.Message):
    __slots__ = ("defaults", "requests")
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    defaults: AuthorizeRequest
    requests: _containers.RepeatedCompositeFieldContainer[AuthorizeRequest]
    def __init__(self, defaults: _Optional[_Union[AuthorizeRequest, _Mapping]] = ..., requests: _Optional[_Iterable[_Union[AuthorizeRequest, _Mapping]]] = ...) -> None: ...

class AuthorizeBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[AuthorizeResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[AuthorizeResponse, _Mapping]]] = ...) -> None: ...
