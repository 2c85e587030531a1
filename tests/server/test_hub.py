"""EventHub: the audit trail first, then the detectors, one event or a batch at a time."""

from __future__ import annotations

import pytest

from pdp.errors import AuditUnavailableError
from pdp.events import Event, EventType
from pdp.server.hub import EventHub


class ListSink:
    """A sink with emit only (no emit_all): the hub hands it a batch one event at a time."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


class FullTrail:
    """An audit trail that refuses everything, like one whose queue is full."""

    def emit(self, event: Event) -> None:
        raise AuditUnavailableError("audit unavailable: queue full")

    def emit_all(self, events: list[Event]) -> None:
        raise AuditUnavailableError("audit unavailable: queue full")


def batch() -> list[Event]:
    return [Event(type=EventType.DECISION, time=1.0, outcome="deny") for _ in range(3)]


def test_a_batch_reaches_sinks_without_emit_all_one_event_at_a_time() -> None:
    trail, detectors = ListSink(), ListSink()
    events = batch()
    EventHub(trail, [detectors]).emit_all(events)
    assert trail.events == events and detectors.events == events


def test_detectors_see_a_batch_the_audit_trail_refused() -> None:
    # An attack is still an attack when the disk is full: the refusal propagates (the
    # caller denies) and the detectors still count every decision.
    detectors = ListSink()
    hub = EventHub(FullTrail(), [detectors])
    events = batch()
    with pytest.raises(AuditUnavailableError):
        hub.emit_all(events)
    assert detectors.events == events
    with pytest.raises(AuditUnavailableError):
        hub.emit(events[0])
    assert detectors.events == [*events, events[0]]
