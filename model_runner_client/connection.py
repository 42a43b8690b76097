"""`ModelConnection`: one model's transport, and the Setup and health calls made on it;
`Connector`: how the client connects to each model (its security, limits and transport).

Requests go out as ready-encoded bytes and answers come back as bytes, so a fan-out encodes its
request once and the caller decides how to read the answer. Setup and health probes end as an
`Outcome`, classified in outcomes.py like every model call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from grpclib.health.v1.health_pb2 import HealthCheckRequest

from model_runner.wire import CALL_PATH, SETUP_PATH

from .answers import read_health_answer, read_setup_answer
from .models import ModelEndpoint
from .outcomes import Outcome
from .transport_security import Security
from .transports import ResponseTooLarge, TransportName, make_transport, unary
from .transports.call import Call, frame
from .transports.errors import outcome_of_error, setup_outcome_of_error

__all__ = ["HEALTH_CHECK_PATH", "Connector", "ModelConnection", "ResponseTooLarge"]

HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"


class ModelConnection:
    def __init__(self, endpoint: ModelEndpoint, transport_name: TransportName,
                 security: Security, max_receive_message_length: int) -> None:
        self.endpoint = endpoint
        self.transport = make_transport(transport_name, endpoint,
                                        security.for_endpoint(endpoint),
                                        max_receive_message_length)

    async def setup(self, payload: bytes, timeout: float) -> Outcome:
        """Run Setup (`payload` is the encoded SetupRequest)."""
        try:
            raw = await unary(self.transport, SETUP_PATH, frame(payload),
                              time.monotonic() + timeout)
        except Exception as exc:  # every way it can fail is classified in transports/errors.py
            return setup_outcome_of_error(self.endpoint, exc)
        return read_setup_answer(raw)

    async def health(self, service: str, timeout: float) -> Outcome:
        """grpc.health.v1 Check of `service`: SUCCESS when the host serves it."""
        try:
            raw = await unary(self.transport, HEALTH_CHECK_PATH,
                              frame(HealthCheckRequest(service=service).SerializeToString()),
                              time.monotonic() + timeout,
                              # Hosts vouch for themselves on the model service; health is
                              # open and model-runner-client never checked it either.
                              check_peer=False)
        except Exception as exc:
            return outcome_of_error(self.endpoint, exc, 0)
        return read_health_answer(raw)

    # A model call, in the transport's three steps (transports/__init__.py), for the fan-out.

    def start_call(self, message: bytes, deadline: float) -> Call:
        """Send a Call (`message`: the gRPC-framed CallRequest) before `deadline`
        (time.monotonic() seconds); returns it at once."""
        return self.transport.start(CALL_PATH, message, deadline)

    def finish_call(self, call: Call) -> bytes:
        """The answer of a call whose future is done; raises what the call ended with."""
        return self.transport.finish(call)

    def abandon_call(self, call: Call) -> None:
        """Give up a call: the host is told to stop; its sending task, if any, is cancelled."""
        self.transport.abandon(call)

    def reconnect(self) -> None:
        """Drop the connection; the next call opens a fresh one."""
        self.transport.reconnect()

    def close(self) -> None:
        self.transport.close()


@dataclass(frozen=True)
class Connector:
    """Opens a `ModelConnection` to each model the registry holds."""

    #: Which transport to open: "ngh2" or "grpclib".
    transport_name: TransportName
    security: Security
    max_receive_message_length: int

    def connect(self, endpoint: ModelEndpoint) -> ModelConnection:
        return ModelConnection(endpoint, self.transport_name, self.security,
                               self.max_receive_message_length)
