"""Byzantine-robust aggregation rules over a cohort's rows ``[K, d]``.

Each rule is a plain function (rows in, float32 ``[d]`` out) and a :class:`Reducer`
with ``decomposable = False``: a robust statistic needs every row in one place, so it
never runs under an all-reduce or secure aggregation. The reducers count each client
once and ignore the example weights (except ``norm_bound``, which bounds each row's
influence before FedAvg's weighted mean): a Byzantine client can claim any example
count, so a count-weighted statistic would hand it as much influence as it asks for.
A reducer's ``partial`` is its statistic times the weight sum, so the shared ``finish``
(divide by the total weight) returns the statistic itself. Arithmetic that accumulates
(distances, sums, Weiszfeld iterations) runs in float64; results are float32.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedloom.aggregation.fednova import FedNova
from fedloom.aggregation.mean import check_weights, weighted_sum
from fedloom.aggregation.reducer import ReduceContext, Reducer, WeightedMean
from fedloom.errors import ConfigError, FedloomError
from fedloom.records import TrainPlan

# --------------------------------------------------------------------------- functions


def median(rows: np.ndarray) -> np.ndarray:
    """Coordinate-wise median of the rows.

    References: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates", ICML 2018.
    """
    x = _matrix(rows)
    return np.median(x.astype(np.float64), axis=0).astype(np.float32)


def trimmed_mean(rows: np.ndarray, beta: float) -> np.ndarray:
    """Coordinate-wise trimmed mean: per coordinate drop the ``floor(beta * K)`` largest
    and smallest values and average the rest (``beta`` in ``[0, 0.5)``).

    References: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates", ICML 2018.
    """
    _check_beta(beta)
    x = _matrix(rows)
    k = x.shape[0]
    b = math.floor(beta * k)
    kept = np.sort(x, axis=0)[b : k - b]
    return kept.mean(axis=0, dtype=np.float64).astype(np.float32)


def krum(rows: np.ndarray, f: int, m: int = 1) -> np.ndarray:
    """Krum (``m = 1``): the row whose squared distances to its ``K - f - 2`` nearest
    other rows sum least; Multi-Krum (``m > 1``): the mean of the ``m`` best-scored rows.
    Needs ``K > 2f + 2``.

    References: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
    """
    x = _matrix(rows)
    k = x.shape[0]
    _check_count("f", f, 0)
    _check_count("m", m, 1)
    if k <= 2 * f + 2:
        raise ConfigError(
            f"krum with f = {f} needs more than 2f + 2 = {2 * f + 2} rows, got K = {k}"
        )
    if m > k:
        raise ConfigError(f"aggregation.params.m = {m} exceeds the K = {k} rows to select from")
    best = np.argsort(_krum_scores(_sq_distances(x), k - f - 2), kind="stable")[:m]
    return x[best].mean(axis=0, dtype=np.float64).astype(np.float32)


def bulyan(rows: np.ndarray, f: int) -> np.ndarray:
    """Bulyan: select ``theta = K - 2f`` rows by Krum applied again to the rows not yet
    selected, then per coordinate average the ``theta - 2f`` selected values closest to
    their median. Needs ``K >= 4f + 3``.

    A late selection sees fewer than ``2f + 3`` remaining rows; its Krum neighbour count
    ``n - f - 2`` is kept at least 1, so it still prefers the most central row.

    References: El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed
    Learning in Byzantium", ICML 2018.
    """
    x = _matrix(rows)
    k = x.shape[0]
    _check_count("f", f, 0)
    if k < 4 * f + 3:
        raise ConfigError(
            f"bulyan with f = {f} needs at least 4f + 3 = {4 * f + 3} rows, got K = {k}"
        )
    theta = k - 2 * f
    dist = _sq_distances(x)
    remaining = np.arange(k)
    chosen = []
    for _ in range(theta):
        n = remaining.size
        sub = dist[np.ix_(remaining, remaining)]
        neighbours = min(max(n - f - 2, 1), n - 1)
        best = int(np.argmin(_krum_scores(sub, neighbours))) if n > 1 else 0
        chosen.append(remaining[best])
        remaining = np.delete(remaining, best)
    selected = x[np.asarray(chosen)].astype(np.float64)
    centre = np.median(selected, axis=0)
    closest = np.argsort(np.abs(selected - centre), axis=0, kind="stable")[: theta - 2 * f]
    kept = np.take_along_axis(selected, closest, axis=0)
    return kept.mean(axis=0).astype(np.float32)


def geometric_median(
    rows: np.ndarray,
    weights: np.ndarray | None = None,
    nu: float = 1e-6,
    iters: int = 100,
    tol: float = 1e-6,
) -> np.ndarray:
    """Approximate weighted geometric median ``argmin_v sum_i a_i ||v - x_i||`` by the
    smoothed Weiszfeld iteration: ``v <- sum_i b_i x_i / sum_i b_i`` with
    ``b_i = a_i / max(nu, ||v - x_i||)``, from the weighted mean, for at most ``iters``
    steps or until the objective changes by at most ``tol`` times its value.

    References: Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated
    Learning", IEEE Transactions on Signal Processing 2022 (RFA).
    """
    x = _matrix(rows).astype(np.float64)
    k = x.shape[0]
    a = np.full(k, 1.0 / k) if weights is None else _weights(weights, k)
    a = a / a.sum()
    v = a @ x
    objective = float(a @ np.linalg.norm(x - v, axis=1))
    for _ in range(iters):
        b = a / np.maximum(nu, np.linalg.norm(x - v, axis=1))
        v = (b / b.sum()) @ x
        previous, objective = objective, float(a @ np.linalg.norm(x - v, axis=1))
        if abs(previous - objective) <= tol * objective:
            break
    return v.astype(np.float32)


def centered_clip(
    rows: np.ndarray, tau: float, iters: int, start: np.ndarray | None = None
) -> np.ndarray:
    """Centered clipping: ``iters`` times ``v <- v + mean_i clip_tau(x_i - v)`` with
    ``clip_tau(z) = z * min(1, tau / ||z||)``, from ``start`` (the previous aggregate;
    the coordinate-wise median when None).

    References: Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
    Optimization", ICML 2021.
    """
    x = _matrix(rows).astype(np.float64)
    _check_positive("tau", tau)
    _check_count("iters", iters, 1)
    if start is None:
        v = np.median(x, axis=0)
    else:
        v = np.asarray(start, dtype=np.float64)
        if v.shape != (x.shape[1],):
            raise FedloomError(f"start has shape {v.shape}, expected ({x.shape[1]},)")
    for _ in range(iters):
        z = x - v
        v = v + (z * _shrink(np.linalg.norm(z, axis=1), tau)[:, None]).mean(axis=0)
    return v.astype(np.float32)


def norm_bound(rows: np.ndarray, weights: np.ndarray, max_norm: float) -> np.ndarray:
    """Scale each row to L2 norm at most ``max_norm``, then take the example-weighted
    mean: a boosted (e.g. backdoor) update cannot outweigh an honest one by its size.

    References: Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated
    Learning?", arXiv:1911.07963, 2019.
    """
    x = _matrix(rows)
    w = _weights(weights, x.shape[0])
    _check_positive("max_norm", max_norm)
    return (weighted_sum(_bounded(x, max_norm), w) / w.sum()).astype(np.float32)


def fltrust(rows: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """FLTrust: each row gets trust ``ReLU(cos(x_i, g0))`` against the server's update
    ``g0`` on its clean root data, is rescaled to ``||g0||``, and the result is
    ``sum_i TS_i x_i' / sum_i TS_i`` (zeros when no row is trusted).

    References: Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning
    via Trust Bootstrapping", NDSS 2021.
    """
    x = _matrix(rows).astype(np.float64)
    g0 = np.asarray(reference, dtype=np.float64)
    if g0.shape != (x.shape[1],):
        raise FedloomError(f"reference has shape {g0.shape}, expected ({x.shape[1]},)")
    g0_norm = float(np.linalg.norm(g0))
    norms = np.linalg.norm(x, axis=1)
    denom = norms * g0_norm
    cos = np.divide(x @ g0, denom, out=np.zeros_like(norms), where=denom > 0)
    trust = np.maximum(cos, 0.0)
    if trust.sum() == 0:
        return np.zeros(x.shape[1], dtype=np.float32)
    scale = np.divide(g0_norm, norms, out=np.zeros_like(norms), where=norms > 0)
    return ((trust * scale) @ x / trust.sum()).astype(np.float32)


def bucketing(rows: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffle the rows and average them in ``ceil(K / s)`` buckets of ``s`` (the last
    may be smaller): a robust rule run on the bucket means sees less heterogeneity
    between honest inputs, which keeps it from discarding honest outliers.

    References: Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous
    Datasets via Bucketing", ICLR 2022.
    """
    x = _matrix(rows)
    means, _ = _buckets(x, np.ones(x.shape[0]), s, rng)
    return means.astype(np.float32)


