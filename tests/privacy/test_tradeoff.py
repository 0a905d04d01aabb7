"""fedloom.privacy.sweep / plan called from Python: typed results, the loops' rules with a
stand-in runner, and one real sweep through the simulator."""

from __future__ import annotations

import math

import pytest

import fedloom.privacy as privacy
from fedloom.errors import ConfigError, FedloomError
from fedloom.privacy import PlanRow, Trial, TrialOutcome


def fake_runner(log: list[Trial]):  # noqa: ANN201
    """Accuracy grows with epsilon, cohort size and rounds; a cohort of 99 cannot run."""

    def run(trial: Trial) -> TrialOutcome:
        log.append(trial)
        if trial.clients_per_round == 99:
            raise ConfigError("server.clients_per_round = 99 exceeds partition.num_clients")
        eps = trial.target_epsilon or math.inf
        acc = 1 - 1 / (1 + min(eps, 100)) + 0.001 * (trial.clients_per_round or 0)
        acc += 0.0001 * (trial.rounds or 0) - 0.01 * (trial.clip_norm or 0)
        return TrialOutcome(acc, acc, 0.0 if trial.mode == "off" else 1 / eps, eps, "runs/x")

    return run


def test_sweep_runs_each_epsilon_in_order_and_no_dp_for_inf() -> None:
    log: list[Trial] = []
    seen = []
    result = privacy.sweep([4.0, 0.5, math.inf], fake_runner(log), on_trial=seen.append)
    assert [r.epsilon for r in result.rows] == [4.0, 0.5, math.inf]
    assert [(t.mode, t.target_epsilon) for t in log] == [
        ("central", 4.0),
        ("central", 0.5),
        ("off", None),
    ]
    assert seen == list(result.rows)
    assert result.to_json()["rows"][0]["epsilon"] == 4.0


@pytest.mark.parametrize("bad", [[], [0.0], [-1.0], [math.nan]])
def test_sweep_refuses_bad_epsilons_before_running(bad: list[float]) -> None:
    log: list[Trial] = []
    with pytest.raises(ConfigError, match="epsilon"):
        privacy.sweep(bad, fake_runner(log))
    assert log == []


def test_plan_ranks_every_candidate_and_skips_what_cannot_run() -> None:
    log: list[Trial] = []
    result = privacy.plan(2.0, fake_runner(log), [5, 10, 99], [3, 6], [0.5, 1.0])
    assert len(log) == 12 and all(t.target_epsilon == 2.0 for t in log)
    assert len(result.rows) == 8 and len(result.skipped) == 4
    accuracies = [r.outcome.accuracy for r in result.rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert isinstance(result.best, PlanRow)
    assert (result.best.clients_per_round, result.best.rounds, result.best.clip_norm) == (
        10,
        6,
        0.5,
    )
    assert all("exceeds" in why for *_, why in result.skipped)


def test_plan_refuses_bad_input_and_a_plan_where_nothing_runs() -> None:
    log: list[Trial] = []
    with pytest.raises(ConfigError, match="epsilon = inf"):
        privacy.plan(math.inf, fake_runner(log), [5], [3], [1.0])
    with pytest.raises(ConfigError, match="rounds: give at least one"):
        privacy.plan(1.0, fake_runner(log), [5], [], [1.0])
    with pytest.raises(FedloomError, match="no candidate"):
        privacy.plan(1.0, fake_runner(log), [99], [3], [1.0])
