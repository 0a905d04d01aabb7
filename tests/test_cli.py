"""The ``fedloom`` command line, driven as a user would."""

import re

import pytest
import torch
from typer.testing import CliRunner

from fedloom.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def run_dir_of(output: str) -> str:
    match = re.search(r"run directory: (\S+)", output)
    assert match, output
    return match.group(1)


def test_run_prints_summary_and_writes_plots(tmp_path):
    result = runner.invoke(
        app,
        ["run", "--set", f'output_dir="{tmp_path}"', "--set", "rounds=3", "--set", "name=cli"],
    )
    assert result.exit_code == 0, result.output
    assert "final test accuracy" in result.output
    assert "round 3/3" in result.output
    assert (tmp_path / "cli" / "report" / "accuracy.png").stat().st_size > 1000
    assert (tmp_path / "cli" / "report" / "loss.png").stat().st_size > 1000
    assert run_dir_of(result.output) == str(tmp_path / "cli")


def test_run_example_config_with_override(tmp_path):
    result = runner.invoke(
        app,
        [
            "run",
            "examples/digits_iid.toml",
            "--set",
            f'output_dir="{tmp_path}"',
            "--set",
            "rounds=2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "digits-iid" / "config.toml").read_text().count("rounds = 2") == 1


def test_resume_from_cli(tmp_path):
    first = runner.invoke(app, ["run", "--set", f'output_dir="{tmp_path}"', "--set", "rounds=2"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["run", "--resume", run_dir_of(first.output)])
    assert again.exit_code == 0, again.output
    assert "round 2/2" in again.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "missing.toml"], "does not exist"),
        (["run", "--set", "rounds=-1"], "rounds"),
        (["run", "--set", "client.typo=1"], "client.typo"),
        (["run", "--set", "noequals"], "key=value"),
        (["run", "--resume", "/nonexistent/run"], "not a run directory"),
        (["run", "examples/digits_iid.toml", "--resume", "x"], "--resume"),
    ],
)
def test_bad_input_is_a_clear_error(args, needle):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "error:" in result.output and needle in result.output


def test_data_export_writes_client_folders(tmp_path):
    from fedloom.data.storage import read_partition

    result = runner.invoke(
        app,
        [
            "data",
            "export",
            str(tmp_path / "clients"),
            "--set",
            "partition.num_clients=7",
            "--set",
            "server.clients_per_round=5",
        ],
    )
    assert result.exit_code == 0, result.output
    train, holdout = read_partition(tmp_path / "clients")
    assert train.num_clients == 7 and holdout is None
    assert train.sizes().sum() == 1797 - round(0.2 * 1797)  # the 80% training split


def test_privacy_sweep_writes_table_and_plot(tmp_path):
    result = runner.invoke(
        app,
        [
            "privacy",
            "sweep",
            "--epsilons",
            "2,inf",
            "--set",
            f'output_dir="{tmp_path}"',
            "--set",
            "rounds=3",
            "--set",
            "partition.num_clients=40",
            "--set",
            'privacy.accountant="rdp"',
        ],
    )
    assert result.exit_code == 0, result.output
    sweep = tmp_path / "sweeps" / "digits-fedavg-privacy"  # a new folder for every sweep

    def refuse(constant: str) -> None:
        raise ValueError(f"sweep.json is not strict JSON: {constant}")

    table = __import__("json").loads((sweep / "sweep.json").read_text(), parse_constant=refuse)
    rows = table["points"]
    assert [r["epsilon"] for r in rows] == [2.0, "inf"]  # infinity written as a string
    assert rows[0]["spent_epsilon"] <= 2.0 and rows[0]["noise_multiplier"] > 0
    assert rows[1]["spent_epsilon"] == "inf" and rows[1]["noise_multiplier"] == 0
    assert [r["run"] for r in rows] == [
        str(sweep / "digits-fedavg-eps2"),
        str(sweep / "digits-fedavg-epsinf"),
    ]
    assert (sweep / "accuracy_vs_epsilon.png").stat().st_size > 1000
    assert (sweep / "compare_rounds.png").stat().st_size > 1000


def test_privacy_sweep_rejects_bad_epsilons():
    result = runner.invoke(app, ["privacy", "sweep", "--epsilons", "1,-2"])
    assert result.exit_code == 2 and "--epsilons" in result.output


def test_clients_command(tmp_path):
    first = runner.invoke(app, ["run", "--set", f'output_dir="{tmp_path}"', "--set", "rounds=2"])
    assert first.exit_code == 0, first.output
    result = runner.invoke(app, ["clients", run_dir_of(first.output), "--top", "5"])
    assert result.exit_code == 0, result.output
    assert "reliability" in result.output
    assert (tmp_path / "digits-fedavg" / "report" / "clients_participation.png").exists()
    missing = runner.invoke(app, ["clients", str(tmp_path)])
    assert missing.exit_code == 2 and "no config.toml" in missing.output


def test_privacy_plan_ranks_candidates(tmp_path):
    result = runner.invoke(
        app,
        [
            "privacy",
            "plan",
            "--epsilon",
            "4",
            "--clients-per-round",
            "5,10",
            "--rounds",
            "3",
            "--clip-norms",
            "0.5",
            "--set",
            f'output_dir="{tmp_path}"',
            "--set",
            "partition.num_clients=40",
            "--set",
            'privacy.accountant="rdp"',
        ],
    )
    assert result.exit_code == 0, result.output
    plan = __import__("json").loads((tmp_path / "digits-fedavg-plan" / "plan.json").read_text())
    accuracies = [r["accuracy"] for r in plan["rows"]]
    assert len(accuracies) == 2 and accuracies == sorted(accuracies, reverse=True)
    assert "recommended:" in result.output
    bad = runner.invoke(app, ["privacy", "plan", "--rounds", "ten"])
    assert bad.exit_code == 2 and "ten" in bad.output
