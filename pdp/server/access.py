"""Who may call which RPC: peer certificate checks, listener CIDR allow-lists, system policy.

Every servicer method starts with :meth:`CallerGate.check`; failures are audited before
the call is refused (UNAUTHENTICATED or PERMISSION_DENIED).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
import yaml

from pdp.clock import Clock
from pdp.errors import AuditUnavailableError, CallerNotAllowedError, CertificateError, ConfigError
from pdp.events import Event, EventSink, EventType, Severity
from pdp.policy import (
    Action,
    CompiledPolicy,
    Effect,
    PolicyEngine,
    Request,
    Resource,
    Subject,
    compile_bundle,
    load_bundle,
    load_bundle_file,
)
from pdp.security.identity import Peer, PeerVerifier
from pdp.server.config import AccessConfig
from pdp.server.status import abort_with

__all__ = ["CallerGate", "build_system_policy", "peer_ip"]

EMPTY: dict[str, Any] = {}
EXPLAIN_ACTION = "explain"  # the system-policy action that lets an identity ask for explain
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def peer_ip(peer: str) -> str | None:
    """The IP address in a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        host = rest.rpartition(":")[0]
        return host.strip("[]")
    return None


def build_system_policy(access: AccessConfig) -> CompiledPolicy:
    """The system policy: from ``access.policy_file``, or from the short form lists.

    Raises ConfigError when neither is given: a PDP without a system policy would have
    to guess who may administer it, and it does not guess.
    """
    if access.policy_file is not None:
        bundle = load_bundle_file(access.policy_file)
    else:
        if not access.authorize and not access.admin:
            raise ConfigError(
                "no system policy: list the identities that may call the PDP in "
                "[access] authorize/admin, or set [access] policy_file",
                field="[access]",
            )
        rules = [
            _allow("data-plane-callers", access.authorize,
                   ["/pdp.v1.Authorization/*", "/pdp.v1.Identity/*"], "data"),
            _allow("explainers", access.explain, [EXPLAIN_ACTION], "data"),
            _allow("administrators", access.admin, ["/pdp.v1.Admin/*"], "admin"),
        ]
        rules = [r for r in rules if r["subjects"]["ids"]]
        text = yaml.safe_dump({"metadata": {"name": "system", "revision": "1"}, "rules": rules})
        bundle = load_bundle(text, source="[access]")
    return compile_bundle(bundle, version=f"system-{bundle.digest[:12]}")


def _allow(rule_id: str, identities: tuple[str, ...], actions: list[str],
           listener: str) -> dict[str, Any]:
    """A system-policy rule: these identity globs may call these RPCs on this listener."""
    return {
        "id": rule_id,
        "effect": "allow",
        "subjects": {"type": "service", "ids": list(identities)},
        "actions": actions,
        "resources": {"type": "pdp.listener", "ids": [listener]},
    }


class CallerGate:
    """Authenticates and authorizes the caller of one listener's RPCs."""

    def __init__(
        self,
        *,
        listener: str,
        peers: PeerVerifier,
        system_policy: CompiledPolicy,
        events: EventSink,
        clock: Clock,
        allow_cidrs: Sequence[str] = (),
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self._listener = listener
        self._peers = peers
        self._system = PolicyEngine(clock=clock)
        self._system.activate(system_policy)
        self._events = events
        self._clock = clock
        self._networks = _parse_networks(allow_cidrs, listener)
        self._allowed: dict[tuple[str, str], bool] = {}
        self._on_refusal = on_refusal

    def check(self, context: grpc.ServicerContext, method: str) -> Peer:
        """Return the verified caller of ``method``, or abort the call after auditing why."""
        try:
            peer = self._peers.verify(context)
        except CertificateError as exc:
            self._refuse(context, exc, Event(
                type=EventType.AUTH_FAILURE_CERT, time=self._clock(), severity=Severity.WARNING,
                actor=getattr(exc, "identity", ""), peer=context.peer(), outcome="failure",
                details={"kind": getattr(exc, "kind", "invalid"), "reason": exc.reason,
                         "serial": f"{getattr(exc, 'serial', 0):#x}", "method": method,
                         "listener": self._listener},
            ))
        if self._networks and not self._peer_allowed(peer.address):
            self._refuse(context, CallerNotAllowedError(
                peer.identity, method, f"peer address not in the {self._listener} allow-list"),
                Event(type=EventType.AUTH_FAILURE_PEER, time=self._clock(),
                      severity=Severity.WARNING, actor=peer.identity, peer=context.peer(),
                      outcome="failure", details={"method": method, "listener": self._listener}))
        if not self.allows(peer.identity, method):
            self._refuse(context, CallerNotAllowedError(peer.identity, method, "system policy"),
                         Event(type=EventType.PERMISSION_DENIED, time=self._clock(),
                               severity=Severity.WARNING, actor=peer.identity,
                               peer=context.peer(), outcome="failure",
                               details={"method": method, "listener": self._listener}))
        return peer

    def allows(self, identity: str, method: str) -> bool:
        """Whether the system policy lets ``identity`` call ``method`` on this listener."""
        key = (identity, method)
        allowed = self._allowed.get(key)
        if allowed is None:
            decision = self._system.decide(Request(
                Subject("service", identity, EMPTY), Action(method, EMPTY),
                Resource("pdp.listener", self._listener, EMPTY), EMPTY, None))
            allowed = decision.effect is Effect.ALLOW
            if len(self._allowed) > 10_000:
                self._allowed.clear()
            self._allowed[key] = allowed
        return allowed

    def _peer_allowed(self, peer: str) -> bool:
        ip = peer_ip(peer)
        if ip is None:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self._networks)

    def _refuse(self, context: grpc.ServicerContext, error: Exception, event: Event) -> None:
        if self._on_refusal is not None:
            self._on_refusal(str(event.type))
        # The refusal stands either way; the audit trail's health is reported apart.
        with contextlib.suppress(AuditUnavailableError):
            self._events.emit(event)
        assert isinstance(error, CertificateError | CallerNotAllowedError)
        abort_with(context, error)


def _parse_networks(cidrs: Iterable[str], listener: str) -> tuple[IPNetwork, ...]:
    networks = []
    for i, cidr in enumerate(cidrs):
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ConfigError(f"not a CIDR: {cidr!r}",
                              field=f"[server.{listener}].allow_cidrs[{i}]") from None
    return tuple(networks)
