"""Convergence monitor: target, patience, smoothing, plateau and exact resume."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedloom.errors import CheckpointError, ConfigError, FedloomError
from fedloom.server.convergence import ConvergenceMonitor, StopDecision


def feed(monitor: ConvergenceMonitor, values: list[float], start: int = 1) -> list:
    return [monitor.observe(r, v) for r, v in enumerate(values, start=start)]


def test_target_reached_on_raw_metric() -> None:
    monitor = ConvergenceMonitor(target=0.95)
    assert feed(monitor, [0.5, 0.9]) == [None, None]
    assert monitor.observe(3, 0.951) == StopDecision(
        "target_reached", 3, "accuracy 0.951 >= target 0.95"
    )


def test_target_ignores_smoothing() -> None:
    monitor = ConvergenceMonitor(target=0.95, smoothing=0.9)
    assert monitor.observe(1, 0.1) is None
    decision = monitor.observe(2, 0.96)
    assert decision is not None and decision.reason == "target_reached"
    assert monitor.smoothed == pytest.approx(0.9 * 0.1 + 0.1 * 0.96)


def test_target_exactly_equal_counts() -> None:
    monitor = ConvergenceMonitor(target=0.5)
    assert monitor.observe(1, 0.5) is not None


def test_min_mode_target() -> None:
    monitor = ConvergenceMonitor(metric="loss", mode="min", target=0.1)
    assert feed(monitor, [0.5, 0.2]) == [None, None]
    assert monitor.observe(3, 0.1) == StopDecision("target_reached", 3, "loss 0.1 <= target 0.1")


def test_patience_with_min_delta() -> None:
    monitor = ConvergenceMonitor(patience=2, min_delta=0.01)
    assert monitor.observe(1, 0.5) is None
    assert (monitor.best, monitor.best_round, monitor.rounds_since_improvement) == (0.5, 1, 0)
    assert monitor.observe(2, 0.505) is None  # +0.005 is not more than min_delta
    assert (monitor.best, monitor.rounds_since_improvement) == (0.5, 1)
    assert monitor.observe(3, 0.52) is None  # +0.02 improves
    assert (monitor.best, monitor.best_round, monitor.rounds_since_improvement) == (0.52, 3, 0)
    assert monitor.observe(4, 0.525) is None
    assert monitor.best == 0.52  # a sub-min_delta gain does not move the best
    decision = monitor.observe(5, 0.529)
    assert decision is not None
    assert (decision.reason, decision.round) == ("early_stopping", 5)
    assert "0.52" in decision.detail and "round 3" in decision.detail
    assert monitor.rounds_since_improvement == 2


def test_patience_in_min_mode() -> None:
    monitor = ConvergenceMonitor(metric="loss", mode="min", patience=2)
    assert feed(monitor, [1.0, 0.8, 0.9, 0.7, 0.75]) == [None] * 5
    assert (monitor.best, monitor.best_round) == (0.7, 4)
    decision = monitor.observe(6, 0.71)
    assert decision is not None and decision.reason == "early_stopping"
    assert "loss" in decision.detail


def test_equal_value_is_not_an_improvement() -> None:
    monitor = ConvergenceMonitor(patience=1)
    assert monitor.observe(1, 0.5) is None
    assert monitor.observe(2, 0.5) is not None


def test_smoothing_is_an_ema_seeded_with_the_first_value() -> None:
    monitor = ConvergenceMonitor(smoothing=0.5)
    assert monitor.smoothed is None and monitor.best is None and monitor.best_round is None
    monitor.observe(1, 1.0)
    assert monitor.smoothed == 1.0
    monitor.observe(2, 0.0)
    assert monitor.smoothed == pytest.approx(0.5 * 1.0 + 0.5 * 0.0)
    monitor.observe(3, 1.0)
    assert monitor.smoothed == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)
    monitor = ConvergenceMonitor(smoothing=0.25)
    feed(monitor, [0.2, 0.6])
    assert monitor.smoothed == pytest.approx(0.25 * 0.2 + 0.75 * 0.6)


def test_patience_tracks_the_smoothed_metric() -> None:
    # raw values 0, 1, 0.6: the raw metric never beats 1, but the EMA keeps rising
    monitor = ConvergenceMonitor(patience=1, smoothing=0.5)
    assert feed(monitor, [0.0, 1.0, 0.6]) == [None, None, None]
    assert monitor.best == pytest.approx(0.5 * 0.5 + 0.5 * 0.6)
    assert monitor.best_round == 3


def test_plateau() -> None:
    monitor = ConvergenceMonitor(plateau_window=3, plateau_tolerance=0.01)
    assert feed(monitor, [0.5, 0.8, 0.802]) == [None, None, None]
    decision = monitor.observe(4, 0.804)
    assert decision is not None
    assert (decision.reason, decision.round) == ("plateau", 4)
    assert "over the last 3" in decision.detail


def test_plateau_needs_a_full_window() -> None:
    monitor = ConvergenceMonitor(plateau_window=3)
    assert feed(monitor, [0.8, 0.8]) == [None, None]
    assert monitor.observe(3, 0.8) is not None


def test_target_takes_precedence() -> None:
    monitor = ConvergenceMonitor(target=0.9, patience=1, plateau_window=2, plateau_tolerance=1)
    monitor.observe(1, 0.95)
    decision = monitor.observe(2, 0.95)
    assert decision is not None and decision.reason == "target_reached"


def test_no_criteria_never_stops() -> None:
    monitor = ConvergenceMonitor()
    assert feed(monitor, [0.1, 0.1, 0.1, 0.1]) == [None] * 4
    assert monitor.rounds_since_improvement == 3


ROUND_TRIP_CONFIG = {
    "patience": 3,
    "min_delta": 0.005,
    "target": 0.97,
    "smoothing": 0.3,
    "plateau_window": 4,
    "plateau_tolerance": 0.02,
}


@given(
    st.lists(st.floats(0, 1, allow_subnormal=False), min_size=2, max_size=30),
    st.data(),
)
def test_state_dict_round_trip_gives_identical_decisions(
    values: list[float], data: st.DataObject
) -> None:
    split = data.draw(st.integers(1, len(values) - 1))
    reference = ConvergenceMonitor(**ROUND_TRIP_CONFIG)
    expected = feed(reference, values)

    first = ConvergenceMonitor(**ROUND_TRIP_CONFIG)
    head = feed(first, values[:split])
    resumed = ConvergenceMonitor(**ROUND_TRIP_CONFIG)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail = feed(resumed, values[split:], start=split + 1)

    assert head + tail == expected
    assert resumed.state_dict() == reference.state_dict()
    assert (resumed.smoothed, resumed.best, resumed.best_round) == (
        reference.smoothed,
        reference.best,
        reference.best_round,
    )


def test_round_trip_mid_patience() -> None:
    monitor = ConvergenceMonitor(patience=2, smoothing=0.5)
    feed(monitor, [0.9, 0.5])
    resumed = ConvergenceMonitor(patience=2, smoothing=0.5)
    resumed.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert resumed.rounds_since_improvement == 1
    decision = resumed.observe(3, 0.5)
    assert decision is not None and decision.reason == "early_stopping"


def test_load_rejects_other_configuration() -> None:
    state = ConvergenceMonitor(patience=3).state_dict()
    with pytest.raises(CheckpointError, match="patience=3"):
        ConvergenceMonitor(patience=4).load_state_dict(state)


def test_load_rejects_missing_keys() -> None:
    state = ConvergenceMonitor().state_dict()
    del state["window"]
    with pytest.raises(CheckpointError, match="window"):
        ConvergenceMonitor().load_state_dict(state)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_metric_is_rejected(value: float) -> None:
    monitor = ConvergenceMonitor(metric="val_loss", mode="min")
    monitor.observe(1, 0.3)
    with pytest.raises(FedloomError, match="val_loss at round 2"):
        monitor.observe(2, value)
    assert monitor.smoothed == 0.3  # the bad value left no trace


def test_rounds_must_increase() -> None:
    monitor = ConvergenceMonitor()
    monitor.observe(5, 0.3)
    with pytest.raises(FedloomError, match="round 5 after round 5"):
        monitor.observe(5, 0.4)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"metric": ""}, "metric"),
        ({"mode": "avg"}, "mode"),
        ({"patience": 0}, "patience"),
        ({"patience": 1.5}, "patience"),
        ({"patience": True}, "patience"),
        ({"min_delta": -0.1}, "min_delta"),
        ({"min_delta": math.nan}, "min_delta"),
        ({"target": math.inf}, "target"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"smoothing": -0.1}, "smoothing"),
        ({"plateau_window": 1}, "plateau_window"),
        ({"plateau_tolerance": 0.0}, "plateau_tolerance"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        ConvergenceMonitor(**kwargs)
    message = str(err.value)
    assert message.startswith(field) and repr(next(iter(kwargs.values()))) in message
