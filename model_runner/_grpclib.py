"""The private grpclib attributes the host relies on, in one place (grpclib and h2 are pinned;
tests/test_grpclib_internals.py fails when an upgrade breaks one). The client's live in
model_runner_client/transports/grpclib.py."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import grpclib.server
from grpclib.protocol import EventsProcessor, H2Protocol
from grpclib.server import Handler, Server
from h2.errors import ErrorCodes
from h2.events import (
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError

__all__ = ["ConnectionLimits", "GuardedServer", "listening_sockets", "peer_certificate",
           "raw_stream"]

logger = logging.getLogger(__name__)


def raw_stream(stream: grpclib.server.Stream[Any, Any]) -> Any:
    """The HTTP/2 stream under a server stream (grpclib.protocol.Stream, with `recv_data`):
    grpclib's own `recv_message` buffers whatever length a request's prefix claims, so the host
    reads the 5-byte prefix itself."""
    return stream._stream


def listening_sockets(server: grpclib.server.Server) -> list[socket.socket]:
    """The sockets a started server listens on: the port it got on port 0, and the address
    families it takes (grpclib keeps its asyncio server private)."""
    listener: Any = server._server
    return list(listener.sockets) if listener is not None else []


def peer_certificate(stream: grpclib.server.Stream[Any, Any]) -> bytes | None:
    """The DER certificate the client presented over TLS, or None (grpclib's `Peer.cert()`
    gives only the parsed fields of a verified certificate, not its key)."""
    ssl_object = stream.peer._transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return bytes(der) if der else None


# --- the host's HTTP/2 defences ------------------------------------------------------------------
#
# grpclib's server trusts its peer: it starts a task per stream and, when the peer resets a
# stream before that task's first step, never releases it (rapid reset, CVE-2023-44487: 40,000
# HEADERS+RST_STREAM on one connection cost 6-7 s of CPU and +400 MB that stayed); h2 acks every
# PING and SETTINGS whatever the peer reads back; nothing bounds connections, silent peers or
# calls without a deadline. The defaults below are nghttp2's (lib/nghttp2_session.c) where it
# has one; benchmarks/host_floods.py measures each attack with and without them.


@dataclass(frozen=True)
class ConnectionLimits:
    """How much one peer may cost the host. Exceeding a flood limit closes that connection with
    GOAWAY ENHANCE_YOUR_CALM; the other connections, and health, are not affected. Streams open
    at once on one connection are h2's: it advertises SETTINGS_MAX_CONCURRENT_STREAMS 100 and
    ends a connection that opens more (tests/test_host_defences.py)."""

    #: Open connections at once; past it one is closed for the new one (GuardedServer.admit:
    #: the silent, then the idle, then the busiest). A coordinator holds one or two per model
    #: host, the orchestrator's probe one.
    max_connections: int = 64
    #: Seconds a new connection has for its TLS handshake, and then for the HTTP/2 preface.
    handshake_timeout: float = 10.0
    #: Seconds a connection may stay without a call in flight before it is closed (GOAWAY).
    idle_timeout: float = 900.0
    #: The deadline of a call that sends none (grpc-timeout), in seconds.
    max_call_seconds: float = 900.0
    #: Streams the peer may reset: a bucket of this many, refilled at `reset_rate` per second
    #: (nghttp2's stream_reset_burst and stream_reset_rate).
    reset_burst: int = 1000
    reset_rate: float = 33.0
    #: PING and SETTINGS frames the peer may send: a bucket of this many, refilled at
    #: `control_rate` per second (an honest peer sends one SETTINGS and a keepalive PING now
    #: and then; h2 answers each with an ack, whatever the peer reads).
    control_burst: int = 1000
    control_rate: float = 100.0
    #: PING and SETTINGS acks queued while the peer does not read (nghttp2's max_outbound_ack).
    max_unread_acks: int = 1000
    #: Bytes of output one connection may have buffered (answers wait for the peer to read;
    #: this catches what does not: control frames, and a peer that never reads).
    max_buffered_output: int = 8 * 1024 * 1024
    #: Streams on one connection whose answers the peer's flow-control window holds back (a
    #: zero window, announced or used up). Past it the connection is closed before its new
    #: calls run: 200 connections x 100 such streams held health 6.3 s. A coordinator has a call
    #: or two in flight per connection, with windows its HTTP/2 library grants as it reads.
    max_stalled_streams: int = 16
    #: Seconds a connection may hold answers back (a window it does not reopen, or output it
    #: does not read) before it is closed; a call's deadline bounds it too, and a health check
    #: has none.
    stall_timeout: float = 20.0


class _TokenBucket:
    def __init__(self, burst: int, rate: float) -> None:
        self.burst, self.rate = float(burst), rate
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class _GuardedHandler(Handler):
    """grpclib's per-connection handler, giving calls without grpc-timeout the host's maximum."""

    def __init__(self, limits: ConnectionLimits, *args: Any) -> None:
        super().__init__(*args)
        self._default_timeout = ("grpc-timeout", f"{max(1, round(limits.max_call_seconds))}S")

    def accept(self, stream: Any, headers: list[tuple[str, str]],
               release_stream: Callable[[], Any]) -> None:
        if not any(name == "grpc-timeout" for name, _ in headers):
            headers = [*headers, self._default_timeout]
        super().accept(stream, headers, release_stream)


class _GuardedEventsProcessor(EventsProcessor):
    """Releases a stream the peer resets at once: grpclib releases it when the handler's task
    ends, and a task cancelled before its first step never runs its `finally`."""

    def __init__(self, handler: Any, connection: Any) -> None:
        super().__init__(handler, connection)
        self.releases: dict[int, Callable[[], None]] = {}

    def register(self, stream: Any) -> Callable[[], None]:
        streams, releases, connection = self.streams, self.releases, self.connection

        def release_stream() -> None:
            releases.pop(stream.id, None)
            if streams.pop(stream.id, None) is None:
                return  # released already (reset by the peer)
            connection.stream_close_waiter.set()
            if not connection.is_closing():
                connection.ack(stream.id, stream.buffer.unacked_size())

        streams[stream.id] = stream
        self.releases[stream.id] = release_stream
        return release_stream

    def process_stream_reset(self, event: StreamReset) -> None:
        super().process_stream_reset(event)
        release = self.releases.pop(event.stream_id, None)
        if release is not None:
            release()


def _disable_nagle(transport: Any) -> None:
    """Send each write at once. An answer is three HTTP/2 frames written one by one; under
    Nagle's algorithm the last waits for the peer's delayed ACK, 40 ms on Linux, and a
    tournament's sequential ticks took 44 ms instead of 1-3 ms on an asyncio host bound on `[::]`
    (tests/test_as_deployed.py). asyncio sets TCP_NODELAY only on sockets created with
    IPPROTO_TCP, and a socket from `socket.create_server` (the dual-stack `[::]`) has protocol 0;
    uvloop sets it on every TCP socket."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket: no Nagle
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # the peer is already gone: connection_lost follows


