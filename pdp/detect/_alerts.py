"""Alerts and the simple alert sinks: a callback and an append-only JSON-lines file.

An :class:`Alert` is one incident as a detector raised it; sinks carry it out of the process.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pdp.errors import AuditError
from pdp.events import Event, EventType, Severity

__all__ = ["Alert", "AlertSink", "AlertSinkError", "CallbackAlertSink", "JsonLinesAlertSink"]


class AlertSinkError(AuditError):
    """An alert sink cannot be opened or written (names the sink's target)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One incident: what fired, about whom, how often and since when, and what was done."""

    alert_id: str  # random hex id, unique per incident
    detector: str  # detector name, e.g. "deny_storm"
    severity: Severity
    key: str  # the subject, identity or "peer:<host>" the incident is about
    count: int  # events in the window when raised, plus those seen while it was open
    first_seen: float  # epoch seconds of the oldest event in the window when raised
    last_seen: float  # epoch seconds of the latest event counted
    details: Mapping[str, Any] = field(default_factory=dict, hash=False)
    action: str = ""  # "quarantined" when the detector quarantined the key, else ""

    def to_dict(self) -> dict[str, Any]:
        """The alert as a JSON-ready dict (the webhook body and the alert-file line)."""
        return {
            "alert_id": self.alert_id,
            "detector": self.detector,
            "severity": str(self.severity),
            "key": self.key,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "details": dict(self.details),
            "action": self.action,
        }

    def to_event(self) -> Event:
        """The ALERT event for the audit trail (actor = the key, outcome = action or "raised")."""
        return Event(
            type=EventType.ALERT,
            time=self.last_seen,
            severity=self.severity,
            actor=self.key,
            outcome=self.action or "raised",
            details=self.to_dict(),
        )


class AlertSink(Protocol):
    """Anything that takes alerts. ``send`` must be quick: it runs on the detector thread."""

    def send(self, alert: Alert) -> None: ...

    def close(self) -> None: ...


class CallbackAlertSink:
    """Calls ``fn(alert)`` for each alert; the server writes the audit event and a metric."""

    def __init__(self, fn: Callable[[Alert], None]) -> None:
        self._fn = fn

    def send(self, alert: Alert) -> None:
        """Pass ``alert`` to the callback; whatever it raises propagates to the pipeline."""
        self._fn(alert)

    def close(self) -> None:
        """Nothing to release."""


class JsonLinesAlertSink:
    """Appends one JSON object per alert to a file created with mode 0600, flushed per line.

    Refuses to follow a symlink at ``path`` (an attacker-planted link could redirect alerts).
    """

    def __init__(self, path: Path) -> None:
        """Open ``path`` for appending; raise AlertSinkError if it cannot be opened."""
        self._path = Path(path)
        self._lock = threading.Lock()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self._path, flags, 0o600)
        except OSError as exc:
            raise AlertSinkError(f"cannot open alert file {self._path}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o600)  # an existing file may have been created wider
        except OSError:  # pragma: no cover - e.g. a file owned by someone else
            os.close(fd)
            raise AlertSinkError(f"cannot set mode 0600 on alert file {self._path}") from None
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    @property
    def path(self) -> Path:
        """The alert file."""
        return self._path

    def send(self, alert: Alert) -> None:
        """Append ``alert`` as one line and flush; raise AlertSinkError if the write fails."""
        line = json.dumps(alert.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file.closed:
                raise AlertSinkError(f"alert file {self._path} is closed")
            try:
                self._file.write(line)
                self._file.flush()
            except OSError as exc:
                raise AlertSinkError(f"cannot write alert file {self._path}: {exc}") from None

    def close(self) -> None:
        """Close the file; later sends raise AlertSinkError."""
        with self._lock:
            if not self._file.closed:
                self._file.close()
