"""Every marked shell block of README.md and docs/*.md runs and exits as its marker says.

Guides run concurrently, each in its own directory (and network namespace when possible);
see docs/README.md for the marker convention.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.docs.blocks import SHELL_INFOS, Block, MarkerError, extract_blocks
from tests.docs.sandbox import REPO, DocRun, isolation, run_guide

GUIDES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = [g for g in GUIDES if any(b.runs for b in extract_blocks(g))]


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO)) for p in paths]


@pytest.fixture(scope="module")
def guide_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Path, DocRun]]:
    prefix = isolation()
    if prefix is None:
        pytest.skip("no network namespace and ports 7443/7444 are taken: cannot run servers")
    base = tmp_path_factory.mktemp("guides")

    def one(guide: Path) -> DocRun:
        work = base / guide.stem
        work.mkdir()
        return run_guide([b for b in extract_blocks(guide) if b.runs], work, prefix)

    # Without a private network each guide's server needs the ports alone: run one at a time.
    with ThreadPoolExecutor(max_workers=3 if prefix else 1) as pool:
        yield dict(zip(RUNNABLE, pool.map(one, RUNNABLE), strict=True))


@pytest.mark.parametrize("guide", RUNNABLE, ids=_ids(RUNNABLE))
def test_guide_commands_run(guide: Path, guide_runs: dict[Path, DocRun]) -> None:
    run = guide_runs[guide]
    failures = []
    for result in run.results:
        expected = result.block.exit_code
        if result.status != expected:
            failures.append(f"{result.block.where}: exit {result.status}, expected {expected}\n"
                            f"--- block\n{result.block.text}--- output\n{result.output}")
    detail = "\n".join(failures)
    if failures and run.server_log:
        detail += f"\n--- driver\n{run.driver_output}\n--- server log (tail)\n" \
                  f"{run.server_log[-3000:]}"
    assert not failures, detail


@pytest.mark.parametrize("guide", GUIDES, ids=_ids(GUIDES))
def test_every_shell_block_is_marked(guide: Path) -> None:
    unmarked = [b.where for b in extract_blocks(guide) if b.info in SHELL_INFOS and not b.marked]
    assert not unmarked, ("mark each shell block `<!-- doc-test -->` (it runs) or "
                          f"`<!-- doc-test skip: why -->`: {unmarked}")


def test_docs_index_links_every_guide() -> None:
    index = (REPO / "docs" / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([\w.-]+\.md)\)", index))
    guides = {p.name for p in (REPO / "docs").glob("*.md")} - {"README.md"}
    assert guides <= linked, f"not in docs/README.md: {sorted(guides - linked)}"


def test_docs_index_names_guides_with_skipped_blocks() -> None:
    index = (REPO / "docs" / "README.md").read_text(encoding="utf-8")
    section = index.split("## Commands that are not run", 1)[1].split("\n## ", 1)[0]
    for guide in GUIDES:
        if any(b.skip for b in extract_blocks(guide)):
            assert guide.name in section, f"{guide.name} has skipped blocks: name it"


# --- the runner itself: a test that cannot fail would prove nothing ------------------------------


def _guide(tmp_path: Path, text: str) -> list[Block]:
    path = tmp_path / "guide.md"
    path.write_text(text, encoding="utf-8")
    return extract_blocks(path)


def test_runner_reports_a_failing_command_and_keeps_variables(tmp_path: Path) -> None:
    blocks = _guide(tmp_path, (
        "<!-- doc-test -->\n```sh\nGREETING=hello\ntest -d examples\n```\n"
        "<!-- doc-test exit=3 -->\n```sh\ntest \"$GREETING\" = hello\nexit 3\n```\n"
        "  <!-- doc-test -->\n  ```bash\n  false\n  echo never printed\n  ```\n"))
    work = tmp_path / "work"
    work.mkdir()
    run = run_guide(blocks, work, [])
    assert [r.status for r in run.results] == [0, 3, 1]
    assert "never printed" not in run.results[2].output


def test_marker_without_fence_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MarkerError, match="not followed by a fence"):
        _guide(tmp_path, "<!-- doc-test -->\n\n```sh\ntrue\n```\n")


def test_unknown_marker_option_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MarkerError, match="unknown doc-test option"):
        _guide(tmp_path, "<!-- doc-test exit=zero -->\n```sh\ntrue\n```\n")


def test_skip_needs_a_reason(tmp_path: Path) -> None:
    with pytest.raises(MarkerError, match="needs a reason"):
        _guide(tmp_path, "<!-- doc-test skip -->\n```sh\ndocker ps\n```\n")
    (block,) = _guide(tmp_path, "<!-- doc-test skip: needs docker -->\n```sh\ndocker ps\n```\n")
    assert not block.runs and block.skip == "needs docker"


def test_security_architecture_names_only_real_tests() -> None:
    text = (REPO / "docs" / "security-architecture.md").read_text(encoding="utf-8")
    refs = re.findall(r"`(tests/[\w/]+\.py)?::(test_\w+)`", text)
    assert len(refs) > 40
    current, missing = "", []
    for path, name in refs:
        current = path or current  # `::name` continues the file named before it
        if f"def {name}(" not in (REPO / current).read_text(encoding="utf-8"):
            missing.append(f"{current}::{name}")
    assert not missing, missing
