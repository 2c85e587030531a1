"""The Cerbos peer: fetch the pinned Cerbos PDP binary from npm, serve an equivalent policy over
mTLS on loopback, check it decides as pdp does, and call CheckResources from a load worker.

The binary and compiled stubs live in benchmarks/.cache (git-ignored, never committed).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.harness import BenchEnv, ServerProc
    from benchmarks.load import Job

__all__ = [
    "CACHE",
    "PACKAGE",
    "VERSION",
    "CerbosUnavailable",
    "cerbos_call",
    "check_same_decisions",
    "compile_stubs",
    "fetch_binary",
    "start_cerbos",
]

PACKAGE = "@cerbos/cerbos-linux-x64"
VERSION = "0.55.0"  # pinned; the reference figures were taken with 0.55
CACHE = Path(__file__).resolve().parent.parent / ".cache"
PROTO_DIR = Path(__file__).resolve().parent / "proto"
_MEMBER = "package/cerbos-linux-x64"

# Equivalent to benchmarks.bundles.DOC_RULES under first-match: owner-write decides write and
# delete before deny-secret can; a non-owner's write/delete falls to the default deny in both.
POLICY = """\
apiVersion: api.cerbos.dev/v1
resourcePolicy:
  version: default
  resource: doc
  rules:
    - actions: [write, delete]
      effect: EFFECT_ALLOW
      roles: [user]
      condition:
        match:
          expr: request.resource.attr.owner == request.principal.id
    - actions: [read]
      effect: EFFECT_DENY
      roles: ["*"]
      condition:
        match:
          expr: request.resource.id.startsWith("secret-")
    - actions: [read]
      effect: EFFECT_ALLOW
      roles: [user]
"""

CONFIG = """\
server:
  grpcListenAddr: "127.0.0.1:{grpc_port}"
  httpListenAddr: "127.0.0.1:{http_port}"
  tls:
    cert: "{cert}"
    key: "{key}"
    caCert: "{ca}"
  requestLimits:  # the bulk shape of benchmarks.native sends 100 resources (default limit 50)
    maxResourcesPerRequest: 100
storage:
  driver: disk
  disk:
    directory: "{policies}"
    watchForChanges: false
audit:
  enabled: false
telemetry:
  disabled: true
