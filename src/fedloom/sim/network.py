"""Network conditions that change during a run: bandwidth drops and link flaps.

A ``LinkChange`` sets, from its ``time`` on, the factor by which some clients' base bandwidth
(``Population.up_kbps`` / ``down_kbps``) is multiplied, until the next change that affects
the same client. Factor 0 takes the link down; a transfer then pauses and resumes when the
link comes back. ``NetworkConditions.transfer_end`` integrates the piecewise-constant
throughput exactly, so a transfer's finish time accounts for every change it overlaps.

Transfer model (the same as ``Population.transfer_time`` when nothing changes): latency is
paid once, at the start; then the payload flows at ``kbps * factor * 1000 * (1 - loss) / 8``
bytes per second.

References: FedScale (Lai et al., ICML 2022) for trace-driven network heterogeneity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedloom.errors import ConfigError
from fedloom.sim.devices import Direction, Population


@dataclass(frozen=True, eq=False)
class LinkChange:
    """From ``time`` on, multiply the base bandwidth of ``clients`` (``None`` = all).

    A change sets both directions' factors (1.0 restores the base rate); it does not
    compound with earlier changes.
    """

    time: float
    clients: np.ndarray | None
    up_factor: float
    down_factor: float

    def factor(self, direction: Direction) -> float:
        """The factor this change sets for ``direction`` ("up" or "down")."""
        if direction == "up":
            return self.up_factor
        if direction == "down":
            return self.down_factor
        raise ConfigError(f"direction must be 'up' or 'down', got {direction!r}")


class NetworkConditions:
    """A population's links plus a schedule of ``LinkChange``s (applied in time order;
    changes at the same time apply in the order given, the later one winning)."""

    def __init__(self, population: Population, changes: Sequence[LinkChange] = ()) -> None:
        n = len(population)
        for k, ch in enumerate(changes):
            if not math.isfinite(ch.time):
                raise ConfigError(f"link change {k}: time must be finite, got {ch.time!r}")
            for name in ("up_factor", "down_factor"):
                value = getattr(ch, name)
                if not (math.isfinite(value) and value >= 0):
                    raise ConfigError(
                        f"link change {k}: {name} must be a finite number >= 0, got {value!r}"
                    )
            if ch.clients is not None:
                c = np.asarray(ch.clients)
                bad = (c < 0) | (c >= n)
                if bad.any():
                    raise ConfigError(
                        f"link change {k}: client {c[np.argmax(bad)]} is not in the "
                        f"population of {n}"
                    )
        self.population = population
        self.changes: tuple[LinkChange, ...] = tuple(
            sorted(changes, key=lambda ch: ch.time)  # stable: ties keep the given order
        )

    def factor_at(
        self, clients: np.ndarray, t: float | np.ndarray, direction: Direction
    ) -> np.ndarray:
        """Bandwidth factor of each client in effect at time ``t`` (one per client, or shared)."""
        clients = np.asarray(clients, dtype=np.int64)
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), clients.shape)
        factor = np.ones(len(clients))
        for ch in self.changes:
            if ch.time > t.max(initial=-np.inf):
                break
            factor[self._affected(ch, clients) & (ch.time <= t)] = ch.factor(direction)
        return factor

    def transfer_end(
        self,
        clients: np.ndarray,
        start: float | np.ndarray,
        nbytes: np.ndarray | int,
        direction: Direction,
    ) -> np.ndarray:
        """Exact finish time of each client's transfer of ``nbytes`` started at ``start``.

        ``start`` is one time for all, or one per client. ``inf`` for a transfer whose
        link stays down before it completes.
        """
        clients = np.asarray(clients, dtype=np.int64)
        start = np.broadcast_to(np.asarray(start, dtype=np.float64), clients.shape)
        first = start.min(initial=np.inf)
        rate = self.population.throughput_bytes_per_s(clients, direction)
        t0 = start + self.population.latency_ms[clients] / 1e3
        remaining = np.broadcast_to(np.asarray(nbytes, dtype=np.float64), clients.shape).copy()
        bad = ~(remaining >= 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise ConfigError(f"nbytes of client {clients[i]} must be >= 0, got {remaining[i]}")
        # Each client's payload flows from its own t0 (after latency); walk the change
        # schedule once, advancing every still-sending client to each change point.
        t = t0.copy()
        end = np.full(len(clients), np.inf)
        factor = self.factor_at(clients, start, direction)
        sending = np.ones(len(clients), dtype=bool)
        for ch in self.changes:
            if ch.time <= first:
                continue
            mask = sending & (t < ch.time)
            self._progress(mask, t, ch.time, rate, factor, remaining, end, sending)
            factor[self._affected(ch, clients)] = ch.factor(direction)
            np.maximum(t, ch.time, out=t)
            if not sending.any():
                return end
        self._progress(sending, t, np.inf, rate, factor, remaining, end, sending)
        return end

    @staticmethod
    def _progress(
        mask: np.ndarray,
        t: np.ndarray,
        until: float,
        rate: np.ndarray,
        factor: np.ndarray,
        remaining: np.ndarray,
        end: np.ndarray,
        sending: np.ndarray,
    ) -> None:
        """Send at the current rate from ``t`` to ``until`` for ``mask``; record finishes."""
        bw = rate * factor
        with np.errstate(divide="ignore", invalid="ignore"):
            need = np.where(remaining > 0, remaining / bw, 0.0)  # inf when the link is down
        done = mask & (t + need <= until)
        end[done] = t[done] + need[done]
        sending[done] = False
        go = mask & ~done
        remaining[go] -= bw[go] * (until - t[go])

    def _affected(self, ch: LinkChange, clients: np.ndarray) -> np.ndarray:
        if ch.clients is None:
            return np.ones(len(clients), dtype=bool)
        return np.isin(clients, ch.clients)


def bandwidth_drop(
    time: float,
    clients: np.ndarray | None,
    factor: float,
    until: float | None = None,
    direction: Direction | Literal["both"] = "both",
) -> list[LinkChange]:
    """Bandwidth of ``clients`` multiplied by ``factor`` from ``time`` (until ``until``)."""
    if direction not in ("up", "down", "both"):
        raise ConfigError(
            f"bandwidth_drop: direction must be 'up', 'down' or 'both', got {direction!r}"
        )
    up = factor if direction in ("up", "both") else 1.0
    down = factor if direction in ("down", "both") else 1.0
    changes = [LinkChange(time, clients, up, down)]
    if until is not None:
        if not until > time:
            raise ConfigError(f"bandwidth_drop: until={until!r} must be after time={time!r}")
        changes.append(LinkChange(until, clients, 1.0, 1.0))
    return changes


def link_flap(
    clients: np.ndarray | None, start: float, period: float, down_for: float, count: int
) -> list[LinkChange]:
    """``count`` outages of ``down_for`` seconds, one every ``period`` seconds from ``start``."""
    if not 0 < down_for < period:
        raise ConfigError(f"link_flap: down_for={down_for!r} must be > 0 and < period={period!r}")
    if count < 0:
        raise ConfigError(f"link_flap: count must be >= 0, got {count}")
    changes: list[LinkChange] = []
    for k in range(count):
        t = start + k * period
        changes += [LinkChange(t, clients, 0.0, 0.0), LinkChange(t + down_for, clients, 1.0, 1.0)]
    return changes
