"""Transport security shared by both halves: TLS contexts for HTTP/2, and the bearer token.

What it protects: the connection between coordinator and model host (TLS), who may call the
model (mutual TLS, a shared token, or the deployed gateway tokens), and which host belongs to
which cruncher (the wallet delegation served in response headers; see wire/auth.py). What it
does not: the model's code runs with the host's rights, so hosts belong in containers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .wire.auth import AuthError, Delegation, GatewayVerifier, cert_spki, verify_delegation
from .wire.tls import client_tls_context, server_tls_context

__all__ = ["CallGuard", "DelegationClaims", "DelegationHeaders", "bearer_matches",
           "client_tls_context", "server_tls_context"]

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
    """Who may call the model: a bearer token, gateway tokens and/or the coordinator's client
    certificate (the deployed secure host's COORDINATOR_CERT_HASH check). Health stays open."""

    #: Client certificates whose key hash is remembered (a coordinator presents one, or two
    #: while it rotates); past this many the memory starts again.
    KNOWN_CERTIFICATES = 64

    def __init__(self, auth_token: str | None = None,
                 gateway: GatewayVerifier | None = None,
                 coordinator_cert_hashes: Collection[str] = ()) -> None:
        self.auth_token = auth_token
        self.gateway = gateway
        #: SHA-256 (hex) of the DER SubjectPublicKeyInfo of the coordinators' client certificates.
        self.coordinator_cert_hashes = frozenset(h.strip().lower()
                                                 for h in coordinator_cert_hashes)
        self._key_hashes: dict[bytes, str] = {}  # DER certificate -> SHA-256 of its key
        self._refused_logged: set[str] = set()

    def __call__(self, metadata: Mapping[str, str],
                 peer_certificate: Callable[[], bytes | None]) -> str | None:
        """Why this call is refused, or None to accept it. `peer_certificate` gives the DER
        certificate the client presented over TLS (None: none)."""
        if self.coordinator_cert_hashes:
            refusal = self._check_certificate(peer_certificate())
            if refusal is not None:
                return refusal
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

    def _check_certificate(self, der: bytes | None) -> str | None:
        if der is None:
            return ("no client certificate: this host serves coordinators over mutual TLS; "
                    "connect with the coordinator's certificate")
        key_hash = self._key_hashes.get(der)
        if key_hash is None:
            if len(self._key_hashes) >= self.KNOWN_CERTIFICATES:
                self._key_hashes.clear()
            key_hash = self._key_hashes[der] = hashlib.sha256(cert_spki(der)).hexdigest()
        if key_hash in self.coordinator_cert_hashes:
            return None
        if key_hash not in self._refused_logged and len(self._refused_logged) < 64:
            self._refused_logged.add(key_hash)
            logger.warning("refused calls from a client certificate whose key hash %s is not "
                           "COORDINATOR_CERT_HASH or COORDINATOR_CERT_HASH_SECONDARY", key_hash)
        return (f"the client certificate's public key (SHA-256 {key_hash}) is not this host's "
                "coordinator's: connect with the certificate whose key hash the orchestrator "
                "gave this host (COORDINATOR_CERT_HASH or COORDINATOR_CERT_HASH_SECONDARY)")


@dataclass(frozen=True)
class DelegationClaims:
    """What the deployed secure host knows of itself, which its delegation must state."""

    wallet_pubkey: str
    model_id: str
    hotkey: str | None


class DelegationHeaders:
    """Adds the cruncher's wallet delegation to every response's headers (grpclib's
    SendInitialMetadata event). The file is read again when it changes, so a renewed delegation
    needs no restart; a renewal that does not verify is logged and the previous one kept."""

    #: How often, at most, the file's modification time is looked at.
    RECHECK_SECONDS = 1.0

    def __init__(self, path: Path, tls_cert: Path, claims: DelegationClaims | None = None) -> None:
        self.path = path
        #: With claims (secure mode), the delegation must be signed by that wallet for that
        #: model and hotkey, and be unexpired, at start and at every renewal.
        self.claims = claims
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
        if self.claims is not None:
            try:
                verify_delegation(delegation.headers(), wallet_pubkey=self.claims.wallet_pubkey,
                                  model_id=self.claims.model_id, hotkey=self.claims.hotkey,
                                  peer_spki=self._tls_spki)
            except AuthError as exc:
                raise AuthError(f"{self.path}: {exc}") from None
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
