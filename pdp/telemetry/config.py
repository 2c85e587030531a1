"""The ``[telemetry]`` config section: which trace and metric exporters run, and where.

Built by ``pdp.configuration.build_section(TelemetryConfig, table, where="[telemetry]")``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

__all__ = ["TelemetryConfig", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryConfig:
    """OpenTelemetry settings; ``__post_init__`` raises ValueError on an unsafe combination."""

    traces: Literal["none", "console", "otlp"] = "none"  # span exporter
    trace_sample_ratio: float = 1.0  # share of calls starting a trace that are traced (0-1)
    metrics: Literal["none", "console", "otlp", "prometheus"] = "none"  # metric exporter
    otlp_endpoint: str = "http://127.0.0.1:4317"  # OTLP/gRPC collector; http:// = plaintext
    otlp_insecure: bool = False  # plaintext even without http:// (loopback collectors only)
    prometheus_host: str = "127.0.0.1"  # scrape endpoint address: loopback only
    prometheus_port: int = 9464  # scrape endpoint port (0 = any free port)
    service_name: str = "pdp"  # OpenTelemetry resource service.name
    export_interval: float = 10.0  # seconds between metric exports (console, otlp)

    def __post_init__(self) -> None:
        if not 0.0 <= self.trace_sample_ratio <= 1.0:
            raise ValueError("trace_sample_ratio must be between 0 and 1")
        if not self.export_interval > 0:
            raise ValueError("export_interval must be positive")
        if not 0 <= self.prometheus_port <= 65535:
            raise ValueError("prometheus_port must be between 0 and 65535")
        if not is_loopback(self.prometheus_host):
            # Metrics name callers and policy versions: expose them through a proxy you secure.
            raise ValueError("prometheus_host must be a loopback address")
        if not self.service_name:
            raise ValueError("service_name must not be empty")
        url = urlsplit(self.otlp_endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("otlp_endpoint must be an http:// or https:// URL with a host")
        if url.scheme == "https" and self.otlp_insecure:
            raise ValueError("otlp_insecure contradicts an https:// otlp_endpoint")
        if self.plaintext_otlp and not is_loopback(url.hostname):
            # Spans and metrics carry identities and decisions: never in clear over a network.
            raise ValueError("plaintext OTLP is only allowed to a loopback collector; use https://")

    @property
    def plaintext_otlp(self) -> bool:
        """True when OTLP export goes without TLS."""
        return self.otlp_insecure or self.otlp_endpoint.startswith("http://")
