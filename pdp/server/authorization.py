"""The decision RPCs: Authorize and AuthorizeBatch, answered from the engine and its cache.

This is the hot path: per call one peer check (a dict lookup), one engine decision, one
queued audit event, and a span only when tracing is on. Requests arrive as bytes and are
parsed here, after the caller is checked; a request that repeats is not parsed again (see
:class:`_Known`).
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
from google.protobuf.message import DecodeError

from pdp.clock import Clock
from pdp.errors import (
    AuditUnavailableError,
    PdpError,
    RequestError,
    RequestTooLargeError,
    StaleReplicaError,
    TokenError,
)
from pdp.events import DecisionCall, Event, EventType, Severity
from pdp.policy import Decision, Effect, PolicyEngine, Request
from pdp.policy.shadow import ShadowEvaluator
from pdp.security.identity import Peer
from pdp.security.tokens import TokenVerifier
from pdp.server._wire import decode_batch, decode_request
from pdp.server.access import EXPLAIN_ACTION, CallerGate, peer_ip
from pdp.server.convert import (
    Defaults,
    convert_defaults,
    decision_event,
    decision_to_pb,
    decoded_defaults,
    decoded_request,
    decoded_requests,
    encode_batch,
    encode_response,
    service_token_of,
    to_policy_request,
)
from pdp.server.hub import EventHub
from pdp.server.status import abort_with
from pdp.telemetry import Telemetry
from pdp_client._proto import authorization_pb2 as pb

if TYPE_CHECKING:
    from pdp.server._wire import Decoded

__all__ = ["AuthorizationService", "add_to_server"]

SERVICE = "pdp.v1.Authorization"
AUTHORIZE = "/pdp.v1.Authorization/Authorize"
AUTHORIZE_BATCH = "/pdp.v1.Authorization/AuthorizeBatch"
_NOT_EVALUATED = frozenset({"quarantined", "no active bundle"})
_UNPARSED = "-"  # not an IP: marks an address whose IP was not parsed yet
_MIN_SEQUENCE = operator.attrgetter("min_bundle_sequence")
# Known requests (see _Known): how many are kept, and which are: a request of at most this
# many bytes and batch items. Together they bound the memory: a 1 KiB batch of ~25 items,
# each with its own subject, action, resource and properties, is ~12 KiB of objects, so
# ~13 MB at most; the usual request (one decision, ~100 bytes) is ~1 KiB.
KNOWN_MAX = 1024
KNOWN_MAX_BYTES = 1024
KNOWN_MAX_ITEMS = 32


class _Known(NamedTuple):
    """A request already parsed and converted, kept by its exact bytes and the caller's IP.

    Parsing the wire bytes and converting them into the engine's Request costs more than
    answering from the decision cache (5.5 µs warm for an Authorize, 13 µs for a batch of
    3). Parsing is a function of the bytes alone, and the caller's IP is the one other input
    of a Request, so a request whose bytes and IP were seen before is the same Request.
    Only requests whose every decision came from the decision cache are kept (they repeat;
    one-off requests never displace them), and only those without a service token (a
    token is verified on every call) or an explain flag. The caller is still checked, and
    the decision still asked of the engine (quarantine, expiry, bundle version), every call.
    """

    ip: str | None  # the caller's IP, part of every Request below
    requests: tuple[Request, ...]
    min_sequence: int


class _Call(NamedTuple):
    """What one RPC's decisions share: the caller, its address and one "now"."""

    peer: Peer
    address: str
    ip: str | None
    now: float


class _Done(NamedTuple):
    """One evaluated request, before its audit event is accepted."""

    request: Request
    decision: Decision
    decision_id: str
    traces: Sequence[Any]  # the explain trace, when asked for and allowed
    evaluated: bool  # False when a bad service token decided it (no policy evaluation)
    started: float  # perf_counter at the start, when metering


