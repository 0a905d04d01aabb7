"""Tracking never costs a run: a missing backend package is refused before the run starts
(naming tracking.backends and the install command), a backend that fails mid-run warns
once and the run goes on; tracking off leaves the run directory as it was."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest

import fedloom
from fedloom.assemble import open_deployment, start_simulation
from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.tracking import TrackedStore, TrackingWarning
from fedloom.tracking.tensorboard import TensorBoardBackend


def tiny(tmp_path: Path, *more: str) -> list[str]:
    return [
        f'output_dir="{tmp_path}"',
        "rounds=2",
        "partition.num_clients=10",
        "server.clients_per_round=5",
        *more,
    ]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_a_backend_that_is_not_installed_is_refused_before_the_run(tmp_path: Path) -> None:
    cfg = load_config(None, tiny(tmp_path, 'tracking.backends=["wandb"]'))
    with pytest.raises(ConfigError) as err:
        start_simulation(cfg)
    message = str(err.value)
    assert "tracking.backends" in message and "'wandb'" in message
    assert "pip install wandb" in message
    assert list(tmp_path.iterdir()) == [], "no run directory left behind"


def test_a_failing_backend_warns_once_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def broken(self: TensorBoardBackend, step: int, metrics: dict[str, float]) -> None:
        calls.append(step)
        raise OSError("No space left on device")

    monkeypatch.setattr(TensorBoardBackend, "log", broken)
    cfg = load_config(None, tiny(tmp_path, 'tracking.backends=["tensorboard"]'))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = fedloom.simulate(cfg, progress=False)
    tracking = [w for w in caught if issubclass(w.category, TrackingWarning)]
    assert len(tracking) == 1
    text = str(tracking[0].message)
    assert "tensorboard" in text and "No space left on device" in text and "continues" in text
    assert calls == [0], "the backend is not called again after it failed"
    assert summary.rounds == 2
    records = [json.loads(x) for x in (summary.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["start", "round", "round", "stop"]


def test_tracking_off_adds_nothing(tmp_path: Path) -> None:
    sim = start_simulation(load_config(None, tiny(tmp_path, "rounds=1")))
    assert not isinstance(sim.engine.run_dir, TrackedStore)
    sim.run()
    assert not (sim.run_dir.path / "tracking.json").exists()
    assert not (sim.run_dir.path / "tensorboard").exists()


def test_a_deployment_server_is_tracked(tmp_path: Path) -> None:
    """The gRPC deployment's engine writes through the same tracked store: its start
    record (the config, as hyperparameters and text) reaches TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(
        None,
        [
            *tiny(tmp_path),
            "model.num_features=64",
            "model.num_classes=10",
            'tracking.backends=["tensorboard"]',
        ],
    )
    deployed = open_deployment(cfg, None)
    assert isinstance(deployed.engine.run_dir, TrackedStore)
    events = EventAccumulator(str(deployed.run_dir.path / "tensorboard"))
    events.Reload()
    assert "config/text_summary" in events.Tags()["tensors"]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    state = json.loads((deployed.run_dir.path / "tracking.json").read_text())
    assert set(state) == {"tensorboard"}


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ('tracking.backends=["mlflow", "mlflow"]', "lists mlflow more than once"),
        ('tracking.backends=["neptune"]', "tracking.backends.0"),
        ('tracking.mlflow_uri=" "', "tracking.mlflow_uri is empty"),
    ],
)
def test_tracking_settings_are_checked(setting: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [setting])
