"""Checks of a ``fedloom certs`` folder: validity windows, key sizes, and where the CA's
private key lies and who can read it (``fedloom.transport.certs`` writes keys 0600 and
never puts ``ca.key`` in a client's bundle; these checks catch what happened since).
Key size floors follow NIST SP 800-57 Part 1 (RSA 2048, EC 256 bits: 112/128-bit security).
"""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from fedloom.audit.findings import Finding
from fedloom.errors import ConfigError

EXPIRY_WARNING = dt.timedelta(days=30)
MIN_BITS = {"RSA": 2048, "EC": 256}


def certs_findings(directory: Path, now: dt.datetime | None = None) -> list[Finding]:
    """Every check of the certificates and keys under ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"--certs {str(directory)!r}: no such folder")
    pems = sorted(directory.rglob("*.pem"))
    keys = sorted(directory.rglob("*.key"))
    if not pems and not keys:
        raise ConfigError(f"--certs {str(directory)!r} holds no certificate (*.pem) or key (*.key)")
    now = now or dt.datetime.now(dt.UTC)
    out: list[Finding] = []
    for path in pems:
        out += _cert_findings(path, now)
    for path in keys:
        out += _key_findings(path, directory)
    if not any(f.severity != "info" for f in out):
        out.append(
            Finding(
                "certs.ok",
                "info",
                "certificates checked",
                f"{len(pems)} certificates and {len(keys)} keys under {directory}",
            )
        )
    return out


def _cert_findings(path: Path, now: dt.datetime) -> list[Finding]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as err:
        return [Finding("certs.unreadable", "high", "unreadable certificate", f"{path}: {err}")]
    out: list[Finding] = []
    for cert in certs:
        name = f"{path} ({cert.subject.rfc4514_string()})"
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if start > now:
            out.append(
                Finding(
                    "certs.not_yet_valid",
                    "high",
                    "certificate not yet valid",
                    f"{name}: not valid before {start.isoformat()}",
                    "check the issuing machine's clock and reissue",
                )
            )
        if end < now:
            out.append(
                Finding(
                    "certs.expired",
                    "high",
                    "certificate expired",
                    f"{name}: expired {end.isoformat()}",
                    "reissue it with `fedloom certs issue --force` (or `certs init --force`)",
                )
            )
        elif end - now < EXPIRY_WARNING:
            out.append(
                Finding(
                    "certs.expiring",
                    "medium",
                    "certificate expires soon",
                    f"{name}: expires {end.isoformat()}, within {EXPIRY_WARNING.days} days",
                    "reissue it before it expires",
                )
            )
        out += _size_findings(name, cert.public_key())
    return out


def _size_findings(name: str, key: object) -> list[Finding]:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        kind = "RSA"
    elif isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        kind = "EC"
    else:
        return []
    bits = key.key_size
    if bits >= MIN_BITS[kind]:
        return []
    return [
        Finding(
            "certs.key_size",
            "high",
            "key too small",
            f"{name}: {kind} key of {bits} bits < {MIN_BITS[kind]}",
            "reissue with ECDSA P-256 (what `fedloom certs` makes) or RSA 2048+",
        )
    ]


def _key_findings(path: Path, directory: Path) -> list[Finding]:
    out: list[Finding] = []
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        out.append(
            Finding(
                "certs.key_permissions",
                "high",
                "private key readable by others",
                f"{path}: mode {mode:04o} lets group or others read it",
                f"chmod 600 {path}",
            )
        )
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        out.append(Finding("certs.unreadable", "high", "unreadable key", f"{path}: {err}"))
    else:
        out += _size_findings(str(path), key)
    if path.name != "ca.key":
        return out
    if path.parent.resolve() != directory.resolve():
        out.append(
            Finding(
                "certs.ca_key_in_bundle",
                "high",
                "CA key in a client bundle",
                f"{path}: a device holding ca.key can issue any identity",
                f"delete {path} and reissue every certificate from a new CA",
            )
        )
    if (repo := _git_work_tree(path)) is not None:
        out.append(
            Finding(
                "certs.ca_key_in_git",
                "high",
                "CA key inside a git work tree",
                f"{path} lies under {repo}: one commit or push publishes it",
                "move the CA folder out of the repository (and rotate the CA if it was ever "
                "committed)",
            )
        )
    return out


def _git_work_tree(path: Path) -> Path | None:
    """The nearest parent holding ``.git``, or None."""
    for parent in path.resolve().parents:
        if (parent / ".git").exists():
            return parent
    return None
