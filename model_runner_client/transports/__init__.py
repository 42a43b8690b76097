"""How the client sends a unary gRPC call to one model: the transports and what they share.

Every transport offers the same three steps: `start(path, message, deadline, check_peer=)`
sends a call (the gRPC-framed request: `call.frame`) and returns it at once, its `future` settled
by the transport's protocol when the answer is complete; `finish(call)` reads a settled call's
answer; `abandon(call)` gives up on it (the host is told to stop). `unary` below is those steps
for one call. A call ends in one of these ways, which the fan-out turns into outcomes
(`fanout.py`, `_outcome_of_error`):

- the answer's bytes;
- TimeoutError: the deadline (time.monotonic()) passed;
- grpclib.exceptions.GRPCError: the host answered a gRPC status other than OK;
- OSError (ConnectionError, ssl.SSLError, ...): the host could not be reached, or dropped the
  call (reset stream, GOAWAY, lost connection);
- ResponseTooLarge: the answer's length prefix is over the limit (it is not read);
- UntrustedHost: the host failed the identity check of the security mode.

`ngh2` (libnghttp2) is the default; `grpclib` (pure-Python h2) stays selectable until ngh2, an
alpha library, is stable. What both share is in `call.py`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal, Protocol

from ..models import ModelEndpoint
from ..transport_security import ConnectionSecurity

__all__ = ["TRANSPORTS", "ResponseTooLarge", "Started", "Transport", "TransportName",
           "make_transport", "unary"]

TransportName = Literal["ngh2", "grpclib"]
TRANSPORTS: tuple[TransportName, ...] = ("ngh2", "grpclib")


class ResponseTooLarge(Exception):
    """The answer's length prefix is over the client's limit; it was not read."""


class Started(Protocol):
    """A call in flight: `future` is done when its answer is in (or it failed)."""

    future: asyncio.Future[Any]
    #: time.monotonic_ns() when the answer was complete (or the call failed).
    arrived: int
    #: The task sending the request when sending had to wait (connecting, flow control).
    sender: asyncio.Task[None] | None


class Transport(Protocol):
    def start(self, path: str, message: bytes, deadline: float | None, *,
              check_peer: bool = True) -> Any:
        """Send a call; returns it at once (a `Started`). Raises only what sending at once
        raised (the connection is gone, the deadline passed); later errors settle the call."""

    def finish(self, started: Any) -> bytes:
        """The answer of a call whose future is done; raises what the call ended with."""

    def abandon(self, started: Any) -> None:
        """Give up a call (the deadline passed): the host is told to stop, and its sending
        task, if any, is cancelled (the caller awaits it)."""

    def reconnect(self) -> None: ...
    def close(self) -> None: ...


async def unary(transport: Transport, path: str, message: bytes, deadline: float | None, *,
                check_peer: bool = True) -> bytes:
    """One call, awaited: its answer, or what it ended with (TimeoutError at `deadline`)."""
    call: Started = transport.start(path, message, deadline, check_peer=check_peer)
    try:
        if deadline is None:
            await asyncio.shield(call.future)
        else:
            async with asyncio.timeout(deadline - time.monotonic()):
                await asyncio.shield(call.future)
    except BaseException:
        transport.abandon(call)
        if call.sender is not None:
            await asyncio.gather(call.sender, return_exceptions=True)
        raise
    return transport.finish(call)


def make_transport(name: TransportName, endpoint: ModelEndpoint, security: ConnectionSecurity,
                   max_receive_message_length: int) -> Transport:
    if name == "ngh2":
        from .ngh2 import Ngh2Transport
        return Ngh2Transport(endpoint, security, max_receive_message_length)
    if name == "grpclib":
        from .grpclib import GrpclibTransport
        return GrpclibTransport(endpoint, security, max_receive_message_length)
    raise ValueError(f"unknown transport {name!r}: use one of {', '.join(TRANSPORTS)}")
