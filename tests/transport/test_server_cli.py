"""`fedloom server` / `client` / `certs issue` refuse what cannot work in one line (exit
status 2), before a run directory exists: an impossible port, a host that is not one, a
port in use, more --min-clients than clients; a client handed the CA's key."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedloom.cli import app
from fedloom.transport.certs import init_ca, issue

runner = CliRunner()


def server(tmp_path: Path, *args: str):  # noqa: ANN201
    certs = tmp_path / "certs"
    if not certs.exists():
        init_ca(certs)
        issue(certs, "server", kind="server")
    return runner.invoke(
        app,
        [
            "server",
            "--set",
            f'output_dir="{tmp_path / "runs"}"',
            "--set",
            "partition.num_clients=3",
            "--set",
            "server.clients_per_round=3",
            "--certs",
            str(certs),
            *args,
        ],
    )


def one_line_error(result) -> str:  # noqa: ANN001
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--port", "70000"], "--port = 70000 must be in 0..65535"),
        (["--host", "not_a_host!"], "--host = 'not_a_host!' is neither an IP address"),
        (["--min-clients", "4"], "--min-clients = 4 exceeds the 3 registered clients"),
    ],
)
def test_impossible_server_settings_fail_in_one_line(
    tmp_path: Path, args: list[str], match: str
) -> None:
    assert match in one_line_error(server(tmp_path, *args))
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_a_bad_eval_set_or_no_model_shape_fails_in_one_line(tmp_path: Path) -> None:
    """The server holds no client data: a central evaluation set it cannot use, or a
    config that gives no model shape, is refused before a run directory exists."""
    missing = tmp_path / "missing.npz"
    assert "file not found" in one_line_error(server(tmp_path, "--eval-data", str(missing)))
    no_shape = ["--set", 'data.source="file"', "--set", 'data.path="/nonexistent.csv"']
    text = one_line_error(server(tmp_path, "--port", "0", *no_shape))
    assert "set model.num_features (or model.input_shape) and model.num_classes" in text
    assert not (tmp_path / "runs").exists()


def test_a_port_in_use_fails_in_one_line_and_leaves_no_run(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = one_line_error(server(tmp_path, "--port", str(port)))
    assert f"cannot listen on 127.0.0.1:{port}" in text and "in use" in text
    assert not (tmp_path / "runs").exists()


def test_certs_issue_writes_a_bundle_and_a_client_refuses_the_ca_folder(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert runner.invoke(app, ["certs", "init", str(certs)]).exit_code == 0
    result = runner.invoke(app, ["certs", "issue", "client-000001", "--dir", str(certs)])
    assert result.exit_code == 0, result.output
    assert "bundle" in result.output
    bundle = certs / "client-000001"
    assert sorted(p.name for p in bundle.iterdir()) == [
        "ca.pem",
        "client-000001.key",
        "client-000001.pem",
    ]
    refused = runner.invoke(
        app,
        ["client", "--server", "127.0.0.1:1", "--data", str(tmp_path / "client-000001")]
        + ["--certs", str(certs)],
    )
    assert "holds the CA's private key (ca.key)" in one_line_error(refused)


def test_a_port_held_by_another_grpc_server_is_not_shared() -> None:
    """gRPC binds with SO_REUSEPORT by default: a second server on the same port would
    silently share it (and half the clients' calls) with the first."""
    from fedloom.errors import FedloomError
    from fedloom.transport.server import ServerOptions, listen

    first, port = listen(ServerOptions(port=0, insecure=True))
    first.start()
    try:
        with pytest.raises(FedloomError, match=f"cannot listen on 127.0.0.1:{port}"):
            listen(ServerOptions(port=port, insecure=True))
    finally:
        first.stop(None)
