"""Policy enforcement point: a gRPC server interceptor that asks the PDP before every call.

Caller = certificate identity (or bearer service token), action = full method, resource = service.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any

import grpc
import grpc.aio

from ._errors import PDPError
from ._model import Decision, Resource, Subject

__all__ = ["AsyncPEPInterceptor", "PEPInterceptor", "SubjectFrom", "subject_from_peer"]

SubjectFrom = Callable[[Any], "Subject | None"]


def subject_from_peer(context: Any) -> Subject | None:
    """The caller's identity from its verified certificate: SPIFFE ID, else CN; None without one."""
    auth = context.auth_context() or {}
    for key in ("peer_spiffe_id", "x509_common_name"):
        values = auth.get(key) or []
        if values:
            raw = values[0]
            value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            if value:
                return Subject("service", value)
    return None


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _source(peer: str | None) -> dict[str, Any]:
    """{"source": {"ip": ...}} from a gRPC peer string such as `ipv4:10.0.0.1:5000`."""
    if not peer:
        return {}
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return {"source": {"ip": rest.rsplit(":", 1)[0]}}
    if kind == "ipv6":
        return {"source": {"ip": rest.rsplit(":", 1)[0].strip("[]")}}
    return {}


def _denial(decision: Decision) -> str:
    return f"denied by policy: {decision.reason or 'deny'} (decision {decision.decision_id or '-'})"


class _Base:
    def __init__(
        self, client: Any, *, resource_type: str = "grpc.service",
        subject_from: SubjectFrom = subject_from_peer, exempt: Collection[str] = (),
    ) -> None:
        if not resource_type:
            raise ValueError("resource_type is required")
        self._client = client
        self._resource_type = resource_type
        self._subject_from = subject_from
        self._exempt = frozenset(exempt)

    def _question(self, method: str, context: Any) -> dict[str, Any] | None:
        """The authorize() keywords for this call, or None when the caller has no identity."""
        try:
            subject = self._subject_from(context)
        except Exception:
            subject = None  # an extractor that fails proves nothing: treat as anonymous
        token = _bearer(context.invocation_metadata())
        if subject is None and token is None:
            return None
        service = method.lstrip("/").split("/", 1)[0]
        ctx: Mapping[str, Any] = _source(context.peer())
        return {"subject": subject, "action": method, "service_token": token,
                "resource": Resource(self._resource_type, service), "context": ctx or None}


def _rebuild(handler: Any, wrap: Callable[[Any, bool, bool], Any]) -> Any:
    """A handler of the same kind whose behaviour is `wrap(behaviour, req_stream, resp_stream)`."""
    rs, ss = handler.request_streaming, handler.response_streaming
    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if not rs and not ss:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, rs, ss), **kw)
    if not rs and ss:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, rs, ss), **kw)
    if rs and not ss:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, rs, ss), **kw)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, rs, ss), **kw)


class PEPInterceptor(_Base, grpc.ServerInterceptor):  # type: ignore[misc]
    """grpc.ServerInterceptor for a blocking server; `client` is a PDPClient.

    Every call is checked before its handler runs; a caller without identity gets
    UNAUTHENTICATED, anything but an ALLOW (including an unreachable PDP) PERMISSION_DENIED.
    Methods in `exempt` (full names, e.g. health checks) are not checked.
    """

    def _enforce(self, method: str, context: Any) -> None:
        question = self._question(method, context)
        if question is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no caller identity")
            return  # abort raises; never reached
        try:
            decision = self._client.authorize(**question)
        except PDPError as exc:
            decision = Decision(reason=f"authorization failed: {exc.code}")
        except Exception:
            decision = Decision(reason="authorization failed")
        if not decision.allowed:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, _denial(decision))

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """Wrap the handler so that its behaviour runs only after an ALLOW."""
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._exempt:
            return handler

        def wrap(behaviour: Any, _rs: bool, _ss: bool) -> Any:
            def guarded(request: Any, context: Any) -> Any:
                self._enforce(method, context)
                return behaviour(request, context)

            return guarded

        return _rebuild(handler, wrap)


class AsyncPEPInterceptor(_Base, grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The same enforcement for a grpc.aio server; `client` is an AsyncPDPClient."""

    async def _enforce(self, method: str, context: Any) -> None:
        question = self._question(method, context)
        if question is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no caller identity")
            return
        try:
            decision = await self._client.authorize(**question)
        except PDPError as exc:
            decision = Decision(reason=f"authorization failed: {exc.code}")
        except Exception:
            decision = Decision(reason="authorization failed")
        if not decision.allowed:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, _denial(decision))

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """Wrap the handler so that its behaviour runs only after an ALLOW."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._exempt:
            return handler

        def wrap(behaviour: Any, _rs: bool, ss: bool) -> Any:
            if not ss:
                async def guarded(request: Any, context: Any) -> Any:
                    await self._enforce(method, context)
                    result = behaviour(request, context)
                    return await result if inspect.isawaitable(result) else result

                return guarded

            async def guarded_stream(request: Any, context: Any) -> Any:
                await self._enforce(method, context)
                result = behaviour(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                elif inspect.isawaitable(result):
                    await result  # a handler that writes with context.write()

            return guarded_stream

        return _rebuild(handler, wrap)
