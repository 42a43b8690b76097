"""Unary gRPC calls over grpclib (pure-Python HTTP/2: h2, hpack, hyperframe).

Selectable with `transport="grpclib"` while ngh2 is alpha. grpclib's private internals used by
the client live here, each with its reason; tests/test_grpclib_internals.py fails when an
upgrade of grpclib or h2 breaks one of them (both are pinned).
"""

from __future__ import annotations

import struct
import time
from asyncio import BaseTransport
from collections.abc import Mapping
from typing import Any, cast

from grpclib.client import Channel, Handler, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError, ProtocolError
from grpclib.metadata import Deadline
from grpclib.protocol import H2Protocol

from model_runner.wire.codec import PassthroughCodec

from ..models import ModelEndpoint
from ..transport_security import ConnectionSecurity, peer_spki
from . import ResponseTooLarge

__all__ = ["CLOSED_STREAMS_KEPT", "GrpclibTransport"]

_CODEC = PassthroughCodec()

#: Closed-stream records each HTTP/2 connection keeps. h2 keeps 65,536 by default, ~170 bytes
#: each: ~11 MB per model once a connection has made that many calls (a day of ticks), which is
#: gigabytes for a thousand models. Late frames can only concern the last few unary calls.
CLOSED_STREAMS_KEPT = 128


class _BoundedProtocol(H2Protocol):
    def connection_made(self, transport: BaseTransport) -> None:
        super().connection_made(transport)
        # h2 offers no setting for this; its record of closed streams is a size-limited dict.
        closed: Any = self.connection._connection._closed_streams
        closed._size_limit = CLOSED_STREAMS_KEPT


class _Channel(Channel):
    """A grpclib Channel whose HTTP/2 connection keeps a bounded record of closed streams."""

    def _protocol_factory(self) -> H2Protocol:
        return _BoundedProtocol(Handler(), self._config, self._h2_config)


class GrpclibTransport:
    """The unary calls of one model, over one grpclib Channel (one HTTP/2 connection)."""

    def __init__(self, endpoint: ModelEndpoint, security: ConnectionSecurity,
                 max_receive_message_length: int) -> None:
        self.endpoint = endpoint
        self.security = security
        self.limit = max_receive_message_length
        self._channel = self._new_channel()

    def _new_channel(self) -> Channel:
        security = self.security
        config = None
        if security.server_name is not None:
            config = Configuration(ssl_target_name_override=security.server_name)
        return _Channel(self.endpoint.ip, self.endpoint.port, codec=_CODEC, ssl=security.ssl,
                        config=config)

    async def unary(self, path: str, payload: bytes, deadline: float | None, *,
                    check_peer: bool = True) -> bytes:
        timeout = None if deadline is None else Deadline.from_timeout(deadline - time.monotonic())
        stream = self._channel.request(path, Cardinality.UNARY_UNARY, bytes, bytes,
                                       deadline=timeout, metadata=self.security.metadata())
        try:
            return await self._exchange(stream, payload, check_peer)
        except AttributeError as exc:
            # grpclib's Connection.close() deletes its `_transport`: a call that opens a stream
            # on a connection closed meanwhile (a reconnect, a redeploy) fails so.
            if "_transport" not in str(exc):
                raise
            raise ConnectionResetError("the connection closed under the call") from exc

    async def _exchange(self, stream: Stream[bytes, bytes], payload: bytes,
                        check_peer: bool) -> bytes:
        async with stream:
            await stream.send_message(payload, end=True)
            if check_peer and self.security.check_peer is not None:
                await stream.recv_initial_metadata()
                headers = cast(Mapping[str, str], stream.initial_metadata or {})
                # grpclib's Peer offers the certificate only as a dict without its key; its
                # transport has the DER form.
                self.security.check_peer(headers, peer_spki(getattr(stream.peer, "_transport",
                                                                    None)))
            reply = await _recv_limited(stream, self.limit)
        if reply is None:
            raise GRPCError(GrpcStatus.UNKNOWN, "the model host answered without a message")
        return reply

    def start(self, path: str, payload: bytes, deadline: float | None) -> None:
        """grpclib calls are coroutines: the fan-out runs them as tasks (`unary`)."""
        return None

    def finish(self, started: Any) -> bytes:
        raise NotImplementedError("grpclib starts no call without a task")

    def abandon(self, started: Any) -> None:
        raise NotImplementedError("grpclib starts no call without a task")

    def reconnect(self) -> None:
        """Drop the HTTP/2 connection; the next request opens a fresh one."""
        old, self._channel = self._channel, self._new_channel()
        old.close()

    def close(self) -> None:
        self._channel.close()


async def _recv_limited(stream: Stream[bytes, bytes], limit: int) -> bytes | None:
    """grpclib's `recv_message`, but refusing an answer from its length prefix when it is over
    `limit`: grpclib has no size limit and would buffer whatever the prefix claims. Uses the
    client stream's internals (grpclib is pinned to 0.4.x)."""
    if not stream._recv_initial_metadata_done:
        await stream.recv_initial_metadata()
    with stream._wrapper:  # grpclib's deadline handling for this stream
        prefix = await stream._stream.recv_data(5)
        if not prefix:
            return None
        if len(prefix) < 5:
            raise ProtocolError("the answer was cut short inside its length prefix")
        compressed, length = struct.unpack(">?I", prefix)
        if compressed:
            raise ProtocolError("the answer is compressed, which is not supported")
        if length > limit:
            raise ResponseTooLarge(f"the answer is {length} bytes, over the client's "
                                   f"max_receive_message_length of {limit} bytes")
        data = await stream._stream.recv_data(length)
        if len(data) != length:
            raise ProtocolError(f"the answer was cut short: {len(data)} of {length} bytes")
        return data
