"""However a submission misbehaves, the host answers with the model's status and keeps serving:
KeyboardInterrupt, unprintable exceptions, os._exit, module names the host already uses, a Rest
during Setup, threads left behind at SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from model_runner.wire import SERVICE_NAME, DynamicSubclassServiceStub, StatusCode
from tests.hosts import TEST_SUBMISSIONS, HostProcess, call, set_up, until
from tests.test_runtime import NOT_SERVING, SERVING, health

pytestmark = pytest.mark.anyio



@pytest.mark.parametrize("method,needle", [
    ("interrupt", "Toolbox.interrupt raised KeyboardInterrupt"),
    ("unprintable", "Toolbox.unprintable raised Unprintable: (its message could not be read"),
    ("os_exit", "the model called os._exit(1)"),
])
async def test_method_misbehaviour_is_model_failed(toolbox_host: HostProcess, method: str,
                                                   needle: str) -> None:
    async with toolbox_host.channel() as channel:
        stub = DynamicSubclassServiceStub(channel)
        await set_up(stub)
        code, message, _ = await call(stub, method)
        assert code == StatusCode.MODEL_FAILED
        assert needle in message, message
        assert (await call(stub, "predict", "BTC", 2))[0] == StatusCode.SUCCESS  # still serving
    assert toolbox_host.proc is not None and toolbox_host.proc.poll() is None


TRACKER = "from starter_challenge.tracker import TrackerBase\n"
SUBMISSIONS = {
    "interrupt at import": ({"model.py": "raise KeyboardInterrupt\n"},
                            StatusCode.BAD_IMPLEMENTATION, "model: KeyboardInterrupt"),
    "os._exit at import": ({"model.py": "import os\nos._exit(0)\n"},
                           StatusCode.BAD_IMPLEMENTATION, "the model called os._exit(0)"),
    "unprintable in the constructor": (
        {"model.py": TRACKER + "class Bad(Exception):\n    def __str__(self):\n"
                              "        raise RuntimeError\n    __repr__ = __str__\n"
                              "class T(TrackerBase):\n    def __init__(self):\n"
                              "        raise Bad()\n"},
        StatusCode.SETUP_FAILED, "T() raised Bad: (its message could not be read"),
    "a module named queue": (
        {"queue.py": TRACKER + "class T(TrackerBase):\n    pass\n"},
        StatusCode.BAD_IMPLEMENTATION, "the name 'queue' already stands for a module"),
    # A package the host has surely loaded on every Python (csv is no longer loaded on 3.13).
    "a package named email": (
        {"email/__init__.py": "", "email/model.py": TRACKER + "class T(TrackerBase):\n    pass\n"},
        StatusCode.BAD_IMPLEMENTATION, "rename it (and the imports of it) to a name of your "
                                       "own, e.g. my_email"),
}


@pytest.mark.parametrize("case", sorted(SUBMISSIONS))
async def test_submission_misbehaviour_at_setup(tmp_path: Path, case: str) -> None:
    files, expected_code, needle = SUBMISSIONS[case]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    host = HostProcess(tmp_path).start()
    try:
        async with host.channel() as channel:
            code, message = await set_up(DynamicSubclassServiceStub(channel))
            assert code == expected_code
            assert needle in message, message
            assert await health(channel) == SERVING
        assert host.proc is not None and host.proc.poll() is None
    finally:
        host.stop()


async def test_rest_during_setup_leaves_no_instance(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(
        TRACKER + "import pathlib, time\nclass Slow(TrackerBase):\n    def __init__(self):\n"
                  f"        pathlib.Path({str(tmp_path / 'constructing')!r}).touch()\n"
                  "        time.sleep(1.0)\n    def predict(self, asset, horizon, step=1):\n"
                  "        return [1.0]\n")
    host = HostProcess(tmp_path).start()
    try:
        async with host.channel() as channel:
            stub = DynamicSubclassServiceStub(channel)
            setting_up = asyncio.ensure_future(set_up(stub))
            await until(lambda: (tmp_path / "constructing").exists())  # the constructor runs
            assert (await stub.rest()).status.code == StatusCode.SUCCESS  # type: ignore[union-attr]
            code, message = await setting_up
            assert code == StatusCode.FAILED_PRECONDITION and "Setup again" in message
            assert await health(channel, SERVICE_NAME) == NOT_SERVING
            assert (await call(stub, "predict", "BTC", 1))[0] == StatusCode.FAILED_PRECONDITION
            assert (await set_up(stub))[0] == StatusCode.SUCCESS  # and it can be set up again
            assert await health(channel, SERVICE_NAME) == SERVING
    finally:
        host.stop()


async def test_sigterm_ends_a_host_whose_model_left_a_thread() -> None:
    host = HostProcess(TEST_SUBMISSIONS / "toolbox").start()
    try:
        async with host.channel() as channel:
            stub = DynamicSubclassServiceStub(channel)
            await set_up(stub)
            assert (await call(stub, "leave_thread"))[0] == StatusCode.SUCCESS
        host.signal(signal.SIGTERM)
        await until(lambda: host.proc is not None and host.proc.poll() is not None, timeout=20)
        assert host.proc is not None and host.proc.returncode == 0
    finally:
        host.stop()
