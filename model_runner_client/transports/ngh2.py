"""Unary gRPC calls over ngh2 (libnghttp2, the reference HTTP/2 implementation, in C).

ngh2 is sans-I/O: this module owns the socket (an asyncio Protocol), TLS and ALPN, the gRPC
message framing, deadlines and cancellation, and the mapping of every HTTP/2 and gRPC failure
to the exceptions the rest of the client reads (see `transports/__init__.py`). In a fan-out to
1,000 models here the client spent ~75 µs of CPU per call on this transport, ~410 µs on
grpclib (pure-Python h2, hpack, hyperframe) and the grpcio client ~145 µs (benchmarks/README.md).

One connection per model, opened on the first call and again after it is lost or the host sent
GOAWAY. ngh2 queues streams beyond the host's MAX_CONCURRENT_STREAMS itself.
"""

from __future__ import annotations

import asyncio
import math
import ssl as _ssl
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

import ngh2
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError

from ..models import ModelEndpoint
from ..transport_security import ConnectionSecurity, peer_spki
from . import ResponseTooLarge

__all__ = ["Ngh2Transport"]

#: How long opening a connection (TCP, TLS, HTTP/2 preface) may take at most; a call's own
#: deadline usually ends its wait sooner.
CONNECT_TIMEOUT = 20.0
_USER_AGENT = b"model-runner-client (ngh2)"
_CONFIG = ngh2.Configuration()
_SETTINGS = {ngh2.Setting.ENABLE_PUSH: 0, ngh2.Setting.INITIAL_WINDOW_SIZE: 1 << 20}
# gRPC's mapping of HTTP statuses that carry no grpc-status (gRPC over HTTP/2, "HTTP to gRPC").
_HTTP_TO_GRPC = {400: GrpcStatus.INTERNAL, 401: GrpcStatus.UNAUTHENTICATED,
                 403: GrpcStatus.PERMISSION_DENIED, 404: GrpcStatus.UNIMPLEMENTED,
                 429: GrpcStatus.UNAVAILABLE, 502: GrpcStatus.UNAVAILABLE,
                 503: GrpcStatus.UNAVAILABLE, 504: GrpcStatus.UNAVAILABLE}


