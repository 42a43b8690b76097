"""How the client sends a unary gRPC call to one model: the transports and what they share.

Every transport offers `unary(path, payload, deadline, *, check_peer=True) -> bytes`,
`reconnect()` and `close()`; one that can open a call without awaiting also offers `start`,
`finish` and `abandon` (the fan-out's fast path). A call ends in one of these ways, which the
fan-out turns into outcomes (`fanout.py`, `_outcome_of_error`):

- the answer's bytes;
- TimeoutError: the deadline (time.monotonic()) passed;
- grpclib.exceptions.GRPCError: the host answered a gRPC status other than OK;
- OSError (ConnectionError, ssl.SSLError, ...): the host could not be reached, or dropped the
  call (reset stream, GOAWAY, lost connection);
- ResponseTooLarge: the answer's length prefix is over the limit (it is not read);
- UntrustedHost: the host failed the identity check of the security mode.

`ngh2` (libnghttp2) is the default; `grpclib` (pure-Python h2) stays selectable until ngh2, an
alpha library, is stable.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, Protocol

from ..models import ModelEndpoint
from ..transport_security import ConnectionSecurity

__all__ = ["TRANSPORTS", "ResponseTooLarge", "Started", "Transport", "TransportName",
           "make_transport"]

TransportName = Literal["ngh2", "grpclib"]
TRANSPORTS: tuple[TransportName, ...] = ("ngh2", "grpclib")


class ResponseTooLarge(Exception):
    """The answer's length prefix is over the client's limit; it was not read."""


class Started(Protocol):
    """A call a transport started at once: `future` is done when its answer is in."""

    future: asyncio.Future[Any]
    #: time.perf_counter_ns() when the answer was complete (or the call failed).
    arrived: int


class Transport(Protocol):
    async def unary(self, path: str, payload: bytes, deadline: float | None, *,
                    check_peer: bool = True) -> bytes: ...

    def start(self, path: str, payload: bytes, deadline: float | None) -> Started | None:
        """Start the call without awaiting (None: not possible now, use `unary`)."""

    def finish(self, started: Any) -> bytes:
        """The answer of a started call whose future is done; raises as `unary` does."""

    def abandon(self, started: Any) -> None:
        """Give up a started call (the deadline passed): the host is told to stop."""

    def reconnect(self) -> None: ...
    def close(self) -> None: ...


def make_transport(name: TransportName, endpoint: ModelEndpoint, security: ConnectionSecurity,
                   max_receive_message_length: int) -> Transport:
    if name == "ngh2":
        from .ngh2 import Ngh2Transport
        return Ngh2Transport(endpoint, security, max_receive_message_length)
    if name == "grpclib":
        from .grpclib import GrpclibTransport
        return GrpclibTransport(endpoint, security, max_receive_message_length)
    raise ValueError(f"unknown transport {name!r}: use one of {', '.join(TRANSPORTS)}")
