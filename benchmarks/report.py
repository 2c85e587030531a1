"""Benchmark figures: one window's numbers, medians over rounds, tables and the JSON file.

A row is one configuration measured in several rounds; the table shows the medians.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.load import WorkerResult

__all__ = ["Row", "Window", "machine", "percentile", "print_table", "window", "write_json"]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class Window:
    """One timed window of one configuration."""

    calls: int
    decisions: int
    errors: int
    seconds: float
    calls_per_s: float
    decisions_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_call: float  # server process CPU time / calls
    client_cpu_pct: float  # load generators' CPU / (window x client cores)
    first_error: str = ""
    workers: int = 0  # load-generator processes that sent this window's calls
    max_ms: float = 0.0  # the window's slowest call


def window(results: Sequence[WorkerResult], server_cpu_s: float, *,
           client_cores: int) -> Window:
    """Combine the workers' results and the server CPU seconds of one window."""
    calls = sum(r.calls for r in results)
    decisions = sum(r.decisions for r in results)
    seconds = max(r.elapsed for r in results)
    lat = [x for r in results for x in r.latencies]
    cpu = sum(r.cpu for r in results)
    errors = [r.first_error for r in results if r.first_error]
    return Window(
        calls=calls, decisions=decisions, errors=sum(r.errors for r in results),
        seconds=seconds, calls_per_s=calls / seconds, decisions_per_s=decisions / seconds,
        p50_ms=percentile(lat, 50) * 1e3, p99_ms=percentile(lat, 99) * 1e3,
        server_cpu_us_per_call=server_cpu_s / calls * 1e6 if calls else 0.0,
        client_cpu_pct=100 * cpu / (seconds * client_cores),
        first_error=errors[0] if errors else "", workers=len(results),
        max_ms=max(lat, default=0.0) * 1e3)


@dataclass
class Row:
    """One configuration across rounds."""

    name: str
    note: str = ""
    rounds: list[Window] = field(default_factory=list)

    def median(self, attr: str) -> float:
        """Median over rounds of one Window field."""
        return statistics.median(getattr(w, attr) for w in self.rounds) if self.rounds else 0.0

    @property
    def errors(self) -> int:
        return sum(w.errors for w in self.rounds)

    @property
    def slowest_ms(self) -> float:
        """The slowest call of every round (a stall shows here, not in a median)."""
        return max((w.max_ms for w in self.rounds), default=0.0)

    def summary(self) -> dict[str, Any]:
        """Medians plus every round, for the JSON file."""
        keys = ("calls_per_s", "decisions_per_s", "p50_ms", "p99_ms",
                "server_cpu_us_per_call", "client_cpu_pct")
        return {"name": self.name, "note": self.note, "errors": self.errors,
                "median": {k: round(self.median(k), 3) for k in keys},
                "slowest_ms": round(self.slowest_ms, 3),
                "rounds": [asdict(w) for w in self.rounds]}


def paired_ratio(a: Row, b: Row, attr: str) -> float | None:
    """The median over rounds of row ``a``'s figure over row ``b``'s in the same round (rows
    measured in the same rounds, seconds apart, so the machine's drift between rounds
    cancels out); None when the rows have no rounds in common."""
    if not a.rounds or len(a.rounds) != len(b.rounds):
        return None
    ratios = [getattr(x, attr) / getattr(y, attr)
              for x, y in zip(a.rounds, b.rounds, strict=True) if getattr(y, attr)]
    return statistics.median(ratios) if ratios else None


_COLUMNS = (("calls/s", "calls_per_s", "{:,.0f}"), ("decisions/s", "decisions_per_s", "{:,.0f}"),
            ("p50 ms", "p50_ms", "{:.2f}"), ("p99 ms", "p99_ms", "{:.2f}"),
            ("srv CPU us/call", "server_cpu_us_per_call", "{:,.0f}"),
            ("client CPU %", "client_cpu_pct", "{:.0f}"))


def print_table(title: str, rows: Sequence[Row]) -> str:
    """Print (and return) a table of the rows' medians and of each row's slowest call."""
    width = max([len(r.name) for r in rows] + [14])
    head = (f"{'configuration':<{width}}  " + "  ".join(f"{c:>15}" for c, _, _ in _COLUMNS)
            + f"  {'slowest ms':>12}")
    lines = [f"\n== {title} (median of {max((len(r.rounds) for r in rows), default=0)} "
             "rounds; slowest: the slowest call of them all)", head, "-" * len(head)]
    for r in rows:
        cells = "  ".join(f"{fmt.format(r.median(attr)):>15}" for _, attr, fmt in _COLUMNS)
        cells += f"  {r.slowest_ms:>12.1f}"
        extra = f"  errors={r.errors}" if r.errors else ""
        lines.append(f"{r.name:<{width}}  {cells}{extra}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


# Issue 8's targets that compare two figures: the comparison and the bound of the ratio of
# the medians, which decides "met". benchmarks.run (pdp-client) and benchmarks.native (the
# native generator) judge by these same bounds.
RATIO_TARGETS: dict[str, tuple[str, float]] = {
    "sequential p50 <= 1.05x floor": ("<=", 1.05),
    "server CPU/call <= 1.15x floor": ("<=", 1.15),
    "CPU/call batch(3) <= Cerbos": ("<=", 1.0),
    "Authorize calls/s at 32 >= Cerbos": (">=", 1.0),
    "batch(100) >= 20x single decisions/s": (">=", 20.0),
}


def meets(target: str, ratio: float | None) -> bool:
    """Whether ``ratio`` meets the ratio target named ``target`` (never when it is None)."""
    comparison, bound = RATIO_TARGETS[target]
    return ratio is not None and (ratio <= bound if comparison == "<=" else ratio >= bound)


def print_targets(title: str, targets: dict[str, dict[str, Any]]) -> None:
    """Print each target as met or not, with its figures (floats to three places)."""
    print(f"\n== {title}")
    for name, target in targets.items():
        figures = ", ".join(f"{k}={x:.3f}" if isinstance(x, float) else f"{k}={x}"
                            for k, x in target.items() if k != "met")
        print(f"  [{'met' if target['met'] else 'NOT met'}] {name}: {figures}")


def machine() -> dict[str, Any]:
    """nproc, CPU model, Python and grpcio versions, taskset availability."""
    import shutil

    import grpc

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "grpcio": grpc.__version__, "kernel": platform.release(),
            "taskset": shutil.which("taskset") is not None,
            "loadavg": os.getloadavg()}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write the results file (creating benchmarks/results/ when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
