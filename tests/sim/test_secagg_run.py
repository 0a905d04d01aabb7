"""Simulated runs under SecAgg+: same model as without it (up to the encoding), dropouts
during the protocol, central and distributed DP, records, resume and refusals."""

import json
import math

import numpy as np
import pytest
import torch

from fedloom.assemble import resume_simulation, start_simulation
from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.secagg.cohort import SecureAggregator
from fedloom.sim import Simulation
from fedloom.sim.shard import Shard


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def config(tmp_path, *extra: str):
    return load_config(None, [f'output_dir="{tmp_path}"', *extra])


def rounds_of(sim: Simulation) -> list[dict]:
    return [r for r in sim.run_dir.records() if r["event"] == "round"]


def spy_rounds(sim: Simulation) -> list[dict]:
    """Record every secure round's updates, result and the global model before it."""
    seen: list[dict] = []
    aggregate = sim.secure.aggregate

    def spy(cohort, updates, dropouts, attempt, **kwargs):
        result = aggregate(cohort, updates, dropouts, attempt, **kwargs)
        seen.append(
            {
                "cohort": len(cohort),
                "updates": {u.client_id: u for u in updates},
                "result": result,
                "params": sim.server.params.copy(),
            }
        )
        return result

    sim.secure.aggregate = spy
    return seen


def flip_margin_fraction(sim: Simulation, params: np.ndarray, eps: float) -> float:
    """Share of test examples whose prediction a parameter change of at most ``eps`` per
    coordinate could flip, to first order: margin <= eps * ||grad(margin)||_1."""
    model = sim.trainer.model
    sim.trainer.flat.load(params)
    x, y = (torch.from_numpy(a) for a in (sim.data.test.x, sim.data.test.y))
    close = 0
    for i in range(len(y)):
        model.zero_grad()
        logits = model(x[i : i + 1])[0]
        top2 = torch.topk(logits, 2).indices
        margin = logits[top2[0]] - logits[top2[1]]
        margin.backward()
        grad_l1 = sum(float(p.grad.abs().sum()) for p in model.parameters())
        close += float(margin.detach()) <= eps * grad_l1
    return close / len(y)


def test_secagg_run_reaches_the_plain_accuracy_within_the_encoding_error(tmp_path):
    extra = ("rounds=8", "checkpoint.every=0")
    plain = start_simulation(config(tmp_path / "plain", *extra))
    plain.run()
    secure = start_simulation(config(tmp_path / "secure", *extra, "secagg.enabled=true"))
    seen = spy_rounds(secure)
    secure.run()
    clip = secure.secure.value_range(None)
    eps = 0.0
    for r in seen:
        total = r["result"].total
        count = len(total.included)
        unit = secure.secure.fixed_point(r["cohort"]).error_bound * count
        # the average sum(w d) / sum(w): errors of at most clip * unit in the numerator
        # and unit in the denominator, with |sum(w d) / sum(w)| <= clip
        bound = 2 * clip * unit / (total.weight - unit)
        ups = [r["updates"][int(c)] for c in total.included]
        n = np.array([u.num_examples for u in ups], dtype=np.float64)
        exact = n @ np.stack([u.delta for u in ups]).astype(np.float64) / n.sum()
        average = total.delta / total.weight
        assert np.abs(average - exact).max() <= bound
        # both runs round the update and the sum to float32 once per round
        f32 = 2**-24 * (np.abs(r["params"]).max() + np.abs(exact).max())
        eps += bound + 4 * f32
    gap = np.abs(secure.server.params - plain.server.params).max()
    assert gap <= eps, "the encoding error was not amplified by training"
    tolerance = flip_margin_fraction(plain, plain.server.params, eps)
    acc_plain, acc_secure = rounds_of(plain)[-1]["accuracy"], rounds_of(secure)[-1]["accuracy"]
    assert acc_plain > 0.8
    assert abs(acc_secure - acc_plain) <= tolerance
    record = rounds_of(secure)[-1]
    assert record["train_loss"] == pytest.approx(rounds_of(plain)[-1]["train_loss"], rel=1e-6)
    cost = record["secagg"]
    assert cost["included"] == record["completed"] == 10
    assert cost["upload_bytes"] > cost["plain_upload_bytes"] and cost["server_s"] > 0


