"""The README's main job: the demo runs end to end and exits 0 with its summary."""

import subprocess
import sys

import pytest

from tests.hosts import EXAMPLES

pytestmark = pytest.mark.usefixtures("transport")


def test_demo_runs_and_summarises() -> None:
    import os
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--models", "2", "--ticks", "4",
         "--interval", "0.2", "--timeout", "0.5"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Summary" in out and "good models answered every tick: yes" in out
    assert "reported no-subclass: BAD_IMPLEMENTATION" in out
    assert "reported raising: MULTIPLE_FAILED" in out
    assert "stopped by the orchestrator after a report: no-subclass, raising" in out
    for model in ("good-1", "good-2", "async", "slow", "raising"):
        assert model in out

    # Read at 80 columns: nothing cut or wider, one summary, a legend, every model with its state.
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert out.count("Summary") == 1 and out.count("4 ticks") == 1
    assert "ok / fail / t/o: calls that came back SUCCESS, FAILURE" in out
    assert "err: mean |first predicted price" in " ".join(out.split())
    row = next(line for line in lines if line.lstrip().startswith("no-subclass"))
    assert "NOT SET UP" in row and "BAD_IMPLEMENTATION" in row
    assert "MODEL_FAILED:" in out  # the raising model's detail, folded, not cut to 16