# ---------------------------------------------------------------------------- reducers


class _Robust(ABC):
    """Shared reducer shape: ``partial`` is the statistic times the weight sum."""

    decomposable = False
    needs_reference = False
    min_rows = 1

    @abstractmethod
    def statistic(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None
    ) -> np.ndarray:
        """The rule's float32 ``[d]`` result on validated rows and weights."""

    def partial(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None = None
    ) -> np.ndarray:
        x = _matrix(rows)
        w = _weights(weights, x.shape[0])
        return self.statistic(x, w, ctx).astype(np.float64) * w.sum()

    def finish(self, total: np.ndarray, weight: float) -> np.ndarray:
        return (total / weight).astype(np.float32)


class CoordinateMedian(_Robust):
    """Coordinate-wise median; each client counts once. References: Yin et al., ICML 2018."""

    def statistic(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None
    ) -> np.ndarray:
        return median(rows)


class TrimmedMean(_Robust):
    """Coordinate-wise ``beta``-trimmed mean; each client counts once.
    References: Yin et al., ICML 2018."""

    def __init__(self, beta: float = 0.1) -> None:
        _check_beta(beta)
        self.beta = beta

    def statistic(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None
    ) -> np.ndarray:
        return trimmed_mean(rows, self.beta)


class Krum(_Robust):
    """Krum (``m = 1``) or Multi-Krum (``m`` rows, ``K - f`` when None); needs
    ``K > 2f + 2`` and ``K >= m``. References: Blanchard et al., NeurIPS 2017."""

    def __init__(self, f: int = 1, m: int | None = 1) -> None:
        _check_count("f", f, 0)
        if m is not None:
            _check_count("m", m, 1)
        self.f, self.m = f, m
        self.min_rows = max(2 * f + 3, m or 1)

    def statistic(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None
    ) -> np.ndarray:
        return krum(rows, self.f, rows.shape[0] - self.f if self.m is None else self.m)


