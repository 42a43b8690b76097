"""The private grpclib attributes the host relies on, in one place (grpclib and h2 are pinned;
tests/test_grpclib_internals.py fails when an upgrade breaks one). The client's live in
model_runner_client/transports/grpclib.py."""

from __future__ import annotations

from typing import Any

import grpclib.server

__all__ = ["bound_port", "raw_stream"]


def raw_stream(stream: grpclib.server.Stream[Any, Any]) -> Any:
    """The HTTP/2 stream under a server stream (grpclib.protocol.Stream, with `recv_data`):
    grpclib's own `recv_message` buffers whatever length a request's prefix claims, so the host
    reads the 5-byte prefix itself."""
    return stream._stream


def bound_port(server: grpclib.server.Server) -> int | None:
    """The port a server started on port 0 listens on (grpclib keeps its asyncio server
    private)."""
    listener: Any = server._server
    sockets = listener.sockets if listener is not None else ()
    return int(sockets[0].getsockname()[1]) if sockets else None
