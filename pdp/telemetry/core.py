"""The Telemetry facade the server holds: per-RPC spans, metrics and their exporters.

Everything is instance-scoped (no global providers); off means a constant no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from pdp.telemetry.config import TelemetryConfig
from pdp.telemetry.metrics import Metrics
from pdp.telemetry.tracing import NOOP_SPAN, Metadata, SpanHandle, start_rpc_span

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

# The OpenTelemetry SDK is imported only when an exporter is configured (the default is
# none): it is ~1.3 MB of a server's resident memory that "off" does not need.

__all__ = ["Telemetry"]

_log = logging.getLogger("pdp.telemetry")
_SCOPE = "pdp"


class Telemetry:
    """Traces and metrics for one server; providers may be injected (tests, embedding).

    Providers built from ``config`` are owned and shut down by :meth:`shutdown`;
    injected ones belong to the caller. Raises OSError when the Prometheus port
    cannot be bound.
    """

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.config = config
        self._owned: list[SdkTracerProvider | SdkMeterProvider] = []
        self._http: Any = None
        build_tracer = tracer_provider is None and config.traces != "none"
        build_meter = meter_provider is None and config.metrics != "none"
        resource: Any = None
        if build_tracer or build_meter:
            from opentelemetry.sdk.resources import Resource

            resource = Resource.create({"service.name": config.service_name})
        if build_tracer:
            from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

            # The caller's sampled flag decides for a call that continues its trace; a call
            # that starts one was sampled by start_rpc_span (trace_sample_ratio) already.
            sdk_tracer = SdkTracerProvider(resource=resource, sampler=ParentBased(ALWAYS_ON))
            sdk_tracer.add_span_processor(BatchSpanProcessor(self._span_exporter()))
            self._owned.append(sdk_tracer)
            tracer_provider = sdk_tracer
        self._tracer = tracer_provider.get_tracer(_SCOPE) if tracer_provider else None
        if build_meter:
            from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider

            sdk_meter = SdkMeterProvider(resource=resource, metric_readers=[self._reader()])
            self._owned.append(sdk_meter)
            meter_provider = sdk_meter
        self._metrics = Metrics(meter_provider.get_meter(_SCOPE)) if meter_provider else None

    # --- traces ---------------------------------------------------------------------

    @property
    def tracing(self) -> bool:
        """True when spans are recorded."""
        return self._tracer is not None

    @property
    def metering(self) -> bool:
        """True when metrics are recorded (record_* calls are no-ops otherwise)."""
        return self._metrics is not None

    def rpc_span(self, method: str, metadata: Metadata) -> AbstractContextManager[SpanHandle]:
        """A SERVER span for gRPC ``method`` (``/pdp.v1.Authorization/Authorize``) continuing
        the ``traceparent``/``tracestate`` of ``metadata``; the shared no-op when off or when
        the call is not traced (``trace_sample_ratio``; the caller's sampled flag)."""
        if self._tracer is None:
            return NOOP_SPAN
        return start_rpc_span(self._tracer, method, metadata, self.config.trace_sample_ratio)

    # --- metrics --------------------------------------------------------------------

    def record_decision(self, decision: str, latency_s: float, cached: bool) -> None:
        """Count a decision, its latency and cache use; no-op when metrics are off."""
        if self._metrics is not None:
            self._metrics.record_decision(decision, latency_s, cached)

    def record_auth_failure(self, kind: str) -> None:
        """Count a rejected credential of ``kind``; no-op when metrics are off."""
        if self._metrics is not None:
            self._metrics.record_auth_failure(kind)

    def record_alert(self, detector: str, severity: str) -> None:
        """Count an alert; no-op when metrics are off."""
        if self._metrics is not None:
            self._metrics.record_alert(detector, severity)

    def observe_gauges(
        self,
        *,
        active_bundle_sequence: Callable[[], int] | None = None,
        cert_expiry_days: Callable[[], dict[str, float]] | None = None,
        audit_queue_depth: Callable[[], int] | None = None,
    ) -> None:
        """Register the callbacks behind the observable gauges (read at each collection)."""
        if self._metrics is not None:
            self._metrics.observe_gauges(
                active_bundle_sequence=active_bundle_sequence,
                cert_expiry_days=cert_expiry_days,
                audit_queue_depth=audit_queue_depth,
            )

    @property
    def prometheus_address(self) -> tuple[str, int] | None:
        """(host, port) the Prometheus endpoint listens on, or None."""
        if self._http is None:
            return None
        host, port = self._http.server_address[:2]
        return str(host), int(port)

    def shutdown(self) -> None:
        """Flush and stop the exporters this instance built; stop the scrape endpoint."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        for provider in self._owned:
            try:
                provider.shutdown()
            except Exception as exc:  # an unreachable collector must not block shutdown
                _log.warning("telemetry shutdown: %s", type(exc).__name__)
        self._owned.clear()

    # --- exporters ------------------------------------------------------------------

    def _span_exporter(self) -> SpanExporter:
        if self.config.traces == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            return ConsoleSpanExporter(service_name=self.config.service_name)
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter: SpanExporter = OTLPSpanExporter(
            endpoint=self.config.otlp_endpoint, insecure=self.config.plaintext_otlp
        )
        return exporter

    def _reader(self) -> MetricReader:
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        interval = int(self.config.export_interval * 1000)
        if self.config.metrics == "console":
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

            return PeriodicExportingMetricReader(
                ConsoleMetricExporter(), export_interval_millis=interval
            )
        if self.config.metrics == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            exporter = OTLPMetricExporter(
                endpoint=self.config.otlp_endpoint, insecure=self.config.plaintext_otlp
            )
            return PeriodicExportingMetricReader(exporter, export_interval_millis=interval)
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=True)
        reader: MetricReader = PrometheusMetricReader(registry=registry)
        self._http, _ = start_http_server(
            self.config.prometheus_port, addr=self.config.prometheus_host, registry=registry
        )
        return reader