class Bulyan(_Robust):
    """Bulyan over iterated Krum; needs ``K >= 4f + 3``.
    References: El Mhamdi et al., ICML 2018."""

    def __init__(self, f: int = 1) -> None:
        _check_count("f", f, 0)
        self.f = f
        self.min_rows = 4 * f + 3

    def statistic(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None
    ) -> np.ndarray:
        return bulyan(rows, self.f)


class GeometricMedian(_Robust):
    """Smoothed-Weiszfeld geometric median with every client weighted equally (RFA
    weights by example count; a Byzantine client could claim any count).
    References: Pillutla et al., IEEE TSP 2022."""

    def __init__(self, nu: float = 1e-6, iters: int = 100, tol: float = 1e-6) -> None:
        _check_positive("nu", nu)
        _check_count("iters", iters, 1)
        _check_positive("tol", tol)
        self.nu, self.iters, self.tol = nu, iters, tol

    def statistic(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None
    ) -> np.ndarray:
        return geometric_median(rows, None, self.nu, self.iters, self.tol)


class CenteredClip(_Robust):
    """Centered clipping from the last applied aggregate (``ctx.previous``; the
    coordinate-wise median when unknown). References: Karimireddy et al., ICML 2021."""

    def __init__(self, tau: float = 10.0, iters: int = 3) -> None:
        _check_positive("tau", tau)
        _check_count("iters", iters, 1)
        self.tau, self.iters = tau, iters

    def statistic(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None
    ) -> np.ndarray:
        start = None if ctx is None else ctx.previous
        return centered_clip(rows, self.tau, self.iters, start)


