"""Transport security shared by both halves: TLS contexts for HTTP/2, and the bearer token.

What it protects: the connection between coordinator and model host (TLS), who may call the
model (mutual TLS and/or a shared token). What it does not: the model's code runs with the
host's rights, so hosts belong in containers.
"""

from __future__ import annotations

import hmac
import ssl
from pathlib import Path

__all__ = ["bearer_matches", "client_tls_context", "server_tls_context"]


def server_tls_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The host's TLS: its certificate and key; with `client_ca`, clients must present a
    certificate signed by it (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(["h2"])  # gRPC is HTTP/2
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(client_ca))
    return context


def client_tls_context(ca: Path | None = None, cert: Path | None = None,
                       key: Path | None = None) -> ssl.SSLContext:
    """The coordinator's TLS: trust `ca` (default: the system's), and present `cert`/`key` for
    mutual TLS."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(ca) if ca is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key is not None else None)
    return context


def bearer_matches(header: str | bytes | None, token: str) -> bool:
    """Whether an `authorization` header carries `Bearer <token>` (in constant time)."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                              token.encode())
