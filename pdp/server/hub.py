"""Fans security events out to the audit trail (first) and the detectors.

The audit trail decides what is written before the call returns and what is queued;
it raises AuditUnavailableError when it cannot take an event, and the caller fails closed.
"""

from __future__ import annotations

from collections.abc import Sequence

from pdp.events import Event, EventSink

__all__ = ["EventHub"]


class EventHub:
    """Audit first (may raise AuditUnavailableError), then the non-blocking observers."""

    def __init__(self, audit: EventSink, observers: Sequence[EventSink] = ()) -> None:
        self._audit = audit
        self._observers = tuple(observers)

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
