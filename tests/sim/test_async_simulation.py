"""Asynchronous runs (FedBuff, FedAsync) in the simulator: learning, records, failures,
staleness, compression, central DP and exact resume with uploads in flight."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedloom import metrics
from fedloom.assemble import resume_simulation, start_simulation
from fedloom.cli import app
from fedloom.config import load_config
from fedloom.errors import FedloomError
from fedloom.privacy.accounting import compose_epsilon
from fedloom.runs import RunDirectory
from fedloom.sim.async_runtime import AsyncSimulation

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def config(tmp_path, *extra: str):
    return load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=8",
            "partition.num_clients=20",
            'asynchronous.mode="fedbuff"',
            "asynchronous.buffer_size=4",
            "asynchronous.concurrency=8",
            'devices.kind="lognormal"',
            'simulation.executor="sequential"',
            "evaluation.every=100",
            "checkpoint.every=3",
            *extra,
        ],
    )


def rounds(sim):
    return [r for r in sim.run_dir.records() if r["event"] == "round"]


@pytest.mark.parametrize(
    ("mode", "steps"), [("fedbuff", 8), ("fedasync", 24)], ids=["fedbuff", "fedasync"]
)
def test_asynchronous_runs_learn_and_record_their_steps(tmp_path, mode, steps):
    sim = start_simulation(config(tmp_path, f'asynchronous.mode="{mode}"', f"rounds={steps}"))
    assert isinstance(sim, AsyncSimulation)
    summary = sim.run()
    assert summary.stop_reason == "max_rounds" and summary.rounds == steps
    records = sim.run_dir.records()
    metrics.validate(records)
    steps_recorded = rounds(sim)
    assert [r["round"] for r in steps_recorded] == list(range(1, steps + 1))
    buffer = 4 if mode == "fedbuff" else 1
    for r in steps_recorded:
        assert r["status"] == "aggregated" and r["completed"] == buffer
        assert sum(r["staleness"].values()) == buffer and len(r["contributors"]) == buffer
        assert r["bytes_up"] >= buffer * 4 * sim.server.dim and r["events"] > 0
    times = [r["virtual_time"] for r in steps_recorded]
    assert times == sorted(times) and times[0] > 0
    # concurrency 8 over a buffer of 4 (or 1): later steps hold stale updates
    assert any(int(s) > 0 for r in steps_recorded for s in r["staleness"])
    assert summary.accuracy > records[0]["accuracy"] + 0.4  # the initial model: ~0.1


@pytest.mark.parametrize(
    "extra",
    [
        ('network.changes=[{kind="drop", time=1.0, until=3.0, factor=0.2}]',),
        (
            'compression.codec="topk"',
            "compression.error_feedback=true",
            "compression.params={fraction=0.05}",
            # a client transform with per-client state (examples/transforms)
            'transforms.client=[{name = "damp_by_visits:DampByVisits", strength = 0.5}]',
        ),
        (
            "devices.failure_prob=0.2",
            'devices.availability="diurnal"',
            "devices.compute_ms_per_sample=20000",
            "devices.compute_sigma=2.0",
            "server.deadline_s=10800",
            "asynchronous.server_uplink_kbps=60000",
        ),
        ('privacy.mode="local"', "privacy.local_epsilon=20.0", "asynchronous.max_contributions=50"),
    ],
    ids=["float32-network-drop", "topk-error-feedback", "failures-uplink", "local-dp"],
)
def test_resume_with_uploads_in_flight_equals_uninterrupted(tmp_path, monkeypatch, extra):
    monkeypatch.syspath_prepend(str(EXAMPLES / "transforms"))
    # slow uplinks (uploads of seconds): some are in flight when a step closes
    extra = ('server.optimizer.name="fedadam"', "devices.up_kbps=50", *extra)
    full = start_simulation(config(tmp_path / "a", *extra))
    full.run()
    crashed = start_simulation(config(tmp_path / "b", *extra))
    for _ in range(5):  # checkpoint after step 3; steps 4-5 are lost in the "crash"
        crashed.step()
    path = crashed.run_dir.path
    del crashed

    state = RunDirectory(path).read_checkpoint(path / "checkpoints" / "round-000003.npz")
    in_flight = [k for k in state["arrays"] if k.startswith("sim.task.") and k.endswith(".delta")]
    assert in_flight, "the checkpoint holds trained uploads not yet arrived"
    compressed = "compression.codec" in " ".join(extra)
    if compressed:
        assert any(k.endswith(".payload") for k in state["arrays"])
        assert any(".compress." in k for k in state["arrays"]), "staged residuals"
        assert any(".xform." in k for k in state["arrays"]), "staged transform states"

    resumed = resume_simulation(path)
    assert resumed.server.round == 3 and resumed.book.tasks
    resumed.run()
    assert np.array_equal(resumed.server.params, full.server.params)
    for key in full.server.opt_state:
        assert np.array_equal(resumed.server.opt_state[key], full.server.opt_state[key])
    records = RunDirectory(path).records()
    metrics.validate(records)
    steps = [r for r in records if r["event"] == "round"]
    assert [r["round"] for r in steps] == list(range(1, 9))
    keys = ("virtual_time", "staleness", "contributors", "bytes_up", "events", "train_loss")
    assert [[r.get(k) for k in keys] for r in steps] == [
        [r.get(k) for k in keys] for r in rounds(full)
    ]
    if compressed:
        assert all(r["compression"]["codec"] == "topk" for r in steps)
        assert all(r["compression"]["ratio"] > 5 for r in steps)
    if "local" in " ".join(extra):
        assert full.ledger is not None and full.ledger.view == "local"
        assert all(r["epsilon"] > 0 for r in steps)


def test_failures_are_recorded_and_backed_off_and_too_stale_updates_dropped(tmp_path):
    cfg = config(
        tmp_path,
        "rounds=6",
        "partition.num_clients=24",
        "asynchronous.buffer_size=3",
        "asynchronous.concurrency=12",
        "asynchronous.max_staleness=0",
        "asynchronous.backoff_s=600",
        "devices.compute_sigma=2.0",
        "devices.failure_prob=0.2",
        'devices.availability="diurnal"',
        "devices.compute_ms_per_sample=20000",  # tasks of hours: windows close on some
        "server.deadline_s=10800",
    )
    sim = start_simulation(cfg)
    failures: list[tuple[float, int]] = []
    handouts: list[tuple[float, int]] = []
    fail, hand_out = sim.engine.fail, sim.engine.hand_out

    def record_fail(cid: int, reason: str) -> None:
        failures.append((sim.virtual_time.now, cid))
        fail(cid, reason)

    def record_hand_out(available: np.ndarray):
        out = hand_out(available)
        handouts.extend((sim.virtual_time.now, d.client_id) for d in out)
        return out

    sim.engine.fail, sim.engine.hand_out = record_fail, record_hand_out
    sim.run()
    metrics.validate(sim.run_dir.records())
    steps = rounds(sim)
    dropped: dict[str, int] = {}
    for r in steps:
        for reason, n in (r["dropped"] or {}).items():
            dropped[reason] = dropped.get(reason, 0) + n
        assert set(r["staleness"]) == {"0"}  # max_staleness = 0: only fresh updates count
    assert {"device failure", "went offline", "deadline"} <= set(dropped)
    assert sum(dropped.values()) == len(failures)
    stale = sum(r["dropped_stale"] for r in steps)
    assert stale > 0 and stale == sum(
        (r.get("rejections") or {}).get("stale_version", 0) for r in steps
    )
    # a client that failed gets no work before its backoff (600 s, doubling) ends
    for t, cid in failures:
        later = [h for h, c in handouts if c == cid and h >= t]
        assert not later or later[0] >= t + 600
    excluded = {e["kind"] for r in steps for e in r["excluded"]}
    assert excluded  # failures and drops are named in the records


def test_a_client_that_fails_and_then_delivers_within_one_step(tmp_path):
    cfg = config(
        tmp_path,
        "rounds=20",
        "asynchronous.buffer_size=8",
        "asynchronous.concurrency=16",
        "devices.failure_prob=0.5",
        "asynchronous.backoff_s=0",  # a failed client may get work again at once
        "asynchronous.max_backoff_s=0",
    )
    sim = start_simulation(cfg)
    assert sim.run().rounds == 20
    for r in rounds(sim):
        excluded = {e["client"] for e in r["excluded"]}
        assert not excluded & set(r["contributors"])


@pytest.mark.parametrize(
    ("extra", "reason", "limit"),
    [
        (("asynchronous.max_contributions=2",), "contributions", 2),
        (
            (
                "asynchronous.max_contributions=5",
                "privacy.budget_epsilon=3.0",
                'privacy.budget_policy="stop"',
            ),
            "privacy_budget",
            2,  # what the budget allows one client at noise multiplier 1
        ),
    ],
    ids=["max-contributions", "budget"],
)
def test_central_dp_charges_each_client_and_stops_at_its_contribution_limit(
    tmp_path, extra, reason, limit
):
    cfg = config(
        tmp_path,
        "rounds=100",
        'privacy.mode="central"',
        "privacy.noise_multiplier=1.0",
        "privacy.clip_norm=1.0",
        "asynchronous.concurrency=6",
        *extra,
    )
    sim = start_simulation(cfg)
    summary = sim.run()
    assert summary.stop_reason == reason and summary.rounds < 100
    assert f"limit of {limit}" in summary.stop_detail
    ledger = sim.ledger
    assert ledger is not None and ledger.view == "participation"
    counts = ledger.participations()
    assert max(counts.values()) == limit and (sim.server.contributions <= limit).all()
    # the headline is the worst client's epsilon: its own `limit` unsampled releases
    worst = compose_epsilon([replace(sim.privacy.event(), count=limit)], ledger.delta, "pld")
    assert ledger.epsilon() == pytest.approx(worst)
    if ledger.budget is not None:
        assert ledger.epsilon() <= ledger.budget.epsilon
    records = sim.run_dir.records()
    metrics.validate(records)
    assert records[-1]["event"] == "stop" and records[-1]["reason"] == reason
    assert resume_simulation(sim.run_dir.path).finished  # the stop is checkpointed


def test_downloads_share_the_server_uplink(tmp_path):
    # each client downloads at 1000 kbps; the server sends at most 2000 kbps in all
    cfg = config(
        tmp_path,
        "rounds=3",
        'devices.kind="uniform"',
        "devices.down_kbps=1000",
        "asynchronous.server_uplink_kbps=2000",
    )
    sim = start_simulation(cfg)
    budget = 2000 * 125.0
    seen = {"queued": 0, "most": 0}
    handle = sim._handle

    def checked(ev):
        handle(ev)
        downloading = [t for t in sim.book.tasks.values() if t.phase == "downloading"]
        assert sum(t.reserved for t in downloading) <= budget * (1 + 1e-9)
        seen["most"] = max(seen["most"], len(downloading))
        seen["queued"] = max(seen["queued"], len(sim.book.queue))

    sim._handle = checked
    sim.run()
    assert seen["most"] == 2 and seen["queued"] > 0
    metrics.validate(sim.run_dir.records())


def test_work_that_can_never_end_is_an_error_not_a_hang(tmp_path):
    # every link down for good from the start, and no deadline to fail the tasks
    cfg = config(tmp_path, 'network.changes=[{kind="drop", time=0.0, factor=0.0}]')
    sim = start_simulation(cfg)
    with pytest.raises(FedloomError, match="can never end"):
        sim.step()


def test_cli_runs_an_asynchronous_experiment(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--set",
            f'output_dir="{tmp_path}"',
            "--set",
            'asynchronous.mode="fedbuff"',
            "--set",
            "rounds=3",
            "--set",
            "partition.num_clients=20",
            "--set",
            "name=async-cli",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "round 3/3" in result.output
    records = RunDirectory(tmp_path / "async-cli").records()
    metrics.validate(records)
    assert [r["round"] for r in records if r["event"] == "round"] == [1, 2, 3]
