"""The model host image's entrypoint script, run directly (no Docker engine here)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from model_runner.process import host_environment
from tests.hosts import EXAMPLES, ROOT, SUBMISSIONS

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def run_entrypoint(code: Path, tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    environ = host_environment([EXAMPLES], {
        "CODE_DIRECTORY": str(code), "GRPC_ADDRESS": "127.0.0.1:0", "LOG_LEVEL": "INFO",
        "RESOURCE_DIRECTORY": str(tmp_path), "PYTHON": sys.executable, **env})
    return subprocess.Popen(["sh", str(ENTRYPOINT)], env=environ, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)


def test_installs_requirements_then_serves_and_drains(tmp_path: Path) -> None:
    code = tmp_path / "code"
    shutil.copytree(SUBMISSIONS / "good_tracker", code)
    (code / "requirements.txt").write_text("msgspec\n")  # already satisfied: no download
    proc = run_entrypoint(code, tmp_path)
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if re.search(r"model host serving .* on 127\.0\.0\.1:\d+", line):
            break
    else:
        raise AssertionError("".join(lines))
    assert any("installing" in line for line in lines)
    os.kill(proc.pid, signal.SIGTERM)  # exec'd: the host itself gets the signal
    assert proc.wait(20) == 0


def test_a_broken_requirements_file_fails_clearly(tmp_path: Path) -> None:
    code = tmp_path / "code"
    shutil.copytree(SUBMISSIONS / "good_tracker", code)
    (code / "requirements.txt").write_text("--not-an-option\n")
    proc = run_entrypoint(code, tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3
    assert "installing" in err and "failed; fix the submission's requirements" in err


def test_bad_options_still_exit_with_one_line(tmp_path: Path) -> None:
    proc = run_entrypoint(tmp_path / "missing", tmp_path, SKIP_REQUIREMENTS="1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "does not exist" in err and "Traceback" not in err
