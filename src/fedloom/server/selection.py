"""Client selection: which registered clients train in a round.

A selector turns the ids of the clients available now into the round's cohort. It reads
the registry snapshot (``ClientStats``: data size, label entropy, reliability, last loss,
speed, learned availability) and draws every random choice from the ``Generator`` the
server passes in. Its own memory (Oort's exploration factor and pacer, nothing for the
others) is plain JSON from ``state_dict``, so a resumed run draws the same cohorts as an
uninterrupted one.

Every selector returns ``min(k, len(available))`` distinct ids from ``available``, sorted,
as int64; asking for more clients than are available returns all of them.

References: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017 (uniform sampling); Nishio & Yonetani, "Client Selection
for Federated Learning with Heterogeneous Resources in Mobile Edge", ICC 2019 (FedCS,
resource-aware selection); Cho, Wang & Joshi, "Towards Understanding Biased Client
Selection in Federated Learning", AISTATS 2022 (Power-of-Choice); Lai et al., "Oort:
Efficient Federated Learning via Guided Participant Selection", OSDI 2021.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Protocol

import numpy as np

from fedloom.errors import CheckpointError, ConfigError, FedloomError
from fedloom.server.stats import ClientStats

_EMPTY = np.empty(0, dtype=np.int64)


class Selector(Protocol):
    """Chooses a round's cohort; stateful selectors round-trip through JSON state."""

    name: str

    def select(
        self,
        available: np.ndarray,
        k: int,
        round: int,
        rng: np.random.Generator,
        stats: ClientStats | None = None,
        now: float = 0.0,
    ) -> np.ndarray:
        """``min(k, len(available))`` distinct ids from ``available``, sorted int64.

        ``round`` is the 1-based round being selected for, ``stats`` the registry
        snapshot and ``now`` the (virtual) time in seconds at which the round starts.
        """
        ...

    def state_dict(self) -> dict:
        """The selector's memory as JSON-serializable data."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned, so the next selections repeat exactly."""
        ...


# --------------------------------------------------------------------------- helpers


def _require(condition: bool, field: str, value: object, rule: str) -> None:
    if not condition:
        raise ConfigError(f"{field} = {value!r}: {rule}")


def _need_stats(stats: ClientStats | None, name: str) -> ClientStats:
    if stats is None:
        raise FedloomError(f"the {name!r} selector needs client stats, got stats=None")
    return stats


def _cohort_size(k: int, n: int, round: int) -> int:
    if k < 0:
        raise FedloomError(f"round {round}: cannot select k = {k} clients")
    return min(k, n)


def _registered(available: np.ndarray, stats: ClientStats) -> np.ndarray:
    """``available`` as sorted, distinct int64 ids, all of them registered in ``stats``."""
    ids = np.unique(np.asarray(available, dtype=np.int64))
    n = stats.num_clients
    if ids.size and (ids[0] < 0 or ids[-1] >= n):
        bad = int(ids[0] if ids[0] < 0 else ids[-1])
        raise FedloomError(f"available client id {bad} is not registered ({n} clients)")
    return ids


