"""Unary gRPC calls over grpclib (pure-Python HTTP/2: h2, hpack, hyperframe).

Selectable with `transport="grpclib"` while ngh2 is alpha. The client uses grpclib's Channel to
connect and its protocol Stream to send, and reads answers in its own events processor, so that
a call is settled by the protocol the moment its answer is complete (`transports/call.py`), as
on ngh2. Reading through grpclib's client Stream settled a call only when its task resumed: a
host flooding the loop turned 18 of 30 honest verdicts into TIMEOUT; a GOAWAY ended the calls
the host had answered; a grpc-status in the headers won over the trailers'; and a grpc-message
that is not UTF-8 made asyncio log a traceback per call. grpclib's private internals used here
live in this module, each with its reason; tests/test_grpclib_internals.py fails when an
upgrade of grpclib or h2 breaks one of them (both are pinned).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from asyncio import BaseTransport
from collections.abc import Callable
from typing import Any

from grpclib.client import Channel, Handler
from grpclib.config import Configuration
from grpclib.exceptions import ProtocolError as GrpclibProtocolError
from grpclib.exceptions import StreamTerminatedError
from grpclib.protocol import EventsProcessor, H2Protocol
from h2.connection import ConnectionInputs, ConnectionState
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.frame_buffer import FrameBuffer
from hyperframe.frame import Frame

from model_runner.wire.errors import describe

from ..models import ModelEndpoint
from ..transport_security import ConnectionSecurity
from .call import (
    MAX_UNREAD_ACKS,
    UNREAD_ACKS,
    Call,
    FrameBudget,
    RequestHeaders,
    grpc_message,
    no_trailers,
    not_processed,
    stream_reset,
)

__all__ = ["CLOSED_STREAMS_KEPT", "GrpclibTransport"]

logger = logging.getLogger(__name__)

#: Closed-stream records each HTTP/2 connection keeps. h2 keeps 65,536 by default, ~170 bytes
#: each: ~11 MB per model once a connection has made that many calls (a day of ticks), which is
#: gigabytes for a thousand models. Late frames can only concern the last few unary calls.
CLOSED_STREAMS_KEPT = 128
_USER_AGENT = b"model-runner-client (grpclib)"


class _FrameFlood(H2ProtocolError):
    """Raised inside h2's parse loop, which answers a ProtocolError with GOAWAY (this code)."""

    error_code = ErrorCodes.ENHANCE_YOUR_CALM


class _BudgetedFrameBuffer(FrameBuffer):
    """h2's frame buffer, spending the connection's FrameBudget on every frame it parses
    (CONTINUATION frames included, which h2 merges into one HEADERS event)."""

    def __init__(self, budget: FrameBudget) -> None:
        super().__init__(server=False)
        self.budget = budget

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        if not self.budget.spend(time.monotonic()):
            raise _FrameFlood(FrameBudget.EXCEEDED)
        return super()._update_header_buffer(f)


class _GrpclibCall(Call):
    """A call on a grpclib connection: its stream once opened, and the processor reading it."""

    __slots__ = ("processor", "stream")

    def __init__(self, limit: int, check_peer: bool = True) -> None:
        super().__init__(limit, check_peer)
        self.stream: Any = None
        self.processor: _CallProcessor | None = None


