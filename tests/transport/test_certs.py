"""The mTLS certificate authority: what it writes, what it refuses, and a real gRPC handshake."""

import datetime as dt
import ipaddress
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from fedloom.cli_certs import certs_app
from fedloom.errors import FedloomError
from fedloom.transport.certs import (
    CertError,
    Identity,
    channel_credentials,
    init_ca,
    issue,
    load_identity,
    peer_certificate,
    peer_name,
    server_credentials,
    signing_key,
    verified_client_key,
)

runner = CliRunner()


def cert_of(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode_of(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca_dir(tmp_path):
    init_ca(tmp_path / "certs")
    return tmp_path / "certs"


def test_ca_is_a_self_signed_signing_only_ca(tmp_path):
    cert_path = init_ca(tmp_path / "a" / "b", common_name="test CA")
    assert cert_path == tmp_path / "a" / "b" / "ca.pem"
    ca = cert_of(cert_path)
    ca.verify_directly_issued_by(ca)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test CA"
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert isinstance(ca.public_key().curve, ec.SECP256R1)
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    key = serialization.load_pem_private_key((cert_path.parent / "ca.key").read_bytes(), None)
    assert key.public_key() == ca.public_key()
    assert mode_of(cert_path.parent / "ca.key") == 0o600


def test_client_certificate_names_the_client(ca_dir):
    cert_path, key_path = issue(ca_dir, "client-000003")
    assert (cert_path, key_path) == (ca_dir / "client-000003.pem", ca_dir / "client-000003.key")
    cert = cert_of(cert_path)
    cert.verify_directly_issued_by(cert_of(ca_dir / "ca.pem"))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "client-000003"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName("client-000003")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert mode_of(key_path) == 0o600


def test_server_certificate_names_its_hosts(ca_dir):
    cert_path, _ = issue(ca_dir, "server", kind="server", hosts=["10.0.0.7", "::1", "fl.example"])
    cert = cert_of(cert_path)
    cert.verify_directly_issued_by(cert_of(ca_dir / "ca.pem"))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["fl.example"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_existing_files_are_kept_unless_forced(ca_dir):
    ca_before = (ca_dir / "ca.pem").read_bytes()
    with pytest.raises(CertError, match="ca.pem"):
        init_ca(ca_dir)
    assert (ca_dir / "ca.pem").read_bytes() == ca_before
    issue(ca_dir, "client-000001")
    client_before = (ca_dir / "client-000001.pem").read_bytes()
    with pytest.raises(CertError, match="client-000001.pem"):
        issue(ca_dir, "client-000001")
    assert (ca_dir / "client-000001.pem").read_bytes() == client_before

    issue(ca_dir, "client-000001", force=True)
    assert (ca_dir / "client-000001.pem").read_bytes() != client_before
    init_ca(ca_dir, force=True)
    assert (ca_dir / "ca.pem").read_bytes() != ca_before
    assert mode_of(ca_dir / "ca.key") == 0o600


@pytest.mark.parametrize("name", ["", "-client", "a/b", "../x", "client 1", "x" * 65, "ca", "CA"])
def test_bad_names_are_refused(ca_dir, name):
    with pytest.raises(CertError, match="certificate name") as info:
        issue(ca_dir, name)
    assert repr(name) in str(info.value)
    assert isinstance(info.value, FedloomError)
    with pytest.raises(CertError, match="certificate name"):
        load_identity(ca_dir, name)


def test_bad_hosts_and_days_are_refused(ca_dir):
    with pytest.raises(CertError, match="at least one host"):
        issue(ca_dir, "server", kind="server", hosts=[])
    with pytest.raises(CertError, match="'bücher.example'"):
        issue(ca_dir, "server", kind="server", hosts=["bücher.example"])
    with pytest.raises(CertError, match="days"):
        issue(ca_dir, "client-000001", days=0)
    assert not (ca_dir / "server.pem").exists()


def test_missing_ca_says_to_run_init(tmp_path):
    with pytest.raises(CertError, match=r"run `fedloom certs init .*nowhere` first"):
        issue(tmp_path / "nowhere", "client-000001")


def test_load_identity_round_trips(ca_dir):
    issue(ca_dir, "client-000002")
    identity = load_identity(ca_dir, "client-000002")
    assert identity == Identity(
        name="client-000002",
        cert_pem=(ca_dir / "client-000002.pem").read_bytes(),
        key_pem=(ca_dir / "client-000002.key").read_bytes(),
        ca_pem=(ca_dir / "ca.pem").read_bytes(),
    )


def test_load_identity_names_missing_and_corrupt_files(ca_dir):
    with pytest.raises(CertError, match="client-000009.pem"):
        load_identity(ca_dir, "client-000009")
    issue(ca_dir, "client-000001")
    (ca_dir / "client-000001.key").write_bytes(b"not a key")
    with pytest.raises(CertError, match="client-000001.key"):
        load_identity(ca_dir, "client-000001")
    (ca_dir / "ca.pem").write_bytes(b"garbage")
    with pytest.raises(CertError, match="ca.pem"):
        load_identity(ca_dir, "client-000001")


def test_load_identity_refuses_a_certificate_from_another_ca(tmp_path, ca_dir):
    issue(ca_dir, "client-000001")
    init_ca(tmp_path / "other")
    issue(tmp_path / "other", "client-000001")
    for suffix in (".pem", ".key"):
        name = "client-000001" + suffix
        (ca_dir / name).write_bytes((tmp_path / "other" / name).read_bytes())
    with pytest.raises(CertError, match="not issued by the CA"):
        load_identity(ca_dir, "client-000001")


def test_load_identity_refuses_an_expired_certificate(ca_dir):
    ca = cert_of(ca_dir / "ca.pem")
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    expired = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client-000001")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
        .sign(ca_key, hashes.SHA256())
    )
    (ca_dir / "client-000001.pem").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    (ca_dir / "client-000001.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(CertError, match=r"client-000001.pem is valid only from 2000-01-01"):
        load_identity(ca_dir, "client-000001")


def test_peer_name_reads_the_common_name():
    assert peer_name({"x509_common_name": [b"client-000001"]}) == "client-000001"
    assert peer_name({"transport_security_type": [b"insecure"]}) is None


# -- a real mutual-TLS handshake over 127.0.0.1 ---------------------------------------------

_METHOD = "/fedloom.test.Echo/Who"


@contextmanager
def echo_server(
    seen: list[str | None], credentials: grpc.ServerCredentials | None
) -> Iterator[int]:
    """Serve one method that records the caller's name; insecure when ``credentials`` is None."""

    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        name = peer_name(context.auth_context())
        seen.append(name)
        return request + b" from " + str(name).encode()

    handler = grpc.method_handlers_generic_handler(
        "fedloom.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        server = grpc.server(pool, handlers=[handler])
        if credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", credentials)
        server.start()
        try:
            yield port
        finally:
            server.stop(None)


def call(port: int, credentials: grpc.ChannelCredentials) -> bytes:
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        return channel.unary_unary(_METHOD)(b"hello", timeout=30)


@pytest.fixture
def pki(ca_dir):
    issue(ca_dir, "server", kind="server")
    issue(ca_dir, "client-000001")
    return ca_dir


def test_client_with_a_certificate_is_admitted_and_named(pki):
    seen: list[str | None] = []
    with echo_server(seen, server_credentials(load_identity(pki, "server"))) as port:
        reply = call(port, channel_credentials(load_identity(pki, "client-000001")))
    assert reply == b"hello from client-000001"
    assert seen == ["client-000001"]


def test_client_without_a_certificate_is_refused(pki):
    seen: list[str | None] = []
    ca_only = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
    with echo_server(seen, server_credentials(load_identity(pki, "server"))) as port:
        with pytest.raises(grpc.RpcError) as info:
            call(port, ca_only)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert seen == []


def test_client_from_another_ca_is_refused(tmp_path, pki):
    init_ca(tmp_path / "rogue")
    issue(tmp_path / "rogue", "client-000001")
    rogue = load_identity(tmp_path / "rogue", "client-000001")
    # The rogue client trusts the real CA, so only the server's check can stop it.
    rogue = Identity(rogue.name, rogue.cert_pem, rogue.key_pem, (pki / "ca.pem").read_bytes())
    seen: list[str | None] = []
    with echo_server(seen, server_credentials(load_identity(pki, "server"))) as port:
        with pytest.raises(grpc.RpcError) as info:
            call(port, channel_credentials(rogue))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert seen == []


def test_insecure_channel_has_no_peer_name():
    seen: list[str | None] = []
    with echo_server(seen, None) as port:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary(_METHOD)(b"hi", timeout=30) == b"hi from None"
    assert seen == [None]


# -- the command line -----------------------------------------------------------------------


def test_cli_init_and_issue(tmp_path):
    certs = tmp_path / "certs"
    result = runner.invoke(certs_app, ["init", str(certs)])
    assert result.exit_code == 0, result.output
    assert str(certs / "ca.pem") in result.output and str(certs / "ca.key") in result.output

    result = runner.invoke(
        certs_app, ["issue", "server", "--dir", str(certs), "--server", "--host", "10.1.2.3"]
    )
    assert result.exit_code == 0, result.output
    assert str(certs / "server.pem") in result.output
    san = cert_of(certs / "server.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]

    result = runner.invoke(certs_app, ["issue", "client-000004", "--dir", str(certs)])
    assert result.exit_code == 0, result.output
    assert load_identity(certs, "client-000004").name == "client-000004"
    assert mode_of(certs / "client-000004.key") == 0o600


def test_cli_defaults_to_the_certs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(certs_app, ["init"]).exit_code == 0
    assert runner.invoke(certs_app, ["issue", "server", "--server"]).exit_code == 0
    san = cert_of(tmp_path / "certs" / "server.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]


def test_cli_errors_are_one_line_with_status_2(tmp_path):
    certs = tmp_path / "certs"
    missing = runner.invoke(certs_app, ["issue", "client-000001", "--dir", str(certs)])
    assert missing.exit_code == 2
    assert missing.output.startswith("error: no CA in")
    assert missing.output.count("\n") == 1

    assert runner.invoke(certs_app, ["init", str(certs)]).exit_code == 0
    again = runner.invoke(certs_app, ["init", str(certs)])
    assert again.exit_code == 2 and "--force" in again.output
    assert runner.invoke(certs_app, ["init", str(certs), "--force"]).exit_code == 0

    host_without_server = runner.invoke(
        certs_app, ["issue", "client-000001", "--dir", str(certs), "--host", "10.0.0.1"]
    )
    assert host_without_server.exit_code == 2 and "--server" in host_without_server.output
    bad = runner.invoke(certs_app, ["issue", "bad/name", "--dir", str(certs)])
    assert bad.exit_code == 2 and "'bad/name'" in bad.output


def test_a_neighbour_certificate_is_trusted_only_from_the_ca_and_for_a_client(tmp_path, ca_dir):
    issue(ca_dir, "client-000001")
    issue(ca_dir, "server", kind="server")
    issue(ca_dir, "mallory")
    init_ca(tmp_path / "other")
    issue(tmp_path / "other", "client-000001")
    ca_pem = (ca_dir / "ca.pem").read_bytes()

    def der(directory, name):  # noqa: ANN001, ANN202
        return cert_of(directory / f"{name}.pem").public_bytes(serialization.Encoding.DER)

    key = verified_client_key(der(ca_dir, "client-000001"), ca_pem)
    assert key == cert_of(ca_dir / "client-000001.pem").public_key()
    identity = load_identity(ca_dir, "client-000001")
    assert signing_key(identity).public_key() == key  # it signs what neighbours verify
    with pytest.raises(CertError, match="not issued by the CA"):
        verified_client_key(der(tmp_path / "other", "client-000001"), ca_pem)
    with pytest.raises(CertError, match="not a client's"):
        verified_client_key(der(ca_dir, "mallory"), ca_pem)
    with pytest.raises(CertError, match="not a client's"):
        verified_client_key(der(ca_dir, "server"), ca_pem)
    with pytest.raises(CertError, match="malformed"):
        verified_client_key(b"\x30\x03junk", ca_pem)
    assert peer_certificate({}) is None  # no TLS session, no certificate
