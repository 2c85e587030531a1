"""The HTTP webhook alert sink: POSTs each alert as JSON from its own thread.

A slow or dead webhook never blocks the detectors: ``send`` only enqueues, and a full queue drops.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from pdp.detect._alerts import Alert
from pdp.detect._config import WebhookConfig

__all__ = ["WebhookAlertSink", "WebhookStats"]

_STOP = object()


@dataclass(frozen=True, slots=True)
class WebhookStats:
    """Delivery counters of a webhook sink."""

    delivered: int  # alerts the webhook accepted (2xx)
    failed: int  # alerts given up after all attempts
    retries: int  # extra attempts made
    dropped: int  # alerts dropped because the queue was full or the sink closed
    queued: int  # alerts waiting now


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: an alert body must not be forwarded to a host nobody configured."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookAlertSink:
    """Delivers alerts to ``config.url`` with timeout, retries and exponential backoff."""

    def __init__(self, config: WebhookConfig) -> None:
        """Start the delivery thread; raise ValueError if the config has no URL."""
        if not config.url:
            raise ValueError("webhook sink needs a url")
        self._config = config
        self._queue: queue.Queue[object] = queue.Queue(maxsize=config.queue_size)
        self._stop = threading.Event()  # set: abandon waits and retries now
        self._lock = threading.Lock()
        self._closed = False
        self._delivered = self._failed = self._retries = self._dropped = 0
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if not config.proxy:
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)
        self._thread = threading.Thread(target=self._run, name="pdp-webhook", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> None:
        """Enqueue ``alert`` for delivery; never blocks, drops (and counts) when full."""
        body = json.dumps(alert.to_dict(), sort_keys=True).encode("utf-8")
        with self._lock:
            if self._closed:
                self._dropped += 1
                return
            try:
                self._queue.put_nowait(body)
            except queue.Full:
                self._dropped += 1

    def stats(self) -> WebhookStats:
        """A snapshot of the delivery counters."""
        with self._lock:
            return WebhookStats(
                self._delivered, self._failed, self._retries, self._dropped, self._queue.qsize()
            )

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued for up to ``timeout`` seconds (default: twice the request
        timeout, so shutdown never hangs on a dead webhook), then stop; drops the rest."""
        if timeout is None:
            timeout = 2 * self._config.timeout
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:
                self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(self._config.timeout + 1.0)
        while True:  # whatever is still queued will never be sent
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                with self._lock:
                    self._dropped += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is _STOP:
                return
            assert isinstance(item, bytes)
            ok = self._deliver(item)
            with self._lock:
                if ok:
                    self._delivered += 1
                else:
                    self._failed += 1

    def _deliver(self, body: bytes) -> bool:
        delay = self._config.backoff
        for attempt in range(self._config.retries + 1):
            if attempt:
                with self._lock:
                    self._retries += 1
                if self._stop.wait(delay):
                    return False
                delay *= 2
            outcome = self._post(body)
            if outcome is not None:
                return outcome
        return False

    def _post(self, body: bytes) -> bool | None:
        """One attempt: True delivered, False permanent failure, None worth retrying."""
        request = urllib.request.Request(  # noqa: S310 - scheme checked in WebhookConfig
            self._config.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "pdp-alerts/1"},
        )
        try:
            with self._opener.open(request, timeout=self._config.timeout) as response:
                response.read(65536)
                return bool(200 <= response.status < 300)
        except urllib.error.HTTPError as exc:
            exc.close()
            # 408/429 and server errors may pass; other client errors will not.
            return None if exc.code in (408, 429) or exc.code >= 500 else False
        except (OSError, ValueError):  # URLError, refused, reset, timeout, bad response
            return None
