"""The C request decoder (pdp/server/_wire.c) against protobuf, the reference.

For every input the decoder either answers None (protobuf then parses the bytes, as it did
before the decoder existed) or its answer converts into exactly the Request protobuf's
parse converts into, with the same token, explain flag and bundle sequence, or fails with
the same RequestError. It never accepts bytes protobuf refuses. Held on generated requests
and batches, on random mutations of their bytes, and on the shapes it leaves to protobuf.
The Requests built from decoded values in C (plain_request for a request, batch_requests
for a batch of the usual shape) are held to protobuf's and to the Python conversion.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
import struct
import types
from typing import Any, NamedTuple

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdp import events
from pdp.errors import RequestError
from pdp.events import Event
from pdp.policy import Action, Decision, Effect, Request, Resource, Subject
from pdp.server._wire import (
    batch_requests,
    decode_batch,
    decode_request,
    event_types,
    plain_request,
    request_types,
)
from pdp.server._wire import decision_event as c_decision_event
from pdp.server.convert import (
    convert_defaults,
    decoded_defaults,
    decoded_request,
    decoded_requests,
    register_event_types,
    register_request_types,
    to_policy_request,
)
from pdp_client._proto import authorization_pb2 as pb
from tests.server.conftest import Harness, authorize_request

IP = "10.1.2.3"

# --- generated requests ----------------------------------------------------------------------

_texts = st.one_of(st.sampled_from(["", "user", "alice", "doc", "read", "é", "x" * 200]),
                   st.text(max_size=40), st.text(min_size=120, max_size=300))
_leaf = st.one_of(st.none(), st.booleans(), st.text(max_size=20),
                  st.floats(allow_nan=False), st.integers(-2**53, 2**53).map(float))
_values = st.recursive(
    _leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
_structs = st.dictionaries(st.text(max_size=12), _values, max_size=5)


@st.composite
def requests(draw: Any) -> pb.AuthorizeRequest:
    """Any AuthorizeRequest: every field set or not, texts of any length and script."""
    message = pb.AuthorizeRequest()
    if draw(st.booleans()):
        message.subject.type, message.subject.id = draw(_texts), draw(_texts)
        message.subject.SetInParent()
        if draw(st.booleans()):
            message.subject.properties.update(draw(_structs))
    if draw(st.booleans()):
        message.action.name = draw(_texts)
        message.action.SetInParent()
        if draw(st.booleans()):
            message.action.properties.update(draw(_structs))
    if draw(st.booleans()):
        message.resource.type, message.resource.id = draw(_texts), draw(_texts)
        message.resource.SetInParent()
        if draw(st.booleans()):
            message.resource.properties.update(draw(_structs))
    if draw(st.booleans()):
        message.context.update(draw(_structs))
        message.context.SetInParent()
    message.service_token = draw(st.sampled_from(["", "", "eyJhbGciOi.x.y"]))
    message.explain = draw(st.booleans())
    message.min_bundle_sequence = draw(st.sampled_from([0, 1, 127, 128, 2**63, 2**64 - 1]))
    return message


class Refused(NamedTuple):
    """A conversion's RequestError."""

    message: str
    field: str


def _converted(convert: Any) -> Any:
    """What a conversion gives: its Request (or Defaults), or Refused."""
    try:
        return convert()
    except RequestError as exc:
        return Refused(exc.message, exc.field or "")


def _readings(decoded: Any, parse: Any, data: bytes) -> Any:
    """Protobuf's reading of ``data`` when the decoder also read it (else None, after
    checking that the decoder took nothing protobuf refuses)."""
    try:
        message = parse(data)
    except DecodeError:
        assert decoded is None, f"decoded bytes protobuf refuses: {data!r}"
        return None
    return None if decoded is None else message


def assert_same_request(data: bytes) -> bool:
    """The decoder's reading of ``data`` is protobuf's, or the decoder leaves it to protobuf
    (and never takes bytes protobuf refuses). True when both read it and were compared."""
    decoded = decode_request(data)
    message = _readings(decoded, pb.AuthorizeRequest.FromString, data)
    if message is None:
        return False
    assert decoded is not None
    assert decoded[4:] == (message.service_token, message.explain,
                           message.min_bundle_sequence)
    converted = _converted(lambda: decoded_request(decoded, None, peer_ip=IP))
    assert converted == _converted(lambda: to_policy_request(message, None, peer_ip=IP))
    if type(converted) is not Refused:  # built in C (plain_request): the engine's classes
        assert [type(converted), type(converted.subject), type(converted.action),
                type(converted.resource)] == [Request, Subject, Action, Resource]
    return True


