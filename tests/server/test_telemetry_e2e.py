"""Trace continuity and metrics through the real server and the shipped client (issue 5)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from benchmarks.otlp_sink import OtlpSink, span_attributes
from pdp.telemetry import Telemetry, TelemetryConfig
from pdp_client import PDPClient, Resource, Subject
from pdp_client._proto import authorization_pb2
from tests.server.conftest import Harness, authorize_request


def test_client_span_is_the_parent_of_the_server_span(
    start_server: Callable[..., Harness],
) -> None:
    server_spans = InMemorySpanExporter()
    server_provider = TracerProvider()
    server_provider.add_span_processor(SimpleSpanProcessor(server_spans))
    reader = InMemoryMetricReader()
    telemetry = Telemetry(TelemetryConfig(), tracer_provider=server_provider,
                          meter_provider=MeterProvider(metric_readers=[reader]))
    harness = start_server(telemetry=telemetry)
    client_tracer = TracerProvider().get_tracer("test-pep")
    with PDPClient(harness.data_target, ca_file=harness.pki.ca_cert,
                   cert_file=harness.pki.service.cert, key_file=harness.pki.service.key,
                   server_name="localhost", timeout=5.0) as client, \
            client_tracer.start_as_current_span("pep-request") as parent:
        decision = client.authorize(subject=Subject("user", "alice"), action="read",
                                    resource=Resource("doc", "d1"))
    assert decision.allowed
    spans = [s for s in server_spans.get_finished_spans()
             if s.name == "pdp.v1.Authorization/Authorize"]
    assert len(spans) == 1
    span = spans[0]
    assert span.kind == trace.SpanKind.SERVER
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    attributes = dict(span.attributes or {})
    assert attributes["pdp.decision"] == "allow"
    assert attributes["pdp.rule_id"] == "read-docs"
    assert attributes["pdp.bundle_version"] == decision.bundle_version
    assert attributes["pdp.cached"] is False
    assert attributes["pdp.caller"] == "spiffe://pdp.test/svc/search"
    data = reader.get_metrics_data()
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics
             for m in sm.metrics}
    assert {"pdp.decisions", "pdp.decision.duration"} <= names


def test_a_batch_has_its_span_and_a_refused_batch_an_error_span(
    start_server: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PDP_SERVER__MAX_BATCH", "2")
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    harness = start_server(telemetry=Telemetry(TelemetryConfig(), tracer_provider=provider))
    stub = harness.authz()
    batch = authorization_pb2.AuthorizeBatchRequest(
        requests=[authorize_request("alice", "read", "d1"), authorize_request("bob", "read", "d2")])
    answers = stub.AuthorizeBatch(batch, timeout=5).responses
    assert [a.decision for a in answers] == [authorization_pb2.DECISION_ALLOW] * 2
    batch.requests.add().CopyFrom(authorize_request("carol", "read", "d3"))  # one too many
    with pytest.raises(grpc.RpcError) as refused:
        stub.AuthorizeBatch(batch, timeout=5)
    assert "at most 2 per batch" in (refused.value.details() or "")
    finished = [s for s in spans.get_finished_spans()
                if s.name == "pdp.v1.Authorization/AuthorizeBatch"]
    assert len(finished) == 2
    ok, failed = finished
    assert dict(ok.attributes or {})["pdp.batch_size"] == 2
    assert dict(ok.attributes or {})["pdp.caller"] == "spiffe://pdp.test/svc/search"
    assert ok.status.status_code is trace.StatusCode.UNSET
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]  # recorded once, not per raise


def test_spans_are_exported_over_otlp_to_a_real_collector(
    start_server: Callable[..., Harness],
) -> None:
    # `[telemetry] traces = "otlp"` as configured, to a collector on loopback: every call's
    # span arrives, with its attributes; a refused call's with status ERROR (code 2).
    sink = OtlpSink().start()
    try:
        telemetry = Telemetry(TelemetryConfig(traces="otlp", otlp_endpoint=sink.endpoint))
        harness = start_server(telemetry=telemetry)
        stub = harness.authz()
        for resource in ("d1", "d2", "d3"):
            answer = stub.Authorize(authorize_request("alice", "read", resource), timeout=5)
            assert answer.decision == authorization_pb2.DECISION_ALLOW
        with pytest.raises(grpc.RpcError):
            stub.Authorize(authorization_pb2.AuthorizeRequest(), timeout=5)  # no subject
        telemetry.shutdown()  # flushes the batch to the collector
        authorize = [s for _, s in sink.spans() if s.name == "pdp.v1.Authorization/Authorize"]
        assert len(authorize) == 4
        *allowed, refused = authorize
        for span in allowed:
            attributes = span_attributes(span)
            assert attributes["pdp.decision"] == "allow"
            assert attributes["pdp.rule_id"] == "read-docs"
            assert attributes["pdp.caller"] == "spiffe://pdp.test/svc/search"
        assert refused.status.code == 2  # STATUS_CODE_ERROR
    finally:
        sink.stop()
