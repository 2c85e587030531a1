"""Conversions between the generated wire types and the engine's plain Python objects.

Generated types stop here: the engine sees only ``pdp.policy`` dataclasses. Requests are
checked as they are converted; a fault is a RequestError naming the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from google.protobuf import struct_pb2

from pdp.errors import RequestError
from pdp.events import DECISION_KEYS, DecisionDetails, Event, EventType, Severity
from pdp.policy import Action, Decision, Effect, Request, Resource, Subject
from pdp.server._wire import (
    batch_requests,
    decision_event,
    encode_answers,
    event_types,
    plain_request,
    request_types,
)
from pdp_client._proto import authorization_pb2 as pb

if TYPE_CHECKING:
    from pdp.server._wire import Decoded

__all__ = [
    "EMPTY",
    "Defaults",
    "convert_defaults",
    "decision_event",
    "decision_to_pb",
    "decoded_defaults",
    "decoded_request",
    "decoded_requests",
    "encode_batch",
    "encode_response",
    "register_event_types",
    "register_request_types",
    "service_token_of",
    "struct_to_dict",
    "to_policy_request",
]

EMPTY: dict[str, Any] = {}
MAX_ID_LENGTH = 1024  # subject ids, resource ids, action names, types


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A google.protobuf.Struct as a dict of str, float, bool, None, list and dict."""
    fields = struct.fields  # (keys then lookups: the map's items() view is pure Python, slower)
    return {key: _value(fields[key]) for key in fields}


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


class Defaults(NamedTuple):
    """A batch's shared defaults, converted once for every item that leaves a field unset.
    (A NamedTuple: built on every AuthorizeBatch call, a third of a frozen dataclass's cost.)"""

    subject: Subject | None
    action: Action | None
    resource: Resource | None
    context: Mapping[str, Any] | None
    service_token: str
    min_bundle_sequence: int


def convert_defaults(defaults: pb.AuthorizeRequest) -> Defaults:
    """Convert the fields ``defaults`` sets; raise RequestError naming ``defaults.<field>``."""
    where = "defaults."
    return Defaults(
        _subject(defaults.subject, where) if defaults.HasField("subject") else None,
        _action(defaults.action, where) if defaults.HasField("action") else None,
        _resource(defaults.resource, where) if defaults.HasField("resource") else None,
        struct_to_dict(defaults.context) if defaults.HasField("context") else None,
        defaults.service_token,
        defaults.min_bundle_sequence,
    )


def _checked(value: str, field: str, *, required: bool) -> str:
    if required and not value:
        raise RequestError("is required", field=field)
    if len(value) > MAX_ID_LENGTH:
        raise RequestError(f"longer than {MAX_ID_LENGTH} characters", field=field)
    return value


# The converters below run for every request: the common case (every field present and
# short) is one combined test, and an error's field name is only built when there is one.
# A request reaches them either parsed by protobuf (the ``pb`` messages) or decoded by
# pdp.server._wire (tuples of plain values); both go through the same checks.

def _subject_of(kind: str, ident: str, props: Mapping[str, Any] | None, where: str) -> Subject:
    if not kind or not ident or len(kind) > MAX_ID_LENGTH or len(ident) > MAX_ID_LENGTH:
        _checked(kind, f"{where}subject.type", required=True)
        _checked(ident, f"{where}subject.id", required=True)
    return Subject(kind, ident, EMPTY if props is None else props)


def _action_of(name: str, props: Mapping[str, Any] | None, where: str) -> Action:
    if not name or len(name) > MAX_ID_LENGTH:
        _checked(name, f"{where}action.name", required=True)
    return Action(name, EMPTY if props is None else props)


def _resource_of(kind: str, ident: str, props: Mapping[str, Any] | None, where: str) -> Resource:
    if not kind or len(kind) > MAX_ID_LENGTH or len(ident) > MAX_ID_LENGTH:
        _checked(kind, f"{where}resource.type", required=True)
        _checked(ident, f"{where}resource.id", required=False)
    return Resource(kind, ident, EMPTY if props is None else props)