class _Call:
    """One stream: its answer as it arrives, and where it runs (for cancelling it)."""

    __slots__ = ("arrived", "check_peer", "connection", "data", "future", "headers", "length",
                 "stream_id", "trailers")

    def __init__(self, future: asyncio.Future[_Call], check_peer: bool = True) -> None:
        self.future = future
        self.check_peer = check_peer
        self.headers: tuple[Any, ...] = ()
        self.trailers: tuple[Any, ...] | None = None
        self.data = bytearray()
        self.length = -1  # the gRPC message's length, once its prefix arrived
        self.arrived = 0  # time.perf_counter_ns() when the answer was complete (or failed)
        self.connection: _Connection | None = None
        self.stream_id = 0


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: feeds ngh2 the bytes that arrive, writes what it produces, and
    settles each stream's future from ngh2's events."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.h2 = ngh2.Connection(ngh2.Role.CLIENT, _CONFIG)
        self.calls: dict[int, _Call] = {}
        self.transport: asyncio.Transport | None = None
        #: No new streams here: the host sent GOAWAY, or the connection failed or was closed.
        self.done = False
        self._handlers: dict[type, Callable[[Any], None]] = {
            ngh2.ResponseReceived: self._on_response,
            ngh2.DataReceived: self._on_data,
            ngh2.TrailersReceived: self._on_trailers,
            ngh2.StreamReset: self._on_reset,
            ngh2.StreamClosed: self._on_closed,
            ngh2.GoAwayReceived: self._on_goaway,
            ngh2.ConnectionClosed: self._on_connection_closed,
        }

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection(_SETTINGS)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            self.h2.receive_data(data)
        except ngh2.NGH2Error as exc:
            self.abort(ConnectionError(f"the host broke HTTP/2: {type(exc).__name__}: {exc}"))
            return
        handlers = self._handlers
        for event in self.h2.events():
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.done = True
        self._fail_all(ConnectionError(f"connection lost: {exc}" if exc
                                       else "the host closed the connection"))

    # --- writing ---------------------------------------------------------------------------

    def flush(self) -> None:
        # Every ngh2 operation may queue bytes; they leave only through here.
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def open_stream(self, headers: list[tuple[bytes, bytes]], frame: bytes,
                    call: _Call) -> int:
        stream_id = self.h2.send_request(headers)
        self.h2.send_data(stream_id, frame, end_stream=True)
        self.calls[stream_id] = call
        call.connection, call.stream_id = self, stream_id
        self.flush()
        return stream_id

    def cancel(self, stream_id: int) -> None:
        """Forget a stream whose caller gave up, and tell the host (RST_STREAM CANCEL)."""
        if self.calls.pop(stream_id, None) is None or self.done:
            return
        try:
            self.h2.reset_stream(stream_id, ngh2.ErrorCode.CANCEL)
            self.flush()
        except ngh2.NGH2Error:
            pass  # the stream closed meanwhile

    def abort(self, error: Exception) -> None:
        self.done = True
        self._fail_all(error)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.done = True
        self._fail_all(ConnectionError("the connection was closed by the client"))
        if self.transport is not None:
            self.transport.close()

    # --- events ----------------------------------------------------------------------------

    def _on_response(self, event: Any) -> None:
        call = self.calls.get(event.stream_id)
        if call is None:
            return
        call.headers = event.headers
        if event.end_stream:  # trailers-only: the status is in these headers
            call.trailers = event.headers
            self._settle(event.stream_id, call)

    def _on_data(self, event: Any) -> None:
        call = self.calls.get(event.stream_id)
        if call is None:
            return
        call.data += event.data
        if call.length < 0 and len(call.data) >= 5:
            if call.data[0]:
                self._fail(event.stream_id, GRPCError(
                    GrpcStatus.UNIMPLEMENTED, "the answer is compressed, which is not supported"))
                return
            call.length = int.from_bytes(call.data[1:5], "big")
            if call.length > self.limit:
                self._fail(event.stream_id, ResponseTooLarge(
                    f"the answer is {call.length} bytes, over the client's "
                    f"max_receive_message_length of {self.limit} bytes"))
                return
        if call.length >= 0 and len(call.data) > 5 + call.length:
            # A unary answer is one message: bytes beyond it would pile up without bound.
            self._fail(event.stream_id, GRPCError(
                GrpcStatus.INTERNAL, f"the host sent more than the one message of "
                                     f"{call.length} bytes it announced"))
            return
        if event.end_stream:  # data that ends the stream: no trailers, not gRPC
            self._fail(event.stream_id, GRPCError(
                GrpcStatus.INTERNAL, "the host ended its answer without gRPC trailers"))

    def _on_trailers(self, event: Any) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None:
            call.trailers = event.headers
            self._settle(event.stream_id, call)

    def _on_reset(self, event: Any) -> None:
        self._fail(event.stream_id, ConnectionResetError(
            f"the host reset the stream ({_error_name(event.error_code)})"))

    def _on_closed(self, event: Any) -> None:
        if event.stream_id in self.calls:
            reason = event.local_error or _error_name(event.error_code)
            self._fail(event.stream_id, ConnectionResetError(
                f"the stream closed before its answer ({reason})"))

    def _on_goaway(self, event: Any) -> None:
        self.done = True  # later calls open a new connection
        for stream_id in [s for s in self.calls if s > event.last_stream_id]:
            self._fail(stream_id, ConnectionResetError(
                f"the host is going away (GOAWAY {_error_name(event.error_code)}) and did not "
                "process this call"))

    def _on_connection_closed(self, event: Any) -> None:
        self.abort(ConnectionError(f"the host closed HTTP/2 ({_error_name(event.error_code)})"))

    def _settle(self, stream_id: int, call: _Call) -> None:
        del self.calls[stream_id]
        if not call.future.done():
            call.arrived = time.perf_counter_ns()
            call.future.set_result(call)

    def _fail(self, stream_id: int, error: BaseException) -> None:
        call = self.calls.get(stream_id)
        if call is None:
            return
        self.cancel(stream_id)  # nothing more is wanted from it
        if not call.future.done():
            call.arrived = time.perf_counter_ns()
            call.future.set_exception(error)

    def _fail_all(self, error: BaseException) -> None:
        calls, self.calls = self.calls, {}
        arrived = time.perf_counter_ns()
        for call in calls.values():
            if not call.future.done():
                call.arrived = arrived
                call.future.set_exception(error)


