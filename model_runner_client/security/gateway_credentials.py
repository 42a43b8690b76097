"""`GatewayCredentials`: TLS with the system's CAs, and a signed token on every call.

The drop-in for model-runner-client 0.14's class of the same name and import path: for hosts
behind a TLS-terminating gateway. Each call carries `{"model_id", "timestamp"}` signed with the
coordinator's RSA key (model_runner/wire/auth.py); the host checks the key against its list.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from model_runner.wire.tls import client_tls_context

__all__ = ["GatewayCredentials"]


@dataclass(frozen=True)
class GatewayCredentials:
    """Only RSA keys, as the on-chain registry of coordinator certificates holds."""

    private_key: rsa.RSAPrivateKey

    @classmethod
    def from_files(cls, cert_path: str | Path, key_path: str | Path) -> GatewayCredentials:
        """`cert_path` is accepted as model-runner-client does; only the key signs."""
        return cls.from_pem(key_pem=Path(key_path).read_bytes())

    @classmethod
    def from_pem(cls, key_pem: bytes) -> GatewayCredentials:
        private_key = load_pem_private_key(key_pem, password=None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise TypeError(f"GatewayCredentials takes an RSA private key, got "
                            f"{type(private_key).__name__}")
        return cls(private_key=private_key)

    @staticmethod
    def ssl_context() -> ssl.SSLContext:
        """TLS to the gateway, verified with the system's CAs (SSL_CERT_FILE is honoured)."""
        return client_tls_context()
