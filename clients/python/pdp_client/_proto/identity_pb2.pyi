# mypy: ignore-errors
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class IssueServiceTokenRequest(_message.Message):
    __slots__ = ("audience", "ttl_seconds")
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    audience: str
    ttl_seconds: int
    def __init__(self, audience: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class IssueServiceTokenResponse(_message.Message):
    __slots__ = ("token", "expires_at", "key_id", "jti")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: int
    key_id: str
    jti: str
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[int] = ..., key_id: _Optional[str] = ..., jti: _Optional[str] = ...) -> None: ...

class GetKeySetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetKeySetResponse(_message.Message):
    __slots__ = ("jwks_json",)
    JWKS_JSON_FIELD_NUMBER: _ClassVar[int]
    jwks_json: str
    def __init__(self, jwks_json: _Optional[str] = ...) -> None: ...
