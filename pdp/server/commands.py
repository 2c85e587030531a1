"""CLI commands that run the server or talk to it: serve, run, check, bundle, quarantine, status.

Admin commands connect to the admin listener with the admin identity from the config's
``[client]`` section (or flags); `check` uses the data-plane identity.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from pdp.errors import PdpError
from pdp.server.config import ClientConfig, load_config
from pdp_client._proto import admin_pb2, admin_pb2_grpc, authorization_pb2, authorization_pb2_grpc

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add serve, run, check, bundle (admin part), quarantine and status."""
    p = subparsers.add_parser("serve", help="serve with a config file")
    p.add_argument("--config", "-c", required=True, type=Path, help="pdp.toml")
    p.set_defaults(func=_serve)

    p = subparsers.add_parser("run", help="dev mode: dev PKI + example bundle in ./.pdp-dev")
    p.add_argument("--dir", type=Path, default=Path(".pdp-dev"))
    p.add_argument("--bundle", type=Path, default=Path("examples/bundle.yaml"))
    p.set_defaults(func=_run)

    p = subparsers.add_parser("check", help="ask the PDP for one decision")
    _connection_flags(p)
    p.add_argument("--subject", required=True, help="TYPE:ID, e.g. user:alice")
    p.add_argument("--action", required=True)
    p.add_argument("--resource", required=True, help="TYPE:ID, e.g. kg.node:n1")
    p.add_argument("--subject-props", default="{}", help="JSON object")
    p.add_argument("--resource-props", default="{}", help="JSON object")
    p.add_argument("--context", default="{}", help="JSON object")
    p.add_argument("--explain", action="store_true")
    p.set_defaults(func=_check)

    p = subparsers.add_parser("quarantine", help="deny a subject before any rule")
    q = p.add_subparsers(dest="quarantine_command", required=True)
    a = q.add_parser("add")
    _connection_flags(a)
    a.add_argument("subject")
    a.add_argument("--ttl", required=True, help="seconds, or with a unit: 90s, 15m, 1h, 2d")
    a.add_argument("--reason", default="")
    a.set_defaults(func=_quarantine_add)
    a = q.add_parser("list")
    _connection_flags(a)
    a.set_defaults(func=_admin_call("ListQuarantine", admin_pb2.ListQuarantineRequest))
    a = q.add_parser("release")
    _connection_flags(a)
    a.add_argument("subject")
    a.set_defaults(func=lambda args: _admin(args, "Release",
                                             admin_pb2.ReleaseRequest(subject=args.subject)))

    p = subparsers.add_parser("shadow", help="try a stored bundle on live traffic, unenforced")
    s = p.add_subparsers(dest="shadow_command", required=True)
    a = s.add_parser("set", help="evaluate every Authorize also against VERSION")
    _connection_flags(a)
    a.add_argument("version")
    a.set_defaults(func=lambda args: _admin(
        args, "SetShadow", admin_pb2.SetShadowRequest(version=args.version)))
    a = s.add_parser("clear", help="stop shadow evaluation")
    _connection_flags(a)
    a.set_defaults(func=lambda args: _admin(args, "SetShadow", admin_pb2.SetShadowRequest()))
    a = s.add_parser("report", help="agreement rate and the top differing rules")
    _connection_flags(a)
    a.set_defaults(func=_shadow_report)

    p = subparsers.add_parser("health", help="gRPC health check over mTLS (exit 0: SERVING)")
    _connection_flags(p)
    p.add_argument("--admin", action="store_true", help="check the admin listener")
    p.set_defaults(func=_health)

    p = subparsers.add_parser("status", help="the replica's status (admin)")
    _connection_flags(p)
    p.set_defaults(func=_admin_call("GetStatus", admin_pb2.GetStatusRequest))