def test_clients_dropping_during_the_protocol_still_aggregate(tmp_path):
    cfg = config(tmp_path, "rounds=8", "secagg.enabled=true", "devices.failure_prob=0.25")
    sim = start_simulation(cfg)
    sim.run()
    records = rounds_of(sim)
    dropped = [r for r in records if r["secagg"]["dropped"].get("masked_input")]
    assert len(dropped) >= 4, "crashed clients never send their masked input"
    for r in records:
        cost = r["secagg"]
        if "aborted" in cost:  # more dropouts than the threshold allows: nothing unmasked
            assert r["status"] == "skipped" and cost["included"] == r["completed"] == 0
            assert r["skip_reason"].startswith("secure aggregation aborted")
        else:
            assert r["status"] == "aggregated" and cost["included"] == r["completed"]
            assert r["completed"] == r["dispatched"] - cost["dropped"].get("masked_input", 0)
    assert sum(r["status"] == "aggregated" for r in dropped) >= 3
    assert records[-1]["accuracy"] > 0.7


def test_a_sparse_graph_with_over_selection_aborts_rather_than_unmask_too_little(tmp_path):
    cfg = config(
        tmp_path,
        "rounds=4",
        "secagg.enabled=true",
        "devices.failure_prob=0.3",
        "server.over_selection=1.5",  # surplus clients' late masked inputs are not used
        "secagg.neighbours=6",
    )
    sim = start_simulation(cfg)
    sim.run()
    for r in rounds_of(sim):
        assert ("aborted" in r["secagg"]) == (r["status"] == "skipped")
        # 7 share holders: t = floor(0.5 * 7) + 1
        assert r["secagg"]["neighbours"] == 6 and r["secagg"]["threshold"] == 4


def test_central_dp_under_secagg_is_the_same_release(tmp_path):
    extra = (
        "rounds=6",
        "partition.num_clients=50",
        'privacy.mode="central"',
        'privacy.accountant="rdp"',
        "privacy.noise_multiplier=1.0",
        "privacy.adaptive_clipping=true",
        "privacy.clip_norm=0.1",
        "privacy.count_stddev=2",
    )
    plain = start_simulation(config(tmp_path / "plain", *extra))
    plain.run()
    secure = start_simulation(config(tmp_path / "secure", *extra, "secagg.enabled=true"))
    secure.run()
    a, b = rounds_of(plain), rounds_of(secure)
    assert [r["epsilon"] for r in a] == [r["epsilon"] for r in b]  # the ledger is unchanged
    # the same unclipped counts arrive through the secure sum: the clip norm adapts alike
    assert [r["clip_norm"] for r in a] == pytest.approx([r["clip_norm"] for r in b], rel=1e-6)
    assert len({r["clip_norm"] for r in b}) > 1
    # same noise (same seed), sums equal up to the encoding: the models nearly coincide
    assert np.abs(secure.server.params - plain.server.params).max() < 1e-5
    assert json.loads((secure.run_dir.path / "privacy.json").read_text())["epsilon"] > 0


def test_distributed_discrete_gaussian_trains_and_is_accounted(tmp_path):
    cfg = config(
        tmp_path,
        "rounds=12",
        "server.clients_per_round=20",
        'privacy.mode="distributed"',
        'privacy.accountant="rdp"',
        "privacy.target_epsilon=20",
        "secagg.enabled=true",
        "secagg.bits=16",
    )
    sim = start_simulation(cfg)
    summary = sim.run()
    assert summary.accuracy > 0.6  # chance is 0.1
    records = rounds_of(sim)
    mech, plan = sim.privacy.distributed, sim.privacy
    # the plan meets the target against the server, which sees the cohorts: unamplified
    assert mech.epsilon(1.0, 12, plan.delta) <= 20
    # each round splits the noise over the clients it dispatched and is accounted with
    # the shares actually summed: without dropouts, the plan's noise every round
    ledger = json.loads((sim.run_dir.path / "privacy.json").read_text())
    assert {e["kind"] for e in ledger["events"]} == {"distributed_dg"}
    for event, r in zip(ledger["events"], records, strict=True):
        assert r["completed"] == r["dispatched"]
        expected = plan.event(shares=r["completed"], cohort=r["dispatched"])
        assert event["noise_multiplier"] == pytest.approx(expected.noise_multiplier)
        assert event["noise_multiplier"] == pytest.approx(mech.event(1.0).noise_multiplier, 1e-3)
        assert event["dim"] == 4096
    assert records[-1]["epsilon"] == ledger["epsilon"] == pytest.approx(20, rel=0.01)
    assert ledger["view"] == "server"
    amplified = ledger["secondary"]["model_epsilon"]  # labelled, never the headline
    assert records[-1]["model_epsilon"] == amplified < ledger["epsilon"]
    assert records[-1]["secagg"]["upload_bytes"] < 2.2 * records[-1]["secagg"]["plain_upload_bytes"]
    assert sim.privacy.distributed.noise_multiplier > 0


