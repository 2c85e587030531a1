"""Run a guide's marked shell blocks, in order, in a throwaway working directory.

The blocks of one guide share a directory and their shell variables, like a reader's
terminal. They run in a private network namespace when the kernel allows one, so a server
started for them can take the documented ports 7443/7444 whatever else runs on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.docs.blocks import Block

__all__ = ["BlockResult", "DocRun", "isolation", "run_guide"]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PORTS = (7443, 7444)

# Runs one block with `set -e -o pipefail`; variables it defines are kept for the next block.
_WRAP = r"""__before=$(compgen -v | sort)
source .doctest/state.sh
set -eo pipefail
source "$1"
set +eo pipefail
__new=$(comm -13 <(printf '%s\n' "$__before") <(compgen -v | sort) \
        | grep -Ev '^(__before|__new|BASH.*|PIPESTATUS|FUNCNAME|LINENO|_)$')
if [ -n "$__new" ]; then declare -p $__new > .doctest/state.sh 2>/dev/null; fi
exit 0
"""

_DRIVER_HEAD = r"""set -u
ip link set lo up 2>/dev/null || true
: > .doctest/state.sh
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; wait "$server_pid"; fi
}
trap stop_server EXIT
wait_health() {
  for _ in $(seq 200); do
    # Listening is enough: health is NOT_SERVING until a bundle is active.
    case "$(pdp health "$@" 2>/dev/null)" in SERVING|NOT_SERVING) return 0;; esac
    kill -0 "$server_pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
