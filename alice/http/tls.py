"""HTTPS: the certificate ALICE serves with, and a small local authority for a LAN without a domain.

SAM on a Mac reaches ALICE across the home network; without TLS the API key, every prompt
and every image cross the Wi-Fi in clear text. A box on a LAN has no public name for an
ACME certificate, so `alice tls init` makes a private certificate authority (installed once
on the Mac) and a server certificate for the box's names and addresses.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from alice.config import ConfigError, Settings, env_name

# Apple platforms refuse TLS server certificates valid for more than 825 days, even from a
# locally trusted authority (https://support.apple.com/en-us/103769).
SERVER_DAYS = 825
CA_DAYS = 10 * 365


@dataclass(frozen=True)
class LocalAuthority:
    """What `alice tls init` wrote, and what the operator does with each file."""

    ca_cert: Path  # install on every client (the Mac running SAM)
    ca_key: Path  # keep private: it can vouch for any name
    server_cert: Path  # ALICE_TLS_CERTFILE
    server_key: Path  # ALICE_TLS_KEYFILE
    names: tuple[str, ...]
    ca_created: bool

    def fingerprint(self) -> str:
        """The authority's SHA-256 fingerprint, to compare on the Mac after copying the file."""
        cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        return cert.fingerprint(hashes.SHA256()).hex(":").upper()


class TlsFilesExist(Exception):
    """A server key is already there; it is never overwritten."""


def default_names() -> list[str]:
    """The names and addresses clients may use for this box: its host name (and `.local`,
    as macOS resolves it over mDNS), localhost, and every address of its interfaces."""
    import psutil

    host = socket.gethostname()
    names = [host, f"{host}.local", "localhost"]
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                names.append(address.address.split("%")[0])  # drop an IPv6 zone (fe80::1%eth0)
    return list(dict.fromkeys(names))


def init_local_authority(folder: Path, names: list[str]) -> LocalAuthority:
    """Make (or reuse) the authority in `folder` and issue a server certificate for `names`.

    An existing authority is reused, so clients that trust it keep trusting the new server
    certificate. An existing server key is never overwritten: delete it to issue a new one.
    """
    if not names:
        raise ValueError("at least one host name or address is needed")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = LocalAuthority(
        ca_cert=folder / "ca.pem", ca_key=folder / "ca.key",
        server_cert=folder / "server.pem", server_key=folder / "server.key",
        names=tuple(dict.fromkeys(names)), ca_created=False,
    )
    if files.server_key.exists() or files.server_cert.exists():
        raise TlsFilesExist(
            f"{files.server_key} already exists and is never overwritten; delete server.key and server.pem "
            "to issue a new server certificate (the authority in the same folder is kept)"
        )
    now = datetime.datetime.now(datetime.timezone.utc)
    if files.ca_key.exists():
        ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _authority_certificate(ca_key, now)
        _write_private(files.ca_key, _pem_key(ca_key))
        files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        files = LocalAuthority(**{**files.__dict__, "ca_created": True})
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _server_certificate(server_key, ca_key, ca_cert, files.names, now)
    _write_private(files.server_key, _pem_key(server_key))
    # The chain the server presents: its certificate, then the authority's.
    files.server_cert.write_bytes(
        server_cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
    )
    return files


def check_server_files(certfile: Path, keyfile: Path) -> None:
    """Stop the start with a clear message when the files ALICE would serve with are unusable."""
    for path, field in ((certfile, "tls_certfile"), (keyfile, "tls_keyfile")):
        if not path.is_file():
            raise ConfigError(f"{env_name(field)}={path}: no such file")
        try:
            path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{env_name(field)}={path}: cannot read the file ({exc.strerror})") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise ConfigError(
                f"{env_name('tls_keyfile')}={keyfile} is not the key of the certificate "
                f"{env_name('tls_certfile')}={certfile}"
            ) from None
        raise ConfigError(
            f"{env_name('tls_certfile')}={certfile} / {env_name('tls_keyfile')}={keyfile}: "
            f"not a PEM certificate and its private key ({exc.reason or exc})"
        ) from None


def service_ssl_options(settings: Settings) -> dict[str, object]:
    """`@bentoml.service(**...)` options that make BentoML serve HTTPS with the configured files
    (as `bentoml serve --ssl-certfile` would set them); none for plain HTTP."""
    ssl_config = bentoml_ssl_config(settings)
    return {"ssl": ssl_config} if ssl_config else {}


def bentoml_ssl_config(settings: Settings) -> dict[str, object] | None:
    """BentoML's `ssl` configuration for the configured files, checked; None for plain HTTP."""
    if settings.tls_certfile is None and settings.tls_keyfile is None:
        return None
    if settings.tls_certfile is None or settings.tls_keyfile is None:
        missing = "tls_certfile" if settings.tls_certfile is None else "tls_keyfile"
        raise ConfigError(f"{env_name(missing)} is needed too: HTTPS takes a certificate and its key")
    check_server_files(settings.tls_certfile, settings.tls_keyfile)
    return {"enabled": True, "certfile": str(settings.tls_certfile), "keyfile": str(settings.tls_keyfile)}


def _authority_certificate(key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> x509.Certificate:
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ALICE local authority"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"ALICE local CA ({socket.gethostname()})"),
    ])
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey, ca_key, ca_cert: x509.Certificate, names: tuple[str, ...], now: datetime.datetime
) -> x509.Certificate:
    alternative_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alternative_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternative_names.append(x509.DNSName(name))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
                          content_commitment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    """Create a key file readable by its owner only; O_EXCL: an existing file is never replaced."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
