"""TLS contexts for gRPC over HTTP/2 (ALPN h2), for both halves."""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["client_tls_context", "server_tls_context"]


def _accept_what_grpcio_accepts(context: ssl.SSLContext) -> ssl.SSLContext:
    """Python 3.13's `create_default_context` adds VERIFY_X509_STRICT, which refuses
    certificates without an Authority Key Identifier (among others). grpcio's TLS does not, and
    the deployed system's certificates were only ever checked by grpcio: on 3.13, with the
    flag, a host refused the test PKI's coordinator certificate that 3.11 and grpcio accept
    (tests/test_as_deployed.py). The chain is still verified."""
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


def server_tls_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The host's TLS: its certificate and key; with `client_ca`, clients must present a
    certificate signed by it (mutual TLS)."""
    context = _accept_what_grpcio_accepts(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
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
    context = _accept_what_grpcio_accepts(ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca is not None else None))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key is not None else None)
    return context
