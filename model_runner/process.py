"""`ModelHostProcess`: run `python -m model_runner` as a subprocess.

The host listens on port 0 and announces the port it got in its output, so many hosts can start
at once without racing for free ports. Used by tests, benchmarks and the local orchestrator.

Its output is kept in memory, bounded (the beginning, with the announcement, and the end): a
model printing in a loop once wrote 200 MB of log file in 1.4 s. Each host leads a process group
of its own, and stopping it kills the group, so processes the model forked die with it.

Servers that take their port as an argument (the benchmarks' servers, the tests' hostile
hosts) are started with `start_script` (or `free_port` and `start_listening`), shared by tests
and benchmarks.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio

from .containment import PARENT_PID

__all__ = ["DEFAULT_LISTEN_HOST", "LOG_HEAD", "LOG_TAIL", "ModelHostProcess", "free_port",
           "host_environment", "start_listening", "start_script"]

#: Bytes of a host's output kept from its beginning and from its end.
LOG_HEAD = 64 * 1024
LOG_TAIL = 256 * 1024

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


def free_port() -> int:
    """A port free on 127.0.0.1 now (another process may take it before it is bound)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_listening(argv: list[str], port: int, *, env: Mapping[str, str],
                    cwd: Path | None = None, timeout: float = 30) -> subprocess.Popen[bytes]:
    """Run `argv` and wait until something listens on 127.0.0.1:`port`; raises RuntimeError
    naming the script when it exits first or does not listen within `timeout` seconds."""
    script = Path(argv[1]).name if len(argv) > 1 else argv[0]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=dict(env), cwd=cwd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{script} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)  # another process, no event to wait on: poll its port
    proc.kill()
    raise RuntimeError(f"{script} did not listen on {port} within {timeout:g} s")


def start_script(script: Path, *args: str, python_path: Sequence[Path] = ()
                 ) -> tuple[subprocess.Popen[bytes], int]:
    """Run `python SCRIPT PORT ARGS...` on a free port and wait until it listens there."""
    port = free_port()
    return start_listening([sys.executable, str(script), str(port), *args], port,
                           env=host_environment(python_path)), port


class _BoundedLog:
    """The first LOG_HEAD and the last LOG_TAIL bytes of a stream, and how many were dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._head = bytearray()
        self._tail = bytearray()
        self._dropped = 0

    def feed(self, chunk: bytes) -> None:
        with self._lock:
            room = LOG_HEAD - len(self._head)
            if room > 0:
                self._head += chunk[:room]
                chunk = chunk[room:]
            self._tail += chunk
            excess = len(self._tail) - LOG_TAIL
            if excess > 0:
                del self._tail[:excess]
                self._dropped += excess

    def text(self) -> str:
        with self._lock:
            middle = f"\n[... {self._dropped} bytes of output dropped ...]\n".encode() \
                if self._dropped else b""
            return bytes(self._head + middle + self._tail).decode(errors="replace")


#: Hosts listen on the address form production uses (`[::]`, IPv4 and IPv6), and are reached
#: over IPv4, as the Model Orchestrator reaches its containers.
DEFAULT_LISTEN_HOST = "::"
_WILDCARDS = {"::": "127.0.0.1", "0.0.0.0": "127.0.0.1", "": "127.0.0.1"}


class ModelHostProcess:
    """`python -m model_runner` in a subprocess.

    `host` and `port` form its `--address` (`host=None`: no flag; GRPC_ADDRESS in `env`, or
    the host's default, decides). Clients reach a wildcard host over 127.0.0.1.
    """

    def __init__(
        self,
        code_directory: Path,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        python_path: Sequence[Path] = (),
        host: str | None = DEFAULT_LISTEN_HOST,
        port: int = 0,
        python: str = sys.executable,
        cwd: Path | None = None,
    ) -> None:
        #: The interpreter that runs the host (benchmarks compare other installations).
        self.python = python
        self.cwd = cwd
        self.code_directory = Path(code_directory)
        self.args = list(args)
        self.host = host
        self.requested_port = port
        # The host ends when this process does (containment.die_with_parent): PR_SET_PDEATHSIG
        # follows the thread that spawns, so spawn from a thread that lives as long as the host.
        self.env = {**host_environment(python_path, env), PARENT_PID: str(os.getpid())}
        self._log = _BoundedLog()
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        #: Where clients reach the host, known once it listens (see `address`).
        self.connect_host = "127.0.0.1"

    def spawn(self) -> None:
        """Start the process without waiting for it to listen (see `poll_ready`)."""
        address = []
        if self.host is not None:
            host = f"[{self.host}]" if ":" in self.host else self.host
            address = ["--address", f"{host}:{self.requested_port}"]
        self.proc = subprocess.Popen(
            [self.python, "-m", "model_runner", "--code-directory",
             str(self.code_directory), *address, *self.args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=self.env, cwd=self.cwd, start_new_session=True)
        threading.Thread(target=self._read_output, args=(self.proc,), daemon=True,
                         name=f"host-output-{self.proc.pid}").start()

    def _read_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            fd = proc.stdout.fileno()
            while chunk := os.read(fd, 65536):
                self._log.feed(chunk)

    def poll_ready(self) -> bool:
        """True once the host listens; raises RuntimeError if it exited first."""
        assert self.proc is not None, "spawn() first"
        if self.port:
            return True
        match = _SERVING.search(self.log)
        if match:
            self.port = int(match["port"])
            listened = match["host"].strip("[]")
            self.connect_host = _WILDCARDS.get(listened, listened)
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
        """The host's output: its beginning and its end (see LOG_HEAD, LOG_TAIL)."""
        return self._log.text()

    @property
    def address(self) -> str:
        """`HOST:PORT` where a client reaches the host (127.0.0.1 for a wildcard host)."""
        host = self.connect_host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Signal the host process itself (SIGTERM: it drains, then exits)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Kill the host's whole process group (even if stopped with SIGSTOP); returns at once."""
        if self.proc is None:
            return
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)  # the group the host leads: its children too
            except (ProcessLookupError, PermissionError):
                break

    def stop(self) -> None:
        """Kill the process group and wait for the host to be gone (blocking: tests, scripts)."""
        self.kill()
        if self.proc is not None:
            self.proc.wait(10)

    async def stop_async(self) -> None:
        """Kill the process group and wait for the host without blocking the event loop."""
        self.kill()
        if self.proc is None:
            return
        with anyio.move_on_after(10):
            while self.proc.poll() is None:  # noqa: ASYNC110 - a child's exit is not awaitable
                await anyio.sleep(0.01)
