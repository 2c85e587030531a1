"""Types of the C request decoder (pdp/server/_wire.c)."""

from typing import Any, TypeAlias

Entity: TypeAlias = tuple[str, str, dict[str, Any] | None]  # Subject, Resource: type, id, props
Named: TypeAlias = tuple[str, dict[str, Any] | None]  # Action: name, properties
# subject, action, resource, context, service_token, explain, min_bundle_sequence
Decoded: TypeAlias = tuple[
    Entity | None, Named | None, Entity | None, dict[str, Any] | None, str, bool, int
]

def decode_request(data: bytes, /) -> Decoded | None: ...
def decode_batch(data: bytes, /) -> tuple[Decoded | None, list[Decoded]] | None: ...