class NormBound(_Robust):
    """Per-row L2 bound then the example-weighted mean (the one weighted robust rule:
    the bound caps what any claimed count can buy). References: Sun et al., 2019."""

    def __init__(self, max_norm: float = 1.0) -> None:
        _check_positive("max_norm", max_norm)
        self.max_norm = max_norm

    def partial(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None = None
    ) -> np.ndarray:
        x = _matrix(rows)
        return weighted_sum(_bounded(x, self.max_norm), _weights(weights, x.shape[0]))

    def statistic(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None
    ) -> np.ndarray:
        return norm_bound(rows, weights, self.max_norm)


class FLTrust(_Robust):
    """FLTrust against the server's root-data update ``ctx.reference``.
    References: Cao et al., NDSS 2021."""

    needs_reference = True

    def statistic(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None
    ) -> np.ndarray:
        if ctx is None or ctx.reference is None:
            raise FedloomError(
                "aggregation.rule = 'fltrust' needs the server's root-data update "
                "(ReduceContext.reference), got None"
            )
        return fltrust(rows, ctx.reference)


class _BucketMean(_Robust):
    """The plain mean of the bucket means (rule ``mean`` under bucketing)."""

    def statistic(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None
    ) -> np.ndarray:
        return rows.mean(axis=0, dtype=np.float64).astype(np.float32)


class Bucketed(_Robust):
    """Run ``inner`` on the means of random buckets of ``s`` rows (each bucket weighs
    the sum of its rows' weights, which only ``norm_bound`` reads). The inner rule needs
    ``inner.min_rows`` buckets, and ``ceil(K / s) >= n`` holds exactly when
    ``K >= (n - 1) s + 1``, which is this reducer's ``min_rows``. The permutation comes
    from ``ctx.rng``. References: Karimireddy, He, Jaggi, ICLR 2022."""

    def __init__(self, inner: _Robust, s: int) -> None:
        _check_count("s", s, 2, field="aggregation.bucketing")
        self.inner, self.s = inner, s
        self.needs_reference = inner.needs_reference
        self.min_rows = (inner.min_rows - 1) * s + 1

    def statistic(
        self, rows: np.ndarray, weights: np.ndarray, ctx: ReduceContext | None
    ) -> np.ndarray:
        if ctx is None:
            raise FedloomError(
                f"aggregation.bucketing = {self.s} needs a ReduceContext with an rng "
                "to draw the buckets, got None"
            )
        means, bucket_weights = _buckets(rows, weights, self.s, ctx.rng)
        return self.inner.statistic(means.astype(np.float32), bucket_weights, ctx)


# ----------------------------------------------------------------------------- builder

_PARAMS: dict[str, dict[str, tuple[type, float, bool]]] = {
    # name -> (type, lower bound, whether the bound is inclusive)
    "mean": {},
    "median": {},
    "trimmed_mean": {"beta": (float, 0.0, True)},
    "krum": {"f": (int, 0, True)},
    "multi_krum": {"f": (int, 0, True), "m": (int, 1, True)},
    "bulyan": {"f": (int, 0, True)},
    "geometric_median": {
        "nu": (float, 0.0, False),
        "iters": (int, 1, True),
        "tol": (float, 0.0, False),
    },
    "centered_clip": {"tau": (float, 0.0, False), "iters": (int, 1, True)},
    "norm_bound": {"max_norm": (float, 0.0, False)},
    "fltrust": {},
    "fednova": {},  # its normalization follows the clients' plan, not parameters of its own
}

