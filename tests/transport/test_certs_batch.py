"""``fedloom certs issue --clients N``: every client of a deployment gets its certificate
and bundle in one command, all or none."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fedloom.cli_certs import certs_app
from fedloom.transport.certs import CLIENT_NAME, load_identity

runner = CliRunner()


def init(tmp_path: Path) -> Path:
    certs = tmp_path / "certs"
    assert runner.invoke(certs_app, ["init", str(certs)]).exit_code == 0
    return certs


def test_clients_n_issues_every_client_with_its_bundle(tmp_path: Path) -> None:
    certs = init(tmp_path)
    result = runner.invoke(certs_app, ["issue", "--clients", "3", "--dir", str(certs)])
    assert result.exit_code == 0, result.output
    assert "3 client certificates client-000000 to client-000002" in result.output
    for i in range(3):
        name = f"client-{i:06d}"
        assert CLIENT_NAME.match(name)  # the name the server maps to partition client i
        assert load_identity(certs, name).name == name
        bundle = certs / name
        assert sorted(p.name for p in bundle.iterdir()) == ["ca.pem", f"{name}.key", f"{name}.pem"]
        assert load_identity(bundle, name).name == name  # what the device is given
    assert not (certs / "client-000003.pem").exists()


def test_first_extends_a_batch_and_an_overlap_issues_nothing(tmp_path: Path) -> None:
    certs = init(tmp_path)
    assert runner.invoke(certs_app, ["issue", "--clients", "2", "--dir", str(certs)]).exit_code == 0
    before = (certs / "client-000001.pem").read_bytes()
    overlap = runner.invoke(
        certs_app, ["issue", "--clients", "3", "--first", "1", "--dir", str(certs)]
    )
    assert overlap.exit_code == 2
    assert "client-000001.pem exists" in overlap.output and "--first 2" in overlap.output
    assert not (certs / "client-000002.pem").exists()  # refused before issuing any
    assert (certs / "client-000001.pem").read_bytes() == before
    more = runner.invoke(
        certs_app, ["issue", "--clients", "2", "--first", "2", "--dir", str(certs)]
    )
    assert more.exit_code == 0, more.output
    assert load_identity(certs, "client-000003").name == "client-000003"
    forced = runner.invoke(certs_app, ["issue", "--clients", "2", "--dir", str(certs), "--force"])
    assert forced.exit_code == 0 and (certs / "client-000001.pem").read_bytes() != before


def test_clients_with_a_name_or_server_or_nothing_is_refused(tmp_path: Path) -> None:
    certs = init(tmp_path)
    for args in (["client-000001", "--clients", "2"], ["--server", "--clients", "2"], []):
        result = runner.invoke(certs_app, ["issue", *args, "--dir", str(certs)])
        assert result.exit_code == 2, args
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, args
    zero = runner.invoke(certs_app, ["issue", "--clients", "0", "--dir", str(certs)])
    assert zero.exit_code == 2 and "--clients" in zero.output