def assert_same_batch(data: bytes) -> bool:
    """As assert_same_request, for an AuthorizeBatchRequest: defaults and every item."""
    decoded = decode_batch(data)
    message = _readings(decoded, pb.AuthorizeBatchRequest.FromString, data)
    if message is None:
        return False
    assert decoded is not None
    head, items = decoded
    assert (head is None) is not message.HasField("defaults")
    defaults = None
    if head is not None:
        defaults = _converted(lambda: decoded_defaults(head))
        assert defaults == _converted(lambda: convert_defaults(message.defaults))
        if type(defaults) is Refused:  # both refused the defaults alike
            return True
    assert len(items) == len(message.requests)
    for item, reference in zip(items, message.requests, strict=True):
        assert item[4:] == (reference.service_token, reference.explain,
                            reference.min_bundle_sequence)
        assert (_converted(lambda i=item: decoded_request(i, defaults, peer_ip=IP))
                == _converted(lambda r=reference: to_policy_request(r, defaults, peer_ip=IP)))
    assert_same_requests(items, defaults)
    return True


def assert_same_requests(items: list[Any], defaults: Any) -> None:
    """decoded_requests (in C for the usual shape) gives each item's decoded_request, the
    very objects it holds, or the first item's fault, named by its item."""
    expected: Any = []
    for i, item in enumerate(items):
        made = _converted(lambda i=item: decoded_request(i, defaults, peer_ip=IP))
        if type(made) is Refused:
            expected = Refused(made.message, f"requests[{i}].{made.field}")
            break
        expected.append(made)
    actual = _converted(lambda: decoded_requests(items, defaults, peer_ip=IP))
    assert actual == expected
    if type(actual) is list:
        for got, want, item in zip(actual, expected, items, strict=True):
            assert type(got) is Request and type(got.resource) is Resource
            # What comes from the defaults or the decoded item is passed on as it is.
            assert got.context is want.context
            assert got.resource.properties is want.resource.properties
            if item[0] is None:
                assert got.subject is defaults.subject
            if item[1] is None:
                assert got.action is defaults.action


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_a_generated_request_decodes_to_what_protobuf_reads(message: pb.AuthorizeRequest) -> None:
    data = message.SerializeToString()
    assert decode_request(data) is not None  # a well-formed request is never left over
    assert assert_same_request(data)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.none(), requests()), st.lists(requests(), max_size=5))
def test_a_generated_batch_decodes_to_what_protobuf_reads(
        defaults: pb.AuthorizeRequest | None, items: list[pb.AuthorizeRequest]) -> None:
    batch = pb.AuthorizeBatchRequest(requests=items)
    if defaults is not None:
        batch.defaults.CopyFrom(defaults)
    data = batch.SerializeToString()
    assert decode_batch(data) is not None
    assert assert_same_batch(data)


