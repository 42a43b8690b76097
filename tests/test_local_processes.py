"""Model hosts as processes: bounded output, a process group each, a demo that stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from model_runner.process import LOG_HEAD, LOG_TAIL
from model_runner.wire import DynamicSubclassServiceStub, StatusCode
from tests.hosts import (
    EXAMPLES,
    ROOT,
    TEST_SUBMISSIONS,
    HostProcess,
    call,
    set_up,
    until,
    until_sync,
)

pytestmark = pytest.mark.anyio


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


async def test_a_flooding_model_keeps_its_host_output_bounded() -> None:
    host = HostProcess(TEST_SUBMISSIONS / "toolbox").start()
    try:
        async with host.channel() as channel:
            stub = DynamicSubclassServiceStub(channel)
            await set_up(stub)
            assert (await call(stub, "flood", 1.0, timeout=30))[0] == StatusCode.SUCCESS
            assert (await call(stub, "predict", "BTC", 1))[0] == StatusCode.SUCCESS
        await until(lambda: "bytes of output dropped" in host.log)
        log = host.log
        assert "model host serving" in log  # the beginning is kept
        assert len(log) <= LOG_HEAD + LOG_TAIL + 100
        assert log.rstrip().endswith("x" * 100)  # and the end
    finally:
        host.stop()


async def test_stopping_a_host_ends_what_its_model_forked() -> None:
    host = HostProcess(TEST_SUBMISSIONS / "toolbox").start()
    try:
        async with host.channel() as channel:
            stub = DynamicSubclassServiceStub(channel)
            await set_up(stub)
            code, _, child = await call(stub, "fork_child")
            assert code == StatusCode.SUCCESS and alive(child)
    finally:
        host.stop()
    await until(lambda: not alive(child))


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (the model hosts of a launcher)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def wait_for_line(proc: subprocess.Popen[str], needle: str, *, stderr: bool = False) -> None:
    stream = proc.stderr if stderr else proc.stdout
    assert stream is not None
    deadline = time.monotonic() + 60
    while needle not in stream.readline():
        assert time.monotonic() < deadline and proc.poll() is None, f"never printed {needle!r}"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_demo_stops_it_and_every_host(sig: signal.Signals) -> None:
    demo = subprocess.Popen([sys.executable, str(EXAMPLES / "demo.py"), "--ticks", "100"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "120"})
    try:
        wait_for_line(demo, "models ready")  # its models are up
        hosts = children(demo.pid)
        assert len(hosts) >= 5  # 7, less any already stopped after a report
        demo.send_signal(sig)
        _, stderr = demo.communicate(timeout=60)
    finally:
        demo.kill()
    assert demo.returncode == 128 + sig
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [
        f"demo: interrupted (stopped by {sig.name}); every model host stopped"], stderr
    assert not [pid for pid in hosts if alive(pid)]


ORCHESTRATOR = [sys.executable, "-m", "model_runner.local_orchestrator", "--port", "0",
                "--python-path", str(EXAMPLES), str(EXAMPLES / "submissions" / "good_tracker"),
                str(EXAMPLES / "submissions" / "async_tracker")]


def orchestrator_with_hosts() -> tuple[subprocess.Popen[str], list[int]]:
    """The local orchestrator's command line, once it serves and both hosts run."""
    orchestrator = subprocess.Popen(ORCHESTRATOR, cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(orchestrator, "serving ws://")
        until_sync(lambda: len(children(orchestrator.pid)) == 2, 60)
    except BaseException:
        orchestrator.kill()
        raise
    return orchestrator, children(orchestrator.pid)


def test_sigterm_to_the_local_orchestrator_stops_every_host() -> None:
    orchestrator, hosts = orchestrator_with_hosts()
    try:
        orchestrator.send_signal(signal.SIGTERM)
        _, stderr = orchestrator.communicate(timeout=60)
    finally:
        orchestrator.kill()
    assert orchestrator.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM; every model host stopped" in stderr
    assert "Traceback" not in stderr
    assert not [pid for pid in hosts if alive(pid)]


def test_hosts_do_not_outlive_a_killed_orchestrator() -> None:
    orchestrator, hosts = orchestrator_with_hosts()
    orchestrator.kill()  # SIGKILL: no cleanup runs
    orchestrator.communicate(timeout=10)
    until_sync(lambda: not [pid for pid in hosts if alive(pid)], 30)
