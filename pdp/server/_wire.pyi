"""Types of the C request decoder and answer encoder (pdp/server/_wire.c)."""

from collections.abc import Callable
from typing import Any, TypeAlias

Entity: TypeAlias = tuple[str, str, dict[str, Any] | None]  # Subject, Resource: type, id, props
Named: TypeAlias = tuple[str, dict[str, Any] | None]  # Action: name, properties
# subject, action, resource, context, service_token, explain, min_bundle_sequence
Decoded: TypeAlias = tuple[
    Entity | None, Named | None, Entity | None, dict[str, Any] | None, str, bool, int
]

def decode_request(data: bytes, /) -> Decoded | None: ...
def decode_batch(data: bytes, /) -> tuple[Decoded | None, list[Decoded]] | None: ...

Entry: TypeAlias = tuple[Any, bytes, bytes]  # a Decision, its fields 1-4, its field 6

def encode_answers(decisions: list[Any], ids: list[str], entries: dict[int, Entry],
                   entry_of: Callable[[Any], Entry], framed: bool, /) -> bytes: ...

def request_types(subject: type, subject_fields: tuple[str, ...], action: type,
                  action_fields: tuple[str, ...], resource: type,
                  resource_fields: tuple[str, ...], request: type,
                  request_fields: tuple[str, ...], /) -> None: ...
def plain_request(decoded: Decoded, empty: Any, peer_ip: str | None, max_length: int, /
                  ) -> Any | None: ...
def batch_requests(items: list[Decoded], subject: Any, action: Any, context: Any, empty: Any,
                   peer_ip: str | None, max_length: int, /) -> list[Any] | None: ...

def event_types(event: type, event_fields: tuple[str, ...], details: type,
                details_fields: tuple[str, ...], decision: Any, info: Any, allow: Any,
                allowed: str, denied: str, decision_class: type,
                decision_fields: tuple[str, ...], /) -> None: ...
def decision_event(request: Any, decision: Any, decision_id: str, actor: str, peer: str,
                   time: float, /) -> Any: ...
