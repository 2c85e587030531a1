"""Wires policy, store, security, audit, telemetry and detection into the two listeners.

:class:`PDPServer` is one replica: a data listener (Authorization, Identity, Health) and an
admin listener (Admin, Health), both mutual TLS 1.3 only, sharing one engine.
"""

from __future__ import annotations

import fcntl
import gc
import json
import logging
import os
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pdp.audit import AuditLog, NullAuditLog, create_audit_log
from pdp.clock import Clock, system_clock
from pdp.detect import (
    Alert,
    AlertSink,
    CallbackAlertSink,
    DetectionPipeline,
    JsonLinesAlertSink,
    WebhookAlertSink,
)
from pdp.errors import AuditUnavailableError, ConfigError, PdpError, StoreUnavailableError
from pdp.events import Event, EventType, Severity
from pdp.policy import CompiledPolicy, DecisionCache, PolicyEngine
from pdp.policy.shadow import ShadowEvaluator
from pdp.security.identity import PeerVerifier
from pdp.security.keys import KeyStore
from pdp.security.signing import BundleVerifier
from pdp.security.tls import ServerTLS, assert_tls13_only
from pdp.security.tokens import ReplayCache, TokenIssuer, TokenVerifier
from pdp.server.access import CallerGate, build_system_policy
from pdp.server.admin import AdminService
from pdp.server.authorization import AuthorizationService
from pdp.server.authorization import add_to_server as add_authorization_to_server
from pdp.server.bundles import BundleManager
from pdp.server.config import Config
from pdp.server.hub import EventHub
from pdp.server.identity import IdentityService
from pdp.server.replay import StoreReplayCache
from pdp.store import QuarantineEntry, open_configured
from pdp.telemetry import Telemetry
from pdp_client._proto import admin_pb2, admin_pb2_grpc, identity_pb2_grpc

__all__ = ["PDPServer", "data_server_options"]

log = logging.getLogger(__name__)

HEALTH_INTERVAL = 0.5  # seconds between health / quarantine-expiry checks
KEY_PRUNE_INTERVAL = 60.0  # seconds between removals of retired token-signing keys


def data_server_options(max_message_bytes: int, *, share_port: bool) -> list[tuple[str, int]]:
    """The data listener's gRPC server options (benchmarks.floor serves with the same)."""
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Only worker processes share the port; a lone server owns it.
            ("grpc.so_reuseport", 1 if share_port else 0)]


def settle_heap() -> None:
    """After a policy was activated or set as shadow (on the server's monitor thread, once
    the push has returned): collect, then freeze what survives.

    A policy holds about two objects the collector tracks per rule (200,000 at 100,000
    rules), all long-lived. Left in its view, every full collection walked them again while
    holding the GIL: under load with 100,000 rules, a ~100 ms stop of every call about
    every 20 s (docs/performance.md, item 39). Frozen, they are never walked; they are still
    freed by reference counting when their policy is replaced (a compiled policy holds no
    reference cycle: tests/policy/test_policy_cases.py holds it to that). The full
    collection first reclaims any cyclic garbage of the moment, so none is frozen with
    them; serving itself makes none (measured with gc.callbacks under load: every
    collection found nothing to free).
    """
    gc.collect()
    gc.freeze()


