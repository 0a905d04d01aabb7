"""When each simulated client is online: deterministic, vectorized availability models.

Real devices take part only while idle, charging and on an unmetered network, which makes
availability strongly diurnal (mostly at local night) and makes clients leave mid-task.
An ``Availability`` answers two vectorized questions for a set of clients at a virtual time
``t`` (seconds): are they online now, and when does each one's state flip next, so the
runtime can schedule an ``"offline"`` event for a client that leaves during its task.

Models, all stored as a few numpy arrays (no Python object per client):

- ``AlwaysAvailable``: every client online at all times.
- ``Diurnal``: each client is online for ``fraction * 24 h`` per day, starting at its own
  phase (hours after midnight of virtual day 0).
- ``IntervalTrace``: per-client sorted ``[start, end)`` active intervals in CSR form, optionally
  repeating with a per-client period (the format of FedScale's availability traces).

References: Bonawitz et al., "Towards Federated Learning at Scale", SysML 2019 (eligibility
and diurnal participation); Yang et al., "Characterizing Impacts of Heterogeneity in Federated
Learning upon Large-Scale Smartphone Data", WWW 2021 (availability traces); FedScale (Lai et
al., ICML 2022) for the interval trace model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fedloom.errors import ConfigError

DAY_S = 86_400.0


class Availability(Protocol):
    """Vectorized, deterministic online/offline state of a client population."""

    def __len__(self) -> int: ...

    def available(self, clients: np.ndarray, t: float) -> np.ndarray:
        """bool ``[len(clients)]``: whether each client is online at time ``t``."""
        ...

    def next_change(self, clients: np.ndarray, t: float) -> np.ndarray:
        """float ``[len(clients)]``: first time ``> t`` each state flips (``inf`` if never)."""
        ...

    def subset(self, idx: np.ndarray) -> Availability:
        """The same model restricted to rows ``idx`` (renumbered 0..len(idx)-1)."""
        ...

    def to_intervals(self) -> IntervalTrace:
        """An equivalent ``IntervalTrace`` (used to write trace files)."""
        ...

    @property
    def nbytes(self) -> int: ...


def _first_bad(ok: np.ndarray) -> int:
    return int(np.argmin(ok))


class AlwaysAvailable:
    """Every one of ``n`` clients is online at all times."""

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ConfigError(f"AlwaysAvailable: n must be >= 0, got {n}")
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def available(self, clients: np.ndarray, t: float) -> np.ndarray:
        return np.ones(len(clients), dtype=bool)

    def next_change(self, clients: np.ndarray, t: float) -> np.ndarray:
        return np.full(len(clients), np.inf)

    def subset(self, idx: np.ndarray) -> AlwaysAvailable:
        return AlwaysAvailable(len(idx))

    def to_intervals(self) -> IntervalTrace:
        bounds = np.tile([0.0, np.inf], self.n)
        return IntervalTrace(bounds, np.arange(0, 2 * self.n + 1, 2), np.full(self.n, np.inf))

    @property
    def nbytes(self) -> int:
        return 0


class Diurnal:
    """Online ``fraction[i] * 24 h`` per day from ``phase_h[i]`` hours after midnight.

    The window wraps past midnight (phase 22 h with fraction 0.25 is online 22:00-04:00).
    ``fraction`` 0 is never online, 1 always.

    References: Bonawitz et al. 2019; Yang et al. 2021 (devices check in mostly at night).
    """

    def __init__(self, phase_h: np.ndarray, fraction: np.ndarray) -> None:
        phase_h = np.asarray(phase_h, dtype=np.float64)
        fraction = np.asarray(fraction, dtype=np.float64)
        if phase_h.shape != fraction.shape or phase_h.ndim != 1:
            raise ConfigError(
                f"Diurnal: phase_h shape {phase_h.shape} and fraction shape "
                f"{fraction.shape} must be equal and 1-D"
            )
        ok = np.isfinite(phase_h)
        if not ok.all():
            i = _first_bad(ok)
            raise ConfigError(f"Diurnal: phase_h of client {i} must be finite, got {phase_h[i]}")
        ok = (fraction >= 0) & (fraction <= 1)
        if not ok.all():
            i = _first_bad(ok)
            raise ConfigError(
                f"Diurnal: fraction of client {i} must be in [0, 1], got {fraction[i]}"
            )
        self.phase_h = np.mod(phase_h, 24.0)
        self.fraction = fraction
        # window start and length in seconds, kept: every sweep asks for everyone
        self._start_s = self.phase_h * 3600.0
        self._length_s = fraction * DAY_S

    @classmethod
    def sample(
        cls,
        n: int,
        rng: np.random.Generator,
        fraction: tuple[float, float] = (0.2, 0.5),
        start_hour: float = 22.0,
        start_jitter_h: float = 2.0,
        timezone_spread_h: float = 0.0,
    ) -> Diurnal:
        """Random night-time windows: start ``start_hour`` +- ``start_jitter_h`` (uniform),
        shifted by a uniform time-zone offset in ``[0, timezone_spread_h)``, with an online
        fraction uniform in ``fraction``.

        References: Yang et al. 2021 (availability peaks at night while charging).
        """
        lo, hi = fraction
        if not 0 <= lo <= hi <= 1:
            raise ConfigError(
                f"Diurnal.sample: fraction must satisfy 0 <= lo <= hi <= 1, got {fraction}"
            )
        phase = start_hour + rng.uniform(-start_jitter_h, start_jitter_h, size=n)
        phase += rng.uniform(0.0, timezone_spread_h, size=n)
        return cls(phase, rng.uniform(lo, hi, size=n))

    def __len__(self) -> int:
        return len(self.phase_h)

    def _position(self, clients: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(clients, dtype=np.int64)
        x = np.mod(t - self._start_s[c], DAY_S)  # seconds since window start
        return x, self._length_s[c]

    def available(self, clients: np.ndarray, t: float) -> np.ndarray:
        x, length = self._position(clients, t)
        return x < length

    def next_change(self, clients: np.ndarray, t: float) -> np.ndarray:
        x, length = self._position(clients, t)
        out = np.where(x < length, t + (length - x), t + (DAY_S - x))
        out[(length <= 0) | (length >= DAY_S)] = np.inf
        return out

    def subset(self, idx: np.ndarray) -> Diurnal:
        return Diurnal(self.phase_h[idx], self.fraction[idx])

    def to_intervals(self) -> IntervalTrace:
        """One window per day over a repeating 24 h period (split in two where it wraps)."""
        start = self.phase_h * 3600.0
        end = start + self.fraction * DAY_S
        intervals: list[list[tuple[float, float]]] = []
        for s, e in zip(start.tolist(), end.tolist(), strict=True):
            if e - s >= DAY_S:
                intervals.append([(0.0, DAY_S)])
            elif e <= s:
                intervals.append([])
            elif e > DAY_S:
                intervals.append([(0.0, e - DAY_S), (s, DAY_S)])
            else:
                intervals.append([(s, e)])
        return IntervalTrace.from_intervals(intervals, np.full(len(self), DAY_S))

    @property
    def nbytes(self) -> int:
        arrays = (self.phase_h, self.fraction, self._start_s, self._length_s)
        return sum(a.nbytes for a in arrays)


class IntervalTrace:
    """Per-client sorted ``[start, end)`` active intervals, optionally repeating.

    Stored in CSR form: ``bounds`` holds every client's boundaries ``s0, e0, s1, e1, ...``
    back to back and client ``i`` owns ``bounds[offsets[i]:offsets[i + 1]]``. A client's
    boundaries are strictly increasing and non-negative; the last end may be ``inf`` (online
    for good) only when the client does not repeat. With a finite ``period[i]`` the pattern
    repeats: time ``t`` is looked up at ``t mod period`` and all boundaries lie in
    ``[0, period]``. A client with no intervals is never available. Times before 0 (non-repeating
    clients) are offline.

    References: FedScale (Lai et al., ICML 2022) client availability traces.
    """

    def __init__(self, bounds: np.ndarray, offsets: np.ndarray, period: np.ndarray) -> None:
        bounds = np.asarray(bounds, dtype=np.float64)
        offsets = np.asarray(offsets, dtype=np.int64)
        period = np.asarray(period, dtype=np.float64)
        n = len(offsets) - 1
        if (
            bounds.ndim != 1
            or offsets.ndim != 1
            or n < 0
            or offsets[0] != 0
            or offsets[-1] != len(bounds)
            or period.shape != (n,)
        ):
            raise ConfigError(
                f"IntervalTrace: offsets must be 1-D, start at 0 and end at len(bounds)="
                f"{len(bounds)}, and period must have {max(n, 0)} entries; got offsets "
                f"shape {offsets.shape} and period shape {period.shape}"
            )
        counts = np.diff(offsets)
        self._check_client(
            (counts >= 0) & (counts % 2 == 0), counts, "number of boundaries must be even, >= 0"
        )
        self._check_client(
            ~np.isnan(period) & (period > 0), period, "period must be > 0 (inf = no repeat)"
        )
        owner = np.repeat(np.arange(n), counts)
        first = np.zeros(len(bounds), dtype=bool)
        first[offsets[:-1][counts > 0]] = True
        self._check_bounds(~np.isnan(bounds) & (bounds >= 0), owner, bounds, "must be >= 0")
        rising = np.ones(len(bounds), dtype=bool)
        rising[1:] = bounds[1:] > bounds[:-1]
        self._check_bounds(
            rising | first, owner, bounds, "must be strictly increasing (sorted, disjoint)"
        )
        finite_ok = np.isfinite(bounds)
        last = np.zeros(len(bounds), dtype=bool)
        last[offsets[1:][counts > 0] - 1] = True
        finite_ok |= last & np.isinf(period[owner])
        self._check_bounds(
            finite_ok, owner, bounds, "may be inf only as the last end of a non-repeating client"
        )
        self._check_bounds(
            bounds <= period[owner], owner, bounds, "must lie within the client's period"
        )
        self.bounds = bounds
        self.offsets = offsets
        self.period = period

    @staticmethod
    def _check_client(ok: np.ndarray, values: np.ndarray, what: str) -> None:
        if not ok.all():
            i = _first_bad(ok)
            raise ConfigError(f"IntervalTrace: client {i}: {what}, got {values[i]}")

    @staticmethod
    def _check_bounds(ok: np.ndarray, owner: np.ndarray, bounds: np.ndarray, what: str) -> None:
        if not ok.all():
            j = _first_bad(ok)
            raise ConfigError(
                f"IntervalTrace: client {owner[j]}: interval boundary {bounds[j]} {what}"
            )

    @classmethod
    def from_intervals(
        cls,
        intervals: Sequence[Sequence[tuple[float, float]]],
        period: np.ndarray | float | None = None,
    ) -> IntervalTrace:
        """Build from one list of ``(start, end)`` pairs per client; touching intervals
        (``end == next start``) are merged. ``period`` is one value for all clients, one per
        client, or ``None``/``inf`` for no repetition."""
        n = len(intervals)
        per = np.broadcast_to(
            np.asarray(np.inf if period is None else period, dtype=np.float64), (n,)
        ).copy()
        flat: list[float] = []
        offsets = np.zeros(n + 1, dtype=np.int64)
        for i, pairs in enumerate(intervals):
            for start, end in pairs:
                if flat and len(flat) > offsets[i] and flat[-1] == start:
                    flat[-1] = float(end)
                else:
                    flat += [float(start), float(end)]
            offsets[i + 1] = len(flat)
        return cls(np.asarray(flat, dtype=np.float64), offsets, per)

    def __len__(self) -> int:
        return len(self.period)

    def intervals(self, client: int) -> list[tuple[float, float]]:
        """Client ``client``'s intervals as ``(start, end)`` pairs."""
        seg = self.bounds[self.offsets[client] : self.offsets[client + 1]].tolist()
        return list(zip(seg[::2], seg[1::2], strict=True))

    def _segments(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First boundary index and boundary count of each client in ``c``, and the flat
        positions of all their boundaries (the CSR gather)."""
        starts = self.offsets[c]
        counts = self.offsets[c + 1] - starts
        pos = np.arange(counts.sum()) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
        return starts, counts, pos

    def _local(self, clients: np.ndarray, t: float) -> tuple[np.ndarray, ...]:
        """Per client: period, start of the current cycle, first boundary index, boundary
        count, and how many of its boundaries lie at or before ``t`` within the cycle."""
        c = np.asarray(clients, dtype=np.int64)
        per = self.period[c]
        repeats = np.isfinite(per)
        cycle = np.zeros(len(c))
        cycle[repeats] = np.floor(t / per[repeats]) * per[repeats]
        starts, counts, pos = self._segments(c)
        owner = np.repeat(np.arange(len(c)), counts)
        # odd count: inside an interval
        inside = self.bounds[pos] <= (t - cycle)[owner]
        passed = np.bincount(owner, weights=inside, minlength=len(c)).astype(np.int64)
        return per, cycle, starts, counts, passed

    def available(self, clients: np.ndarray, t: float) -> np.ndarray:
        *_, passed = self._local(clients, t)
        return passed % 2 == 1

    def next_change(self, clients: np.ndarray, t: float) -> np.ndarray:
        per, cycle, starts, counts, passed = self._local(clients, t)
        b = self.bounds
        out = np.full(len(per), np.inf)
        if not len(b):
            return out
        repeats = np.isfinite(per)
        # a boundary later in this cycle
        later = passed < counts
        nxt = b[np.minimum(starts + passed, len(b) - 1)]
        out[later] = cycle[later] + nxt[later]
        # past the last boundary of a repeating client: its first start in the next cycle
        wrap = ~later & (counts > 0) & repeats
        out[wrap] = cycle[wrap] + per[wrap] + b[starts[wrap]]
        # an interval ending at the period that continues into one starting at 0 next cycle
        # is not a flip: the flip is the first end of the next cycle (never if online always)
        joined = later & repeats & (nxt == per) & (b[np.minimum(starts, len(b) - 1)] == 0)
        always = joined & (counts == 2)
        cont = joined & ~always
        out[cont] = cycle[cont] + per[cont] + b[starts[cont] + 1]
        out[always] = np.inf
        return out

    def subset(self, idx: np.ndarray) -> IntervalTrace:
        idx = np.asarray(idx, dtype=np.int64)
        _, counts, pos = self._segments(idx)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return IntervalTrace(self.bounds[pos], offsets, self.period[idx])

    def to_intervals(self) -> IntervalTrace:
        return self

    @property
    def nbytes(self) -> int:
        return self.bounds.nbytes + self.offsets.nbytes + self.period.nbytes
