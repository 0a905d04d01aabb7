"""Extending a finished run: ``fedloom run --resume RUN --set rounds=N`` goes on to N
rounds and ends at exactly (bit for bit) the model of an uninterrupted N-round run; a
round count not above the rounds done, a setting that changes what the run computes, and
a run that stopped early are refused in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_errors import one_line_error, runner

from fedloom.assemble import start_simulation
from fedloom.cli import app
from fedloom.config import load_config
from fedloom.runs import RunDirectory

TINY = [
    "partition.num_clients=6",
    "server.clients_per_round=3",
    "model.hidden=[8]",
    "client.local_epochs=1",
    "name=ext",
]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def cli_run(out: Path, *settings: str) -> Path:
    args = ["run", "--quiet"]
    for item in [f'output_dir="{out}"', *TINY, *settings]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out / "ext"


def final_params(path: Path) -> np.ndarray:
    run = RunDirectory(path)
    return run.read_checkpoint(run.checkpoints()[-1])["arrays"]["params"]


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return cli_run(tmp_path_factory.mktemp("three"), "rounds=3")


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


def test_extend_to_five_equals_an_uninterrupted_five_round_run(tmp_path, three_rounds):
    settings = [f'output_dir="{tmp_path / "ref"}"', *TINY, "rounds=5"]
    ref = start_simulation(load_config(None, settings))
    ref.run()
    ref.registry.close()
    path = copy_of(three_rounds, tmp_path)
    result = runner.invoke(app, ["run", "--resume", str(path), "--set", "rounds=5"])
    assert result.exit_code == 0, result.output
    assert "rounds: 3 -> 5" in result.output and "round 5/5" in result.output
    assert np.array_equal(final_params(path), ref.server.params)
    records = RunDirectory(path).records()
    assert [r["round"] for r in records if r["event"] == "round"] == [1, 2, 3, 4, 5]
    stops = [r for r in records if r["event"] == "stop"]
    assert len(stops) == 1 and stops[0]["round"] == 5  # the 3-round stop record is gone
    resumed = [r for r in records if r["event"] == "resume"]
    assert resumed[-1]["config_changes"] == {"rounds": [3, 5]}
    assert load_config(path / "config.toml").rounds == 5


@pytest.mark.parametrize("rounds", [3, 2])
def test_rounds_not_above_those_done_are_refused(tmp_path, three_rounds, rounds):
    path = copy_of(three_rounds, tmp_path)
    before = (path / "config.toml").read_text()
    one_line_error(
        ["run", "--resume", str(path), "--set", f"rounds={rounds}"],
        f"rounds={rounds}",
        "already done 3 rounds",
    )
    assert (path / "config.toml").read_text() == before  # nothing changed


@pytest.mark.parametrize("setting", ["client.lr=0.5", "seed=4", "name=other"])
def test_settings_that_change_the_computation_are_refused(tmp_path, three_rounds, setting):
    path = copy_of(three_rounds, tmp_path)
    key = setting.partition("=")[0]
    one_line_error(
        ["run", "--resume", str(path), "--set", "rounds=5", "--set", setting],
        f"--set {key}",
        "rounds",
    )
    assert load_config(path / "config.toml").rounds == 3


def test_a_run_that_stopped_early_is_not_extended(tmp_path):
    path = cli_run(tmp_path, "rounds=4", "stopping.target=0.01")  # reached after round 1
    one_line_error(
        ["run", "--resume", str(path), "--set", "rounds=8"], "stopped at round 1", "target"
    )


def test_config_with_resume_is_refused(tmp_path, three_rounds):
    one_line_error(
        ["run", "examples/digits_iid.toml", "--resume", str(three_rounds)], "--resume", "CONFIG"
    )


def test_config_is_put_back_when_the_extended_run_cannot_be_built(
    tmp_path, three_rounds, monkeypatch
):
    """E.g. a privacy budget that the longer run would exceed: refused when the run is
    built, and config.toml keeps the rounds the run has (a later resume still works)."""
    import fedloom.assemble
    from fedloom.errors import ConfigError

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise ConfigError("privacy.budget_epsilon = 1: the planned rounds would exceed it")

    path = copy_of(three_rounds, tmp_path)
    before = (path / "config.toml").read_text()
    monkeypatch.setattr(fedloom.assemble, "resume_simulation", refuse)
    one_line_error(["run", "--resume", str(path), "--set", "rounds=5"], "budget_epsilon")
    assert (path / "config.toml").read_text() == before
