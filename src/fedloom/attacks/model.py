"""Update attacks: what the round's malicious clients send instead of their honest updates.

Each ``craft(own [M, d], honest [H, d], rng) -> [M, d]`` is vectorized numpy over rows
(float64 inside, float32 out). Omniscient attacks (ALIE, IPM, min-max, min-sum) estimate
the benign distribution from the round's honest updates, or from the malicious clients'
own honest ones when fewer than 2 honest updates are known (``base.reference``); all
their malicious clients send the same crafted row, as in the papers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import ClassVar

import numpy as np

from fedloom.attacks.base import Attack, check_choice, check_number, reference

PERTURBATIONS = ("unit", "std", "sign")
# more halvings than any tau > 0 needs (a float64 step underflows first); a safety bound
_MAX_HALVINGS = 200


@dataclass(frozen=True)
class SignFlip(Attack):
    """Send ``-scale`` times the honest update.

    References: Damaskinos et al., "Asynchronous Byzantine Machine Learning (the case of
    SGD)", ICML 2018 (reversed gradients); Li et al., "RSA: Byzantine-Robust Stochastic
    Aggregation Methods", AAAI 2019 (sign-flipping attack).
    """

    kind: ClassVar[str] = "sign_flip"
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", check_number("scale", self.scale, gt=0))

    def craft(self, own: np.ndarray, honest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (-self.scale * np.asarray(own, dtype=np.float64)).astype(np.float32)


@dataclass(frozen=True)
class Scaling(Attack):
    """Send ``factor`` times the honest update (a boosted update that dominates a mean).

    References: Bhagoji et al., "Analyzing Federated Learning through an Adversarial
    Lens", ICML 2019 (explicit boosting).
    """

    kind: ClassVar[str] = "scaling"
    factor: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", check_number("factor", self.factor, gt=0))

    def craft(self, own: np.ndarray, honest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (self.factor * np.asarray(own, dtype=np.float64)).astype(np.float32)


@dataclass(frozen=True)
class GaussianAttack(Attack):
    """Send ``N(0, std^2)`` noise in every coordinate instead of an update.

    References: Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
    Gradient Descent", NeurIPS 2017 (Gaussian Byzantine workers).
    """

    kind: ClassVar[str] = "gaussian"
    std: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "std", check_number("std", self.std, gt=0))

    def craft(self, own: np.ndarray, honest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(0.0, self.std, size=own.shape).astype(np.float32)


def alie_z(n: int, f: int) -> float:
    """ALIE's ``z_max`` for ``n`` clients of which ``f`` are malicious: with
    ``s = floor(n / 2 + 1) - f`` honest supporters needed for a majority,
    ``z = Phi^{-1}((n - s) / n)``.

    Outside the paper's setting (a malicious majority makes ``s <= 0``; ``n = 1``) ``s``
    is taken as at least 1 and the probability as at least 1/2, so ``z`` is finite and
    ``>= 0``.

    References: Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For
    Distributed Learning", NeurIPS 2019 (Algorithm 3).
    """
    if n < 1 or not 0 <= f <= n:
        raise ValueError(f"alie_z(n={n}, f={f}): needs n >= 1 and 0 <= f <= n")
    s = max(math.floor(n / 2 + 1) - f, 1)
    return NormalDist().inv_cdf(max((n - s) / n, 0.5))


@dataclass(frozen=True)
class Alie(Attack):
    """ "A little is enough": every malicious client sends ``mean - z * std`` of the
    benign updates (coordinate-wise, population std), small enough per coordinate to
    stay inside what robust aggregators accept; ``z`` defaults to :func:`alie_z` of the
    round (``n = M + H`` clients, ``f = M``).

    References: Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For
    Distributed Learning", NeurIPS 2019.
    """

    kind: ClassVar[str] = "alie"
    z: float | None = None

    def __post_init__(self) -> None:
        if self.z is not None:
            object.__setattr__(self, "z", check_number("z", self.z, ge=0))

    def craft(self, own: np.ndarray, honest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ref = reference(own, honest)
        m = own.shape[0]
        z = alie_z(m + honest.shape[0], m) if self.z is None else self.z
        row = ref.mean(axis=0) - z * ref.std(axis=0)
        return np.broadcast_to(row.astype(np.float32), own.shape).copy()


@dataclass(frozen=True)
class Ipm(Attack):
    """Inner-product manipulation: every malicious client sends ``-epsilon`` times the
    benign mean, turning the aggregate's inner product with the true gradient negative
    when enough of them get through.

    References: Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by
    Inner Product Manipulation", UAI 2019.
    """

    kind: ClassVar[str] = "ipm"
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", check_number("epsilon", self.epsilon, gt=0))

    def craft(self, own: np.ndarray, honest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        row = -self.epsilon * reference(own, honest).mean(axis=0)
        return np.broadcast_to(row.astype(np.float32), own.shape).copy()


def perturbation(ref: np.ndarray, kind: str) -> np.ndarray:
    """The direction ``p`` (float64 ``[d]``) of min-max / min-sum over benign rows
    ``ref``: ``"unit"`` ``-mean / ||mean||`` (zeros for a zero mean), ``"std"``
    ``-std`` (coordinate-wise, population), ``"sign"`` ``-sign(mean)``.

    References: Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model
    Poisoning Attacks and Defenses for Federated Learning", NDSS 2021 (Section IV).
    """
    mean = ref.mean(axis=0)
    if kind == "unit":
        norm = float(np.linalg.norm(mean))
        return -mean / norm if norm > 0 else np.zeros_like(mean)
    if kind == "std":
        return -ref.std(axis=0)
    return -np.sign(mean)


def halving_search(feasible: Callable[[float], bool], gamma_init: float, tau: float) -> float:
    """The largest ``gamma`` that ``feasible`` accepts, found as the paper does: try
    ``gamma_init``, then move up or down by a step that halves every time (starting at
    ``gamma_init / 2``) until the last success and the current guess are within ``tau``;
    0 when nothing succeeds. Exact for a feasible set ``[0, gamma*]`` (to ``tau``),
    capped at ``2 * gamma_init``.

    References: Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model
    Poisoning Attacks and Defenses for Federated Learning", NDSS 2021 (Algorithm 1).
    """
    gamma, step, succ = gamma_init, gamma_init / 2, 0.0
    for _ in range(_MAX_HALVINGS):
        if abs(succ - gamma) <= tau:
            break
        if feasible(gamma):
            succ, gamma = gamma, gamma + step
        else:
            gamma -= step
        step /= 2
    return succ


def _distances_to(ref: np.ndarray, p: np.ndarray) -> Callable[[float], np.ndarray]:
    """``gamma -> ||mean + gamma p - ref_i||^2`` for every row, as the quadratic
    ``a_i + 2 gamma b_i + gamma^2 c`` (one pass over the rows, then O(R) per gamma)."""
    e = ref.mean(axis=0) - ref
    a, b, c = np.einsum("ij,ij->i", e, e), e @ p, float(p @ p)
    return lambda gamma: np.maximum(a + 2 * gamma * b + gamma * gamma * c, 0.0)


def max_pairwise_sq_distance(ref: np.ndarray) -> float:
    """The largest squared L2 distance between two rows of ``ref`` (Gram matrix)."""
    sq = np.einsum("ij,ij->i", ref, ref)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (ref @ ref.T)
    return float(max(d2.max(), 0.0))


def max_sum_sq_distance(ref: np.ndarray) -> float:
    """The largest, over rows ``i``, of ``sum_j ||ref_i - ref_j||^2``, without the
    pairwise matrix: ``R ||r_i||^2 + sum_j ||r_j||^2 - 2 r_i . sum_j r_j``."""
    sq = np.einsum("ij,ij->i", ref, ref)
    sums = ref.shape[0] * sq + sq.sum() - 2.0 * (ref @ ref.sum(axis=0))
    return float(max(sums.max(), 0.0))


def min_max_gamma(ref: np.ndarray, p: np.ndarray, gamma_init: float, tau: float) -> float:
    """Min-max's ``gamma``: the largest (by :func:`halving_search`) such that
    ``mean + gamma p`` is no farther from any row of ``ref`` than the rows are from
    each other.

    References: Shejwalkar & Houmansadr, NDSS 2021 (min-max attack, Eq. 6).
    """
    dist, bound = _distances_to(ref, p), max_pairwise_sq_distance(ref)
    return halving_search(lambda g: float(dist(g).max()) <= bound, gamma_init, tau)


def min_sum_gamma(ref: np.ndarray, p: np.ndarray, gamma_init: float, tau: float) -> float:
    """Min-sum's ``gamma``: the largest (by :func:`halving_search`) such that the sum of
    squared distances from ``mean + gamma p`` to the rows of ``ref`` is at most the
    largest such sum of any row of ``ref``.

    References: Shejwalkar & Houmansadr, NDSS 2021 (min-sum attack, Eq. 7).
    """
    dist, bound = _distances_to(ref, p), max_sum_sq_distance(ref)
    return halving_search(lambda g: float(dist(g).sum()) <= bound, gamma_init, tau)


@dataclass(frozen=True)
class MinMax(Attack):
    """Every malicious client sends ``mean + gamma * p``: the largest step along the
    perturbation ``p`` (``perturbation`` = unit, std or sign) whose distance to every
    benign update stays within the benign updates' largest pairwise distance.

    References: Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model
    Poisoning Attacks and Defenses for Federated Learning", NDSS 2021.
    """

    kind: ClassVar[str] = "min_max"
    perturbation: str = "std"
    gamma_init: float = 10.0
    tau: float = 1e-5

    def __post_init__(self) -> None:
        check_choice("perturbation", self.perturbation, PERTURBATIONS)
        object.__setattr__(self, "gamma_init", check_number("gamma_init", self.gamma_init, gt=0))
        object.__setattr__(self, "tau", check_number("tau", self.tau, gt=0))

    def craft(self, own: np.ndarray, honest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ref = reference(own, honest)
        p = perturbation(ref, self.perturbation)
        row = ref.mean(axis=0) + self.gamma(ref, p) * p
        return np.broadcast_to(row.astype(np.float32), own.shape).copy()

    def gamma(self, ref: np.ndarray, p: np.ndarray) -> float:
        """The step along ``p`` for benign rows ``ref`` (:func:`min_max_gamma`)."""
        return min_max_gamma(ref, p, self.gamma_init, self.tau)


@dataclass(frozen=True)
class MinSum(MinMax):
    """Every malicious client sends ``mean + gamma * p``: the largest step along the
    perturbation whose sum of squared distances to the benign updates stays within the
    largest such sum of a benign update.

    References: Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model
    Poisoning Attacks and Defenses for Federated Learning", NDSS 2021.
    """

    kind: ClassVar[str] = "min_sum"

    def gamma(self, ref: np.ndarray, p: np.ndarray) -> float:
        """The step along ``p`` for benign rows ``ref`` (:func:`min_sum_gamma`)."""
        return min_sum_gamma(ref, p, self.gamma_init, self.tau)
