"""Discrete-event virtual clock: the simulator's notion of time.

Simulated clients never sleep. Every completion, failure, departure and deadline is an
``Event`` on one priority queue ordered by ``(time, seq)``; ``seq`` is an insertion counter,
so events at the same instant come out in the order they were scheduled and a run is
deterministic. ``state_dict`` captures the clock (time, counter and pending events) as JSON,
so a resumed run pops exactly the events an uninterrupted one would.

References: discrete-event simulation of FL rounds as in FedScale (Lai et al., ICML 2022).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedloom.errors import FedloomError

# Internal heap entry: (time, seq, kind, client, data). ``seq`` is unique, so tuple
# comparison never reaches ``kind`` or ``data``.
_Entry = tuple[float, int, str, int, Any]


@dataclass(frozen=True, order=True)
class Event:
    """Something that happens to one client (or to the run, ``client=-1``) at a virtual time."""

    time: float
    seq: int
    kind: str = field(compare=False)
    client: int = field(compare=False, default=-1)
    data: Any = field(compare=False, default=None)


class VirtualClock:
    """A min-heap of events and the current virtual time ``now`` (seconds).

    Cancellation is lazy: ``cancel_client`` records a watermark and the dropped events are
    discarded when they reach the head of the queue, so cancelling is O(1) even with
    hundreds of thousands of pending events.
    """

    def __init__(self, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise FedloomError(f"clock start must be finite, got {start!r}")
        self.now = float(start)
        self._seq = 0
        self._heap: list[_Entry] = []
        # client -> seq at its last cancel_client: that client's events below it are dropped.
        self._cancelled_below: dict[int, int] = {}
        # client -> number of live pending events (those not cancelled).
        self._pending: dict[int, int] = {}
        self._live = 0

    # scheduling --------------------------------------------------------------
    def schedule(self, time: float, kind: str, client: int = -1, data: Any = None) -> Event:
        """Add one event at virtual ``time`` (>= ``now``); returns it."""
        time = float(time)
        self._check_time(time, client)
        entry = (time, self._seq, kind, int(client), data)
        self._seq += 1
        heapq.heappush(self._heap, entry)
        self._count(entry[3], 1)
        return Event(*entry)

    def schedule_many(self, times: np.ndarray, kind: str, clients: np.ndarray) -> None:
        """Add one ``kind`` event per client at once; seqs follow the order of ``clients``."""
        times = np.asarray(times, dtype=np.float64)
        clients = np.asarray(clients, dtype=np.int64)
        if times.shape != clients.shape or times.ndim != 1:
            raise FedloomError(
                f"schedule_many: times shape {times.shape} and clients shape "
                f"{clients.shape} must be equal and 1-D"
            )
        bad = ~np.isfinite(times) | (times < self.now)
        if bad.any():
            i = int(np.argmax(bad))
            self._check_time(float(times[i]), int(clients[i]))
        first = self._seq
        entries = [
            (t, first + i, kind, c, None)
            for i, (t, c) in enumerate(zip(times.tolist(), clients.tolist(), strict=True))
        ]
        self._seq += len(entries)
        self._heap.extend(entries)
        heapq.heapify(self._heap)
        for c in clients.tolist():
            self._count(c, 1)

    def cancel_client(self, client: int) -> int:
        """Drop every pending event of ``client`` (e.g. after it failed); returns how many.

        Events scheduled for the client afterwards are kept.
        """
        client = int(client)
        self._cancelled_below[client] = self._seq
        dropped = self._pending.pop(client, 0)
        self._live -= dropped
        return dropped

    def cancel(self, predicate: Callable[[Event], bool]) -> int:
        """Drop every pending event for which ``predicate`` is true; returns how many.

        This scans the whole queue (O(n)); prefer ``cancel_client`` for per-client drops.
        """
        keep: list[_Entry] = []
        dropped = 0
        for entry in self._heap:
            if self._is_cancelled(entry):
                continue
            if predicate(Event(*entry)):
                dropped += 1
                self._count(entry[3], -1)
            else:
                keep.append(entry)
        heapq.heapify(keep)
        self._heap = keep
        self._cancelled_below.clear()
        return dropped

    # consuming ---------------------------------------------------------------
    def pop(self) -> Event:
        """Remove the earliest event and advance ``now`` to its time."""
        self._drop_cancelled_head()
        if not self._heap:
            raise FedloomError(f"pop from an empty event queue at virtual time {self.now}")
        entry = heapq.heappop(self._heap)
        self._count(entry[3], -1)
        self.now = entry[0]
        return Event(*entry)

    def peek_time(self) -> float | None:
        """Time of the earliest pending event, or ``None`` when the queue is empty."""
        self._drop_cancelled_head()
        return self._heap[0][0] if self._heap else None

    def advance_to(self, t: float) -> None:
        """Move ``now`` forward to ``t`` without popping; ``t`` may not pass a pending event."""
        t = float(t)
        if math.isnan(t) or t < self.now:
            raise FedloomError(f"advance_to: time {t!r} is before now={self.now}")
        head = self.peek_time()
        if head is not None and t > head:
            raise FedloomError(
                f"advance_to: time {t!r} passes the pending event at {head}; pop it first"
            )
        self.now = t

    def __len__(self) -> int:
        """Number of pending events, cancelled ones excluded."""
        return self._live

    # persistence -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state (each event's ``data`` must be JSON-serializable too)."""
        live = sorted(e for e in self._heap if not self._is_cancelled(e))
        return {
            "now": self.now,
            "seq": self._seq,
            "events": [[t, s, k, c, d] for t, s, k, c, d in live],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; pending events keep their seqs."""
        try:
            now = float(state["now"])
            seq = int(state["seq"])
            entries = [(float(t), int(s), str(k), int(c), d) for t, s, k, c, d in state["events"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise FedloomError(f"malformed clock state: {exc!r}") from exc
        if any(e[0] < now or e[1] >= seq for e in entries):
            raise FedloomError("malformed clock state: an event is before 'now' or after 'seq'")
        self.now = now
        self._seq = seq
        self._heap = entries
        heapq.heapify(self._heap)
        self._cancelled_below = {}
        self._pending = {}
        self._live = 0
        for e in entries:
            self._count(e[3], 1)

    # internals ---------------------------------------------------------------
    def _check_time(self, time: float, client: int) -> None:
        if not math.isfinite(time):
            raise FedloomError(f"event time for client {client} must be finite, got {time!r}")
        if time < self.now:
            raise FedloomError(
                f"event time {time!r} for client {client} is in the past (now={self.now})"
            )

    def _count(self, client: int, delta: int) -> None:
        left = self._pending.get(client, 0) + delta
        if left:
            self._pending[client] = left
        else:
            self._pending.pop(client, None)
        self._live += delta

    def _is_cancelled(self, entry: _Entry) -> bool:
        return entry[1] < self._cancelled_below.get(entry[3], -1)

    def _drop_cancelled_head(self) -> None:
        while self._heap and self._is_cancelled(self._heap[0]):
            heapq.heappop(self._heap)
