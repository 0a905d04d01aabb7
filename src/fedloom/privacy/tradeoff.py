"""Privacy-utility trade-offs: run one experiment at several privacy settings.

:func:`sweep` runs it at each target epsilon (noise calibrated for each, ``inf`` for no
DP); :func:`plan` searches clients per round, rounds and clip norm at one fixed epsilon
and ranks the candidates by accuracy. Both return typed results that the CLI only
prints and plots, and both run the experiments through a :class:`TrialRunner`, so this
core module never builds a run itself: ``fedloom.assemble.trial_runner(config)`` is the
one that maps a :class:`Trial` onto a copy of the run's config and simulates it.

Example::

    from fedloom.assemble import trial_runner
    result = fedloom.privacy.sweep([1.0, 4.0, math.inf], trial_runner(config))
    best = fedloom.privacy.plan(4.0, trial_runner(config), [10, 20], [50], [0.5, 1.0])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fedloom.errors import ConfigError, FedloomError


@dataclass(frozen=True)
class Trial:
    """One experiment of a sweep or plan: what differs from the base config.

    ``mode`` ``"off"`` runs without DP (``target_epsilon`` None); ``"central"`` calibrates
    the noise to ``target_epsilon``. None elsewhere keeps the base config's value.
    """

    name: str  # suffix of the run's name, e.g. "eps4" or "plan-k10-r50-c0.5"
    mode: Literal["off", "central"]
    target_epsilon: float | None = None
    clip_norm: float | None = None
    clients_per_round: int | None = None
    rounds: int | None = None


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial's run reached."""

    accuracy: float  # final
    best_accuracy: float
    noise_multiplier: float  # 0 without DP
    spent_epsilon: float  # inf without DP
    run: str  # its run directory


TrialRunner = Callable[[Trial], TrialOutcome]


@dataclass(frozen=True)
class SweepRow:
    epsilon: float  # the target; inf = no DP
    outcome: TrialOutcome


@dataclass(frozen=True)
class SweepResult:
    """Accuracy against epsilon, in the order asked."""

    rows: tuple[SweepRow, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "rows": [
                {
                    "epsilon": r.epsilon,
                    "accuracy": r.outcome.accuracy,
                    "best_accuracy": r.outcome.best_accuracy,
                    "noise_multiplier": r.outcome.noise_multiplier,
                    "spent_epsilon": r.outcome.spent_epsilon,
                    "run": r.outcome.run,
                }
                for r in self.rows
            ]
        }


@dataclass(frozen=True)
class PlanRow:
    clients_per_round: int
    rounds: int
    clip_norm: float
    outcome: TrialOutcome


@dataclass(frozen=True)
class PlanResult:
    """The candidates that ran at ``epsilon``, best accuracy first, and the ones that
    could not run (with why)."""

    epsilon: float
    rows: tuple[PlanRow, ...]
    skipped: tuple[tuple[int, int, float, str], ...] = field(default=())

    @property
    def best(self) -> PlanRow:
        return self.rows[0]

    def to_json(self) -> dict[str, object]:
        return {
            "epsilon": self.epsilon,
            "rows": [
                {
                    "clients_per_round": r.clients_per_round,
                    "rounds": r.rounds,
                    "clip_norm": r.clip_norm,
                    "noise_multiplier": r.outcome.noise_multiplier,
                    "accuracy": r.outcome.accuracy,
                    "run": r.outcome.run,
                }
                for r in self.rows
            ],
        }


def epsilon_trial(eps: float) -> Trial:
    """The trial of one target epsilon: central DP calibrated to it (``inf``: no DP)."""
    if math.isinf(eps):
        return Trial(f"eps{eps:g}", "off")
    return Trial(f"eps{eps:g}", "central", target_epsilon=float(eps))


def sweep(
    epsilons: Sequence[float],
    runner: TrialRunner,
    on_trial: Callable[[SweepRow], None] | None = None,
) -> SweepResult:
    """Run the experiment at each target epsilon (``math.inf``: without DP), noise
    calibrated for each; ``on_trial`` sees each row as it finishes."""
    if not epsilons:
        raise ConfigError("epsilons: give at least one target epsilon")
    for eps in epsilons:
        if not eps > 0:  # also refuses NaN
            raise ConfigError(f"epsilons: {eps!r}; every epsilon must be > 0 (or inf)")
    rows = []
    for eps in epsilons:
        row = SweepRow(float(eps), runner(epsilon_trial(eps)))
        rows.append(row)
        if on_trial is not None:
            on_trial(row)
    return SweepResult(tuple(rows))


def plan(
    epsilon: float,
    runner: TrialRunner,
    clients_per_round: Sequence[int],
    rounds: Sequence[int],
    clip_norms: Sequence[float],
    on_trial: Callable[[PlanRow | tuple[int, int, float, str]], None] | None = None,
) -> PlanResult:
    """Try every combination of the candidates at the fixed ``epsilon`` (noise calibrated
    to it for each) and rank them by final accuracy. A candidate the run refuses (for
    example a cohort larger than the population) is skipped with its reason; if none
    runs, ``FedloomError``."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"epsilon = {epsilon!r}: must be finite and > 0")
    for name, values in (
        ("clients_per_round", clients_per_round),
        ("rounds", rounds),
        ("clip_norms", clip_norms),
    ):
        if not values:
            raise ConfigError(f"{name}: give at least one candidate")
    rows, skipped = [], []
    for k, r, c in itertools.product(clients_per_round, rounds, clip_norms):
        trial = Trial(
            f"plan-k{k}-r{r}-c{c:g}",
            "central",
            target_epsilon=float(epsilon),
            clip_norm=float(c),
            clients_per_round=int(k),
            rounds=int(r),
        )
        try:
            item: PlanRow | tuple[int, int, float, str] = PlanRow(k, r, c, runner(trial))
        except FedloomError as err:  # e.g. a cohort larger than the population
            item = (k, r, c, str(err))
            skipped.append(item)
        else:
            rows.append(item)
        if on_trial is not None:
            on_trial(item)
    if not rows:
        raise FedloomError("no candidate configuration could run")
    rows.sort(key=lambda row: -row.outcome.accuracy)
    return PlanResult(float(epsilon), tuple(rows), tuple(skipped))
