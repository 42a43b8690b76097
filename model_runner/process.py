"""`ModelHostProcess`: run `python -m model_runner` as a subprocess on 127.0.0.1.

The host listens on port 0 and announces the port it got in its log, so many hosts can start at
once without racing for free ports. Used by tests, benchmarks and the local orchestrator.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ModelHostProcess", "host_environment"]

_SERVING = re.compile(r"model host serving .* on (?P<host>\S+):(?P<port>\d+)$", re.MULTILINE)


def host_environment(
    python_path: Sequence[Path] = (), env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """This process's environment for a host: `python_path` first on PYTHONPATH, `env` on top.

    GRPC_ADDRESS and CODE_DIRECTORY are dropped: the command line sets both.
    """
    environ = dict(os.environ)
    for name in ("GRPC_ADDRESS", "CODE_DIRECTORY"):
        environ.pop(name, None)
    environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [*(str(p) for p in python_path), environ.get("PYTHONPATH")]))
    environ.update(env or {})
    return environ


class ModelHostProcess:
    def __init__(
        self,
        code_directory: Path,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        python_path: Sequence[Path] = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.code_directory = Path(code_directory)
        self.args = list(args)
        self.host = host
        self.requested_port = port
        self.env = host_environment(python_path, env)
        fd, name = tempfile.mkstemp(prefix="model-host-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def spawn(self) -> None:
        """Start the process without waiting for it to listen (see `poll_ready`)."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "model_runner", "--code-directory",
                 str(self.code_directory), "--address", f"{self.host}:{self.requested_port}",
                 *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def poll_ready(self) -> bool:
        """True once the host listens; raises RuntimeError if it exited first."""
        assert self.proc is not None, "spawn() first"
        if self.port:
            return True
        match = _SERVING.search(self.log)
        if match:
            self.port = int(match["port"])
            return True
        if self.proc.poll() is not None:
            raise RuntimeError(f"model host exited with {self.proc.returncode}:\n{self.log}")
        return False

    def start(self, timeout: float = 30.0) -> ModelHostProcess:
        """Spawn and wait until the host listens."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while not self.poll_ready():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"model host did not listen within {timeout}s:\n{self.log}")
            time.sleep(0.02)
        return self

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, *, keep_log: bool = False) -> None:
        """Kill the process (even if stopped with SIGSTOP) and forget its log."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        if not keep_log:
            self.log_path.unlink(missing_ok=True)