def _subject(subject: pb.Subject, where: str) -> Subject:
    return _subject_of(subject.type, subject.id,
                       struct_to_dict(subject.properties) if subject.HasField("properties")
                       else None, where)


def _action(action: pb.Action, where: str) -> Action:
    return _action_of(action.name, struct_to_dict(action.properties)
                      if action.HasField("properties") else None, where)


def _resource(resource: pb.Resource, where: str) -> Resource:
    return _resource_of(resource.type, resource.id,
                        struct_to_dict(resource.properties) if resource.HasField("properties")
                        else None, where)


def service_token_of(item: pb.AuthorizeRequest, defaults: Defaults | None) -> str:
    """The item's service token, else the batch default's."""
    return item.service_token or (defaults.service_token if defaults is not None else "")


def to_policy_request(
    item: pb.AuthorizeRequest,
    defaults: Defaults | None,
    *,
    peer_ip: str | None,
    token_subject: str | None = None,
) -> Request:
    """Build the engine's Request; raise RequestError naming the missing or bad field.

    A field the item leaves unset comes from ``defaults`` (a batch). ``token_subject`` is
    the verified ``sub`` of a service token: it replaces the request's subject entirely
    (type "service", no properties), never merges with it.
    """
    if defaults is None:  # Authorize, and batch items without defaults
        return Request(
            Subject("service", token_subject, EMPTY) if token_subject is not None
            else _subject(item.subject, ""),
            _action(item.action, ""),
            _resource(item.resource, ""),
            struct_to_dict(item.context) if item.HasField("context") else EMPTY,
            peer_ip)
    if token_subject is not None:
        subj = Subject("service", token_subject, EMPTY)
    elif defaults.subject is not None and not item.HasField("subject"):
        subj = defaults.subject
    else:
        subj = _subject(item.subject, "")
    if defaults.action is not None and not item.HasField("action"):
        act = defaults.action
    else:
        act = _action(item.action, "")
    if defaults.resource is not None and not item.HasField("resource"):
        res = defaults.resource
    else:
        res = _resource(item.resource, "")
    if item.HasField("context"):
        ctx: Mapping[str, Any] = struct_to_dict(item.context)
    elif defaults.context is not None:
        ctx = defaults.context
    else:
        ctx = EMPTY
    return Request(subj, act, res, ctx, peer_ip)


# --- requests decoded by pdp.server._wire ----------------------------------------------------
# The same requests as above, from the C decoder's tuples (see _wire.pyi) instead of protobuf
# messages: a field left unset is None where the message's HasField would be False. Only
# requests without a service token are taken this way (the caller checks), so there is no
# token subject here.

# An unset Subject or Resource, and Action: their checks name what is missing.
_NO_ENTITY: tuple[str, str, None] = ("", "", None)
_NO_ACTION: tuple[str, None] = ("", None)


def decoded_defaults(decoded: Decoded) -> Defaults:
    """:func:`convert_defaults` for a decoded ``defaults``."""
    where = "defaults."
    subject, action, resource, context, token, _, sequence = decoded
    return Defaults(
        _subject_of(*subject, where) if subject is not None else None,
        _action_of(*action, where) if action is not None else None,
        _resource_of(*resource, where) if resource is not None else None,
        context, token, sequence)


