"""Telemetry: trace continuity from a client process, metrics through an in-memory reader,
a real Prometheus scrape on loopback, config checks, and the no-op path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import pdp.telemetry
from benchmarks.otlp_sink import OtlpSink, span_attributes
from pdp.configuration import build_section
from pdp.errors import ConfigError
from pdp.telemetry import NOOP_SPAN, Telemetry, TelemetryConfig

ROOT = Path(__file__).resolve().parents[2]
AUTHORIZE = "/pdp.v1.Authorization/Authorize"

CLIENT = textwrap.dedent(
    """
    import json
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    tracer = TracerProvider().get_tracer("pep")
    with tracer.start_as_current_span("pep.check") as span:
        carrier = {}
        TraceContextTextMapPropagator().inject(carrier)
        ctx = span.get_span_context()
        print(json.dumps({"metadata": sorted(carrier.items()),
                          "trace_id": ctx.trace_id, "span_id": ctx.span_id}))
    """
)


@pytest.fixture
def spans() -> Iterator[tuple[Telemetry, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Telemetry(TelemetryConfig(), tracer_provider=provider), exporter
    provider.shutdown()


def test_span_from_a_client_process_is_the_parent_of_the_server_span(
    spans: tuple[Telemetry, InMemorySpanExporter],
) -> None:
    telemetry, exporter = spans
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", CLIENT], capture_output=True, text=True, check=True, env=env
    )
    client = json.loads(out.stdout)
    metadata = [("user-agent", "grpc-python"), *map(tuple, client["metadata"])]
    with telemetry.rpc_span(AUTHORIZE, metadata) as span:
        span.set("pdp.decision", "ALLOW")
        span.set("pdp.rule_id", "allow-owner")
        span.set("pdp.bundle_version", "7:abc")
        span.set("pdp.cached", True)
        span.set("pdp.caller", "spiffe://example.org/svc/orders")
    (server,) = exporter.get_finished_spans()
    assert server.name == "pdp.v1.Authorization/Authorize"
    assert server.kind is SpanKind.SERVER
    assert server.context.trace_id == client["trace_id"]
    assert server.parent is not None and server.parent.span_id == client["span_id"]
    assert server.parent.is_remote
    assert dict(server.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "pdp.v1.Authorization",
        "rpc.method": "Authorize",
        "pdp.decision": "ALLOW",
        "pdp.rule_id": "allow-owner",
        "pdp.bundle_version": "7:abc",
        "pdp.cached": True,
        "pdp.caller": "spiffe://example.org/svc/orders",
    }


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        [],
        [("traceparent", "00-zzzz-not-a-trace-01")],
        [("traceparent", "00-" + "0" * 32 + "-" + "0" * 16 + "-01")],  # all-zero ids: invalid
        [("traceparent", b"00-binary")],
        [("tracestate", "x" * 10_000)],
    ],
)
def test_malformed_trace_context_starts_a_new_root_span(
    spans: tuple[Telemetry, InMemorySpanExporter], metadata: Any
) -> None:
    telemetry, exporter = spans
    with telemetry.rpc_span(AUTHORIZE, metadata):
        pass
    (server,) = exporter.get_finished_spans()
    assert server.parent is None
    assert server.context.trace_id != 0


def test_error_marks_the_span_failed(spans: tuple[Telemetry, InMemorySpanExporter]) -> None:
    telemetry, exporter = spans
    with telemetry.rpc_span("/pdp.v1.Admin/PushBundle", None) as span:
        span.error(ValueError("bad bundle"))
    with pytest.raises(RuntimeError), telemetry.rpc_span("/pdp.v1.Admin/Rollback", None):
        raise RuntimeError("store down")
    pushed, rolled = exporter.get_finished_spans()
    assert pushed.status.status_code is StatusCode.ERROR
    assert pushed.events[0].name == "exception"
    assert rolled.status.status_code is StatusCode.ERROR


def test_an_error_is_recorded_once_when_the_call_then_aborts(
    spans: tuple[Telemetry, InMemorySpanExporter],
) -> None:
    # The handlers mark the span failed, then abort the call, which raises through the span.
    telemetry, exporter = spans
    with pytest.raises(RuntimeError), telemetry.rpc_span(AUTHORIZE, None) as span:
        span.error(ValueError("refused"))
        raise RuntimeError("abort")
    (failed,) = exporter.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert dict(failed.events[0].attributes or {})["exception.type"] == "ValueError"


SAMPLED = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
NOT_SAMPLED = "00-" + "ab" * 16 + "-" + "ef" * 8 + "-00"


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    collector = OtlpSink().start()
    yield collector
    collector.stop()


def test_otlp_spans_reach_a_collector_and_the_ratio_samples_only_root_calls(
    sink: OtlpSink,
) -> None:
    telemetry = Telemetry(TelemetryConfig(traces="otlp", otlp_endpoint=sink.endpoint,
                                          trace_sample_ratio=0.0, service_name="pdp-eu"))
    assert telemetry.tracing
    # A call with no trace context: the ratio (0) decides, and nothing is recorded.
    assert telemetry.rpc_span(AUTHORIZE, None) is NOOP_SPAN
    # A caller's trace is followed as the caller sampled it, whatever the ratio.
    assert telemetry.rpc_span(AUTHORIZE, [("traceparent", NOT_SAMPLED)]) is NOOP_SPAN
    with telemetry.rpc_span(AUTHORIZE, [("traceparent", SAMPLED)]) as span:
        span.set("pdp.decision", "allow")
        span.set("pdp.cached", False)
    telemetry.shutdown()  # flushes the batch to the collector
    ((resource, exported),) = sink.spans()
    assert resource["service.name"] == "pdp-eu"
    assert exported.name == "pdp.v1.Authorization/Authorize"
    assert exported.trace_id.hex() == "ab" * 16 and exported.parent_span_id.hex() == "cd" * 8
    assert span_attributes(exported) == {
        "rpc.system": "grpc", "rpc.service": "pdp.v1.Authorization", "rpc.method": "Authorize",
        "pdp.decision": "allow", "pdp.cached": False}


@pytest.mark.parametrize(("ratio", "low", "high"), [(1.0, 400, 400), (0.5, 120, 280)])
def test_the_sample_ratio_is_the_share_of_root_calls_traced(
    sink: OtlpSink, ratio: float, low: int, high: int,
) -> None:
    telemetry = Telemetry(TelemetryConfig(traces="otlp", otlp_endpoint=sink.endpoint,
                                          trace_sample_ratio=ratio))
    for _ in range(400):
        with telemetry.rpc_span(AUTHORIZE, None) as span:
            span.set("pdp.decision", "deny")
    telemetry.shutdown()
    # 0.5: 200 expected; outside 120-280 has a chance below 1e-14 with random trace ids.
    assert low <= sink.count <= high
    assert all(span_attributes(s)["pdp.decision"] == "deny" for _, s in sink.spans())


def test_tracing_off_is_a_shared_no_op() -> None:
    telemetry = Telemetry(TelemetryConfig())
    assert not telemetry.tracing
    first = telemetry.rpc_span(AUTHORIZE, [("traceparent", "x")])
    assert first is NOOP_SPAN and telemetry.rpc_span(AUTHORIZE, None) is first
    with first as handle:
        handle.set("pdp.decision", "DENY")
        handle.error(RuntimeError("ignored"))
    telemetry.record_decision("allow", 0.001, True)
    telemetry.record_auth_failure("token")
    telemetry.record_alert("deny_storm", "high")
    telemetry.observe_gauges(audit_queue_depth=lambda: 1)
    assert telemetry.prometheus_address is None
    telemetry.shutdown()


def test_off_imports_no_sdk_and_exporters_from_config_build_their_providers() -> None:
    # The server imports the OpenTelemetry SDK only for a configured exporter (~1.3 MB).
    code = ("import sys, pdp.server.app\n"
            "from pdp.telemetry import Telemetry, TelemetryConfig\n"
            "Telemetry(TelemetryConfig()).shutdown()\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    telemetry = Telemetry(TelemetryConfig(traces="console", metrics="console"))
    assert telemetry.tracing and telemetry.metering
    with telemetry.rpc_span(AUTHORIZE, None) as span:
        span.set("pdp.decision", "ALLOW")
    telemetry.record_decision("allow", 0.001, False)
    telemetry.shutdown()


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out[metric.name] = list(metric.data.data_points)
    return out


def test_metrics_read_back_through_an_in_memory_reader() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry(TelemetryConfig(), meter_provider=provider)
    telemetry.record_decision("allow", 0.0002, False)
    telemetry.record_decision("allow", 0.0001, True)
    telemetry.record_decision("deny", 0.003, False)
    telemetry.record_auth_failure("certificate")
    telemetry.record_auth_failure("certificate")
    telemetry.record_alert("auth_failure_burst", "high")
    telemetry.observe_gauges(
        active_bundle_sequence=lambda: 42,
        cert_expiry_days=lambda: {"server": 29.5, "ca": 3650.0},
        audit_queue_depth=lambda: 7,
    )
    points = _points(reader)
    by_decision = {p.attributes["decision"]: p.value for p in points["pdp.decisions"]}
    assert by_decision == {"allow": 2, "deny": 1}
    durations = {p.attributes["decision"]: p for p in points["pdp.decision.duration"]}
    assert durations["allow"].count == 2 and durations["deny"].count == 1
    assert durations["deny"].sum == pytest.approx(0.003)
    assert 0.0001 in durations["allow"].explicit_bounds
    assert [p.value for p in points["pdp.cache.hits"]] == [1]
    assert [p.value for p in points["pdp.cache.misses"]] == [2]
    assert [(p.attributes["kind"], p.value) for p in points["pdp.auth.failures"]] == [
        ("certificate", 2)
    ]
    (alert,) = points["pdp.alerts"]
    assert dict(alert.attributes) == {"detector": "auth_failure_burst", "severity": "high"}
    assert [p.value for p in points["pdp.bundle.sequence"]] == [42]
    expiry = {p.attributes["certificate"]: p.value for p in points["pdp.certificate.expiry"]}
    assert expiry == {"server": 29.5, "ca": 3650.0}
    assert [p.value for p in points["pdp.audit.queue_depth"]] == [7]
    provider.shutdown()


def test_decisions_counted_on_many_threads_add_up_exactly() -> None:
    # Each thread counts into its own tally; a collection sums them, and a thread that has
    # ended still counts (a counter never goes down).
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry(TelemetryConfig(), meter_provider=provider)

    def decide(n: int) -> None:
        for i in range(n):
            telemetry.record_decision("allow" if i % 4 else "deny", 0.0001, cached=i % 2 == 0)

    threads = [threading.Thread(target=decide, args=(1000,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    decide(4)  # and this thread too
    points = _points(reader)
    by_decision = {p.attributes["decision"]: p.value for p in points["pdp.decisions"]}
    assert by_decision == {"allow": 8 * 750 + 3, "deny": 8 * 250 + 1}
    assert [p.value for p in points["pdp.cache.hits"]] == [8 * 500 + 2]
    assert [p.value for p in points["pdp.cache.misses"]] == [8 * 500 + 2]
    durations = {p.attributes["decision"]: p.count for p in points["pdp.decision.duration"]}
    assert durations == by_decision
    decide(4)  # counts keep growing from one collection to the next
    again = {p.attributes["decision"]: p.value for p in _points(reader)["pdp.decisions"]}
    assert again == {"allow": 8 * 750 + 6, "deny": 8 * 250 + 2}
    provider.shutdown()


def test_failing_gauge_callback_does_not_break_collection() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry(TelemetryConfig(), meter_provider=provider)

    def broken() -> int:
        raise RuntimeError("store gone")

    telemetry.observe_gauges(active_bundle_sequence=broken, audit_queue_depth=lambda: 3)
    telemetry.record_decision("deny", 0.001, False)
    points = _points(reader)
    assert [p.value for p in points["pdp.audit.queue_depth"]] == [3]
    assert "pdp.bundle.sequence" not in points or points["pdp.bundle.sequence"] == []
    provider.shutdown()


def test_prometheus_endpoint_is_scraped_over_loopback_http() -> None:
    telemetry = Telemetry(TelemetryConfig(metrics="prometheus", prometheus_port=0))
    try:
        address = telemetry.prometheus_address
        assert address is not None and address[0] == "127.0.0.1" and address[1] > 0
        telemetry.record_decision("deny", 0.002, False)
        telemetry.record_decision("allow", 0.0004, True)
        telemetry.observe_gauges(audit_queue_depth=lambda: 5, active_bundle_sequence=lambda: 9)
        url = f"http://127.0.0.1:{address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        assert 'pdp_decisions_total{decision="deny"' in body
        assert 'pdp_decision_duration_seconds_count{decision="allow"' in body
        assert "pdp_cache_hits_total" in body and "pdp_cache_misses_total" in body
        assert "pdp_audit_queue_depth" in body and "pdp_bundle_sequence" in body
    finally:
        telemetry.shutdown()
    assert telemetry.prometheus_address is None


def test_config_section_and_unsafe_settings_refused() -> None:
    config = build_section(
        TelemetryConfig, {"traces": "otlp", "metrics": "prometheus"}, where="[telemetry]"
    )
    assert config.traces == "otlp" and config.plaintext_otlp
    for bad, words in [
        ({"metrics": "statsd"}, "metrics"),
        ({"prometheus_host": "0.0.0.0"}, "loopback"),  # noqa: S104 - shown to be refused
        ({"otlp_endpoint": "http://collector.example:4317"}, "plaintext OTLP"),
        ({"otlp_endpoint": "https://collector.example:4317", "otlp_insecure": True}, "contradicts"),
        ({"otlp_endpoint": "collector:4317"}, "http"),
        ({"export_interval": 0}, "export_interval"),
        ({"trace_sample_ratio": 1.5}, "trace_sample_ratio must be between 0 and 1"),
        ({"trace_sample_ratio": -0.1}, "trace_sample_ratio must be between 0 and 1"),
        ({"trace_sample_ratio": float("nan")}, "trace_sample_ratio must be between 0 and 1"),
        ({"trace_sample_ratio": "10%"}, "trace_sample_ratio"),
        ({"trace_sample_ratio": True}, "trace_sample_ratio"),
    ]:
        with pytest.raises(ConfigError, match=words):
            build_section(TelemetryConfig, bad, where="[telemetry]")
    secure = TelemetryConfig(otlp_endpoint="https://collector.example:4317")
    assert not secure.plaintext_otlp


def test_exported_names_are_exactly_the_intended_ones() -> None:
    assert sorted(pdp.telemetry.__all__) == [
        "NOOP_SPAN", "SpanHandle", "Telemetry", "TelemetryConfig"
    ]
