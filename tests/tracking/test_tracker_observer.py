"""The tracker's reading of a run's records, with a recording backend: what becomes a
step, cumulative bytes across a resume, retries skipped, the end and an interruption."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedloom.config import load_config
from fedloom.runs import RunDirectory
from fedloom.tracking import TrackedStore, Tracker

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


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def start(self, params: dict, text: str, resumed_at: int | None, state: dict) -> dict:
        self.calls.append(("start", (resumed_at, state, params["client.lr"])))
        return {"id": "run-1"}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.calls.append(("log", (step, metrics)))

    def summary(self, values: dict[str, float], tags: dict[str, str]) -> None:
        self.calls.append(("summary", (values, tags)))

    def finish(self, status: str) -> None:
        self.calls.append(("finish", status))


def round_record(n: int, status: str = "aggregated", **more: Any) -> dict[str, Any]:
    return {
        "event": "round",
        "round": n,
        "status": status,
        "selected": 5,
        "completed": 5,
        "failed": 0,
        "rejected": 0,
        "train_loss": 1.0 / n,
        "bytes_up": 100,
        "bytes_down": 400,
        **more,
    }


def test_records_become_steps_and_a_resume_continues_the_count(tmp_path: Path) -> None:
    cfg = load_config(None, [f'output_dir="{tmp_path}"', "client.lr=0.2"])
    run = RunDirectory.create(cfg)
    first = Recorder()
    store = TrackedStore(run, Tracker(cfg, run, [first]))
    store.append({"event": "start", "round": 0, "task": TASK, "accuracy": 0.1, "loss": 2.3})
    store.append(round_record(1, "retry"))
    store.append(round_record(1, accuracy=0.5, loss=1.5, virtual_time=3.0, epsilon=0.4))
    store.append({"event": "interrupt", "round": 1, "signal": "SIGINT"})
    assert first.calls[0] == ("start", (None, {}, 0.2))
    logs = [args for kind, args in first.calls if kind == "log"]
    assert [step for step, _ in logs] == [0, 1], "the retried attempt is not a step"
    assert logs[0][1] == {"eval/accuracy": 0.1, "eval/loss": 2.3}
    one = logs[1][1]
    assert one["comm/bytes_total"] == 1000  # the retried attempt's bytes were moved too
    assert one["comm/bytes_up"] == 100 and one["time/virtual_s"] == 3.0
    assert one["privacy/epsilon"] == 0.4 and one["train/loss"] == 1.0
    assert first.calls[-1] == ("finish", "KILLED")
    assert json.loads((run.path / "tracking.json").read_text()) == {"recorder": {"id": "run-1"}}

    # a new process resumes from the checkpoint of round 1
    run.truncate_records(1)
    second = Recorder()
    store = TrackedStore(run, Tracker(cfg, run, [second]))
    store.append({"event": "resume", "round": 1, "checkpoint": "round-000001.npz"})
    store.append(round_record(2, accuracy=0.7, loss=1.0))
    store.append({"event": "stop", "round": 2, "reason": "max_rounds", "detail": "done"})
    assert second.calls[0] == ("start", (1, {"id": "run-1"}, 0.2))
    step, metrics = next(args for kind, args in second.calls if kind == "log")
    assert step == 2 and metrics["comm/bytes_total"] == 1500  # counted on from round 1
    values, tags = next(args for kind, args in second.calls if kind == "summary")
    assert values["summary/final_accuracy"] == 0.7 and values["summary/rounds"] == 2
    assert values["summary/bytes_total"] == 1500  # every attempt, the retry included
    assert tags["stop_reason"] == "max_rounds"
    assert second.calls[-1] == ("finish", "FINISHED")
