"""Fixtures for the detection tests: a fake clock, a recorder, a pipeline factory, a webhook."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from detect_support import MakePipeline, Recorder, WebhookServer

from pdp.clock import FakeClock
from pdp.configuration import build_section
from pdp.detect import DetectionConfig, DetectionPipeline


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_pipeline(clock: FakeClock, recorder: Recorder) -> Iterator[MakePipeline]:
    """Build (from a TOML-like mapping), start and finally close a pipeline."""
    made: list[DetectionPipeline] = []

    def make(settings: Mapping[str, Any] | None = None, **kwargs: Any) -> DetectionPipeline:
        config = build_section(DetectionConfig, settings or {}, where="[detection]")
        kwargs.setdefault("quarantine", recorder.quarantine)
        kwargs.setdefault("sinks", [recorder])
        pipeline = DetectionPipeline(config, clock=clock, **kwargs)
        pipeline.start()
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.close(timeout=5.0)


@pytest.fixture
def webhook_server() -> Iterator[WebhookServer]:
    server = WebhookServer()
    yield server
    server.close()