def decoded_request(decoded: Decoded, defaults: Defaults | None, *,
                    peer_ip: str | None) -> Request:
    """:func:`to_policy_request` for a decoded request without a service token."""
    subject, action, resource, context = decoded[0], decoded[1], decoded[2], decoded[3]
    if defaults is None:  # Authorize, and batch items without defaults: the hot path
        # Built in C (pdp.server._wire.plain_request: 1.3 -> ~0.3 µs), unless a part is
        # absent or faulty; then as below: the converters inlined, called for the fault.
        built: Request | None = plain_request(decoded, EMPTY, peer_ip, MAX_ID_LENGTH)
        if built is not None:
            return built
        stype, sid, sprops = subject or _NO_ENTITY
        name, aprops = action or _NO_ACTION
        rtype, rid, rprops = resource or _NO_ENTITY
        if (not stype or not sid or not name or not rtype or len(stype) > MAX_ID_LENGTH
                or len(sid) > MAX_ID_LENGTH or len(name) > MAX_ID_LENGTH
                or len(rtype) > MAX_ID_LENGTH or len(rid) > MAX_ID_LENGTH):
            # A fault: raised by the converters, in their order, with their message.
            _subject_of(stype, sid, None, "")
            _action_of(name, None, "")
            _resource_of(rtype, rid, None, "")
        return Request(
            Subject(stype, sid, EMPTY if sprops is None else sprops),
            Action(name, EMPTY if aprops is None else aprops),
            Resource(rtype, rid, EMPTY if rprops is None else rprops),
            EMPTY if context is None else context,
            peer_ip)
    return Request(
        defaults.subject if subject is None and defaults.subject is not None
        else _subject_of(*(subject or _NO_ENTITY), ""),
        defaults.action if action is None and defaults.action is not None
        else _action_of(*(action or _NO_ACTION), ""),
        defaults.resource if resource is None and defaults.resource is not None
        else _resource_of(*(resource or _NO_ENTITY), ""),
        context if context is not None
        else defaults.context if defaults.context is not None else EMPTY,
        peer_ip)


def decoded_requests(items: list[Decoded], defaults: Defaults | None, *,
                     peer_ip: str | None) -> list[Request]:
    """:func:`decoded_request` of each item of a decoded batch; a fault names its item
    (``requests[3].resource.type``). The usual batch, whose items take subject and action
    from its defaults, is built in C (pdp.server._wire.batch_requests): 1.5 -> ~0.2 µs
    an item."""
    if defaults is not None:
        built = batch_requests(items, defaults.subject, defaults.action,
                               EMPTY if defaults.context is None else defaults.context,
                               EMPTY, peer_ip, MAX_ID_LENGTH)
        if built is not None:
            return built
    requests = []
    for i, item in enumerate(items):  # another shape, or a fault to raise
        try:
            requests.append(decoded_request(item, defaults, peer_ip=peer_ip))
        except RequestError as exc:
            raise RequestError(exc.message, field=f"requests[{i}].{exc.field}") from None
    return requests


def register_request_types(subject: type = Subject, action: type = Action,
                           resource: type = Resource, request: type = Request) -> None:
    """Give plain_request and batch_requests the classes they build (the engine's). They
    set their fields as their __init__ does, so each must be a plain slotted dataclass:
    every field set by __init__, in order, and nothing else run (no __post_init__);
    TypeError otherwise."""
    classes = (subject, action, resource, request)
    names = [_plain_fields(cls) for cls in classes]
    request_types(subject, names[0], action, names[1], resource, names[2], request, names[3])


def register_event_types(event: type = Event) -> None:
    """Give decision_event (pdp.server._wire's: what pdp.events.decision_event builds,
    without a Python call) the Event class it builds, a plain slotted dataclass as
    register_request_types requires, what a decision event holds, and the Decision class
    whose fields it reads (as it reads the Request classes register_request_types gave)."""
    if DECISION_KEYS != ("subject", "subject_type", "action", "resource_type", "resource_id",
                         "rule_id", "bundle_version", "reason", "cached", "decision_id"):
        raise TypeError("decision_event builds the details row in another order")
    if _plain_fields(Decision) != ("effect", "rule_id", "reason", "bundle_version", "cached"):
        raise TypeError("decision_event reads Decision's fields in another order")
    event_types(event, _plain_fields(event), DecisionDetails, ("row",), EventType.DECISION,
                Severity.INFO, Effect.ALLOW, "allow", "deny", Decision, _plain_fields(Decision))


