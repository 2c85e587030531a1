"""The admin plane: bundle push/activation/rollback, status, quarantine, shadow.

Served only on the admin listener. Each act is refused up front when the audit trail is
down, and its audit record is written and flushed before the call returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import grpc

from pdp.clock import Clock
from pdp.errors import (
    AuditUnavailableError,
    BundleSignatureError,
    BundleTooLargeError,
    PdpError,
    RequestError,
)
from pdp.events import Event, EventSink, EventType, Severity
from pdp.server.access import CallerGate
from pdp.server.bundles import BundleManager
from pdp.server.status import abort_with, translated
from pdp.store import BundleStore, QuarantineEntry, StoredBundle
from pdp_client._proto import admin_pb2 as pb
from pdp_client._proto import admin_pb2_grpc as pb_grpc

__all__ = ["AdminService"]

MAX_QUARANTINE_SECONDS = 30 * 24 * 3600


def _method(name: str) -> str:
    return f"/pdp.v1.Admin/{name}"


class AdminService(pb_grpc.AdminServicer):
    """Administers bundles and quarantine; every act is audited before it returns."""

    def __init__(
        self,
        *,
        manager: BundleManager,
        store: BundleStore,
        gate: CallerGate,
        events: EventSink,
        audit_healthy: Callable[[], bool],
        status: Callable[[], pb.GetStatusResponse],
        clock: Clock,
        max_bundle_bytes: int,
    ) -> None:
        self._manager = manager
        self._store = store
        self._gate = gate
        self._events = events
        self._audit_healthy = audit_healthy
        self._status = status
        self._clock = clock
        self._max_bundle_bytes = max_bundle_bytes

    # --- helpers ------------------------------------------------------------------------------

    def _begin(self, context: grpc.ServicerContext, name: str) -> str:
        """Check the caller and the audit trail; return the caller's identity."""
        peer = self._gate.check(context, _method(name))
        if not self._audit_healthy():
            abort_with(context, AuditUnavailableError(
                "audit unavailable: admin acts are refused until the audit trail recovers"))
        return peer.identity

    def _audit(self, context: grpc.ServicerContext, actor: str, type_: EventType,
               outcome: str, details: dict[str, Any],
               severity: Severity = Severity.INFO) -> None:
        self._events.emit(Event(type=type_, time=self._clock(), severity=severity, actor=actor,
                                peer=context.peer(), outcome=outcome, details=details))

    def _info(self, stored: StoredBundle) -> pb.BundleInfo:
        active = self._manager.activation
        return pb.BundleInfo(
            version=stored.version, sequence=stored.sequence, digest=stored.digest,
            pushed_by=stored.pushed_by, pushed_at=int(stored.pushed_at),
            active=active is not None and active.version == stored.version,
            shadow=self._store.shadow() == stored.version, name=stored.name,
            revision=stored.revision, key_id=stored.key_id or "", rule_count=stored.rule_count)

    # --- bundles ------------------------------------------------------------------------------

    @translated
    def PushBundle(
        self, request: pb.PushBundleRequest, context: grpc.ServicerContext
    ) -> pb.PushBundleResponse:
        actor = self._begin(context, "PushBundle")
        try:
            data = request.bundle  # read once: each read of a bytes field is a new copy
            if len(data) > self._max_bundle_bytes:
                raise BundleTooLargeError(
                    f"{len(data)} bytes; at most {self._max_bundle_bytes}", source="push")
            try:
                valid = self._manager.validate(data, request.signature, request.key_id,
                                               source="push")
            except BundleSignatureError as exc:
                self._audit(context, actor, EventType.BUNDLE_SIGNATURE_FAILURE, "failure",
                            {"reason": exc.message, "key_id": request.key_id},
                            Severity.HIGH)
                raise
            stored = self._manager.store(valid, by=actor)
            activated = False
            if request.activate:
                self._manager.activate(stored.version, by=actor, bundle=valid.bundle,
                                       stored=stored)
                activated = True
            self._audit(context, actor, EventType.BUNDLE_PUSH, "success",
                        {"version": stored.version, "digest": stored.digest,
                         "key_id": stored.key_id or "", "activated": activated})
            return pb.PushBundleResponse(bundle=self._info(stored), activated=activated)
        except PdpError as exc:
            if not isinstance(exc, AuditUnavailableError | BundleSignatureError):
                self._try_audit(context, actor, EventType.BUNDLE_PUSH_REJECTED, str(exc))
            raise

    @translated
    def ListBundles(
        self, request: pb.ListBundlesRequest, context: grpc.ServicerContext
    ) -> pb.ListBundlesResponse:
        self._gate.check(context, _method("ListBundles"))
        return pb.ListBundlesResponse(bundles=[self._info(b) for b in self._store.list()])

    @translated
    def GetBundle(
        self, request: pb.GetBundleRequest, context: grpc.ServicerContext
    ) -> pb.GetBundleResponse:
        self._gate.check(context, _method("GetBundle"))
        stored = self._store.get(_required(request.version, "version"))
        return pb.GetBundleResponse(info=self._info(stored), bundle=stored.data,
                                    signature=stored.signature or b"")

    @translated
    def ActivateBundle(
        self, request: pb.ActivateBundleRequest, context: grpc.ServicerContext
    ) -> pb.ActivateBundleResponse:
        actor = self._begin(context, "ActivateBundle")
        stored = self._manager.activate(_required(request.version, "version"), by=actor)
        self._audit(context, actor, EventType.BUNDLE_ACTIVATE, "success",
                    {"version": stored.version, "digest": stored.digest})
        return pb.ActivateBundleResponse(bundle=self._info(stored))

    @translated
    def Rollback(
        self, request: pb.RollbackRequest, context: grpc.ServicerContext
    ) -> pb.RollbackResponse:
        actor = self._begin(context, "Rollback")
        stored = self._manager.rollback(by=actor)
        self._audit(context, actor, EventType.BUNDLE_ROLLBACK, "success",
                    {"version": stored.version, "digest": stored.digest})
        return pb.RollbackResponse(bundle=self._info(stored))

    @translated
    def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetStatusResponse:
        self._gate.check(context, _method("GetStatus"))
        return self._status()

    @translated
    def SetShadow(
        self, request: pb.SetShadowRequest, context: grpc.ServicerContext
    ) -> pb.SetShadowResponse:
        actor = self._begin(context, "SetShadow")
        version = request.version or None
        if version is not None:
            self._manager.compile_stored(self._store.get(version))
        self._store.set_shadow(version, by=actor, now=self._clock())
        self._manager.sync()
        self._audit(context, actor, EventType.BUNDLE_SHADOW, "success",
                    {"shadow_version": version or ""})
        return pb.SetShadowResponse(version=version or "")

    # --- quarantine ---------------------------------------------------------------------------

    @translated
    def ListQuarantine(
        self, request: pb.ListQuarantineRequest, context: grpc.ServicerContext
    ) -> pb.ListQuarantineResponse:
        self._gate.check(context, _method("ListQuarantine"))
        entries = self._store.quarantined(now=self._clock())
        return pb.ListQuarantineResponse(entries=[_entry(e) for e in entries])

    @translated
    def Quarantine(
        self, request: pb.QuarantineRequest, context: grpc.ServicerContext
    ) -> pb.QuarantineResponse:
        actor = self._begin(context, "Quarantine")
        subject = _required(request.subject, "subject")
        if not 0 < request.ttl_seconds <= MAX_QUARANTINE_SECONDS:
            raise RequestError(f"must be between 1 and {MAX_QUARANTINE_SECONDS}",
                               field="ttl_seconds")
        entry = QuarantineEntry(subject=subject, until=self._clock() + request.ttl_seconds,
                                reason=request.reason or "quarantined by an admin", by=actor)
        self._store.quarantine(entry)
        self._manager.sync()
        self._audit(context, actor, EventType.QUARANTINE, "success",
                    {"subject": subject, "until": entry.until, "reason": entry.reason},
                    Severity.WARNING)
        return pb.QuarantineResponse(entry=_entry(entry))

    @translated
    def Release(
        self, request: pb.ReleaseRequest, context: grpc.ServicerContext
    ) -> pb.ReleaseResponse:
        actor = self._begin(context, "Release")
        subject = _required(request.subject, "subject")
        released = self._store.release(subject)
        self._manager.sync()
        self._audit(context, actor, EventType.RELEASE, "success" if released else "noop",
                    {"subject": subject})
        return pb.ReleaseResponse(released=released)

    def _try_audit(self, context: grpc.ServicerContext, actor: str, type_: EventType,
                   reason: str) -> None:
        with contextlib.suppress(AuditUnavailableError):  # the push is refused either way
            self._audit(context, actor, type_, "failure", {"reason": reason}, Severity.WARNING)


def _required(value: str, field: str) -> str:
    if not value:
        raise RequestError("is required", field=field)
    return value


def _entry(entry: QuarantineEntry) -> pb.QuarantineEntry:
    return pb.QuarantineEntry(subject=entry.subject, until=int(entry.until),
                              reason=entry.reason, by=entry.by)