class _CallProcessor(EventsProcessor):
    """grpclib's events processor, reading the answers of our calls: each stream's bytes are
    taken (and their flow-control window returned) as they arrive, and its call settled when
    its trailers do."""

    def __init__(self, handler: Any, connection: Any, on_control: Callable[[], None],
                 budget: FrameBudget) -> None:
        super().__init__(handler, connection)
        #: Told of each PING or SETTINGS from the host (each needs an ack).
        self.on_control = on_control
        self.budget = budget
        self.calls: dict[int, _GrpclibCall] = {}
        self.releases: dict[int, Any] = {}
        self.going_away = False

    def adopt(self, call: _GrpclibCall, stream: Any, release: Any) -> None:
        self.calls[stream.id] = call
        self.releases[stream.id] = release
        call.stream, call.processor = stream, self
        self.budget.opened()

    def forget(self, stream_id: int) -> _GrpclibCall | None:
        call = self.calls.pop(stream_id, None)
        release = self.releases.pop(stream_id, None)
        if release is not None:
            release()
        if call is not None:
            self.budget.ended()
        if self.going_away and not self.calls:
            self.close("the host is going away (GOAWAY)")
        return call

    def fail(self, stream_id: int, error: BaseException) -> None:
        call = self.forget(stream_id)
        if call is not None:
            if call.stream is not None and not self.connection.is_closing():
                # Nothing more is wanted. h2 may have closed the stream already: it handles a
                # whole read before grpclib hands us its events (an answer refused for its
                # size arrived with its trailers).
                with contextlib.suppress(H2ProtocolError):
                    call.stream.reset_nowait(ErrorCodes.CANCEL)
            call.fail(error)

    def process_response_received(self, event: Any) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None:
            call.headers = event.headers
            if event.stream_ended is not None:  # trailers-only: the status is in the headers
                call.trailers = event.headers
                self.forget(event.stream_id)
                call.settle()

    def process_data_received(self, event: Any) -> None:
        self.connection.ack(event.stream_id, event.flow_controlled_length)
        self.connection.data_received += len(event.data)
        call = self.calls.get(event.stream_id)
        if call is not None:
            self.budget.delivered(len(event.data))
            error = call.feed(event.data)
            if error is not None:
                self.fail(event.stream_id, error)

    def process_trailers_received(self, event: Any) -> None:
        call = self.calls.get(event.stream_id)
        if call is not None:
            call.trailers = event.headers
            self.forget(event.stream_id)
            call.settle()

    def process_stream_ended(self, event: Any) -> None:
        if event.stream_id in self.calls:  # data that ends the stream: no trailers, not gRPC
            self.fail(event.stream_id, no_trailers())

    def process_stream_reset(self, event: Any) -> None:
        if event.stream_id in self.calls:
            self.fail(event.stream_id, stream_reset(event.error_code))

    def process_connection_terminated(self, event: Any) -> None:
        # New calls open a new connection; the calls the host took (up to its last stream id)
        # still get their answers here, then the connection closes.
        handler: Any = self.handler
        handler.connection_lost = True  # grpclib's Channel reconnects on the next call
        self.going_away = True
        for stream_id in [s for s in self.calls if s > event.last_stream_id]:
            self.fail(stream_id, not_processed(event.error_code))
        if not self.calls:
            self.close("the host is going away (GOAWAY)")

    def process_ping_received(self, event: Any) -> None:
        self.on_control()

    def process_remote_settings_changed(self, event: Any) -> None:
        super().process_remote_settings_changed(event)
        self.on_control()

    def close(self, reason: str = "Connection closed") -> None:
        calls, self.calls = self.calls, {}
        for call in calls.values():
            call.fail(ConnectionError(f"the connection ended: {reason}"))
        if hasattr(self, "processors"):  # grpclib's close is not idempotent on its own
            super().close(reason)


class _Protocol(H2Protocol):
    """grpclib's client protocol with our events processor, a bounded record of closed streams,
    a bound on acks the host does not read and a budget of frames (FrameBudget)."""

    def connection_made(self, transport: BaseTransport) -> None:
        super().connection_made(transport)
        # h2 offers no setting for this; its record of closed streams is a size-limited dict.
        h2_connection: Any = self.connection._connection
        closed: Any = h2_connection._closed_streams
        closed._size_limit = CLOSED_STREAMS_KEPT
        # h2 takes a received GOAWAY for the end of the connection and refuses every later
        # frame, in the same read too, answers to the calls the host took included: here the
        # connection stays open for them (no new stream is opened on it: the Channel
        # reconnects, see _CallProcessor.process_connection_terminated).
        machine = h2_connection.state_machine
        machine._transitions = {**machine._transitions, (
            ConnectionState.CLIENT_OPEN, ConnectionInputs.RECV_GOAWAY): (
            None, ConnectionState.CLIENT_OPEN)}
        budget = FrameBudget(time.monotonic())
        h2_connection.incoming_buffer = _BudgetedFrameBuffer(budget)
        self._unread_acks = 0
        self.processor = _CallProcessor(self.handler, self.connection, self._count_unread_ack,
                                        budget)

    def data_received(self, data: bytes) -> None:
        # grpclib's, with the reason kept (it says 'Protocol error' whatever h2 refused) and
        # the connection aborted rather than closed: a host that broke HTTP/2 gets our GOAWAY
        # (h2 queued it) and nothing more, even if it reads nothing.
        try:
            events = self.connection.feed(data)
        except H2ProtocolError as exc:
            self.connection.flush()
            reason = str(exc) if isinstance(exc, _FrameFlood) else \
                f"the host broke HTTP/2: {type(exc).__name__}: {exc}"
            logger.info("closing a connection: %s", reason)
            transport: Any = self.connection._transport
            transport.abort()
            self.processor.close(reason)
            return
        self.connection.flush()
        for event in events:
            self.processor.process(event)
        self.connection.flush()

    def _count_unread_ack(self) -> None:
        if not self.connection.write_ready.is_set():  # paused: the host reads nothing
            self._unread_acks += 1
            if self._unread_acks > MAX_UNREAD_ACKS:
                reason = UNREAD_ACKS
                logger.warning("closing a connection: %s", reason)
                transport: Any = self.connection._transport
                transport.abort()
                self.processor.close(reason)

    def resume_writing(self) -> None:
        self._unread_acks = 0
        super().resume_writing()


