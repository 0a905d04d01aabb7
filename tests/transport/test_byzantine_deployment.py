"""Malicious deployment clients (``fedloom client --attack``) and the defences against them
over gRPC: robust aggregation, the example-count clamp, anomaly screening and quarantine.

The unit tests check the client's attack hook without processes; the deployment test
starts real server and client processes on 127.0.0.1 and asserts only what the run's
records and the processes' logs show, never how long anything took.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from deployment import Deployment

from fedloom.attacks import Backdoor, Ipm, LabelFlip, SignFlip
from fedloom.data.arrays import ArrayDataset, ClientPartition
from fedloom.data.storage import client_dir, read_client, write_partition
from fedloom.errors import ConfigError
from fedloom.metrics import validate
from fedloom.transport.client import (
    OMNISCIENT_ATTACKS,
    DeploymentClient,
    attack_params,
    craft_own,
    malicious_attack,
    poison_own,
)


def _dataset(n: int = 12, classes: int = 4) -> ArrayDataset:
    x = np.arange(n * 6, dtype=np.float32).reshape(n, 6) / 10
    return ArrayDataset(x, np.arange(n, dtype=np.int64) % classes, classes)


def test_attack_params_read_toml_values_else_strings() -> None:
    params = attack_params(["scale=100", "epsilon = 0.5", "perturbation=std", 'trigger="square"'])
    assert params == {"scale": 100, "epsilon": 0.5, "perturbation": "std", "trigger": "square"}
    with pytest.raises(ConfigError, match="--attack-param 'scale': expected name=value"):
        attack_params(["scale"])


@pytest.mark.parametrize("kind", OMNISCIENT_ATTACKS)
def test_omniscient_attacks_are_refused_with_their_name(kind: str) -> None:
    with pytest.raises(ConfigError, match=f"--attack '{kind}': an omniscient attack"):
        malicious_attack(kind, {})


def test_malicious_attack_checks_kind_and_params() -> None:
    assert malicious_attack("sign_flip", {"scale": 100}) == SignFlip(scale=100.0)
    with pytest.raises(ConfigError, match="attack.params.factor"):
        malicious_attack("sign_flip", {"factor": 2})
    with pytest.raises(ConfigError, match="attack.kind = 'nope'"):
        malicious_attack("nope", {})


def test_craft_own_is_the_attack_on_this_client_alone() -> None:
    delta = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    crafted = craft_own(SignFlip(scale=100.0), delta, rng)
    assert crafted.dtype == np.float32
    np.testing.assert_array_equal(crafted, -100 * delta)
    # IPM estimates the benign mean by the client's own update
    np.testing.assert_allclose(craft_own(Ipm(epsilon=0.5), delta, rng), -0.5 * delta)
    # a backdoor without boost: the cohort size is unknown, so its update goes unboosted
    np.testing.assert_array_equal(craft_own(Backdoor(), delta, rng), delta)


def test_poison_own_poisons_every_example_of_this_client_on_a_copy() -> None:
    train = _dataset()
    rng = np.random.default_rng(0)
    flipped = poison_own(LabelFlip(), train, rng)
    np.testing.assert_array_equal(flipped.y, 3 - train.y)
    np.testing.assert_array_equal(train.y, np.arange(12) % 4)  # the input is unchanged
    assert poison_own(SignFlip(), train, rng) is train  # an update attack poisons nothing
    stamped = poison_own(Backdoor(trigger_size=2, poison_fraction=0.5, target=1), train, rng)
    changed = np.flatnonzero((stamped.x != train.x).any(axis=1) | (stamped.y != train.y))
    assert changed.size == 6  # half of this client's examples
    np.testing.assert_array_equal(stamped.y[changed], 1)
    top = float(train.x.max())  # the trigger value defaults to this client's largest value
    np.testing.assert_array_equal(stamped.x[changed][:, -2:], top)


def test_malicious_client_trains_on_poisoned_data_and_reports_the_honest_join(
    tmp_path: Path,
) -> None:
    """The deployment client poisons its own data when it loads, joins with its true
    count and histogram, and declares the claimed count in its uploads."""
    train = _dataset()
    pool = ClientPartition(train.x, train.y, np.array([0, 12]), train.num_classes)
    write_partition(tmp_path, pool, None)
    client = DeploymentClient(
        "127.0.0.1:1",
        client_dir(tmp_path, 0),
        insecure=True,
        share_labels=True,
        attack=LabelFlip(),
        claim_examples=100_000,
    )
    try:
        np.testing.assert_array_equal(client.y.numpy(), 3 - train.y)
        assert client.report.num_examples == 12
        assert list(client.report.label_counts) == [3, 3, 3, 3]
        assert client._declared_examples() == 100_000
    finally:
        client.channel.close()
    with pytest.raises(ConfigError, match="--claim-examples 0: expected >= 1"):
        DeploymentClient("127.0.0.1:1", client_dir(tmp_path, 0), insecure=True, claim_examples=0)


DEFENCES = """
[aggregation]
rule = "median"
[anomaly]
enabled = true
reputation_decay = 0.5
quarantine_below = 0.6
probation_rounds = 5
"""


def test_deployment_defends_against_a_boosting_client_that_overclaims(tmp_path: Path) -> None:
    """Five clients, one of them (client 4) malicious: it uploads -100 times its honest
    update and declares 100,000 examples (its join reported its true count). The server
    clamps the claim to the joined count (the round's ``clamped_examples``), screening
    flags the boosted update and leaves it out, and the flag drops the client's
    reputation below ``quarantine_below``: it is quarantined for longer than the run and
    gets no more work, while the median of the honest clients keeps the model improving."""
    d = Deployment(tmp_path, clients=5, rounds=4, epochs=1, extra=DEFENCES)
    bad = 4
    joined = len(read_client(client_dir(d.data_root, bad))[0])
    try:
        d.start_server("--min-clients", "5")  # round 1 waits for every client
        attack = ("--attack", "sign_flip", "--attack-param", "scale=100")
        claim = ("--claim-examples", "100000")
        procs = [d.start_client(i, None, *(attack + claim if i == bad else ())) for i in range(5)]
        d.wait_server()
        for proc in procs:
            assert proc.wait(60) == 0, d.logs()
        records = d.records()
        validate(records)
        rounds = [r for r in records if r.get("event") == "round"]
        assert [r["round"] for r in rounds] == [1, 2, 3, 4]
        first = rounds[0]
        # the claim is clamped to what the client reported at its join
        assert first["clamped_examples"] == {str(bad): [100_000, joined]}
        # screening flags the boosted update and leaves it out of the round
        assert [f["client"] for f in first["anomaly"]["flagged"]] == [bad]
        assert first["anomaly"]["screened"] == 5
        assert [(e["client"], e["kind"]) for e in first["excluded"]] == [(bad, "anomaly")]
        assert first["completed"] == 4 and first["rejected"] == 1
        # the flag quarantines it past the run's last round; nobody else is touched
        decisions = [
            (r["round"], e["client"], e["action"])
            for r in rounds
            for e in r.get("reputation") or []
        ]
        assert decisions == [(1, bad, "quarantine")]
        assert first["reputation"][0]["until"] > rounds[-1]["round"]
        # quarantined: no more work; every later round is the four honest clients, clean
        for r in rounds[1:]:
            assert r["selected"] == 4 and r["completed"] == 4, r
            assert r["anomaly"]["flagged"] == [] and "clamped_examples" not in r
        attacker = next(tmp_path.glob(f"client-{bad}-*.log")).read_text()
        assert "MALICIOUS client client-000004: attack SignFlip(scale=100.0)" in attacker
        assert "done: 1 rounds trained" in attacker
        server = Path(d.server_log).read_text()
        assert f"client-00000{bad} declared 100000 examples; weighted as {joined}" in server
        accuracy = [records[0]["accuracy"], *(r["accuracy"] for r in rounds)]
        assert accuracy[-1] > accuracy[0], accuracy
    finally:
        d.close()
