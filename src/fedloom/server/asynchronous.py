"""Asynchronous federated learning (FedBuff, FedAsync) as a sans-IO state machine.

There are no rounds: the runtime hands work to idle clients whenever the scheduler has
room (:meth:`AsyncServer.hand_out`; each task names the model version the client
trains from), and delivers each update as it arrives (:meth:`AsyncServer.receive`).
An update's staleness is the number of versions published since its base version; one
staler than ``max_staleness`` is dropped and counted, and its client is told. Accepted
updates go into a buffer; once it holds ``buffer_size`` of them the runtime closes the
step (:meth:`AsyncServer.close_round`, named so the round engine drives it like a
round): the server chain runs over the buffer's ``[K, d]`` rows (server transforms,
staleness weights, FedAvg weights or DP-FedAvg's clipped sum and noise), the server
optimizer applies the result and a new version is published. ``round`` counts steps.

- **FedBuff**: ``delta = sum_i n_i w(s_i) delta_i / sum_i n_i`` (or, under central DP,
  ``(sum_i w(s_i) clip(delta_i) + noise) / K``), then the server optimizer.
- **FedAsync** (``buffer_size = 1``): the model is mixed with the client's,
  ``x <- (1 - a_t) x + a_t (x_base + delta)`` with ``a_t = mixing * w(s)``, where
  ``x_base`` is the version the client trained from (kept in :attr:`history`).

A client holds at most one task, and enters a buffer at most once (it gets no new work
while its update waits in the buffer), so one client moves one step by one clipped
update at most. The server keeps the models of versions that outstanding work trains
from (:meth:`model`), which the simulator trains from and FedAsync mixes with.

References: Xie, Koyejo & Gupta, "Asynchronous Federated Optimization", 2019 (FedAsync);
Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS
2022 (FedBuff).
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

from fedloom.aggregation import Reducer
from fedloom.client.schedule import client_seeds
from fedloom.compression.pipeline import Compression
from fedloom.errors import FedloomError, UpdateRejected
from fedloom.errors import RejectionKind as _K
from fedloom.optim import ServerOptimizer
from fedloom.privacy.central import CentralDP, RoundRelease
from fedloom.privacy.mechanisms import GeneratorNoise, SecureNoise
from fedloom.records import (
    ClientMetrics,
    ClientOutcomes,
    Dispatch,
    Exclusion,
    RoundResult,
    TrainPlan,
    Update,
)
from fedloom.server.anomaly import AnomalyGuard, Screening
from fedloom.server.convergence import ConvergenceMonitor, StopDecision
from fedloom.server.reduction import Reduction, RootUpdate
from fedloom.server.selection import Selector, UniformSelector
from fedloom.server.staleness import Staleness
from fedloom.server.stats import ClientStats
from fedloom.server.sync import check_steps, decompress, lower_bounds, observe
from fedloom.transforms.base import (
    ClientStates,
    Context,
    Transform,
    flatten_state,
    unflatten_state,
)
from fedloom.transforms.validation import Validate

AsyncMode = Literal["fedbuff", "fedasync"]
_XFORM = "xform.server."
_CLIENT_XFORM = "xform.client."
_CLIENT_COMPRESSION = "compress.client."
_HISTORY = "async.history."  # checkpoint arrays: models outstanding work trains from
_BUFFER = "async.buffer."  # ... and buffered updates (a step not closed yet)


@dataclass(frozen=True)
class Work:
    """One client's outstanding task: the step it is for, the version it trains from."""

    client: int
    round: int
    version: int
    seed: int
    handed_out: float  # the runtime's clock


@dataclass(frozen=True)
class StepFacts:
    """What the last closed step was made of, for the runtime's record and the registry:
    the contributors' staleness and seconds from hand-out to arrival (buffer order),
    and the updates dropped as too stale since the step before."""

    staleness: np.ndarray  # int64 [K]
    durations: np.ndarray  # float64 [K]
    dropped_stale: int
    payloads: dict[int, tuple[int, float]] = field(default_factory=dict)

    def histogram(self) -> dict[str, int]:
        """Contributors per staleness value (JSON keys)."""
        values, counts = np.unique(self.staleness, return_counts=True)
        return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


