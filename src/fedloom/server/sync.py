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
from typing import Literal

import numpy as np

from fedloom.aggregation import weighted_sum
from fedloom.client.schedule import client_seeds
from fedloom.errors import FedloomError, UpdateRejected
from fedloom.optim import ServerOptimizer
from fedloom.privacy.central import CentralDP
from fedloom.records import ClientOutcomes, Dispatch, RoundResult, TrainPlan, Update
from fedloom.server.convergence import ConvergenceMonitor, StopDecision
from fedloom.server.selection import Selector, UniformSelector
from fedloom.server.stats import ClientStats

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
        quorum: int | None = None,
        quorum_policy: Literal["skip", "retry"] = "skip",
        max_retries: int = 3,
        dp: CentralDP | None = None,
    ) -> None:
        """``quorum``: the fewest aggregated updates a round may apply. A round below it
        leaves the model unchanged and is either skipped (the round still counts) or,
        with ``quorum_policy = "retry"``, run again with a new cohort up to
        ``max_retries`` times before it is skipped. ``dp`` turns the aggregation into
        DP-FedAvg: clipped updates summed with equal weight plus calibrated noise."""
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
        self.quorum = quorum
        self.quorum_policy = quorum_policy
        self.max_retries = max_retries
        self.dp = dp
        self._canary_sum: np.ndarray | None = None
        self.round = 0  # closed rounds (aggregated or skipped)
        self.version = 0  # model updates applied
        self.retries = 0  # failed attempts of the current round
        self._open: _OpenRound | None = None

    @property
    def dim(self) -> int:
        return self.params.shape[0]

    @property
    def pending(self) -> set[int]:
        """Clients of the open round that have neither answered nor failed."""
        return self._open.pending if self._open else set()

    def begin_round(
        self,
        available: np.ndarray | None = None,
        stats: ClientStats | None = None,
        now: float = 0.0,
        k: int | None = None,
        deadline: float | None = None,
    ) -> list[Dispatch]:
        """Select the next round's cohort and return one dispatch per client.

        ``k`` overrides ``clients_per_round`` (over-selection dispatches more clients than
        the round needs); ``stats`` and ``now`` inform the selector; ``deadline`` is copied
        into each dispatch.
        """
        if self._open is not None:
            raise FedloomError(f"round {self._open.round} is still open")
        ids = np.arange(self.num_clients) if available is None else np.asarray(available)
        k = min(self.clients_per_round if k is None else k, len(ids))
        rnd = self.round + 1
        cohort = self.selector.select(ids, k, rnd, self.rng, stats, now)
        selected = tuple(int(c) for c in cohort)
        self._open = _OpenRound(rnd, selected, np.empty((len(selected), self.dim), np.float32))
        seeds = client_seeds(self.seed, rnd, np.asarray(selected, dtype=np.int64))
        return [
            Dispatch(c, rnd, self.version, self.plan, int(seed), deadline)
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
        if u.round != self._open.round or u.version != self.version:
            raise UpdateRejected(
                cid,
                f"stale update for round {u.round} / model version {u.version}; "
                f"expected round {self._open.round} / version {self.version}",
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

    def add_canaries(self, clipped_sum: np.ndarray) -> None:
        """Add audit canaries' (already clipped) updates to this round's DP sum.

        Canary clients exist only to measure privacy empirically: their updates are
        fixed random directions that go through the same noisy release as real ones.
        """
        if self.dp is None or self._open is None:
            raise FedloomError("canaries need central DP and an open round")
        self._canary_sum = np.asarray(clipped_sum, dtype=np.float64)

    def fail(self, client_id: int, reason: str) -> None:
        """Record that a selected client will not answer this round."""
        if self._open is None or not self._open.is_pending(client_id):
            raise FedloomError(f"client {client_id} has no pending work to fail")
        self._open.failed[client_id] = reason

    def close_round(self, combine: Combine | None = None) -> RoundResult:
        """Aggregate whoever answered, step the server optimizer and advance the version.

        Clients that neither answered nor failed are recorded as failed; a round with no
        update, or fewer than ``quorum``, leaves the model unchanged.

        ``combine`` serves runtimes that shard one cohort over several processes, each
        of which receives only its own clients' updates: the server packs its partial
        FedAvg sums (``sum w*delta``, per-client example counts, losses and steps,
        rejections) into one float64 vector, ``combine`` adds these vectors across
        processes (one all-reduce), and every process applies the same aggregate. A
        second, K-long sum gathers each client's contribution to the aggregate.
        """
        if self._open is None:
            raise FedloomError("no round is open")
        rnd = self._open
        k, d = len(rnd.selected), self.dim
        ups = sorted(rnd.updates.values(), key=lambda u: rnd.row[u.client_id])
        rows = np.array([rnd.row[u.client_id] for u in ups], dtype=np.int64)
        w = np.array([u.num_examples for u in ups], dtype=np.float64)
        packed = np.zeros(d + 4 * k + 2, dtype=np.float64)
        if ups and self.dp is not None:  # DP-FedAvg: equal weights of clipped updates
            clipped, unclipped = self.dp.clip(rnd.matrix[rows])
            packed[:d] = clipped.sum(axis=0, dtype=np.float64)
            packed[-2] = unclipped
        elif ups:  # in selection order, so arrival order cannot change the sum
            packed[:d] = weighted_sum(rnd.matrix[rows], w)
            per_client = packed[d : d + 4 * k].reshape(4, k)
            per_client[0, rows] = w
            per_client[1, rows] = w * np.array([u.metrics.train_loss for u in ups])
            per_client[2, rows] = w * np.array([u.metrics.train_loss_sq for u in ups])
            per_client[3, rows] = [u.metrics.steps for u in ups]
        packed[-1] = rnd.rejected
        if combine is not None:
            packed = np.asarray(combine(packed), dtype=np.float64)
        if self._canary_sum is not None:  # identical on every rank: added after combining
            packed[:d] += self._canary_sum
            self._canary_sum = None
        counts, loss_w, loss_sq_w, steps = packed[d : d + 4 * k].reshape(4, k)
        done = np.flatnonzero(counts > 0)
        total = float(counts.sum())
        status = "aggregated"
        if len(done) == 0 and self.dp is None:  # under DP even an empty cohort releases noise
            status = "empty"
        elif self.quorum is not None and len(done) < self.quorum:
            retry = self.quorum_policy == "retry" and self.retries < self.max_retries
            status = "retry" if retry else "skipped"
        norm, loss = 0.0, float("nan")
        contribution = np.zeros(k)
        if status == "aggregated":
            if self.dp is not None:
                delta = self.dp.release(packed[:d], packed[-2], len(done))
            else:
                delta = (packed[:d] / total).astype(np.float32)
            self.params, self.opt_state = self.optimizer.step(self.params, delta, self.opt_state)
            self.version += 1
            norm = float(np.linalg.norm(delta))
            loss = float(loss_w.sum() / total) if total else float("nan")
            if norm > 0 and ups and self.dp is None:
                contribution[rows] = w * (rnd.matrix[rows] @ delta) / (total * norm**2)
            if combine is not None:
                contribution = np.asarray(combine(contribution), dtype=np.float64)
        if status == "retry":
            self.retries += 1
        else:
            self.round, self.retries = rnd.round, 0
        self._open = None
        sel = np.asarray(rnd.selected, dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            clients = ClientOutcomes(
                ids=sel[done],
                num_examples=counts[done].astype(np.int64),
                train_loss=loss_w[done] / counts[done],
                train_loss_sq=loss_sq_w[done] / counts[done],
                steps=steps[done].astype(np.int64),
                contribution=contribution[done],
            )
        return RoundResult(
            round=rnd.round,
            selected=rnd.selected,
            completed=tuple(int(c) for c in sel[done]),
            failed=tuple(sorted(set(rnd.selected) - {int(c) for c in sel[done]})),
            rejected=int(packed[-1]),
            num_examples=int(total),
            train_loss=loss,
            update_norm=norm,
            status=status,
            clients=clients,
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
                "version": self.version,
                "rng": copy.deepcopy(self.rng.bit_generator.state),
                "monitor": self.monitor.state_dict(),
                "selector": self.selector.state_dict(),
                "dp": None if self.dp is None else self.dp.state_dict(),
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
        self.version = int(meta["version"])
        self.retries = 0
        self.rng.bit_generator.state = meta["rng"]
        self.monitor.load_state_dict(meta["monitor"])
        self.selector.load_state_dict(meta["selector"])
        if self.dp is not None:
            self.dp.load_state_dict(meta["dp"])
        self._open = None
