"""Virtual time for synchronous rounds: who finishes, who drops, and when.

For each dispatched client the round is a chain of events on the ``VirtualClock``:
the model download ends, local training ends, the upload ends. Network changes are
integrated exactly (``NetworkConditions``); a device can crash at a uniformly random
point of its work (its ``failure_prob``) or go offline when its availability window
closes; the server's deadline closes the round. The events are popped in time order
(ties in insertion order), so the same seed gives the same event order every time.

Everything here is decided before any training, so a runtime trains only the clients
that will deliver. When the upload sizes are known only after training (compressed
payloads), a runtime first rehearses the round on a copy of the clock with the smallest
possible uploads (:meth:`VirtualTime.rehearse`: everyone who could deliver), trains
those, and then plays the round for real with each client's encoded bytes.

References: FedScale (Lai et al., ICML 2022) for trace-driven client timing;
Bonawitz et al., "Towards Federated Learning at Scale", MLSys 2019 (deadlines, dropouts).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from fedloom.server.local_work import steps_within
from fedloom.sim.clock import VirtualClock
from fedloom.sim.devices import Population
from fedloom.sim.network import NetworkConditions


@dataclass(frozen=True)
class RoundOutcome:
    """The virtual-time result of one round."""

    start: float
    end: float
    delivered: np.ndarray  # client ids whose update arrived, in arrival order
    arrival: np.ndarray  # their arrival times
    failed: dict[int, str] = field(default_factory=dict)  # client id -> reason
    surplus: tuple[int, ...] = ()  # over-selected clients not needed once enough delivered
    events: int = 0


class VirtualTime:
    """Population, network conditions and the clock of one simulated federation."""

    def __init__(
        self,
        population: Population,
        network: NetworkConditions,
        seed: int,
        clock: VirtualClock | None = None,
    ) -> None:
        self.population = population
        self.network = network
        self.seed = seed
        self.clock = clock or VirtualClock()

    @property
    def now(self) -> float:
        return self.clock.now

    def available(self) -> np.ndarray:
        """Ids of the clients online now."""
        ids = np.arange(len(self.population))
        return ids[self.population.availability.available(ids, self.clock.now)]

    def wait_for_clients(self) -> bool:
        """Advance to the next moment any client comes online; False if none ever will."""
        ids = np.arange(len(self.population))
        nxt = float(self.population.availability.next_change(ids, self.clock.now).min())
        if not np.isfinite(nxt):
            return False
        self.clock.advance_to(nxt)
        return True

    def steps_that_fit(
        self,
        clients: np.ndarray,
        steps: np.ndarray,
        step_samples: np.ndarray,
        down_bytes: int,
        up_bytes: int,
        deadline_s: float,
    ) -> np.ndarray:
        """How many local steps each client can finish and still upload by the deadline.

        What a device that knows its own speed does with a deadline (FedProx's partial
        work): it estimates download and upload at its current link rates and trains only
        as many steps as fit, at least 0 and at most ``steps``. ``step_samples`` is the
        largest number of samples one step processes (the batch size, or fewer for a
        small client), so the estimate never overshoots.

        References: Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.
        """
        clients = np.asarray(clients, dtype=np.int64)
        steps = np.asarray(steps, dtype=np.int64)
        pop = self.population
        down = self.network.transfer_end(clients, self.clock.now, down_bytes, "down")
        up = pop.transfer_time(clients, up_bytes, "up")
        budget = self.clock.now + deadline_s - down - up
        per_step = pop.compute_time(clients, np.asarray(step_samples))
        return steps_within(steps, per_step, budget)

    def rehearse(self, *args: object, **kwargs: object) -> RoundOutcome:
        """:meth:`play_round` on a copy of the clock, which stays as it was: a delivery
        in the real play with larger uploads is a delivery here too (later uploads only
        meet more deadlines, crashes and closing windows)."""
        real = self.clock
        self.clock = copy.deepcopy(real)
        try:
            return self.play_round(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            self.clock = real

    def play_round(
        self,
        round: int,
        clients: np.ndarray,
        samples: np.ndarray,
        down_bytes: int,
        up_bytes: np.ndarray | int,
        deadline_s: float | None,
        needed: int | None = None,
        attempt: int = 0,
    ) -> RoundOutcome:
        """Schedule every dispatched client's events and play them until the round ends.

        ``samples`` is how many training samples each client processes (its compute
        work); the round ends when every client has delivered or dropped, when ``needed``
        updates have arrived (over-selection: the rest are surplus), or at the deadline,
        whichever comes first.
        """
        clock, pop = self.clock, self.population
        clients = np.asarray(clients, dtype=np.int64)
        t0 = clock.now
        down_end = self.network.transfer_end(clients, t0, down_bytes, "down")
        train_end = down_end + pop.compute_time(clients, samples)
        up_end = self.network.transfer_end(clients, train_end, up_bytes, "up")
        rng = np.random.default_rng([self.seed, 6, round, attempt])
        crashes = rng.random(len(clients)) < pop.failure_prob[clients]
        crash_at = t0 + rng.random(len(clients)) * (up_end - t0)
        offline_at = pop.availability.next_change(clients, t0)
        crash = crashes & np.isfinite(crash_at)
        offline = ~crash & (offline_at < up_end)
        ok = ~crash & ~offline & np.isfinite(up_end)  # else: link down for good
        clock.schedule_many(crash_at[crash], "failure", clients[crash])
        clock.schedule_many(offline_at[offline], "offline", clients[offline])
        for kind, times in (
            ("download_done", down_end),
            ("train_done", train_end),
            ("upload_done", up_end),
        ):
            clock.schedule_many(times[ok], kind, clients[ok])
        if deadline_s is not None:
            clock.schedule(t0 + deadline_s, "deadline")
        delivered, arrival, failed = [], [], {}
        pending = set(clients.tolist())
        events = 0
        while pending and len(clock):
            if needed is not None and len(delivered) >= needed:
                break
            ev = clock.pop()
            events += 1
            if ev.kind == "deadline":
                break
            if ev.kind == "upload_done":
                delivered.append(ev.client)
                arrival.append(ev.time)
                pending.discard(ev.client)
            elif ev.kind == "failure":
                failed[ev.client] = "device failure"
                pending.discard(ev.client)
            elif ev.kind == "offline":
                failed[ev.client] = "went offline"
                pending.discard(ev.client)
        enough = needed is not None and len(delivered) >= needed
        for c in sorted(pending):
            if not enough:
                failed[c] = "missed the deadline" if deadline_s is not None else "never finished"
            clock.cancel_client(c)
        clock.cancel(lambda ev: ev.kind == "deadline")
        surplus = tuple(sorted(pending)) if enough else ()
        return RoundOutcome(
            t0,
            clock.now,
            np.array(delivered, np.int64),
            np.array(arrival),
            failed,
            surplus,
            events,
        )
