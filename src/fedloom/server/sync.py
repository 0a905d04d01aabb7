"""Synchronous federated rounds as a sans-IO state machine.

``SyncServer`` never trains, sleeps or touches a socket: a runtime (the simulator, the
gRPC server, torch.distributed) asks it for the round's dispatches, feeds it the
clients' updates and failures as they arrive, and closes the round; the server
validates every update, aggregates the cohort as one ``[K, d]`` matrix, applies the
server optimizer and tracks convergence. Its whole state round-trips through
``state_dict`` so a run resumes exactly.

References: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017 (FedAvg weighted by example counts).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedloom.aggregation import weighted_sum
from fedloom.client.schedule import client_seeds
from fedloom.errors import FedloomError, UpdateRejected
from fedloom.optim import ServerOptimizer
from fedloom.records import Dispatch, RoundResult, TrainPlan, Update
from fedloom.server.convergence import ConvergenceMonitor, StopDecision
from fedloom.server.selection import Selector, UniformSelector

Combine = Callable[[np.ndarray], np.ndarray]


def client_seed(run_seed: int, round: int, client_id: int) -> int:
    """The seed of one client's local work in one round (independent of executor and order)."""
    return int(client_seeds(run_seed, round, np.array([client_id]))[0])


@dataclass
class _OpenRound:
    round: int
    selected: tuple[int, ...]
    matrix: np.ndarray  # [K, d]: row i holds the delta of selected[i] once it arrives
    updates: dict[int, Update] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    rejected: int = 0

    def __post_init__(self) -> None:
        self.row = {c: i for i, c in enumerate(self.selected)}

    @property
    def pending(self) -> set[int]:
        return set(self.selected) - self.updates.keys() - self.failed.keys()

    def is_pending(self, client_id: int) -> bool:
        return (
            client_id in self.row
            and client_id not in self.updates
            and (client_id not in self.failed)
        )


