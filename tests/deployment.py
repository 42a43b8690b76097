"""A model host's deployment as the Model Orchestrator makes it in secure mode: the PKI (a CA
for coordinator certificates, the host's TLS certificate), the certificates directory its images
carry (tls.crt, tls.key, ca.crt, cruncher_msg.json) and the environment it sets."""

from __future__ import annotations

import hashlib
import shutil
import ssl
import time
from pathlib import Path
from typing import Any

import base58
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from model_runner.security import client_tls_context
from model_runner.wire.auth import Delegation, cert_spki, model_node_name
from model_runner_client.security.credentials import SecureCredentials
from tests.certs import Pki, issue_client, make_pki

MODEL = "42"
HOTKEY = "5Hotkey"


def wallet_address(key: ed25519.Ed25519PrivateKey) -> str:
    return str(base58.b58encode(key.public_key().public_bytes(Encoding.Raw,
                                                              PublicFormat.Raw)).decode())


def key_hash(cert: Path) -> str:
    return hashlib.sha256(cert_spki(cert.read_bytes())).hexdigest()


CRUNCHER = ed25519.Ed25519PrivateKey.generate()


class Deployment:
    """What the orchestrator's image and environment give a secure host."""

    def __init__(self, folder: Path) -> None:
        self.pki: Pki = make_pki(folder / "pki", server_names=[model_node_name(MODEL)],
                                 use_rsa=True)
        self.secondary = issue_client(self.pki, "secondary")
        self.stranger = issue_client(self.pki, "stranger")
        self.certificates = folder / "certificates"
        self.certificates.mkdir()
        shutil.copy(self.pki.server_cert, self.certificates / "tls.crt")
        shutil.copy(self.pki.server_key, self.certificates / "tls.key")
        shutil.copy(self.pki.ca, self.certificates / "ca.crt")
        self.delegate()

    def delegate(self, key: ed25519.Ed25519PrivateKey = CRUNCHER, **changes: Any) -> None:
        fields: dict[str, Any] = {"cert_pub": cert_spki(self.pki.server_cert.read_bytes()),
                                  "model_id": MODEL, "hotkey": HOTKEY,
                                  "expires_at": int(time.time()) + 3600}
        fields.update(changes)
        Delegation.sign(key, **fields).save(self.certificates / "cruncher_msg.json")

    def environment(self, **changes: str) -> dict[str, str]:
        """Exactly the variables the orchestrator sets (model_orchestrator/infrastructure)."""
        env = {"SECURE": "True", "CERTIFICATES_DIRECTORY": str(self.certificates),
               "MODEL_ID": MODEL, "CRUNCH_ONCHAIN_ADDRESS": "", "CRUNCHER_HOTKEY": HOTKEY,
               "CRUNCHER_WALLET_PUBKEY": wallet_address(CRUNCHER),
               "COORDINATOR_WALLET_PUBKEY": "",
               "COORDINATOR_CERT_HASH": key_hash(self.pki.client_cert),
               "COORDINATOR_CERT_HASH_SECONDARY": key_hash(self.secondary[0]),
               "GRPC_ADDRESS": "[::]:0"}
        env.update(changes)
        return env

    def coordinator(self, cert: Path, key: Path) -> ssl.SSLContext:
        return client_tls_context(self.pki.ca, cert, key)

    def coordinator_directory(self, cert: Path, key: Path, folder: Path) -> Path:
        """A coordinator's credentials folder (ca.crt, tls.crt, tls.key), as
        SecureCredentials.from_directory reads it in both client packages."""
        folder.mkdir()
        shutil.copy(self.pki.ca, folder / "ca.crt")
        shutil.copy(cert, folder / "tls.crt")
        shutil.copy(key, folder / "tls.key")
        return folder

    def credentials(self, cert: Path, key: Path, folder: Path) -> SecureCredentials:
        return SecureCredentials.from_directory(self.coordinator_directory(cert, key, folder))