@st.composite
def usual_batches(draw: Any) -> pb.AuthorizeBatchRequest:
    """Batches of the usual shape (the defaults hold subject and action, the items a
    resource), with faults among them: empty or long types and ids, a missing resource,
    an item with its own subject or action, defaults without one."""
    message = pb.AuthorizeBatchRequest()
    defaults = message.defaults
    if draw(st.integers(0, 9)):
        defaults.subject.type, defaults.subject.id = draw(_texts), draw(_texts)
        defaults.subject.SetInParent()
    if draw(st.integers(0, 9)):
        defaults.action.name = draw(_texts)
        defaults.action.SetInParent()
    if draw(st.booleans()):
        defaults.context.update(draw(_structs))
        defaults.context.SetInParent()
    if not draw(st.integers(0, 4)):
        defaults.resource.type, defaults.resource.id = "doc", "default"
        defaults.resource.SetInParent()
    defaults.SetInParent()
    edges = st.sampled_from(["x" * 1024, "é" * 1024, "x" * 1025, "é" * 1025])  # the limit
    kinds = st.one_of(st.sampled_from(["doc", "doc", "img", ""]), _texts, edges)
    ids = st.one_of(_texts, edges)
    for _ in range(draw(st.integers(0, 6))):
        item = message.requests.add()
        shape = draw(st.integers(0, 19))
        if shape == 0:
            item.subject.type, item.subject.id = "user", "bob"
        elif shape == 1:
            item.action.name = "read"
        if shape != 2:
            item.resource.type, item.resource.id = draw(kinds), draw(ids)
            item.resource.SetInParent()
            if draw(st.booleans()):
                item.resource.properties.update(draw(_structs))
        if draw(st.integers(0, 3)) == 0:
            item.context.update(draw(_structs))
            item.context.SetInParent()
    return message


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(usual_batches())
def test_a_usual_batch_builds_the_requests_python_builds(message: pb.AuthorizeBatchRequest
                                                         ) -> None:
    """Items that take subject and action from the defaults are built in C
    (pdp.server._wire.batch_requests): the Requests decoded_request builds, holding the
    same objects, or the first fault, named by its item, raised by the Python path."""
    assert assert_same_batch(message.SerializeToString())


def test_the_requests_built_in_c_are_left_out_of_the_cycle_collector() -> None:
    """What plain_request and batch_requests make is not tracked by the cycle collector (see
    made() in _wire.c); what it holds, and what the Python path makes, still is."""
    props = {"owner": {"name": "alice"}}  # tracked: it holds a dict
    single = pb.AuthorizeRequest(subject=pb.Subject(type="user", id="alice"),
                                 action=pb.Action(name="read"),
                                 resource=pb.Resource(type="doc", id="1"))
    single.resource.properties.update(props)
    raw = single.SerializeToString()
    built = decoded_request(decode_request(raw), None, peer_ip=IP)
    for part in (built, built.subject, built.action, built.resource):
        assert not gc.is_tracked(part)
    assert gc.is_tracked(built.resource.properties)
    batch = pb.AuthorizeBatchRequest(defaults=pb.AuthorizeRequest(subject=single.subject,
                                                                  action=single.action),
                                     requests=[pb.AuthorizeRequest(resource=single.resource)] * 3)
    head, items = decode_batch(batch.SerializeToString())
    defaults = decoded_defaults(head)
    requests = decoded_requests(items, defaults, peer_ip=IP)
    assert len(requests) == 3 and gc.is_tracked(defaults.subject)  # made in Python
    for request in requests:
        assert not gc.is_tracked(request) and not gc.is_tracked(request.resource)
        assert request.subject is defaults.subject
    reference = to_policy_request(single, None, peer_ip=IP)
    assert gc.is_tracked(reference) and reference == built
    gc.collect()
    assert built == reference and requests[0].resource.properties == props


