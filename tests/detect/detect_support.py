"""Helpers for the detection tests: recording sinks, event makers, a loopback webhook."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable
from typing import Any

from pdp.clock import FakeClock
from pdp.detect import Alert, DetectionPipeline
from pdp.events import Event, EventType

__all__ = ["MakePipeline", "Recorder", "WebhookServer", "auth_event", "decision"]

# make_pipeline(settings=None, **DetectionPipeline keywords) -> a started pipeline
MakePipeline = Callable[..., DetectionPipeline]


class Recorder:
    """An alert sink and a quarantine function that remember what they were given."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent: list[Alert] = []
        self.quarantined: list[tuple[str, float, str]] = []
        self.closed = False

    def send(self, alert: Alert) -> None:
        with self._lock:
            self.sent.append(alert)

    def close(self) -> None:
        self.closed = True

    def quarantine(self, subject: str, ttl: float, reason: str) -> None:
        with self._lock:
            self.quarantined.append((subject, ttl, reason))

    def by_detector(self, name: str) -> list[Alert]:
        with self._lock:
            return [a for a in self.sent if a.detector == name]


def decision(clock: FakeClock, subject: str, outcome: str = "deny", **details: Any) -> Event:
    """A DECISION event as the server emits it."""
    return Event(
        type=EventType.DECISION,
        time=clock(),
        actor="spiffe://test/pep",
        peer="ipv4:127.0.0.1:40000",
        outcome=outcome,
        details={"subject": subject, "action": "read", "reason": "default deny", **details},
    )


def auth_event(
    clock: FakeClock,
    type_: EventType,
    *,
    actor: str = "",
    peer: str = "",
    **details: Any,
) -> Event:
    """An authentication/authorization failure event."""
    return Event(
        type=type_, time=clock(), actor=actor, peer=peer, outcome="failure", details=details
    )


class WebhookServer:
    """A real loopback HTTP server that records JSON bodies; can fail or stall on demand."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = 0  # answer 500 to this many requests first
        self.stall = False  # hold requests until release() (a webhook past its timeout)
        self.redirect_to = ""  # answer 307 with this Location
        self.received = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with owner._lock:
                    owner.attempts += 1
                    failing = owner.attempts <= owner.fail_first
                if owner.stall:
                    owner._release.wait(10)
                    return  # close without answering
                if owner.redirect_to:
                    self.send_response(307)
                    self.send_header("Location", owner.redirect_to)
                    self.end_headers()
                    return
                if failing:
                    self.send_response(500)
                    self.end_headers()
                    return
                with owner._lock:
                    owner.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()
                owner.received.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