def _weighted_sample(
    ids: np.ndarray, weights: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` distinct ids drawn one after another with probability ∝ ``weights``.

    Every id gets an exponential arrival time with rate equal to its weight and the ``n``
    earliest arrive: the same law as repeated proportional draws without replacement,
    in one vectorized pass that always consumes ``len(ids)`` variates. Zero-weight ids
    never arrive, so they are taken (uniformly) only once no positive weight is left.

    References: Efraimidis & Spirakis, "Weighted random sampling with a reservoir",
    Information Processing Letters 97(5), 2006.
    """
    clocks = rng.exponential(size=len(ids))
    with np.errstate(divide="ignore"):
        arrival = clocks / weights
    return ids[np.lexsort((clocks, arrival))[:n]]


def _check_stateless(name: str, state: dict) -> None:
    if state != {"name": name}:
        raise CheckpointError(f"state {state!r} is not a {name!r} selector state")


# --------------------------------------------------------------------------- uniform


class UniformSelector:
    """Every available client equally likely, without replacement.

    The draw is ``np.sort(rng.choice(available, size=k, replace=False))``, unchanged
    since the first release, so existing runs and checkpoints keep their cohorts.

    References: McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017.
    """

    name = "uniform"

    def select(
        self,
        available: np.ndarray,
        k: int,
        round: int,
        rng: np.random.Generator,
        stats: ClientStats | None = None,
        now: float = 0.0,
    ) -> np.ndarray:
        available = np.asarray(available, dtype=np.int64)
        k = _cohort_size(k, len(available), round)
        return np.sort(rng.choice(available, size=k, replace=False))

    def state_dict(self) -> dict:
        return {"name": self.name}

    def load_state_dict(self, state: dict) -> None:
        _check_stateless(self.name, state)


class PoissonSelector:
    """Each available client joins independently with probability ``rate``.

    Poisson sampling is what the tightest privacy accountants assume for amplification
    by sampling; the cohort size is random (``k`` is ignored). A client that is offline
    simply cannot join, which only lowers its participation probability.

    References: Zhu & Wang, "Poisson Subsampled Rényi Differential Privacy", ICML 2019;
    McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018.
    """

    name = "poisson"

    def __init__(self, rate: float) -> None:
        if not 0.0 < rate <= 1.0:
            raise ConfigError(f"poisson.rate = {rate!r}: must be in (0, 1]")
        self.rate = float(rate)

    def select(
        self,
        available: np.ndarray,
        k: int,
        round: int,
        rng: np.random.Generator,
        stats: ClientStats | None = None,
        now: float = 0.0,
    ) -> np.ndarray:
        available = np.asarray(available, dtype=np.int64)
        return np.sort(available[rng.random(len(available)) < self.rate])

    def state_dict(self) -> dict:
        return {"name": self.name}

    def load_state_dict(self, state: dict) -> None:
        _check_stateless(self.name, state)


# --------------------------------------------------------------------------- weighted


class _ProportionalSelector:
    """Samples without replacement with probability ∝ ``weights``; subclasses score."""

    name: str

    def weights(self, ids: np.ndarray, stats: ClientStats, now: float) -> np.ndarray:
        """Non-negative, finite sampling weight of each id in ``ids``."""
        raise NotImplementedError

    def select(
        self,
        available: np.ndarray,
        k: int,
        round: int,
        rng: np.random.Generator,
        stats: ClientStats | None = None,
        now: float = 0.0,
    ) -> np.ndarray:
        stats = _need_stats(stats, self.name)
        ids = _registered(available, stats)
        k = _cohort_size(k, len(ids), round)
        return np.sort(_weighted_sample(ids, self.weights(ids, stats, now), k, rng))

    def state_dict(self) -> dict:
        return {"name": self.name}

    def load_state_dict(self, state: dict) -> None:
        _check_stateless(self.name, state)


class AvailabilitySelector(_ProportionalSelector):
    """Prefers clients likely to stay online for the whole round.

    A client's weight is the registry's estimate that it is online when the round starts
    and still online ``round_s`` seconds later (its learned hour-of-day pattern), so
    dispatches are not wasted on devices about to drop out. Clients predicted offline
    (weight 0) are taken only when nobody else is available. ``round_s`` defaults to the
    median known client duration, or 600 s while no duration is known.

    References: Nishio & Yonetani, "Client Selection for Federated Learning with
    Heterogeneous Resources in Mobile Edge", ICC 2019 (FedCS); Bonawitz et al., "Towards
    Federated Learning at Scale: System Design", MLSys 2019 (diurnal availability).
    """

    name = "availability"

    def __init__(self, round_s: float | None = None) -> None:
        if round_s is not None:
            _require(
                math.isfinite(round_s) and round_s > 0,
                "availability.round_s",
                round_s,
                "must be a positive number of seconds",
            )
        self.round_s = round_s

    def weights(self, ids: np.ndarray, stats: ClientStats, now: float) -> np.ndarray:
        round_s = self.round_s
        if round_s is None:
            known = stats.duration[np.isfinite(stats.duration)]
            round_s = float(np.median(known)) if known.size else 600.0
        return stats.predicted_online(ids, now, now + round_s)


class DataQualitySelector(_ProportionalSelector):
    """Prefers clients with much, diverse, still poorly fitted data.

    weight = data_size^a · (label_entropy / max entropy)^b · (1 + loss)^c: large datasets
    contribute more examples, a high label entropy means a client covers many classes
    rather than one (non-IID skew), and a high last training loss means the global model
    still has something to learn there (Oort's statistical utility in a simpler form). The
    entropy is normalised by the largest entropy in the registry, which keeps the factor
    in [0, 1]. A client that has not reported a loss is given the mean known loss (or 1),
    so it is neither favoured nor starved.

    References: Lai et al., "Oort: Efficient Federated Learning via Guided Participant
    Selection", OSDI 2021 (statistical utility); Nishio & Yonetani, "Client Selection for
    Federated Learning with Heterogeneous Resources in Mobile Edge", ICC 2019 (FedCS).
    """

    name = "data_quality"

    def __init__(
        self, size_power: float = 1.0, entropy_power: float = 1.0, loss_power: float = 1.0
    ) -> None:
        for field, value in (
            ("size_power", size_power),
            ("entropy_power", entropy_power),
            ("loss_power", loss_power),
        ):
            _require(
                math.isfinite(value) and value >= 0,
                f"data_quality.{field}",
                value,
                "must be a finite number >= 0",
            )
        self.size_power = size_power
        self.entropy_power = entropy_power
        self.loss_power = loss_power

    def weights(self, ids: np.ndarray, stats: ClientStats, now: float) -> np.ndarray:
        size = stats.data_size[ids].astype(np.float64)
        top = float(stats.label_entropy.max(initial=0.0))
        entropy = stats.label_entropy[ids] / top if top > 0 else np.zeros(len(ids))
        known = stats.loss[np.isfinite(stats.loss)]
        loss = np.nan_to_num(stats.loss[ids], nan=float(known.mean()) if known.size else 1.0)
        return (
            size**self.size_power
            * np.clip(entropy, 0.0, 1.0) ** self.entropy_power
            * (1.0 + np.maximum(loss, 0.0)) ** self.loss_power
        )


class ReliabilitySelector(_ProportionalSelector):
    """Prefers clients that usually deliver: weight = reliability^power.

    ``reliability`` is the registry's discounted completion rate; raising it to a power
    above 1 sharpens the preference (power 2 makes a 0.9 client nine times as likely as a
    0.3 client), which cuts the dropouts a round has to absorb.

    References: Nishio & Yonetani, "Client Selection for Federated Learning with
    Heterogeneous Resources in Mobile Edge", ICC 2019 (FedCS); Bonawitz et al., "Towards
    Federated Learning at Scale: System Design", MLSys 2019 (dropouts and over-selection).
    """

    name = "reliability"

    def __init__(self, power: float = 2.0) -> None:
        _require(
            math.isfinite(power) and power >= 0,
            "reliability.power",
            power,
            "must be a finite number >= 0",
        )
        self.power = power

    def weights(self, ids: np.ndarray, stats: ClientStats, now: float) -> np.ndarray:
        return np.clip(stats.reliability[ids], 0.0, 1.0) ** self.power


# --------------------------------------------------------------------------- power of choice


class PowerOfChoiceSelector:
    """Power-of-Choice: among a random candidate set, take the clients with highest loss.

    ``d`` candidates (``candidates``, else ``ceil(factor · k)``, never fewer than ``k``)
    are drawn without replacement with probability ∝ data size, then the ``k`` with the
    highest last reported local loss are selected. Biasing towards high-loss clients
    speeds up convergence; ``d`` trades that bias (large ``d``) against the
    representativeness of random sampling (``d = k`` is plain size-weighted sampling).
    The loss is the one each client reported when it last trained (the paper's
    communication-free "rpow-d" variant); a client that never reported counts as +inf so
    new clients get explored. Ties are broken at random.

    References: Cho, Wang & Joshi, "Towards Understanding Biased Client Selection in
    Federated Learning", AISTATS 2022.
    """

    name = "power_of_choice"

    def __init__(self, candidates: int | None = None, factor: float = 2.0) -> None:
        if candidates is not None:
            _require(
                isinstance(candidates, int)
                and not isinstance(candidates, bool)
                and candidates >= 1,
                "power_of_choice.candidates",
                candidates,
                "must be an integer >= 1",
            )
        _require(
            math.isfinite(factor) and factor >= 1,
            "power_of_choice.factor",
            factor,
            "must be a finite number >= 1",
        )
        self.candidates = candidates
        self.factor = factor

    def select(
        self,
        available: np.ndarray,
        k: int,
        round: int,
        rng: np.random.Generator,
        stats: ClientStats | None = None,
        now: float = 0.0,
    ) -> np.ndarray:
        stats = _need_stats(stats, self.name)
        ids = _registered(available, stats)
        k = _cohort_size(k, len(ids), round)
        d = self.candidates if self.candidates is not None else math.ceil(self.factor * k)
        d = min(max(d, k), len(ids))
        pool = _weighted_sample(ids, stats.data_size[ids].astype(np.float64), d, rng)
        loss = np.nan_to_num(stats.loss[pool], nan=np.inf)
        order = np.lexsort((rng.random(len(pool)), -loss))
        return np.sort(pool[order[:k]])

    def state_dict(self) -> dict:
        return {"name": self.name}

    def load_state_dict(self, state: dict) -> None:
        _check_stateless(self.name, state)


# --------------------------------------------------------------------------- oort


class OortSelector:
    """Oort: exploit clients of high statistical and system utility, explore the rest.

    A client is *explored* once the registry knows its squared loss and its duration.
    Each round (Algorithm 1 of the paper):

    * utility of an explored client ``i``: statistical utility ``|B_i| · sqrt(loss_sq_i)``
      (data size times the root mean squared training loss), clipped at its
      ``clip_quantile`` quantile over the explored clients (one outlier, e.g. a corrupt
      client with a huge loss, cannot monopolise the cohort) and scaled by that clip
      value to [0, 1]; plus the temporal-uncertainty bonus ``sqrt(0.1 ln(round) /
      last_round_i)`` that lets clients not picked for a while come back; times the
      system utility ``(T / t_i)^alpha`` when its duration ``t_i`` exceeds the preferred
      round duration ``T``.
    * exploitation, ``(1 - ε)·k`` clients: the explored clients whose utility is at least
      ``cutoff`` times the ``(1 - ε)k``-th largest are admitted, and sampled ∝ utility.
    * exploration, the rest: unexplored clients, sampled ∝ their system utility (faster
      ones preferred when their speed is known, uniform otherwise).
    * if either group is short the other fills in; clients blacklisted for having been
      selected more than ``blacklist_rounds`` times are only used when nobody else is left.
    * ε starts at ``exploration`` and is multiplied by ``exploration_decay`` after each
      round, down to ``min_exploration``.
    * pacer: the mean statistical utility of each round's exploited clients is recorded;
      after every ``pacer_window`` rounds, if the window's total is below the previous
      window's, ``T`` grows by ``pacer_step`` so slower clients with useful data become
      affordable.

    ``T`` starts at ``preferred_duration`` or, if that is None, at the
    ``duration_quantile`` quantile of the known client durations (the authors' FedScale
    implementation starts at the 30th percentile); ``pacer_step`` defaults to that
    initial ``T`` (the paper initialises ``T`` to the pacer step ``Δ``).

    Departures from the paper, on purpose: the statistical utility is normalised before
    the bonus is added (as FedScale does; otherwise a bonus below 1 would vanish next to
    utilities in the thousands); the pacer compares per-round means, not sums, so the
    growing exploitation share as ε decays does not hide a decline in utility.

    References: Lai, Zhu, Madhyastha & Chowdhury, "Oort: Efficient Federated Learning via
    Guided Participant Selection", OSDI 2021; Lai et al., "FedScale: Benchmarking Model
    and System Performance of Federated Learning at Scale", ICML 2022.
    """

    name = "oort"

    def __init__(
        self,
        exploration: float = 0.9,
        exploration_decay: float = 0.98,
        min_exploration: float = 0.3,
        alpha: float = 2.0,
        cutoff: float = 0.95,
        clip_quantile: float = 0.95,
        preferred_duration: float | None = None,
        duration_quantile: float = 0.3,
        pacer_step: float | None = None,
        pacer_window: int = 20,
        blacklist_rounds: int | None = None,
    ) -> None:
        _require(0 <= exploration <= 1, "oort.exploration", exploration, "must be in [0, 1]")
        _require(
            0 < exploration_decay <= 1,
            "oort.exploration_decay",
            exploration_decay,
            "must be in (0, 1]",
        )
        _require(
            0 <= min_exploration <= exploration,
            "oort.min_exploration",
            min_exploration,
            f"must be in [0, exploration = {exploration}]",
        )
        _require(math.isfinite(alpha) and alpha >= 0, "oort.alpha", alpha, "must be >= 0")
        _require(0 < cutoff <= 1, "oort.cutoff", cutoff, "must be in (0, 1]")
        _require(0 < clip_quantile <= 1, "oort.clip_quantile", clip_quantile, "must be in (0, 1]")
        for field, value in (
            ("preferred_duration", preferred_duration),
            ("pacer_step", pacer_step),
        ):
            if value is not None:
                _require(
                    math.isfinite(value) and value > 0,
                    f"oort.{field}",
                    value,
                    "must be a positive number of seconds",
                )
        _require(
            0 <= duration_quantile <= 1,
            "oort.duration_quantile",
            duration_quantile,
            "must be in [0, 1]",
        )
        _require(
            isinstance(pacer_window, int) and pacer_window >= 1,
            "oort.pacer_window",
            pacer_window,
            "must be an integer >= 1",
        )
        if blacklist_rounds is not None:
            _require(
                isinstance(blacklist_rounds, int) and blacklist_rounds >= 1,
                "oort.blacklist_rounds",
                blacklist_rounds,
                "must be an integer >= 1",
            )
        self.exploration_decay = exploration_decay
        self.min_exploration = min_exploration
        self.alpha = alpha
        self.cutoff = cutoff
        self.clip_quantile = clip_quantile
        self.duration_quantile = duration_quantile
        self.pacer_window = pacer_window
        self.blacklist_rounds = blacklist_rounds
        # The selector's memory (everything in state_dict):
        self.epsilon = float(exploration)  # exploration factor of the next round
        self.preferred_duration = preferred_duration  # T, seconds; None until known
        self.pacer_step = pacer_step if pacer_step is not None else preferred_duration
        self.window: list[float] = []  # mean exploited utility of each round in the window
        self.last_window: float | None = None  # total of the previous complete window

    def select(
        self,
        available: np.ndarray,
        k: int,
        round: int,
        rng: np.random.Generator,
        stats: ClientStats | None = None,
        now: float = 0.0,
    ) -> np.ndarray:
        stats = _need_stats(stats, self.name)
        ids = _registered(available, stats)
        k = _cohort_size(k, len(ids), round)
        if self.preferred_duration is None:
            self._init_preferred_duration(stats)

        explored = np.isfinite(stats.loss_sq[ids]) & np.isfinite(stats.duration[ids])
        blocked = np.zeros(len(ids), dtype=bool)
        if self.blacklist_rounds is not None:
            blocked = explored & (stats.selected[ids] > self.blacklist_rounds)
        pool, fresh, spare = ids[explored & ~blocked], ids[~explored], ids[blocked]
        n_exploit = min(int(np.rint((1.0 - self.epsilon) * k)), len(pool))
        n_explore = min(k - n_exploit, len(fresh))
        n_exploit = min(k - n_explore, len(pool))

        exploited = self._exploit(pool, n_exploit, round, stats, rng)
        explored_now = _weighted_sample(fresh, self._speed(stats.duration[fresh]), n_explore, rng)
        leftover = _weighted_sample(spare, np.ones(len(spare)), k - n_exploit - n_explore, rng)

        self._pace(stats, exploited)
        self.epsilon = max(self.epsilon * self.exploration_decay, self.min_exploration)
        return np.sort(np.concatenate([exploited, explored_now, leftover]))

    def _init_preferred_duration(self, stats: ClientStats) -> None:
        known = stats.duration[np.isfinite(stats.duration)]
        if known.size:
            self.preferred_duration = float(np.quantile(known, self.duration_quantile))
            if self.pacer_step is None:
                self.pacer_step = self.preferred_duration

    def _speed(self, duration: np.ndarray) -> np.ndarray:
        """System utility ``(T / t)^alpha`` for durations over ``T``, else 1 (nan -> 1)."""
        if self.preferred_duration is None:
            return np.ones(len(duration))
        t = self.preferred_duration
        slow = duration > t  # False for nan: unknown speed is not penalised
        penalty = (t / np.where(slow, duration, t)) ** self.alpha
        return np.where(slow, penalty, 1.0)

    @staticmethod
    def _statistical_utility(ids: np.ndarray, stats: ClientStats) -> np.ndarray:
        return stats.data_size[ids] * np.sqrt(np.maximum(stats.loss_sq[ids], 0.0))

    def _exploit(
        self,
        pool: np.ndarray,
        n: int,
        round: int,
        stats: ClientStats,
        rng: np.random.Generator,
    ) -> np.ndarray:
        if n == 0:
            return _EMPTY
        if n == len(pool):
            return pool
        stat = self._statistical_utility(pool, stats)
        clip = float(np.quantile(stat, self.clip_quantile))
        util = np.minimum(stat, clip) / clip if clip > 0 else np.zeros(len(pool))
        last = np.maximum(stats.last_round[pool], 1)
        util = util + np.sqrt(0.1 * math.log(max(round, 1)) / last)
        util = util * self._speed(stats.duration[pool])
        threshold = self.cutoff * np.partition(util, len(util) - n)[len(util) - n]
        admitted = util >= threshold
        return _weighted_sample(pool[admitted], util[admitted], n, rng)

    def _pace(self, stats: ClientStats, exploited: np.ndarray) -> None:
        if exploited.size == 0:
            return
        self.window.append(float(self._statistical_utility(exploited, stats).mean()))
        if len(self.window) < self.pacer_window:
            return
        total = float(sum(self.window))
        if (
            self.last_window is not None
            and total < self.last_window
            and self.preferred_duration is not None
        ):
            self.preferred_duration += self.pacer_step
        self.last_window = total
        self.window = []

    def state_dict(self) -> dict:
        return {
            "name": self.name,
            "epsilon": self.epsilon,
            "preferred_duration": self.preferred_duration,
            "pacer_step": self.pacer_step,
            "window": list(self.window),
            "last_window": self.last_window,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name or set(state) != set(self.state_dict()):
            raise CheckpointError(f"state {state!r} is not an {self.name!r} selector state")
        self.epsilon = float(state["epsilon"])
        self.preferred_duration = state["preferred_duration"]
        self.pacer_step = state["pacer_step"]
        self.window = [float(u) for u in state["window"]]
        self.last_window = state["last_window"]


# --------------------------------------------------------------------------- fairness


class FairnessGuard:
    """Caps how often any one client is selected: at most ``max_share · round + 1`` times.

    Clients that would exceed the cap by being picked this round (``stats.selected >
    max_share · round``) are removed from ``available`` before ``inner`` chooses, so a
    selector that strongly prefers a few clients (Oort, reliability) cannot starve the
    rest or overfit the model to them. If that leaves fewer than ``k`` clients, the
    least-selected excluded ones (ties at random) are added back: the cohort size wins
    over the cap.

    References: Li, Sanjabi, Beirami & Smith, "Fair Resource Allocation in Federated
    Learning", ICLR 2020 (why participation fairness matters); Huang et al., "An
    Efficiency-Boosting Client Selection Scheme for Federated Learning with Fairness
    Guarantee", IEEE TPDS 2021 (long-term participation-rate constraints).
    """

    def __init__(self, inner: Selector, max_share: float) -> None:
        _require(
            math.isfinite(max_share) and 0 < max_share <= 1,
            "max_share",
            max_share,
            "must be in (0, 1]",
        )
        self.inner = inner
        self.max_share = max_share
        self.name = f"{inner.name}+fair"

    def select(
        self,
        available: np.ndarray,
        k: int,
        round: int,
        rng: np.random.Generator,
        stats: ClientStats | None = None,
        now: float = 0.0,
    ) -> np.ndarray:
        stats = _need_stats(stats, self.name)
        ids = _registered(available, stats)
        k = _cohort_size(k, len(ids), round)
        over = stats.selected[ids] > self.max_share * round
        allowed, excluded = ids[~over], ids[over]
        if len(allowed) < k:
            order = np.lexsort((rng.random(len(excluded)), stats.selected[excluded]))
            allowed = np.sort(np.concatenate([allowed, excluded[order[: k - len(allowed)]]]))
        return self.inner.select(allowed, k, round, rng, stats, now)

    def state_dict(self) -> dict:
        return {"name": self.name, "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name or set(state) != {"name", "inner"}:
            raise CheckpointError(f"state {state!r} is not a {self.name!r} selector state")
        self.inner.load_state_dict(state["inner"])


# --------------------------------------------------------------------------- factory

SELECTORS: dict[str, type] = {
    "uniform": UniformSelector,
    "availability": AvailabilitySelector,
    "data_quality": DataQualitySelector,
    "reliability": ReliabilitySelector,
    "power_of_choice": PowerOfChoiceSelector,
    "oort": OortSelector,
}


def make_selector(name: str, max_share: float | None = None, **params: Any) -> Selector:
    """Build the selector called ``name`` from keyword ``params`` (as in a config file).

    ``max_share`` wraps it in a ``FairnessGuard``. Unknown names and parameters raise
    ``ConfigError`` naming them, so a typo in a config file cannot silently fall back to
    a default.

    References: see the module docstring.
    """
    cls = SELECTORS.get(name)
    if cls is None:
        raise ConfigError(f"selector = {name!r}: unknown; expected one of {', '.join(SELECTORS)}")
    accepted = inspect.signature(cls).parameters
    for key in params:
        if key not in accepted:
            expected = ", ".join(accepted) or "none"
            raise ConfigError(
                f"selector {name!r} has no parameter {key!r}; its parameters: {expected}"
            )
    selector: Selector = cls(**params)
    return selector if max_share is None else FairnessGuard(selector, max_share)
