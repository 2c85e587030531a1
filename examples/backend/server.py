"""An example backend gRPC service protected by pdp_client.PEPInterceptor.

Every call is authorized by the PDP first: subject = caller's SPIFFE ID, action = full method.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pdp_client import PDPClient, PEPInterceptor

__all__ = ["HEALTH_CHECK", "SERVICE", "build_server", "inventory_handler", "main"]

SERVICE = "example.v1.Inventory"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_ITEMS = {b"42": b"a 42 mm bolt"}


def _list(request: bytes, context: Any) -> bytes:
    return b"\n".join(sorted(_ITEMS))


def _delete(request: bytes, context: Any) -> bytes:
    _ITEMS.pop(request, None)
    return b"deleted"


def inventory_handler() -> grpc.GenericRpcHandler:
    """`example.v1.Inventory` with raw-bytes `List` and `Delete` (no .proto needed)."""
    methods = {
        "List": grpc.unary_unary_rpc_method_handler(_list),
        "Delete": grpc.unary_unary_rpc_method_handler(_delete),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


def build_server(
    pdp: PDPClient, credentials: grpc.ServerCredentials, *, address: str = "127.0.0.1:0"
) -> tuple[grpc.Server, int]:
    """A configured, not yet started server with the PEP installed; returns it and its port.

    Health checks are exempt so that an orchestrator can probe the service without a policy.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[PEPInterceptor(pdp, exempt={HEALTH_CHECK})],
    )
    server.add_generic_rpc_handlers((inventory_handler(),))
    checker = health.HealthServicer()
    checker.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_secure_port(address, credentials)
    return server, port


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted: `python examples/backend/server.py --pdp 127.0.0.1:7443 ...`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:8443")
    p.add_argument("--pdp", default="127.0.0.1:7443", help="the PDP's data listener")
    p.add_argument("--ca", type=Path, required=True, help="CA bundle (PEM)")
    p.add_argument("--cert", type=Path, required=True, help="this service's certificate (PEM)")
    p.add_argument("--key", type=Path, required=True, help="this service's private key (PEM)")
    args = p.parse_args(argv)
    try:
        creds = grpc.ssl_server_credentials(
            [(args.key.read_bytes(), args.cert.read_bytes())],
            root_certificates=args.ca.read_bytes(), require_client_auth=True)
    except OSError as exc:
        print(f"backend: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    with PDPClient(args.pdp, ca_file=args.ca, cert_file=args.cert, key_file=args.key) as pdp:
        server, port = build_server(pdp, creds, address=args.listen)
        server.start()
        print(f"example backend on port {port}, authorizing every call with the PDP at {args.pdp}")
        try:
            server.wait_for_termination()
        except KeyboardInterrupt:
            server.stop(5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
