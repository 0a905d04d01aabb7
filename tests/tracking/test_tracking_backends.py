"""TensorBoard event files and an MLflow run, written by a tiny run and read back; a
resumed run continues both without logging a round twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fedloom
from fedloom.assemble import resume_simulation, start_simulation
from fedloom.config import load_config

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def tiny(tmp_path: Path, store: str, *more: str) -> list[str]:
    return [
        f'output_dir="{tmp_path}"',
        "rounds=2",
        "partition.num_clients=10",
        "server.clients_per_round=5",
        'tracking.backends=["tensorboard", "mlflow"]',
        f'tracking.mlflow_uri="{store}"',
        *more,
    ]


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def recorded(run: Path, key: str) -> list[tuple[int, float]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["round"], r[key]) for r in lines if r["event"] in ("start", "round") and key in r]


def test_a_run_writes_tensorboard_events_and_an_mlflow_run(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, tiny(tmp_path, store, "client.lr=0.07"))
    summary = fedloom.simulate(cfg, progress=False)
    run = summary.path
    assert sorted(p.name for p in tmp_path.iterdir()) == [run.name], "nothing outside the run"
    expected = recorded(run, "accuracy")
    assert [s for s, _ in expected] == [0, 1, 2]

    # TensorBoard: one scalar per round (step = round), the config as text and hparams
    log_dir = run / "tensorboard"
    assert [s for s, _ in scalars(log_dir, "eval/accuracy")] == [0, 1, 2]
    got = scalars(log_dir, "eval/accuracy")
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert [s for s, _ in scalars(log_dir, "comm/bytes_total")] == [1, 2]
    events = EventAccumulator(str(log_dir))
    events.Reload()
    assert "config/text_summary" in events.Tags()["tensors"]
    assert "summary/text_summary" in events.Tags()["tensors"]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")

    # MLflow: the run, its params, metric history and end
    state = json.loads((run / "tracking.json").read_text())
    client = MlflowClient(store)
    mlrun = client.get_run(state["mlflow"]["run_id"])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.info.run_name == run.name
    assert mlrun.data.params["client.lr"] == "0.07"
    assert mlrun.data.params["rounds"] == "2"
    assert mlrun.data.tags["fedloom.stop_reason"] == "max_rounds"
    history = client.get_metric_history(mlrun.info.run_id, "eval/accuracy")
    assert [(m.step, m.value) for m in history] == expected  # float64, exactly
    assert mlrun.data.metrics["summary/final_accuracy"] == pytest.approx(summary.accuracy)
    experiment = client.get_experiment(mlrun.info.experiment_id)
    assert experiment.name == cfg.name


def test_resume_continues_the_same_runs_without_duplicate_steps(tmp_path: Path, store: str) -> None:
    cfg = load_config(
        None, tiny(tmp_path, store, "rounds=3", "checkpoint.every=2", 'name="resumed"')
    )
    sim = start_simulation(cfg)
    sim.step()  # round 1 is logged, but the newest checkpoint is round 0's
    run = sim.run_dir.path
    first_id = json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"]
    del sim  # the process "crashed" here

    summary = resume_simulation(run).run()
    assert summary.rounds == 3
    state = json.loads((run / "tracking.json").read_text())
    assert state["mlflow"]["run_id"] == first_id
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("resumed")
    assert len(client.search_runs([experiment.experiment_id])) == 1
    history = client.get_metric_history(first_id, "eval/accuracy")
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert client.get_run(first_id).info.status == "FINISHED"
    assert [s for s, _ in scalars(run / "tensorboard", "eval/accuracy")] == [0, 1, 2, 3]
    got = scalars(run / "tensorboard", "eval/accuracy")
    assert [v for _, v in got] == pytest.approx([v for _, v in recorded(run, "accuracy")])
