"""The local certificate authority `alice tls init` makes, and the checks of the files ALICE serves with."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from alice.http import tls
from alice.config import ConfigError, Settings


def test_authority_and_server_certificate_verify_for_every_name(tmp_path):
    made = tls.init_local_authority(tmp_path / "tls", ["gpu-box", "gpu-box.local", "192.168.1.20", "::1"])
    server = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["gpu-box", "gpu-box.local"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.168.1.20"), ipaddress.ip_address("::1")]
    assert server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    # Apple refuses server certificates valid for longer than 825 days.
    assert (server.not_valid_after_utc - server.not_valid_before_utc).days <= 825
    # The chain verifies against the authority alone, as a client that installed ca.pem checks it.
    authority = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    server.verify_directly_issued_by(authority)
    assert authority.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Keys are for the owner's eyes only.
    for key in (made.ca_key, made.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    tls.check_server_files(made.server_cert, made.server_key)
    assert len(made.fingerprint().split(":")) == 32


def test_a_second_run_reuses_the_authority_and_never_overwrites_a_key(tmp_path):
    first = tls.init_local_authority(tmp_path, ["box"])
    ca_key, server_key = first.ca_key.read_bytes(), first.server_key.read_bytes()
    with pytest.raises(tls.TlsFilesExist, match="never overwritten"):
        tls.init_local_authority(tmp_path, ["box", "other-name"])
    assert first.server_key.read_bytes() == server_key
    # A new server certificate (new names) from the same authority: clients keep trusting it.
    first.server_key.unlink()
    first.server_cert.unlink()
    second = tls.init_local_authority(tmp_path, ["box", "other-name"])
    assert not second.ca_created and second.ca_key.read_bytes() == ca_key
    assert second.server_key.read_bytes() != server_key
    assert second.fingerprint() == first.fingerprint()


def test_unusable_files_stop_the_start_with_the_setting_named(tmp_path):
    made = tls.init_local_authority(tmp_path / "a", ["box"])
    other = tls.init_local_authority(tmp_path / "b", ["box"])
    with pytest.raises(ConfigError, match=r"ALICE_TLS_CERTFILE=.*missing.pem: no such file"):
        tls.check_server_files(tmp_path / "missing.pem", made.server_key)
    # Root reads files whatever their mode; /proc/self/mem is a regular file nobody can read from 0.
    with pytest.raises(ConfigError, match=r"ALICE_TLS_KEYFILE=/proc/self/mem: cannot read the file"):
        tls.check_server_files(made.server_cert, Path("/proc/self/mem"))
    with pytest.raises(ConfigError, match=r"ALICE_TLS_KEYFILE=.*b/server.key is not the key of the certificate"):
        tls.check_server_files(made.server_cert, other.server_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="not a PEM certificate and its private key"):
        tls.check_server_files(garbage, made.server_key)


def test_ssl_options_need_both_files(tmp_path):
    made = tls.init_local_authority(tmp_path, ["box"])
    assert tls.bentoml_ssl_config(Settings()) is None
    assert tls.bentoml_ssl_config(Settings(tls_certfile=made.server_cert, tls_keyfile=made.server_key)) == {
        "enabled": True, "certfile": str(made.server_cert), "keyfile": str(made.server_key),
    }
    with pytest.raises(ConfigError, match="ALICE_TLS_KEYFILE is needed too"):
        tls.bentoml_ssl_config(Settings(tls_certfile=made.server_cert))
    # What the server loads is exactly what was checked.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(made.server_cert, made.server_key)
