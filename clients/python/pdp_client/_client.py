"""PDPClient: the blocking client of pdp.v1.Authorization and Identity over mutual TLS.

Deadline per call, retries on UNAVAILABLE with jittered backoff, fail-closed by default.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from ._channels import ChannelPool, CredentialFiles, channel_options
from ._errors import InvalidRequestError, PDPError, PDPUnavailableError, error_for_status
from ._model import (
    ActionLike,
    Decision,
    RequestLike,
    ResourceLike,
    ServiceToken,
    SubjectLike,
    decision_from_wire,
    put_request,
    put_request_parts,
    unavailable_decision,
)
from ._proto import authorization_pb2 as pb
from ._proto import authorization_pb2_grpc, identity_pb2, identity_pb2_grpc
from ._trace import trace_metadata

__all__ = ["PDPClient", "Settings", "batch_to_wire", "single_to_wire"]

_RETRYABLE = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The validated constructor arguments shared by PDPClient and AsyncPDPClient."""

    target: str
    files: CredentialFiles
    server_name: str | None
    timeout: float
    retries: int
    backoff: float
    fail_closed: bool
    channels: int
    token_audience: str | None
    reload_interval: float

    @classmethod
    def build(cls, target: str, **kw: Any) -> Settings:
        """Check the arguments; raise ValueError for a nonsensical one."""
        if not target:
            raise ValueError("target is required, e.g. '127.0.0.1:7443'")
        for name in ("ca_file", "cert_file", "key_file"):
            if not kw.get(name):
                raise ValueError(f"{name} is required: the PDP accepts only mutual TLS")
        if kw["timeout"] <= 0:
            raise ValueError("timeout must be positive")
        if kw["retries"] < 0 or kw["backoff"] < 0 or kw["reload_interval"] < 0:
            raise ValueError("retries, backoff and reload_interval must not be negative")
        if kw["channels"] < 1:
            raise ValueError("channels must be at least 1")
        files = CredentialFiles(Path(kw.pop("ca_file")), Path(kw.pop("cert_file")),
                                Path(kw.pop("key_file")))
        return cls(target=target, files=files, **kw)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Backoff before retry `attempt` (0-based): exponential, half of it random (jitter)."""
        base = self.backoff * (2.0**attempt)
        return base / 2 + rng.uniform(0, base / 2)


def single_to_wire(
    subject: SubjectLike | None, action: ActionLike | None, resource: ResourceLike | None,
    context: Mapping[str, Any] | None, service_token: str | None, explain: bool,
    min_bundle_sequence: int,
) -> pb.AuthorizeRequest:
    """The AuthorizeRequest of one `authorize` call; raise InvalidRequestError if malformed."""
    if action is None or resource is None:
        raise InvalidRequestError("action and resource are required")
    if subject is None and not service_token:
        raise InvalidRequestError("a subject or a service_token is required")
    msg = pb.AuthorizeRequest()
    put_request_parts(msg, subject, action, resource, context, service_token, explain,
                      min_bundle_sequence, "request")
    return msg


def batch_to_wire(
    requests: Iterable[RequestLike], defaults: RequestLike | None, explain: bool,
    min_bundle_sequence: int,
) -> pb.AuthorizeBatchRequest:
    """The AuthorizeBatchRequest; raise InvalidRequestError naming the malformed item."""
    msg = pb.AuthorizeBatchRequest()
    add = msg.requests.add
    for i, r in enumerate(requests):
        put_request(add(), r, explain, min_bundle_sequence, f"requests[{i}]")
    if defaults is not None:
        msg.defaults.SetInParent()
        put_request(msg.defaults, defaults, explain, min_bundle_sequence, "defaults")
    return msg


@dataclass(frozen=True, slots=True)
class _Conn:
    channel: grpc.Channel
    authz: authorization_pb2_grpc.AuthorizationStub
    identity: identity_pb2_grpc.IdentityStub


class PDPClient:
    """Blocking client. Thread-safe; use as a context manager or call `close()`.

    Raises ValueError for bad arguments and PDPError if the credential files cannot be read.
    """

    def __init__(
        self, target: str, *, ca_file: str | Path, cert_file: str | Path, key_file: str | Path,
        server_name: str | None = None, timeout: float = 1.0, retries: int = 2,
        backoff: float = 0.05, fail_closed: bool = True, channels: int = 1,
        token_audience: str | None = None, reload_interval: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = Settings.build(
            target, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
            server_name=server_name, timeout=timeout, retries=retries, backoff=backoff,
            fail_closed=fail_closed, channels=channels, token_audience=token_audience,
            reload_interval=reload_interval,
        )
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._pool: ChannelPool[_Conn] = ChannelPool(
            self.settings.files, size=channels, make=self._make, close=lambda c: c.channel.close(),
            reload_interval=reload_interval,
        )

    def _make(self, creds: grpc.ChannelCredentials, index: int, generation: int) -> _Conn:
        s = self.settings
        ch = grpc.secure_channel(s.target, creds, options=channel_options(s.server_name, index,
                                                                          generation))
        return _Conn(ch, authorization_pb2_grpc.AuthorizationStub(ch),
                     identity_pb2_grpc.IdentityStub(ch))

    def _invoke(self, rpc: str, request: Any, timeout: float | None) -> Any:
        """One RPC with deadline and retries; raise the PDPError leaf of the final status."""
        budget = self.settings.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PDPUnavailableError("deadline exceeded before an answer",
                                          code="DEADLINE_EXCEEDED")
            gen, conn = self._pool.acquire()
            try:
                stub = conn.identity if rpc == "IssueServiceToken" else conn.authz
                return getattr(stub, rpc)(request, timeout=remaining, metadata=trace_metadata())
            except grpc.RpcError as exc:
                code = exc.code()
                if code == _RETRYABLE and attempt < self.settings.retries:
                    pause = self.settings.delay(attempt, self._rng)
                    if pause < deadline - time.monotonic():
                        attempt += 1
                        time.sleep(pause)
                        continue
                raise error_for_status(code, exc.details()) from None
            except ValueError as exc:  # grpc raises it for a channel closed under us
                raise PDPUnavailableError(str(exc)) from None
            finally:
                self._pool.release(gen)

    def authorize(
        self, *, subject: SubjectLike | None = None, action: ActionLike | None = None,
        resource: ResourceLike | None = None, context: Mapping[str, Any] | None = None,
        service_token: str | None = None, explain: bool = False, min_bundle_sequence: int = 0,
        timeout: float | None = None,
    ) -> Decision:
        """Ask for one decision.

        An unreachable PDP gives DENY with reason `pdp unavailable: <status>` (or raises
        PDPUnavailableError when fail_closed=False). Raises InvalidRequestError for a malformed
        request and the other PDPError leaves for the statuses the server returns.
        """
        req = single_to_wire(subject, action, resource, context, service_token,
                             explain, min_bundle_sequence)
        try:
            return decision_from_wire(self._invoke("Authorize", req, timeout))
        except PDPUnavailableError as exc:
            if self.settings.fail_closed:
                return unavailable_decision(exc.code)
            raise

    def check(self, **kwargs: Any) -> bool:
        """`authorize(**kwargs).allowed`: True only for an ALLOW; raises as `authorize` does."""
        return self.authorize(**kwargs).allowed

    def authorize_batch(
        self, requests: Iterable[RequestLike], *, defaults: RequestLike | None = None,
        explain: bool = False, min_bundle_sequence: int = 0, timeout: float | None = None,
    ) -> list[Decision]:
        """One decision per request, in order; unset fields of an item take `defaults`.

        Fails closed like `authorize` (every item DENY). Raises PDPError if the server answers
        with a different number of decisions than requests.
        """
        msg = batch_to_wire(requests, defaults, explain, min_bundle_sequence)
        n = len(msg.requests)
        if n == 0:
            return []
        try:
            resp = self._invoke("AuthorizeBatch", msg, timeout)
        except PDPUnavailableError as exc:
            if self.settings.fail_closed:
                return [unavailable_decision(exc.code)] * n
            raise
        return check_batch(resp, n)

    def issue_service_token(
        self, audience: str | None = None, *, ttl_seconds: int = 0, timeout: float | None = None
    ) -> ServiceToken:
        """A short-lived JWT for this client's mTLS identity, for `audience` (default: the
        client's token_audience). Raises PDPError (a token request never fails closed)."""
        audience = audience or self.settings.token_audience
        if not audience:
            raise InvalidRequestError("audience is required (or set token_audience)")
        req = identity_pb2.IssueServiceTokenRequest(audience=audience, ttl_seconds=ttl_seconds)
        return ServiceToken.from_wire(self._invoke("IssueServiceToken", req, timeout))

    def close(self) -> None:
        """Close every channel; later calls fail closed (or raise PDPUnavailableError)."""
        self._pool.close()

    def __enter__(self) -> PDPClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def check_batch(resp: pb.AuthorizeBatchResponse, n: int) -> list[Decision]:
    """Decisions of a batch response; raise PDPError unless there is exactly one per request."""
    if len(resp.responses) != n:
        raise PDPError(f"protocol error: {len(resp.responses)} decisions for {n} requests",
                       code="PROTOCOL")
    return [decision_from_wire(r) for r in resp.responses]