def test_the_c_builders_refuse_what_they_cannot_build() -> None:
    """plain_request and batch_requests answer None for what the Python path must refuse or
    build (absent or faulty parts, a batch without default subject or action), and refuse
    wrong arguments and classes that are not plain slotted classes with those fields."""
    item = (None, None, ("doc", "d1", None), None, "", False, 0)
    subject, action = decoded_defaults((("user", "alice", None), ("read", None), None, None,
                                        "", False, 0))[:2]
    assert batch_requests([item], None, action, {}, {}, IP, 1024) is None
    assert batch_requests([item], subject, None, {}, {}, IP, 1024) is None
    assert batch_requests([item], subject, action, {}, {}, IP, 1) is None  # "doc" too long
    (made,) = batch_requests([item], subject, action, {}, {}, None, 1024) or []
    assert made == Request(subject, action, Resource("doc", "d1", {}), {}, None)
    whole = (("user", "alice", None), ("read", None), ("doc", "", None), None, "", False, 0)
    assert plain_request(whole, {}, IP, 1024) == Request(
        Subject("user", "alice", {}), Action("read", {}), Resource("doc", "", {}), {}, IP)
    for part, faulty in ((0, None), (0, ("", "alice", None)), (0, ("user", "", None)),
                         (1, ("", None)), (2, ("", "d1", None)), (2, ("doc", "x" * 5, None))):
        broken = list(whole)
        broken[part] = faulty
        assert plain_request(tuple(broken), {}, IP, 4) is None, broken
    with pytest.raises(TypeError, match="batch_requests"):
        batch_requests((item,), subject, action, {}, {}, IP, 1024)
    with pytest.raises(TypeError, match="plain_request"):
        plain_request(whole[:6], {}, IP, 1024)

    class Plain:  # attributes, not slots
        type = id = properties = None

    class Derived(Resource):  # slots, but its base's
        __slots__ = ()

    engine = (Subject, ("type", "id", "properties"), Action, ("name", "properties"),
              Resource, ("type", "id", "properties"), Request,
              ("subject", "action", "resource", "context", "peer_ip"))
    for at, bad, match in ((5, ("type", "id", "nope"), "not a slot"),
                           (5, ("type", "id"), "a class and a tuple"),
                           (4, Plain, "not a slot"), (4, Derived, "not a slot"),
                           (6, Plain, "not a slot")):  # the first three classes not kept
        args = list(engine)
        args[at] = bad
        with pytest.raises(TypeError, match=match):
            request_types(*args)

    @dataclasses.dataclass(slots=True)
    class Checked:  # __init__ would run more than the slots' setting
        type: str
        id: str
        properties: Any

        def __post_init__(self) -> None:
            raise AssertionError

    @dataclasses.dataclass
    class Unslotted:
        type: str
        id: str
        properties: Any

    @dataclasses.dataclass(slots=True)
    class Derived2(Resource):  # a field __init__ does not set
        extra: str = dataclasses.field(default="", init=False)

    for cls in (Checked, Unslotted, Derived2, Plain):
        with pytest.raises(TypeError, match="not a plain slotted dataclass"):
            register_request_types(Subject, Action, cls, Request)
    # A refused registration leaves the classes registered before it in place.
    assert batch_requests([item], subject, action, {}, {}, None, 1024) == [made]


def _mutations(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one to three random byte flips, insertions, deletions or a cut."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(4)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out and at < len(out):
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at:at] = bytes([rng.randrange(256)])
        elif kind == 2 and at < len(out):
            del out[at]
        else:
            del out[at:]
    return bytes(out)


def test_random_mutations_of_real_requests_are_read_as_protobuf_reads_them() -> None:
    rng = random.Random(20261128)  # fixed: a failure names its input and reproduces
    single = authorize_request("alice", "read", "doc-1", resource_props={
        "owner": "alice", "size": 3.5, "tags": ["a", "é"], "meta": {"ok": True, "n": None}})
    single.context.update({"source": {"ip": "10.0.0.1"}})
    single.min_bundle_sequence = 300
    batch = pb.AuthorizeBatchRequest()
    batch.defaults.subject.type, batch.defaults.subject.id = "user", "bob"
    batch.defaults.action.name = "write"
    for i in range(3):
        item = batch.requests.add()
        item.resource.type, item.resource.id = "doc", f"d{i}"
        item.resource.properties.update({"owner": "bob", "level": i})
    one, many = single.SerializeToString(), batch.SerializeToString()
    compared = 0
    for _ in range(4000):
        mutated = _mutations(one, rng)
        compared += assert_same_request(mutated)
        assert_same_batch(mutated)
        compared += assert_same_batch(_mutations(many, rng))
    assert compared > 200  # the mutations did reach the decoder's own reading, not only None


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_read_as_protobuf_reads_them(data: bytes) -> None:
    assert_same_request(data)
    assert_same_batch(data)


# --- what the decoder leaves to protobuf ------------------------------------------------------

def _request_bytes() -> bytes:
    return authorize_request("alice", "read", "doc-1", resource_props={"owner": "alice"}) \
        .SerializeToString()


