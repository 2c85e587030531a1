"""Fixtures for the audit tests: started AuditLogs in a temp dir, closed afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pdp.audit import AuditConfig, AuditLog
from pdp.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_log(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., AuditLog]]:
    """Start AuditLogs on ``tmp_path / 'audit'`` (settings overridable); closes them all."""
    logs: list[AuditLog] = []

    def make(**settings: Any) -> AuditLog:
        settings.setdefault("dir", tmp_path / "audit")
        settings.setdefault("flush_interval", 0.01)
        log = AuditLog(AuditConfig(**settings), clock=clock)
        log.start()
        logs.append(log)
        return log

    yield make
    for log in logs:
        log.close(timeout=2.0)
