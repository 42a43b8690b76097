"""The local orchestrator: hosts as subprocesses, announced over the websocket protocol."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model_runner.local_orchestrator import LocalOrchestrator, ModelSpec, load_config
from model_runner_client import EventKind, ModelEvent, ModelRunnerClient
from tests.hosts import BASE, EXAMPLES, SUBMISSIONS, TEST_SUBMISSIONS, until

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("transport")]


async def test_hosts_join_recover_redeploy_and_stop_on_report(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging
    caplog.set_level(logging.INFO, logger="model_runner.local_orchestrator")
    specs = [ModelSpec(SUBMISSIONS / "good_tracker", "good", cruncher="alice"),
             ModelSpec(TEST_SUBMISSIONS / "toolbox", "tool"),
             ModelSpec(SUBMISSIONS / "raising_tracker", "raising")]
    events: list[ModelEvent] = []
    async with LocalOrchestrator("crunch", specs, python_path=[EXAMPLES]) as orchestrator:
        await orchestrator.wait_running(timeout=60)
        for spec in specs:  # each host's port and pid, for whoever debugs a model
            host = orchestrator.models[spec.id].host
            assert host is not None
            assert f"RUNNING on port {host.port} (pid {host.pid})" in caplog.text
        client = ModelRunnerClient("crunch", "127.0.0.1", orchestrator.port, base_classname=BASE,
                                   timeout=2.0, max_consecutive_failures=1, on_event=events.append)
        async with client:
            await client.wait_for_models(3, timeout=30)
            good = next(m for m in client.models if m.model_id == "good")
            assert (good.cruncher_name, good.deployment_id) == ("alice", "good-d1")

            # A host that dies is RECOVERING, then restarted under the same deployment.
            old_port = orchestrator.models["tool"].host.port  # type: ignore[union-attr]
            orchestrator.kill("tool")
            # Not RUNNING from the kill on, so wait_running() waits for the restart.
            assert orchestrator.models["tool"].state == "RECOVERING"
            assert orchestrator.ports()["tool"] == old_port
            await until(lambda: any(e.kind is EventKind.LEFT and e.model.model_id == "tool"
                                    for e in events), timeout=20)
            await until(lambda: "tool" in {m.model_id for m in client.models}, timeout=30)
            tool = next(m for m in client.models if m.model_id == "tool")
            assert tool.port != old_port and tool.deployment_id == "tool-d1"
            await orchestrator.wait_running(timeout=30)
            assert orchestrator.ports()["tool"] == tool.port
            assert (await client.call("first", 1, models=["tool"]))["tool"].ok

            # A redeploy: the new deployment's RUNNING comes before the old one's STOPPED.
            await orchestrator.redeploy("good")
            await until(lambda: any(e.kind is EventKind.REDEPLOYED for e in events), timeout=20)
            good = next(m for m in client.models if m.model_id == "good")
            assert good.deployment_id == "good-d2"
            assert (await client.call("predict", "BTC", 1, models=["good"]))["good"].ok

            # A model reported as failed is stopped for good.
            await client.call("predict", "BTC", 1, models=["raising"])
            await until(lambda: orchestrator.models["raising"].state == "STOPPED", timeout=20)
            assert [r["failure_code"] for r in orchestrator.reports] == ["MULTIPLE_FAILED"]
            await until(lambda: "raising" not in {m.model_id for m in client.models})


@pytest.mark.transport_independent
async def test_a_host_that_keeps_dying_is_stopped_after_bounded_restarts() -> None:
    # A host started with an invalid option exits at once, every time.
    spec = ModelSpec(SUBMISSIONS / "good_tracker", "dies",
                     host_args=("--max-send-message-length", "-1"))
    async with LocalOrchestrator("crunch", [spec], max_restarts=2) as orchestrator:
        await until(lambda: orchestrator.models["dies"].state == "STOPPED", timeout=30)
        assert orchestrator.models["dies"].restarts == 3


@pytest.mark.transport_independent
def test_config_file(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text('crunch_id = "bird"\npython_path = ["lib"]\n'
                      '[[models]]\ncode_directory = "subs/a"\nid = "a"\ncruncher = "bob"\n'
                      '[[models]]\ncode_directory = "subs/b"\n')
    crunch_id, specs, python_path = load_config(config)
    assert crunch_id == "bird" and python_path == [tmp_path / "lib"]
    assert [(s.id, s.cruncher) for s in specs] == [("a", "bob"), ("b", "")]
    config.write_text("[[models]]\nid = 'x'\n")
    with pytest.raises(ValueError, match="code_directory"):
        load_config(config)


@pytest.mark.transport_independent
def test_command_line_errors_are_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "model_runner.local_orchestrator",
                             str(tmp_path / "missing")], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "no such folders" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.transport_independent
def test_a_folder_named_twice_is_a_one_line_error() -> None:
    folder = str(SUBMISSIONS / "good_tracker")
    result = subprocess.run([sys.executable, "-m", "model_runner.local_orchestrator", folder,
                             folder], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "local_orchestrator: error: model ids must be unique; repeated: good_tracker (a folder "
        "named twice, or two folders with one name: give them ids in a --config)"]


@pytest.mark.transport_independent
def test_the_console_script_explains_every_option_and_its_default() -> None:
    import shutil
    script = shutil.which("model-runner-local-orchestrator",
                          path=str(Path(sys.executable).parent))
    assert script is not None
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    for needle in ("--crunch-id", "else demo", "--port", "(default 9091)", "--host",
                   "(default 127.0.0.1)", "--max-restarts", "(default 3)", "--python-path",
                   "--config"):
        assert needle in help_text, needle
