"""How each model's connection is secured: TLS settings, per-call metadata, and the check that
the host is who the orchestrator says.

The client's options (`ssl=`, `auth_token=`, `metadata=`, `secure_credentials=`,
`gateway_credentials=`) become one `Security`, which gives each model its `ConnectionSecurity`.
"""

from __future__ import annotations

import base64
import functools
import ssl as _ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from model_runner.wire.auth import (
    SERVER_AUTH_MESSAGE,
    SERVER_AUTH_SIGNATURE,
    SERVER_WALLET_PUBKEY,
    AuthError,
    cert_spki,
    gateway_metadata,
    model_node_name,
    spki,
    verify_delegation,
)

from .models import ModelEndpoint
from .security import GatewayCredentials, SecureCredentials

__all__ = ["ConnectionSecurity", "Security", "UntrustedHost", "peer_spki"]


class UntrustedHost(AuthError):
    """The host did not prove it belongs to the model's cruncher: it is never called."""


def peer_spki(socket_transport: Any) -> bytes:
    """The public key (DER SubjectPublicKeyInfo) of the TLS certificate the host presented on
    an asyncio transport; raises UntrustedHost when there is none."""
    ssl_object = (socket_transport.get_extra_info("ssl_object")
                  if socket_transport is not None else None)
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise UntrustedHost("the host presented no TLS certificate")
    return _spki_of(der)


@functools.lru_cache(maxsize=4096)
def _spki_of(der_certificate: bytes) -> bytes:
    return cert_spki(der_certificate)  # parsed once per certificate, not once per call


#: Checks a response's headers against the TLS key (DER SPKI) the host presented.
PeerCheck = Callable[[Mapping[str, str], bytes], None]


@dataclass(frozen=True)
class ConnectionSecurity:
    ssl: _ssl.SSLContext | None = None
    #: The TLS server name to verify, when it is not the address's host.
    server_name: str | None = None
    #: Metadata for each call (fresh per call: gateway tokens carry a timestamp).
    metadata: Callable[[], Mapping[str, str] | None] = lambda: None
    check_peer: PeerCheck | None = None


class _Static:
    def __init__(self, metadata: Mapping[str, str]) -> None:
        self._metadata = dict(metadata) or None

    def __call__(self) -> Mapping[str, str] | None:
        return self._metadata


class _GatewayTokens:
    """Signs `{"model_id", "timestamp"}` once per second and model: a token is a pure function
    of both (PKCS#1 v1.5 is deterministic), so this sends exactly what signing every call would,
    for one RSA signature (~1 ms of CPU) per model and second instead of one per call."""

    def __init__(self, credentials: GatewayCredentials, model_id: str,
                 base: Mapping[str, str]) -> None:
        self._key = credentials.private_key
        self._pubkey = base64.b64encode(spki(self._key.public_key())).decode()
        self._model_id = model_id
        self._base = dict(base)
        self._second = -1
        self._metadata: Mapping[str, str] = {}

    def __call__(self) -> Mapping[str, str]:
        second = int(time.time())
        if second != self._second:
            self._metadata = {**self._base, **gateway_metadata(self._key, self._model_id,
                                                               second, self._pubkey)}
            self._second = second
        return self._metadata


class _DelegationCheck:
    """Checks the host's wallet delegation against the orchestrator's infos for this model;
    a verified (TLS key, headers) pair is remembered until it expires."""

    def __init__(self, endpoint: ModelEndpoint) -> None:
        self._endpoint = endpoint
        self._verified: tuple[tuple[bytes, str, str, str], float] | None = None

    def __call__(self, headers: Mapping[str, str], peer_spki: bytes) -> None:
        key = (peer_spki, headers.get(SERVER_AUTH_MESSAGE, ""),
               headers.get(SERVER_AUTH_SIGNATURE, ""), headers.get(SERVER_WALLET_PUBKEY, ""))
        if self._verified is not None and self._verified[0] == key \
                and time.time() < self._verified[1]:
            return
        infos = self._endpoint.infos
        try:
            expires_at = verify_delegation(
                headers, wallet_pubkey=infos.get("cruncher_wallet_pubkey"),
                model_id=self._endpoint.model_id, hotkey=infos.get("cruncher_hotkey"),
                peer_spki=peer_spki)
        except AuthError as exc:
            raise UntrustedHost(str(exc)) from None
        self._verified = (key, expires_at)


class Security:
    """The client's security options, checked once; `for_endpoint` gives each model's."""

    def __init__(
        self,
        *,
        ssl: _ssl.SSLContext | None = None,
        auth_token: str | None = None,
        metadata: Mapping[str, str] | None = None,
        secure_credentials: SecureCredentials | None = None,
        gateway_credentials: GatewayCredentials | None = None,
    ) -> None:
        chosen = [name for name, value in (("ssl", ssl), ("secure_credentials", secure_credentials),
                                           ("gateway_credentials", gateway_credentials))
                  if value is not None]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)} each set up TLS; give only one")
        self._metadata = dict(metadata or {})
        if auth_token:
            self._metadata["authorization"] = f"Bearer {auth_token}"
        self._ssl = ssl
        self._secure = secure_credentials
        self._gateway = gateway_credentials
        self._gateway_ssl = gateway_credentials.ssl_context() if gateway_credentials else None
        self._static = _Static(self._metadata)

    def for_endpoint(self, endpoint: ModelEndpoint) -> ConnectionSecurity:
        if self._secure is not None:
            return ConnectionSecurity(self._secure.tls_ctx, model_node_name(endpoint.model_id),
                                      self._static, _DelegationCheck(endpoint))
        if self._gateway is not None:
            return ConnectionSecurity(self._gateway_ssl, None,
                                      _GatewayTokens(self._gateway, endpoint.model_id,
                                                     self._metadata))
        return ConnectionSecurity(self._ssl, None, self._static)
