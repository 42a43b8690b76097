"""The README's main job: the demo runs end to end and exits 0 with its summary."""

import subprocess
import sys

import pytest

from tests.hosts import EXAMPLES

pytestmark = pytest.mark.usefixtures("transport")


def test_demo_runs_and_summarises() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--models", "2", "--ticks", "4",
         "--interval", "0.2", "--timeout", "0.5"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Summary" in out and "good models answered every tick: yes" in out
    assert "reported no-subclass: BAD_IMPLEMENTATION" in out
    assert "reported raising: MULTIPLE_FAILED" in out
    assert "stopped by the orchestrator after a report: no-subclass, raising" in out
    for model in ("good-1", "good-2", "async", "slow", "raising"):
        assert model in out
