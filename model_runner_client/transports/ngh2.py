"""Unary gRPC calls over ngh2 (libnghttp2, the reference HTTP/2 implementation, in C).

ngh2 is sans-I/O: this module owns the socket (an asyncio Protocol), TLS and ALPN, the gRPC
message framing, deadlines and cancellation, and the mapping of every HTTP/2 and gRPC failure
to the exceptions the rest of the client reads (see `transports/__init__.py`). It is the
default because a fan-out costs the client several times less CPU per call on it than on
grpclib (pure-Python h2, hpack, hyperframe) or the grpcio client: benchmarks/README.md has the
figures, measured by `python -m benchmarks.fanout`.

One connection per model, opened on the first call and again after it is lost or the host sent
GOAWAY; a connection the host sent GOAWAY on finishes the calls it took, then is closed (aborted
if the host reads nothing). ngh2 queues streams beyond the host's MAX_CONCURRENT_STREAMS itself.
A host that floods PING or SETTINGS and reads none of the acks loses the connection, as does one
that sends more frames than its calls need (FrameBudget: ngh2 makes a Python event of each).
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
import time
from collections.abc import Callable
from typing import Any

import ngh2

from ..models import ModelEndpoint
from ..transport_security import ConnectionSecurity
from .call import (
    MAX_UNREAD_ACKS,
    UNREAD_ACKS,
    Call,
    FrameBudget,
    RequestHeaders,
    error_name,
    grpc_message,
    no_trailers,
    not_processed,
    stream_reset,
)

__all__ = ["Ngh2Transport"]

logger = logging.getLogger(__name__)

#: How long opening a connection (TCP, TLS, HTTP/2 preface) may take at most; a call's own
#: deadline usually ends its wait sooner.
CONNECT_TIMEOUT = 20.0
_USER_AGENT = b"model-runner-client (ngh2)"
_CONFIG = ngh2.Configuration()
_SETTINGS = {ngh2.Setting.ENABLE_PUSH: 0, ngh2.Setting.INITIAL_WINDOW_SIZE: 1 << 20}


class _Call(Call):
    """A call on an ngh2 connection: where it runs, for cancelling it."""

    __slots__ = ("connection", "stream_id")

    def __init__(self, limit: int, check_peer: bool = True) -> None:
        super().__init__(limit, check_peer)
        self.connection: _Connection | None = None
        self.stream_id = 0


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: feeds ngh2 the bytes that arrive, writes what it produces, and
    settles each stream's future from ngh2's events."""

    def __init__(self) -> None:
        self.h2 = ngh2.Connection(ngh2.Role.CLIENT, _CONFIG)
        self.calls: dict[int, _Call] = {}
        self.transport: asyncio.Transport | None = None
        #: No new streams here: the host sent GOAWAY, or the connection failed or was closed.
        self.done = False
        #: Replaced (GOAWAY, reconnect): closed once the calls it carries have ended.
        self.retired = False
        self._paused = False
        self._unread_acks = 0
        self._pumping = False
        self.budget = FrameBudget(time.monotonic())
        self._handlers: dict[type, Callable[[Any], None]] = {
            ngh2.ResponseReceived: self._on_response,
            ngh2.DataReceived: self._on_data,
            ngh2.TrailersReceived: self._on_trailers,
            ngh2.StreamReset: self._on_reset,
            ngh2.StreamClosed: self._on_closed,
            ngh2.GoAwayReceived: self._on_goaway,
            ngh2.ConnectionClosed: self._on_connection_closed,
            ngh2.PingReceived: self._on_control,
            ngh2.SettingsReceived: self._on_control,
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
            # nghttp2's own defences too: a burst of over max_outbound_ack PINGs (FLOODED).
            reason = f"the host broke HTTP/2: {type(exc).__name__}: {exc}"
            logger.info("closing a connection: %s", reason)
            self.abort(ConnectionError(reason))
            return
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.done = True
        self._fail_all(ConnectionError(f"connection lost: {exc}" if exc
                                       else "the host closed the connection"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._unread_acks = 0

    # --- writing ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what ngh2 queued and handle the events it produced, until neither is left:
        sending produces events too (a stream reset on our side closes it), and they were once
        left unread, so such a call waited for its deadline."""
        if self._pumping:
            return  # the loop below picks up what this call queued
        self._pumping = True
        try:
            handlers = self._handlers
            while True:
                data = self.h2.data_to_send()
                if data and self.transport is not None and not self.transport.is_closing():
                    self.transport.write(data)
                events = self.h2.events()
                if not events:
                    break
                now, budget = time.monotonic(), self.budget
                for event in events:
                    if not budget.spend(now):
                        self._flooded()
                        return
                    handler = handlers.get(type(event))
                    if handler is not None:
                        handler(event)
        finally:
            self._pumping = False

    def open_stream(self, headers: list[tuple[bytes, bytes]], message: bytes,
                    call: _Call) -> None:
        stream_id = self.h2.send_request(headers)
        self.h2.send_data(stream_id, message, end_stream=True)
        self.calls[stream_id] = call
        self.budget.opened()
        call.connection, call.stream_id, call.socket_transport = self, stream_id, self.transport
        self.flush()

    def cancel(self, stream_id: int) -> None:
        """Forget a stream whose caller gave up, and tell the host (RST_STREAM CANCEL)."""
        if self.calls.pop(stream_id, None) is None:
            return
        self.budget.ended()
        if not self.done:
            try:
                self.h2.reset_stream(stream_id, ngh2.ErrorCode.CANCEL)
                self.flush()
            except ngh2.NGH2Error:
                pass  # the stream closed meanwhile
        self._close_if_drained()

    def _flooded(self) -> None:
        """The host spent its FrameBudget: GOAWAY ENHANCE_YOUR_CALM, then the connection ends."""
        logger.warning("closing a connection: %s", FrameBudget.EXCEEDED)
        self.h2.terminate_connection(ngh2.ErrorCode.ENHANCE_YOUR_CALM)
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        self.abort(ConnectionError(FrameBudget.EXCEEDED))

    def abort(self, error: Exception) -> None:
        self.done = True
        self._fail_all(error)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.done = True
        self._fail_all(ConnectionError("the connection was closed by the client"))
        self._end_transport()

    def retire(self) -> None:
        """No new calls here; close once the calls it carries have ended."""
        self.done = self.retired = True
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self.retired and not self.calls:
            self._end_transport()

    def _end_transport(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size():
            transport.abort()  # a host that does not read would hold the socket open
        else:
            transport.close()

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
        self.budget.delivered(len(event.data))
        error = call.feed(event.data)
        if error is not None:
            self._fail(event.stream_id, error)
            return
        if event.end_stream:  # data that ends the stream: no trailers, not gRPC
            self._fail(event.stream_id, no_trailers())

    def _on_trailers(self, event: Any) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None:
            call.trailers = event.headers
            self._settle(event.stream_id, call)

    def _on_reset(self, event: Any) -> None:
        self._fail(event.stream_id, stream_reset(event.error_code))

    def _on_closed(self, event: Any) -> None:
        if event.stream_id in self.calls:
            reason = event.local_error or error_name(event.error_code)
            self._fail(event.stream_id, ConnectionResetError(
                f"the stream closed before its answer ({reason})"))

    def _on_goaway(self, event: Any) -> None:
        # Later calls open a new connection; the calls the host took (up to its last stream id)
        # get their answers here, then the connection closes.
        for stream_id in [s for s in self.calls if s > event.last_stream_id]:
            self._fail(stream_id, not_processed(event.error_code))
        self.retire()

    def _on_connection_closed(self, event: Any) -> None:
        self.abort(ConnectionError(f"the host closed HTTP/2 ({error_name(event.error_code)})"))

    def _on_control(self, event: Any) -> None:
        if self._paused:  # its ack waits behind what the host does not read
            self._unread_acks += 1
            if self._unread_acks > MAX_UNREAD_ACKS:
                reason = UNREAD_ACKS
                logger.warning("closing a connection: %s", reason)
                self.abort(ConnectionError(reason))

    def _settle(self, stream_id: int, call: _Call) -> None:
        del self.calls[stream_id]
        self.budget.ended()
        call.settle()
        self._close_if_drained()

    def _fail(self, stream_id: int, error: BaseException) -> None:
        call = self.calls.get(stream_id)
        if call is None:
            return
        self.cancel(stream_id)  # nothing more is wanted from it
        call.fail(error)

    def _fail_all(self, error: BaseException) -> None:
        calls, self.calls = self.calls, {}
        for call in calls.values():
            self.budget.ended()
            call.fail(error)



class Ngh2Transport:
    """The unary calls of one model, over one HTTP/2 connection driven by ngh2."""

    def __init__(self, endpoint: ModelEndpoint, security: ConnectionSecurity,
                 max_receive_message_length: int) -> None:
        self.endpoint = endpoint
        self.security = security
        self.limit = max_receive_message_length
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._headers = RequestHeaders(security.server_name or endpoint.address, security,
                                       _USER_AGENT)
        self._closed = False

    # --- calls -------------------------------------------------------------------------------

    def start(self, path: str, message: bytes, deadline: float | None, *,
              check_peer: bool = True) -> _Call:
        """Send the call: on the open connection at once (no task, no coroutine: what a fan-out
        to thousands of models wants), or from a task once connected."""
        call = _Call(self.limit, check_peer)
        connection = self._connection
        if connection is not None and not connection.done:
            self._open(connection, call, path, message, deadline)
        else:
            call.sender = asyncio.get_running_loop().create_task(
                self._connect_then_open(call, path, message, deadline))
        return call

    def finish(self, call: Call) -> bytes:
        return grpc_message(call, self.security)

    def abandon(self, call: Call) -> None:
        """The caller gives up (the deadline): RST_STREAM CANCEL, and the stream is forgotten."""
        assert isinstance(call, _Call), "a call this transport started"
        if call.connection is not None:
            call.connection.cancel(call.stream_id)
        call.abandon()

    async def _connect_then_open(self, call: _Call, path: str, message: bytes,
                                 deadline: float | None) -> None:
        try:
            connection = await self._connected()
            self._open(connection, call, path, message, deadline)
        except Exception as exc:  # mapped by the caller, as any call's error
            call.fail(exc)

    def _open(self, connection: _Connection, call: _Call, path: str, message: bytes,
              deadline: float | None) -> None:
        headers = self._headers.for_call(path, deadline)
        try:
            connection.open_stream(headers, message, call)
        except ngh2.NGH2Error as exc:
            connection.retire()  # (GOAWAY, no stream ids left): the next call reconnects
            raise ConnectionError(f"cannot open a stream: {type(exc).__name__}: {exc}") \
                from None

    # --- the connection ----------------------------------------------------------------------

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
            previous, self._connection = self._connection, task.result()
            if previous is not None:
                previous.retire()  # once its calls end (it had sent GOAWAY, or was dropped)
            if self._closed:
                self._connection.close()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        security = self.security
        server_hostname = (security.server_name or self.endpoint.ip) if security.ssl else None
        async with asyncio.timeout(CONNECT_TIMEOUT):
            transport, connection = await loop.create_connection(
                _Connection, self.endpoint.ip, self.endpoint.port,
                ssl=security.ssl, server_hostname=server_hostname)
        if security.ssl is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                transport.abort()
                raise _ssl.SSLError("the host did not agree to HTTP/2 over TLS (ALPN h2)")
        return connection

    def reconnect(self) -> None:
        """The next call opens a fresh connection; the calls on this one finish first."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.retire()

    def close(self) -> None:
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
        if self._connecting is not None:
            self._connecting.cancel()
