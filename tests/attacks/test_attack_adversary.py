"""The adversary: who is malicious, when it acts, what it poisons, and its hook in the
synchronous and asynchronous simulators."""

import numpy as np
import pytest
import torch

from fedloom.assemble import start_simulation
from fedloom.attacks import Adversary, Backdoor, Scaling, SignFlip, build_adversary
from fedloom.attacks.adversary import malicious_clients
from fedloom.config import AttackConfig, load_config
from fedloom.data.federated import FederatedData
from fedloom.errors import ConfigError
from fedloom.records import ClientMetrics, Update


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def updates(ids, d=6, seed=0) -> list[Update]:
    rng = np.random.default_rng(seed)
    m = ClientMetrics(train_loss=1.0, steps=1, epochs=1.0)
    return [
        Update(int(c), 3, 2, rng.normal(size=d).astype(np.float32), 10 + int(c), m) for c in ids
    ]


def small_data(num_clients=8) -> FederatedData:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=400)
    return FederatedData.from_arrays(x, y, partition="iid", num_clients=num_clients, seed=0)


def test_malicious_clients_are_reproducible_and_rounded():
    cfg = AttackConfig(kind="sign_flip", clients=0.25)
    first = malicious_clients(cfg, 40, seed=7)
    assert first.dtype == np.int64 and len(first) == 10
    assert np.array_equal(first, np.sort(first)) and len(set(first.tolist())) == 10
    assert np.array_equal(first, malicious_clients(cfg, 40, seed=7))
    assert not np.array_equal(first, malicious_clients(cfg, 40, seed=8))
    assert len(malicious_clients(AttackConfig(kind="gaussian", clients=0.01), 20, 0)) == 1
    listed = AttackConfig(kind="gaussian", clients=[5, 1])
    assert malicious_clients(listed, 6, 0).tolist() == [1, 5]
    with pytest.raises(ConfigError, match=r"attack.clients = \[5, 1\] names client 5"):
        malicious_clients(listed, 5, 0)


def test_act_replaces_only_the_malicious_rows_from_start_round_on():
    adversary = Adversary(Scaling(factor=3.0), np.array([2, 5]), start_round=3, seed=0)
    before = updates([1, 2, 4, 5])
    assert adversary.act(before, 2) is before  # not yet
    after = adversary.act(before, 3)
    for u, v in zip(before, after, strict=True):
        assert (u.client_id, u.round, u.version, u.num_examples) == (
            v.client_id,
            v.round,
            v.version,
            v.num_examples,
        )
        assert v.delta.dtype == np.float32 and v.delta.shape == u.delta.shape
        want = 3 * u.delta if u.client_id in (2, 5) else u.delta
        np.testing.assert_allclose(v.delta, want, rtol=1e-6)
    honest_only = updates([0, 1])
    assert adversary.act(honest_only, 9) is honest_only
    assert adversary.act([], 9) == []


def test_act_hands_the_honest_rows_of_the_same_list_to_the_attack():
    seen = {}

    class Spy(SignFlip):
        def craft(self, own, honest, rng):
            seen["own"], seen["honest"] = own.copy(), honest.copy()
            return super().craft(own, honest, rng)

    ups = updates([0, 1, 2, 3])
    Adversary(Spy(), np.array([1, 3]), 1, 0).act(ups, 1)
    np.testing.assert_array_equal(seen["own"], np.stack([ups[1].delta, ups[3].delta]))
    np.testing.assert_array_equal(seen["honest"], np.stack([ups[0].delta, ups[2].delta]))


def test_act_replays_a_round_and_draws_anew_in_the_next():
    adversary = Adversary(Scaling(), np.array([0, 1]), 1, seed=4)
    gaussian = build_adversary(AttackConfig(kind="gaussian", clients=[0, 1]), small_data(), seed=4)[
        0
    ]
    assert gaussian is not None and adversary.clients.tolist() == [0, 1]
    ups = updates([0, 1, 2])
    a = gaussian.act(ups, 5)
    b = gaussian.act(ups, 5)
    c = gaussian.act(ups, 6)
    np.testing.assert_array_equal(a[0].delta, b[0].delta)
    assert not np.array_equal(a[0].delta, c[0].delta)
    assert not np.array_equal(a[0].delta, a[1].delta)


