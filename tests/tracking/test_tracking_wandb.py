"""The W&B backend against a stand-in ``wandb`` module (the package is optional and no
network is used): the calls it makes, and a resume that continues the same W&B run."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from fedloom.config import load_config
from fedloom.runs import RunDirectory
from fedloom.tracking import TrackedStore, Tracker, make_backends

TASK = {
    "name": "mlp",
    "reference": None,
    "targets": "classes",
    "loss": "cross_entropy",
    "metrics": ["accuracy"],
    "maximize": ["accuracy"],
    "input_shape": [4],
    "num_classes": 2,
    "outputs": 2,
    "parameters": 10,
    "flops": 20,
    "activation_bytes": 8,
}


class FakeRun:
    def __init__(self, kwargs: dict[str, Any], step: int) -> None:
        self.kwargs = kwargs
        self.id = kwargs["id"]
        self.step = step
        self.logged: list[tuple[int, dict]] = []
        self.summary: dict[str, Any] = {}
        self.exit_code: int | None = None

    def log(self, metrics: dict, step: int) -> None:
        assert step >= self.step, "W&B refuses a step below its last"
        self.logged.append((step, metrics))
        self.step = step + 1

    def finish(self, exit_code: int) -> None:
        self.exit_code = exit_code


@pytest.fixture
def wandb(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    runs: list[FakeRun] = []
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.util = types.SimpleNamespace(generate_id=lambda: "abc123")

    def init(**kwargs: Any) -> FakeRun:
        resumed = [r for r in runs if r.id == kwargs["id"]]
        run = FakeRun(kwargs, resumed[-1].step if resumed else 0)
        runs.append(run)
        return run

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return types.SimpleNamespace(runs=runs)


def test_wandb_gets_the_config_rounds_and_summary_and_resumes(
    tmp_path: Path, wandb: types.SimpleNamespace
) -> None:
    cfg = load_config(None, [f'output_dir="{tmp_path}"', 'tracking.backends=["wandb"]'])
    run = RunDirectory.create(cfg)
    store = TrackedStore(run, Tracker(cfg, run, make_backends(cfg, run)))
    store.append({"event": "start", "round": 0, "task": TASK, "accuracy": 0.1, "loss": 2.0})
    for n in (1, 2):
        store.append({"event": "round", "round": n, "status": "aggregated", "accuracy": 0.5})
    first = wandb.runs[0]
    assert first.kwargs["project"] == cfg.name and first.kwargs["name"] == run.path.name
    assert first.kwargs["mode"] == "offline" and first.kwargs["resume"] == "allow"
    assert first.kwargs["dir"] == str(run.path)
    assert first.kwargs["config"]["client.lr"] == cfg.client.lr
    assert [step for step, _ in first.logged] == [0, 1, 2]
    assert json.loads((run.path / "tracking.json").read_text()) == {"wandb": {"id": "abc123"}}

    # the process stopped after round 2; its checkpoint was round 1's
    run.truncate_records(1)
    store = TrackedStore(run, Tracker(cfg, run, make_backends(cfg, run)))
    store.append({"event": "resume", "round": 1, "checkpoint": "round-000001.npz"})
    for n in (2, 3):
        store.append({"event": "round", "round": n, "status": "aggregated", "accuracy": 0.6})
    store.append({"event": "stop", "round": 3, "reason": "max_rounds", "detail": ""})
    second = wandb.runs[1]
    assert second.id == "abc123", "the same W&B run"
    assert [step for step, _ in second.logged] == [3], "round 2 was logged before"
    assert second.summary["summary/final_accuracy"] == 0.6
    assert second.summary["stop_reason"] == "max_rounds"
    assert second.exit_code == 0
