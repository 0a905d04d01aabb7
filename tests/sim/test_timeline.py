"""Virtual time of synchronous rounds: hand-computed timings, drops, determinism."""

import json

import numpy as np
import pytest
import torch

from fedloom.assemble import resume_simulation, start_simulation
from fedloom.config import load_config
from fedloom.sim.availability import IntervalTrace
from fedloom.sim.devices import uniform_population
from fedloom.sim.network import NetworkConditions, link_flap
from fedloom.sim.timeline import VirtualTime
from fedloom.sim.traces import read_trace

MB = 1_000_000


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def write_trace(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_trace_import_and_hand_computed_round_time(tmp_path):
    # 300 samples at 50 ms/sample = 15 s compute; 1 MB up at 1,000 kbit/s = 8 s;
    # 1 MB down at 8,000 kbit/s = 1 s; plus 100 ms latency on each transfer
    trace = write_trace(
        tmp_path / "t.jsonl",
        [
            {
                "client": 7,
                "compute_ms_per_sample": 50,
                "up_kbps": 1000,
                "down_kbps": 8000,
                "latency_ms": 100,
            }
        ],
    )
    pop = read_trace(trace)
    vt = VirtualTime(pop, NetworkConditions(pop), seed=0)
    out = vt.play_round(1, np.array([0]), np.array([300]), MB, MB, deadline_s=None)
    assert out.delivered.tolist() == [0]
    assert out.arrival[0] == pytest.approx(0.1 + 1 + 15 + 0.1 + 8)
    assert out.end == pytest.approx(24.2) and vt.now == pytest.approx(24.2)
    assert out.events == 3  # download, training, upload
    # the next round starts where this one ended
    out2 = vt.play_round(2, np.array([0]), np.array([300]), MB, MB, deadline_s=None)
    assert out2.start == pytest.approx(24.2) and out2.end == pytest.approx(48.4)


def test_deadline_drops_stragglers():
    pop = uniform_population(3, compute_ms_per_sample=10, up_kbps=8000, down_kbps=8000)
    vt = VirtualTime(pop, NetworkConditions(pop), seed=0)
    samples = np.array([100, 1000, 5000])  # 1 s, 10 s, 50 s of compute; 2 s of transfers
    out = vt.play_round(1, np.arange(3), samples, MB, MB, deadline_s=20.0)
    assert out.delivered.tolist() == [0, 1]
    assert out.arrival.tolist() == pytest.approx([3.0, 12.0])
    assert out.failed == {2: "missed the deadline"}
    assert out.end == pytest.approx(20.0)
    assert len(vt.clock) == 0, "the straggler's pending events are cancelled"


def test_going_offline_mid_task():
    avail = IntervalTrace.from_intervals([[(0.0, 100.0)], [(0.0, 5.0)]])
    pop = uniform_population(
        2, compute_ms_per_sample=10, up_kbps=8000, down_kbps=8000, availability=avail
    )
    vt = VirtualTime(pop, NetworkConditions(pop), seed=0)
    out = vt.play_round(1, np.arange(2), np.array([500, 500]), MB, MB, deadline_s=None)
    assert out.delivered.tolist() == [0]
    assert out.failed == {1: "went offline"}


def test_link_flap_pauses_the_upload():
    pop = uniform_population(2, compute_ms_per_sample=10, up_kbps=8000, down_kbps=8000)
    flap = link_flap(np.array([1]), start=3.5, period=100.0, down_for=30.0, count=1)
    vt = VirtualTime(pop, NetworkConditions(pop, flap), seed=0)
    out = vt.play_round(1, np.arange(2), np.array([200, 200]), MB, MB, deadline_s=None)
    # both: 1 s download + 2 s compute, upload from t=3 for 1 s; client 1 pauses 30 s
    assert out.arrival.tolist() == pytest.approx([4.0, 34.0])


def test_failures_are_seeded_and_event_order_is_deterministic():
    def play(seed):
        pop = uniform_population(200, compute_ms_per_sample=10, failure_prob=0.5)
        vt = VirtualTime(pop, NetworkConditions(pop), seed=seed)
        return vt.play_round(3, np.arange(200), np.full(200, 100), MB, MB, deadline_s=None)

    a, b, c = play(1), play(1), play(2)
    assert a.delivered.tolist() == b.delivered.tolist()
    assert a.failed == b.failed
    assert 60 < len(a.failed) < 140  # about half crash
    assert set(a.failed.values()) == {"device failure"}
    assert a.failed != c.failed


def test_clients_never_online_are_never_selected(tmp_path):
    rows = []
    for c in range(40):
        row = {"client": c, "compute_ms_per_sample": 5, "up_kbps": 10000}
        if c % 2:
            row["active"] = []  # never online
        rows.append(row)
    trace = write_trace(tmp_path / "half.jsonl", rows)
    cfg = load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=6",
            "partition.num_clients=40",
            "server.clients_per_round=8",
            'devices.kind="trace"',
            f'devices.trace="{trace}"',
        ],
    )
    sim = start_simulation(cfg)
    trained: list[int] = []
    inner = sim.executor.train_cohort

    def recording(g, ids, seeds, plan, max_steps=None):
        trained.extend(int(i) for i in ids)
        return inner(g, ids, seeds, plan, max_steps)

    sim.executor.train_cohort = recording
    sim.run()
    assert len(trained) == 6 * 8
    assert all(c % 2 == 0 for c in trained)


def test_resume_with_virtual_time_failures_and_deadline(tmp_path):
    extra = [
        "rounds=8",
        "partition.num_clients=30",
        "server.clients_per_round=6",
        "checkpoint.every=3",
        'devices.kind="tiered"',
        'devices.availability="diurnal"',
        "server.deadline_s=300",
    ]
    full = start_simulation(load_config(None, [f'output_dir="{tmp_path / "a"}"', *extra]))
    full.run()
    crashed = start_simulation(load_config(None, [f'output_dir="{tmp_path / "b"}"', *extra]))
    for _ in range(5):
        crashed.step()
    resumed = resume_simulation(crashed.run_dir.path)
    resumed.run()
    assert np.array_equal(resumed.server.params, full.server.params)
    times = [r["virtual_time"] for r in full.run_dir.records() if r["event"] == "round"]
    again = [r["virtual_time"] for r in resumed.run_dir.records() if r["event"] == "round"]
    assert times == again and times == sorted(times)
