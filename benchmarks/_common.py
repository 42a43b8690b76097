"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from model_runner.process import host_environment

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
EXAMPLES = ROOT / "examples"
OUT = BENCH / "out"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_script(script: str, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """Run benchmarks/<script> PORT ARGS... and wait until it listens on PORT."""
    port = free_port()
    return start_listening([sys.executable, str(BENCH / script), str(port), *args], port,
                           env=host_environment([EXAMPLES, ROOT])), port


def start_listening(argv: list[str], port: int, *, env: dict[str, str],
                    cwd: Path | None = None, timeout: float = 30) -> subprocess.Popen[bytes]:
    """Run `argv` and wait until something listens on 127.0.0.1:`port`."""
    script = Path(argv[1]).name if len(argv) > 1 else argv[0]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env, cwd=cwd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{script} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{script} did not listen on {port}")


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
