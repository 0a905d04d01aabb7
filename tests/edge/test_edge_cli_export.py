"""``fedloom export RUN_DIR`` on a real (tiny) run directory."""

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

import fedloom
from fedloom.cli_export import export

runner = CliRunner()
app = typer.Typer()
app.command("export")(export)
app.command("noop")(lambda: None)  # two commands: `export` is named, as in the real CLI


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = {"output_dir": str(out), "name": "tiny", "rounds": 2, "seed": 1}
    summary = fedloom.simulate(config, progress=False)
    return summary.path


def test_export_writes_artifacts_and_report(run_dir, tmp_path):
    out = tmp_path / "edge"
    result = runner.invoke(
        app, ["export", str(run_dir), "--int8", "--out", str(out), "--prune", "0.5"]
    )
    assert result.exit_code == 0, result.output
    for name in ("model.pt", "model_int8.pt", "model.onnx", "model_int8.onnx", "report.json"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert [a["name"] for a in report["artifacts"]] == [
        "torch",
        "torch-int8",
        "torchscript",
        "torchscript-int8",
        "onnx",
        "onnx-int8",
    ]
    assert report["onnx_max_abs_diff"] <= 1e-4
    assert report["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert all(a["accuracy"] is not None for a in report["artifacts"])
    assert "pruned: sparsity 0.500" in result.output
    assert "int8 dynamic" in result.output and "wrote" in result.output


def test_export_onnx_only_into_the_run_directory(run_dir):
    result = runner.invoke(app, ["export", str(run_dir), "--onnx"])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (run_dir / "export").iterdir())
    assert written == ["model.onnx", "report.json"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["/nonexistent/run"], "not a run directory"),
        (["RUN", "--prune", "1.5"], "--prune"),
        (["RUN", "--backend", "arm"], "--backend"),
    ],
)
def test_bad_input_is_one_line(run_dir, args, needle):
    args = [str(run_dir) if a == "RUN" else a for a in args]
    result = runner.invoke(app, ["export", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines


def test_run_without_checkpoint_is_one_line(run_dir, tmp_path):
    empty = tmp_path / "run"
    empty.mkdir()
    (empty / "config.toml").write_text((run_dir / "config.toml").read_text())
    result = runner.invoke(app, ["export", str(empty)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and "checkpoint" in result.output
    assert len(result.output.strip().splitlines()) == 1
