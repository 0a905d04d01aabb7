"""Differential privacy of asynchronous training: each client's own releases, no sampling.

Nobody is sampled asynchronously (clients get work when idle), so the guarantee is the
worst client's composition of the unsampled releases its updates entered, and a client
gets no work past what the budget allows it (an individual privacy filter).
"""

from __future__ import annotations

import pytest

from fedloom.assemble import privacy_plan
from fedloom.config import ConfigError, parse_config
from fedloom.privacy.accounting import MechanismEvent, compose_epsilon
from fedloom.privacy.ledger import Budget, PrivacyLedger
from fedloom.server.async_engine import allowed_releases

ASYNC = {"mode": "fedbuff", "buffer_size": 5, "concurrency": 10, "max_contributions": 8}


def config(**privacy: object) -> object:
    return parse_config(
        {
            "partition": {"num_clients": 50},
            "privacy": {"mode": "central", **privacy},
            "asynchronous": ASYNC,
        }
    )


def test_asynchronous_central_dp_is_calibrated_unsampled_over_max_contributions() -> None:
    plan = privacy_plan(config(target_epsilon=4.0, delta=1e-5), 50)  # type: ignore[arg-type]
    assert plan.sampling_rate == 1.0 and plan.rounds == 8 and plan.view == "participation"
    assert plan.expected_clients == 5  # the buffer
    eps = compose_epsilon([plan.event(count=8)], 1e-5, "pld")
    assert eps == pytest.approx(4.0, rel=0.02)


def test_participation_view_charges_each_client_only_the_releases_it_entered() -> None:
    ledger = PrivacyLedger(None, None, "pld", delta=1e-5, view="participation")
    event = MechanismEvent("gaussian", 2.0, 1.0, 1)
    for step, clients in enumerate([[0, 1], [0, 2], [0, 3]], start=1):
        ledger.record(step, event, clients=clients)
    worst = compose_epsilon([MechanismEvent("gaussian", 2.0, 1.0, 3)], 1e-5, "pld")
    assert ledger.epsilon() == pytest.approx(worst)  # client 0 entered all three
    assert ledger.participations()[0] == 3 and ledger.participations()[3] == 1
    assert ledger.secondary() == {}
    saved = ledger.to_json()
    assert saved["view"] == "participation" and saved["participations"]["max_per_client"] == 3


def test_the_budget_allows_exactly_the_releases_that_fit() -> None:
    plan = privacy_plan(config(noise_multiplier=3.0, delta=1e-5), 50)  # type: ignore[arg-type]
    budget = Budget(2.0, 1e-5)
    n = allowed_releases(plan, budget, "pld", "participation")

    def eps(k: int) -> float:
        return compose_epsilon([plan.event(count=k)], 1e-5, "pld")

    assert n >= 1 and eps(n) <= 2.0 < eps(n + 1)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"secagg": {"enabled": True}}, "secagg.enabled"),
        ({"server": {"quorum": 2}}, "server.quorum"),
        ({"privacy": {"mode": "central", "noise_multiplier": 1.0}}, "max_contributions"),
        ({"privacy": {"mode": "local", "local_epsilon": 2.0}}, "max_contributions"),
        ({"privacy": {"audit_canaries": 4}}, "audit_canaries"),
        ({"compression": {"codec": "fp16", "download": "fp16"}}, "compression.download"),
        (
            {"compression": {"codec": "topk", "adaptive": True}, "server": {"deadline_s": 60}},
            "compression.adaptive",
        ),
        ({"partition": {"num_clients": 3}, "asynchronous": {"buffer_size": 5}}, "buffer_size"),
    ],
)
def test_asynchronous_mode_refuses_what_it_cannot_run_with(extra: dict, match: str) -> None:
    data = {"asynchronous": {"mode": "fedbuff"}}
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value}
    with pytest.raises(ConfigError, match=match):
        parse_config(data)
