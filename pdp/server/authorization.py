"""The decision RPCs: Authorize and AuthorizeBatch, answered from the engine and its cache.

This is the hot path: per call one peer check (a dict lookup), one engine decision, one
queued audit event, and a span only when tracing is on.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

from pdp.clock import Clock
from pdp.errors import (
    AuditUnavailableError,
    PdpError,
    RequestTooLargeError,
    StaleReplicaError,
    TokenError,
)
from pdp.events import Event, EventSink, EventType, Severity
from pdp.policy import Decision, Effect, PolicyEngine, Request
from pdp.security.identity import Peer
from pdp.security.tokens import TokenVerifier
from pdp.server.access import EXPLAIN_ACTION, CallerGate, peer_ip
from pdp.server.convert import (
    Defaults,
    convert_defaults,
    decision_to_pb,
    service_token_of,
    to_policy_request,
)
from pdp.server.status import abort_with
from pdp.telemetry import Telemetry
from pdp_client._proto import authorization_pb2 as pb
from pdp_client._proto import authorization_pb2_grpc as pb_grpc

__all__ = ["AuthorizationService"]

AUTHORIZE = "/pdp.v1.Authorization/Authorize"
AUTHORIZE_BATCH = "/pdp.v1.Authorization/AuthorizeBatch"
_NOT_EVALUATED = frozenset({"quarantined", "no active bundle"})


class _Call(NamedTuple):
    """What one RPC's decisions share: the caller, its address and one "now"."""

    peer: Peer
    address: str
    ip: str | None
    now: float


class AuthorizationService(pb_grpc.AuthorizationServicer):
    """Answers decisions; fails closed on any doubt (token, audit, stale replica)."""

    def __init__(
        self,
        *,
        engine: PolicyEngine,
        gate: CallerGate,
        tokens: TokenVerifier | None,
        events: EventSink,
        telemetry: Telemetry,
        clock: Clock,
        max_batch: int,
        fail_open_audit: bool = False,
        shadow: Callable[[Request, Decision, float], None] | None = None,
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
        # Decision ids: a random per-process prefix and a counter: unique, and far cheaper
        # than a UUID per call.
        self._id_prefix = os.urandom(6).hex()
        self._ids = itertools.count(1)

    # --- RPCs -------------------------------------------------------------------------------

    def Authorize(
        self, request: pb.AuthorizeRequest, context: grpc.ServicerContext
    ) -> pb.AuthorizeResponse:
        peer = self._gate.check(context, AUTHORIZE)
        with self._telemetry.rpc_span(AUTHORIZE, self._metadata(context)) as span:
            try:
                self._check_fresh(request.min_bundle_sequence)
                response = self._decide(request, None, self._call(peer),
                                        explain=request.explain)
            except PdpError as exc:
                span.error(exc)
                abort_with(context, exc)
            if self._tracing:
                span.set("pdp.decision", "allow" if response.decision else "deny")
                span.set("pdp.rule_id", response.rule_id)
                span.set("pdp.bundle_version", response.bundle_version)
                span.set("pdp.cached", response.cached)
                span.set("pdp.caller", peer.identity)
            return response

    def AuthorizeBatch(
        self, request: pb.AuthorizeBatchRequest, context: grpc.ServicerContext
    ) -> pb.AuthorizeBatchResponse:
        peer = self._gate.check(context, AUTHORIZE_BATCH)
        with self._telemetry.rpc_span(AUTHORIZE_BATCH, self._metadata(context)) as span:
            try:
                count = len(request.requests)
                if count > self._max_batch:
                    raise RequestTooLargeError(
                        f"{count} requests; at most {self._max_batch} per batch",
                        field="requests")
                defaults = (convert_defaults(request.defaults)
                            if request.HasField("defaults") else None)
                minimum = max([r.min_bundle_sequence for r in request.requests]
                              + [defaults.min_bundle_sequence if defaults else 0])
                self._check_fresh(minimum)
                # One caller, one address and one "now" for the whole batch.
                call = self._call(peer)
                responses = [
                    self._decide(item, defaults, call, explain=False, where=f"requests[{i}].")
                    for i, item in enumerate(request.requests)
                ]
            except PdpError as exc:
                span.error(exc)
                abort_with(context, exc)
            span.set("pdp.batch_size", count)
            span.set("pdp.caller", peer.identity)
            return pb.AuthorizeBatchResponse(responses=responses)

    def _metadata(self, context: grpc.ServicerContext) -> Any:
        # Reading the metadata costs a few µs; only tracing needs it.
        return context.invocation_metadata() if self._tracing else ()

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
        # The gate already read the connection's address into the Peer: reuse it.
        return _Call(peer, peer.address, peer_ip(peer.address), self._clock())

    def _decide(
        self,
        item: pb.AuthorizeRequest,
        defaults: Defaults | None,
        call: _Call,
        *,
        explain: bool,
        where: str = "",
    ) -> pb.AuthorizeResponse:
        started = time.perf_counter()
        peer, now = call.peer, call.now
        token = service_token_of(item, defaults)
        token_subject: str | None = None
        token_error: TokenError | None = None
        if token:
            token_subject, token_error = self._verify_token(token, call)
            if token_error is not None:
                token_subject = ""  # never fall back to the request's own subject
        req = to_policy_request(item, defaults, peer_ip=call.ip, token_subject=token_subject,
                                where=where)
        policy = self._engine.policy
        decision: Decision
        traces: list[Any] = []
        if token_error is not None:
            decision = Decision(Effect.DENY, "", f"invalid service token: {token_error.reason}",
                                policy.version if policy is not None else "")
        elif explain and policy is not None and self._gate.allows(peer.identity, EXPLAIN_ACTION):
            if self._engine.is_quarantined(req.subject.id, now):
                decision = self._engine.decide(req, now=now)
            else:
                decision, traces = policy.explain(req, now=now)
        else:
            decision = self._engine.decide(req, now=now)
        decision_id = f"{self._id_prefix}-{next(self._ids)}"
        if not self._record(decision, decision_id, req, call):
            decision = Decision(Effect.DENY, "", "audit unavailable", decision.bundle_version)
        elif (self.shadow is not None and token_error is None
              and decision.reason not in _NOT_EVALUATED):
            # Only real evaluations are compared; a quarantine is not the policy's answer.
            self.shadow(req, decision, now)
        self._telemetry.record_decision(
            "allow" if decision.effect is Effect.ALLOW else "deny",
            time.perf_counter() - started, decision.cached)
        response = decision_to_pb(decision, decision_id)
        for trace in traces:
            response.explanation.add(rule_id=trace.rule_id, effect=trace.effect,
                                     matched=trace.matched, failed_part=trace.failed_part,
                                     detail=trace.detail)
        return response

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

    def _record(self, decision: Decision, decision_id: str, req: Request, call: _Call) -> bool:
        """Queue the decision's audit event; False when the audit trail refused it."""
        event = Event(
            type=EventType.DECISION, time=call.now, event_id=decision_id,
            severity=Severity.INFO, actor=call.peer.identity, peer=call.address,
            outcome="allow" if decision.effect is Effect.ALLOW else "deny",
            details={
                "subject": req.subject.id, "subject_type": req.subject.type,
                "action": req.action.name, "resource_type": req.resource.type,
                "resource_id": req.resource.id, "rule_id": decision.rule_id,
                "bundle_version": decision.bundle_version, "reason": decision.reason,
                "cached": decision.cached, "decision_id": decision_id,
            },
        )
        try:
            self._events.emit(event)
        except AuditUnavailableError:
            return self._fail_open_audit
        return True
