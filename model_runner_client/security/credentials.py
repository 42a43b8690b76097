"""`SecureCredentials`: mutual TLS to each model host, plus the host's wallet delegation.

The drop-in for model-runner-client 0.14's class of the same name and import path. Each host is
reached with the TLS server name `model-node-<model_id>.crunchdao.internal`, must present a
certificate signed by `ca.crt`, and must prove with its response headers that the cruncher's
wallet vouches for its TLS key (model_runner/wire/auth.py); the client presents `tls.crt`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SecureCredentials"]


@dataclass(frozen=True)
class SecureCredentials:
    ca_bytes: bytes
    cert_bytes: bytes
    key_bytes: bytes
    tls_ctx: ssl.SSLContext = field(init=False, repr=False, compare=False)

    @classmethod
    def from_directory(cls, path: str | Path) -> SecureCredentials:
        """Read `ca.crt`, `tls.crt` and `tls.key` from one folder."""
        folder = Path(path)
        return cls.from_files(folder / "ca.crt", folder / "tls.crt", folder / "tls.key")

    @classmethod
    def from_files(cls, ca_cert_path: str | Path, tls_cert_path: str | Path,
                   tls_key_path: str | Path) -> SecureCredentials:
        paths = [Path(p) for p in (ca_cert_path, tls_cert_path, tls_key_path)]
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"SecureCredentials: {str(path)!r} is not a readable "
                                        "file (expected the CA, the coordinator's certificate "
                                        "and its key, in PEM)")
        credentials = cls(*(p.read_bytes() for p in paths))
        object.__setattr__(credentials, "tls_ctx", cls.build_ssl_context(*paths))
        return credentials

    @staticmethod
    def build_ssl_context(ca_cert_path: Path, tls_cert_path: Path,
                          tls_key_path: Path) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["h2"])  # gRPC is HTTP/2
        context.load_verify_locations(cafile=str(ca_cert_path))
        context.load_cert_chain(certfile=str(tls_cert_path), keyfile=str(tls_key_path))
        return context
