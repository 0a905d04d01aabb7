"""Convergence monitoring and early stopping for the server's evaluation metric.

Sans-IO: the monitor only sees ``(round, value)`` pairs and returns a ``StopDecision``
or ``None``; it never reads clocks or files. Its whole mutable state is a small
JSON-serializable dict so a resumed run makes exactly the decisions an uninterrupted
run would have made. Three stopping rules, checked in this order:

* target: the raw metric reaches ``target`` (``>=`` for ``mode="max"``, ``<=`` for min);
* early stopping: the smoothed metric has not beaten its best by more than ``min_delta``
  for ``patience`` consecutive observations;
* plateau: the last ``plateau_window`` smoothed values span less than
  ``plateau_tolerance``.

Smoothing is an exponential moving average ``s_t = a * s_{t-1} + (1 - a) * x_t``,
``s_0 = x_0``, which keeps noisy per-round evaluations from tripping patience.
References: Prechelt, "Early Stopping - But When?", Neural Networks: Tricks of the Trade,
1998.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from fedloom.errors import CheckpointError, ConfigError, FedloomError


@dataclass(frozen=True)
class StopDecision:
    """Why and when training should stop."""

    reason: str  # "target_reached" | "early_stopping" | "plateau"
    round: int
    detail: str


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class ConvergenceMonitor:
    """Tracks one metric over rounds and says when to stop."""

    def __init__(
        self,
        metric: str = "accuracy",
        mode: str = "max",
        patience: int | None = None,
        min_delta: float = 0.0,
        target: float | None = None,
        smoothing: float = 0.0,
        plateau_window: int | None = None,
        plateau_tolerance: float = 1e-3,
    ) -> None:
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"metric must be a non-empty name, got {metric!r}")
        if mode not in ("max", "min"):
            raise ConfigError(f"mode must be 'max' or 'min', got {mode!r}")
        if patience is not None and not (_is_int(patience) and patience >= 1):
            raise ConfigError(f"patience must be an integer >= 1 or null, got {patience!r}")
        if not (_is_real(min_delta) and min_delta >= 0):
            raise ConfigError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
        if target is not None and not _is_real(target):
            raise ConfigError(f"target must be a finite number or null, got {target!r}")
        if not (_is_real(smoothing) and 0 <= smoothing < 1):
            raise ConfigError(f"smoothing must be in [0, 1), got {smoothing!r}")
        if plateau_window is not None and not (_is_int(plateau_window) and plateau_window >= 2):
            raise ConfigError(
                f"plateau_window must be an integer >= 2 or null, got {plateau_window!r}"
            )
        if not (_is_real(plateau_tolerance) and plateau_tolerance > 0):
            raise ConfigError(
                f"plateau_tolerance must be a finite number > 0, got {plateau_tolerance!r}"
            )
        self.metric = metric
        self.mode = mode
        self.patience = patience
        self.min_delta = float(min_delta)
        self.target = None if target is None else float(target)
        self.smoothing = float(smoothing)
        self.plateau_window = plateau_window
        self.plateau_tolerance = float(plateau_tolerance)
        self._last_round: int | None = None
        self._smoothed: float | None = None
        self._best: float | None = None
        self._best_round: int | None = None
        self._since_improvement = 0
        self._window: deque[float] = deque(maxlen=plateau_window)

    @property
    def smoothed(self) -> float | None:
        """The current smoothed metric, ``None`` before the first observation."""
        return self._smoothed

    @property
    def best(self) -> float | None:
        """The best smoothed value that counted as an improvement."""
        return self._best

    @property
    def best_round(self) -> int | None:
        return self._best_round

    @property
    def rounds_since_improvement(self) -> int:
        """Consecutive observations since the smoothed metric last improved."""
        return self._since_improvement

    def _config(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "mode": self.mode,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "target": self.target,
            "smoothing": self.smoothing,
            "plateau_window": self.plateau_window,
            "plateau_tolerance": self.plateau_tolerance,
        }

    def _improves(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``."""
        if self._best is None:
            return True
        if self.mode == "max":
            return value > self._best + self.min_delta
        return value < self._best - self.min_delta

    def observe(self, round: int, value: float) -> StopDecision | None:
        """Record the metric of ``round`` and return a decision if training should stop."""
        value = float(value)
        if not math.isfinite(value):
            raise FedloomError(
                f"{self.metric} at round {round} is {value}; expected a finite number"
            )
        if self._last_round is not None and round <= self._last_round:
            raise FedloomError(
                f"{self.metric} observed for round {round} after round {self._last_round}; "
                "rounds must increase"
            )
        self._last_round = round
        if self._smoothed is None:
            self._smoothed = value
        else:
            self._smoothed = self.smoothing * self._smoothed + (1 - self.smoothing) * value
        smoothed = self._smoothed
        self._window.append(smoothed)

        if self._improves(smoothed):
            self._best, self._best_round, self._since_improvement = smoothed, round, 0
        else:
            self._since_improvement += 1

        if self.target is not None and (
            value >= self.target if self.mode == "max" else value <= self.target
        ):
            op = ">=" if self.mode == "max" else "<="
            detail = f"{self.metric} {value:.6g} {op} target {self.target:.6g}"
            return StopDecision("target_reached", round, detail)
        if self.patience is not None and self._since_improvement >= self.patience:
            detail = (
                f"smoothed {self.metric} has not improved on best {self._best:.6g} "
                f"(round {self._best_round}) by more than {self.min_delta:.6g} "
                f"for {self._since_improvement} observations"
            )
            return StopDecision("early_stopping", round, detail)
        if self.plateau_window is not None and len(self._window) == self.plateau_window:
            spread = max(self._window) - min(self._window)
            if spread < self.plateau_tolerance:
                detail = (
                    f"smoothed {self.metric} spans {spread:.6g} < {self.plateau_tolerance:.6g} "
                    f"over the last {self.plateau_window} observations"
                )
                return StopDecision("plateau", round, detail)
        return None

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable snapshot: the configuration plus every running quantity."""
        return {
            "config": self._config(),
            "last_round": self._last_round,
            "smoothed": self._smoothed,
            "best": self._best,
            "best_round": self._best_round,
            "rounds_since_improvement": self._since_improvement,
            "window": list(self._window),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` taken from a monitor with the same configuration."""
        expected = set(self.state_dict())
        if set(state) != expected:
            raise CheckpointError(
                f"convergence state has keys {sorted(state)}, expected {sorted(expected)}"
            )
        for field, value in self._config().items():
            saved = state["config"].get(field)
            if saved != value:
                raise CheckpointError(
                    f"convergence state was saved with {field}={saved!r}, "
                    f"but this monitor has {field}={value!r}"
                )
        self._last_round = state["last_round"]
        self._smoothed = state["smoothed"]
        self._best = state["best"]
        self._best_round = state["best_round"]
        self._since_improvement = state["rounds_since_improvement"]
        self._window = deque(state["window"], maxlen=self.plateau_window)
