"""Development TLS material: a local CA and a server certificate it signs; and
:class:`LeafIssuer`, a CA that signs leaf certificates on demand (the forward proxy's).

``lockgate init`` writes ``tls/ca.pem`` (trust this one), ``tls/cert.pem`` and
``tls/key.pem`` (the listener's pair, valid for localhost and 127.0.0.1). Clients trust the
gateway by pointing at ``ca.pem`` (``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE`` or the secrets
backend's ``ca_file``), so no one ever needs to disable verification.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import tempfile
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lockgate dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def write_dev_tls(
    directory: Path, hosts: list[str] | None = None, days: int = 365
) -> dict[str, Path]:
    """Create ca.pem, cert.pem and key.pem (0600) in ``directory``; return their paths."""
    hosts = hosts or ["localhost", "127.0.0.1"]
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_cert(ca_key, "Lockgate dev CA", now, days)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf_cert(key, hosts, ca_cert, ca_key, now, days)
    paths = {
        "ca": directory / "ca.pem",
        "cert": directory / "cert.pem",
        "key": directory / "key.pem",
    }
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    # The chain file lets clients that only know the CA validate the leaf.
    paths["cert"].write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + ca_cert.public_bytes(serialization.Encoding.PEM)
    )
    _write_private(paths["key"], key)
    return paths


def _leaf_cert(
    key: ec.EllipticCurvePrivateKey,
    hosts: list[str],
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    """A server certificate for ``hosts`` (IP or DNS names) signed by the CA."""
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    return (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


# -- a CA that signs leaf certificates on demand (the forward proxy's interception CA) --------


def write_dev_ca(
    directory: Path, name: str = "Lockgate proxy CA", days: int = 365
) -> dict[str, Path]:
    """Create ``proxy-ca.pem`` and ``proxy-ca.key`` (0600): a CA whose key Lockgate keeps, so
    the forward proxy can sign leaf certificates for intercepted hosts. Trust its cert on
    workers (``REQUESTS_CA_BUNDLE``)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _ca_cert(key, name, now, days)
    paths = {"cert": directory / "proxy-ca.pem", "key": directory / "proxy-ca.key"}
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths["key"], key)
    return paths


def _ca_cert(
    key: ec.EllipticCurvePrivateKey, name: str, now: dt.datetime, days: int
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


class LeafIssuer:
    """Server ``SSLContext`` per host name, with a leaf certificate signed by a CA on demand.

    Leaves are short-lived (``days``), cached per host and renewed once half their life has
    passed. The leaf's key never leaves memory except for the moment ``ssl`` needs it in a
    file (a 0700 temporary directory, removed at once).
    """

    def __init__(self, ca_cert_pem: bytes, ca_key_pem: bytes, *, days: int = 7) -> None:
        self._ca = x509.load_pem_x509_certificate(ca_cert_pem)
        key = serialization.load_pem_private_key(ca_key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError("the interception CA key must be EC or RSA")
        self._ca_key = key
        self._days = days
        self._cache: dict[str, tuple[float, ssl.SSLContext]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_files(cls, cert: Path, key: Path, *, days: int = 7) -> LeafIssuer:
        return cls(cert.read_bytes(), key.read_bytes(), days=days)

    def context(self, host: str) -> ssl.SSLContext:
        """A server context presenting a certificate for ``host`` (a DNS name or an IP)."""
        now = time.time()
        with self._lock:
            hit = self._cache.get(host)
            if hit is not None and hit[0] > now:
                return hit[1]
            ctx = self._build(host)
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[host] = (now + self._days * 86400 / 2, ctx)
            return ctx

    def _build(self, host: str) -> ssl.SSLContext:
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _leaf_cert(key, [host], self._ca, self._ca_key, now, self._days)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory(prefix="lockgate-leaf-") as tmp:
            chain, key_file = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
            chain.write_bytes(
                cert.public_bytes(serialization.Encoding.PEM)
                + self._ca.public_bytes(serialization.Encoding.PEM)
            )
            _write_private(key_file, key)
            ctx.load_cert_chain(str(chain), str(key_file))
        return ctx
