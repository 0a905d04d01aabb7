"""Selection, dropout handling and the client registry inside simulated runs."""

from collections import Counter

import numpy as np
import pytest
import torch

from fedloom.assemble import resume_simulation, start_simulation
from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.server.registry import FLAGS, ClientRegistry


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def start(tmp_path, *extra):
    cfg = load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=10",
            "partition.num_clients=40",
            "server.clients_per_round=10",
            "client.local_epochs=2",
            "checkpoint.every=3",
            *extra,
        ],
    )
    return start_simulation(cfg)


def rounds(sim):
    return [r for r in sim.run_dir.records() if r["event"] == "round"]


def test_quorum_skip_leaves_the_model_unchanged(tmp_path):
    sim = start(tmp_path, "devices.failure_prob=0.5", "server.quorum=6")
    sim.run()
    recs = rounds(sim)
    skipped = [r for r in recs if r["status"] == "skipped"]
    aggregated = [r for r in recs if r["status"] == "aggregated"]
    assert skipped and aggregated, [r["completed"] for r in recs]
    assert all(r["completed"] < 6 and r["update_norm"] == 0 for r in skipped)
    assert min(r["completed"] for r in aggregated) >= 6
    assert [r["round"] for r in recs] == list(range(1, 11))
    assert sim.server.version == len(aggregated)


def test_quorum_retry_reruns_the_round(tmp_path):
    sim = start(
        tmp_path,
        "devices.failure_prob=0.5",
        "server.quorum=6",
        'server.quorum_policy="retry"',
        "server.max_retries=2",
    )
    sim.run()
    recs = rounds(sim)
    retries = [r for r in recs if r["status"] == "retry"]
    assert retries
    assert [r["attempt"] for r in recs] == list(range(1, len(recs) + 1))
    for rnd in {r["round"] for r in retries}:
        tries = [r for r in recs if r["round"] == rnd]
        assert len(tries) <= 3 and tries[-1]["status"] in ("aggregated", "skipped")
    assert all(r["completed"] >= 6 for r in recs if r["status"] == "aggregated")


def test_over_selection_keeps_the_first_arrivals(tmp_path):
    sim = start(
        tmp_path,
        "devices.failure_prob=0.3",
        "server.over_selection=1.5",
        'devices.kind="lognormal"',
    )
    sim.run()
    recs = rounds(sim)
    assert all(r["dispatched"] == 15 for r in recs)
    assert all(r["completed"] <= 10 for r in recs)
    assert any(r["surplus"] > 0 for r in recs)
    stats = sim.registry.stats()
    assert stats.selected.sum() == sum(r["dispatched"] - r["surplus"] for r in recs)
    for r in recs:  # each record names who is not in the aggregate and why
        failed = [e for e in r["excluded"] if e["outcome"] == "failed"]
        assert len(failed) == r["dispatched"] - r["completed"]
        reasons = Counter(e["kind"] for e in failed if e["kind"] != "surplus")
        assert reasons == Counter(r["dropped"])
        assert sum(e["kind"] == "surplus" for e in failed) == r["surplus"]


def test_partial_work_from_stragglers_is_aggregated(tmp_path):
    # 5 local epochs at 200 ms/sample take far longer than the 20 s deadline for most
    sim = start(
        tmp_path,
        "client.local_epochs=5",
        "devices.compute_ms_per_sample=200",
        "server.deadline_s=20",
        "server.accept_partial=true",
    )
    sim.run()
    recs = rounds(sim)
    assert sum(r["partial"] for r in recs) > 0
    assert all(r["dropped"].get("missed the deadline", 0) == 0 for r in recs)
    full = 5 * -(-sim.data.train.sizes() // 32)
    done = [(c, h["steps"]) for c in range(40) for h in sim.registry.history(c) if h["steps"]]
    assert any(steps < full[c] for c, steps in done), "some clients did partial work"
    assert sim.summary(0).accuracy > 0.3


def test_registry_survives_resume_exactly(tmp_path):
    extra = (
        'selection.strategy="oort"',
        'devices.kind="tiered"',
        "server.deadline_s=120",
        'server.over_selection="auto"',
    )
    full = start(tmp_path / "a", *extra)
    full.run()
    crashed = start(tmp_path / "b", *extra)
    for _ in range(5):
        crashed.step()
    path = crashed.run_dir.path
    crashed.registry.close()
    resumed = resume_simulation(path)
    resumed.run()
    assert np.array_equal(resumed.server.params, full.server.params)
    a, b = full.registry.stats(), resumed.registry.stats()
    for name in ("selected", "completed", "reliability", "duration", "loss", "online_prob"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    with ClientRegistry(path / "clients.sqlite") as reopened:
        assert [h["round"] for h in reopened.history(0)] == [
            h["round"] for h in full.registry.history(0)
        ]


def test_a_nan_update_is_rejected_and_the_run_goes_on(tmp_path):
    sim = start(tmp_path, "rounds=3", 'simulation.executor="sequential"')
    inner = sim.executor.train_cohort

    def poisoned(g, ids, seeds, plan, max_steps=None):
        res = inner(g, ids, seeds, plan, max_steps)
        res.deltas[0, 0] = np.nan
        return res

    sim.executor.train_cohort = poisoned
    sim.run()
    recs = rounds(sim)
    assert [r["rejected"] for r in recs] == [1, 1, 1]
    assert all(np.isfinite(sim.server.params))
    flagged = sim.registry.stats().flags & FLAGS["nonfinite_update"]
    assert flagged.sum() >= 1


def test_bad_selection_settings_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="exploration"):
        start(tmp_path, 'selection.strategy="oort"', "selection.params={exploration=1.5}")
    with pytest.raises(ConfigError, match="nonsense"):
        start(tmp_path, 'selection.strategy="reliability"', "selection.params={nonsense=1}")
    with pytest.raises(ConfigError, match="accept_partial"):
        load_config(None, ["server.accept_partial=true"])