"""

CASES = [  # (resource id, owner): asked for read, write and delete by user alice
    ("doc-1", "alice"), ("doc-2", "bob"), ("secret-1", "alice"), ("secret-2", "bob")]
ACTIONS = ("read", "write", "delete")


class CerbosUnavailable(Exception):
    """The Cerbos binary could not be had or started; the peer comparison is skipped."""


def fetch_binary(cache: Path = CACHE) -> Path:
    """The cached Cerbos binary, fetched with `npm pack` when absent.

    Raises CerbosUnavailable saying why it cannot be had.
    """
    binary = cache / f"cerbos-{VERSION}" / "cerbos"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise CerbosUnavailable("npm is not installed")
    cache.mkdir(parents=True, exist_ok=True)
    tgz = cache / f"cerbos-cerbos-linux-x64-{VERSION}.tgz"
    if not tgz.exists():
        try:
            subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}"], cwd=cache, check=True,
                           capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as exc:
            raise CerbosUnavailable(f"npm pack {PACKAGE}@{VERSION} failed: {exc}") from None
    if not tgz.exists():
        raise CerbosUnavailable(f"npm pack did not produce {tgz.name}")
    try:
        with tarfile.open(tgz) as tar:
            member = tar.getmember(_MEMBER)  # only this file, never a path from the archive
            source = tar.extractfile(member)
            if source is None:
                raise CerbosUnavailable(f"{_MEMBER} is not a file in {tgz.name}")
            binary.parent.mkdir(parents=True, exist_ok=True)
            binary.write_bytes(source.read())
    except (tarfile.TarError, KeyError) as exc:
        raise CerbosUnavailable(f"cannot unpack {tgz.name}: {exc}") from None
    binary.chmod(0o755)
    return binary


def compile_stubs(cache: Path = CACHE) -> Path:
    """Compile proto/cerbos_check.proto with grpc_tools into the cache; return the directory."""
    out = cache / "cerbos_stubs"
    if (out / "cerbos_check_pb2_grpc.py").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    import grpc_tools  # type: ignore[import-untyped]
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}",
                        f"--python_out={out}", f"--grpc_python_out={out}",
                        str(PROTO_DIR / "cerbos_check.proto")])
    if code != 0:
        raise CerbosUnavailable(f"protoc failed with {code}")
    return out


def _stubs(stubs_dir: str) -> tuple[Any, Any]:
    if stubs_dir not in sys.path:
        sys.path.insert(0, stubs_dir)
    import cerbos_check_pb2  # type: ignore[import-not-found]
    import cerbos_check_pb2_grpc  # type: ignore[import-not-found]

    return cerbos_check_pb2, cerbos_check_pb2_grpc


def start_cerbos(env: BenchEnv, *, cores: str | None) -> ServerProc:
    """Serve the equivalent policy with mTLS on loopback; raise CerbosUnavailable if it fails."""
    from benchmarks.harness import ServerProc, free_port, pinned, wait_port

    binary = fetch_binary()
    directory = env.directory / "servers" / "cerbos"
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "policies").mkdir(parents=True)
    (directory / "policies" / "doc.yaml").write_text(POLICY)
    port, http_port = free_port(), free_port()
    config = directory / "cerbos.yaml"
    config.write_text(CONFIG.format(grpc_port=port, http_port=http_port,
                                    cert=env.pki.server_cert, key=env.pki.server_key,
                                    ca=env.pki.ca_cert, policies=directory / "policies"))
    with (directory / "cerbos.log").open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([*pinned(cores), str(binary), "server", f"--config={config}"],
                                cwd=directory, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProc("cerbos", proc, port, directory=directory)
    env.servers.append(server)
    try:
        wait_port(port, proc)
    except RuntimeError as exc:
        raise CerbosUnavailable(f"cerbos did not start: {exc} (see {directory}/cerbos.log)"
                                ) from None
    return server


def _request(pb: Any, rid: str, owner: str) -> Any:
    req = pb.CheckResourcesRequest(request_id="bench")
    req.principal.id = "alice"
    req.principal.roles.append("user")
    entry = req.resources.add()
    entry.actions.extend(ACTIONS)
    entry.resource.kind, entry.resource.id = "doc", rid
    entry.resource.attr["owner"].string_value = owner
    return req


def check_same_decisions(env: BenchEnv, cerbos_port: int, pdp_port: int) -> list[str]:
    """Ask both the same questions (CASES x ACTIONS); return the mismatches (empty = same)."""
    import grpc

    from pdp_client._proto import authorization_pb2 as apb
    from pdp_client._proto import authorization_pb2_grpc as apb_grpc

    pb, pb_grpc = _stubs(str(compile_stubs()))
    f = env.client_files
    creds = grpc.ssl_channel_credentials(Path(f["ca_file"]).read_bytes(),
                                         Path(f["key_file"]).read_bytes(),
                                         Path(f["cert_file"]).read_bytes())
    opts = [("grpc.ssl_target_name_override", "localhost")]
    mismatches: list[str] = []
    with grpc.secure_channel(f"127.0.0.1:{cerbos_port}", creds, options=opts) as c_ch, \
            grpc.secure_channel(f"127.0.0.1:{pdp_port}", creds, options=opts) as p_ch:
        cerbos = pb_grpc.CerbosServiceStub(c_ch)
        pdp = apb_grpc.AuthorizationStub(p_ch)
        for rid, owner in CASES:
            got = cerbos.CheckResources(_request(pb, rid, owner), timeout=10)
            effects = dict(got.results[0].actions)
            batch = apb.AuthorizeBatchRequest()
            batch.defaults.subject.type, batch.defaults.subject.id = "user", "alice"
            batch.defaults.resource.type, batch.defaults.resource.id = "doc", rid
            batch.defaults.resource.properties.update({"owner": owner})
            for action in ACTIONS:
                batch.requests.add().action.name = action
            answers = pdp.AuthorizeBatch(batch, timeout=10).responses
            for action, answer in zip(ACTIONS, answers, strict=True):
                c_allow = effects.get(action) == pb.EFFECT_ALLOW
                p_allow = answer.decision == apb.DECISION_ALLOW
                if c_allow != p_allow:
                    mismatches.append(f"{rid} owner={owner} {action}: cerbos "
                                      f"{'ALLOW' if c_allow else 'DENY'}, pdp "
                                      f"{'ALLOW' if p_allow else 'DENY'}")
    return mismatches


async def cerbos_call(job: Job) -> tuple[Callable[[int], Awaitable[int]],
                                         Callable[[], Awaitable[None]]]:
    """A load-worker call: CheckResources for one resource and three actions (all ALLOW)."""
    import itertools

    import grpc
    import grpc.aio

    pb, pb_grpc = _stubs(job.stubs_dir)
    files = dict(job.files)
    creds = grpc.ssl_channel_credentials(Path(files["ca_file"]).read_bytes(),
                                         Path(files["key_file"]).read_bytes(),
                                         Path(files["cert_file"]).read_bytes())
    channels = [grpc.aio.secure_channel(job.target, creds, options=[
        ("grpc.use_local_subchannel_pool", 1), ("bench.channel", i),
        ("grpc.ssl_target_name_override", "localhost")]) for i in range(job.channels)]
    stubs = itertools.cycle([pb_grpc.CerbosServiceStub(ch) for ch in channels])
    request = _request(pb, "doc-1", "alice")

    async def call(n: int) -> int:
        got = await next(stubs).CheckResources(request, timeout=10.0)
        effects = got.results[0].actions
        if len(effects) != 3 or any(e != pb.EFFECT_ALLOW for e in effects.values()):
            raise RuntimeError("unexpected Cerbos decision")
        return 3

    async def close() -> None:
        for ch in channels:
            await ch.close()
    return call, close
