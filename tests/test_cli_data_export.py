"""``fedloom data export OUT`` never writes into a folder holding something else: a
non-empty OUT is refused, ``--force`` replaces an earlier export (no stale client folder
survives) and still refuses files an export did not write."""

from __future__ import annotations

from pathlib import Path

from cli_errors import one_line_error, runner

from fedloom.cli import app
from fedloom.data.storage import read_partition


def export_args(out: Path, clients: int) -> list[str]:
    return [
        "data",
        "export",
        str(out),
        "--set",
        f"partition.num_clients={clients}",
        "--set",
        "server.clients_per_round=2",
    ]


def export(out: Path, clients: int, *extra: str):  # noqa: ANN201 - click's Result
    return runner.invoke(app, [*export_args(out, clients), *extra])


def test_into_an_existing_empty_folder(tmp_path):
    (tmp_path / "clients").mkdir()
    assert export(tmp_path / "clients", 3).exit_code == 0


def test_a_second_export_is_refused_without_force(tmp_path):
    out = tmp_path / "clients"
    assert export(out, 6).exit_code == 0
    one_line_error([*export_args(out, 3)], "not empty", "--force")
    assert read_partition(out)[0].num_clients == 6  # untouched


def test_force_replaces_the_earlier_export_without_stale_folders(tmp_path):
    out = tmp_path / "clients"
    assert export(out, 6).exit_code == 0
    result = export(out, 3, "--force")
    assert result.exit_code == 0, result.output
    assert "removed 6 client folders" in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "client-000000",
        "client-000001",
        "client-000002",
        "manifest.json",
    ]
    assert read_partition(out)[0].num_clients == 3


def test_force_refuses_foreign_files(tmp_path):
    out = tmp_path / "clients"
    assert export(out, 3).exit_code == 0
    (out / "notes.txt").write_text("mine")
    (out / "client-000001" / "state.npz").write_bytes(b"client state")
    line = one_line_error(
        [*export_args(out, 2), "--force"],
        "did not write",
    )
    assert "notes.txt" in line and "state.npz" in line
    assert (out / "notes.txt").exists() and (out / "client-000002").is_dir()  # nothing removed
