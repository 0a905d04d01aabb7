"""Local work fitted to each simulated device, seen from the run's records: devices too
small for the model are never selected, adaptive local work replaces deadline drops with
partial work, and a resumed run replays it exactly."""

from __future__ import annotations

import json

import numpy as np

from fedloom import metrics
from fedloom.assemble import resume_simulation, start_simulation
from fedloom.config import load_config

CLIENTS = 12
TINY = [0, 5]  # devices whose memory cannot hold training of the model
SLOW = [3, 4, 8, 9]  # 10x slower than the others


def trace(tmp_path) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "devices.jsonl"
    rows = [
        {
            "client": c,
            "compute_ms_per_sample": 50.0 if c in SLOW else 5.0,
            "up_kbps": 10_000.0,
            "memory_mb": 0.001 if c in TINY else 512.0,
        }
        for c in range(CLIENTS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def config(tmp_path, *extra: str):
    return load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=4",
            f"partition.num_clients={CLIENTS}",
            'partition.method="iid"',
            "server.clients_per_round=6",
            "client.local_epochs=2",
            'devices.kind="trace"',
            f'devices.trace="{trace(tmp_path)}"',
            "server.deadline_s=8.0",
            'simulation.executor="sequential"',
            "evaluation.every=100",
            "checkpoint.every=1",
            *extra,
        ],
    )


def rounds(sim) -> list[dict]:
    return [r for r in sim.run_dir.records() if r["event"] == "round"]


def test_devices_that_cannot_hold_the_model_are_never_selected(tmp_path) -> None:
    sim = start_simulation(config(tmp_path, "server.clients_per_round=10", "rounds=3"))
    sim.run()
    records = rounds(sim)
    metrics.validate(records)
    assert [r["selected"] for r in records] == [10, 10, 10]  # everyone else, every round
    selected = sim.engine.registry.stats().selected
    assert selected[TINY].tolist() == [0, 0]
    assert np.delete(selected, TINY).tolist() == [3] * (CLIENTS - len(TINY))


def test_without_memory_awareness_the_tiny_devices_are_selected(tmp_path) -> None:
    cfg = config(
        tmp_path, "server.clients_per_round=12", "rounds=1", "edge.memory_aware_batch=false"
    )
    sim = start_simulation(cfg)
    sim.run()
    assert sim.engine.registry.stats().selected[TINY].tolist() == [1, 1]


def test_adaptive_local_work_trains_slow_devices_partially_instead_of_dropping_them(
    tmp_path,
) -> None:
    fixed = start_simulation(config(tmp_path / "fixed"))
    fixed.run()
    adaptive = start_simulation(config(tmp_path / "adaptive", 'edge.local_work="adaptive"'))
    adaptive.run()
    fixed_rounds, adaptive_rounds = rounds(fixed), rounds(adaptive)
    metrics.validate(adaptive_rounds)
    # the same draws: who is selected does not depend on the work
    picked = fixed.engine.registry.stats().selected
    np.testing.assert_array_equal(adaptive.engine.registry.stats().selected, picked)
    slow = int(picked[SLOW].sum())
    assert slow, "the seeded draws never picked a slow device"
    # fixed epochs: every selected slow device misses the deadline
    assert sum(r["dropped"].get("missed the deadline", 0) for r in fixed_rounds) == slow
    # adaptive: the slow devices train the steps that fit and deliver in time
    assert all(not r["dropped"].get("missed the deadline") for r in adaptive_rounds)
    assert sum(r["partial"] for r in adaptive_rounds) == slow
    assert [r["completed"] for r in adaptive_rounds] == [r["selected"] for r in adaptive_rounds]
    # progress monitoring: every delivering client's four sampled batch losses, averaged
    assert all(len(r["local_loss"]) == 4 for r in adaptive_rounds)
    assert adaptive_rounds[0]["local_loss"][0] > adaptive_rounds[0]["local_loss"][-1]


def test_adaptive_min_steps_drops_a_device_that_cannot_do_enough(tmp_path) -> None:
    # a slow device fits 4 of its 8 steps in 8 s: asking for at least 6 drops it
    sim = start_simulation(
        config(tmp_path, 'edge.local_work="adaptive"', "edge.min_steps=6", "rounds=2")
    )
    sim.run()
    records = rounds(sim)
    slow = int(sim.engine.registry.stats().selected[SLOW].sum())
    why = "cannot finish 6 steps before the deadline"
    assert sum(r["dropped"].get(why, 0) for r in records) == slow
    assert all(r["partial"] == 0 for r in records)


def test_a_resumed_adaptive_run_equals_the_uninterrupted_one(tmp_path) -> None:
    extra = ('edge.local_work="adaptive"', "rounds=4")
    whole = start_simulation(config(tmp_path / "whole", *extra))
    whole.run()
    crashed = start_simulation(config(tmp_path / "part", *extra))
    for _ in range(3):  # checkpointed after every round; round 3 is replayed
        crashed.step()
    path = crashed.run_dir.path
    del crashed
    resumed = resume_simulation(path)
    resumed.run()
    np.testing.assert_array_equal(resumed.server.params, whole.server.params)
    assert [r["partial"] for r in rounds(resumed)] == [r["partial"] for r in rounds(whole)]


def test_tiered_devices_get_their_tier_profile(tmp_path) -> None:
    from fedloom.assemble import population_capabilities
    from fedloom.edge.profiles import builtin_profile
    from fedloom.sim.devices import DEFAULT_TIERS
    from fedloom.sim.population import build_population

    cfg = load_config(None, ['devices.kind="tiered"'])
    pop = build_population(cfg.devices, 40, 0)
    memory, bf16, fp16 = population_capabilities(cfg, pop)
    profiles = [builtin_profile(DEFAULT_TIERS[t].name) for t in pop.tier]
    assert memory.tolist() == pop.memory_mb.tolist()
    assert bf16.tolist() == [p.bf16 for p in profiles]
    assert fp16.tolist() == [p.fp16 for p in profiles]
    assert len(set(pop.tier.tolist())) == len(DEFAULT_TIERS)


def test_precision_and_qat_reach_every_dispatch_and_train(tmp_path) -> None:
    # untiered devices take edge.profile; x86_server runs bf16
    sim = start_simulation(config(tmp_path, "rounds=2", 'edge.precision="auto"', "edge.qat=true"))
    summary = sim.run()
    assert np.isfinite(summary.accuracy)
    d = sim.engine.fit(sim.engine.server.begin_round(np.arange(CLIENTS), k=2))
    assert {(x.plan.precision, x.plan.qat) for x in d} == {("bf16", True)}
    assert all(r["status"] == "aggregated" for r in rounds(sim))


def test_asynchronous_hand_outs_skip_devices_that_cannot_hold_the_model(tmp_path) -> None:
    sim = start_simulation(
        config(
            tmp_path,
            "rounds=4",
            'asynchronous.mode="fedbuff"',
            "asynchronous.buffer_size=3",
            "asynchronous.concurrency=10",
        )
    )
    sim.run()
    selected = sim.engine.registry.stats().selected
    assert selected[TINY].tolist() == [0, 0]
    assert selected.sum() >= 12