class _Channel(Channel):
    """A grpclib Channel whose connections are `_Protocol`s reading headers as bytes (a host's
    bad bytes become a message, not an exception inside the protocol)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._h2_config.header_encoding = None

    def _protocol_factory(self) -> H2Protocol:
        return _Protocol(Handler(), self._config, self._h2_config)


class GrpclibTransport:
    """The unary calls of one model, over one grpclib Channel (one HTTP/2 connection)."""

    def __init__(self, endpoint: ModelEndpoint, security: ConnectionSecurity,
                 max_receive_message_length: int) -> None:
        self.endpoint = endpoint
        self.security = security
        self.limit = max_receive_message_length
        self._headers = RequestHeaders(security.server_name or endpoint.address, security,
                                       _USER_AGENT)
        self._channel = self._new_channel()

    def _new_channel(self) -> Channel:
        security = self.security
        config = None
        if security.server_name is not None:
            config = Configuration(ssl_target_name_override=security.server_name)
        return _Channel(self.endpoint.ip, self.endpoint.port, ssl=security.ssl, config=config)

    def start(self, path: str, message: bytes, deadline: float | None, *,
              check_peer: bool = True) -> _GrpclibCall:
        """Send the call from a task (grpclib sends with coroutines); the answer is read and the
        call settled by the protocol."""
        call = _GrpclibCall(self.limit, check_peer)
        call.sender = asyncio.get_running_loop().create_task(
            self._send(call, path, message, deadline))
        return call

    def finish(self, call: Call) -> bytes:
        return grpc_message(call, self.security)

    def abandon(self, call: Call) -> None:
        """The caller gives up (the deadline): RST_STREAM CANCEL, and the stream is forgotten."""
        assert isinstance(call, _GrpclibCall), "a call this transport started"
        if call.processor is not None and call.stream is not None:
            call.processor.fail(call.stream.id, TimeoutError("abandoned"))
        call.abandon()

    async def _send(self, call: _GrpclibCall, path: str, message: bytes,
                    deadline: float | None) -> None:
        try:
            protocol: Any = await self._channel.__connect__()
            headers = self._headers.for_call(path, deadline)
            processor: _CallProcessor = protocol.processor
            stream = protocol.connection.create_stream()
            release = await stream.send_request(headers, _processor=processor)
            processor.adopt(call, stream, release)  # no await since it was registered
            call.socket_transport = protocol.connection._transport
            await stream.send_data(message, end_stream=True)
        except asyncio.CancelledError:
            raise
        except AttributeError as exc:
            # grpclib's Connection.close() deletes its `_transport`: a call that opens a stream
            # on a connection closed meanwhile (a reconnect, a redeploy) fails so.
            if "_transport" not in str(exc):
                call.fail(exc)
            else:
                call.fail(ConnectionResetError("the connection closed under the call"))
        except (StreamTerminatedError, GrpclibProtocolError, H2ProtocolError) as exc:
            # grpclib's and h2's own exceptions stop here: the client reads only the errors
            # transports/errors.py maps (they once leaked into the outcome mapping).
            call.fail(ConnectionError(f"the connection failed: {describe(exc)}"))
        except Exception as exc:  # OSError, TimeoutError, ...: mapped by transports/errors.py
            call.fail(exc)

    def reconnect(self) -> None:
        """The next call opens a fresh connection; the calls on this one finish first."""
        old, self._channel = self._channel, self._new_channel()
        protocol: Any = old._protocol
        processor = getattr(protocol, "processor", None)
        if isinstance(processor, _CallProcessor) and processor.calls:
            processor.going_away = True  # closes once its calls have ended
        else:
            old.close()

    def close(self) -> None:
        self._channel.close()

