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
from tests.hosts import EXAMPLES, ROOT, TEST_SUBMISSIONS, HostProcess, call, setup, until

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
            await setup(stub)
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
            await setup(stub)
            code, _, child = await call(stub, "fork_child")
            assert code == StatusCode.SUCCESS and alive(child)
    finally:
        host.stop()
    await until(lambda: not alive(child))


def test_ctrl_c_in_the_demo_prints_one_line_and_exits_130() -> None:
    demo = subprocess.Popen([sys.executable, str(EXAMPLES / "demo.py"), "--ticks", "100"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "120"})
    try:
        deadline = time.monotonic() + 60
        assert demo.stdout is not None
        # Wait until its models are up, then interrupt it as a terminal would.
        while "models ready" not in demo.stdout.readline():
            assert time.monotonic() < deadline and demo.poll() is None, "the demo never ticked"
        demo.send_signal(signal.SIGINT)
        _, stderr = demo.communicate(timeout=60)
    finally:
        demo.kill()
    assert demo.returncode == 130
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == ["demo: interrupted"], stderr
