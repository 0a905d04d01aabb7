"""Fault test of the run directory: real ``fedloom run`` processes killed at seeded random
moments (before the first checkpoint too) or stopped by SIGTERM, and each run file damaged
in turn. Every run then resumes to the model an uninterrupted run reaches, or says in one
line what is wrong and how to recover; damaged data is kept aside, never deleted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_errors import one_line_error, runner

from fedloom.assemble import resume_simulation, start_simulation
from fedloom.cli import app
from fedloom.config import load_config
from fedloom.runs import RunDirectory
from fedloom.server.engine import RoundEngine
from fedloom.sim import Simulation

ROUNDS = 6
TINY = [
    f"rounds={ROUNDS}",
    "partition.num_clients=6",
    "server.clients_per_round=3",
    "checkpoint.every=2",
    "model.hidden=[8]",
    "client.local_epochs=1",
    "name=fault",
]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def tiny(out: Path, *extra: str) -> list[str]:
    return [f'output_dir="{out}"', *TINY, *extra]


def final_params(path: Path) -> np.ndarray:
    run = RunDirectory(path)
    return run.read_checkpoint(run.checkpoints()[-1])["arrays"]["params"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> np.ndarray:
    """The final model of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    sim = start_simulation(load_config(None, tiny(out)))
    sim.run()
    return sim.server.params.copy()


@pytest.fixture(scope="module")
def crashed(tmp_path_factory) -> Path:
    """A run that died after round 5 (checkpoints at rounds 0, 2 and 4)."""
    out = tmp_path_factory.mktemp("crashed")
    sim = start_simulation(load_config(None, tiny(out)))
    for _ in range(5):
        sim.step()
    sim.registry.close()
    return sim.run_dir.path


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


def resume_to_end(path: Path) -> Simulation:
    sim = resume_simulation(path)
    sim.run()
    return sim


def start_run(out: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "fedloom", "run"]
    for item in tiny(out, *extra):
        args += ["--set", item]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def rounds_recorded(path: Path) -> int:
    return sum(r["event"] == "round" for r in RunDirectory(path).records())


def wait_for(proc: subprocess.Popen, ready, timeout: float = 60.0) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None or ready(), proc.stdout.read().decode()
        assert time.monotonic() < end, "the run never reached the kill point"
        time.sleep(0.002)


# kills ------------------------------------------------------------------------------------
KILL_POINTS = [-1, *np.random.default_rng(12).integers(0, ROUNDS, size=2).tolist()]


@pytest.mark.parametrize("after_round", KILL_POINTS)
def test_sigkill_at_random_moment_then_resume(tmp_path, reference, after_round):
    """SIGKILL once ``after_round`` rounds are recorded (-1: as soon as the run directory
    exists, before its first checkpoint); the resumed run ends at the reference model."""
    path = tmp_path / "fault"
    proc = start_run(tmp_path)
    if after_round < 0:
        wait_for(proc, (path / "config.toml").exists)
    else:
        wait_for(proc, lambda: path.exists() and rounds_recorded(path) >= after_round)
    proc.kill()
    proc.wait(30)
    if after_round < 0:
        assert not RunDirectory(path).checkpoints(), "killed later than planned"
    sim = resume_to_end(path)
    assert np.array_equal(sim.server.params, reference)
    rounds = [r["round"] for r in sim.run_dir.records() if r["event"] == "round"]
    assert rounds == list(range(1, ROUNDS + 1)), "each round recorded once"
    assert not list(path.rglob("*.tmp"))


