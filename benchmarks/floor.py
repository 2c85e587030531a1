"""The floor: a no-op Authorization server on the same stack as `pdp serve`, to measure against.

Same sync grpc server, thread pool, options (pdp.server.app.data_server_options), TLS
1.3-only credentials (pdp.security.tls) and frozen start-up state (gc.freeze) as `pdp serve`;
Authorize returns a constant ALLOW and does nothing else. Run: python -m benchmarks.floor.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc

from pdp.clock import system_clock
from pdp.security.tls import ServerTLS, TLSConfig
from pdp.server.app import data_server_options
from pdp.server.config import ServerConfig
from pdp_client._proto import authorization_pb2 as pb
from pdp_client._proto import authorization_pb2_grpc as pb_grpc

__all__ = ["NoopAuthorization", "main", "serve"]

_ALLOW = pb.AuthorizeResponse(decision=pb.DECISION_ALLOW, rule_id="noop", bundle_version="floor")


class NoopAuthorization(pb_grpc.AuthorizationServicer):
    """Answers every Authorize with the same ALLOW, every batch item likewise."""

    def Authorize(self, request: pb.AuthorizeRequest,
                  context: grpc.ServicerContext) -> pb.AuthorizeResponse:
        """A constant ALLOW."""
        return _ALLOW

    def AuthorizeBatch(self, request: pb.AuthorizeBatchRequest,
                       context: grpc.ServicerContext) -> pb.AuthorizeBatchResponse:
        """One constant ALLOW per item."""
        return pb.AuthorizeBatchResponse(responses=[_ALLOW] * len(request.requests))


def serve(port: int, *, threads: int, cert: Path, key: Path, ca: Path,
          plaintext: bool = False) -> grpc.Server:
    """Start the floor server on 127.0.0.1:port (mTLS 1.3 unless ``plaintext``)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="floor"),
        options=data_server_options(ServerConfig().max_message_bytes, share_port=False),
        maximum_concurrent_rpcs=threads * 64)
    pb_grpc.add_AuthorizationServicer_to_server(NoopAuthorization(), server)
    address = f"127.0.0.1:{port}"
    if plaintext:
        server.add_insecure_port(address)
    else:
        tls = ServerTLS(TLSConfig(cert_file=cert, key_file=key, ca_file=ca), clock=system_clock)
        server.add_secure_port(address, tls.credentials())
    server.start()
    gc.freeze()  # as `pdp serve` does once started: start-up state leaves the collector's view
    return server


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.floor")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--ca", type=Path, required=True)
    p.add_argument("--plaintext", action="store_true", help="no TLS (floor comparison only)")
    args = p.parse_args(argv)
    server = serve(args.port, threads=args.threads, cert=args.cert, key=args.key, ca=args.ca,
                   plaintext=args.plaintext)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop(1.0).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
