"""Virtual time for synchronous rounds: who finishes, who drops, and when.

For each dispatched client the round is a chain of events on the ``VirtualClock``:
the model download ends, local training ends, the upload ends. Network changes are
integrated exactly (``NetworkConditions``); a device can crash at a uniformly random
point of its work (its ``failure_prob``) or go offline when its availability window
closes; the server's deadline closes the round. The events are popped in time order
(ties in insertion order), so the same seed gives the same event order every time.

Everything here is decided before any training, so a runtime trains only the clients
that will deliver.

References: FedScale (Lai et al., ICML 2022) for trace-driven client timing;
Bonawitz et al., "Towards Federated Learning at Scale", MLSys 2019 (deadlines, dropouts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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

    def play_round(
        self,
        round: int,
        clients: np.ndarray,
        samples: np.ndarray,
        down_bytes: int,
        up_bytes: np.ndarray | int,
        deadline_s: float | None,
    ) -> RoundOutcome:
        """Schedule every dispatched client's events and play them until the round ends.

        ``samples`` is how many training samples each client processes (its compute
        work); the round ends when every client has delivered or dropped, or at the
        deadline, whichever comes first.
        """
        clock, pop = self.clock, self.population
        clients = np.asarray(clients, dtype=np.int64)
        t0 = clock.now
        down_end = self.network.transfer_end(clients, t0, down_bytes, "down")
        train_end = down_end + pop.compute_time(clients, samples)
        up_end = self.network.transfer_end(clients, train_end, up_bytes, "up")
        rng = np.random.default_rng([self.seed, 6, round])
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
        for c in sorted(pending):
            failed[c] = "missed the deadline" if deadline_s is not None else "never finished"
            clock.cancel_client(c)
        clock.cancel(lambda ev: ev.kind == "deadline")
        end = clock.now
        return RoundOutcome(
            t0, end, np.array(delivered, np.int64), np.array(arrival), failed, events
        )
