"""PEPInterceptor in the example backend (examples/backend) against the test PDP, over mTLS."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdp_client import AsyncPDPClient, AsyncPEPInterceptor, PDPClient, PEPInterceptor
from pdp_client._proto import authorization_pb2 as pb

from .conftest import PKI, Running, server_credentials

FRONTEND = "spiffe://test.local/svc/frontend"
LIST, DELETE = "/example.v1.Inventory/List", "/example.v1.Inventory/Delete"


def _load_example() -> Any:
    path = Path(__file__).resolve().parents[2] / "examples" / "backend" / "server.py"
    spec = importlib.util.spec_from_file_location("example_backend", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["example_backend"] = module
    spec.loader.exec_module(module)
    return module


example = _load_example()


def policy(req: pb.AuthorizeRequest) -> pb.AuthorizeResponse:
    """Frontend may List the inventory; nothing else is allowed; no token is valid here."""
    if req.service_token:
        return pb.AuthorizeResponse(reason="invalid service token: bad signature",
                                    decision_id="d-tok")
    ok = (req.subject.id == FRONTEND and req.action.name == LIST
          and req.resource.type == "grpc.service" and req.resource.id == "example.v1.Inventory")
    if ok:
        return pb.AuthorizeResponse(decision=pb.DECISION_ALLOW, rule_id="frontend-list",
                                    decision_id="d-ok")
    return pb.AuthorizeResponse(reason="default deny", decision_id="d-no")


def _channel(pki: PKI, port: int) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(pki.ca.ca_file.read_bytes(), pki.client.key.read_bytes(),
                                         pki.client.cert.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


@pytest.fixture
def backend(pki: PKI, test_pdp: Running) -> Iterator[tuple[grpc.Channel, Running]]:
    test_pdp.fake.decide = policy
    with PDPClient(test_pdp.target, ca_file=pki.ca.ca_file, cert_file=pki.backend.cert,
                   key_file=pki.backend.key, retries=0) as pdp:
        server, port = example.build_server(pdp, server_credentials(pki, pki.backend))
        server.start()
        try:
            with _channel(pki, port) as ch:
                yield ch, test_pdp
        finally:
            server.stop(None).wait()


def test_example_backend_allows_the_allowed_call(backend: tuple[grpc.Channel, Running]) -> None:
    ch, run = backend
    assert ch.unary_unary(LIST)(b"") == b"42"
    seen = run.fake.calls()[0]
    assert seen.spiffe == "spiffe://test.local/svc/backend"     # the PEP asked as itself
    req = seen.request
    assert (req.subject.type, req.subject.id) == ("service", FRONTEND)
    assert req.action.name == LIST and req.resource.id == "example.v1.Inventory"
    assert req.context["source"]["ip"] == "127.0.0.1"


def test_example_backend_denies_the_forbidden_call(backend: tuple[grpc.Channel, Running]) -> None:
    ch, _ = backend
    with pytest.raises(grpc.RpcError) as info:
        ch.unary_unary(DELETE)(b"42")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "denied by policy: default deny (decision d-no)"
    assert ch.unary_unary(LIST)(b"") == b"42"  # the handler never ran: nothing was deleted


def test_pep_fails_closed_when_pdp_is_down(backend: tuple[grpc.Channel, Running]) -> None:
    ch, run = backend
    run.fake.unavailable = 100
    with pytest.raises(grpc.RpcError) as info:
        ch.unary_unary(LIST)(b"")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "pdp unavailable: UNAVAILABLE" in info.value.details()


def test_pep_denies_when_pdp_returns_an_error(backend: tuple[grpc.Channel, Running]) -> None:
    ch, run = backend
    run.fake.abort = (grpc.StatusCode.INTERNAL, "boom")
    with pytest.raises(grpc.RpcError) as info:
        ch.unary_unary(LIST)(b"")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "boom" not in info.value.details()  # the PDP's internals do not leak to callers


def test_forged_bearer_token_is_passed_to_the_pdp_not_trusted(
    backend: tuple[grpc.Channel, Running]
) -> None:
    # the PEP does not read the token itself: the PDP verifies it (and denies a bad one)
    ch, run = backend
    with pytest.raises(grpc.RpcError) as info:
        ch.unary_unary(LIST)(b"", metadata=[("authorization", "Bearer forged.jwt")])
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "invalid service token" in info.value.details()
    assert run.fake.calls()[0].request.service_token == "forged.jwt"


def test_health_check_is_exempt(backend: tuple[grpc.Channel, Running]) -> None:
    ch, run = backend
    resp = health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service="example.v1.Inventory"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    assert run.fake.calls() == []


def test_caller_without_identity_is_unauthenticated(pki: PKI, test_pdp: Running) -> None:
    with PDPClient(test_pdp.target, ca_file=pki.ca.ca_file, cert_file=pki.backend.cert,
                   key_file=pki.backend.key) as pdp:
        from concurrent import futures
        server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[
            PEPInterceptor(pdp, subject_from=lambda ctx: None)])
        server.add_generic_rpc_handlers((example.inventory_handler(),))
        port = server.add_secure_port("127.0.0.1:0", server_credentials(pki, pki.backend))
        server.start()
        try:
            with _channel(pki, port) as ch, pytest.raises(grpc.RpcError) as info:
                ch.unary_unary(LIST)(b"")
        finally:
            server.stop(None).wait()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert test_pdp.fake.calls() == []


def test_async_client_and_async_pep(pki: PKI, test_pdp: Running) -> None:
    test_pdp.fake.decide = policy

    async def list_items(request: bytes, context: Any) -> bytes:
        return b"42"

    async def scenario() -> tuple[bytes, grpc.StatusCode, list[bool], str]:
        async with AsyncPDPClient(test_pdp.target, ca_file=pki.ca.ca_file,
                                  cert_file=pki.backend.cert, key_file=pki.backend.key,
                                  channels=2) as pdp:
            batch = await pdp.authorize_batch(
                [{"action": LIST}, {"action": DELETE}],
                defaults={"subject": {"type": "service", "id": FRONTEND},
                          "resource": {"type": "grpc.service", "id": "example.v1.Inventory"}})
            server = grpc.aio.server(interceptors=[AsyncPEPInterceptor(pdp)])
            handlers = {m: grpc.unary_unary_rpc_method_handler(list_items)
                        for m in ("List", "Delete")}
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler("example.v1.Inventory", handlers),))
            port = server.add_secure_port("127.0.0.1:0", server_credentials(pki, pki.backend))
            await server.start()
            creds = grpc.ssl_channel_credentials(pki.ca.ca_file.read_bytes(),
                                                 pki.client.key.read_bytes(),
                                                 pki.client.cert.read_bytes())
            try:
                async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
                    ok = await ch.unary_unary(LIST)(b"")
                    try:
                        await ch.unary_unary(DELETE)(b"")
                        code = grpc.StatusCode.OK
                    except grpc.aio.AioRpcError as exc:
                        code = exc.code()
                test_pdp.fake.unavailable = 100
                down = await pdp.authorize(subject={"type": "u", "id": "x"}, action="a",
                                           resource={"type": "r"})
            finally:
                await server.stop(None)
            return ok, code, [d.allowed for d in batch], down.reason

    ok, code, batch, down = asyncio.run(scenario())
    assert ok == b"42" and code == grpc.StatusCode.PERMISSION_DENIED
    assert batch == [True, False]
    assert down == "pdp unavailable: UNAVAILABLE"