def _error_name(code: int) -> str:
    try:
        return ngh2.ErrorCode(code).name
    except ValueError:
        return f"error {code}"


def _grpc_timeout(seconds: float) -> bytes:
    """The grpc-timeout header: at most 8 digits and a unit (gRPC over HTTP/2)."""
    milliseconds = max(1, math.ceil(seconds * 1000))
    if milliseconds < 100_000_000:
        return b"%dm" % milliseconds
    return b"%dS" % min(99_999_999, math.ceil(seconds))


_last_timeout: tuple[float, bytes] = (0.0, b"")


def _grpc_timeout_until(deadline: float) -> bytes:
    """grpc-timeout for a deadline (time.monotonic()); a fan-out's calls share one deadline, so
    the value is computed once per fan-out (the calls leave within microseconds of each other:
    the milliseconds it rounds up to cover them)."""
    global _last_timeout
    if _last_timeout[0] != deadline:
        _last_timeout = (deadline, _grpc_timeout(deadline - time.monotonic()))
    return _last_timeout[1]


_last_frame: tuple[bytes, bytes] = (b"", b"\x00\x00\x00\x00\x00")


def _framed(payload: bytes) -> bytes:
    """The gRPC message of `payload`; a fan-out sends the same bytes to every model, so the
    last one framed is kept (one copy per tick instead of one per model)."""
    global _last_frame
    if _last_frame[0] is payload:
        return _last_frame[1]
    frame = b"\x00" + len(payload).to_bytes(4, "big") + payload
    _last_frame = (payload, frame)
    return frame


