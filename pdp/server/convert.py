"""Conversions between the generated wire types and the engine's plain Python objects.

Generated types stop here: the engine sees only ``pdp.policy`` dataclasses. Requests are
checked as they are converted; a fault is a RequestError naming the field.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from pdp.errors import RequestError
from pdp.policy import Action, Decision, Effect, Request, Resource, Subject
from pdp_client._proto import authorization_pb2 as pb

__all__ = ["EMPTY", "decision_to_pb", "request_parts", "struct_to_dict", "to_policy_request"]

EMPTY: dict[str, Any] = {}
MAX_ID_LENGTH = 1024  # subject ids, resource ids, action names, types


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A google.protobuf.Struct as a dict of str, float, bool, None, list and dict."""
    return {key: _value(value) for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    return None


def request_parts(
    item: pb.AuthorizeRequest, defaults: pb.AuthorizeRequest | None
) -> tuple[pb.Subject, pb.Action, pb.Resource, struct_pb2.Struct | None, str]:
    """The effective subject, action, resource, context and token of a (batch) item."""
    if defaults is None:
        return (item.subject, item.action, item.resource,
                item.context if item.HasField("context") else None, item.service_token)
    return (
        item.subject if item.HasField("subject") else defaults.subject,
        item.action if item.HasField("action") else defaults.action,
        item.resource if item.HasField("resource") else defaults.resource,
        item.context if item.HasField("context") else (
            defaults.context if defaults.HasField("context") else None),
        item.service_token or defaults.service_token,
    )


def _checked(value: str, field: str, *, required: bool) -> str:
    if required and not value:
        raise RequestError("is required", field=field)
    if len(value) > MAX_ID_LENGTH:
        raise RequestError(f"longer than {MAX_ID_LENGTH} characters", field=field)
    return value


def to_policy_request(
    subject: pb.Subject,
    action: pb.Action,
    resource: pb.Resource,
    context: struct_pb2.Struct | None,
    *,
    peer_ip: str | None,
    token_subject: str | None = None,
    where: str = "",
) -> Request:
    """Build the engine's Request; raise RequestError naming the missing or bad field.

    ``token_subject`` is the verified ``sub`` of a service token: it replaces the
    request's subject entirely (type "service", no properties), never merges with it.
    """
    if token_subject is not None:
        subj = Subject("service", token_subject, EMPTY)
    else:
        subj = Subject(
            _checked(subject.type, f"{where}subject.type", required=True),
            _checked(subject.id, f"{where}subject.id", required=True),
            struct_to_dict(subject.properties) if subject.HasField("properties") else EMPTY,
        )
    act = Action(
        _checked(action.name, f"{where}action.name", required=True),
        struct_to_dict(action.properties) if action.HasField("properties") else EMPTY,
    )
    res = Resource(
        _checked(resource.type, f"{where}resource.type", required=True),
        _checked(resource.id, f"{where}resource.id", required=False),
        struct_to_dict(resource.properties) if resource.HasField("properties") else EMPTY,
    )
    ctx = struct_to_dict(context) if context is not None else EMPTY
    return Request(subj, act, res, ctx, peer_ip)


_ALLOW = pb.DECISION_ALLOW
_DENY = pb.DECISION_DENY


def decision_to_pb(decision: Decision, decision_id: str) -> pb.AuthorizeResponse:
    """The wire response for an engine decision."""
    return pb.AuthorizeResponse(
        decision=_ALLOW if decision.effect is Effect.ALLOW else _DENY,
        rule_id=decision.rule_id,
        bundle_version=decision.bundle_version,
        reason=decision.reason,
        decision_id=decision_id,
        cached=decision.cached,
    )
