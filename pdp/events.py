"""Security events: the one record shape shared by the audit trail and the detectors.

The server emits an :class:`Event` for every decision, admin act, authentication
failure, token issuance, reload and alert; sinks decide what to keep.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, overload

from pdp.policy.model import Effect

if TYPE_CHECKING:
    from pdp.policy.model import Decision, Request

__all__ = ["DECISION_KEYS", "DecisionCall", "DecisionDetails", "Event", "EventSink",
           "EventType", "Severity", "decision_event", "new_event_id"]


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    HIGH = "high"
    CRITICAL = "critical"


class EventType(enum.StrEnum):
    DECISION = "decision"
    DECISION_BATCH = "decision.batch"  # the audit record of one AuthorizeBatch's decisions
    AUTH_FAILURE_CERT = "auth.failure.certificate"
    AUTH_FAILURE_TOKEN = "auth.failure.token"  # noqa: S105 - an event name, not a secret
    AUTH_FAILURE_PEER = "auth.failure.peer"  # peer address outside a listener's CIDR allow-list
    PERMISSION_DENIED = "auth.permission_denied"  # system policy refused an RPC
    TOKEN_ISSUED = "token.issued"  # noqa: S105 - an event name, not a secret
    TOKEN_REPLAY = "token.replay"  # noqa: S105 - an event name, not a secret
    BUNDLE_PUSH = "admin.bundle.push"
    BUNDLE_PUSH_REJECTED = "admin.bundle.push_rejected"
    BUNDLE_SIGNATURE_FAILURE = "admin.bundle.signature_failure"
    BUNDLE_ACTIVATE = "admin.bundle.activate"
    BUNDLE_ROLLBACK = "admin.bundle.rollback"
    BUNDLE_SHADOW = "admin.bundle.shadow"
    BUNDLE_ACTIVATED = "bundle.activated"  # this replica now serves a version
    QUARANTINE = "admin.quarantine"
    RELEASE = "admin.release"
    CERT_RELOAD = "security.cert_reload"
    KEY_ROTATE = "security.key_rotate"
    ALERT = "alert"
    SERVICE_START = "service.start"
    SERVICE_STOP = "service.stop"


def new_event_id() -> str:
    """A random, unique event id (UUID4, hex)."""
    return uuid.uuid4().hex


@dataclass(slots=True)
class Event:
    """One security-relevant happening. ``details`` never holds a secret or a token.

    Treat it as immutable once emitted: sinks on other threads read it. It is not a frozen
    dataclass only because one is built per decision, and a frozen one costs three times as
    much to build (every field set through object.__setattr__). Build it with keywords;
    only the decision path passes its fields by position (0.28 against 0.77 µs warm:
    binding eight keywords is two thirds of building one). Authorize's events are built in
    C (pdp.server._wire.decision_event, what :func:`decision_event` builds) and left out of
    the cycle collector, which is sound only while no one assigns to an emitted event.
    """

    type: EventType
    time: float  # seconds since the epoch, from the injected clock
    severity: Severity = Severity.INFO
    actor: str = ""  # the verified identity (SPIFFE ID or CN), or the subject for decisions
    peer: str = ""  # the caller's address as gRPC reports it, e.g. "ipv4:127.0.0.1:5555"
    outcome: str = ""  # allow | deny | success | failure
    details: Mapping[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=new_event_id)


class EventSink(Protocol):
    """Anything that takes events: the audit trail, the detector pipeline, a test list."""

    def emit(self, event: Event) -> None: ...


# The details of a decision event, in this order (DecisionDetails.row).
DECISION_KEYS = ("subject", "subject_type", "action", "resource_type", "resource_id", "rule_id",
                 "bundle_version", "reason", "cached", "decision_id")
_DECISION_INDEX = {key: i for i, key in enumerate(DECISION_KEYS)}


class DecisionDetails(Mapping[str, Any]):
    """A decision event's details as a read-only mapping over one tuple in DECISION_KEYS order.

    One is built per decision on the request thread, where a tuple costs a fraction of a
    ten-entry dict; the audit writer and the detectors read it off that thread.
    """

    __slots__ = ("row",)

    def __init__(self, row: tuple[Any, ...]) -> None:
        if len(row) != len(DECISION_KEYS):
            raise ValueError(f"a decision has {len(DECISION_KEYS)} details, got {len(row)}")
        self.row = row

    def __getitem__(self, key: str) -> Any:
        index = _DECISION_INDEX.get(key)
        if index is None:
            raise KeyError(key)
        return self.row[index]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, else ``default`` (without Mapping's generic try/except)."""
        index = _DECISION_INDEX.get(key)
        return default if index is None else self.row[index]

    def __iter__(self) -> Iterator[str]:
        return iter(DECISION_KEYS)

    def __len__(self) -> int:
        return len(DECISION_KEYS)

    def __repr__(self) -> str:
        return f"DecisionDetails({dict(self)!r})"


def decision_event(request: Request, decision: Decision, decision_id: str, actor: str,
                   peer: str, time: float) -> Event:
    """The audit event of one decision, answered to ``actor`` at ``peer`` at ``time``."""
    subject, resource = request.subject, request.resource
    return Event(  # by position (see Event): type, time, severity, actor, peer, outcome,
        EventType.DECISION, time, Severity.INFO, actor, peer,
        "allow" if decision.effect is _ALLOW else "deny",
        DecisionDetails((  # details, in DECISION_KEYS order
            subject.id, subject.type, request.action.name, resource.type, resource.id,
            decision.rule_id, decision.bundle_version, decision.reason, decision.cached,
            decision_id)),
        decision_id)  # event_id


_ALLOW = Effect.ALLOW


class DecisionCall(Sequence[Event]):
    """The decisions of one call (one caller, one address, one time), handed to the audit
    trail and the detectors at once: its requests, decisions and decision ids as parallel
    lists (lists: the answer's encoder takes them as they are), without an :class:`Event`
    per decision.

    Building an Event per decision of an AuthorizeBatch was a sixth of the request thread's
    work; the audit writer and the detectors read the lists instead, on their own threads.
    As a sequence it holds the events :func:`decision_event` builds, one built each time
    an item is read, for any sink that reads events. The lists must not change once handed
    over.
    """

    __slots__ = ("actor", "decisions", "idents", "peer", "requests", "time")

    def __init__(self, actor: str, peer: str, time: float, requests: list[Request],
                 decisions: list[Decision], idents: list[str]) -> None:
        if not len(requests) == len(decisions) == len(idents):
            raise ValueError(f"a call's requests, decisions and ids differ in number: "
                             f"{len(requests)}, {len(decisions)}, {len(idents)}")
        self.actor, self.peer, self.time = actor, peer, time
        self.requests, self.decisions, self.idents = requests, decisions, idents

    def __len__(self) -> int:
        return len(self.idents)

    @overload
    def __getitem__(self, index: int) -> Event: ...
    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return decision_event(self.requests[index], self.decisions[index], self.idents[index],
                              self.actor, self.peer, self.time)

    def __iter__(self) -> Iterator[Event]:
        actor, peer, time = self.actor, self.peer, self.time
        for request, decision, ident in zip(self.requests, self.decisions, self.idents,
                                            strict=True):
            yield decision_event(request, decision, ident, actor, peer, time)

    def outcomes(self) -> list[str]:
        """Each decision's outcome, as its event has it: allow or deny."""
        return ["allow" if d.effect is _ALLOW else "deny" for d in self.decisions]

    def __repr__(self) -> str:
        return (f"DecisionCall(actor={self.actor!r}, peer={self.peer!r}, time={self.time!r}, "
                f"{len(self)} decisions)")
