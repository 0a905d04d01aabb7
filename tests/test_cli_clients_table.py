"""``fedloom clients RUN_DIR``: a table that fits 80 columns (no header cut short),
``--columns`` to choose, ``--csv`` and ``--json`` for other programs, the plots kept."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from cli_errors import one_line_error, runner

from fedloom.cli import DEFAULT_CLIENT_COLUMNS, app
from fedloom.console import console


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("clients")
    args = ["run", "--quiet"]
    for item in [
        f'output_dir="{out}"',
        "rounds=2",
        "partition.num_clients=12",
        "server.clients_per_round=4",
        "model.hidden=[8]",
        "client.local_epochs=1",
    ]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out / "digits-fedavg"


@pytest.fixture
def width_80(monkeypatch):
    monkeypatch.setattr(console, "_width", 80)


def test_default_table_fits_80_columns(run_dir, width_80):
    result = runner.invoke(app, ["clients", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("id"))
    assert lines[start].split() == list(DEFAULT_CLIENT_COLUMNS)
    table = lines[start : next(i for i, line in enumerate(lines) if line.startswith("plot:"))]
    assert len(table) == 1 + 12 and max(len(line) for line in table) <= 80
    assert (run_dir / "report" / "clients_participation.png").stat().st_size > 1000


def test_chosen_columns(run_dir, width_80):
    result = runner.invoke(app, ["clients", str(run_dir), "--columns", "id,examples,time_s"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("id"))
    assert header.split() == ["id", "examples", "time_s"]


def test_unknown_column_lists_the_valid_ones(run_dir):
    one_line_error(
        ["clients", str(run_dir), "--columns", "id,speed"], "'speed'", "valid:", "holdout_acc"
    )


def test_csv_on_stdout_has_every_client_and_column(run_dir):
    result = runner.invoke(app, ["clients", str(run_dir), "--csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 12  # every client, not the table's top 20 cut
    assert "holdout_acc" in rows[0] and "reputation" in rows[0]
    selected = [int(r["selected"]) for r in rows]
    assert selected == sorted(selected, reverse=True) and sum(selected) == 2 * 4
    never = [r for r in rows if r["selected"] == "0"]
    assert never and all(r["loss"] == "" for r in never)  # NaN: empty
    assert "plot:" in result.stderr and "plot:" not in result.stdout


def test_json_to_a_file_is_strict(run_dir, tmp_path):
    target = tmp_path / "clients.json"
    result = runner.invoke(
        app, ["clients", str(run_dir), "--json", "--out", str(target), "--top", "3"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    rows = json.loads(target.read_text(), parse_constant=lambda name: pytest.fail(name))
    assert len(rows) == 3 and isinstance(rows[0]["flags"], list)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(["--csv", "--json"], "choose one"), (["--out", "x.csv"], "--out"), (["--top", "-1"], "-1")],
)
def test_bad_output_options(run_dir, extra, needle):
    one_line_error(["clients", str(run_dir), *extra], needle)
