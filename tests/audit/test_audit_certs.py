"""Certificate checks of ``fedloom audit --certs``: a folder made by fedloom.transport.certs
is clean; a readable CA key, an expired or short-lived certificate, a small key, a CA key
in a client bundle or inside a git work tree are flagged."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedloom.audit.cert_checks import certs_findings
from fedloom.errors import ConfigError
from fedloom.transport.certs import init_ca, issue


def checks(findings, severity=None):
    return {f.check for f in findings if severity in (None, f.severity)}


@pytest.fixture
def certs(tmp_path):
    directory = tmp_path / "certs"
    init_ca(directory)
    issue(directory, "server", kind="server")
    issue(directory, "client-000001")
    return directory


def self_signed(path, *, days_valid: tuple[int, int], curve: ec.EllipticCurve | None = None):
    key = ec.generate_private_key(curve or ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days_valid[0]))
        .not_valid_after(now + dt.timedelta(days=days_valid[1]))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_fresh_folder_is_clean(certs):
    found = certs_findings(certs)
    assert checks(found) == {"certs.ok"}


def test_readable_ca_key_is_high(certs):
    (certs / "ca.key").chmod(0o644)
    found = [f for f in certs_findings(certs) if f.check == "certs.key_permissions"]
    assert [f.severity for f in found] == ["high"] and "ca.key" in found[0].detail


def test_expired_and_expiring_certificates(certs):
    self_signed(certs / "old.pem", days_valid=(-400, -1))
    self_signed(certs / "soon.pem", days_valid=(-10, 10))
    self_signed(certs / "future.pem", days_valid=(5, 400))
    found = certs_findings(certs)
    assert {"certs.expired", "certs.not_yet_valid"} <= checks(found, "high")
    assert "certs.expiring" in checks(found, "medium")
    assert "old.pem" in next(f.detail for f in found if f.check == "certs.expired")


def test_small_ec_key_is_high(certs):
    self_signed(certs / "small.pem", days_valid=(-1, 100), curve=ec.SECP192R1())
    found = [f for f in certs_findings(certs) if f.check == "certs.key_size"]
    assert found and "192 bits" in found[0].detail


def test_ca_key_in_a_bundle_is_high(certs):
    shutil.copy(certs / "ca.key", certs / "client-000001" / "ca.key")
    assert "certs.ca_key_in_bundle" in checks(certs_findings(certs), "high")


def test_ca_key_in_a_git_work_tree_is_high(certs):
    assert "certs.ca_key_in_git" not in checks(certs_findings(certs))
    (certs.parent / ".git").mkdir()
    assert "certs.ca_key_in_git" in checks(certs_findings(certs), "high")


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        certs_findings(tmp_path / "nope")
    with pytest.raises(ConfigError, match="holds no certificate"):
        certs_findings(tmp_path)
