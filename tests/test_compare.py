"""fedloom compare: several runs in one figure and one table, labelled by the config keys
that differ; runs whose tasks have different metrics; folders never overwritten."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedloom.cli import app
from fedloom.compare import differing, load_runs, summarize, write_comparison
from fedloom.config import load_config
from fedloom.console import strict
from fedloom.errors import ConfigError
from fedloom.runs import RunDirectory

runner = CliRunner()


def strict_loads(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def task(metric: str, maximize: bool) -> dict:
    return {
        "name": "mlp",
        "reference": None,
        "targets": "classes" if maximize else "values",
        "loss": "cross_entropy" if maximize else "mse",
        "metrics": [metric],
        "maximize": [metric] if maximize else [],
        "input_shape": [4],
        "num_classes": 2 if maximize else None,
        "outputs": 2 if maximize else 1,
        "parameters": 10,
        "flops": 20,
        "activation_bytes": 8,
    }


def fake_run(root: Path, name: str, settings: list[str], metric: str, values: list[float]) -> Path:
    """A run directory with records as a run writes them (no training: fast)."""
    cfg = load_config(None, [f'output_dir="{root}"', f'name="{name}"', *settings])
    run = RunDirectory.create(cfg)
    maximize = metric == "accuracy"
    start = {"event": "start", "round": 0, "task": task(metric, maximize), "loss": 2.0}
    run.append({**start, metric: values[0]})
    for i, v in enumerate(values[1:], start=1):
        run.append(
            {
                "event": "round",
                "round": i,
                "status": "aggregated",
                metric: v,
                "loss": 2.0 / (i + 1),
                "bytes_up": 1000 * i,
                "bytes_down": 4000,
                "virtual_time": 10.0 * i,
                "wall_s": 0.5,
            }
        )
    run.append({"event": "stop", "round": len(values) - 1, "reason": "max_rounds", "detail": ""})
    return run.path


def test_runs_compare_on_the_keys_that_differ(tmp_path: Path) -> None:
    a = fake_run(tmp_path, "a", ["client.lr=0.1"], "accuracy", [0.1, 0.5, 0.7])
    b = fake_run(tmp_path, "b", ["client.lr=0.3", "seed=4"], "accuracy", [0.1, 0.6, 0.65])
    result = runner.invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "comparisons" / "comparison"
    table = strict_loads((folder / "comparison.json").read_text())
    assert table["differing"] == ["client.lr", "seed"]
    assert [r["label"] for r in table["runs"]] == ["client.lr=0.1, seed=0", "client.lr=0.3, seed=4"]
    assert [r["final"] for r in table["runs"]] == [0.7, 0.65]
    assert [(r["best"], r["best_round"]) for r in table["runs"]] == [(0.7, 2), (0.65, 2)]
    assert [r["bytes_total"] for r in table["runs"]] == [11000, 11000]
    for png in ("compare_rounds.png", "compare_time.png", "compare_bytes.png"):
        assert (folder / png).stat().st_size > 5000, png
    assert "client.lr, seed" in result.output
    # a second comparison never overwrites the first
    again = runner.invoke(app, ["compare", str(a), str(b), "--name", "comparison"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "comparisons" / "comparison-2" / "comparison.json").is_file()
    out = tmp_path / "mine"
    runner.invoke(app, ["compare", str(a), str(b), "--out", str(out)])
    runner.invoke(app, ["compare", str(a), str(b), "--out", str(out)])
    assert (out / "comparison.json").is_file() and (out.parent / "mine-2").is_dir()


def test_runs_with_different_metrics_get_a_panel_each(tmp_path: Path) -> None:
    a = fake_run(tmp_path, "cls", [], "accuracy", [0.2, 0.8])
    b = fake_run(tmp_path, "reg", ["client.lr=0.2"], "mse", [4.0, 1.0, 0.5])
    runs = load_runs([a, b])
    result = write_comparison(runs, tmp_path / "out")
    assert [r["metric"] for r in result.rows] == ["accuracy", "mse"]
    assert [r["maximize"] for r in result.rows] == [True, False]
    assert [r["best"] for r in result.rows] == [0.8, 0.5]  # mse: the lowest is best
    assert {p.name for p in result.plots} == {
        "compare_rounds.png",
        "compare_time.png",
        "compare_bytes.png",
    }
    assert "client.lr" in result.keys and "name" not in result.keys


def test_a_run_without_virtual_time_or_bytes_is_plotted_by_round_only(tmp_path: Path) -> None:
    cfg = load_config(None, [f'output_dir="{tmp_path}"'])
    run = RunDirectory.create(cfg)
    run.append({"event": "start", "round": 0, "task": task("accuracy", True), "accuracy": 0.1})
    run.append({"event": "round", "round": 1, "status": "aggregated", "accuracy": 0.4})
    result = write_comparison(load_runs([run.path]), tmp_path / "out")
    assert [p.name for p in result.plots] == ["compare_rounds.png"]
    facts = result.rows[0]
    assert facts["bytes_total"] is None and facts["virtual_time"] is None
    assert facts["stop_reason"] == "unfinished" and facts["label"] == run.path.name


def test_bad_input_is_refused(tmp_path: Path) -> None:
    a = fake_run(tmp_path, "a", [], "accuracy", [0.1, 0.5])
    with pytest.raises(ConfigError, match="given twice"):
        load_runs([a, a])
    with pytest.raises(ConfigError, match="at least one"):
        load_runs([])
    result = runner.invoke(app, ["compare", str(a), str(tmp_path)])
    assert result.exit_code == 2 and "no config.toml" in result.output


def test_differing_keys_and_strict_json() -> None:
    assert differing([{"a": 1, "b": 2, "name": "x"}, {"a": 1, "b": 3, "name": "y"}]) == ["b"]
    assert differing([{"a": 1}, {"a": 1, "c": [1]}]) == ["c"]  # missing in one: differs
    assert strict({"e": math.inf, "m": -math.inf, "n": math.nan, "l": [1.5]}) == {
        "e": "inf",
        "m": "-inf",
        "n": None,
        "l": [1.5],
    }
    empty = summarize([{"event": "start", "round": 0}])
    assert math.isnan(empty.final) and empty.rounds == 0


def test_the_table_fits_80_columns_with_a_column_per_differing_setting(tmp_path: Path) -> None:
    from rich.console import Console

    from fedloom.cli_compare import outcome_table

    runs = [
        fake_run(
            tmp_path,
            f"r{i}",
            [f"client.lr={lr}", f"server.clients_per_round={k}"],
            "accuracy",
            [0.1, v],
        )
        for i, (lr, k, v) in enumerate([(0.03, 10, 0.5), (0.1, 20, 0.75)])
    ]
    result = write_comparison(load_runs(runs), tmp_path / "c", "two")
    console = Console(width=80, record=True)
    console.print(outcome_table("two", result.rows))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    lines = [line.split() for line in text.splitlines()]
    assert ["0.03", "10", "0.5", "0.5", "(1)"] == lines[-3][:5]  # lr, clients, final, best
    assert "max_rounds" in text and "accuracy" in text
