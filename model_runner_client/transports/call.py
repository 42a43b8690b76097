"""What every transport shares: a unary call's state as its answer arrives, settled by the
transport's protocol the moment the answer is complete (so a verdict never waits for a task to
resume), and gRPC over HTTP/2's rules for reading it, written once: the 5-byte message framing,
the grpc-timeout header, and the status (the trailers' grpc-status wins over the headers'; with
none, the HTTP status maps as gRPC specifies).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError

from ..transport_security import ConnectionSecurity, peer_spki
from . import ResponseTooLarge

__all__ = ["MAX_UNREAD_ACKS", "UNREAD_ACKS", "Call", "FrameBudget", "RequestHeaders",
           "error_name", "frame", "grpc_message", "grpc_status", "grpc_timeout", "no_trailers",
           "not_processed", "stream_reset"]

# gRPC's mapping of HTTP statuses that carry no grpc-status (gRPC over HTTP/2, "HTTP to gRPC").
_HTTP_TO_GRPC = {400: GrpcStatus.INTERNAL, 401: GrpcStatus.UNAUTHENTICATED,
                 403: GrpcStatus.PERMISSION_DENIED, 404: GrpcStatus.UNIMPLEMENTED,
                 429: GrpcStatus.UNAVAILABLE, 502: GrpcStatus.UNAVAILABLE,
                 503: GrpcStatus.UNAVAILABLE, 504: GrpcStatus.UNAVAILABLE}

Headers = Sequence[Any]  # (name, value) pairs of bytes-like, as the HTTP/2 engine gives them


def frame(payload: bytes) -> bytes:
    """The gRPC message of `payload` (uncompressed). A fan-out frames its request once and sends
    the same bytes to every model."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def grpc_timeout(seconds: float) -> bytes:
    """The grpc-timeout header for the time left: at most 8 digits and a unit."""
    milliseconds = max(1, math.ceil(seconds * 1000))
    if milliseconds < 100_000_000:
        return b"%dm" % milliseconds
    return b"%dS" % min(99_999_999, math.ceil(seconds))


class RequestHeaders:
    """One model's request headers in gRPC over HTTP/2's order: pseudo-headers, content-type,
    te, user-agent, then the call's grpc-timeout (the time left when it is sent) and the
    security mode's metadata. As bytes, built once per path."""

    __slots__ = ("_by_path", "_head", "_security", "_tail")

    def __init__(self, authority: str, security: ConnectionSecurity, user_agent: bytes) -> None:
        self._security = security
        self._head = [(b":method", b"POST"), (b":scheme", b"https" if security.ssl else b"http"),
                      (b":authority", authority.encode())]
        self._tail = [(b"content-type", b"application/grpc"), (b"te", b"trailers"),
                      (b"user-agent", user_agent)]
        self._by_path: dict[str, list[tuple[bytes, bytes]]] = {}

    def for_call(self, path: str, deadline: float | None) -> list[tuple[bytes, bytes]]:
        """The headers of a call sent now; TimeoutError if `deadline` (time.monotonic()) has
        passed."""
        base = self._by_path.get(path)
        if base is None:
            base = self._by_path[path] = [*self._head, (b":path", path.encode()), *self._tail]
        headers = base.copy()
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the deadline passed before the call was sent")
            headers.append((b"grpc-timeout", grpc_timeout(remaining)))
        metadata = self._security.metadata()
        if metadata:
            headers.extend((k.encode(), v.encode()) for k, v in metadata.items())
        return headers


