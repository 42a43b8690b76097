"""Certificates made on the fly for the TLS tests: a CA, a server cert, a client cert."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _new_key(use_rsa: bool) -> PrivateKey:
    return (rsa.generate_private_key(public_exponent=65537, key_size=2048) if use_rsa
            else ec.generate_private_key(ec.SECP256R1()))


def _write_key(key: PrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _leaf(folder: Path, ca: x509.Certificate, ca_key: PrivateKey, common: str,
          usage: x509.ObjectIdentifier, stem: str, server_names: Sequence[str] = (),
          use_rsa: bool = False) -> tuple[Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    key = _new_key(use_rsa)
    cert = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
                *(x509.DNSName(n) for n in server_names)]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


def make_pki(folder: Path, name: str = "test", server_names: Sequence[str] = (),
             use_rsa: bool = False) -> Pki:
    """A CA and two leaves; the server's is valid for localhost, 127.0.0.1, ::1 and
    `server_names`. More client certificates: `issue_client`. Keys are EC P-256, or RSA 2048
    with `use_rsa` (what the deployed system issues: model-runner-client 0.14 refuses a host
    whose TLS key is not RSA)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = _new_key(use_rsa)
    ca_name = _name(f"{name} CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, folder / "ca-key.pem")
    server_cert, server_key = _leaf(folder, ca, ca_key, "model host",
                                    ExtendedKeyUsageOID.SERVER_AUTH, "server", server_names,
                                    use_rsa)
    client_cert, client_key = _leaf(folder, ca, ca_key, "coordinator",
                                    ExtendedKeyUsageOID.CLIENT_AUTH, "client", (), use_rsa)
    return Pki(folder / "ca.pem", server_cert, server_key, client_cert, client_key)


def issue_client(pki: Pki, stem: str) -> tuple[Path, Path]:
    """Another client certificate (and its key) signed by the PKI's CA."""
    folder = pki.ca.parent
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key((folder / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return _leaf(folder, ca, ca_key, stem, ExtendedKeyUsageOID.CLIENT_AUTH, stem, (),
                 isinstance(ca_key, rsa.RSAPrivateKey))