def add_to_server(service: AuthorizationService, server: grpc.Server) -> None:
    """Serve ``service`` on ``server``: as the generated ``add_AuthorizationServicer_to_server``,
    except that gRPC is given neither a deserializer nor a serializer: the service parses
    the request bytes itself once the caller is checked, and its answers are already bytes
    (see :func:`encode_response`)."""
    handlers = {
        "Authorize": grpc.unary_unary_rpc_method_handler(service.Authorize),
        "AuthorizeBatch": grpc.unary_unary_rpc_method_handler(service.AuthorizeBatch),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


class AuthorizationService:
    """Answers decisions; fails closed on any doubt (token, audit, stale replica).

    Both RPCs take their request serialized (bytes) and return their response serialized,
    built by hand from the decision: see pdp.server.convert.encode_response. Register with
    :func:`add_to_server`.
    """

    def __init__(
        self,
        *,
        engine: PolicyEngine,
        gate: CallerGate,
        tokens: TokenVerifier | None,
        events: EventHub,
        telemetry: Telemetry,
        clock: Clock,
        max_batch: int,
        fail_open_audit: bool = False,
        shadow: ShadowEvaluator | None = None,
    ) -> None:
        self._engine = engine
        self._gate = gate
        self._tokens = tokens
        self._events = events
        self._telemetry = telemetry
        self._clock = clock
        self._max_batch = max_batch
        self._fail_open_audit = fail_open_audit
        self.shadow = shadow
        self._tracing = telemetry.tracing
        self._metering = telemetry.metering
        self._ips: dict[str, str | None] = {}  # connection address -> its IP
        # Decision ids: a random per-process prefix and a counter: unique, and far cheaper
        # than a UUID per call.
        self._id_prefix = os.urandom(6).hex()
        self._ids = itertools.count(1)
        self._known: dict[bytes, _Known] = {}  # see _Known

    # --- RPCs -------------------------------------------------------------------------------

    def Authorize(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """One decision: a serialized AuthorizeResponse for a serialized AuthorizeRequest."""
        peer = self._gate.check(context, AUTHORIZE)
        if not self._tracing:  # the hot path: nothing to add to a span
            try:
                return self._authorize(request, self._call(peer))[0]
            except PdpError as exc:
                abort_with(context, exc)
        with self._telemetry.rpc_span(AUTHORIZE, context.invocation_metadata()) as span:
            try:
                answer, decision = self._authorize(request, self._call(peer))
            except PdpError as exc:
                span.error(exc)
                abort_with(context, exc)
            span.set("pdp.decision", "allow" if decision.effect is Effect.ALLOW else "deny")
            span.set("pdp.rule_id", decision.rule_id)
            span.set("pdp.bundle_version", decision.bundle_version)
            span.set("pdp.cached", decision.cached)
            span.set("pdp.caller", peer.identity)
            return answer

    def AuthorizeBatch(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """The decisions of every item, in order: a serialized AuthorizeBatchResponse for a
        serialized AuthorizeBatchRequest."""
        peer = self._gate.check(context, AUTHORIZE_BATCH)
        if not self._tracing:  # as Authorize: nothing to add to a span
            try:
                return self._decide_batch(request, self._call(peer))[0]
            except PdpError as exc:
                abort_with(context, exc)
        with self._telemetry.rpc_span(AUTHORIZE_BATCH, context.invocation_metadata()) as span:
            try:
                response, count = self._decide_batch(request, self._call(peer))
            except PdpError as exc:
                span.error(exc)
                abort_with(context, exc)
            span.set("pdp.batch_size", count)
            span.set("pdp.caller", peer.identity)
            return response

    def _authorize(self, raw: bytes, call: _Call) -> tuple[bytes, Decision]:
        """One Authorize: parse (unless known), evaluate, audit, answer (serialized), with
        the decision answered."""
        small = len(raw) <= KNOWN_MAX_BYTES
        known = self._known.get(raw) if small else None
        if known is not None and known.ip == call.ip:
            minimum = known.min_sequence
            if minimum:
                self._check_fresh(minimum)
            request = known.requests[0]
            small = False  # known already
        elif (decoded := decode_request(raw)) is not None and not (decoded[4] or decoded[5]):
            # The usual request (no service token, no explain), read by the C decoder.
            minimum = decoded[6]
            if minimum:
                self._check_fresh(minimum)
            request = decoded_request(decoded, None, peer_ip=call.ip)
        else:  # a token or explain to handle, or bytes the C decoder leaves to protobuf
            return self._authorize_parsed(raw, call)
        if self._metering or (self.shadow is not None and self.shadow.policy is not None):
            done = self._evaluate_plain(request, call)
            if small and done.decision.cached:
                self._remember(raw, _Known(call.ip, (request,), minimum))
            decision = self._final(done, call, self._record([self._event(done, call)]))
            return encode_response(decision, done.decision_id), decision
        # The hot path: nothing to meter or compare, so no _Done and no _final.
        decision = self._engine.decide(request, now=call.now)
        ident = f"{self._id_prefix}-{next(self._ids)}"
        if small and decision.cached:
            self._remember(raw, _Known(call.ip, (request,), minimum))
        if not self._record_one(decision_event(request, decision, ident, call.peer.identity,
                                               call.address, call.now)):
            decision = Decision(Effect.DENY, "", "audit unavailable", decision.bundle_version)
        return encode_response(decision, ident), decision

    def _authorize_parsed(self, raw: bytes, call: _Call) -> tuple[bytes, Decision]:
        """:meth:`_authorize` of a request with a service token or explain flag, or bytes
        the C decoder leaves to protobuf: parsed by protobuf."""
        try:
            item = pb.AuthorizeRequest.FromString(raw)
        except DecodeError as exc:
            raise _not_a("AuthorizeRequest", exc) from None
        if item.min_bundle_sequence:
            self._check_fresh(item.min_bundle_sequence)
        done = self._evaluate(item, None, call, explain=item.explain)
        if (done.decision.cached and not item.explain and not item.service_token
                and len(raw) <= KNOWN_MAX_BYTES):
            self._remember(raw, _Known(call.ip, (done.request,), item.min_bundle_sequence))
        decision = self._final(done, call, self._record([self._event(done, call)]))
        if done.traces:
            return self._explained(decision, done), decision
        return encode_response(decision, done.decision_id), decision

    def _decide_batch(self, raw: bytes, call: _Call) -> tuple[bytes, int]:
        """One AuthorizeBatch: evaluate every item, audit them at once, answer in order; the
        answer (serialized) and the number of items. One caller, one address and one "now"
        for the whole batch."""
        # (A larger request is never known: not even hashed.)
        known = self._known.get(raw) if len(raw) <= KNOWN_MAX_BYTES else None
        if known is not None and known.ip == call.ip:
            if known.min_sequence:
                self._check_fresh(known.min_sequence)
            started = time.perf_counter() if self._metering else 0.0
            return self._answer_call(self._decide_all(list(known.requests), call), call,
                                     started)
        decoded = decode_batch(raw)
        if decoded is not None and not (
                (decoded[0] is not None and decoded[0][4]) or any(i[4] for i in decoded[1])):
            return self._decide_decoded(raw, decoded, call)  # no service token: the usual
        return self._answer_batch(self._evaluate_parsed(raw, call), call)

    def _answer_batch(self, done: list[_Done], call: _Call) -> tuple[bytes, int]:
        """Audit a batch's decisions at once (all or none) and answer them in order."""
        return self._answered(
            DecisionCall(call.peer.identity, call.address, call.now, [d.request for d in done],
                         [d.decision for d in done], [d.decision_id for d in done]),
            call, lambda: done)

    def _decide_all(self, requests: list[Request], call: _Call) -> DecisionCall:
        """The decisions of a batch's plain requests (no service token, no explain), with
        their ids, as the audit trail and the detectors take them."""
        decide, now, prefix, ids = self._engine.decide, call.now, self._id_prefix, self._ids
        return DecisionCall(call.peer.identity, call.address, now, requests,
                            [decide(req, now=now) for req in requests],
                            [f"{prefix}-{next(ids)}" for _ in requests])

    def _answer_call(self, batch: DecisionCall, call: _Call, started: float
                     ) -> tuple[bytes, int]:
        """:meth:`_answered` of decisions made by :meth:`_decide_all` since ``started``."""
        return self._answered(batch, call, lambda: [
            _Done(r, d, x, (), True, started)
            for r, d, x in zip(batch.requests, batch.decisions, batch.idents, strict=True)])

    def _answered(self, batch: DecisionCall, call: _Call,
                  done: Callable[[], list[_Done]]) -> tuple[bytes, int]:
        """Hand a batch's decisions to the audit trail (all or none) and the detectors, and
        answer them; ``done`` gives them as _Done when there is more to do (a refusal, a
        shadow, metrics)."""
        recorded = self._record(batch)
        shadow = self.shadow
        idents = batch.idents
        if recorded and (shadow is None or shadow.policy is None) and not self._metering:
            # nothing to change, compare or count: the answers as decided
            return encode_batch(batch.decisions, idents), len(idents)
        final = self._final
        return encode_batch([final(d, call, recorded) for d in done()], idents), len(idents)

    def _evaluate_parsed(self, raw: bytes, call: _Call) -> list[_Done]:
        """Parse a batch the C decoder left to protobuf (service tokens, or bytes it does
        not take), check it and evaluate its items."""
        try:
            request = pb.AuthorizeBatchRequest.FromString(raw)
        except DecodeError as exc:
            raise _not_a("AuthorizeBatchRequest", exc) from None
        items = request.requests
        self._check_size(len(items))
        defaults = convert_defaults(request.defaults) if request.HasField("defaults") else None
        minimum = max(max(map(_MIN_SEQUENCE, items), default=0),
                      defaults.min_bundle_sequence if defaults is not None else 0)
        self._check_fresh(minimum)
        done = self._evaluate_all(items, defaults, call)
        if not ((defaults is not None and defaults.service_token)
                or any(item.service_token for item in items)):
            self._remember_batch(raw, [d.request for d in done], [d.decision for d in done],
                                 call, minimum)
        return done

    def _decide_decoded(self, raw: bytes, decoded: tuple[Decoded | None, list[Decoded]],
                        call: _Call) -> tuple[bytes, int]:
        """:meth:`_decide_batch` for a batch without service tokens, read by the C decoder:
        the same checks in the same order, the same errors, all raised before any item is
        decided. The hot path of a batch: its Requests (built in C for the usual shape),
        then their decisions and ids."""
        head, items = decoded
        self._check_size(len(items))
        defaults = decoded_defaults(head) if head is not None else None
        minimum = max(max((item[6] for item in items), default=0),
                      defaults.min_bundle_sequence if defaults is not None else 0)
        self._check_fresh(minimum)
        started = time.perf_counter() if self._metering else 0.0
        batch = self._decide_all(decoded_requests(items, defaults, peer_ip=call.ip), call)
        self._remember_batch(raw, batch.requests, batch.decisions, call, minimum)
        return self._answer_call(batch, call, started)

    def _check_size(self, count: int) -> None:
        if count > self._max_batch:
            raise RequestTooLargeError(f"{count} requests; at most {self._max_batch} per batch",
                                       field="requests")

    def _remember_batch(self, raw: bytes, requests: list[Request], decisions: list[Decision],
                        call: _Call, minimum: int) -> None:
        """Keep a batch without service tokens as known, when every decision was cached."""
        if (0 < len(requests) <= KNOWN_MAX_ITEMS and len(raw) <= KNOWN_MAX_BYTES
                and all(d.cached for d in decisions)):
            self._remember(raw, _Known(call.ip, tuple(requests), minimum))

    def _remember(self, raw: bytes, known: _Known) -> None:
        if len(self._known) >= KNOWN_MAX:
            self._known.clear()  # those that still repeat come back at their next call
        self._known[raw] = known  # one caller IP per request bytes: the latest

    # --- the decision -------------------------------------------------------------------------

    def _check_fresh(self, minimum: int) -> None:
        if minimum:
            policy = self._engine.policy
            have = policy.sequence if policy is not None else 0
            if have < minimum:
                raise StaleReplicaError(
                    f"this replica serves bundle sequence {have}, older than the requested "
                    f"{minimum}; retry shortly or on another replica")

    def _call(self, peer: Peer) -> _Call:
        # The gate already read the connection's address into the Peer: reuse it, and its
        # IP, parsed once per connection.
        address = peer.address
        ip = self._ips.get(address, _UNPARSED)
        if ip is _UNPARSED:
            if len(self._ips) >= 4096:
                self._ips.clear()
            ip = self._ips[address] = peer_ip(address)
        return _Call(peer, address, ip, self._clock())

    def _evaluate_all(self, items: Sequence[pb.AuthorizeRequest], defaults: Defaults | None,
                      call: _Call) -> list[_Done]:
        """A batch's decisions; a bad item's error names it (``requests[3].subject.id``),
        a prefix built only when there is an error."""
        general = self._metering or (defaults is not None and defaults.service_token)
        decide, now, ip = self._engine.decide, call.now, call.ip
        prefix, ids = self._id_prefix, self._ids
        done = []
        for i, item in enumerate(items):
            try:
                if general or item.service_token:  # tokens to verify, or latency to meter
                    done.append(self._evaluate(item, defaults, call, explain=False))
                    continue
                # The common item, as _evaluate does it without a token, explain or metering
                # (a function call less per decision).
                req = to_policy_request(item, defaults, peer_ip=ip)
            except RequestError as exc:
                raise RequestError(exc.message, field=f"requests[{i}].{exc.field}") from None
            done.append(_Done(req, decide(req, now=now), f"{prefix}-{next(ids)}", (), True, 0.0))
        return done

    def _evaluate(
        self,
        item: pb.AuthorizeRequest,
        defaults: Defaults | None,
        call: _Call,
        *,
        explain: bool,
    ) -> _Done:
        """The decision for one request (not yet audited). Runs once per decision."""
        started = time.perf_counter() if self._metering else 0.0
        token = service_token_of(item, defaults)
        token_subject: str | None = None
        token_error: TokenError | None = None
        if token:
            token_subject, token_error = self._verify_token(token, call)
            if token_error is not None:
                token_subject = ""  # never fall back to the request's own subject
        req = to_policy_request(item, defaults, peer_ip=call.ip, token_subject=token_subject)
        traces: Sequence[Any] = ()
        if token_error is not None:
            policy = self._engine.policy
            decision = Decision(Effect.DENY, "", f"invalid service token: {token_error.reason}",
                                policy.version if policy is not None else "")
        elif explain:
            decision, traces = self._explain(req, call)
        else:
            decision = self._engine.decide(req, now=call.now)
        return _Done(req, decision, f"{self._id_prefix}-{next(self._ids)}", traces,
                     token_error is None, started)

    def _evaluate_plain(self, request: Request, call: _Call) -> _Done:
        """The decision for a request without a service token or explain: a known one (see
        _Known), or one the C decoder read."""
        started = time.perf_counter() if self._metering else 0.0
        return _Done(request, self._engine.decide(request, now=call.now),
                     f"{self._id_prefix}-{next(self._ids)}", (), True, started)

    def _event(self, done: _Done, call: _Call) -> Event:
        """The audit event of one decision."""
        event: Event = decision_event(done.request, done.decision, done.decision_id,
                                      call.peer.identity, call.address, call.now)
        return event

    def _record_one(self, event: Event) -> bool:
        """Queue one decision's audit event; False when the trail refused it."""
        try:
            self._events.emit(event)
        except AuditUnavailableError:
            return self._fail_open_audit
        return True

    def _record(self, events: Sequence[Event]) -> bool:
        """Queue the decisions' audit events (all or none); False when the trail refused
        them."""
        try:
            if len(events) == 1:
                self._events.emit(events[0])  # Authorize's one event: the plain path
            else:
                self._events.emit_all(events)
        except AuditUnavailableError:
            return self._fail_open_audit
        return True

    @staticmethod
    def _explained(decision: Decision, done: _Done) -> bytes:
        """The serialized response of an explained decision, with its rule trace."""
        response = decision_to_pb(decision, done.decision_id)
        for trace in done.traces:
            response.explanation.add(rule_id=trace.rule_id, effect=trace.effect,
                                     matched=trace.matched, failed_part=trace.failed_part,
                                     detail=trace.detail)
        return response.SerializeToString()

    def _final(self, done: _Done, call: _Call, recorded: bool) -> Decision:
        """The decision to answer: DENY when its audit event was refused. Compares it with
        the shadow bundle and counts it in the metrics, when those are on."""
        decision = done.decision
        if not recorded:
            decision = Decision(Effect.DENY, "", "audit unavailable", decision.bundle_version)
        elif (self.shadow is not None and self.shadow.policy is not None and done.evaluated
              and decision.reason not in _NOT_EVALUATED):
            # Only real evaluations are compared; a quarantine is not the policy's answer.
            self.shadow.submit(done.request, decision, call.now)
        if self._metering:
            self._telemetry.record_decision(
                "allow" if decision.effect is Effect.ALLOW else "deny",
                time.perf_counter() - done.started, decision.cached)
        return decision

    def _explain(self, req: Request, call: _Call) -> tuple[Decision, Sequence[Any]]:
        """The decision with its rule trace, for callers the system policy lets explain."""
        policy = self._engine.policy
        if (policy is None or not self._gate.allows(call.peer.identity, EXPLAIN_ACTION)
                or self._engine.is_quarantined(req.subject.id, call.now)):
            return self._engine.decide(req, now=call.now), []
        return policy.explain(req, now=call.now)

    def _verify_token(self, token: str, call: _Call) -> tuple[str | None, TokenError | None]:
        if self._tokens is None:
            return None, TokenError("service tokens are not accepted by this PDP")
        try:
            return self._tokens.verify(token).sub, None
        except TokenError as exc:
            kind = getattr(exc, "code", "invalid")
            self._telemetry.record_auth_failure(f"token.{kind}")
            event = Event(
                type=EventType.AUTH_FAILURE_TOKEN, time=call.now, severity=Severity.WARNING,
                actor=call.peer.identity, peer=call.address, outcome="failure",
                details={"kind": kind, "reason": exc.reason, "jti": getattr(exc, "jti", "")},
            )
            with contextlib.suppress(AuditUnavailableError):  # the decision is a DENY anyway
                self._events.emit(event)
            return None, exc


def _not_a(message: str, exc: DecodeError) -> RequestError:
    """The error for request bytes that are not a ``message``."""
    return RequestError(f"not a valid {message}: {exc}")
