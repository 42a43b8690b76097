"""The deployed system's two authentication schemes, as both halves see them on the wire.

**Wallet delegation** (model-runner-client's `SecureCredentials`): over mutual TLS, the host proves
it belongs to the cruncher. Its response headers carry a message signed by the cruncher's wallet
(Ed25519, Solana keys in base58) that names the host's TLS public key:

    x-server-auth-message    base64 of JSON {"cert_pub": base64 DER SubjectPublicKeyInfo,
                             "model_id", "hotkey", "expires_at": unix seconds}
    x-server-auth-signature  base64 of the wallet's Ed25519 signature of those message bytes
    x-server-wallet-pubkey   the wallet's public key, base58

**Gateway tokens** (`GatewayCredentials`): over TLS with the system's CAs, every call carries a
token signed by the coordinator's RSA key (PKCS#1 v1.5, SHA-256):

    x-gateway-auth-message    base64 of compact JSON {"model_id", "timestamp": unix seconds}
    x-gateway-auth-signature  base64 of the signature of those message bytes
    x-gateway-auth-pubkey     base64 DER SubjectPublicKeyInfo of the coordinator's key

Every check raises `AuthError` with a sentence saying what did not match. The cryptography is
the `cryptography` package's; base58 is the `base58` package's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import base58
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

__all__ = [
    "GATEWAY_AUTH_MESSAGE",
    "GATEWAY_AUTH_PUBKEY",
    "GATEWAY_AUTH_SIGNATURE",
    "SERVER_AUTH_MESSAGE",
    "SERVER_AUTH_SIGNATURE",
    "SERVER_WALLET_PUBKEY",
    "AuthError",
    "Delegation",
    "GatewayVerifier",
    "cert_spki",
    "gateway_metadata",
    "model_node_name",
    "spki",
    "verify_delegation",
]

SERVER_AUTH_MESSAGE = "x-server-auth-message"
SERVER_AUTH_SIGNATURE = "x-server-auth-signature"
SERVER_WALLET_PUBKEY = "x-server-wallet-pubkey"
GATEWAY_AUTH_MESSAGE = "x-gateway-auth-message"
GATEWAY_AUTH_SIGNATURE = "x-gateway-auth-signature"
GATEWAY_AUTH_PUBKEY = "x-gateway-auth-pubkey"


class AuthError(Exception):
    """A credential did not verify; the message says which check failed."""


def model_node_name(model_id: str) -> str:
    """The TLS server name a model's host presents under wallet delegation."""
    return f"model-node-{model_id}.crunchdao.internal"


def spki(public_key: Any) -> bytes:
    """DER SubjectPublicKeyInfo of a public key."""
    return bytes(public_key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))


def cert_spki(cert: bytes) -> bytes:
    """DER SubjectPublicKeyInfo of a certificate given as DER or PEM."""
    loaded = (x509.load_pem_x509_certificate(cert) if cert.lstrip().startswith(b"-----")
              else x509.load_der_x509_certificate(cert))
    return spki(loaded.public_key())


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AuthError(f"{what} is not valid base64: {exc}") from None


# --- wallet delegation -----------------------------------------------------------------------