@pytest.mark.parametrize(("what", "data"), [
    ("an unknown field", _request_bytes() + b"\x78\x01"),  # field 15, varint
    ("a field given twice", _request_bytes() + b"\x12\x06\x0a\x04read"),
    ("a known field with another wire type", b"\x08\x01" + _request_bytes()),
    ("properties given twice (protobuf merges them)",
     b"\x1a\x1f\x0a\x03doc\x1a\x0b\x0a\x09\x0a\x01a\x12\x04\x1a\x02v1"
     b"\x1a\x0b\x0a\x09\x0a\x01b\x12\x04\x1a\x02v2"),
    ("a 10-byte varint past 64 bits (protobuf drops the excess)",
     b"\x38" + b"\xff" * 9 + b"\x7f"),
    ("a Value with two kinds", b"\x1a\x12\x0a\x03doc\x1a\x0b\x0a\x09\x0a\x01k\x12\x04\x20\x01"
                               b"\x20\x00"),
])
def test_unusual_but_valid_shapes_are_left_to_protobuf(what: str, data: bytes) -> None:
    pb.AuthorizeRequest.FromString(data)  # valid protobuf
    assert decode_request(data) is None, what
    assert_same_request(data)


@pytest.mark.parametrize(("what", "data"), [
    ("field number 0", b"\x02\x00"),
    ("not UTF-8", b"\x0a\x07\x0a\x05\xff\xfe\xfd\xfc\xfb"),
    ("an encoded surrogate", b"\x0a\x05\x0a\x03\xed\xa0\x80"),
    ("an overlong encoding", b"\x0a\x04\x0a\x02\xc0\xaf"),
    ("a length past the end", b"\x0a\x64\x01\x02"),
    ("a varint of 11 bytes", b"\x38" + b"\xff" * 10 + b"\x01"),
    ("a double cut short", b"\x22\x0c\x0a\x0a\x0a\x01n\x12\x05\x11\x00\x00\x00\x00"),
])
def test_bytes_protobuf_refuses_are_not_decoded(what: str, data: bytes) -> None:
    with pytest.raises(DecodeError):
        pb.AuthorizeRequest.FromString(data)
    assert decode_request(data) is None, what
    assert decode_batch(data) is None, what


def test_a_struct_key_given_twice_keeps_its_last_value_as_protobuf_does() -> None:
    entry = b"\x0a\x0a\x0a\x01k\x12\x05\x1a\x03%s"  # Struct entry "k": string value
    props = entry % b"one" + entry % b"two"
    resource = b"\x0a\x03doc\x1a" + bytes([len(props)]) + props
    data = b"\x0a\x0b\x0a\x04user\x12\x03bob\x12\x06\x0a\x04read\x1a" + \
        bytes([len(resource)]) + resource
    decoded = decode_request(data)
    assert decoded is not None and decoded[2] == ("doc", "", {"k": "two"})
    assert_same_request(data)


def test_structs_nested_past_the_limit_are_left_to_protobuf() -> None:
    def nested(depth: int) -> dict[str, Any]:
        value: dict[str, Any] = {"leaf": 1.0}
        for _ in range(depth - 1):
            value = {"k": value}
        return value

    shallow = authorize_request("alice", "read", "doc-1", resource_props=nested(16))
    deep = authorize_request("alice", "read", "doc-1", resource_props=nested(17))
    assert decode_request(shallow.SerializeToString()) is not None
    assert decode_request(deep.SerializeToString()) is None
    assert_same_request(deep.SerializeToString())


def test_numbers_are_read_bit_for_bit() -> None:
    message = authorize_request("alice", "read", "doc-1")
    for number in (0.0, -0.0, 1e-310, 2.0**53 + 1, -math.inf, math.inf):
        message.resource.properties.Clear()
        message.resource.properties["n"] = number
        decoded = decode_request(message.SerializeToString())
        assert decoded is not None and decoded[2] is not None
        props = decoded[2][2]
        assert props is not None
        assert struct.pack("<d", props["n"]) == struct.pack("<d", number)
    message.resource.properties["n"] = math.nan
    decoded = decode_request(message.SerializeToString())
    assert decoded is not None and decoded[2] is not None and decoded[2][2] is not None
    assert math.isnan(decoded[2][2]["n"])


def test_any_nonzero_varint_is_true_as_in_protobuf() -> None:
    for data in (b"\x30\x02", b"\x30" + b"\x80" * 9 + b"\x01"):
        decoded = decode_request(data)
        assert decoded is not None and decoded[5] is True
        assert_same_request(data)
    value = b"\x0a\x07\x0a\x01k\x12\x02\x20\x02"  # Struct entry "k": bool_value 2
    data = b"\x22" + bytes([len(value)]) + value
    decoded = decode_request(data)
    assert decoded is not None and decoded[3] == {"k": True}
    assert_same_request(data)