start_dev() {
  pdp run --dir .pdp-dev > .doctest/server.log 2>&1 & server_pid=$!
  wait_health --config .pdp-dev/pdp.toml
  # `pdp run` activates the example bundle just after its listeners are up.
  for _ in $(seq 100); do
    pdp bundle list --config .pdp-dev/pdp.toml 2>/dev/null | grep -q '"active": true' && return 0
    sleep 0.1
  done
  return 1
}
start_deploy() {
  pdp serve --config pdp.toml > .doctest/server.log 2>&1 & server_pid=$!
  wait_health --config pdp.toml || return 1
  pdp bundle push policy.yaml --signature policy.yaml.sig --activate --config pdp.toml \
    > .doctest/seed.log 2>&1 || return 1
  # An identity of the data plane tries the admin plane: the admin_outsider alert that
  # the incident-response guide starts from.
  pdp status --config pdp.toml --cert certs/suspect.crt --key certs/suspect.key \
    >> .doctest/seed.log 2>&1 && return 1
  for _ in $(seq 100); do [ -s data/alerts.jsonl ] && return 0; sleep 0.1; done
  return 1
}
run_block() {
  bash .doctest/wrap.sh ".doctest/block-$1.sh" > ".doctest/out-$1" 2>&1
  echo $? > ".doctest/rc-$1"
}
"""


@dataclass(frozen=True, slots=True)
class BlockResult:
    """What one block did: its exit status (None: it never ran) and its output."""

    block: Block
    status: int | None
    output: str


@dataclass(frozen=True, slots=True)
class DocRun:
    """The results of one guide's blocks and the server's log, if a server ran."""

    results: list[BlockResult]
    server_log: str
    driver_output: str


def _netns_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ("ip link set lo up 2>/dev/null; python3 -c "
             "'import socket; socket.create_server((\"127.0.0.1\", 7443)).close()'")
    try:
        done = subprocess.run(["unshare", "-rn", "bash", "-c", probe], capture_output=True,
                              timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _ports_free() -> bool:
    for port in PORTS:
        try:
            socket.create_server(("127.0.0.1", port)).close()
        except OSError:
            return False
    return True


def isolation() -> list[str] | None:
    """The command prefix for a private network (``[]``: none needed), or None if impossible."""
    if _netns_works():
        return ["unshare", "-rn"]
    return [] if _ports_free() else None


def _pdp(work: Path, env: dict[str, str], *args: str) -> None:
    subprocess.run([str(VENV_BIN / "pdp"), *args], cwd=work, env=env, check=True,
                   capture_output=True, timeout=60)


_DEPLOY_TOML = """\
# Written by the docs test: the "typical deployment" layout of docs/incident-response.md.
data_dir = "data"
[server.data]
address = "127.0.0.1:7443"
[server.admin]
address = "127.0.0.1:7444"
[tls]
cert_file = "certs/server.crt"
key_file = "certs/server.key"
ca_file = "ca/ca.crt"
crl_file = "ca/crl.pem"
reload_interval = 0.5
[access]
authorize = ["spiffe://example.org/svc/*"]
explain = ["spiffe://example.org/svc/*"]
admin = ["spiffe://example.org/admin"]
[bundles]
require_signature = true
[bundles.trusted_keys]
bundle-1 = "keys/bundle-1.pub"
[detection]
alert_file = "data/alerts.jsonl"
[client]
target = "127.0.0.1:7443"
admin_target = "127.0.0.1:7444"
server_name = "localhost"
ca_file = "ca/ca.crt"
cert_file = "certs/pep.crt"
key_file = "certs/pep.key"
admin_cert_file = "admin.crt"
admin_key_file = "admin.key"
"""


def prepare_deploy(work: Path, env: dict[str, str]) -> None:
    """A CA, certificates, a bundle key, a signed policy.yaml and pdp.toml, made with `pdp`."""
    _pdp(work, env, "certs", "init-ca", "--ca-dir", "ca", "--cn", "docs test CA")
    issue = ("certs", "issue", "--ca-dir", "ca", "--days", "30")
    _pdp(work, env, *issue, "--out", "certs/server", "--cn", "localhost", "--dns", "localhost",
         "--ip", "127.0.0.1", "--spiffe-id", "spiffe://example.org/pdp", "--server", "--client")
    _pdp(work, env, *issue, "--out", "admin", "--cn", "admin",
         "--spiffe-id", "spiffe://example.org/admin")
    for name in ("pep", "suspect"):
        _pdp(work, env, *issue, "--out", f"certs/{name}", "--cn", name,
             "--spiffe-id", f"spiffe://example.org/svc/{name}")
    (work / "keys").mkdir()
    _pdp(work, env, "bundle", "keygen", "--out", "keys/bundle-1")
    _pdp(work, env, "bundle", "sign", "policy.yaml", "--key", "keys/bundle-1.key",
         "--key-id", "bundle-1")
    (work / "pdp.toml").write_text(_DEPLOY_TOML, encoding="utf-8")


def _environment(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
               HOME=str(work), PYTHONDONTWRITEBYTECODE="1", LC_ALL="C.UTF-8")
    return env


def run_guide(blocks: list[Block], work: Path, prefix: list[str], *,
              timeout: float = 150.0) -> DocRun:
    """Run the marked ``blocks`` of one guide in ``work``; a server starts where one is needed."""
    shutil.copytree(REPO / "examples", work / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "examples" / "bundle.yaml", work / "policy.yaml")
    (work / ".venv").symlink_to(VENV_BIN.parent)
    meta = work / ".doctest"
    meta.mkdir()
    (meta / "wrap.sh").write_text(_WRAP, encoding="utf-8")
    env = _environment(work)
    servers = {b.server for b in blocks if b.server}
    if len(servers) > 1:
        raise ValueError(f"one guide, one kind of server: {sorted(servers)}")
    if "deploy" in servers:
        prepare_deploy(work, env)
    script = [_DRIVER_HEAD]
    started = False
    for n, block in enumerate(blocks):
        (meta / f"block-{n}.sh").write_text(block.text, encoding="utf-8")
        if block.server and not started:
            script.append(f'start_{block.server} || {{ echo "server did not start"; exit 90; }}')
            started = True
        script.append(f"run_block {n}")
    (meta / "driver.sh").write_text("\n".join(script) + "\n", encoding="utf-8")
    proc = subprocess.Popen([*prefix, "bash", str(meta / "driver.sh")], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our own session: the driver and its children
        out, _ = proc.communicate()
    results = []
    for n, block in enumerate(blocks):
        rc_file, out_file = meta / f"rc-{n}", meta / f"out-{n}"
        status = int(rc_file.read_text()) if rc_file.exists() else None
        output = out_file.read_text(errors="replace") if out_file.exists() else ""
        results.append(BlockResult(block=block, status=status, output=output))
    log = meta / "server.log"
    return DocRun(results=results,
                  server_log=log.read_text(errors="replace") if log.exists() else "",
                  driver_output=out.decode(errors="replace"))