@dataclass(frozen=True)
class Delegation:
    """What a host serves in its response headers to prove it belongs to a cruncher.

    On disk (the host's `--auth-delegation` file, or `cruncher_msg.json` in the deployed secure
    host's certificates directory) it is a JSON object with the three header values:
    {"message_b64": base64, "signature_b64": base64, "wallet_pubkey_b58": base58}, or the same
    keys without their suffixes.
    """

    message: str
    signature: str
    wallet_pubkey: str

    @classmethod
    def sign(cls, wallet_key: ed25519.Ed25519PrivateKey, *, cert_pub: bytes, model_id: str,
             hotkey: str | None, expires_at: int) -> Delegation:
        """Sign a delegation of the TLS key `cert_pub` (DER SPKI) with the cruncher's wallet."""
        message = json.dumps({"cert_pub": base64.b64encode(cert_pub).decode(),
                              "model_id": model_id, "hotkey": hotkey,
                              "expires_at": int(expires_at)}).encode()
        wallet_pub = wallet_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                          serialization.PublicFormat.Raw)
        return cls(base64.b64encode(message).decode(),
                   base64.b64encode(wallet_key.sign(message)).decode(),
                   base58.b58encode(wallet_pub).decode())

    @classmethod
    def load(cls, path: Path) -> Delegation:
        """Read a delegation file; raises AuthError saying what is wrong with it."""
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise AuthError(f"cannot read the delegation file {str(path)!r}: {exc}") from None
        # Two spellings: ours, and the deployed secure host's cruncher_msg.json.
        for fields in (("message", "signature", "wallet_pubkey"),
                       ("message_b64", "signature_b64", "wallet_pubkey_b58")):
            if isinstance(raw, dict) and all(isinstance(raw.get(f), str) for f in fields):
                break
        else:
            raise AuthError(f"the delegation file {str(path)!r} must be a JSON object with the "
                            "strings message_b64 (base64), signature_b64 (base64) and "
                            "wallet_pubkey_b58 (base58), as the orchestrator's "
                            "cruncher_msg.json, or message, signature and wallet_pubkey")
        delegation = cls(*(raw[f] for f in fields))
        delegation.payload()  # decodes and checks the signature
        return delegation

    def save(self, path: Path) -> None:
        """Write the file the deployed secure host reads (`cruncher_msg.json`)."""
        path.write_text(json.dumps({"message_b64": self.message,
                                    "signature_b64": self.signature,
                                    "wallet_pubkey_b58": self.wallet_pubkey}))

    def headers(self) -> dict[str, str]:
        return {SERVER_AUTH_MESSAGE: self.message, SERVER_AUTH_SIGNATURE: self.signature,
                SERVER_WALLET_PUBKEY: self.wallet_pubkey}

    def payload(self) -> dict[str, Any]:
        """The signed message, once its signature is checked against the wallet key."""
        message = _b64(self.message, SERVER_AUTH_MESSAGE)
        signature = _b64(self.signature, SERVER_AUTH_SIGNATURE)
        try:
            wallet = ed25519.Ed25519PublicKey.from_public_bytes(
                base58.b58decode(self.wallet_pubkey))
        except ValueError as exc:
            raise AuthError(f"{SERVER_WALLET_PUBKEY} is not a base58 Ed25519 public key: "
                            f"{exc}") from None
        try:
            wallet.verify(signature, message)
        except InvalidSignature:
            raise AuthError("the delegation's signature does not verify with the wallet key "
                            f"{self.wallet_pubkey}") from None
        try:
            payload = json.loads(message)
        except ValueError as exc:
            raise AuthError(f"the signed delegation message is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise AuthError("the signed delegation message is not a JSON object")
        return payload

    def cert_pub(self) -> bytes:
        """The TLS public key (DER SPKI) this delegation vouches for."""
        cert_pub = self.payload().get("cert_pub")
        if not isinstance(cert_pub, str):
            raise AuthError("the signed delegation message has no cert_pub")
        return _b64(cert_pub, "cert_pub")


def verify_delegation(headers: Mapping[str, str], *, wallet_pubkey: str | None, model_id: str,
                      hotkey: str | None, peer_spki: bytes, now: float | None = None) -> float:
    """Check a host's delegation headers against what the orchestrator says of the model and
    the TLS key the host presented. Returns when the delegation expires (inf: never)."""
    missing = [h for h in (SERVER_AUTH_MESSAGE, SERVER_AUTH_SIGNATURE, SERVER_WALLET_PUBKEY)
               if not headers.get(h)]
    if missing:
        raise AuthError(f"the host sent no {', '.join(missing)} header: it does not prove it "
                        "belongs to the cruncher (start it with --auth-delegation)")
    if not wallet_pubkey:
        raise AuthError("the orchestrator gave no cruncher_wallet_pubkey for this model, so its "
                        "host cannot be checked")
    delegation = Delegation(headers[SERVER_AUTH_MESSAGE], headers[SERVER_AUTH_SIGNATURE],
                            headers[SERVER_WALLET_PUBKEY])
    if delegation.wallet_pubkey != wallet_pubkey:
        raise AuthError(f"the host's delegation is signed by wallet {delegation.wallet_pubkey}, "
                        f"not by the cruncher's wallet {wallet_pubkey}")
    payload = delegation.payload()
    if delegation.cert_pub() != peer_spki:
        raise AuthError("the delegation vouches for another TLS key than the one the host "
                        "presented")
    if payload.get("model_id") != model_id:
        raise AuthError(f"the delegation is for model {payload.get('model_id')!r}, "
                        f"not {model_id!r}")
    if payload.get("hotkey") != hotkey:
        raise AuthError(f"the delegation is for hotkey {payload.get('hotkey')!r}, not the "
                        f"cruncher's {hotkey!r}")
    expires_at = payload.get("expires_at")
    if expires_at is None:
        return float("inf")  # model-runner-client 0.14 accepts delegations without expiry
    if not isinstance(expires_at, int | float) or isinstance(expires_at, bool):
        raise AuthError(f"the delegation's expires_at {expires_at!r} is not a unix time")
    now = time.time() if now is None else now
    if expires_at <= now:
        raise AuthError(f"the delegation expired {now - expires_at:.0f}s ago "
                        f"(expires_at {expires_at})")
    return float(expires_at)


# --- gateway tokens --------------------------------------------------------------------------


def gateway_metadata(key: rsa.RSAPrivateKey, model_id: str, timestamp: int,
                     pubkey_b64: str | None = None) -> dict[str, str]:
    """The metadata of one call signed with the coordinator's key for `model_id`."""
    message = json.dumps({"model_id": model_id, "timestamp": int(timestamp)},
                         separators=(",", ":")).encode()
    signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    if pubkey_b64 is None:
        pubkey_b64 = base64.b64encode(spki(key.public_key())).decode()
    return {GATEWAY_AUTH_MESSAGE: base64.b64encode(message).decode(),
            GATEWAY_AUTH_SIGNATURE: base64.b64encode(signature).decode(),
            GATEWAY_AUTH_PUBKEY: pubkey_b64}


class GatewayVerifier:
    """The host's check of gateway tokens: a known coordinator key, a valid signature, a fresh
    timestamp, and this host's model id."""

    def __init__(self, allowed_key_hashes: Iterable[bytes], *, model_id: str | None,
                 max_age: float = 60.0) -> None:
        self.allowed = frozenset(allowed_key_hashes)
        self.model_id = model_id
        self.max_age = max_age
        #: Keys already parsed, by their base64 (a coordinator uses one key for every call).
        self._keys: dict[str, rsa.RSAPublicKey] = {}

    @classmethod
    def load(cls, path: Path, *, model_id: str | None, max_age: float) -> GatewayVerifier:
        """A file of allowed SHA-256 hashes (hex) of coordinators' DER public keys, one a line;
        blank lines and `#` comments are skipped."""
        hashes_: list[bytes] = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            text = line.split("#", 1)[0].strip().lower()
            if not text:
                continue
            try:
                digest = bytes.fromhex(text)
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise AuthError(f"{path}:{number}: {line.strip()!r} is not a SHA-256 hash in hex "
                                "(64 characters)")
            hashes_.append(digest)
        if not hashes_:
            raise AuthError(f"{path} lists no coordinator key hashes; no call could be accepted")
        return cls(hashes_, model_id=model_id, max_age=max_age)

    def check(self, metadata: Mapping[str, str], now: float | None = None) -> None:
        message_b64 = metadata.get(GATEWAY_AUTH_MESSAGE)
        signature_b64 = metadata.get(GATEWAY_AUTH_SIGNATURE)
        pubkey_b64 = metadata.get(GATEWAY_AUTH_PUBKEY)
        if not message_b64 or not signature_b64 or not pubkey_b64:
            raise AuthError("missing gateway token: send x-gateway-auth-message, "
                            "x-gateway-auth-signature and x-gateway-auth-pubkey "
                            "(model-runner-client's GatewayCredentials)")
        key = self._keys.get(pubkey_b64)
        if key is None:
            der = _b64(pubkey_b64, GATEWAY_AUTH_PUBKEY)
            if hashlib.sha256(der).digest() not in self.allowed:
                raise AuthError("the coordinator key is not among this host's allowed keys "
                                f"(its SHA-256 is {hashlib.sha256(der).hexdigest()})")
            try:
                loaded = serialization.load_der_public_key(der)
            except ValueError as exc:
                raise AuthError(f"{GATEWAY_AUTH_PUBKEY} is not a DER public key: {exc}") from None
            if not isinstance(loaded, rsa.RSAPublicKey):
                raise AuthError("gateway tokens must be signed with an RSA key")
            key = self._keys[pubkey_b64] = loaded
        message = _b64(message_b64, GATEWAY_AUTH_MESSAGE)
        try:
            key.verify(_b64(signature_b64, GATEWAY_AUTH_SIGNATURE), message, padding.PKCS1v15(),
                       hashes.SHA256())
        except InvalidSignature:
            raise AuthError("the gateway token's signature does not verify") from None
        try:
            token = json.loads(message)
        except ValueError:
            token = None
        if not isinstance(token, dict):
            raise AuthError("the gateway token is not a JSON object")
        timestamp = token.get("timestamp")
        if not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
            raise AuthError("the gateway token has no numeric timestamp")
        age = (time.time() if now is None else now) - timestamp
        if abs(age) > self.max_age:
            raise AuthError(f"the gateway token is {age:.0f}s old, outside this host's window "
                            f"of {self.max_age:g}s (check both clocks)")
        if self.model_id is not None and token.get("model_id") != self.model_id:
            raise AuthError(f"the gateway token is for model {token.get('model_id')!r}, not "
                            f"this host's {self.model_id!r}")
