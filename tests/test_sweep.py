"""fedloom sweep: the grid of --set values, one run per point in a fresh folder, a strict
JSON table and the comparison plots; a second sweep never overwrites the first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedloom.assemble import start_simulation
from fedloom.cli import app
from fedloom.config import RunConfig
from fedloom.errors import ConfigError, FedloomError, RunInterrupted
from fedloom.runs import RunDirectory
from fedloom.sweep import grid, parse_axes, run_sweep, split_values

runner = CliRunner()


def strict_loads(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("0.01,0.1", ["0.01", "0.1"]),
        ("[64,32],[128]", ["[64,32]", "[128]"]),
        ('"a,b.csv","c.csv"', ['"a,b.csv"', '"c.csv"']),
        ("{a = 1, b = 2},{a = 3}", ["{a = 1, b = 2}", "{a = 3}"]),
        ("inf", ["inf"]),
    ],
)
def test_values_split_at_top_level_commas(text: str, parts: list[str]) -> None:
    assert split_values(text) == parts


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (["client.lr"], "expected key=value"),
        (["client.lr=0.1,,0.2"], "an empty value"),
        (["client.lr=0.1,0.10"], "a value is given twice"),
        (["client.lr=0.1", "client.lr=0.2"], "the key is given twice"),
        (["model.hidden=[64,32"], "unclosed"),
        (['output_dir="a","b"'], "output_dir cannot be swept"),
    ],
)
def test_bad_axes_are_refused(items: list[str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_axes(items)


def test_the_grid_is_the_cartesian_product_and_every_point_is_checked() -> None:
    axes = parse_axes(["client.lr=0.01,0.1", "model.hidden=[64,32],[8]", "rounds=3"])
    points = grid(None, axes)
    assert [p.settings for p in points] == [
        {"client.lr": 0.01, "model.hidden": [64, 32]},
        {"client.lr": 0.01, "model.hidden": [8]},
        {"client.lr": 0.1, "model.hidden": [64, 32]},
        {"client.lr": 0.1, "model.hidden": [8]},
    ]
    assert [(p.config.client.lr, p.config.model.hidden, p.config.rounds) for p in points][1] == (
        0.01,
        (8,),
        3,
    )
    with pytest.raises(ConfigError, match="sweep point server.clients_per_round=500"):
        grid(None, parse_axes(["partition.num_clients=10", "server.clients_per_round=5,500"]))


def test_sweep_writes_runs_table_and_plots_and_never_overwrites(tmp_path: Path) -> None:
    common = [
        "--set",
        f'output_dir="{tmp_path}"',
        "--set",
        "rounds=2",
        "--set",
        "partition.num_clients=10",
        "--set",
        "server.clients_per_round=5",
    ]
    first = runner.invoke(app, ["sweep", *common, "--set", "client.lr=0.05,0.2"])
    assert first.exit_code == 0, first.output
    folder = tmp_path / "sweeps" / "digits-fedavg"
    text = (folder / "sweep.json").read_text()
    table = strict_loads(text)
    assert table["complete"] and table["differing"] == ["client.lr"]
    assert table["axes"]["client.lr"] == [0.05, 0.2]
    assert [p["settings"] for p in table["points"]] == [{"client.lr": 0.05}, {"client.lr": 0.2}]
    for point in table["points"]:
        run = Path(point["run"])
        assert run.parent == folder and (run / "metrics.jsonl").is_file()
        assert point["rounds"] == 2 and point["metric"] == "accuracy" and point["error"] is None
        assert 0 <= point["final"] <= 1 and point["bytes_total"] > 0
    for png in ("compare_rounds.png", "compare_time.png", "compare_bytes.png"):
        assert (folder / png).stat().st_size > 5000
    assert "client.lr=0.05" in first.output

    compared = runner.invoke(app, ["compare", str(folder)])  # a sweep's folder: its runs
    assert compared.exit_code == 0, compared.output
    rows = strict_loads((folder / "comparisons" / "comparison" / "comparison.json").read_text())
    assert [r["run"] for r in rows["runs"]] == [p["run"] for p in table["points"]]

    second = runner.invoke(app, ["sweep", *common, "--set", "client.lr=0.1"])
    assert second.exit_code == 0, second.output
    assert (folder / "sweep.json").read_text() == text, "the first sweep is left as it was"
    again = strict_loads((tmp_path / "sweeps" / "digits-fedavg-2" / "sweep.json").read_text())
    assert len(again["points"]) == 1 and again["points"][0]["settings"] == {}


def test_a_refused_point_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    axes = parse_axes(
        [
            f'output_dir="{tmp_path}"',
            "rounds=1",
            "partition.num_clients=10",
            "seed=1,2",
            'tracking.backends=["tensorboard"]',
        ]
    )
    points = grid(None, axes)

    def refuse_seed_one(config: RunConfig):  # noqa: ANN202 - a Simulation
        if config.seed == 1:
            raise FedloomError("over the privacy budget")
        return start_simulation(config)

    result = run_sweep(points, tmp_path / "sweeps", "s", runner=refuse_seed_one)
    assert [r["error"] for r in result.rows] == ["over the privacy budget", None]
    table = strict_loads(result.table.read_text())
    assert table["points"][0]["run"] is None and table["points"][1]["rounds"] == 1
    tracked = RunDirectory.open(Path(table["points"][1]["run"])).load_config().tracking
    assert tracked.mlflow_experiment == "s" and tracked.wandb_project == "s"  # the sweep's
    assert [p.name for p in result.plots] == [
        "compare_rounds.png",
        "compare_time.png",
        "compare_bytes.png",
    ]


def test_an_interrupted_point_stops_the_sweep(tmp_path: Path) -> None:
    points = grid(None, parse_axes([f'output_dir="{tmp_path}"', "seed=1,2"]))

    def interrupted(config: RunConfig):  # noqa: ANN202 - a Simulation
        raise RunInterrupted("SIGINT", 3, tmp_path)

    with pytest.raises(RunInterrupted):
        run_sweep(points, tmp_path / "sweeps", "s", runner=interrupted)
    table = strict_loads((tmp_path / "sweeps" / "s" / "sweep.json").read_text())
    assert table["complete"] is False and table["points"] == []
