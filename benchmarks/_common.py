"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path

from model_runner import process

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
EXAMPLES = ROOT / "examples"
OUT = BENCH / "out"


def start_script(script: str, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """Run benchmarks/<script> PORT ARGS... and wait until it listens on PORT."""
    return process.start_script(BENCH / script, *args, python_path=[EXAMPLES, ROOT])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers, *[[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)