def register_bundle_admin(
    bundle_sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `pdp bundle push|list|get|activate|rollback|shadow` to the bundle group."""
    p = bundle_sub.add_parser("push", help="validate, store and optionally activate")
    _connection_flags(p)
    p.add_argument("bundle", type=Path)
    p.add_argument("--signature", type=Path, help="signature file from `pdp bundle sign`")
    p.add_argument("--activate", action="store_true")
    p.set_defaults(func=_push)
    p = bundle_sub.add_parser("list")
    _connection_flags(p)
    p.set_defaults(func=_admin_call("ListBundles", admin_pb2.ListBundlesRequest))
    p = bundle_sub.add_parser("activate")
    _connection_flags(p)
    p.add_argument("version")
    p.set_defaults(func=lambda args: _admin(
        args, "ActivateBundle", admin_pb2.ActivateBundleRequest(version=args.version)))
    p = bundle_sub.add_parser("rollback")
    _connection_flags(p)
    p.set_defaults(func=_admin_call("Rollback", admin_pb2.RollbackRequest))


# --- connections ------------------------------------------------------------------------------


def _connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, default=None,
                   help="pdp.toml whose [client] section says where and as whom to connect "
                        "(default: ./.pdp-dev/pdp.toml when it exists)")
    p.add_argument("--target", help="host:port")
    p.add_argument("--ca", type=Path)
    p.add_argument("--cert", type=Path)
    p.add_argument("--key", type=Path)
    p.add_argument("--server-name", default=None)
    p.add_argument("--timeout", type=float, default=10.0)


def _client_config(args: argparse.Namespace) -> ClientConfig:
    path = args.config
    if path is None and Path(".pdp-dev/pdp.toml").exists():
        path = Path(".pdp-dev/pdp.toml")
    return load_config(path).client if path is not None else ClientConfig()


def _channel(args: argparse.Namespace, *, admin: bool) -> grpc.Channel:
    cc = _client_config(args)
    target = args.target or (cc.admin_target if admin else cc.target)
    ca = args.ca or cc.ca_file
    cert = args.cert or (cc.admin_cert_file if admin else cc.cert_file)
    key = args.key or (cc.admin_key_file if admin else cc.key_file)
    if ca is None or cert is None or key is None:
        raise PdpError("no client credentials: pass --ca --cert --key or --config with [client]")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(), private_key=Path(key).read_bytes(),
        certificate_chain=Path(cert).read_bytes())
    name = args.server_name or cc.server_name
    return grpc.secure_channel(target, credentials,
                               options=[("grpc.ssl_target_name_override", name)])


def _print(message: Any) -> None:
    print(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True),
                     indent=2, sort_keys=True))


def _admin(args: argparse.Namespace, method: str, request: Any) -> int:
    with _channel(args, admin=True) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        try:
            response = getattr(stub, method)(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"pdp: {method} failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    _print(response)
    return 0


def _admin_call(method: str, request_type: type) -> Callable[[argparse.Namespace], int]:
    return lambda args: _admin(args, method, request_type())


# --- handlers -----------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from pdp.server.app import PDPServer

    config = load_config(args.config)
    if config.server.workers > 1:
        from pdp.server.workers import run_workers

        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda s, f: stop.set())
        return run_workers(args.config, config, stop)
    return _serve_until_signal(PDPServer(config))


def _serve_until_signal(server: Any, banner: str = "",
                        after_start: Callable[[], None] | None = None) -> int:
    server.start()
    if after_start is not None:
        after_start()
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"pdp: serving data on port {server.data_port}, admin on port {server.admin_port}"
          f" (replica {server.replica_id})", flush=True)
    if banner:
        print(banner, flush=True)
    stop.wait()
    print("pdp: draining and stopping", flush=True)
    server.stop()
    return 0


def _run(args: argparse.Namespace) -> int:
    from pdp.server.app import PDPServer
    from pdp.server.devmode import prepare_dev, seed_example_bundle

    config_path, banner = prepare_dev(args.dir, args.bundle)
    server = PDPServer(load_config(config_path))
    return _serve_until_signal(
        server, banner, after_start=lambda: seed_example_bundle(server, args.dir, args.bundle))


def _typed(value: str, flag: str) -> tuple[str, str]:
    kind, sep, ident = value.partition(":")
    if not sep or not kind:
        raise PdpError(f"{flag}: expected TYPE:ID, got {value!r}")
    return kind, ident


def _json_object(value: str, flag: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise PdpError(f"{flag}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PdpError(f"{flag}: expected a JSON object")
    return data


def _check(args: argparse.Namespace) -> int:
    s_type, s_id = _typed(args.subject, "--subject")
    r_type, r_id = _typed(args.resource, "--resource")
    request = authorization_pb2.AuthorizeRequest(explain=args.explain)
    request.subject.type, request.subject.id = s_type, s_id
    request.subject.properties.update(_json_object(args.subject_props, "--subject-props"))
    request.action.name = args.action
    request.resource.type, request.resource.id = r_type, r_id
    request.resource.properties.update(_json_object(args.resource_props, "--resource-props"))
    request.context.update(_json_object(args.context, "--context"))
    with _channel(args, admin=False) as channel:
        try:
            response = authorization_pb2_grpc.AuthorizationStub(channel).Authorize(
                request, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"pdp: Authorize failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    _print(response)
    return 0 if response.decision == authorization_pb2.DECISION_ALLOW else 3


def _push(args: argparse.Namespace) -> int:
    from pdp.security.signing import read_signature

    data = args.bundle.read_bytes()
    request = admin_pb2.PushBundleRequest(bundle=data, activate=args.activate)
    if args.signature is not None:
        sig = read_signature(args.signature.read_bytes())
        request.signature, request.key_id = sig.signature, sig.key_id or ""
    return _admin(args, "PushBundle", request)


def _health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _channel(args, admin=args.admin) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"pdp: health check failed: {exc.code().name}: {exc.details()}",
                  file=sys.stderr)
            return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(name)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _shadow_report(args: argparse.Namespace) -> int:
    with _channel(args, admin=True) as channel:
        try:
            status = admin_pb2_grpc.AdminStub(channel).GetStatus(
                admin_pb2.GetStatusRequest(), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"pdp: GetStatus failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    if not status.shadow.version:
        print("no shadow bundle is set (pdp shadow set VERSION)")
        return 0
    _print(status.shadow)
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in ``90``, ``90s``, ``15m``, ``1h`` or ``2d``; raise PdpError otherwise."""
    unit = text[-1:] if text[-1:] in _UNITS else "s"
    number = text[:-1] if text[-1:] in _UNITS else text
    if not number.isdigit() or int(number) <= 0:
        raise PdpError(f"--ttl: expected a positive duration like 90s, 15m, 1h, got {text!r}")
    return int(number) * _UNITS[unit]


def _quarantine_add(args: argparse.Namespace) -> int:
    request = admin_pb2.QuarantineRequest(subject=args.subject, ttl_seconds=parse_duration(
        args.ttl), reason=args.reason)
    return _admin(args, "Quarantine", request)
