"""A diverging simulation (client.lr = 1e18) no longer ends in a traceback: its updates
are refused with their typed reason, the model never takes them, and once every update
has been refused for REFUSED_ROUNDS_STOP rounds in a row the run stops with one line
saying why; example counts above server.max_examples_per_client are clamped and recorded."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from fedloom.assemble import start_simulation
from fedloom.config import load_config
from fedloom.server.engine import REFUSED_ROUNDS_STOP


def config(tmp_path: Path, *extra: str):  # noqa: ANN201
    torch.set_num_threads(1)
    return load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=10",
            "partition.num_clients=6",
            "server.clients_per_round=3",
            *extra,
        ],
    )


def test_a_diverging_run_refuses_its_updates_and_stops_in_one_line(tmp_path: Path) -> None:
    sim = start_simulation(config(tmp_path, "client.lr=1e18", "client.local_steps=1"))
    summary = sim.run()  # used to end in "completion.loss_sq = inf" (exit 2)
    assert summary.stop_reason == "updates_refused"
    assert "every update of the last 3 rounds was refused" in summary.stop_detail
    assert "\n" not in summary.stop_detail
    rounds = [r for r in sim.run_dir.records() if r.get("event") == "round"]
    refused = [r for r in rounds if r["completed"] == 0]
    assert len(refused) >= REFUSED_ROUNDS_STOP and rounds[-1]["round"] == summary.rounds
    for r in refused[-REFUSED_ROUNDS_STOP:]:
        assert r["rejected"] == r["selected"] and set(r["rejections"]) <= {"overflow", "nonfinite"}
    assert np.isfinite(sim.server.params).all()
    # the registry has each refusal with its reason
    history = [h for c in range(6) for h in sim.registry.history(c) if h["outcome"] == "rejected"]
    assert history and all(h["reason"] for h in history)


def test_example_counts_over_the_cap_are_clamped_and_recorded(tmp_path: Path) -> None:
    sim = start_simulation(config(tmp_path, "rounds=1", "server.max_examples_per_client=3"))
    sim.run()
    (record,) = [r for r in sim.run_dir.records() if r.get("event") == "round"]
    assert record["num_examples"] == 3 * record["completed"]
    sizes = sim.data.train.sizes()
    assert record["clamped_examples"] == {
        c: [int(sizes[int(c)]), 3] for c in record["clamped_examples"]
    }
    assert len(record["clamped_examples"]) == record["completed"]
    assert math.isfinite(record["train_loss"])
