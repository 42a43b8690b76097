"""Real model host subprocesses for tests: `python -m model_runner` on 127.0.0.1, port 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from grpclib.client import Channel

from model_runner.wire import (
    Argument,
    CallRequest,
    DynamicSubclassServiceStub,
    KwArgument,
    SetupRequest,
    StatusCode,
    decode_variant,
    encode_value,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SUBMISSIONS = EXAMPLES / "submissions"
TEST_SUBMISSIONS = ROOT / "tests" / "submissions"
BASE = "starter_challenge.tracker.TrackerBase"

_SERVING = re.compile(r"model host serving .* on (?P<host>.+):(?P<port>\d+)")


def host_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES), env.get("PYTHONPATH")]))
    env.pop("GRPC_ADDRESS", None)
    env.pop("CODE_DIRECTORY", None)
    env.update(extra or {})
    return env


class HostProcess:
    """One `python -m model_runner` subprocess; its log goes to a file the tests can read."""

    def __init__(self, code_directory: Path, *args: str, env: dict[str, str] | None = None):
        self.code_directory = code_directory
        self.args = args
        self.env = host_env(env)
        self.log_path = Path(tempfile.mkstemp(prefix="model-host-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 20.0) -> HostProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "model_runner", "--code-directory",
                 str(self.code_directory), "--address", "127.0.0.1:0", *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _SERVING.search(self.log)
            if match:
                self.port = int(match["port"])
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"model host exited {self.proc.returncode}:\n{self.log}")
            time.sleep(0.02)
        raise RuntimeError(f"model host did not start within {timeout}s:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.log_path.unlink(missing_ok=True)

    def channel(self) -> Channel:
        return Channel("127.0.0.1", self.port)


def variant_args(*args: Any, **kwargs: Any) -> tuple[list[Argument], list[KwArgument]]:
    return ([Argument(position=i, data=encode_value(a)) for i, a in enumerate(args)],
            [KwArgument(keyword=k, data=encode_value(v)) for k, v in kwargs.items()])


async def setup(stub: DynamicSubclassServiceStub, class_name: str = BASE, *args: Any,
                **kwargs: Any) -> tuple[str, str]:
    positional, keywords = variant_args(*args, **kwargs)
    response = await stub.setup(SetupRequest(class_name=class_name, instance_arguments=positional,
                                             instance_kw_arguments=keywords), timeout=30)
    assert response.status is not None
    return response.status.code, response.status.message


async def call(stub: DynamicSubclassServiceStub, method: str, *args: Any,
               timeout: float | None = 10, **kwargs: Any) -> tuple[str, str, Any]:
    positional, keywords = variant_args(*args, **kwargs)
    response = await stub.call(CallRequest(method_name=method, method_arguments=positional,
                                           method_kw_arguments=keywords), timeout=timeout)
    assert response.status is not None
    return response.status.code, response.status.message, decode_variant(response.method_response)


async def ok(stub: DynamicSubclassServiceStub, method: str, *args: Any, **kwargs: Any) -> Any:
    code, message, value = await call(stub, method, *args, **kwargs)
    assert code == StatusCode.SUCCESS, message
    return value
