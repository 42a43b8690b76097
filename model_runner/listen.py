"""Where the host listens: the wildcard `[::]` served over IPv4 and IPv6 alike, as grpcio does.

asyncio binds `[::]` with IPV6_V6ONLY set (asyncio/base_events.py, `create_server`), so a host
started on the deployed default `[::]:50051` refused every IPv4 client, and the Model
Orchestrator reaches containers by their IPv4 address. The host therefore binds `[::]` itself,
with the option cleared, and hands the socket to the server. `0.0.0.0` stays IPv4-only, and
any other address is bound as given.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable

__all__ = ["WILDCARD_V6", "dual_stack_socket", "families"]

logger = logging.getLogger(__name__)

WILDCARD_V6 = "::"


def dual_stack_socket(port: int, backlog: int) -> socket.socket | None:
    """A listening socket on `[::]:port` that also takes IPv4 clients (as v4-mapped
    addresses), or None where the OS cannot: then the caller binds as usual."""
    if not socket.has_dualstack_ipv6():
        logger.warning("this system cannot serve IPv4 and IPv6 on one socket: [::] listens "
                       "as the OS binds it (bind 0.0.0.0 for IPv4 only)")
        return None
    sock = socket.create_server((WILDCARD_V6, port), family=socket.AF_INET6, backlog=backlog,
                                dualstack_ipv6=True)
    sock.setblocking(False)
    return sock


def families(sockets: Iterable[socket.socket]) -> str:
    """Which address families the listening sockets take: 'IPv4', 'IPv6' or 'IPv4 and IPv6'."""
    found: set[str] = set()
    for sock in sockets:
        if sock.family == socket.AF_INET:
            found.add("IPv4")
        elif sock.family == socket.AF_INET6:
            found.add("IPv6")
            if not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
                found.add("IPv4")
        elif sock.family == socket.AF_UNIX:
            found.add("Unix socket")
    return " and ".join(sorted(found)) or "nothing"
