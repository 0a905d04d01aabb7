"""Empirical privacy auditing in one training run, with random-direction canary clients.

An accountant gives an *upper* bound on a run's epsilon; an audit gives a *lower* bound,
measured on the run itself. A gap in the wrong direction (audit above accountant) exposes a
bug in the implementation or in its analysis.

The recipe combines two papers:

1. Canaries (Andrew et al.). Before training, draw ``m`` canary clients whose update is a
   fixed random unit direction; in high dimension these are nearly orthogonal to each other
   and to the real model update. Each canary takes part in the run independently with
   probability 1/2. After training, the statistic of a canary is the cosine between the final
   model delta and its direction: large for canaries that took part, near zero otherwise.
2. Guessing game (Steinke, Nasr & Jagielski). Rank the canaries by score, guess "included"
   for the ``k`` highest and "excluded" for the ``k`` lowest, abstain on the rest, and count
   the correct guesses ``v`` out of ``r = 2k``. If the run is (epsilon, delta)-DP with respect
   to adding or removing one canary, ``v`` is (nearly) stochastically dominated by
   ``Binomial(r, e^eps / (1 + e^eps))``, whatever the guesses are based on. An ``epsilon`` is
   rejected at ``confidence`` when seeing ``v`` or more correct guesses under it has
   probability at most ``1 - confidence``; the lower bound is the largest rejected epsilon.

The bound holds with probability ``confidence`` over the canaries' coin flips and the run's
noise, for any model, data and training algorithm, and costs no extra training run; it is
usually far below the accountant's epsilon (the audit is valid, not tight).

References: Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS
2023 (Theorem 3.1 for pure DP, Theorem 5.2 for (epsilon, delta)-DP, Algorithm 1 for the
guessing game); Andrew, Kairouz, Oh, Oprea, McMahan & Suriyakumar, "One-shot Empirical
Privacy Estimation for Federated Learning", ICLR 2024 (random-direction canary clients and
the cosine statistic).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from fedloom.errors import ConfigError, FedloomError
from fedloom.privacy.accounting import _check_count

EPSILON_SEARCH_MAX = 30.0
"""The largest epsilon :func:`epsilon_lower_bound` reports (a bound of 30 means "at least 30")."""

_BISECTION_STEPS = 60  # halves [0, 30] to below 1e-16: full float64 resolution


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} = {value!r}: must be an integer >= 1")
    return int(value)


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng = {rng!r}: must be a numpy.random.Generator")


def canary_directions(num_canaries: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``num_canaries`` independent uniformly random unit vectors in ``R^dim``, float32
    ``[num_canaries, dim]``: the updates of the canary clients.

    Each row is a standard Gaussian vector divided by its norm, hence uniform on the sphere.
    Two such rows (or a row and any fixed vector) have a cosine of mean 0 and standard
    deviation ``1 / sqrt(dim)``: in a model's dimension they are nearly orthogonal, so a
    canary's trace in the final model barely interferes with the others' or with training.

    References: Andrew et al., "One-shot Empirical Privacy Estimation for Federated
    Learning", ICLR 2024 (canaries drawn isotropically).
    """
    num_canaries = _check_positive_int("num_canaries", num_canaries)
    dim = _check_positive_int("dim", dim)
    _check_rng(rng)
    directions = rng.standard_normal((num_canaries, dim), dtype=np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions


def _finite_array(name: str, value: object) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ConfigError(f"{name} contains NaN or infinite values")
    return array


def canary_scores(initial: np.ndarray, final: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The cosine between the model delta ``final - initial`` and each canary direction,
    float64 ``[m]`` for ``directions`` of shape ``[m, dim]``.

    ``initial`` and ``final`` are the flattened model parameters before and after training
    (any shape with ``dim`` elements, the same for both). Computed in float64.

    References: Andrew et al., "One-shot Empirical Privacy Estimation for Federated
    Learning", ICLR 2024 (the cosine statistic of a canary client).
    """
    initial = _finite_array("initial", initial)
    final = _finite_array("final", final)
    directions = _finite_array("directions", directions)
    if directions.ndim != 2 or directions.shape[0] == 0:
        raise ConfigError(
            f"directions has shape {directions.shape}: must be [num_canaries >= 1, dim]"
        )
    if initial.shape != final.shape:
        raise ConfigError(
            f"initial has shape {initial.shape} but final has shape {final.shape}: must match"
        )
    if initial.size != directions.shape[1]:
        raise ConfigError(
            f"initial and final have {initial.size} elements but directions have "
            f"dim = {directions.shape[1]}: must match"
        )
    delta = (final - initial).ravel()
    delta_norm = np.linalg.norm(delta)
    if delta_norm == 0:
        raise FedloomError("final - initial is the zero vector: its cosine is undefined")
    direction_norms = np.linalg.norm(directions, axis=1)
    zero = np.flatnonzero(direction_norms == 0)
    if zero.size:
        raise ConfigError(f"directions row {int(zero[0])} is the zero vector")
    return (directions @ delta) / (direction_norms * delta_norm)


def _p_value(epsilon: float, num_guesses: int, num_correct: int, delta_mass: float) -> float:
    """An upper bound on P[at least ``num_correct`` of ``num_guesses`` guesses are right] for
    an (epsilon, delta)-DP run, where ``delta_mass = 2 m delta``.

    With ``q = e^eps / (1 + e^eps)`` and ``B ~ Binomial(r, q)``, Theorem 5.2 of Steinke et
    al. bounds it by ``P[B >= v] + 2 m delta max_{1 <= i <= v} P[v - i <= B < v] / i``; the
    window probabilities for every ``i`` are one reversed cumulative sum of the pmf.
    """
    from scipy.special import expit
    from scipy.stats import binom

    q = expit(epsilon)
    tail = float(binom.sf(num_correct - 1, num_guesses, q))
    if delta_mass == 0:
        return tail
    below = binom.pmf(np.arange(num_correct), num_guesses, q)  # P[B = k], k = 0 .. v-1
    windows = np.cumsum(below[::-1])  # i-th entry: P[v - i <= B < v], i = 1 .. v
    spread = float(np.max(windows / np.arange(1, num_correct + 1)))
    return tail + delta_mass * spread


def epsilon_lower_bound(
    num_guesses: int,
    num_correct: int,
    delta: float = 0.0,
    confidence: float = 0.95,
    num_canaries: int | None = None,
) -> float:
    """The largest epsilon rejected at ``confidence`` by ``num_correct`` right guesses out of
    ``num_guesses`` in the one-run guessing game: a lower bound on the run's epsilon at
    ``delta`` that holds with probability ``confidence``.

    An epsilon is rejected when its p-value is at most ``1 - confidence``. For pure DP
    (``delta = 0``) the p-value is ``P[Binomial(r, e^eps / (1 + e^eps)) >= v]``. For
    ``delta > 0`` it gains the term ``2 m delta max_i P[v - i <= B < v] / i`` of Theorem 5.2,
    where ``m`` is ``num_canaries``, the number of canaries that were randomized, guessed or
    not (default: ``num_guesses``, i.e. every canary was guessed). Undercounting ``m``
    overstates the bound, so pass it whenever the auditor abstained.

    The search bisects on ``[0, EPSILON_SEARCH_MAX]`` and keeps the rejected end, so the
    returned epsilon is itself rejected (a valid bound even where the p-value is not monotone
    in epsilon). Returns 0.0 when ``num_correct <= num_guesses / 2`` (no evidence) or when not
    even epsilon = 0 is rejected, and ``EPSILON_SEARCH_MAX`` when everything up to it is.

    References: Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run",
    NeurIPS 2023, Theorem 3.1 (pure DP) and Theorem 5.2 ((epsilon, delta)-DP).
    """
    _check_count("num_guesses", num_guesses)
    _check_count("num_correct", num_correct)
    if num_correct > num_guesses:
        raise ConfigError(
            f"num_correct = {num_correct!r}: must be <= num_guesses = {num_guesses!r}"
        )
    if not 0 <= delta < 1:
        raise ConfigError(f"delta = {delta!r}: must be in [0, 1)")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence = {confidence!r}: must be in (0, 1)")
    if num_canaries is None:
        num_canaries = num_guesses
    else:
        _check_count("num_canaries", num_canaries)
        if num_canaries < num_guesses:
            raise ConfigError(
                f"num_canaries = {num_canaries!r}: must be >= num_guesses = {num_guesses!r} "
                "(every guess is about a distinct canary)"
            )
    r, v = int(num_guesses), int(num_correct)
    if 2 * v <= r:
        return 0.0
    alpha = 1 - confidence
    delta_mass = 2 * int(num_canaries) * float(delta)

    def rejected(epsilon: float) -> bool:
        return _p_value(epsilon, r, v, delta_mass) <= alpha

    lo, hi = 0.0, EPSILON_SEARCH_MAX
    if not rejected(lo):
        return 0.0
    if rejected(hi):
        return hi
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class AuditResult:
    """The outcome of :func:`audit`.

    ``epsilon_lower`` holds with probability ``confidence``; ``num_guesses`` and
    ``num_correct`` are the game's ``r`` and ``v``; ``scores_in_mean`` and ``scores_out_mean``
    are the mean score of the canaries that took part and of those that did not (NaN when
    that group is empty), a quick look at how well the canaries separate.
    """

    epsilon_lower: float
    confidence: float
    num_canaries: int
    num_guesses: int
    num_correct: int
    scores_in_mean: float
    scores_out_mean: float


def audit(
    scores: np.ndarray,
    included: np.ndarray,
    delta: float = 0.0,
    confidence: float = 0.95,
    guess_fraction: float = 0.5,
) -> AuditResult:
    """One-run audit: a lower bound on the run's epsilon at ``delta`` from its canaries.

    ``scores[i]`` is canary ``i``'s statistic (e.g. from :func:`canary_scores`), higher
    meaning "more likely included"; ``included[i]`` says whether it took part. Each canary
    must have been included independently with probability 1/2, decided before the run.

    The guesses use the scores only: with ``m`` canaries and
    ``k = floor(guess_fraction * m / 2)``, the ``k`` highest-scoring canaries are guessed
    included and the ``k`` lowest excluded, abstaining on the middle (ties broken by index).
    ``k`` is fixed before looking at the outcome, so no multiple-testing correction is due;
    trying several ``guess_fraction`` values on the same run and keeping the best would void
    the guarantee. The count of correct guesses goes to :func:`epsilon_lower_bound` with
    ``num_canaries = m``.

    References: Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run",
    NeurIPS 2023, Algorithm 1 and Theorem 5.2; Andrew et al., "One-shot Empirical Privacy
    Estimation for Federated Learning", ICLR 2024.
    """
    scores = _finite_array("scores", scores)
    if scores.ndim != 1:
        raise ConfigError(f"scores has shape {scores.shape}: must be one-dimensional [m]")
    included_raw = np.asarray(included)
    if included_raw.shape != scores.shape:
        raise ConfigError(
            f"included has shape {included_raw.shape} but scores has shape {scores.shape}: "
            "must match"
        )
    if included_raw.dtype != np.bool_:
        bad = np.flatnonzero((included_raw != 0) & (included_raw != 1))
        if bad.size:
            raise ConfigError(
                f"included[{int(bad[0])}] = {included_raw[bad[0]]!r}: must be booleans (or 0/1)"
            )
    mask = included_raw.astype(bool)
    if not 0 < guess_fraction <= 1:
        raise ConfigError(f"guess_fraction = {guess_fraction!r}: must be in (0, 1]")
    m = scores.size
    k = math.floor(guess_fraction * m / 2)
    if k < 1:
        raise ConfigError(
            f"guess_fraction = {guess_fraction!r} with {m} canaries makes no guesses: "
            "need guess_fraction * num_canaries >= 2"
        )
    order = np.argsort(scores, kind="stable")
    num_correct = int(np.count_nonzero(mask[order[-k:]]) + np.count_nonzero(~mask[order[:k]]))
    epsilon_lower = epsilon_lower_bound(2 * k, num_correct, delta, confidence, num_canaries=m)
    return AuditResult(
        epsilon_lower=epsilon_lower,
        confidence=float(confidence),
        num_canaries=m,
        num_guesses=2 * k,
        num_correct=num_correct,
        scores_in_mean=float(scores[mask].mean()) if mask.any() else math.nan,
        scores_out_mean=float(scores[~mask].mean()) if not mask.all() else math.nan,
    )