class SyncServer:
    """Orchestrates synchronous rounds over ``num_clients`` registered clients."""

    def __init__(
        self,
        params: np.ndarray,
        num_clients: int,
        clients_per_round: int,
        plan: TrainPlan,
        optimizer: ServerOptimizer,
        monitor: ConvergenceMonitor,
        seed: int,
        selector: Selector | None = None,
    ) -> None:
        if params.dtype != np.float32 or params.ndim != 1:
            raise FedloomError("global parameters must be a 1-D float32 vector")
        self.params = params.copy()
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.plan = plan
        self.optimizer = optimizer
        self.opt_state = optimizer.init(self.params)
        self.monitor = monitor
        self.seed = seed
        self.selector = selector or UniformSelector()
        self.rng = np.random.default_rng(seed)
        self.round = 0  # completed rounds == version of the global model
        self._open: _OpenRound | None = None

    @property
    def dim(self) -> int:
        return self.params.shape[0]

    @property
    def pending(self) -> set[int]:
        """Clients of the open round that have neither answered nor failed."""
        return self._open.pending if self._open else set()

    def begin_round(self, available: np.ndarray | None = None) -> list[Dispatch]:
        """Select the cohort of the next round and return one dispatch per client."""
        if self._open is not None:
            raise FedloomError(f"round {self._open.round} is still open")
        ids = np.arange(self.num_clients) if available is None else np.asarray(available)
        k = min(self.clients_per_round, len(ids))
        rnd = self.round + 1
        cohort = self.selector.select(ids, k, rnd, self.rng)
        selected = tuple(int(c) for c in cohort)
        self._open = _OpenRound(rnd, selected, np.empty((len(selected), self.dim), np.float32))
        seeds = client_seeds(self.seed, rnd, np.asarray(selected, dtype=np.int64))
        return [
            Dispatch(c, rnd, self.round, self.plan, int(seed))
            for c, seed in zip(selected, seeds, strict=True)
        ]

    def receive(self, update: Update) -> None:
        """Accept one client's update, or raise ``UpdateRejected`` and change nothing.

        The delta is copied into the round's cohort matrix, so the caller may reuse its
        buffer afterwards.
        """
        try:
            self._validate(update)
        except UpdateRejected:
            if self._open is not None:
                self._open.rejected += 1
            raise
        rnd = self._open
        assert rnd is not None
        rnd.matrix[rnd.row[update.client_id]] = update.delta
        rnd.updates[update.client_id] = update

    def _validate(self, u: Update) -> None:
        cid = u.client_id
        if self._open is None:
            raise UpdateRejected(cid, "no round is open")
        if cid not in self._open.row:
            raise UpdateRejected(cid, f"client was not selected for round {self._open.round}")
        if cid in self._open.updates:
            raise UpdateRejected(cid, f"duplicate update for round {self._open.round}")
        if cid in self._open.failed:
            raise UpdateRejected(cid, "client was already marked failed this round")
        if u.round != self._open.round or u.version != self.round:
            raise UpdateRejected(
                cid,
                f"stale update for round {u.round} / model version {u.version}; "
                f"expected round {self._open.round} / version {self.round}",
            )
        delta = u.delta
        if not isinstance(delta, np.ndarray) or delta.shape != (self.dim,):
            shape = getattr(delta, "shape", type(delta).__name__)
            raise UpdateRejected(cid, f"delta has shape {shape}, expected ({self.dim},)")
        if delta.dtype != np.float32:
            raise UpdateRejected(cid, f"delta has dtype {delta.dtype}, expected float32")
        if not np.isfinite(delta).all():
            bad = int(np.count_nonzero(~np.isfinite(delta)))
            raise UpdateRejected(cid, f"delta contains {bad} NaN/inf values")
        count = u.num_examples
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
            raise UpdateRejected(cid, f"num_examples = {u.num_examples!r}, expected an int >= 1")

    def fail(self, client_id: int, reason: str) -> None:
        """Record that a selected client will not answer this round."""
        if self._open is None or not self._open.is_pending(client_id):
            raise FedloomError(f"client {client_id} has no pending work to fail")
        self._open.failed[client_id] = reason

    def close_round(self, combine: Combine | None = None) -> RoundResult:
        """Aggregate whoever answered, step the server optimizer and advance the version.

        Clients that neither answered nor failed are recorded as failed; a round with no
        update leaves the model unchanged.

        ``combine`` serves runtimes that shard one cohort over several processes, each
        of which receives only its own clients' updates: the server packs its partial
        FedAvg sums (``sum w*delta``, per-client example counts and losses, rejections)
        into one float64 vector, ``combine`` adds these vectors across processes (one
        all-reduce), and every process applies the same aggregate.
        """
        if self._open is None:
            raise FedloomError("no round is open")
        rnd = self._open
        k, d = len(rnd.selected), self.dim
        packed = np.zeros(d + 2 * k + 1, dtype=np.float64)
        if rnd.updates:  # in selection order, so arrival order cannot change the sum
            ups = sorted(rnd.updates.values(), key=lambda u: rnd.row[u.client_id])
            rows = np.array([rnd.row[u.client_id] for u in ups], dtype=np.int64)
            w = np.array([u.num_examples for u in ups], dtype=np.float64)
            packed[:d] = weighted_sum(rnd.matrix[rows], w)
            packed[d + rows] = w
            packed[d + k + rows] = w * np.array([u.metrics.train_loss for u in ups])
        packed[-1] = rnd.rejected
        if combine is not None:
            packed = np.asarray(combine(packed), dtype=np.float64)
        counts = packed[d : d + k]
        done = counts > 0
        total = float(counts.sum())
        norm, loss = 0.0, float("nan")
        if total > 0:
            delta = (packed[:d] / total).astype(np.float32)
            self.params, self.opt_state = self.optimizer.step(self.params, delta, self.opt_state)
            norm = float(np.linalg.norm(delta))
            loss = float(packed[d + k : d + 2 * k].sum() / total)
        completed = tuple(c for c, ok in zip(rnd.selected, done, strict=True) if ok)
        self.round = rnd.round
        self._open = None
        return RoundResult(
            round=rnd.round,
            selected=rnd.selected,
            completed=completed,
            failed=tuple(sorted(set(rnd.selected) - set(completed))),
            rejected=int(packed[-1]),
            num_examples=int(total),
            train_loss=loss,
            update_norm=norm,
        )

    def observe(self, metrics: dict[str, float]) -> StopDecision | None:
        """Feed the round's evaluation to convergence monitoring; a decision means stop."""
        value = metrics.get(self.monitor.metric)
        if value is None:
            return None
        return self.monitor.observe(self.round, value)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: arrays under ``arrays``, the rest JSON."""
        if self._open is not None:
            raise FedloomError("cannot checkpoint while a round is open")
        arrays = {"params": self.params}
        arrays.update({f"opt.{k}": np.asarray(v) for k, v in self.opt_state.items()})
        return {
            "arrays": arrays,
            "meta": {
                "round": self.round,
                "rng": copy.deepcopy(self.rng.bit_generator.state),
                "monitor": self.monitor.state_dict(),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        arrays, meta = state["arrays"], state["meta"]
        params = np.asarray(arrays["params"], dtype=np.float32)
        if params.shape != self.params.shape:
            raise FedloomError(
                f"checkpoint parameters have shape {params.shape}, model has {self.params.shape}"
            )
        self.params = params.copy()
        self.opt_state = {
            k.removeprefix("opt."): np.array(v) for k, v in arrays.items() if k.startswith("opt.")
        }
        self.round = int(meta["round"])
        self.rng.bit_generator.state = meta["rng"]
        self.monitor.load_state_dict(meta["monitor"])
        self._open = None