class Call:
    """One stream of a unary call. The transport's protocol feeds it (`headers`, `feed`,
    `trailers`) and settles `future` when the answer is complete or the call failed; `arrived`
    is then time.monotonic_ns(), the clock of every deadline."""

    __slots__ = ("arrived", "check_peer", "data", "future", "headers", "length", "limit",
                 "sender", "socket_transport", "trailers")

    def __init__(self, limit: int, check_peer: bool = True) -> None:
        self.future: asyncio.Future[Call] = asyncio.get_running_loop().create_future()
        self.limit = limit
        self.check_peer = check_peer
        self.headers: Headers = ()
        self.trailers: Headers | None = None
        self.data = bytearray()
        self.length = -1  # the gRPC message's length, once its prefix arrived
        self.arrived = 0
        #: The task sending the request, when sending had to wait (connecting, flow control).
        self.sender: asyncio.Task[None] | None = None
        #: The asyncio transport (the socket's) it travelled on, for the TLS peer's key.
        self.socket_transport: Any = None

    def feed(self, data: bytes) -> BaseException | None:
        """Take answer bytes; returns why the call must fail, if they cannot be its answer."""
        self.data += data
        if self.length < 0 and len(self.data) >= 5:
            if self.data[0]:
                return GRPCError(GrpcStatus.UNIMPLEMENTED,
                                 "the answer is compressed, which is not supported")
            self.length = int.from_bytes(self.data[1:5], "big")
            if self.length > self.limit:
                return ResponseTooLarge(f"the answer is {self.length} bytes, over the client's "
                                        f"max_receive_message_length of {self.limit} bytes")
        if self.length >= 0 and len(self.data) > 5 + self.length:
            # A unary answer is one message: bytes beyond it would pile up without bound.
            return GRPCError(GrpcStatus.INTERNAL, f"the host sent more than the one message of "
                                                  f"{self.length} bytes it announced")
        return None

    def settle(self) -> None:
        if not self.future.done():
            self.arrived = time.monotonic_ns()
            self.future.set_result(self)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.arrived = time.monotonic_ns()
            self.future.set_exception(error)
            self.future.exception()  # retrieved: an abandoned call's error is nobody's news

    def abandon(self) -> None:
        """The caller gives up (the deadline): stop sending and fail the call. The transport
        resets the stream itself (`Transport.abandon`)."""
        if self.sender is not None:
            self.sender.cancel()
        self.fail(TimeoutError("abandoned"))


def grpc_status(headers: Headers, trailers: Headers | None) -> tuple[GrpcStatus, str]:
    """A call's gRPC status: the trailers' grpc-status, else the headers' (a trailers-only
    answer), else from the HTTP status."""
    fields: Mapping[bytes, Any] = {bytes(k): v for k, v in (trailers or ())}
    raw = fields.get(b"grpc-status")
    if raw is None:
        fields = {bytes(k): v for k, v in headers}
        raw = fields.get(b"grpc-status")
    if raw is None:
        http = bytes(fields.get(b":status", b""))
        code = int(http) if http.isdigit() else 0
        status = _HTTP_TO_GRPC.get(code, GrpcStatus.UNKNOWN)
        return status, f"the host answered HTTP {code or 'without a status'} without a gRPC status"
    try:
        status = GrpcStatus(int(bytes(raw)))
    except ValueError:
        return GrpcStatus.UNKNOWN, f"unknown grpc-status {bytes(raw)!r}"
    # Any bytes at all: a host's bad bytes make a message, never an exception.
    message = unquote(bytes(fields.get(b"grpc-message", b"")).decode("utf-8", "replace"))
    return status, message


_OK = (b"grpc-status", b"0")


def grpc_message(call: Call, security: ConnectionSecurity) -> bytes:
    """The message of a settled call, or the exception it ended with: GRPCError for a status
    other than OK, UntrustedHost, ConnectionResetError for an answer cut short."""
    call.future.result()  # raises what the call ended with
    trailers = call.trailers
    if not (trailers is not None and len(trailers) == 1
            and (bytes(trailers[0][0]), bytes(trailers[0][1])) == _OK):  # nearly every answer
        status, message = grpc_status(call.headers, trailers)
        if status is not GrpcStatus.OK:
            raise GRPCError(status, message)
    if call.check_peer and security.check_peer is not None:
        headers = {bytes(k).decode("latin-1"): bytes(v).decode("latin-1")
                   for k, v in call.headers}
        security.check_peer(headers, peer_spki(call.socket_transport))
    if call.length < 0:
        raise GRPCError(GrpcStatus.UNKNOWN, "the model host answered without a message")
    if len(call.data) < 5 + call.length:
        raise ConnectionResetError(f"the answer was cut short: {len(call.data) - 5} of "
                                   f"{call.length} bytes")
    return bytes(call.data[5:5 + call.length])