# name -> builder of (checked params, the clients' plan or None)
_BUILDERS: dict[str, Callable[[dict[str, Any], TrainPlan | None], Reducer]] = {
    "mean": lambda p, plan: WeightedMean(),
    "median": lambda p, plan: CoordinateMedian(),
    "trimmed_mean": lambda p, plan: TrimmedMean(**p),
    "krum": lambda p, plan: Krum(f=p.get("f", 1), m=1),
    "multi_krum": lambda p, plan: Krum(f=p.get("f", 1), m=p.get("m")),
    "bulyan": lambda p, plan: Bulyan(**p),
    "geometric_median": lambda p, plan: GeometricMedian(**p),
    "centered_clip": lambda p, plan: CenteredClip(**p),
    "norm_bound": lambda p, plan: NormBound(**p),
    "fltrust": lambda p, plan: FLTrust(),
    "fednova": lambda p, plan: FedNova() if plan is None else FedNova.for_plan(plan),
}


def build_reducer(
    rule: str,
    params: Mapping[str, float | int],
    bucketing: int = 0,
    rows: int | None = None,
    *,
    rows_field: str = "server.clients_per_round",
    plan: TrainPlan | None = None,
) -> Reducer:
    """The reducer for ``[aggregation]``'s ``rule``, ``params`` and ``bucketing``.

    Defaults: trimmed_mean ``beta = 0.1``; krum, multi_krum and bulyan ``f = 1``
    (multi_krum ``m = K - f`` at reduce time); geometric_median ``nu = 1e-6``,
    ``iters = 100``, ``tol = 1e-6``; centered_clip ``tau = 10.0``, ``iters = 3``;
    norm_bound ``max_norm = 1.0`` (a bound on an update's L2 norm, so set it to the
    scale of honest updates). ``bucketing`` s >= 2 runs the rule on bucket means (rule
    ``mean``: the plain mean of the bucket means). ``rows`` (the rows a round holds,
    read from ``rows_field``) checks the rule's bound early; under bucketing the bound
    applies to the ``ceil(rows / s)`` buckets. ``fednova`` (not a robust rule: FedNova's
    normalized averaging, ``aggregation/fednova.py``) takes no parameters; its
    normalization follows the local solver of ``plan``, the clients' training plan
    (plain SGD when None), and it runs on the clients' own rows, never on bucket means.
    """
    if rule not in _PARAMS:
        raise ConfigError(f"aggregation.rule = {rule!r} is unknown; one of {sorted(_PARAMS)}")
    if isinstance(bucketing, bool) or not isinstance(bucketing, int) or bucketing < 0:
        raise ConfigError(f"aggregation.bucketing = {bucketing!r} must be an integer >= 0")
    if rule == "fednova" and bucketing >= 2:
        raise ConfigError(
            f"aggregation.bucketing = {bucketing} with aggregation.rule = 'fednova': FedNova "
            "normalizes each client's update by its own local steps, which a bucket mean has not"
        )
    checked = _check_params(rule, params)
    base = _BUILDERS[rule](checked, plan)
    if bucketing >= 2:
        inner = _BucketMean() if isinstance(base, WeightedMean) else base
        reducer: Reducer = Bucketed(inner, bucketing)
    else:
        inner, reducer = base, base
    if rows is not None:
        _check_rows(rule, checked, inner, bucketing, rows, rows_field)
    return reducer


def _check_params(rule: str, params: Mapping[str, float | int]) -> dict[str, Any]:
    accepted = _PARAMS[rule]
    checked: dict[str, Any] = {}
    for name, value in params.items():
        field = f"aggregation.params.{name}"
        if name not in accepted:
            names = ", ".join(sorted(accepted)) or "none"
            raise ConfigError(
                f"{field} = {value!r} is not a parameter of aggregation.rule = {rule!r} "
                f"(accepted: {names})"
            )
        kind, low, inclusive = accepted[name]
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ConfigError(f"{field} = {value!r} must be an integer")
        if kind is float and not (numeric and math.isfinite(value)):
            raise ConfigError(f"{field} = {value!r} must be a finite number")
        if value < low or (value == low and not inclusive):
            op = ">=" if inclusive else ">"
            raise ConfigError(f"{field} = {value!r} must be {op} {low}")
        checked[name] = float(value) if kind is float else value
    if "beta" in checked:
        _check_beta(checked["beta"])
    return checked


