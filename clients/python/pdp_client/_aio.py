"""AsyncPDPClient: PDPClient's API over grpc.aio, for asyncio services.

Same deadline, retry, fail-closed, channel spreading and certificate-reload behaviour.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from ._channels import ChannelPool, channel_options
from ._client import Settings, batch_to_wire, check_batch, single_to_wire
from ._errors import InvalidRequestError, PDPUnavailableError, error_for_status
from ._model import (
    ActionLike,
    Decision,
    RequestLike,
    ResourceLike,
    ServiceToken,
    SubjectLike,
    decision_from_wire,
    unavailable_decision,
)
from ._proto import authorization_pb2_grpc, identity_pb2, identity_pb2_grpc
from ._trace import trace_metadata

__all__ = ["AsyncPDPClient"]


@dataclass(frozen=True, slots=True)
class _Conn:
    channel: grpc.aio.Channel
    authz: authorization_pb2_grpc.AuthorizationStub
    identity: identity_pb2_grpc.IdentityStub


class AsyncPDPClient:
    """asyncio client; create it inside a running event loop and `await aclose()` (or use
    `async with`). Raises ValueError for bad arguments, PDPError for unreadable credentials."""

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
        self._closing: set[asyncio.Future[Any]] = set()
        self._pool: ChannelPool[_Conn] = ChannelPool(
            self.settings.files, size=channels, make=self._make, close=self._close_conn,
            reload_interval=reload_interval,
        )

    def _make(self, creds: grpc.ChannelCredentials, index: int, generation: int) -> _Conn:
        s = self.settings
        ch = grpc.aio.secure_channel(s.target, creds,
                                     options=channel_options(s.server_name, index, generation))
        return _Conn(ch, authorization_pb2_grpc.AuthorizationStub(ch),
                     identity_pb2_grpc.IdentityStub(ch))

    def _close_conn(self, conn: _Conn) -> None:
        task = asyncio.ensure_future(conn.channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _invoke(self, rpc: str, request: Any, timeout: float | None) -> Any:
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
                return await getattr(stub, rpc)(request, timeout=remaining,
                                                metadata=trace_metadata())
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.settings.retries:
                    pause = self.settings.delay(attempt, self._rng)
                    if pause < deadline - time.monotonic():
                        attempt += 1
                        await asyncio.sleep(pause)
                        continue
                raise error_for_status(code, exc.details()) from None
            except grpc.aio.UsageError as exc:  # the channel was closed under us
                raise PDPUnavailableError(str(exc)) from None
            finally:
                self._pool.release(gen)

    async def authorize(
        self, *, subject: SubjectLike | None = None, action: ActionLike | None = None,
        resource: ResourceLike | None = None, context: Mapping[str, Any] | None = None,
        service_token: str | None = None, explain: bool = False, min_bundle_sequence: int = 0,
        timeout: float | None = None,
    ) -> Decision:
        """Ask for one decision; fails closed and raises exactly as PDPClient.authorize."""
        req = single_to_wire(subject, action, resource, context, service_token, explain,
                             min_bundle_sequence)
        try:
            return decision_from_wire(await self._invoke("Authorize", req, timeout))
        except PDPUnavailableError as exc:
            if self.settings.fail_closed:
                return unavailable_decision(exc.code)
            raise

    async def check(self, **kwargs: Any) -> bool:
        """`(await authorize(**kwargs)).allowed`."""
        return (await self.authorize(**kwargs)).allowed

    async def authorize_batch(
        self, requests: Iterable[RequestLike], *, defaults: RequestLike | None = None,
        explain: bool = False, min_bundle_sequence: int = 0, timeout: float | None = None,
    ) -> list[Decision]:
        """One decision per request, in order; as PDPClient.authorize_batch."""
        msg = batch_to_wire(requests, defaults, explain, min_bundle_sequence)
        n = len(msg.requests)
        if n == 0:
            return []
        try:
            resp = await self._invoke("AuthorizeBatch", msg, timeout)
        except PDPUnavailableError as exc:
            if self.settings.fail_closed:
                return [unavailable_decision(exc.code)] * n
            raise
        return check_batch(resp, n)

    async def issue_service_token(
        self, audience: str | None = None, *, ttl_seconds: int = 0, timeout: float | None = None
    ) -> ServiceToken:
        """A short-lived JWT for this client's identity; raises PDPError on failure."""
        audience = audience or self.settings.token_audience
        if not audience:
            raise InvalidRequestError("audience is required (or set token_audience)")
        req = identity_pb2.IssueServiceTokenRequest(audience=audience, ttl_seconds=ttl_seconds)
        return ServiceToken.from_wire(await self._invoke("IssueServiceToken", req, timeout))

    async def aclose(self) -> None:
        """Close every channel and wait for the closes to finish."""
        self._pool.close()
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    async def __aenter__(self) -> AsyncPDPClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
