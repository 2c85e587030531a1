"""OpenTelemetry for pdp: one span per RPC with W3C trace context, decision metrics,
and exporters chosen in config (none, console, OTLP, Prometheus on loopback).
"""

from __future__ import annotations

from pdp.telemetry.config import TelemetryConfig
from pdp.telemetry.core import Telemetry
from pdp.telemetry.tracing import NOOP_SPAN, SpanHandle

__all__ = ["NOOP_SPAN", "SpanHandle", "Telemetry", "TelemetryConfig"]