class PDPServer:
    """One PDP replica. ``start()`` binds both listeners; ``stop()`` drains and closes."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock = system_clock,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self.replica_id = config.server.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self.started_at = clock()
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

        self.telemetry = telemetry or Telemetry(config.telemetry)
        self.audit: AuditLog | NullAuditLog = create_audit_log(config.audit_config, clock=clock)
        self.store = open_configured(config.store, data_dir=config.data_dir, clock=clock)
        self.tls = ServerTLS(config.tls, clock=clock, on_reload=self._on_cert_reload)
        self.peers = PeerVerifier(self.tls, clock=clock)

        self.cache = (
            DecisionCache(max_size=config.cache.max_size, ttl=config.cache.ttl, clock=clock,
                          admission=config.cache.admission)
            if config.cache.enabled else None)
        self.engine = PolicyEngine(cache=self.cache, clock=clock)

        sinks: list[AlertSink] = [CallbackAlertSink(self._on_alert)]
        if config.detection.alert_file is not None:
            sinks.append(JsonLinesAlertSink(config.detection.alert_file))
        if config.detection.webhook.url:
            sinks.append(WebhookAlertSink(config.detection.webhook))
        self.detection: DetectionPipeline | None = (
            DetectionPipeline(config.detection, clock=clock, quarantine=self._quarantine,
                              sinks=sinks) if config.detection.enabled else None)
        self.events = EventHub(self.audit, [self.detection] if self.detection else [])

        self.keys = KeyStore(config.key_config, clock=clock)
        self.token_issuer = TokenIssuer(self.keys, issuer=config.tokens.issuer, clock=clock)
        self.token_verifier = TokenVerifier(
            keys=self.keys,
            jwks_file=config.tokens.external_jwks_file,
            issuer=tuple(i for i in (config.tokens.issuer, config.tokens.external_issuer) if i),
            audience=config.tokens.audience,
            leeway=config.key_config.leeway,
            clock=clock,
            replay=(StoreReplayCache(self.store, clock=clock) if config.tokens.shared_replay
                    else ReplayCache(clock=clock)),
        )
        self.shadow = ShadowEvaluator(clock=clock)
        self.manager = BundleManager(
            store=self.store, engine=self.engine,
            verifier=BundleVerifier.from_config(config.bundles), limits=config.limits,
            clock=clock, on_activated=self._on_activated, on_shadow=self.shadow.set_policy,
            on_settled=settle_heap)

        system_policy = build_system_policy(config.access)
        self.data_gate = self._gate("data", system_policy, config.server.data.allow_cidrs)
        self.admin_gate = self._gate("admin", system_policy, config.server.admin.allow_cidrs)
        self.authorization = AuthorizationService(
            engine=self.engine, gate=self.data_gate, tokens=self.token_verifier,
            events=self.events, telemetry=self.telemetry, clock=clock,
            max_batch=config.server.max_batch, fail_open_audit=config.audit_config.fail_open,
            shadow=self.shadow)
        self.identity = IdentityService(
            issuer=self.token_issuer, keys=self.keys, gate=self.data_gate, events=self.events,
            clock=clock, default_ttl=config.tokens.default_ttl)
        self.admin = AdminService(
            manager=self.manager, store=self.store, gate=self.admin_gate, events=self.events,
            audit_healthy=lambda: self.audit.healthy, status=self.status, clock=clock,
            max_bundle_bytes=config.server.max_bundle_bytes)
        self._health_data = health.HealthServicer()
        self._health_admin = health.HealthServicer()
        self._data_server: grpc.Server | None = None
        self._admin_server: grpc.Server | None = None
        self.data_port = 0
        self.admin_port = 0
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._lost_directory = ""  # why this server no longer owns its data directory
        self._active_kid = ""

    def _gate(self, listener: str, policy: CompiledPolicy, cidrs: tuple[str, ...]) -> CallerGate:
        return CallerGate(listener=listener, peers=self.peers, system_policy=policy,
                          events=self.events, clock=self._clock, allow_cidrs=cidrs,
                          on_refusal=self.telemetry.record_auth_failure)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Restore the active bundle, bind both listeners, prove TLS 1.2 is refused.

        Raises ConfigError when another process serves from the same audit directory
        (two writers would fork the hash chain) or a listener cannot bind.
        """
        self._lock_fd = _lock_directory(self.config.audit_config.dir)
        self.audit.start()
        self.shadow.start()
        if self.detection is not None:
            self.detection.start()
        self._active_kid = self.keys.ensure_active()
        try:
            self.manager.sync()
        except PdpError as exc:
            log.error("the stored active bundle cannot serve: %s; serving none until fixed", exc)
        self.telemetry.observe_gauges(
            active_bundle_sequence=lambda: self.engine.policy.sequence if self.engine.policy
            else 0,
            cert_expiry_days=lambda: {"server": self.tls.server_certificate_status().days_left},
            audit_queue_depth=lambda: self.audit.queue_depth,
        )
        srv = self.config.server
        self._data_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=srv.threads, thread_name_prefix="pdp-data"),
            options=data_server_options(srv.max_message_bytes, share_port=srv.workers > 1),
            maximum_concurrent_rpcs=srv.threads * 64,
        )
        add_authorization_to_server(self.authorization, self._data_server)
        identity_pb2_grpc.add_IdentityServicer_to_server(self.identity, self._data_server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health_data, self._data_server)
        self.data_port = _bind(self._data_server, srv.data.address, self.tls.credentials(),
                               "[server.data].address")

        if srv.serve_admin:
            self._start_admin()
        self._data_server.start()

        if srv.tls12_probe:
            try:
                self._prove_tls13_only()
            except PdpError:
                self.stop(grace=0)
                raise
        self.store.watch(self._on_store_change, poll_interval=self.config.store.poll_interval)
        self._update_health()
        # Long-lived start-up state (modules, connections, threads) leaves the collector's
        # view, so collections triggered by per-call garbage do not re-scan it; each
        # activation does the same for its policy (settle_heap).
        gc.freeze()
        self._monitor = threading.Thread(target=self._watch_health, name="pdp-health",
                                         daemon=True)
        self._monitor.start()
        self._event(EventType.SERVICE_START, "success",
                    {"replica": self.replica_id, "data_port": self.data_port,
                     "admin_port": self.admin_port})

    def _prove_tls13_only(self) -> None:
        """A real TLS 1.2 handshake against our own port must fail, and TLS 1.3 succeed."""
        host = self.config.server.data.address.rpartition(":")[0].strip("[]") or "127.0.0.1"
        wildcard = host in ("0.0.0.0", "::")  # noqa: S104 - probing, not binding
        assert_tls13_only("127.0.0.1" if wildcard else host, self.data_port,
                          ca_file=self.config.tls.ca_file, cert_file=self.config.tls.cert_file,
                          key_file=self.config.tls.key_file,
                          server_name=self.config.client.server_name)

    def _start_admin(self) -> None:
        srv = self.config.server
        self._admin_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="pdp-admin"),
            options=[("grpc.max_receive_message_length", srv.max_bundle_bytes),
                     ("grpc.max_send_message_length", srv.max_bundle_bytes),
                     ("grpc.so_reuseport", 0)],
        )
        admin_pb2_grpc.add_AdminServicer_to_server(self.admin, self._admin_server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health_admin, self._admin_server)
        self.admin_port = _bind(self._admin_server, srv.admin.address, self.tls.credentials(),
                                "[server.admin].address")
        self._admin_server.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, drain in-flight ones for ``grace`` seconds, flush the audit."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        grace = self.config.server.grace_seconds if grace is None else grace
        self._set_health(serving=False)
        events = [s.stop(grace) for s in (self._data_server, self._admin_server) if s]
        for event in events:
            event.wait()
        self._event(EventType.SERVICE_STOP, "success", {"replica": self.replica_id})
        if self.detection is not None:
            self.detection.close(timeout=grace)
        self.shadow.close()
        self.audit.close(timeout=max(grace, 5.0))
        self.store.close()
        self.telemetry.shutdown()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def wait(self) -> None:
        """Block until stop() is called."""
        self._stopping.wait()

    # --- health, status ------------------------------------------------------------------------

    def _serving(self) -> bool:
        return self.engine.policy is not None and not self._lost_directory and (
            self.audit.healthy or self.config.audit_config.fail_open)

    def _set_health(self, *, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for servicer in (self._health_data, self._health_admin):
            servicer.set("", status)
            servicer.set("pdp.v1.Authorization", status)

    def _update_health(self) -> None:
        self._set_health(serving=self._serving())

    def _watch_health(self) -> None:
        store_down = False
        next_prune = 0.0
        while not self._stopping.wait(HEALTH_INTERVAL):
            try:
                self._check_directory_lock()
                self._update_health()
                self.manager.sync_if_changed()
                self.manager.settle()
                self._watch_keys()
                if self.config.server.serve_admin and time.monotonic() >= next_prune:
                    # Retired signing keys (all their tokens expired) leave the disk.
                    next_prune = time.monotonic() + KEY_PRUNE_INTERVAL
                    self.keys.prune()
                if store_down:
                    log.warning("bundle store reachable again")
                    store_down = False
            except StoreUnavailableError as exc:
                # Keep serving the compiled bundle; say so once, not every half second.
                if not store_down:
                    log.warning("bundle store unavailable, serving the last active bundle: %s",
                                exc)
                    store_down = True
            except Exception:  # the monitor must outlive any one failure
                log.exception("health monitor")

    def _check_directory_lock(self) -> None:
        """Fail closed for good once the audit directory's lock file is removed or replaced
        (the data directory deleted, perhaps recreated, under this running server): another
        server may own the directory now, and two writers would fork its hash chain. The
        audit trail stops writing, so decisions are refused (DENY "audit unavailable",
        unless fail_open), and health stays NOT_SERVING until this server is restarted."""
        if self._lock_fd is None or self._lost_directory:
            return
        path = _lock_path(self.config.audit_config.dir)
        try:
            held = os.fstat(self._lock_fd)
            same = os.path.samestat(os.stat(path), held)
        except FileNotFoundError:
            same = False
        if same:
            return
        self._lost_directory = (
            f"the lock file {path} was removed or replaced under this running server: "
            "another server may own its directory now; restart this one")
        log.error("%s; refusing decisions and writing no more audit records",
                  self._lost_directory)
        self.audit.abandon(self._lost_directory)

    def _watch_keys(self) -> None:
        """Audit the moment this replica starts signing with a key rotated on disk."""
        self.keys.reload_if_changed()
        kid = self.keys.active().kid
        if kid != self._active_kid:
            self._event(EventType.KEY_ROTATE, "success",
                        {"active_kid": kid, "previous_kid": self._active_kid})
            self._active_kid = kid

    def status(self) -> admin_pb2.GetStatusResponse:
        """The GetStatus answer for this replica."""
        policy = self.engine.policy
        response = admin_pb2.GetStatusResponse(
            active_version=policy.version if policy else "",
            active_sequence=policy.sequence if policy else 0,
            serving=self._serving(),
            evaluation_errors=self.engine.evaluation_errors,
            replica_id=self.replica_id,
            started_at=int(self.started_at),
        )
        if self.cache is not None:
            stats = self.cache.stats()
            response.cache.CopyFrom(admin_pb2.CacheStats(
                hits=stats.hits, misses=stats.misses, size=stats.size, max_size=stats.max_size))
        cert = self.tls.server_certificate_status()
        response.certificates.add(name="server", subject=cert.subject,
                                  spiffe_id=cert.spiffe_id or "", serial=str(cert.serial),
                                  not_after=int(cert.not_after), days_left=cert.days_left)
        report = self.shadow.report()
        if report.version:
            response.shadow.CopyFrom(admin_pb2.ShadowReport(
                version=report.version, evaluated=report.evaluated, agreed=report.agreed,
                agreement_rate=report.agreement_rate,
                top_differences=[admin_pb2.ShadowDifference(
                    active_rule_id=d.active_rule, shadow_rule_id=d.shadow_rule,
                    active_decision=d.active_decision, shadow_decision=d.shadow_decision,
                    count=d.count,
                    sample_request_json=json.dumps(d.samples[0], sort_keys=True)
                    if d.samples else "") for d in report.top_differences]))
        response.audit.CopyFrom(admin_pb2.AuditStatus(
            healthy=self.audit.healthy, queue_depth=self.audit.queue_depth,
            dropped=self.audit.sampled_out, error=self.audit.last_error))
        return response

    # --- callbacks ------------------------------------------------------------------------------

    def _on_store_change(self) -> None:
        try:
            self.manager.sync()
        except PdpError as exc:
            log.error("could not apply a change from the store: %s", exc)

    def _on_activated(self, policy: CompiledPolicy) -> None:
        self._event(EventType.BUNDLE_ACTIVATED, "success",
                    {"version": policy.version, "sequence": policy.sequence,
                     "digest": policy.digest, "replica": self.replica_id})
        if self._data_server is not None:
            self._update_health()

    def _on_cert_reload(self, what: str) -> None:
        self._event(EventType.CERT_RELOAD, "success", {"what": what})

    def _quarantine(self, subject: str, ttl: float, reason: str) -> None:
        entry = QuarantineEntry(subject=subject, until=self._clock() + ttl, reason=reason,
                                by="detector")
        self.store.quarantine(entry)
        self.manager.sync()
        self._event(EventType.QUARANTINE, "success",
                    {"subject": subject, "until": entry.until, "reason": reason},
                    actor="detector", severity=Severity.HIGH)

    def _on_alert(self, alert: Alert) -> None:
        self.telemetry.record_alert(alert.detector, str(alert.severity))
        self._event(EventType.ALERT, "raised", {
            "alert_id": alert.alert_id, "detector": alert.detector, "key": alert.key,
            "count": alert.count, "first_seen": alert.first_seen, "last_seen": alert.last_seen,
            "action": alert.action}, actor="detector", severity=Severity(str(alert.severity)))

    def _event(self, type_: EventType, outcome: str, details: dict[str, object], *,
               actor: str = "", severity: Severity = Severity.INFO) -> None:
        try:
            self.audit.emit(Event(type=type_, time=self._clock(), severity=severity,
                                  actor=actor or self.replica_id, outcome=outcome,
                                  details=details))
        except AuditUnavailableError as exc:
            log.error("audit unavailable for %s: %s", type_, exc)


def _lock_path(directory: Path) -> Path:
    return directory.parent / f".{directory.name}.lock"


def _lock_directory(directory: Path) -> int:
    """Take an exclusive lock next to ``directory``; raise ConfigError if another holds it."""
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _lock_path(directory)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"another pdp process is already serving with {directory} "
                          f"(lock {path}); each server or worker needs its own",
                          field="[audit].dir") from None
    return fd


def _bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials,
          field: str) -> int:
    try:
        port: int = server.add_secure_port(address, credentials)
    except RuntimeError:
        raise ConfigError(f"cannot listen on {address}: the address is in use or not local",
                          field=field) from None
    return port
