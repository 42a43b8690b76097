"""The private grpclib attributes the host relies on, in one place (grpclib and h2 are pinned;
tests/test_grpclib_internals.py fails when an upgrade breaks one). The client's live in
model_runner_client/transports/grpclib.py."""

from __future__ import annotations

import socket
from typing import Any

import grpclib.server

__all__ = ["listening_sockets", "peer_certificate", "raw_stream"]


def raw_stream(stream: grpclib.server.Stream[Any, Any]) -> Any:
    """The HTTP/2 stream under a server stream (grpclib.protocol.Stream, with `recv_data`):
    grpclib's own `recv_message` buffers whatever length a request's prefix claims, so the host
    reads the 5-byte prefix itself."""
    return stream._stream


def listening_sockets(server: grpclib.server.Server) -> list[socket.socket]:
    """The sockets a started server listens on: the port it got on port 0, and the address
    families it takes (grpclib keeps its asyncio server private)."""
    listener: Any = server._server
    return list(listener.sockets) if listener is not None else []


def peer_certificate(stream: grpclib.server.Stream[Any, Any]) -> bytes | None:
    """The DER certificate the client presented over TLS, or None (grpclib's `Peer.cert()`
    gives only the parsed fields of a verified certificate, not its key)."""
    ssl_object = stream.peer._transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return bytes(der) if der else None
