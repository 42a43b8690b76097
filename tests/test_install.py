"""What a Crunch that moves to us does, with packages from the registry (marked `install`: they
need the network and a few minutes, so the default run leaves them out; `.ci/run` runs them as
`pytest -m install`).

One venv, used in order: model-runner-client 0.14 (the grpcio client, which pins websockets<15)
ticks our secure host started only with the orchestrator's environment; then the README's
upgrade in place (uninstall it, install this project) leaves a venv whose old-API coordinator
ticks through the orchestrator link.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from model_runner.local_orchestrator import LocalOrchestrator, ModelSpec
from tests.deployment import CRUNCHER, HOTKEY, MODEL, Deployment, key_hash, wallet_address
from tests.hosts import BASE, EXAMPLES, ROOT, SUBMISSIONS, TEST_SUBMISSIONS
from tests.venvs import installed, pip

pytestmark = [pytest.mark.install, pytest.mark.anyio]

COORDINATOR = Path(__file__).parent / "install" / "old_api_coordinator.py"
OLD_CLIENT = "model-runner-client==0.14.0"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A coordinator's venv with the grpcio-based client installed."""
    folder = tmp_path_factory.mktemp("coordinator-venv")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    pip(folder, "install", "-q", OLD_CLIENT)
    return folder


async def coordinate(venv: Path, port: int, crunch_id: str, ticks: int,
                     cert_dir: Path | None = None) -> tuple[list[list[str]], str]:
    """Run the old-API coordinator in `venv` (without blocking the orchestrator's loop)."""
    statuses, _, log = await coordinate_timed(venv, port, crunch_id, ticks, cert_dir)
    return statuses, log


async def coordinate_timed(venv: Path, port: int, crunch_id: str, ticks: int,
                           cert_dir: Path | None = None, timeout: float = 10.0,
                           ) -> tuple[list[list[str]], list[float], str]:
    """`coordinate`, with the runner's timeout, and each tick's duration too."""
    import anyio
    args = [str(venv / "bin" / "python"), str(COORDINATOR), str(port), crunch_id, BASE,
            str(ticks), *([str(cert_dir)] if cert_dir else [])]
    with anyio.fail_after(180):
        result = await anyio.run_process(args, check=False, env={
            **os.environ, "COORDINATOR_TIMEOUT": str(timeout)})
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, out + err[-3000:]
    answer = json.loads(out.strip().splitlines()[-1])
    return answer["statuses"], answer["durations"], err[-3000:]


@pytest.fixture(scope="module")
async def secure_orchestrator(deployment: Deployment) -> AsyncIterator[LocalOrchestrator]:
    """The secure host started as the orchestrator starts it: `[::]`, its environment only."""
    env = deployment.environment()
    env.pop("GRPC_ADDRESS")
    spec = ModelSpec(SUBMISSIONS / "good_tracker", MODEL, env=tuple(env.items()),
                     infos=(("cruncher_wallet_pubkey", wallet_address(CRUNCHER)),
                            ("cruncher_hotkey", HOTKEY)))
    health = deployment.coordinator(deployment.pki.client_cert, deployment.pki.client_key)
    async with LocalOrchestrator("secure", [spec], python_path=[EXAMPLES],
                                 health_ssl=health) as orchestrator:
        await orchestrator.wait_running(timeout=60)
        yield orchestrator


@pytest.mark.parametrize("which", ["primary", "secondary"])
async def test_the_grpcio_client_ticks_our_secure_host(
        which: str, venv: Path, deployment: Deployment,
        secure_orchestrator: LocalOrchestrator, tmp_path: Path) -> None:
    assert installed(venv, "model-runner-client") == "0.14.0"
    cert, key = ((deployment.pki.client_cert, deployment.pki.client_key)
                 if which == "primary" else deployment.secondary)
    assert deployment.environment()["COORDINATOR_CERT_HASH" if which == "primary" else
                                     "COORDINATOR_CERT_HASH_SECONDARY"] == key_hash(cert)
    folder = deployment.coordinator_directory(cert, key, tmp_path / "coordinator")
    statuses, log = await coordinate(venv, secure_orchestrator.port, "secure", 2, folder)
    assert statuses == [["SUCCESS"], ["SUCCESS"]], log
    assert secure_orchestrator.reports == []


@pytest.mark.parametrize("mode", ["sleep", "spin", "await", "async_spin"])
async def test_the_grpcio_client_loses_one_tick_to_a_hung_model_on_our_host(
        venv: Path, mode: str) -> None:
    """Issue 20: our host answers a call that finds the model stuck on an abandoned call
    "Server busy" at once, as crunch-model-runner does, and the old client counts that as a
    timeout at once; it once waited its whole timeout on every tick of the round."""
    assert installed(venv, "model-runner-client") == "0.14.0"
    models = [ModelSpec(SUBMISSIONS / "good_tracker", "good-1"),
              ModelSpec(SUBMISSIONS / "good_tracker", "good-2"),
              ModelSpec(TEST_SUBMISSIONS / "hung", "hung", env=(("HUNG_MODE", mode),))]
    async with LocalOrchestrator("hung", models, python_path=[EXAMPLES]) as orchestrator:
        await orchestrator.wait_running(timeout=60)
        statuses, durations, log = await coordinate_timed(venv, orchestrator.port, "hung", 30,
                                                          timeout=1.0)
    assert all(tick.count("SUCCESS") == 2 for tick in statuses), (statuses, log)
    # The hung model times out until the old client's own policy disconnects it.
    assert statuses[0] == ["SUCCESS", "SUCCESS", "TIMEOUT"], statuses
    assert {(r["model_id"], r["failure_code"]) for r in orchestrator.reports} == {
        ("hung", "MULTIPLE_TIMEOUT")}, orchestrator.reports
    assert sum(1 for d in durations if d > 0.8) <= 1, durations


async def test_the_readme_upgrade_in_place(venv: Path) -> None:
    """model-runner-client 0.14 leaves websockets 14; installing us over it (the same
    distribution, 1.0.0) must replace it and move websockets to what the link needs, and the
    same coordinator must then tick on our package."""
    assert installed(venv, "websockets") is not None
    assert int(installed(venv, "websockets").split(".")[0]) < 15  # type: ignore[union-attr]
    pip(venv, "install", "-q", str(ROOT))
    assert installed(venv, "model-runner-client") == "1.0.0"
    assert int(installed(venv, "websockets").split(".")[0]) >= 15  # type: ignore[union-attr]
    models = [ModelSpec(SUBMISSIONS / "good_tracker", "good-1"),
              ModelSpec(SUBMISSIONS / "good_tracker", "good-2")]
    async with LocalOrchestrator("upgraded", models, python_path=[EXAMPLES]) as orchestrator:
        await orchestrator.wait_running(timeout=60)
        statuses, log = await coordinate(venv, orchestrator.port, "upgraded", 3)
    assert statuses == [["SUCCESS", "SUCCESS"]] * 3, log
    assert orchestrator.reports == []