def _check_rows(
    rule: str,
    params: dict[str, Any],
    inner: Reducer,
    s: int,
    rows: int,
    rows_field: str,
) -> None:
    available = math.ceil(rows / s) if s >= 2 else rows
    if available >= inner.min_rows:
        return
    f = params.get("f", 1)
    if rule in ("krum", "multi_krum") and inner.min_rows == 2 * f + 3:
        need = f"more than 2f + 2 = {2 * f + 2}"
    elif rule == "bulyan":
        need = f"at least 4f + 3 = {4 * f + 3}"
    elif rule == "multi_krum":
        need = f"at least m = {params['m']}"
    else:
        need = f"at least {inner.min_rows}"
    setting = f"aggregation.rule = {rule!r}" + (f" with f = {f}" if "f" in _PARAMS[rule] else "")
    if s >= 2:
        raise ConfigError(
            f"{setting} needs {need} buckets; a round of {rows} rows ({rows_field}) makes "
            f"ceil({rows} / {s}) = {available} with aggregation.bucketing = {s}"
        )
    raise ConfigError(f"{setting} needs {need} rows; a round holds {rows} ({rows_field})")


# ----------------------------------------------------------------------------- helpers


def _matrix(rows: np.ndarray) -> np.ndarray:
    x = np.asarray(rows)
    if x.ndim != 2:
        raise FedloomError(f"rows must be a [K, d] matrix, got shape {x.shape}")
    if x.shape[0] == 0:
        raise FedloomError("rows is empty (K == 0): nothing to aggregate")
    return x.astype(np.float32, copy=False)


def _weights(weights: np.ndarray, k: int) -> np.ndarray:
    w = check_weights(weights, k)
    if w.sum() == 0:
        raise FedloomError("weights are all zero: no client contributed examples")
    return w


def _check_beta(beta: float) -> None:
    if isinstance(beta, bool) or not 0.0 <= beta < 0.5:
        raise ConfigError(f"aggregation.params.beta = {beta!r} must be in [0, 0.5)")


def _check_count(name: str, value: int, low: int, field: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ConfigError(
            f"{field or 'aggregation.params.' + name} = {value!r} must be an integer >= {low}"
        )


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"aggregation.params.{name} = {value!r} must be a finite number > 0")


def _sq_distances(x: np.ndarray) -> np.ndarray:
    """Pairwise squared L2 distances ``[K, K]`` from the Gram matrix in float64. Rows are
    centred on their coordinate-wise median first (distances do not move), which keeps
    the Gram entries, and so the cancellation error, small for the central rows."""
    c = x.astype(np.float64)
    c -= np.median(c, axis=0)
    sq = np.einsum("ij,ij->i", c, c)
    d = sq[:, None] + sq[None, :] - 2.0 * (c @ c.T)
    np.fill_diagonal(d, 0.0)
    return np.maximum(d, 0.0)


def _krum_scores(dist: np.ndarray, neighbours: int) -> np.ndarray:
    """Each row's sum of squared distances to its ``neighbours`` nearest other rows."""
    d = dist.copy()
    np.fill_diagonal(d, np.inf)
    return np.partition(d, neighbours - 1, axis=1)[:, :neighbours].sum(axis=1)


def _shrink(norms: np.ndarray, bound: float) -> np.ndarray:
    """Per-row factor ``min(1, bound / norm)`` (1 for a zero row)."""
    return np.minimum(1.0, np.divide(bound, norms, out=np.ones_like(norms), where=norms > 0))


def _bounded(x: np.ndarray, max_norm: float) -> np.ndarray:
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    return (x * _shrink(norms, max_norm)[:, None]).astype(np.float32)


def _buckets(
    x: np.ndarray, weights: np.ndarray, s: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Bucket means (float64 ``[ceil(K/s), d]``) and bucket weight sums of a random
    permutation of the rows cut into consecutive runs of ``s``."""
    _check_count("s", s, 1, field="aggregation.bucketing")
    k = x.shape[0]
    order = rng.permutation(k)
    bucket = np.empty(k, dtype=np.intp)
    bucket[order] = np.arange(k) // s
    n = math.ceil(k / s)
    member = np.zeros((n, k))
    member[bucket, np.arange(k)] = 1.0
    means = (member @ x.astype(np.float64)) / member.sum(axis=1, keepdims=True)
    return means, member @ np.asarray(weights, dtype=np.float64)
