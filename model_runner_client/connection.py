"""`ModelConnection`: one model's transport, and the Setup and health calls made on it.

Requests go out as ready-encoded bytes and answers come back as bytes, so a fan-out encodes its
request once and the caller decides how to read the answer.
"""

from __future__ import annotations

import time

from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from model_runner.wire import SETUP_PATH, SetupResponse

from .models import ModelEndpoint
from .transport_security import ConnectionSecurity
from .transports import ResponseTooLarge, TransportName, make_transport, unary
from .transports.call import frame

__all__ = ["HEALTH_CHECK_PATH", "ModelConnection", "ResponseTooLarge"]

HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"


class ModelConnection:
    def __init__(self, endpoint: ModelEndpoint, *, security: ConnectionSecurity,
                 max_receive_message_length: int, transport: TransportName = "ngh2") -> None:
        self.endpoint = endpoint
        self.transport = make_transport(transport, endpoint, security,
                                        max_receive_message_length)

    async def setup(self, payload: bytes, timeout: float) -> tuple[str, str]:
        """Run Setup; returns (Status.code, Status.message)."""
        raw = await unary(self.transport, SETUP_PATH, frame(payload),
                          time.monotonic() + timeout)
        status = SetupResponse.parse(raw).status
        return (status.code, status.message) if status is not None else ("", "")

    async def health(self, service: str, timeout: float) -> int:
        """grpc.health.v1 Check: a HealthCheckResponse.ServingStatus value."""
        raw = await unary(self.transport, HEALTH_CHECK_PATH,
                          frame(HealthCheckRequest(service=service).SerializeToString()),
                          time.monotonic() + timeout,
                          # Hosts vouch for themselves on the model service; health is open
                          # and model-runner-client never checked it either.
                          check_peer=False)
        return int(HealthCheckResponse.FromString(raw).status)

    def reconnect(self) -> None:
        """Drop the connection; the next call opens a fresh one."""
        self.transport.reconnect()

    def close(self) -> None:
        self.transport.close()