class Ngh2Transport:
    """The unary calls of one model, over one HTTP/2 connection driven by ngh2."""

    def __init__(self, endpoint: ModelEndpoint, security: ConnectionSecurity,
                 max_receive_message_length: int) -> None:
        self.endpoint = endpoint
        self.security = security
        self.limit = max_receive_message_length
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        authority = security.server_name or endpoint.address
        self._head = [(b":method", b"POST"), (b":scheme", b"https" if security.ssl else b"http"),
                      (b":authority", authority.encode())]
        self._tail = [(b"content-type", b"application/grpc"), (b"te", b"trailers"),
                      (b"user-agent", _USER_AGENT)]
        self._headers: dict[str, list[tuple[bytes, bytes]]] = {}  # by path
        self._closed = False

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.done:
            return connection
        if self._closed:
            raise ConnectionError("the model's connection was closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connected_or_not)
        connecting = self._connecting
        try:
            # Shielded: a caller that gives up does not abort the connection others wait for.
            return await asyncio.shield(connecting)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if connecting.cancelled() and current is not None and not current.cancelling():
                # close() stopped the connecting, not this caller's cancellation: a
                # CancelledError here would escape into the coordinator's task.
                raise ConnectionError("the model's connection was closed while opening") \
                    from None
            raise

    def _connected_or_not(self, task: asyncio.Task[_Connection]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._connection = task.result()
            if self._closed:
                self._connection.close()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        security = self.security
        server_hostname = (security.server_name or self.endpoint.ip) if security.ssl else None
        async with asyncio.timeout(CONNECT_TIMEOUT):
            transport, connection = await loop.create_connection(
                lambda: _Connection(self.limit), self.endpoint.ip, self.endpoint.port,
                ssl=security.ssl, server_hostname=server_hostname)
        if security.ssl is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                transport.abort()
                raise _ssl.SSLError("the host did not agree to HTTP/2 over TLS (ALPN h2)")
        return connection

    async def unary(self, path: str, payload: bytes, deadline: float | None, *,
                    check_peer: bool = True) -> bytes:
        """One unary call; raises TimeoutError at `deadline` (time.monotonic()), GRPCError for
        a gRPC status, OSError when the host cannot be reached or drops the call,
        ResponseTooLarge, or UntrustedHost."""
        if deadline is None:
            return await self._unary(path, payload, None, check_peer)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the deadline passed before the call was sent")
        async with asyncio.timeout(remaining):
            return await self._unary(path, payload, deadline, check_peer)

    async def _unary(self, path: str, payload: bytes, deadline: float | None,
                     check_peer: bool) -> bytes:
        connection = await self._connected()
        call = self._open(connection, path, payload, deadline, check_peer)
        try:
            await call.future
        except BaseException:  # the deadline, or the caller cancelled: the host stops too
            connection.cancel(call.stream_id)
            raise
        return self._message(call)

    def start(self, path: str, payload: bytes, deadline: float | None,
              check_peer: bool = True) -> _Call | None:
        """Open the call now if the connection is up (None otherwise: use `unary`); its
        `future` settles when the answer is in, then `finish` reads it. No task, no coroutine:
        what a fan-out to thousands of models wants."""
        connection = self._connection
        if connection is None or connection.done:
            return None
        return self._open(connection, path, payload, deadline, check_peer)

    def _open(self, connection: _Connection, path: str, payload: bytes, deadline: float | None,
              check_peer: bool) -> _Call:
        base = self._headers.get(path)
        if base is None:
            base = self._headers[path] = [*self._head, (b":path", path.encode()), *self._tail]
        headers = base.copy()
        if deadline is not None:
            headers.append((b"grpc-timeout", _grpc_timeout_until(deadline)))
        metadata = self.security.metadata()
        if metadata:
            headers.extend((k.encode(), v.encode()) for k, v in metadata.items())
        call = _Call(asyncio.get_running_loop().create_future(), check_peer)
        try:
            connection.open_stream(headers, _framed(payload), call)
        except ngh2.NGH2Error as exc:
            connection.done = True  # (GOAWAY, no stream ids left): the next call reconnects
            raise ConnectionError(f"cannot open a stream: {type(exc).__name__}: {exc}") \
                from None
        return call

    def finish(self, call: _Call) -> bytes:
        """The answer of a settled call, or the exception it ended with (see `unary`)."""
        call.future.result()  # raises what the call ended with
        return self._message(call)

    def abandon(self, call: _Call) -> None:
        """The caller gives up (the deadline): RST_STREAM CANCEL, and the stream is forgotten."""
        if call.connection is not None:
            call.connection.cancel(call.stream_id)

    def _message(self, call: _Call) -> bytes:
        status, message = _grpc_status(call)
        if status is not GrpcStatus.OK:
            raise GRPCError(status, message)
        if call.check_peer and self.security.check_peer is not None:
            assert call.connection is not None
            headers = {bytes(k).decode("latin-1"): bytes(v).decode("latin-1")
                       for k, v in call.headers}
            self.security.check_peer(headers, peer_spki(call.connection.transport))
        if call.length < 0:
            raise GRPCError(GrpcStatus.UNKNOWN, "the model host answered without a message")
        if len(call.data) < 5 + call.length:
            raise ConnectionResetError(f"the answer was cut short: {len(call.data) - 5} of "
                                       f"{call.length} bytes")
        return bytes(call.data[5:5 + call.length])

    def reconnect(self) -> None:
        """Drop the connection; the next call opens a fresh one."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def close(self) -> None:
        self._closed = True
        self.reconnect()
        if self._connecting is not None:
            self._connecting.cancel()


def _grpc_status(call: _Call) -> tuple[GrpcStatus, str]:
    """The call's gRPC status: from its trailers, or from the HTTP status when there is none."""
    trailers = call.trailers or ()
    if len(trailers) == 1 and trailers[0][0] == b"grpc-status" and trailers[0][1] == b"0":
        return GrpcStatus.OK, ""  # nearly every answer
    fields: Mapping[bytes, bytes] = dict(trailers)
    raw = fields.get(b"grpc-status")
    if raw is None:
        http = dict(call.headers).get(b":status", b"")
        code = int(http) if http.isdigit() else 0
        status = _HTTP_TO_GRPC.get(code, GrpcStatus.UNKNOWN)
        return status, f"the host answered HTTP {code or 'without a status'} without a gRPC status"
    try:
        status = GrpcStatus(int(raw))
    except ValueError:
        return GrpcStatus.UNKNOWN, f"unknown grpc-status {raw!r}"
    message = unquote(bytes(fields.get(b"grpc-message", b"")).decode("utf-8", "replace"))
    return status, message