class FrameBudget:
    """How many HTTP/2 frames a host may send on one connection. Each costs the client Python
    work whatever its size: h2 parses every frame in Python (tens of µs), and ngh2 makes an
    event of each (`:status 100` HEADERS, which HTTP/2 allows any number of, cost 0.65-0.83 s
    of CPU per tick). One host answering in one-byte DATA frames, on a stream it kept flooding
    after the call was reset, turned all 30 honest verdicts beside it into TIMEOUT on every
    tick on grpclib (tests/test_client_transports_hostile.py). An honest host sends a few
    frames per call (headers, DATA in its library's chunks, trailers, window updates) and few
    between calls (acks, keepalives): each open call grants PER_CALL frames and its answer one
    per KiB delivered; FREE frames refill over REFILL_SECONDS. A connection that spends past
    its grants is closed (with EXCEEDED). Pure: the caller passes the clock."""

    FREE = 256
    PER_CALL = 16
    BYTES_PER_FRAME = 1024
    REFILL_SECONDS = 10.0
    EXCEEDED = (
        "the host sent more HTTP/2 frames than its calls need (tiny DATA frames, frames on "
        "reset streams or a HEADERS flood), which spends the client's CPU: the connection is "
        "closed; the host's HTTP/2 library must send an answer in few frames (at most "
        f"{PER_CALL} per call beyond one per {BYTES_PER_FRAME} bytes)")

    __slots__ = ("open_calls", "refilled", "tokens")

    def __init__(self, now: float) -> None:
        self.tokens = float(self.FREE)
        self.open_calls = 0
        self.refilled = now

    def opened(self) -> None:
        self.open_calls += 1
        self.tokens += self.PER_CALL

    def ended(self) -> None:
        """A call ended: what it was granted and did not use goes (an idle connection holds
        FREE frames at most, however many calls it made)."""
        self.open_calls -= 1
        self.tokens = min(self.tokens, self.FREE + self.PER_CALL * self.open_calls)

    def delivered(self, size: int) -> None:
        """`size` bytes of a call's answer arrived (bounded by the call's size limit)."""
        self.tokens += size / self.BYTES_PER_FRAME

    def spend(self, now: float) -> bool:
        """One frame arrived; False once the host sent more than it was granted."""
        self.tokens -= 1
        if self.tokens >= 0:
            return True
        ceiling = self.FREE + self.PER_CALL * self.open_calls
        refill = (now - self.refilled) * self.FREE / self.REFILL_SECONDS
        self.refilled = now
        self.tokens = min(self.tokens + refill, ceiling - 1.0)
        if self.tokens >= 0:
            return True
        self.tokens += 1  # a refused frame is not charged
        return False


# --- what the host's HTTP/2 events mean for a call, worded once for both transports ----------

#: PING and SETTINGS acks queued while the host does not read (nghttp2's max_outbound_ack):
#: past it, the connection is closed.
MAX_UNREAD_ACKS = 1000
UNREAD_ACKS = (f"the host sent over {MAX_UNREAD_ACKS} PING/SETTINGS frames and read none of "
               "the acks")
#: RFC 9113 section 7's error codes, by value (h2's and nghttp2's names are these).
_ERROR_NAMES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
                "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM",
                "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM",
                "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")


def error_name(code: int) -> str:
    """An HTTP/2 error code's name, e.g. 'CANCEL' (a code outside RFC 9113: 'error 42')."""
    return _ERROR_NAMES[code] if 0 <= code < len(_ERROR_NAMES) else f"error {code}"


def stream_reset(code: int) -> ConnectionResetError:
    """The host reset the call's stream (RST_STREAM)."""
    return ConnectionResetError(f"the host reset the stream ({error_name(code)})")


def not_processed(code: int) -> ConnectionResetError:
    """The host sent GOAWAY with a last stream id below the call's: it did not take it."""
    return ConnectionResetError(f"the host is going away (GOAWAY {error_name(code)}) and did "
                                "not process this call")


def no_trailers() -> GRPCError:
    """DATA ended the stream: no trailers, so no gRPC status."""
    return GRPCError(GrpcStatus.INTERNAL, "the host ended its answer without gRPC trailers")
