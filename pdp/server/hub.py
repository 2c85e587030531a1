"""Fans security events out to the audit trail (first) and the detectors.

The audit trail decides what is written before the call returns and what is queued;
it raises AuditUnavailableError when it cannot take an event, and the caller fails closed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pdp.events import Event, EventSink

__all__ = ["EventHub"]


class EventHub:
    """Audit first (may raise AuditUnavailableError), then the non-blocking observers."""

    def __init__(self, audit: EventSink, observers: Sequence[EventSink] = ()) -> None:
        self._audit = audit
        self._observers = tuple(observers)
        # Batch hand-overs: the sink's own emit_all where it has one (the audit trail and
        # the detectors do), else one emit per event.
        self._audit_all = _batch_of(audit)
        self._observers_all = tuple(_batch_of(o) for o in self._observers)

    def emit(self, event: Event) -> None:
        """Record ``event``; raise AuditUnavailableError if the audit trail refused it.

        Observers (detectors) see the event even when the audit trail refused it: an
        attack is still an attack when the disk is full.
        """
        try:
            self._audit.emit(event)
        finally:
            for observer in self._observers:
                observer.emit(event)

    def emit_all(self, events: Sequence[Event]) -> None:
        """Record the decision events of one batch: the audit trail takes all or none
        (raising AuditUnavailableError for none); observers see them either way."""
        try:
            self._audit_all(events)
        finally:
            for emit_all in self._observers_all:
                emit_all(events)


def _batch_of(sink: EventSink) -> Callable[[Sequence[Event]], None]:
    emit_all: Callable[[Sequence[Event]], None] | None = getattr(sink, "emit_all", None)
    if emit_all is not None:
        return emit_all

    def one_by_one(events: Sequence[Event]) -> None:
        for event in events:
            sink.emit(event)

    return one_by_one
