"""`ModelConnection`: one grpclib Channel (one HTTP/2 connection) to one model host.

Requests go out as ready-encoded bytes and answers come back as bytes (PassthroughCodec), so a
fan-out encodes its request once and the caller decides how to read the answer.
"""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Mapping

from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.metadata import Deadline

from model_runner.wire import CALL_PATH, SETUP_PATH, SetupResponse
from model_runner.wire.codec import PassthroughCodec

from .models import ModelEndpoint

__all__ = ["ModelConnection"]

HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
_CODEC = PassthroughCodec()


class ModelConnection:
    def __init__(
        self,
        endpoint: ModelEndpoint,
        *,
        ssl: _ssl.SSLContext | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._ssl = ssl
        self._metadata = dict(metadata or {})
        self._channel = self._new_channel()

    def _new_channel(self) -> Channel:
        return Channel(self.endpoint.ip, self.endpoint.port, codec=_CODEC, ssl=self._ssl)

    async def unary(self, path: str, payload: bytes, deadline: Deadline | None) -> bytes:
        """One unary RPC; raises TimeoutError, GRPCError, OSError or StreamTerminatedError."""
        stream = self._channel.request(path, Cardinality.UNARY_UNARY, bytes, bytes,
                                       deadline=deadline, metadata=self._metadata or None)
        async with stream:
            await stream.send_message(payload, end=True)
            reply = await stream.recv_message()
        if reply is None:
            raise GRPCError(GrpcStatus.UNKNOWN, "the model host answered without a message")
        return reply

    async def call(self, payload: bytes, deadline: Deadline | None) -> bytes:
        return await self.unary(CALL_PATH, payload, deadline)

    async def setup(self, payload: bytes, timeout: float) -> tuple[str, str]:
        """Run Setup; returns (Status.code, Status.message)."""
        raw = await self.unary(SETUP_PATH, payload, Deadline.from_timeout(timeout))
        status = SetupResponse.parse(raw).status
        return (status.code, status.message) if status is not None else ("", "")

    async def health(self, service: str, timeout: float) -> int:
        """grpc.health.v1 Check: a HealthCheckResponse.ServingStatus value."""
        raw = await self.unary(HEALTH_CHECK_PATH,
                               HealthCheckRequest(service=service).SerializeToString(),
                               Deadline.from_timeout(timeout))
        return int(HealthCheckResponse.FromString(raw).status)

    def reconnect(self) -> None:
        """Drop the HTTP/2 connection; the next request opens a fresh one."""
        old, self._channel = self._channel, self._new_channel()
        old.close()

    def close(self) -> None:
        self._channel.close()
