"""Helpers for the audit tests: event factories and polling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from pdp.audit import AuditLog
from pdp.clock import FakeClock
from pdp.errors import AuditUnavailableError
from pdp.events import Event, EventType, Severity, new_event_id


def decision(outcome: str = "allow", *, clock: FakeClock | None = None, **extra: Any) -> Event:
    """A decision event shaped like the server's."""
    decision_id = new_event_id()
    details = {
        "subject": "alice",
        "subject_type": "user",
        "action": "read",
        "resource_type": "document",
        "resource_id": "doc-1",
        "rule_id": "allow-owner" if outcome == "allow" else "default",
        "bundle_version": "3:ab12",
        "reason": "",
        "cached": False,
        "decision_id": decision_id,
    }
    details.update(extra)
    return Event(
        type=EventType.DECISION,
        time=clock() if clock else 1_800_000_000.0,
        actor="spiffe://example.org/svc/orders",
        peer="ipv4:127.0.0.1:5555",
        outcome=outcome,
        details=details,
    )


def admin(kind: EventType = EventType.BUNDLE_PUSH, **details: Any) -> Event:
    """A synchronous (non-decision) event."""
    return Event(
        type=kind,
        time=1_800_000_001.0,
        severity=Severity.WARNING,
        actor="spiffe://example.org/admin",
        peer="ipv4:127.0.0.1:6000",
        outcome="success",
        details=details or {"version": "3:ab12"},
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.02)


def emit_waiting(log: AuditLog) -> tuple[threading.Thread, list[BaseException | None]]:
    """Emit one decision to ``log`` (whose queue is full) on a thread of its own, and return
    once it waits for room: the thread, and a list that gets None when the decision is kept
    or the AuditUnavailableError that refused it."""
    outcome: list[BaseException | None] = []

    def emit() -> None:
        try:
            log.emit(decision("deny"))
            outcome.append(None)
        except AuditUnavailableError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=emit)
    thread.start()
    wait_until(lambda: log._waiting == 1)
    return thread, outcome