def test_loss_based_selection_runs_without_per_client_losses(tmp_path):
    cfg = config(
        tmp_path, "rounds=4", 'selection.strategy="oort"', "secagg.enabled=true", "secagg.bits=16"
    )
    sim = start_simulation(cfg)
    sim.run()
    stats = sim.registry.stats()
    assert np.isnan(stats.loss).all() and np.isnan(stats.loss_sq).all()
    assert (stats.completed > 0).sum() >= 10
    assert all(math.isfinite(r["train_loss"]) for r in rounds_of(sim))


def test_a_16_bit_ring_halves_the_masked_input(tmp_path):
    runs = {}
    for bits, rounding in ((32, "nearest"), (16, "stochastic")):
        cfg = config(
            tmp_path / str(bits),
            "rounds=3",
            "secagg.enabled=true",
            f"secagg.bits={bits}",
            f'secagg.rounding="{rounding}"',
        )
        runs[bits] = start_simulation(cfg)
        runs[bits].run()
    assert runs[16].secure.upload_bytes() * 2 == runs[32].secure.upload_bytes()
    up = {bits: rounds_of(sim)[-1]["secagg"]["upload_bytes"] for bits, sim in runs.items()}
    assert up[32] - up[16] == runs[16].secure.upload_bytes()
    assert rounds_of(runs[16])[-1]["accuracy"] > 0.5


def test_resume_with_secagg_equals_uninterrupted(tmp_path):
    extra = (
        "rounds=5",
        "checkpoint.every=2",
        "secagg.enabled=true",
        'secagg.rounding="stochastic"',
        'simulation.executor="sequential"',  # one executor for both runs
    )
    full = start_simulation(config(tmp_path / "a", *extra))
    full.run()
    crashed = start_simulation(config(tmp_path / "b", *extra))
    for _ in range(3):
        crashed.step()
    resumed = resume_simulation(crashed.run_dir.path)
    resumed.run()
    assert np.array_equal(resumed.server.params, full.server.params)


def test_secagg_is_refused_under_torchrun(tmp_path):
    shard = Shard(0, 1, "allreduce", lambda x: x, lambda x: [x], lambda x: x)
    with pytest.raises(ConfigError, match="secagg.enabled = true under torchrun"):
        start_simulation(config(tmp_path, "secagg.enabled=true"), shard=shard)
    assert not any(tmp_path.iterdir())


def test_aggregator_is_built_from_the_config(tmp_path):
    cfg = config(
        tmp_path, "rounds=1", "secagg.enabled=true", 'secagg.neighbours="all"', "secagg.clip=0.5"
    )
    sim = start_simulation(cfg)
    assert isinstance(sim.secure, SecureAggregator)
    assert sim.secure.graph(10) == (None, 6) and sim.secure.value_range(None) == 0.5
    assert sim.secure.max_examples == int(sim.data.train.sizes().max())


def test_signed_keys_cost_bytes_but_not_the_model(tmp_path):
    runs = {}
    for signed in (False, True):
        cfg = config(tmp_path / str(signed), "rounds=2", "secagg.enabled=true")
        cfg = cfg.model_copy(update={"secagg": cfg.secagg.model_copy(update={"signed": signed})})
        runs[signed] = start_simulation(cfg)
        runs[signed].run()
    assert runs[True].secure.signed and not runs[False].secure.signed
    assert np.array_equal(runs[True].server.params, runs[False].server.params)
    down = {s: rounds_of(sim)[-1]["secagg"]["download_bytes"] for s, sim in runs.items()}
    assert down[True] > down[False]  # every neighbour's signature travels with its keys
