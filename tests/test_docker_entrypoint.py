"""The model host image's entrypoint script, run directly (no Docker engine here), with the
environment the image and the Model Orchestrator give it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model_runner.process import host_environment
from tests.hosts import EXAMPLES, ROOT, SUBMISSIONS, health

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def image_environment(code: Path, tmp_path: Path) -> dict[str, str]:
    """docker/Dockerfile's ENV (port 0 for the test), then what the orchestrator sets."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "GRPC_ADDRESS=[::]:50051" in dockerfile and "SECURE=False" in dockerfile
    return {"CODE_DIRECTORY": str(code), "GRPC_ADDRESS": "[::]:0", "LOG_LEVEL": "INFO",
            "RESOURCE_DIRECTORY": str(tmp_path), "CERTIFICATES_DIRECTORY": str(tmp_path / "no"),
            "SECURE": "False", "MODEL_ID": "7", "CRUNCH_ONCHAIN_ADDRESS": "",
            "CRUNCHER_WALLET_PUBKEY": "", "CRUNCHER_HOTKEY": "", "COORDINATOR_WALLET_PUBKEY": "",
            "COORDINATOR_CERT_HASH": "", "COORDINATOR_CERT_HASH_SECONDARY": ""}


def run_entrypoint(code: Path, tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    environ = host_environment([EXAMPLES], {**image_environment(code, tmp_path),
                                            "PYTHON": sys.executable, **env})
    # The orchestrator's CMD.
    return subprocess.Popen(["sh", str(ENTRYPOINT), "--code-directory", f"{code}/",
                             "--resource-directory", str(tmp_path)], env=environ,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def wait_serving(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    """The port the host announced, and the lines it printed until then."""
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        match = re.search(r"model host serving .* on \[::\]:(\d+)", line)
        if match:
            return int(match[1]), lines
    raise AssertionError("".join(lines))


def test_installs_requirements_then_serves_and_drains(tmp_path: Path) -> None:
    code = tmp_path / "code"
    shutil.copytree(SUBMISSIONS / "good_tracker", code)
    (code / "requirements.txt").write_text("msgspec\n")  # already satisfied: no download
    proc = run_entrypoint(code, tmp_path)
    _, lines = wait_serving(proc)
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


@pytest.mark.anyio
@pytest.mark.parametrize("secure", [False, True])
async def test_the_orchestrator_s_container_contract(secure: bool, tmp_path: Path) -> None:
    """The entrypoint with the image's and the orchestrator's environment and CMD: reached over
    IPv4 and IPv6 on [::], in secure mode from the certificates directory alone."""
    from grpclib.health.v1.health_pb2 import HealthCheckResponse

    from tests.deployment import Deployment

    env = {"SKIP_REQUIREMENTS": "1"}
    context = None
    if secure:
        deployment = Deployment(tmp_path / "deployment")
        env.update(deployment.environment())
        env.pop("GRPC_ADDRESS")
        context = deployment.coordinator(deployment.pki.client_cert, deployment.pki.client_key)
    proc = run_entrypoint(SUBMISSIONS / "good_tracker", tmp_path, **env)
    try:
        port, lines = wait_serving(proc)
        mode = "secure" if secure else "insecure"
        assert f"in {mode} mode over IPv4 and IPv6" in lines[-1]
        for address in ("127.0.0.1", "::1"):
            assert await health(address, port, context) == HealthCheckResponse.SERVING
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0
