"""Audit and detection cost per decision, in process: what the writer and the detection worker
spend on each Authorize decision, and what emitting costs the request thread.

Run: .venv/bin/python -m benchmarks.monitoring [--quick]; prints a table, writes
results/monitoring.json. Warm micro-benchmarks: a busy server pays several times these.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pdp.events
from pdp.audit import AuditConfig, AuditLog
from pdp.audit.records import format_fields, format_record
from pdp.clock import system_clock
from pdp.detect import DetectionConfig, DetectionPipeline
from pdp.events import Event, EventType, Severity

RESULTS = Path(__file__).resolve().parent / "results" / "monitoring.json"
ROUNDS = 7
TARGETS = {"format_speedup_vs_generic": 3.0}


def _details(i: int, *, deny: bool) -> Mapping[str, Any]:
    values = {
        "subject": f"user{i % 500}", "subject_type": "user", "action": "read",
        "resource_type": "document", "resource_id": f"doc-{i % 100}",
        "rule_id": "default" if deny else "allow-owner", "bundle_version": "3:ab12",
        "reason": "default deny" if deny else "", "cached": bool(i % 2),
        "decision_id": f"{i:032x}",
    }
    # The server's shape where pdp.events has it: a Mapping over a tuple.
    row_details = getattr(pdp.events, "DecisionDetails", None)
    if row_details is None:
        return values
    return row_details(tuple(values[k] for k in pdp.events.DECISION_KEYS))


def decisions(count: int, *, deny_every: int = 10, step: float = 1e-3) -> list[Event]:
    """``count`` decision events as the server emits them, one deny in ``deny_every``."""
    out = []
    for i in range(count):
        deny = i % deny_every == 0
        out.append(Event(
            type=EventType.DECISION, time=1_800_000_000.0 + i * step, event_id=f"{i:032x}",
            severity=Severity.INFO, actor="spiffe://example.org/svc/orders",
            peer="ipv4:127.0.0.1:5555", outcome="deny" if deny else "allow",
            details=_details(i, deny=deny)))
    return out


def _per_call_us(fn: Callable[[], Any], calls: int) -> float:
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls * 1e6
    finally:
        gc.enable()


def _generic(event: Event) -> tuple[bytes, str]:
    return format_fields(
        time=event.time, event_id=event.event_id, type=str(event.type),
        severity=str(event.severity), actor=event.actor, peer=event.peer,
        outcome=event.outcome, details=event.details, seq=5, prev="0" * 64)


def _writer_us(events: list[Event]) -> tuple[float, float]:
    """(emit µs on the caller, writer CPU µs) per decision: queue all, then drain at close."""
    with tempfile.TemporaryDirectory() as directory:
        config = AuditConfig(dir=Path(directory), fsync="never", queue_size=len(events) + 1,
                             batch_max=len(events) + 1, flush_interval=600.0)
        log = AuditLog(config, clock=system_clock)
        log.start()
        emit = log.emit
        t0 = time.process_time()
        for event in events:
            emit(event)
        t1 = time.process_time()
        log.close(timeout=600)
        t2 = time.process_time()
        if log.lost:
            raise RuntimeError("audit log lost events")
    return (t1 - t0) / len(events) * 1e6, (t2 - t1) / len(events) * 1e6


def _detection_us(events: list[Event]) -> tuple[float, float]:
    """(emit µs, emit + worker CPU µs) per decision, default detectors."""
    pipeline = DetectionPipeline(DetectionConfig(queue_size=len(events) + 1), clock=system_clock,
                                 quarantine=None, sinks=[])
    pipeline.start()
    t0 = time.process_time()
    for event in events:
        pipeline.emit(event)
    t1 = time.process_time()
    if not pipeline.flush(600):
        raise RuntimeError("detection did not finish")
    t2 = time.process_time()
    pipeline.close()
    return (t1 - t0) / len(events) * 1e6, (t2 - t0) / len(events) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args(argv)
    count = 5_000 if args.quick else 50_000
    allow_event = decisions(2)[1]
    samples: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)

    mixed, denies = decisions(count), decisions(count, deny_every=1)
    steady = decisions(count, step=0.02)  # 1,000 s: the deny-ratio baseline is full
    for _ in range(ROUNDS):
        add("format_record (decision)", _per_call_us(
            lambda: format_record(allow_event, seq=5, prev="0" * 64), count))
        add("format_fields (generic path)", _per_call_us(lambda: _generic(allow_event), count))
        emit, write = _writer_us(mixed)
        add("audit emit (request thread)", emit)
        add("audit writer per decision", write)
        emit, total = _detection_us(mixed)
        add("detection emit (request thread)", emit)
        add("detection, 1 deny in 10", total)
        add("detection, all denies", _detection_us(denies)[1])
        add("detection, 1 in 10, 1,000 s", _detection_us(steady)[1])
    medians = {name: statistics.median(values) for name, values in samples.items()}
    width = max(len(name) for name in medians)
    print(f"{'per decision':<{width}}  {'median µs':>9}  {'min µs':>7}   ({ROUNDS} rounds)")
    for name, value in medians.items():
        print(f"{name:<{width}}  {value:>9.2f}  {min(samples[name]):>7.2f}")
    measured = {"format_speedup_vs_generic": medians["format_fields (generic path)"]
                / medians["format_record (decision)"]}
    for name, value in measured.items():
        verdict = "ok" if value >= TARGETS[name] else "MISSED"
        print(f"target {name}: {value:.2f} (>= {TARGETS[name]}) {verdict}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "python": platform.python_version(), "quick": args.quick, "rounds": ROUNDS,
        "median_us": medians, "samples_us": samples, "targets": TARGETS, "measured": measured,
    }, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
