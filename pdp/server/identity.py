"""The Identity RPCs: short-lived service tokens for a caller's verified mTLS identity.

The token's subject is always the caller's certificate identity; nothing in the request
can choose it.
"""

from __future__ import annotations

import json

import grpc

from pdp.clock import Clock
from pdp.errors import RequestError
from pdp.events import Event, EventSink, EventType
from pdp.security.keys import KeyStore
from pdp.security.tokens import TokenIssuer
from pdp.server.access import CallerGate
from pdp.server.status import translated
from pdp_client._proto import identity_pb2 as pb
from pdp_client._proto import identity_pb2_grpc as pb_grpc

__all__ = ["IdentityService"]

ISSUE = "/pdp.v1.Identity/IssueServiceToken"
KEY_SET = "/pdp.v1.Identity/GetKeySet"
MAX_AUDIENCE = 512


class IdentityService(pb_grpc.IdentityServicer):
    """Issues service tokens and publishes the key set."""

    def __init__(
        self, *, issuer: TokenIssuer, keys: KeyStore, gate: CallerGate, events: EventSink,
        clock: Clock, default_ttl: float,
    ) -> None:
        self._issuer = issuer
        self._keys = keys
        self._gate = gate
        self._events = events
        self._clock = clock
        self._default_ttl = default_ttl

    @translated
    @translated
    def IssueServiceToken(
        self, request: pb.IssueServiceTokenRequest, context: grpc.ServicerContext
    ) -> pb.IssueServiceTokenResponse:
        peer = self._gate.check(context, ISSUE)
        if not request.audience:
            raise RequestError("is required", field="audience")
        if len(request.audience) > MAX_AUDIENCE:
            raise RequestError(f"longer than {MAX_AUDIENCE} characters", field="audience")
        self._keys.reload_if_changed()
        ttl = float(request.ttl_seconds) if request.ttl_seconds else self._default_ttl
        issued = self._issuer.issue(peer.identity, request.audience, ttl)
        # Written before the token leaves: no audit record, no token.
        self._events.emit(Event(
            type=EventType.TOKEN_ISSUED, time=self._clock(), actor=peer.identity,
            peer=context.peer(), outcome="success",
            details={"jti": issued.jti, "kid": issued.kid, "audience": request.audience,
                     "expires_at": issued.expires_at},
        ))
        return pb.IssueServiceTokenResponse(
            token=issued.token, expires_at=int(issued.expires_at), key_id=issued.kid,
            jti=issued.jti)

    @translated
    def GetKeySet(
        self, request: pb.GetKeySetRequest, context: grpc.ServicerContext
    ) -> pb.GetKeySetResponse:
        self._gate.check(context, KEY_SET)
        self._keys.reload_if_changed()
        return pb.GetKeySetResponse(jwks_json=json.dumps(self._keys.jwks(), sort_keys=True))