class _GuardedProtocol(H2Protocol):
    def __init__(self, server: GuardedServer, handler: Any, config: Any, h2_config: Any) -> None:
        super().__init__(handler, config, h2_config)
        self._server = server
        self._limits = server.limits
        self._resets = _TokenBucket(self._limits.reset_burst, self._limits.reset_rate)
        self._controls = _TokenBucket(self._limits.control_burst, self._limits.control_rate)
        self._unread_acks = 0
        self._greeted = False  # the peer's preface and first SETTINGS arrived
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self.opened = self.last_active = time.monotonic()
        #: When the peer last let answers through (a window update, or reading our output).
        self._output_moved = self.opened

    # connection lifecycle

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        _disable_nagle(transport)
        super().connection_made(transport)
        self.processor = _GuardedEventsProcessor(self.handler, self.connection)
        self._schedule(self._limits.handshake_timeout)
        self._server.admit(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._server.forget(self)
        super().connection_lost(exc)

    @property
    def calls(self) -> int:
        """Calls in flight on this connection."""
        return len(self.processor.streams)

    @property
    def busy(self) -> bool:
        return bool(self.processor.streams)

    @property
    def greeted(self) -> bool:
        """Whether the peer sent the HTTP/2 preface and its SETTINGS."""
        return self._greeted

    def stalled_streams(self, new_streams: tuple[int, ...] = ()) -> int:
        """Streams (in flight, or `new_streams` about to start) whose answers cannot go out:
        the peer's window for them, or for the connection, is used up, or it does not read."""
        h2_connection = self.connection._connection
        if not self.connection.write_ready.is_set() or \
                h2_connection.outbound_flow_control_window <= 0:
            return self.calls + len(new_streams)
        window = h2_connection.local_flow_control_window
        stalled = 0
        for stream_id in (*self.processor.streams, *new_streams):
            try:
                stalled += window(stream_id) <= 0
            except Exception:  # closed meanwhile: not held
                pass
        return stalled

    def _check_timers(self) -> None:
        if self._closed:
            return
        now = time.monotonic()
        if not self._greeted:
            logger.debug("closed a connection from %s that sent no HTTP/2 preface within %gs",
                        self.peer, self._limits.handshake_timeout)
            self.close(abort=True)
            return
        idle_for = now - self.last_active
        if not self.busy and idle_for >= self._limits.idle_timeout:
            logger.debug("closing a connection idle for %.0fs", idle_for)
            self.close(ErrorCodes.NO_ERROR)
            return
        if not self.busy:
            self._schedule(self._limits.idle_timeout - idle_for)
            return
        if not self.stalled_streams():
            self._output_moved = now
        elif now - self._output_moved >= self._limits.stall_timeout:
            self._calm(f"answers held back by the peer for over {self._limits.stall_timeout:g}s"
                       " (a flow-control window it does not reopen, or output it does not read)")
            return
        self._schedule(min(self._limits.idle_timeout, self._limits.stall_timeout / 4))

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(max(delay, 0.05), self._check_timers)

    def close(self, error_code: ErrorCodes | None = None, *, abort: bool = False) -> None:
        """Close with GOAWAY (`error_code`), flushed unless `abort` or the peer is not reading;
        calls in flight on this connection are cancelled."""
        if self._closed:
            return
        self._closed = True
        transport = self.transport
        if error_code is not None and self._greeted:
            h2_connection = self.connection._connection
            try:
                h2_connection.close_connection(error_code)
                data = h2_connection.data_to_send()
                if data and not abort and transport.get_write_buffer_size() < 65536:
                    transport.write(data)
            except Exception:
                pass
        if abort or transport.get_write_buffer_size() >= 65536:
            transport.abort()
        self.processor.close("Connection closed by the host")

    def _calm(self, why: str) -> None:
        logger.warning("closed a connection from %s (GOAWAY ENHANCE_YOUR_CALM): %s",
                       self.peer, why)
        self.close(ErrorCodes.ENHANCE_YOUR_CALM)

    @property
    def peer(self) -> str:
        peer = self.transport.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"

    # frames

    #: Bytes handed to h2 at a time: its work on one read is bounded before a limit can act
    #: (a 256 KiB read of PING frames is 15,000 acks to write).
    FEED_SLICE = 16384

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        view = memoryview(data)
        for start in range(0, len(data), self.FEED_SLICE):
            if self._closed:
                return
            self._receive(view[start:start + self.FEED_SLICE].tobytes() if len(data) >
                          self.FEED_SLICE else data)

    def _receive(self, data: bytes) -> None:
        try:
            events = self.connection.feed(data)
        except ProtocolError as exc:
            logger.debug("HTTP/2 protocol error from %s: %s", self.peer, exc)
            self.connection.flush()  # h2's GOAWAY, then close
            self.close()
            return
        limits = self._limits
        paused = not self.connection.write_ready.is_set()
        requests: tuple[int, ...] = ()
        # `type(event) is`: h2's events are final classes, and this runs for every frame.
        for event in events:
            kind = type(event)
            if kind is RequestReceived:
                requests = (*requests, cast(RequestReceived, event).stream_id)
            elif kind is WindowUpdated:
                self._output_moved = self.last_active
            elif kind is StreamReset and cast(StreamReset, event).remote_reset:
                if not self._resets.take():
                    self._calm(f"more than {limits.reset_burst} stream resets at over "
                               f"{limits.reset_rate:g}/s (rapid reset)")
                    return
            elif kind is RemoteSettingsChanged or kind is PingReceived:
                if kind is RemoteSettingsChanged:
                    self._output_moved = self.last_active  # perhaps a wider window
                    if not self._greeted:
                        self._greeted = True
                        self._schedule(self._limits.idle_timeout)  # the handshake is over
                self._unread_acks += paused
                if not self._controls.take():
                    self._calm(f"more than {limits.control_burst} PING/SETTINGS frames at over "
                               f"{limits.control_rate:g}/s")
                    return
        if self._unread_acks > limits.max_unread_acks:
            self._calm(f"over {limits.max_unread_acks} PING/SETTINGS acks it does not read")
            return
        # Before the new calls run: a handler each would be spent on answers that cannot leave.
        if self.calls + len(requests) > limits.max_stalled_streams and \
                self.stalled_streams(requests) > limits.max_stalled_streams:
            self._calm(f"over {limits.max_stalled_streams} streams whose answers its "
                       "flow-control window holds back")
            return
        if requests and not self.busy:
            self._output_moved = self.last_active  # the stall clock starts with the calls
            # The timer checks stalls while calls are in flight; moved only when it is set for
            # later (an idle connection's), not on every call (a TimerHandle per call cost +1%
            # of a call's instructions, benchmarks/host_cost.py --instructions).
            timer, check_in = self._timer, limits.stall_timeout / 4
            if timer is None or timer.when() > asyncio.get_running_loop().time() + check_in:
                self._schedule(check_in)
        self.connection.flush()
        for event in events:
            self.processor.process(event)
            if self._closed:
                return
        self.connection.flush()
        if self.transport.get_write_buffer_size() > limits.max_buffered_output:
            self._calm(f"over {limits.max_buffered_output} bytes of output it does not read")

    def resume_writing(self) -> None:
        self._unread_acks = 0
        self._output_moved = time.monotonic()
        super().resume_writing()


class GuardedServer(Server):
    """grpclib's Server with the defences above, on asyncio and uvloop alike."""

    def __init__(self, handlers: Any, *, codec: Any, limits: ConnectionLimits) -> None:
        super().__init__(handlers, codec=codec)
        self.limits = limits
        self._connections: dict[_GuardedProtocol, None] = {}  # oldest first

    def _protocol_factory(self) -> H2Protocol:
        self.__gc_step__()
        handler = _GuardedHandler(self.limits, self._mapping, self._codec,
                                  self._status_details_codec, self.__dispatch__)
        self._handlers.add(handler)
        return _GuardedProtocol(self, handler, self._config, self._h2_config)

    #: Seconds a new connection is spared by the cap: it has not had the time to greet, or to
    #: finish its first call (a health probe's connection lives a few milliseconds).
    NEWCOMER_GRACE = 1.0

    def admit(self, protocol: _GuardedProtocol) -> None:
        """Count a new connection; past the cap, make room by closing, in this order, the one
        holding the most answers its peer does not let through, the longest-silent one that
        never sent the preface, the longest-idle one without a call in flight, or the one
        holding the most calls; connections younger than NEWCOMER_GRACE last. A new peer (the
        orchestrator's health probe) always gets in, and is never the one closed for a peer that
        holds stalled streams."""
        self._connections[protocol] = None
        if len(self._connections) <= self.limits.max_connections:
            return
        now = time.monotonic()
        others = [c for c in self._connections if c is not protocol]
        settled = [c for c in others if now - c.opened >= self.NEWCOMER_GRACE] or others
        stalled = [(count, c) for c in settled if c.busy and (count := c.stalled_streams())]
        silent = [c for c in settled if not c.greeted]
        idle = [c for c in settled if c.greeted and not c.busy]
        if stalled:
            victim, why = max(stalled, key=lambda pair: pair[0])[1], "stalled"
        elif silent or idle:
            victim, why = min(silent or idle, key=lambda c: c.last_active), \
                "silent" if silent else "idle"
        else:
            victim, why = max(settled, key=lambda c: c.calls), "busiest"
        logger.log(logging.DEBUG if why in ("silent", "idle") else logging.WARNING,
                   "over --max-connections %d: closing the %s connection, from %s",
                   self.limits.max_connections, why, victim.peer)
        self._connections.pop(victim, None)
        victim.close(ErrorCodes.NO_ERROR if why in ("silent", "idle")
                     else ErrorCodes.ENHANCE_YOUR_CALM)

    def forget(self, protocol: _GuardedProtocol) -> None:
        self._connections.pop(protocol, None)

    @property
    def connection_count(self) -> int:
        """Connections open."""
        return len(self._connections)

    @property
    def calls_in_flight(self) -> int:
        """Streams held open on all connections (released when answered or reset)."""
        return sum(c.calls for c in self._connections)

    async def start_guarded(self, host: str | None = None, port: int | None = None, *,
                            path: str | None = None, sock: socket.socket | None = None,
                            ssl: Any = None, backlog: int = 100) -> None:
        """`Server.start`, with the TLS handshake bounded by `handshake_timeout` (grpclib does
        not pass asyncio's ssl_handshake_timeout)."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        loop = asyncio.get_running_loop()
        tls = {"ssl": ssl, "ssl_handshake_timeout": self.limits.handshake_timeout} if ssl \
            else {}
        if path is not None:
            self._server = await loop.create_unix_server(self._protocol_factory, path,
                                                         backlog=backlog, **tls)
        elif sock is not None:
            self._server = await loop.create_server(self._protocol_factory, sock=sock,
                                                    backlog=backlog, **tls)
        else:
            self._server = await loop.create_server(self._protocol_factory, host, port,
                                                    backlog=backlog, **tls)
        self._server_closed_fut = loop.create_future()
