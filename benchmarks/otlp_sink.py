"""An OTLP/gRPC trace collector that keeps what it receives, on loopback, in plaintext.

pdp's tracing rows export their spans to it (``[telemetry] traces = "otlp"``), so that they
measure what a deployment pays (encoding and sending every span), and the tests check pdp's
OTLP export against it. In process: :class:`OtlpSink` keeps every span. As a process
(``python -m benchmarks.otlp_sink``, :func:`start_sink`): it counts the spans and answers
the count to :func:`received`, so a run can check that its traced servers did export.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

__all__ = ["OtlpSink", "SinkProc", "received", "span_attributes", "start_sink"]

COUNT = "/pdp.bench.OtlpSink/Count"  # the process's one extra method: the spans received
ROOT = Path(__file__).resolve().parent.parent


class OtlpSink(trace_service_pb2_grpc.TraceServiceServicer):
    """A TraceService on 127.0.0.1 (port 0: any free port) that accepts every export."""

    def __init__(self, port: int = 0, *, keep: bool = True) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._spans: list[tuple[dict[str, Any], Any]] = []  # (resource attributes, Span)
        self._count = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            COUNT.split("/")[1], {"Count": grpc.unary_unary_rpc_method_handler(
                lambda request, context: str(self.count).encode())}),))
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        if not self.port:
            raise OSError(f"cannot listen on 127.0.0.1:{port}")

    @property
    def endpoint(self) -> str:
        """The ``otlp_endpoint`` that reaches this sink."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def count(self) -> int:
        """How many spans were received."""
        return self._count

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Every span received (when keeping them), with its resource's attributes."""
        with self._lock:
            return list(self._spans)

    def start(self) -> OtlpSink:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                received += [(resource, span) for span in scope_spans.spans]
        with self._lock:
            self._count += len(received)
            if self._keep:
                self._spans += received
        return trace_service_pb2.ExportTraceServiceResponse()


def _value(value: Any) -> Any:
    """An OTLP AnyValue as a Python value (the scalar kinds pdp sends)."""
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def span_attributes(span: Any) -> dict[str, Any]:
    """An OTLP span's attributes as a dict."""
    return {a.key: _value(a.value) for a in span.attributes}


class SinkProc:
    """A sink running as its own process (see :func:`start_sink`)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_sink(prefix: list[str]) -> SinkProc:
    """Start ``python -m benchmarks.otlp_sink`` behind the command ``prefix`` (a `taskset`,
    say); returns once it listens. Raises RuntimeError when it does not start."""
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "benchmarks.otlp_sink"],
                            cwd=ROOT, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("port "):
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise RuntimeError(f"the OTLP sink did not start: {line!r}")
    return SinkProc(proc, int(line.split()[1]))


def received(port: int, timeout: float = 10.0) -> int:
    """How many spans the sink process on ``port`` has received."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        ask = channel.unary_unary(COUNT, request_serializer=None, response_deserializer=None)
        return int(ask(b"", timeout=timeout))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.otlp_sink",
                                description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    args = p.parse_args(argv)
    sink = OtlpSink(args.port, keep=False).start()
    print(f"port {sink.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
