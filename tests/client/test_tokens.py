"""TokenSource caching and renewal (fake clock), and the bearer token on a backend's calls."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from pdp.clock import FakeClock
from pdp_client import (
    InvalidRequestError,
    PDPClient,
    PDPUnavailableError,
    ServiceToken,
    ServiceTokenInterceptor,
    TokenSource,
)
from pdp_client._proto import authorization_pb2 as pb
from pdp_client._proto import authorization_pb2_grpc

from .conftest import Running


def test_issue_service_token_over_the_wire(test_pdp: Running, client_files: dict) -> None:
    with PDPClient(test_pdp.target, **client_files, token_audience="spiffe://t/b") as c:
        tok = c.issue_service_token(ttl_seconds=60)
        other = c.issue_service_token("spiffe://t/c")
    assert tok == ServiceToken(token="jwt-1-spiffe://t/b", expires_at=1_000_100, key_id="k1",
                               jti="j1")
    assert "jwt" not in repr(tok)  # the token itself never lands in logs via repr
    sent = [s.request for s in test_pdp.fake.calls("IssueServiceToken")]
    assert (sent[0].audience, sent[0].ttl_seconds) == ("spiffe://t/b", 60)
    assert other.token.endswith("spiffe://t/c")


def test_issue_service_token_needs_an_audience(test_pdp: Running, client_files: dict) -> None:
    with PDPClient(test_pdp.target, **client_files) as c, pytest.raises(InvalidRequestError):
        c.issue_service_token()


class Issuer:
    """Counts fetches; tokens live `ttl` seconds from the fake clock's now."""

    def __init__(self, clock: FakeClock, ttl: int = 100) -> None:
        self.clock, self.ttl, self.fetches, self.fail = clock, ttl, 0, False
        self.lock = threading.Lock()

    def issue_service_token(self, audience: str | None = None, *, ttl_seconds: int = 0,
                            timeout: float | None = None) -> ServiceToken:
        if self.fail:
            raise PDPUnavailableError("down")
        with self.lock:
            self.fetches += 1
            n = self.fetches
        return ServiceToken(token=f"t{n}", expires_at=int(self.clock()) + self.ttl,
                            key_id="k", jti=str(n))


def test_token_is_cached_and_renewed_at_80_percent() -> None:
    clock = FakeClock(1000.0)
    issuer = Issuer(clock)
    src = TokenSource(issuer, "aud", clock=clock)
    assert src.token() == "t1"
    clock.advance(79)
    assert src.token() == "t1" and issuer.fetches == 1
    clock.advance(1)
    assert src.token() == "t2" and issuer.fetches == 2


def test_failed_renewal_uses_cached_token_until_it_expires() -> None:
    clock = FakeClock(1000.0)
    issuer = Issuer(clock)
    src = TokenSource(issuer, "aud", clock=clock)
    src.token()
    issuer.fail = True
    clock.advance(90)
    assert src.token() == "t1"          # still valid: keep using it
    clock.advance(10)
    with pytest.raises(PDPUnavailableError):
        src.token()                     # expired: never hand out a dead token


def test_concurrent_callers_share_one_fetch() -> None:
    clock = FakeClock(1000.0)
    issuer = Issuer(clock)
    src = TokenSource(issuer, "aud", clock=clock)
    out: list[str] = []
    threads = [threading.Thread(target=lambda: out.append(src.token())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == ["t1"] * 8 and issuer.fetches == 1


def test_interceptor_sends_bearer_and_replaces_a_forged_one(
    test_pdp: Running, client_files: dict
) -> None:
    test_pdp.fake.now = int(time.time())
    with PDPClient(test_pdp.target, **client_files) as c:
        src = TokenSource(c, "spiffe://test.local/svc/backend")
        with grpc.secure_channel(test_pdp.target, grpc.ssl_channel_credentials(
                client_files["ca_file"].read_bytes(), client_files["key_file"].read_bytes(),
                client_files["cert_file"].read_bytes())) as raw:
            stub = authorization_pb2_grpc.AuthorizationStub(
                grpc.intercept_channel(raw, ServiceTokenInterceptor(src)))
            stub.Authorize(pb.AuthorizeRequest(), metadata=[("authorization", "Bearer forged")])
            stub.Authorize(pb.AuthorizeRequest())
    headers = [s.metadata.get("authorization") for s in test_pdp.fake.calls()]
    assert headers == ["Bearer jwt-1-spiffe://test.local/svc/backend"] * 2
    assert len(test_pdp.fake.calls("IssueServiceToken")) == 1