def test_sigterm_saves_a_checkpoint_between_rounds(tmp_path):
    """SIGTERM mid-run: the round in progress finishes, is checkpointed, and the process
    exits 143 saying how to continue; the resumed run equals an uninterrupted one."""
    longer = "rounds=60"
    ref = start_simulation(load_config(None, tiny(tmp_path / "ref", longer)))
    ref.run()
    path = tmp_path / "fault"
    proc = start_run(tmp_path, longer)
    wait_for(proc, lambda: path.exists() and rounds_recorded(path) >= 2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode()
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 143, out
    assert "interrupted by SIGTERM" in out and "--resume" in out
    run = RunDirectory(path)
    stopped = [r for r in run.records() if r["event"] == "interrupt"]
    assert len(stopped) == 1
    newest = run.read_checkpoint(run.checkpoints()[-1])["meta"]["round"]
    assert newest == stopped[0]["round"] == rounds_recorded(path)
    result = runner.invoke(app, ["run", "--resume", str(path)])
    assert result.exit_code == 0, result.output
    assert np.array_equal(final_params(path), ref.server.params)


# damaged files -----------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_newest_checkpoint_falls_back_and_is_kept(tmp_path, crashed, reference, damage):
    path = copy_of(crashed, tmp_path)
    newest = RunDirectory(path).checkpoints()[-1]
    assert newest.name == "round-000004.npz"
    data = newest.read_bytes()
    newest.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    sim = resume_to_end(path)
    assert np.array_equal(sim.server.params, reference)
    aside = path / "checkpoints" / "round-000004.npz.damaged-1"
    assert aside.read_bytes() == (b"" if damage == "empty" else data[: len(data) // 2])
    resume = next(r for r in sim.run_dir.records() if r["event"] == "resume")
    assert resume["checkpoint"] == "round-000002.npz"
    assert resume["damaged_checkpoints"] == [aside.name]


def test_damaged_metrics_lines_are_kept_aside(tmp_path, crashed, reference):
    """A torn middle line, a record with ``"round": null``, a JSON array and a string
    accuracy: resume and ``fedloom clients`` carry on, and the lines are kept aside."""
    path = copy_of(crashed, tmp_path)
    metrics = path / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    bad = [lines[2][:40], '{"event": "round", "round": null}', "[1, 2]", '{"event": "x"}']
    bad.append('{"event": "round", "round": 3, "accuracy": "high"}')
    bad.append('{"event": "round", "round": 4, "virtual_time": "late", "dropped": [1]}')
    metrics.write_text("\n".join([*lines[:2], *bad, *lines[2:]]) + "\n")
    assert runner.invoke(app, ["clients", str(path)]).exit_code == 0
    sim = resume_to_end(path)
    assert np.array_equal(sim.server.params, reference)
    assert (path / "metrics.jsonl.damaged-1").read_text().splitlines() == bad
    rounds = [r["round"] for r in sim.run_dir.records() if r["event"] == "round"]
    assert rounds == list(range(1, ROUNDS + 1))


def test_damaged_registry_is_kept_aside_and_rebuilt(tmp_path, crashed, reference):
    path = copy_of(crashed, tmp_path)
    db = path / "clients.sqlite"
    garbage = b"this is not a database" * 200
    db.write_bytes(garbage)
    one_line_error(["clients", str(path)], "clients.sqlite", "fedloom run --resume")
    sim = resume_to_end(path)
    assert np.array_equal(sim.server.params, reference)
    assert (path / "clients.sqlite.damaged-1").read_bytes() == garbage
    resume = next(r for r in sim.run_dir.records() if r["event"] == "resume")
    assert "kept aside as clients.sqlite.damaged-1" in resume["registry"]
    rows = {r["id"]: r for r in sim.registry.summary()}
    assert sum(r["selected"] for r in rows.values()) == 3 * ROUNDS
    assert runner.invoke(app, ["clients", str(path)]).exit_code == 0


def test_deleted_registry_is_rebuilt_from_the_checkpoint(tmp_path, crashed, reference):
    path = copy_of(crashed, tmp_path)
    for name in ("clients.sqlite", "clients.sqlite-wal", "clients.sqlite-shm"):
        (path / name).unlink(missing_ok=True)
    sim = resume_to_end(path)
    assert np.array_equal(sim.server.params, reference)
    assert sum(r["selected"] for r in sim.registry.summary()) == 3 * ROUNDS


def test_edited_config_is_refused_or_recorded(tmp_path, crashed, reference):
    path = copy_of(crashed, tmp_path)
    config = path / "config.toml"
    original = config.read_text()
    config.write_text(original.replace("lr = 0.1\n", "lr = 0.5\n", 1))
    assert config.read_text() != original
    one_line_error(["run", "--resume", str(path)], "client.lr = 0.5 (was 0.1)", "put the old")
    config.write_text(original.replace(f"rounds = {ROUNDS}", f"rounds = {ROUNDS + 1}"))
    sim = resume_to_end(path)
    resume = next(r for r in sim.run_dir.records() if r["event"] == "resume")
    assert resume["config_changes"] == {"rounds": [ROUNDS, ROUNDS + 1]}
    assert sim.server.round == ROUNDS + 1


def test_deleted_checkpoints_with_recorded_rounds_say_how_to_recover(tmp_path, crashed):
    path = copy_of(crashed, tmp_path)
    shutil.rmtree(path / "checkpoints")
    one_line_error(["run", "--resume", str(path)], "no checkpoint left", "fedloom run")
    assert (path / "metrics.jsonl").exists() and (path / "clients.sqlite").exists()


def test_missing_privacy_ledger_is_refused(tmp_path):
    private = ['privacy.mode="central"', "privacy.noise_multiplier=1.0", "rounds=3"]
    sim = start_simulation(load_config(None, tiny(tmp_path, *private)))
    sim.step()
    sim.step()
    path = sim.run_dir.path
    (path / "privacy.json").unlink()
    one_line_error(["run", "--resume", str(path)], "privacy.json", "is missing", "backup")
    assert {p.name for p in path.iterdir()} >= {"metrics.jsonl", "clients.sqlite", "checkpoints"}


def test_every_file_kept(tmp_path, crashed):
    """Resuming never removes a file it did not write itself: everything the crashed run
    left is still there (checkpoints rotate as configured, keeping the newest)."""
    path = copy_of(crashed, tmp_path)
    before = {p.name for p in path.iterdir()}
    resume_to_end(path)
    assert before <= {p.name for p in path.iterdir()}
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records].count("start") == 1


def test_run_that_died_before_its_first_checkpoint_begins_again(tmp_path, reference, monkeypatch):
    """Deterministically, what the kill at -1 above may hit: a run dies after writing its
    start record, registry and ledger but before the round-0 checkpoint. The resume begins
    again in the same directory, keeping the first attempt's files aside."""

    def die(self, stop):  # noqa: ANN001, ARG001
        raise SystemExit("killed")

    monkeypatch.setattr(RoundEngine, "checkpoint", die)
    with pytest.raises(SystemExit):
        start_simulation(load_config(None, tiny(tmp_path)))
    monkeypatch.undo()
    path = tmp_path / "fault"
    assert not RunDirectory(path).checkpoints()
    first = (path / "metrics.jsonl").read_bytes()
    sim = resume_to_end(path)
    assert np.array_equal(sim.server.params, reference)
    assert (path / "metrics.jsonl.unfinished-1").read_bytes() == first
    assert (path / "clients.sqlite.unfinished-1").exists()


def test_a_deployment_run_is_not_resumed_in_the_simulator(tmp_path):
    """A deployment's checkpoints carry no virtual clock: resuming one as a simulation says
    how to continue it instead of failing on a missing key."""
    from fedloom.assemble import open_deployment
    from fedloom.errors import CheckpointError

    deployed = open_deployment(load_config(None, tiny(tmp_path)), None)
    with pytest.raises(CheckpointError, match="fedloom server --resume"):
        resume_simulation(deployed.run_dir.path)