def test_an_absent_part_and_an_empty_one_are_told_apart() -> None:
    message = pb.AuthorizeRequest()
    message.resource.SetInParent()  # present, every field empty
    decoded = decode_request(message.SerializeToString())
    assert decoded is not None
    assert decoded[:4] == (None, None, ("", "", None), None)
    message.resource.properties.SetInParent()
    decoded = decode_request(message.SerializeToString())
    assert decoded is not None and decoded[2] == ("", "", {})


# --- through the server -----------------------------------------------------------------------

def _raw_call(harness: Harness, method: str, data: bytes) -> bytes:
    channel = harness.channel(harness.pki.service)
    answer: bytes = channel.unary_unary(method)(data, timeout=5)
    return answer


def test_the_server_answers_requests_the_decoder_leaves_to_protobuf(harness: Harness) -> None:
    allowed = authorize_request("alice", "write", "doc-1", resource_props={"owner": "alice"})
    for data in (allowed.SerializeToString(),  # the decoder's own
                 allowed.SerializeToString() + b"\x78\x01"):  # an unknown field: protobuf's
        answer = pb.AuthorizeResponse.FromString(
            _raw_call(harness, "/pdp.v1.Authorization/Authorize", data))
        assert (answer.decision, answer.rule_id) == (pb.DECISION_ALLOW, "owner-write")
    batch = pb.AuthorizeBatchRequest()
    batch.defaults.subject.type, batch.defaults.subject.id = "user", "alice"
    batch.defaults.action.name = "write"
    item = batch.requests.add()
    item.resource.type, item.resource.id = "doc", "doc-2"
    item.resource.properties.update({"owner": "alice"})
    for data in (batch.SerializeToString(), batch.SerializeToString() + b"\x18\x01"):
        answers = pb.AuthorizeBatchResponse.FromString(
            _raw_call(harness, "/pdp.v1.Authorization/AuthorizeBatch", data))
        assert [a.rule_id for a in answers.responses] == ["owner-write"]


def test_the_server_names_the_bad_field_of_a_decoded_batch_item(harness: Harness) -> None:
    batch = pb.AuthorizeBatchRequest()
    batch.defaults.subject.type, batch.defaults.subject.id = "user", "alice"
    for rid in ("a", "b"):
        item = batch.requests.add()
        item.action.name = "read"
        item.resource.type, item.resource.id = "doc", rid
    batch.requests[1].action.name = ""
    data = batch.SerializeToString()
    assert decode_batch(data) is not None  # this error comes from the decoder's path
    with pytest.raises(grpc.RpcError) as err:
        _raw_call(harness, "/pdp.v1.Authorization/AuthorizeBatch", data)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[1].action.name" in (err.value.details() or "")


def test_a_decoded_batch_is_held_to_its_defaults_bundle_sequence(harness: Harness) -> None:
    policy = harness.server.engine.policy
    assert policy is not None
    batch = pb.AuthorizeBatchRequest()
    batch.defaults.subject.type, batch.defaults.subject.id = "user", "alice"
    batch.defaults.action.name = "read"
    batch.requests.add().resource.type = "doc"
    for ahead in (False, True):
        batch.defaults.min_bundle_sequence = policy.sequence + ahead
        data = batch.SerializeToString()
        assert decode_batch(data) is not None  # the decoder's path, not protobuf's
        if not ahead:
            answers = pb.AuthorizeBatchResponse.FromString(
                _raw_call(harness, "/pdp.v1.Authorization/AuthorizeBatch", data))
            assert [a.rule_id for a in answers.responses] == ["read-docs"]
            continue
        with pytest.raises(grpc.RpcError) as err:
            _raw_call(harness, "/pdp.v1.Authorization/AuthorizeBatch", data)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION


# --- decision events --------------------------------------------------------------------------

_decisions = st.builds(Decision, st.sampled_from([Effect.ALLOW, Effect.DENY]), _texts, _texts,
                       _texts, st.booleans())
_engine_requests = st.builds(
    Request, st.builds(Subject, _texts, _texts, _structs), st.builds(Action, _texts, _structs),
    st.builds(Resource, _texts, _texts, _structs), _structs, st.one_of(st.none(), _texts))


