"""A short run of benchmarks/soak.py: churn does not break it, and nothing leaks grossly."""

import subprocess
import sys

from tests.hosts import ROOT


def test_soak_smoke() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--models", "6", "--duration", "4",
         "--churn-every", "40", "--timeout", "2"],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    assert "6 models ready at the end" in out, out
    checked = 0
    for line in out.splitlines():
        if "open fds" in line or "live tasks" in line:
            start, end = (int(float(v)) for v in line.split("|")[2:4])
            assert end <= start + 10, line  # bounded; exact figures live in the benchmark
            checked += 1
    assert checked == 3, out  # the client's fds and tasks, the host's fds: all there
