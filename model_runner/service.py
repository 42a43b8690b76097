"""`dynamic_subclass.DynamicSubclassService` over grpclib: the wire side of a `ModelCore`.

It reads each request within the host's size limit, authorizes it, counts it while in flight (a
drain waits for those), hands it to the core and writes the core's `Answer` as the response.
gRPC statuses are only used for refusals of the transport's kind (oversized or malformed
requests, shutting down, a deadline passed in the queue, a busy model); every model
misbehaviour is a `commons.Status` inside the response.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import grpclib.const
import grpclib.server
from google.protobuf.empty_pb2 import Empty
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError

from ._grpclib import peer_certificate, raw_stream
from .model import Answer, DeadlinePassed, ModelBusy, ModelCore
from .wire import (
    CALL_PATH,
    REST_PATH,
    SETUP_PATH,
    CallResponse,
    RestResponse,
    SetupResponse,
    Status,
)
from .wire.pb2.commons_pb2 import Status as _Status
from .wire.pb2.dynamic_subclass_pb2 import CallRequest, SetupRequest
from .wire.pb2.dynamic_subclass_pb2 import CallResponse as _CallResponse

__all__ = ["Authorize", "DynamicSubclassService"]

#: Given a call's metadata and a getter of the client's TLS certificate (DER), returns why the
#: call is refused (UNAUTHENTICATED), or None to accept it.
Authorize = Callable[[Mapping[str, str], Callable[[], bytes | None]], str | None]


class DynamicSubclassService:
    """Serves Setup, Call and Rest for one `ModelCore`."""

    def __init__(self, core: ModelCore, *, max_receive_message_length: int,
                 authorize: Authorize | None = None) -> None:
        self.core = core
        self._authorize = authorize
        self._max_receive = max_receive_message_length
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        unary = grpclib.const.Cardinality.UNARY_UNARY
        return {
            SETUP_PATH: grpclib.const.Handler(self._rpc_setup, unary, SetupRequest, SetupResponse),
            CALL_PATH: grpclib.const.Handler(self._rpc_call, unary, CallRequest, CallResponse),
            REST_PATH: grpclib.const.Handler(self._rpc_rest, unary, Empty, RestResponse),
        }

    @property
    def in_flight(self) -> int:
        """Requests received and not yet answered (what a drain waits for)."""
        return self._in_flight

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()

    async def _serve(self, stream: grpclib.server.Stream[Any, Any], request_type: type[Any],
                     handle: Callable[[Any, float | None], Any]) -> None:
        if self._authorize is not None:
            # Values of non "-bin" keys are str in grpclib's metadata MultiDict.
            refusal = self._authorize(cast(Mapping[str, str], stream.metadata or {}),
                                      lambda: peer_certificate(stream))
            if refusal is not None:
                raise GRPCError(GrpcStatus.UNAUTHENTICATED, refusal)
        if self.draining:
            raise GRPCError(GrpcStatus.UNAVAILABLE,
                            "the model host is shutting down; retry on another host")
        self._in_flight += 1
        self._idle.clear()
        try:
            request = await _recv_bounded(stream, request_type, self._max_receive)
            expires_at = None
            if stream.deadline is not None:
                expires_at = time.monotonic() + stream.deadline.time_remaining()
            try:
                response = await handle(request, expires_at)
            except DeadlinePassed as exc:
                raise GRPCError(GrpcStatus.DEADLINE_EXCEEDED, str(exc)) from None
            except ModelBusy as exc:
                # As the deployed host answers a call that finds its model busy: clients count
                # it as a timeout at once, instead of waiting their deadline behind an
                # abandoned call.
                raise GRPCError(GrpcStatus.RESOURCE_EXHAUSTED, str(exc)) from None
            await stream.send_message(response)
            # Trailers are written here, not after we return, so a drain that waits for
            # in-flight calls knows the whole answer is on its way to the client.
            await stream.send_trailing_metadata()
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _rpc_setup(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        await self._serve(stream, SetupRequest, self._setup)

    async def _rpc_call(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        await self._serve(stream, CallRequest, self._call)

    async def _rpc_rest(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        await self._serve(stream, Empty, self._rest)

    async def _setup(self, request: Any, expires_at: float | None) -> SetupResponse:
        answer = await self.core.setup(
            request.className, (request.instanceArguments, request.instanceKwArguments),
            expires_at)
        return SetupResponse(status=Status(code=answer.code.value, message=answer.message))

    async def _call(self, request: Any, expires_at: float | None) -> bytes:
        answer = await self.core.call(
            request.methodName, (request.methodArguments, request.methodKwArguments), expires_at)
        return encode_call_response(answer)

    async def _rest(self, request: Any, expires_at: float | None) -> RestResponse:
        answer = self.core.rest()
        return RestResponse(status=Status(code=answer.code.value, message=answer.message))


def encode_call_response(answer: Answer) -> bytes:
    """The CallResponse for `answer`, encoded."""
    # protobuf's C encoder: betterproto2's took ~60 µs of a no-op call's ~640 (py-spy).
    response = _CallResponse(status=_Status(code=answer.code.value, message=answer.message))
    if answer.variant is not None:
        type_, response.methodResponse.value = answer.variant
        response.methodResponse.type = cast(Any, type_)  # an int, as protobuf's enums are
    return response.SerializeToString()  # type: ignore[no-any-return]


async def _recv_bounded(
    stream: grpclib.server.Stream[Any, Any], message_type: type[Any], limit: int
) -> Any:
    """Receive one request, refusing it from its length prefix when it is over `limit`.

    grpclib's own `recv_message` buffers whatever length the prefix claims before decoding and has
    no size limit, so the 5-byte gRPC message prefix is read here from the HTTP/2 stream.
    """
    h2_stream = raw_stream(stream)
    prefix = await h2_stream.recv_data(5)
    if len(prefix) < 5:
        raise GRPCError(GrpcStatus.INVALID_ARGUMENT,
                        "the request carries no complete gRPC message")
    compressed, length = struct.unpack(">?I", prefix)
    if compressed:
        raise GRPCError(GrpcStatus.UNIMPLEMENTED,
                        "compressed messages are not supported; send them uncompressed")
    if length > limit:
        raise GRPCError(GrpcStatus.RESOURCE_EXHAUSTED,
                        f"the request is {length} bytes, over this host's "
                        f"--max-receive-message-length of {limit} bytes")
    data = await h2_stream.recv_data(length)
    if len(data) != length:
        raise GRPCError(GrpcStatus.INVALID_ARGUMENT,
                        f"the request was cut short: {len(data)} of {length} bytes arrived")
    # protobuf's C parser: linear in the request's size whatever its bytes (betterproto2 took
    # 60 s of CPU on a 1 MiB argument of zero bytes; this rejects it in microseconds).
    try:
        return message_type.FromString(data)
    except Exception as exc:  # DecodeError, and anything a hostile message provokes
        raise GRPCError(GrpcStatus.INVALID_ARGUMENT,
                        f"the request is not a valid {message_type.__name__}: {exc}") from None