def test_build_adversary_poisons_copies_of_the_malicious_clients_data():
    data = small_data()
    x0, y0 = data.train.x.copy(), data.train.y.copy()
    none, same = build_adversary(AttackConfig(), data, seed=0)
    assert none is None and same is data
    cfg = AttackConfig(kind="backdoor", clients=[1, 6], params={"poison_fraction": 1.0})
    adversary, poisoned = build_adversary(cfg, data, seed=0)
    assert isinstance(adversary.attack, Backdoor)
    top = float(x0.max())
    assert adversary.attack.trigger_value == top  # the training data's largest value
    owner = data.train.client_index()
    bad = np.isin(owner, [1, 6])
    assert (poisoned.train.y[bad] == 0).all()
    assert (poisoned.train.x[bad][:, :, -3:, -3:] == top).all()
    np.testing.assert_array_equal(poisoned.train.x[~bad], x0[~bad])
    np.testing.assert_array_equal(poisoned.train.y[~bad], y0[~bad])
    np.testing.assert_array_equal(data.train.x, x0)  # the given data is unchanged
    np.testing.assert_array_equal(data.train.y, y0)
    assert poisoned.test is data.test and poisoned.holdout is data.holdout
    # the trigger the benchmark stamps on test examples is the training one
    triggered = adversary.attack.apply_trigger(data.test.x)
    assert (triggered[:, :, -3:, -3:] == top).all()
    flip, flipped = build_adversary(AttackConfig(kind="label_flip", clients=[2]), data, 0)
    assert flip is not None and flip.act(updates([2, 3]), 4)[0].delta is not None
    np.testing.assert_array_equal(flipped.train.y[owner == 2], 2 - y0[owner == 2])


def test_build_adversary_refuses_bad_params():
    cfg = AttackConfig(kind="ipm", params={"eps": 0.5})
    with pytest.raises(ConfigError, match=r"attack.params.eps = 0.5: .*accepted: epsilon"):
        build_adversary(cfg, small_data(), seed=0)


def run_config(tmp_path, *extra: str):
    return load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=5",
            "partition.num_clients=10",
            "server.clients_per_round=5",
            'attack.kind="scaling"',
            "attack.clients=[1, 2, 3, 4]",
            "attack.params.factor=1e30",  # overflows the server's norm check: visible refusals
            'simulation.executor="sequential"',
            *extra,
        ],
    )


def refused(sim) -> dict[int, set[int]]:
    """Per recorded round, the clients whose updates the server refused."""
    return {
        r["round"]: {e["client"] for e in r["excluded"] if e["outcome"] == "rejected"}
        for r in sim.run_dir.records()
        if r["event"] == "round"
    }


@pytest.mark.parametrize("mode", ["off", "fedbuff"])
def test_the_simulators_apply_the_adversary_to_trained_updates(tmp_path, mode):
    cfg = run_config(
        tmp_path,
        "attack.start_round=2",
        f'asynchronous.mode="{mode}"',
        "asynchronous.buffer_size=3",
        "asynchronous.concurrency=6",
    )
    sim = start_simulation(cfg)  # the run is built with its adversary
    assert sim.adversary is not None
    sim.run()
    per_round = refused(sim)
    assert per_round[1] == set()  # before start_round the malicious clients train honestly
    later = set().union(*(per_round[r] for r in per_round if r >= 2))
    assert later and later <= {1, 2, 3, 4}


def test_without_an_adversary_nothing_is_refused(tmp_path):
    sim = start_simulation(run_config(tmp_path, 'attack.kind="none"'))
    assert sim.adversary is None
    sim.run()
    assert all(not ids for ids in refused(sim).values())