@given(_engine_requests, _decisions, _texts, _texts, _texts,
       st.floats(allow_nan=False, allow_infinity=False))
def test_a_decision_event_built_in_c_is_the_one_python_builds(
        request: Request, decision: Decision, ident: str, actor: str, peer: str,
        time: float) -> None:
    """pdp.server._wire.decision_event (the Authorize path's) builds what
    pdp.events.decision_event builds: every field, the details of the same class in the
    same order, the same objects."""
    built = c_decision_event(request, decision, ident, actor, peer, time)
    reference = events.decision_event(request, decision, ident, actor, peer, time)
    assert type(built) is Event and type(built.details) is events.DecisionDetails
    assert built == reference
    assert built.details.row == reference.details.row
    assert all(a is b for a, b in zip(built.details.row, reference.details.row, strict=True))
    assert built.outcome == ("allow" if decision.effect is Effect.ALLOW else "deny")


def test_a_decision_event_built_in_c_is_left_out_of_the_cycle_collector() -> None:
    """As the Requests it records: the event, its details and their row are not tracked;
    what they hold still is, and the event reads the same after a collection."""
    request = Request(Subject("user", "alice", {}), Action("read", {}),
                      Resource("doc", "d1", {"tags": ["a"]}), {}, IP)
    built = c_decision_event(request, Decision(Effect.ALLOW, "r1", "rule", "v1"), "p-1",
                             "spiffe://x", "ipv4:10.1.2.3:5", 1.0)
    for part in (built, built.details, built.details.row):
        assert not gc.is_tracked(part)
    assert gc.is_tracked(request.resource.properties)
    gc.collect()
    assert dict(built.details)["resource_id"] == "d1" and built.event_id == "p-1"


def test_a_decision_event_of_other_classes_reads_their_attributes() -> None:
    """Objects that are not the registered classes (a subclass, a namespace) are read by
    attribute, and one that lacks an attribute raises AttributeError, as in Python."""

    @dataclasses.dataclass(frozen=True)
    class Later(Decision):
        note: str = ""

    ns = types.SimpleNamespace
    request = ns(subject=ns(id="alice", type="user"), action=ns(name="read"),
                 resource=ns(type="doc", id="d1"))
    decision = Later(Effect.DENY, "", "no rule", "v2", True, note="x")
    built = c_decision_event(request, decision, "p-2", "a", "p", 2.0)
    assert built == events.decision_event(request, decision, "p-2", "a", "p", 2.0)
    with pytest.raises(AttributeError, match="resource"):
        c_decision_event(ns(subject=request.subject, action=request.action), decision,
                         "p-3", "a", "p", 2.0)
    unset = Decision.__new__(Decision)  # its slots never set
    with pytest.raises(AttributeError):
        c_decision_event(request, unset, "p-4", "a", "p", 2.0)


def test_event_types_refuses_classes_that_are_not_plain_slotted_dataclasses() -> None:
    @dataclasses.dataclass
    class Unslotted:
        type: Any = None

    with pytest.raises(TypeError, match="not a plain slotted dataclass"):
        register_event_types(Unslotted)
    with pytest.raises(TypeError, match=r"event_types\("):
        event_types(Event)
    fields = tuple(f.name for f in dataclasses.fields(Event))
    with pytest.raises(TypeError, match="event_types: 'nope' is not a slot of"):
        event_types(Event, fields, events.DecisionDetails, ("row",), events.EventType.DECISION,
                    events.Severity.INFO, Effect.ALLOW, "allow", "deny", Decision,
                    ("effect", "rule_id", "reason", "bundle_version", "nope"))
    with pytest.raises(TypeError, match="event_types: a class and a tuple of its 8 fields"):
        event_types(Event, fields[:7], events.DecisionDetails, ("row",),
                    events.EventType.DECISION, events.Severity.INFO, Effect.ALLOW, "allow",
                    "deny", Decision, ("effect", "rule_id", "reason", "bundle_version", "cached"))
    register_event_types()  # the registration in force stays the real one
    assert type(c_decision_event(
        Request(Subject("u", "a", {}), Action("r", {}), Resource("d", "1", {}), {}, None),
        Decision(Effect.ALLOW, "r", "rule", "v"), "i", "a", "p", 0.0)) is Event