@dataclass
class _Buffered:
    update: Update  # decoded, weight clamped
    staleness: int
    version: int
    arrival: float
    handed_out: float
    payload: tuple[int, float] | None  # compressed: (bytes, setting)


class AsyncServer:
    """Orchestrates asynchronous training over ``num_clients`` registered clients."""

    quorum = None  # every step has its full buffer
    broadcast = None  # compressed downloads need one model for everyone: not asynchronous

    def __init__(
        self,
        params: np.ndarray,
        num_clients: int,
        plan: TrainPlan,
        optimizer: ServerOptimizer,
        monitor: ConvergenceMonitor,
        seed: int,
        *,
        mode: AsyncMode = "fedbuff",
        buffer_size: int = 10,
        staleness: Staleness | None = None,
        max_staleness: int = 20,
        mixing: float = 0.6,
        selector: Selector | None = None,
        dp: CentralDP | None = None,
        os_selection: bool = False,
        max_examples: int | None = None,
        reducer: Reducer | None = None,
        transforms: Transform | None = None,
        client_states: ClientStates | None = None,
        compression: Compression | None = None,
        upload_states: ClientStates | None = None,
        root_update: RootUpdate | None = None,
        guard: AnomalyGuard | None = None,
    ) -> None:
        """``mode``, ``buffer_size``, ``staleness``, ``max_staleness``, ``mixing``: the
        algorithm (module docstring; FedAsync forces ``buffer_size = 1``). ``dp``:
        DP-FedAvg over each buffer (``dp.expected_clients`` should be the buffer size).
        The other arguments mean what they mean for ``SyncServer``."""
        if params.dtype != np.float32 or params.ndim != 1:
            raise FedloomError("global parameters must be a 1-D float32 vector")
        if mode not in ("fedbuff", "fedasync"):
            raise FedloomError(f"mode = {mode!r}: expected 'fedbuff' or 'fedasync'")
        if buffer_size < 1 or max_staleness < 0 or not 0 < mixing <= 1:
            raise FedloomError(
                f"buffer_size = {buffer_size} (>= 1), max_staleness = {max_staleness} (>= 0), "
                f"mixing = {mixing} (in (0, 1])"
            )
        if max_examples is not None and max_examples < 1:
            raise FedloomError(f"max_examples = {max_examples!r}, expected an int >= 1")
        self.params = params.copy()
        self.num_clients = num_clients
        self.plan = plan
        self.optimizer = optimizer
        self.opt_state = optimizer.init(self.params)
        self.monitor = monitor
        self.seed = seed
        self.mode: AsyncMode = mode
        self.buffer_size = 1 if mode == "fedasync" else buffer_size
        self.staleness = staleness or Staleness()
        self.max_staleness = max_staleness
        self.mixing = mixing
        self.selector = selector or UniformSelector()
        self.rng = np.random.default_rng(seed)
        self.os_selection = os_selection
        self.dp = dp
        self.last_release: RoundRelease | None = None
        self.max_examples = max_examples
        self.validation = Validate(int(params.shape[0]))
        self.reduction = Reduction(reducer, seed, os_selection, root_update)
        self.guard = guard
        self.last_screening: Screening | None = None  # the last closed step's
        self.transforms = transforms
        self.transform_state = {} if transforms is None else transforms.init(self.dim)
        self.client_states = client_states
        self.compression = compression
        self.upload_states = upload_states
        self.decoders = None  # two-sided transforms are refused by the config
        self._example_bound = np.full(num_clients, np.iinfo(np.int64).max, dtype=np.int64)
        self._steps_bound: dict[int, int] = {}  # the local steps each client's plan allows
        self.round = 0  # server steps closed
        self.version = 0  # models published
        self.tasks = 0  # hand-outs so far (keys each task's seed)
        self.contributions = np.zeros(num_clients, dtype=np.int64)  # steps each entered
        self.in_flight: dict[int, Work] = {}
        self.history: dict[int, np.ndarray] = {0: self.params.copy()}
        self.buffer: list[_Buffered] = []
        self.last_step: StepFacts | None = None
        self._failed: dict[int, str] = {}  # since the last step
        self._refusals: dict[int, UpdateRejected] = {}
        self._rejected = 0
        self._dropped_stale = 0

    @property
    def dim(self) -> int:
        return self.params.shape[0]

    @property
    def start_params(self) -> np.ndarray:
        """The model a client handed work now trains from."""
        return self.params

    def model(self, version: int) -> np.ndarray:
        """The model of ``version``, while outstanding work or the buffer trains from it."""
        if version not in self.history:
            raise FedloomError(f"model version {version} is no longer held")
        return self.history[version]

    @property
    def ready(self) -> bool:
        """The buffer is full: the runtime closes the step."""
        return len(self.buffer) >= self.buffer_size

    @property
    def pending(self) -> set[int]:
        """Clients with outstanding work."""
        return set(self.in_flight)

    @property
    def buffered(self) -> set[int]:
        """Clients whose update waits in the buffer (no new work until the step)."""
        return {b.update.client_id for b in self.buffer}

    @property
    def received_payloads(self) -> dict[int, tuple[int, float]]:
        return {b.update.client_id: b.payload for b in self.buffer if b.payload is not None}

    def bound_steps(self, client_ids: np.ndarray, limits: np.ndarray) -> None:
        """The most local steps each client may report (see ``SyncServer.bound_steps``)."""
        ids, bounds = np.asarray(client_ids).tolist(), np.asarray(limits).tolist()
        self._steps_bound.update(zip(ids, bounds, strict=True))

    def bound_examples(self, client_ids: np.ndarray, limits: np.ndarray) -> None:
        """Cap each client's FedAvg weight (see ``SyncServer.bound_examples``)."""
        lower_bounds(self._example_bound, client_ids, limits)

    # work -----------------------------------------------------------------------
    def hand_out(
        self,
        pool: np.ndarray,
        k: int,
        stats: ClientStats | None = None,
        now: float = 0.0,
        deadline: float | None = None,
    ) -> list[Dispatch]:
        """Choose up to ``k`` clients of ``pool`` (the selector, as for a cohort) and give
        each a task on the current version. Clients with outstanding work or a buffered
        update are never chosen."""
        busy = self.pending | self.buffered
        pool = np.array([c for c in np.asarray(pool, dtype=np.int64) if int(c) not in busy])
        k = min(int(k), len(pool))
        if k <= 0:
            return []
        rng = self.rng
        if self.os_selection:  # unpredictable from the seed (SyncServer.os_selection)
            rng = np.random.default_rng(secrets.randbits(256))
        chosen = [int(c) for c in self.selector.select(pool, k, self.round + 1, rng, stats, now)]
        self.tasks += 1
        seeds = client_seeds(self.seed, self.tasks, np.asarray(chosen, dtype=np.int64))
        out = []
        for cid, seed in zip(chosen, seeds, strict=True):
            work = Work(cid, self.round + 1, self.version, int(seed), float(now))
            self.in_flight[cid] = work
            out.append(Dispatch(cid, work.round, work.version, self.plan, work.seed, deadline))
        return out

    def fail(self, client_id: int, reason: str) -> None:
        """The client's outstanding work will not arrive (crash, offline, timeout)."""
        if client_id not in self.in_flight:
            raise FedloomError(f"client {client_id} has no outstanding work to fail")
        del self.in_flight[client_id]
        self._refusals.pop(client_id, None)  # a step records each client's last outcome
        self._failed[client_id] = reason
        self._prune()

    def receive(self, update: Update, now: float = 0.0) -> None:
        """Buffer one client's update, or raise ``UpdateRejected`` (the work is over
        either way). An update staler than ``max_staleness`` is dropped and counted."""
        cid = update.client_id
        work = self.in_flight.get(cid) if isinstance(cid, int | np.integer) else None
        if work is None:
            raise UpdateRejected(cid, "client has no outstanding work", _K.UNSELECTED)
        try:
            if update.round != work.round or update.version != work.version:
                raise UpdateRejected(
                    cid,
                    f"update for step {update.round} / version {update.version}; its task is "
                    f"step {work.round} / version {work.version}",
                    _K.STALE_VERSION,
                )
            staleness = self.version - work.version
            if staleness > self.max_staleness:
                self._dropped_stale += 1
                raise UpdateRejected(
                    cid,
                    f"staleness {staleness} exceeds asynchronous.max_staleness = "
                    f"{self.max_staleness} (trained from version {work.version}, now "
                    f"{self.version}); dropped",
                    _K.STALE_VERSION,
                )
            update, decoded = decompress(self.compression, update, self.dim)
            self.validation.check(update)
            check_steps(update, self._steps_bound)
        except UpdateRejected as err:
            del self.in_flight[cid]
            self._rejected += 1
            self._failed.pop(int(cid), None)
            self._refusals[int(cid)] = err
            self._prune()
            raise
        limit = int(self._example_bound[cid])
        if self.max_examples is not None:
            limit = min(limit, self.max_examples)
        if update.num_examples > limit:
            update = replace(update, num_examples=limit)
        del self.in_flight[cid]
        self._failed.pop(int(cid), None)
        self._refusals.pop(int(cid), None)
        self.buffer.append(
            _Buffered(update, staleness, work.version, float(now), work.handed_out, decoded)
        )

    def readmit(self, update: Update, handed_out: float, arrival: float) -> None:
        """Buffer again an update accepted before a restart (a runtime's durable record
        of accepted updates, replayed in arrival order after ``load_state_dict``): its
        task is restored as it was handed out, then the update is received as it was.
        Raises ``UpdateRejected`` as :meth:`receive` does."""
        cid = int(update.client_id)
        self.in_flight[cid] = Work(cid, update.round, update.version, 0, handed_out)
        self.receive(update, arrival)

    # a step -----------------------------------------------------------------------
    def close_round(self, combine: object = None) -> RoundResult:
        """Apply the buffer as one server step (module docstring); publish a version."""
        if combine is not None:
            raise FedloomError("asynchronous steps run in one process: nothing to combine")
        buf, self.buffer = self.buffer, []
        buf = self._screen(buf)
        ids = np.array([b.update.client_id for b in buf], dtype=np.int64)
        n = np.array([b.update.num_examples for b in buf], dtype=np.float64)
        stale = np.array([b.staleness for b in buf], dtype=np.int64)
        weight = self.staleness(stale)
        losses = np.array([b.update.metrics.train_loss for b in buf], dtype=np.float64)
        status, norm, release = "empty", 0.0, None
        contribution = np.zeros(len(buf))
        if buf:
            status = "aggregated"
            rows = np.stack([b.update.delta for b in buf]).astype(np.float32, copy=False)
            rows = self._transform_rows(rows, ids, n, losses)
            steps = np.array([b.update.metrics.steps for b in buf], dtype=np.int64)
            delta, release = self._reduce(rows, n, weight, ids, steps)
            if self.mode == "fedasync":  # mix with the client's model (its base + delta)
                alpha = self.mixing * float(weight[0])
                delta = alpha * (self.model(buf[0].version) + delta - self.params)
                delta = delta.astype(np.float32)
            self.params, self.opt_state = self.optimizer.step(self.params, delta, self.opt_state)
            norm = float(np.linalg.norm(delta.astype(np.float64)))
            if norm > 0 and self.dp is None:
                unit = (delta / np.float32(norm)).astype(np.float32)
                contribution = n * (rows @ unit) / (n.sum() * norm)
            self.version += 1
            self.contributions[ids] += 1
        self.last_release = release
        self.round += 1
        self.history[self.version] = self.params.copy()
        for states in (self.client_states, self.upload_states):
            if states is not None:
                states.commit(ids.tolist())
        failed = dict(self._failed)
        excluded = {c: Exclusion.rejected(c, e) for c, e in self._refusals.items()}
        excluded |= {c: Exclusion.failed(c, why) for c, why in failed.items() if c not in excluded}
        self.last_step = StepFacts(
            stale,
            np.array([b.arrival - b.handed_out for b in buf], dtype=np.float64),
            self._dropped_stale,
            {b.update.client_id: b.payload for b in buf if b.payload is not None},
        )
        result = RoundResult(
            round=self.round,
            selected=tuple(ids.tolist()),
            completed=tuple(ids.tolist()),
            failed=tuple(sorted(failed)),
            rejected=self._rejected,
            num_examples=int(n.sum()),
            train_loss=float((n * losses).sum() / n.sum()) if buf else float("nan"),
            update_norm=norm,
            status=status,
            clients=ClientOutcomes(
                ids=ids,
                num_examples=n.astype(np.int64),
                train_loss=losses,
                train_loss_sq=np.array([b.update.metrics.train_loss_sq for b in buf]),
                steps=np.array([b.update.metrics.steps for b in buf], dtype=np.int64),
                contribution=contribution,
            ),
            excluded=tuple(excluded[c] for c in sorted(excluded)),
        )
        self._failed, self._refusals, self._rejected, self._dropped_stale = {}, {}, 0, 0
        self._prune()
        return result

    def _screen(self, buf: list[_Buffered]) -> list[_Buffered]:
        """Screen the buffer's rows (before staleness weighting); the updates the guard
        refuses leave the step (their clients' refusals are recorded with it)."""
        if self.guard is None or not buf:
            self.last_screening = None
            return buf
        rows = np.stack([b.update.delta for b in buf]).astype(np.float32, copy=False)
        ids = np.array([b.update.client_id for b in buf], dtype=np.int64)
        self.last_screening, refused = self.guard.screen(self.round + 1, rows, ids)
        self._refusals.update(refused)
        self._rejected += len(refused)
        return [b for b in buf if int(b.update.client_id) not in refused]

    def _reduce(
        self,
        rows: np.ndarray,
        n: np.ndarray,
        weight: np.ndarray,
        ids: np.ndarray,
        steps: np.ndarray,
    ) -> tuple[np.ndarray, RoundRelease | None]:
        """The buffer's update before mixing: FedBuff's staleness-weighted FedAvg mean (a
        robust rule over the staleness-weighted rows), or under DP the noisy sum of
        staleness-weighted clipped rows over the buffer size (``w(s) <= 1``: one client
        still moves the sum by at most the clip norm).
        FedAsync weighs by staleness in its mixing weight instead. ``steps``: each row's
        local steps (FedNova normalizes the staleness-weighted rows by them)."""
        scale = np.ones_like(weight) if self.mode == "fedasync" else weight
        if self.dp is not None:
            clipped, unclipped = self.dp.clip(rows)
            total = (clipped * scale[:, None]).sum(axis=0, dtype=np.float64)
            release = self.dp.release_round(total, unclipped, len(rows), None)
            assert release.delta is not None
            return release.delta, release
        scaled = (rows * scale[:, None]).astype(np.float32)
        total = self.reduction.partial(scaled, n, ids, self.params, self.round + 1, steps=steps)
        delta = self.reduction.finish(total, float(n.sum()))
        self.reduction.applied(delta)
        return delta, None

    def _transform_rows(
        self, rows: np.ndarray, ids: np.ndarray, n: np.ndarray, losses: np.ndarray
    ) -> np.ndarray:
        """The server's row transforms over the buffer (arrival order)."""
        if self.transforms is None:
            return rows
        ctx = Context(
            round=self.round + 1,
            client_ids=ids,
            weights=n,
            seed=self.seed,
            losses=losses,
            noise=SecureNoise()
            if self.os_selection
            else GeneratorNoise(np.random.default_rng([self.seed, 19, self.round + 1])),
            secure=self.os_selection,
        )
        out, self.transform_state = self.transforms.apply(rows, self.transform_state, ctx)
        out = np.asarray(out, dtype=np.float32)
        if out.shape != rows.shape:
            raise FedloomError(
                f"server transforms returned rows of shape {out.shape}, expected {rows.shape}"
            )
        return out

    def _prune(self) -> None:
        """Keep the models that outstanding work, the buffer or the present needs."""
        keep = {w.version for w in self.in_flight.values()}
        keep |= {b.version for b in self.buffer} | {self.version}
        for v in [v for v in self.history if v not in keep]:
            del self.history[v]

    def skip_round(self, reason: str) -> None:
        raise FedloomError(f"an asynchronous step cannot be skipped ({reason})")

    def observe(self, metrics: dict[str, float]) -> StopDecision | None:
        """Feed a step's evaluation to convergence monitoring; a decision means stop."""
        return observe(self.monitor, self.round, metrics)

    # checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly, outstanding work and buffer included."""
        arrays = {"params": self.params, "contributions": self.contributions}
        arrays.update(self.reduction.arrays())
        if self.guard is not None:
            arrays.update(self.guard.arrays())
        arrays.update({f"opt.{k}": np.asarray(v) for k, v in self.opt_state.items()})
        arrays.update({_XFORM + k: v for k, v in flatten_state(self.transform_state).items()})
        arrays.update({f"{_HISTORY}{v}": m for v, m in self.history.items()})
        arrays.update({f"{_BUFFER}{i}": b.update.delta for i, b in enumerate(self.buffer)})
        if self.client_states is not None:
            arrays.update(self.client_states.arrays(_CLIENT_XFORM))
        if self.upload_states is not None:
            arrays.update(self.upload_states.arrays(_CLIENT_COMPRESSION))
        buffered = [
            {
                "client": b.update.client_id,
                "round": b.update.round,
                "version": b.version,
                "num_examples": b.update.num_examples,
                "metrics": asdict(b.update.metrics),
                "staleness": b.staleness,
                "arrival": b.arrival,
                "handed_out": b.handed_out,
                "payload": None if b.payload is None else list(b.payload),
            }
            for b in self.buffer
        ]
        return {
            "arrays": arrays,
            "meta": {
                "round": self.round,
                "version": self.version,
                "tasks": self.tasks,
                "rng": copy.deepcopy(self.rng.bit_generator.state),
                "monitor": self.monitor.state_dict(),
                "selector": self.selector.state_dict(),
                "dp": None if self.dp is None else self.dp.state_dict(),
                "in_flight": [asdict(w) for w in self.in_flight.values()],
                "buffer": buffered,
                "failed": {str(c): why for c, why in self._failed.items()},
                "dropped_stale": self._dropped_stale,
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
        self.contributions = np.asarray(arrays["contributions"], dtype=np.int64).copy()
        self.reduction.load(arrays)
        if self.guard is not None:
            self.guard.load(arrays)
        self.opt_state = {
            k.removeprefix("opt."): np.array(v) for k, v in arrays.items() if k.startswith("opt.")
        }
        if self.transforms is not None:
            saved = {k.removeprefix(_XFORM): v for k, v in arrays.items() if k.startswith(_XFORM)}
            self.transform_state = unflatten_state(saved)
        if self.client_states is not None:
            self.client_states.load_arrays(arrays, _CLIENT_XFORM)
        if self.upload_states is not None:
            self.upload_states.load_arrays(arrays, _CLIENT_COMPRESSION)
        self.history = {
            int(k.removeprefix(_HISTORY)): np.asarray(v, dtype=np.float32).copy()
            for k, v in arrays.items()
            if k.startswith(_HISTORY)
        }
        self.round, self.version = int(meta["round"]), int(meta["version"])
        self.tasks = int(meta["tasks"])
        self.rng.bit_generator.state = meta["rng"]
        self.monitor.load_state_dict(meta["monitor"])
        self.selector.load_state_dict(meta["selector"])
        if self.dp is not None:
            self.dp.load_state_dict(meta["dp"])
        self.in_flight = {int(w["client"]): Work(**w) for w in meta["in_flight"]}
        self.buffer = [
            _Buffered(
                Update(
                    int(b["client"]),
                    int(b["round"]),
                    int(b["version"]),
                    np.asarray(arrays[f"{_BUFFER}{i}"], dtype=np.float32).copy(),
                    int(b["num_examples"]),
                    ClientMetrics(**b["metrics"]),
                ),
                int(b["staleness"]),
                int(b["version"]),
                float(b["arrival"]),
                float(b["handed_out"]),
                None if b["payload"] is None else (int(b["payload"][0]), float(b["payload"][1])),
            )
            for i, b in enumerate(meta["buffer"])
        ]
        self._failed = {int(c): why for c, why in meta["failed"].items()}
        self._dropped_stale = int(meta["dropped_stale"])
        self._refusals, self._rejected = {}, 0
        missing = {w.version for w in self.in_flight.values()} - set(self.history)
        if missing or self.version not in self.history:
            raise FedloomError(f"checkpoint lacks the models of versions {sorted(missing)}")
