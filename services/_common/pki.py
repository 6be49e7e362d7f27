"""A development certificate authority: the certificates `make run` and the tests use.

Every process of the platform presents a certificate signed by the deployment's CA (mutual TLS),
and its identity is the SPIFFE ID in the certificate's subject alternative name:

    spiffe://healthcode/service/<name>            a platform service (declaration, colour, ...)
    spiffe://healthcode/feed/<name>               an authoritative data feed (cdc, customs, ...)
    spiffe://healthcode/partner/<kind>/<name>     a partner system (hospital, cold_chain, ...)
    spiffe://healthcode/edge/<name>               a relay of people's and staff's calls (the
                                                  gateway, the CLI, a load generator): it has no
                                                  role of its own and must send a bearer token

A deployment issues these from its own CA (cert-manager, Vault, or `openssl`); this module only
makes a throwaway one for a laptop or a test, with the `cryptography` package. Keys are ECDSA
P-256, which every TLS stack grpc links accepts; private keys are written with mode 0600.

    pki = DevPki.create(credentials_dir)      # once: ca.pem + ca.key
    pki.issue("spiffe://healthcode/service/colour", "colour")   # colour.pem + colour.key
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "healthcode"
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
# Long enough for a laptop's demo data directory; a deployment's CA decides its own.
DEV_VALIDITY = dt.timedelta(days=365)

# The identities `make run` and the end-to-end stacks get: the four services, the CLI and the
# gateway as edges, a load generator, a demo feed and one partner of each kind.
SERVICE_NAMES = ("declaration", "risk_index", "colour", "display")
DEV_IDENTITIES: dict[str, str] = {
    **{name: f"spiffe://{TRUST_DOMAIN}/service/{name}" for name in SERVICE_NAMES},
    "cli": f"spiffe://{TRUST_DOMAIN}/edge/cli",
    "gateway": f"spiffe://{TRUST_DOMAIN}/edge/gateway",
    "load": f"spiffe://{TRUST_DOMAIN}/edge/load",
    "feed-demo": f"spiffe://{TRUST_DOMAIN}/feed/demo",
    "partner-hospital": f"spiffe://{TRUST_DOMAIN}/partner/hospital/demo",
    "partner-cold-chain": f"spiffe://{TRUST_DOMAIN}/partner/cold_chain/demo",
    "partner-other-province": f"spiffe://{TRUST_DOMAIN}/partner/other_province/demo",
}


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only (created so, never widened)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True, slots=True)
class DevPki:
    """A development CA in `directory`: ca.pem (the trust root every process loads) and ca.key
    (kept only where certificates are issued)."""

    directory: Path
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, directory: Path) -> DevPki:
        """The CA in `directory`, made now unless it exists already."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / CA_CERT, directory / CA_KEY
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path}: not an ECDSA key")
            return cls(directory, cert, key)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "healthcode development CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + DEV_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, cert, key)

    def issue(self, spiffe_id: str, filename: str, hosts: tuple[str, ...] = ()) -> Path:
        """A certificate for `spiffe_id` as <filename>.pem and <filename>.key (unless both exist).
        It serves and connects on loopback (localhost, 127.0.0.1, ::1) and `hosts`."""
        cert_path = self.directory / f"{filename}.pem"
        key_path = self.directory / f"{filename}.key"
        if cert_path.exists() and key_path.exists():
            return cert_path
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(spiffe_id),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, filename)]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + DEV_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path


def create_dev_credentials(directory: Path, extra: dict[str, str] | None = None) -> DevPki:
    """The development CA and a certificate for every identity `make run` uses (and `extra`:
    filename -> SPIFFE ID). Idempotent: what exists is kept."""
    pki = DevPki.create(directory)
    for filename, spiffe_id in {**DEV_IDENTITIES, **(extra or {})}.items():
        pki.issue(spiffe_id, filename)
    return pki
