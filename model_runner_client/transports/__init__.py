"""How the client sends a unary gRPC call to one model: the transports and what they share.

Every transport offers the same three steps (`Transport`): `start(path, message, deadline,
check_peer=)` sends a call (the gRPC-framed request: `call.frame`) and returns it at once (a
`call.Call`), its `future` settled by the transport's protocol when the answer is complete;
`finish(call)` reads a settled call's answer; `abandon(call)` gives up on it (the host is told
to stop). `unary` below is those steps for one call. A call ends in one of these ways, and in
no other: each transport maps its own library's exceptions at its boundary, and
`errors.outcome_of_error` turns each into an Outcome:

- the answer's bytes;
- TimeoutError: the deadline (on the monotonic clock) passed;
- grpclib.exceptions.GRPCError: the host answered a gRPC status other than OK;
- OSError (ConnectionError, ssl.SSLError, ...): the host could not be reached, or dropped the
  call (reset stream, GOAWAY, lost connection, broken HTTP/2);
- ResponseTooLarge: the answer's length prefix is over the limit (it is not read);
- UntrustedHost: the host failed the identity check of the security mode.

`ngh2` (libnghttp2) is the default; `grpclib` (pure-Python h2) stays selectable until ngh2, an
alpha library, is stable. What both share (the call's state, headers, the frame budget, the
wording of HTTP/2 events) is in `call.py`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Literal, Protocol

from ..models import ModelEndpoint
from ..transport_security import ConnectionSecurity

if TYPE_CHECKING:  # call.py imports ResponseTooLarge from here
    from .call import Call

__all__ = ["TRANSPORTS", "ResponseTooLarge", "Transport", "TransportName",
           "make_transport", "unary"]

TransportName = Literal["ngh2", "grpclib"]
TRANSPORTS: tuple[TransportName, ...] = ("ngh2", "grpclib")


class ResponseTooLarge(Exception):
    """The answer's length prefix is over the client's limit; it was not read."""


class Transport(Protocol):
    def start(self, path: str, message: bytes, deadline: float | None, *,
              check_peer: bool = True) -> Call:
        """Send a call; returns it at once. Raises only what sending at once raised (the
        connection is gone, the deadline passed); later errors settle the call."""

    def finish(self, call: Call) -> bytes:
        """The answer of a call whose future is done; raises what the call ended with."""

    def abandon(self, call: Call) -> None:
        """Give up a call (the deadline passed): the host is told to stop, and its sending
        task, if any, is cancelled (the caller awaits it)."""

    def reconnect(self) -> None:
        """The next call opens a fresh connection; calls on the current one finish first."""

    def close(self) -> None:
        """Close the connection; calls on it fail."""


async def unary(transport: Transport, path: str, message: bytes, deadline: float | None, *,
                check_peer: bool = True) -> bytes:
    """One call, awaited: its answer, or what it ended with (TimeoutError at `deadline`)."""
    call = transport.start(path, message, deadline, check_peer=check_peer)
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
