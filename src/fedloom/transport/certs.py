"""A small certificate authority for mutual TLS between the server and its clients.

The deployment transport identifies a client by its certificate's common name, so the
names here must be the names the server expects (``server``, ``client-000003``). One
directory holds the CA (``ca.pem``, ``ca.key``) and every issued pair (``NAME.pem``,
``NAME.key``), and each client's bundle ``NAME/`` (``ca.pem``, ``NAME.pem``, ``NAME.key``)
to copy to its device, which must never see ``ca.key``; keys are ECDSA P-256, signatures
SHA-256, private keys readable by the owner only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedloom.atomic import atomic_write
from fedloom.errors import FedloomError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
CLIENT_NAME = re.compile(r"^client-(\d{1,9})$")  # client N of the partition
# with --insecure (no certificate), a client names itself in this metadata key
METADATA_CLIENT = "x-fedloom-client"
_CLOCK_SKEW = dt.timedelta(minutes=5)  # accept peers whose clocks run a little behind


class CertError(FedloomError):
    """A certificate or key is missing, corrupt, expired, misnamed or would be overwritten."""


@dataclass(frozen=True)
class Identity:
    """One party's certificate and key, with the CA certificate that vouches for its peers."""

    name: str
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes


def init_ca(
    directory: Path, *, common_name: str = "fedloom CA", days: int = 3650, force: bool = False
) -> Path:
    """Create a CA in ``directory`` (``ca.pem`` and ``ca.key``); return the certificate path."""
    directory = Path(directory)
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    _refuse_overwrite((cert_path, key_path), force)
    _check_days(days)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(subject, subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_pair(cert_path, key_path, cert, key)
    return cert_path


def issue(
    directory: Path,
    name: str,
    *,
    kind: Literal["server", "client"] = "client",
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 825,
    force: bool = False,
) -> tuple[Path, Path]:
    """Issue ``NAME.pem``/``NAME.key`` signed by the CA in ``directory``; return both paths.

    A server certificate names each of ``hosts`` (IP address or DNS name); a client
    certificate names the client itself, and ``hosts`` is ignored. A client also gets its
    bundle, the folder to copy to the device (:func:`bundle_dir`): ``ca.pem`` and its own
    pair, never the CA key or another client's key.
    """
    directory = Path(directory)
    _check_name(name)
    if kind not in ("server", "client"):
        raise CertError(f"certificate kind {kind!r} is invalid: use 'server' or 'client'")
    _check_days(days)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    bundle = bundle_dir(directory, name)
    bundled = (bundle / "ca.pem", bundle / f"{name}.pem", bundle / f"{name}.key")
    _refuse_overwrite((cert_path, key_path, *(bundled if kind == "client" else ())), force)
    ca_cert, ca_key = _load_ca(directory)
    if kind == "server":
        names = [_general_name(host) for host in hosts]
        if not names:
            raise CertError(f"server certificate {name!r} needs at least one host")
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        names = [x509.DNSName(name)]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(cert_path, key_path, cert, key)
    if kind == "client":
        bundle.mkdir(mode=0o700, exist_ok=True)
        _write(bundled[0], _read(directory / "ca.pem"), 0o644)
        _write_pair(bundled[1], bundled[2], cert, key)
    return cert_path, key_path


def bundle_dir(directory: Path, name: str) -> Path:
    """The folder ``issue`` writes client ``name``'s bundle to: ``DIR/NAME/`` holding
    ``ca.pem``, ``NAME.pem`` and ``NAME.key``, all that device needs (``--certs``)."""
    return Path(directory) / name


def load_identity(directory: Path, name: str) -> Identity:
    """Read ``NAME``'s certificate and key and the CA, checking that they belong together."""
    directory = Path(directory)
    _check_name(name)
    ca_path = directory / "ca.pem"
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    ca_pem, cert_pem, key_pem = (_read(p) for p in (ca_path, cert_path, key_path))
    ca_cert, cert = _parse_cert(ca_path, ca_pem), _parse_cert(cert_path, cert_pem)
    key = _parse_key(key_path, key_pem)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertError(f"{cert_path} was not issued by the CA in {ca_path}") from None
    if key.public_key() != cert.public_key():
        raise CertError(f"{key_path} is not the private key of {cert_path}")
    now = dt.datetime.now(dt.UTC)
    for path, checked in ((ca_path, ca_cert), (cert_path, cert)):
        if not checked.not_valid_before_utc <= now <= checked.not_valid_after_utc:
            raise CertError(
                f"{path} is valid only from {checked.not_valid_before_utc:%Y-%m-%d %H:%M} "
                f"to {checked.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
    return Identity(name=name, cert_pem=cert_pem, key_pem=key_pem, ca_pem=ca_pem)


def peer_name(auth_context: Mapping[str, Sequence[bytes]]) -> str | None:
    """The peer's certificate common name from ``context.auth_context()``; None without TLS."""
    values = auth_context.get("x509_common_name")
    return values[0].decode("utf-8") if values else None


def peer_certificate(auth_context: Mapping[str, Sequence[bytes]]) -> bytes | None:
    """The peer's certificate (DER) from ``context.auth_context()``; None without TLS."""
    values = auth_context.get("x509_pem_cert")
    if not values:
        return None
    return x509.load_pem_x509_certificate(values[0]).public_bytes(serialization.Encoding.DER)


def signing_key(identity: Identity) -> ec.EllipticCurvePrivateKey:
    """The identity's certificate key, which also signs its SecAgg+ key adverts."""
    return _parse_key(Path(f"{identity.name}.key"), identity.key_pem)


def verified_client_key(der: bytes, ca_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The public key of a peer client's certificate (DER), once it is checked: issued
    by the CA, valid now, a client certificate named ``client-N``. This is how a client
    attributes a neighbour's signed SecAgg+ keys to a real client of the deployment."""
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature):
        raise CertError("peer certificate is malformed or not issued by the CA") from None
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertError("peer certificate is not valid now")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not CLIENT_NAME.match(str(names[0].value)):
        raise CertError(f"peer certificate is not a client's: {cert.subject.rfc4514_string()}")
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = []
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise CertError("peer certificate is not issued for client authentication")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CertError("peer certificate does not hold an EC key")
    return key


def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    """TLS credentials for a server that admits only clients with a certificate from the CA."""
    return grpc.ssl_server_credentials(
        [(identity.key_pem, identity.cert_pem)],
        root_certificates=identity.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    """TLS credentials for a client that presents its certificate and trusts only the CA."""
    return grpc.ssl_channel_credentials(
        root_certificates=identity.ca_pem,
        private_key=identity.key_pem,
        certificate_chain=identity.cert_pem,
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or not host.isascii():
        raise CertError(f"host {host!r} is neither an IP address nor an ASCII DNS name")
    return x509.DNSName(host)


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name) or name.lower() == "ca":
        raise CertError(
            f"certificate name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, and not 'ca'"
        )


def _check_days(days: int) -> None:
    if days < 1:
        raise CertError(f"days must be at least 1, got {days}")


def _refuse_overwrite(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise CertError(f"refusing to overwrite {', '.join(existing)} (use --force to replace)")


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if not cert_path.is_file() or not key_path.is_file():
        raise CertError(f"no CA in {directory}: run `fedloom certs init {directory}` first")
    cert = _parse_cert(cert_path, _read(cert_path))
    key = _parse_key(key_path, _read(key_path))
    if key.public_key() != cert.public_key():
        raise CertError(f"{key_path} is not the private key of {cert_path}")
    return cert, key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CertError(f"cannot read {path}: {err.strerror}") from None


def _parse_cert(path: Path, pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise CertError(f"{path} is not a PEM certificate") from None


def _parse_key(path: Path, pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise CertError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{path} holds a {type(key).__name__}, not an ECDSA key")
    return key


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    """Write the key (owner-only before it appears under its name), then the certificate."""
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    _write(key_path, key_pem, 0o600)
    _write(cert_path, cert_pem, 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    def write(fh: IO[bytes]) -> None:
        os.fchmod(fh.fileno(), mode)
        fh.write(data)

    atomic_write(path, write)
