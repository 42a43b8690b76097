"""Transport security shared by both halves: TLS contexts for HTTP/2, and the bearer token.

What it protects: the connection between coordinator and model host (TLS), who may call the
model (mutual TLS, a shared token, or the deployed gateway tokens), and which host belongs to
which cruncher (the wallet delegation served in response headers; see wire/auth.py). What it
does not: the model's code runs with the host's rights, so hosts belong in containers.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .wire.auth import AuthError, Delegation, GatewayVerifier, cert_spki
from .wire.tls import client_tls_context, server_tls_context

__all__ = ["CallGuard", "DelegationHeaders", "bearer_matches", "client_tls_context",
           "server_tls_context"]

logger = logging.getLogger(__name__)


def bearer_matches(header: str | bytes | None, token: str) -> bool:
    """Whether an `authorization` header carries `Bearer <token>` (in constant time)."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                              token.encode())


class CallGuard:
    """Who may call the model: a bearer token and/or gateway tokens (health stays open)."""

    def __init__(self, auth_token: str | None = None,
                 gateway: GatewayVerifier | None = None) -> None:
        self.auth_token = auth_token
        self.gateway = gateway

    def __call__(self, metadata: Mapping[str, str]) -> str | None:
        """Why this call's metadata is refused, or None to accept it."""
        if self.auth_token is not None and not bearer_matches(metadata.get("authorization"),
                                                              self.auth_token):
            return ("missing or wrong token: send metadata 'authorization: Bearer <token>' "
                    "with this host's AUTH_TOKEN")
        if self.gateway is not None:
            try:
                self.gateway.check(metadata)
            except AuthError as exc:
                logger.warning("refused a call: %s", exc)
                return str(exc)
        return None


class DelegationHeaders:
    """Adds the cruncher's wallet delegation to every response's headers (grpclib's
    SendInitialMetadata event). The file is read again when it changes, so a renewed delegation
    needs no restart; a renewal that does not verify is logged and the previous one kept."""

    #: How often, at most, the file's modification time is looked at.
    RECHECK_SECONDS = 1.0

    def __init__(self, path: Path, tls_cert: Path) -> None:
        self.path = path
        self._tls_spki = cert_spki(tls_cert.read_bytes())
        self._headers = self._load()
        self._mtime = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return self._mtime

    def _load(self) -> dict[str, str]:
        delegation = Delegation.load(self.path)
        if delegation.cert_pub() != self._tls_spki:
            raise AuthError(f"the delegation in {self.path} vouches for another TLS key than "
                            "this host's --tls-cert; sign one for this certificate's key")
        expires_at = delegation.payload().get("expires_at")
        if isinstance(expires_at, int | float) and expires_at <= time.time():
            logger.warning("the delegation in %s has expired: coordinators will refuse this "
                           "host until the file is renewed", self.path)
        return delegation.headers()

    async def __call__(self, event: Any) -> None:
        now = time.monotonic()
        if now - self._checked >= self.RECHECK_SECONDS:
            self._checked = now
            mtime = self._stat()
            if mtime != self._mtime:
                self._mtime = mtime
                try:
                    self._headers = self._load()
                    logger.info("renewed the delegation from %s", self.path)
                except AuthError as exc:
                    logger.error("kept the previous delegation: %s", exc)
        for name, value in self._headers.items():
            event.metadata[name] = value