def _plain_fields(cls: type) -> tuple[str, ...]:
    """The fields of ``cls``, a slotted dataclass whose __init__ sets each of them, in order,
    and runs nothing else; TypeError otherwise."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.init or "__slots__" not in vars(cls) or any(
            hasattr(c, "__post_init__") for c in cls.__mro__) or not all(
            f.init for f in dataclasses.fields(cls)):
        raise TypeError(f"{cls.__name__} is not a plain slotted dataclass")
    return tuple(f.name for f in dataclasses.fields(cls))


register_request_types()
register_event_types()

_ALLOW = pb.DECISION_ALLOW
_DENY = pb.DECISION_DENY


def decision_to_pb(decision: Decision, decision_id: str) -> pb.AuthorizeResponse:
    """The wire response for an engine decision, as a message (explained answers, which add
    their rule trace; the others are encoded by hand: :func:`encode_response`)."""
    return pb.AuthorizeResponse(
        decision=_ALLOW if decision.effect is Effect.ALLOW else _DENY,
        rule_id=decision.rule_id,
        bundle_version=decision.bundle_version,
        reason=decision.reason,
        decision_id=decision_id,
        cached=decision.cached,
    )


# --- answers encoded by hand -----------------------------------------------------------------
# An AuthorizeResponse is a handful of fields, most of which repeat from call to call (the
# decision, its rule, bundle version and reason); only the decision id is new each time.
# Building a message and serializing it cost ~1.2 µs a decision on the hot path. Here the
# bytes of the repeating fields are kept per decision object (the engine answers with one
# object per rule), and pdp.server._wire.encode_answers (C) joins them with each decision
# id: for a batch of 100, 0.93 -> ~0.1 µs a decision. The bytes are the ones
# SerializeToString gives (tests/server/test_answer_encoding.py holds them to it). Field
# numbers: proto/pdp/v1/authorization.proto.

_DECISION_ALLOW = b"\x08\x01"  # field 1 (decision), varint 1; DENY (0) is left out
_CACHED = b"\x30\x01"  # field 6 (cached), true; false is left out
# Fields 1-4 by what they say, and each decision object's entry for the encoder:
# id(decision) -> (decision, its fields 1-4, its field 6). An entry keeps its decision
# alive, so an id found here is that decision's (the encoder checks the object too).
# Decisions made per call (a quarantine, an evaluation error, a refused audit) each add an
# entry; their bytes still come from _HEADS, so a clear costs a lookup per decision.
_HEADS: dict[tuple[bool, str, str, str], bytes] = {}
_ENTRIES: dict[int, tuple[Decision, bytes, bytes]] = {}
_MAX_ENTRIES = 4096  # each memo: reasons may quote an evaluation error, so bounded


def _text(tag: int, text: str) -> bytes:
    """A length-delimited string field; nothing for the empty string (proto3)."""
    if not text:
        return b""
    data = text.encode()
    return bytes((tag,)) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _entry(decision: Decision) -> tuple[Decision, bytes, bytes]:
    """The encoder's entry for ``decision``, made and kept (see _ENTRIES)."""
    key = (decision.effect is Effect.ALLOW, decision.rule_id, decision.bundle_version,
           decision.reason)
    head = _HEADS.get(key)
    if head is None:
        head = ((_DECISION_ALLOW if key[0] else b"") + _text(0x12, decision.rule_id)
                + _text(0x1A, decision.bundle_version) + _text(0x22, decision.reason))
        if len(_HEADS) >= _MAX_ENTRIES:
            _HEADS.clear()  # old bundles' and one-off reasons; rebuilt on demand
        _HEADS[key] = head
    entry = (decision, head, _CACHED if decision.cached else b"")
    if len(_ENTRIES) >= _MAX_ENTRIES:
        _ENTRIES.clear()  # old bundles' decisions and one-off ones; rebuilt on demand
    _ENTRIES[id(decision)] = entry
    return entry


def encode_response(decision: Decision, decision_id: str) -> bytes:
    """The serialized AuthorizeResponse for an engine decision (no explanation)."""
    return encode_answers([decision], [decision_id], _ENTRIES, _entry, False)


def encode_batch(decisions: list[Decision], decision_ids: list[str]) -> bytes:
    """The serialized AuthorizeBatchResponse of these decisions and their ids, in order."""
    return encode_answers(decisions, decision_ids, _ENTRIES, _entry, True)
