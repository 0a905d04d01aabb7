"""Synchronous federated rounds as a sans-IO state machine.

``SyncServer`` never trains, sleeps or touches a socket: a runtime (the simulator, the
gRPC server, torch.distributed) asks it for the round's dispatches, feeds it the
clients' updates and failures as they arrive, and closes the round; the server
validates every update, aggregates the cohort as one ``[K, d]`` matrix, applies the
server optimizer and tracks convergence. Its whole state round-trips through
``state_dict`` so a run resumes exactly. Under secure aggregation it never sees an update:
the runtime hands it the round's unmasked sum instead (:meth:`SyncServer.receive_secure_sum`).

References: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017 (FedAvg weighted by example counts); Bonawitz et al.,
"Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017.
"""

from __future__ import annotations

import copy
import functools
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from fedloom.aggregation import Reducer
from fedloom.client.schedule import client_seeds
from fedloom.compression.codec import NonFinitePayload, PayloadError
from fedloom.compression.download import ModelBroadcast
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
from fedloom.secagg.cohort import SecureSum
from fedloom.server.anomaly import AnomalyGuard, Screening
from fedloom.server.convergence import ConvergenceMonitor, StopDecision
from fedloom.server.reduction import Reduction, RootUpdate
from fedloom.server.selection import Selector, UniformSelector
from fedloom.server.stats import ClientStats
from fedloom.transforms.base import (
    ClientStates,
    Context,
    State,
    Transform,
    flatten_state,
    unflatten_state,
)
from fedloom.transforms.clipping import AdaptiveClipL2, ClipL2
from fedloom.transforms.privacy import CentralRelease
from fedloom.transforms.validation import MAX_LOSS_SAMPLES, Validate, validate_metrics

if TYPE_CHECKING:
    from fedloom.server.device_chain import CohortRows

Combine = Callable[[np.ndarray], np.ndarray]
_XFORM = "xform.server."  # checkpoint arrays holding the server transforms' state
_DECODE = "xform.decode."  # ... the decoders' (two-sided transforms' server halves)
_CLIENT_XFORM = "xform.client."  # ... and the simulated clients' (see SyncServer.__init__)
_CLIENT_COMPRESSION = "compress.client."  # the simulated clients' error-feedback residuals
_BROADCAST = "compress.download."  # the compressed downloads' broadcast model


def client_seed(run_seed: int, round: int, client_id: int) -> int:
    """The seed of one client's local work in one round (independent of executor and order)."""
    return int(client_seeds(run_seed, round, np.array([client_id]))[0])


def _exclusions(rnd: _OpenRound, done: np.ndarray) -> tuple[Exclusion, ...]:
    """Who is not in the round's aggregate and why, by client id: refused updates (from
    inside or outside the cohort; not one a client made good by a later update), then
    selected clients that failed or never answered. ``done``: whether each selected
    client is in the aggregate (bool, selection order)."""
    held: set[int] = set()  # refused, then made good by a later update
    if rnd.refusals:
        held = set(np.asarray(rnd.selected, dtype=np.int64)[done].tolist()) & rnd.refusals.keys()
    out = {
        cid: Exclusion.rejected(cid, err) for cid, err in rnd.refusals.items() if cid not in held
    }
    missing = np.asarray(rnd.selected, dtype=np.int64)[~done]
    for cid in missing.tolist():  # the cohort minus the aggregated: usually few
        if cid not in out:
            out[cid] = Exclusion.failed(cid, rnd.failed.get(cid, "no update"))
    return tuple(out[cid] for cid in sorted(out))


def decompress(
    compression: Compression | None, update: Update, dim: int
) -> tuple[Update, tuple[int, float] | None]:
    """The update with its payload decoded into ``delta`` (compressed runs) and the
    payload's (bytes, setting); refuses a payload that does not decode, and a plain row
    where a payload is due (or a payload where none is)."""
    if compression is None:
        if update.payload is not None:
            raise UpdateRejected(
                update.client_id, "a compressed payload, but compression is off", _K.MALFORMED
            )
        return update, None
    if update.payload is None:
        raise UpdateRejected(
            update.client_id,
            f"a plain row, but uploads are compressed with {compression.name!r}",
            _K.MALFORMED,
        )
    try:
        row, setting = compression.decode(update.payload, dim)
    except PayloadError as err:
        kind = _K.NONFINITE if isinstance(err, NonFinitePayload) else _K.MALFORMED
        raise UpdateRejected(update.client_id, f"payload: {err}", kind) from None
    return replace(update, delta=row, payload=None), (len(update.payload), setting)


def decode(
    decoders: Transform, state: State, update: Update, seed: int, secure: bool
) -> tuple[Update, State]:
    """One update through the decoders (the two-sided transforms' server halves)."""
    ctx = Context(
        round=int(update.round),
        client_ids=np.array([update.client_id], dtype=np.int64),
        weights=np.array([update.num_examples], dtype=np.float64),
        seed=seed,
        secure=secure,
    )
    try:
        rows, state = decoders.apply(update.delta[None], state, ctx)
    except (FedloomError, ValueError, ArithmeticError) as err:
        raise UpdateRejected(
            update.client_id, f"update cannot be decoded: {err}", _K.MALFORMED
        ) from None
    delta = np.asarray(rows)
    delta = delta[0] if delta.ndim == 2 and delta.shape[0] == 1 else delta
    return replace(update, delta=delta), state


def lower_bounds(bounds: np.ndarray, client_ids: np.ndarray, limits: np.ndarray) -> None:
    """Lower ``bounds[client_ids]`` to ``limits`` where smaller (a server's per-client
    example caps; see :meth:`SyncServer.bound_examples`), refusing bad ids or limits."""
    ids = np.asarray(client_ids, dtype=np.int64)
    caps = np.asarray(limits, dtype=np.int64)
    if ids.shape != caps.shape or ids.ndim != 1:
        raise FedloomError(f"bound_examples: {ids.shape} ids for {caps.shape} limits")
    if ids.size and (ids.min() < 0 or ids.max() >= len(bounds)):
        raise FedloomError(f"bound_examples: client ids must be in 0..{len(bounds) - 1}")
    if np.any(caps < 1):
        raise FedloomError("bound_examples: every limit must be >= 1")
    np.minimum.at(bounds, ids, caps)


def observe(
    monitor: ConvergenceMonitor, round: int, metrics: dict[str, float]
) -> StopDecision | None:
    """An evaluation for convergence monitoring: the monitored metric, or without a
    central test set (a deployment) the clients' hold-out one (``fed_`` prefix)."""
    value = metrics.get(monitor.metric)
    if value is None:
        value = metrics.get(f"fed_{monitor.metric}")
    if value is None:
        return None
    return monitor.observe(round, value)


@dataclass(frozen=True)
class _Secure:
    total: SecureSum
    num_examples: np.ndarray  # int64 [M], public: the included clients' registered sizes
    steps: np.ndarray  # int64 [M], public: the steps their plans imply


def check_steps(update: Update, bounds: dict[int, int]) -> None:
    """Refuse an update reporting more local steps than its plan allows (``bounds``)."""
    bound = bounds.get(int(update.client_id))
    if bound is not None and update.metrics.steps > bound:
        raise UpdateRejected(
            update.client_id,
            f"steps = {update.metrics.steps} exceeds the {bound} its plan allows",
            _K.BAD_COUNT,
        )


def _raised(check: Callable[..., None], *args: object) -> UpdateRejected:
    """The refusal ``check(*args)`` raises for a row a vectorized check flagged."""
    try:
        check(*args)
    except UpdateRejected as err:
        return err
    raise FedloomError(f"{getattr(check, '__name__', check)}{args!r} refused nothing")


def _metrics_error(cohort: CohortRows, i: int) -> UpdateRejected:
    """Row ``i``'s refusal by the example-count and metrics checks of ``Validate``."""
    steps = int(cohort.steps[i])
    taken = max(0, min(steps, cohort.loss_samples.shape[1]))

    def check(cid: int) -> None:
        Validate._count(cid, int(cohort.num_examples[i]))
        metrics = ClientMetrics(
            float(cohort.train_loss[i]),
            steps,
            float(cohort.epochs[i]),
            float(cohort.train_loss_sq[i]),
            tuple(float(v) for v in cohort.loss_samples[i, :taken]),
        )
        validate_metrics(cid, metrics)

    return _raised(check, int(cohort.client_ids[i]))


@dataclass(frozen=True)
class CohortDispatch:
    """A round's dispatches as arrays (:meth:`SyncServer.begin_cohort`): every client of
    ``client_ids`` trains ``version`` under ``plan`` with its seed of ``seeds``."""

    round: int
    version: int
    plan: TrainPlan
    client_ids: np.ndarray  # int64 [K], in selection order
    seeds: np.ndarray  # int64 [K]
    deadline: float | None = None


@dataclass
class _OpenRound:
    round: int
    selected: tuple[int, ...]
    matrix: np.ndarray  # [K, d]: row i holds the delta of selected[i] once it arrives
    updates: dict[int, Update] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    rejected: int = 0
    refusals: dict[int, UpdateRejected] = field(default_factory=dict)  # client -> its last
    secure: _Secure | None = None
    clamped: dict[int, tuple[int, int]] = field(default_factory=dict)  # client -> (declared, used)
    skip: str | None = None  # why the round releases nothing (see SyncServer.skip_round)
    decoded: dict[int, tuple[int, float]] = field(default_factory=dict)  # payload bytes, setting
    payloads: dict[int, tuple[int, float]] = field(default_factory=dict)  # ... of accepted ones
    # a cohort whose rows stay on their device (SyncServer.receive_cohort): its accepted
    # rows in selection order and their rows of the cohort matrix
    device: CohortRows | None = None
    device_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    device_norms: np.ndarray | None = None  # their float64 L2 norms, from validation

    @functools.cached_property
    def row(self) -> dict[int, int]:
        """Each selected client's row of ``matrix`` (built on first use: a device
        cohort's round never needs it)."""
        return {c: i for i, c in enumerate(self.selected)}

    @property
    def answered(self) -> set[int]:
        secured = set() if self.secure is None else set(self.secure.total.included.tolist())
        return self.updates.keys() | self.failed.keys() | secured | self.device_ids

    @property
    def device_ids(self) -> set[int]:
        return set() if self.device is None else set(self.device.client_ids.tolist())

    @property
    def pending(self) -> set[int]:
        return set(self.selected) - self.answered

    def is_pending(self, client_id: int) -> bool:
        return client_id in self.row and client_id not in self.answered


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
        os_selection: bool = False,
        max_examples: int | None = None,
        reducer: Reducer | None = None,
        transforms: Transform | None = None,
        client_states: ClientStates | None = None,
        decoders: Transform | None = None,
        compression: Compression | None = None,
        upload_states: ClientStates | None = None,
        broadcast: ModelBroadcast | None = None,
        root_update: RootUpdate | None = None,
        guard: AnomalyGuard | None = None,
    ) -> None:
        """``quorum``: the fewest aggregated updates a round may apply. A round below it
        leaves the model unchanged and is either skipped (the round still counts) or,
        with ``quorum_policy = "retry"``, run again with a new cohort up to
        ``max_retries`` times before it is skipped. ``dp`` turns the aggregation into
        DP-FedAvg: clipped updates summed with equal weight plus calibrated noise.

        ``os_selection``: each round's cohort is drawn with a generator keyed by 256 fresh
        bits from the OS (``secrets``) instead of the run-seeded ``rng``, so that nobody
        who knows the run seed (every deployed client does) or earlier cohorts can predict
        who is sampled; sampling that the privacy analysis amplifies by must be secret.
        Deployments set it; the simulator keeps seeded, reproducible cohorts.

        ``max_examples``: the most examples one update may weigh in FedAvg (a declared
        count above it, or above the client's bound from :meth:`bound_examples`, is
        clamped and recorded in ``RoundResult.clamped``), so that no client can replace
        the model by declaring a huge count.

        ``close_round`` runs the server chain: decode (a secure round's sums) -> validate
        (:class:`~fedloom.transforms.validation.Validate`, on receipt) -> screen
        (``guard``, :class:`~fedloom.server.anomaly.AnomalyGuard`: anomaly scores, kept
        in :attr:`last_screening`; flagged rows may be refused) -> ``transforms`` (a
        server transform chain over the cohort's rows, e.g. from the config's
        ``[transforms] server``; its state is checkpointed) -> reduce (``reducer``,
        default the FedAvg weighted mean, run with its context by
        :class:`~fedloom.server.reduction.Reduction`; ``root_update`` is the server's own
        update on its root dataset, for FLTrust; a round with fewer updates than the rule
        is defined for is skipped; under ``dp`` the clipped rows' plain sum) -> central
        DP (:class:`~fedloom.transforms.privacy.CentralRelease`, with the audit canaries
        of :meth:`add_canaries`) -> ``optimizer``. Screening, row transforms and a reducer
        that is not decomposable need the rows, so they refuse secure sums and, under
        ``combine``, see only one shard's rows.

        ``client_states``: in simulation, every client's transform state (the simulator
        plays the clients and applies their chain); it is written into and restored from
        this server's checkpoints. A deployed client keeps its own instead.

        ``decoders``: the server halves of the clients' two-sided transforms (the decode
        step), applied to each update on receipt between a check of what arrived and a
        check of what it decodes to; their state is checkpointed. Not with secure sums.

        ``compression``: every update arrives as an encoded payload, decoded on receipt
        before any check of the row (and before ``decoders``); a payload that does not
        decode is refused for its client. ``upload_states``: in simulation, every
        client's compression state (error-feedback residuals), checkpointed like
        ``client_states``. ``broadcast``: compressed downloads; clients train from its
        ``held`` model (:attr:`start_params`), which follows every model update."""
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
        self.os_selection = os_selection
        self.quorum = quorum
        self.quorum_policy = quorum_policy
        self.max_retries = max_retries
        self.dp = dp
        # central DP: the last closed round's release (noisy quorum count, digest)
        self.last_release: RoundRelease | None = None
        if max_examples is not None and max_examples < 1:
            raise FedloomError(f"max_examples = {max_examples!r}, expected an int >= 1")
        self.max_examples = max_examples
        self.validation = Validate(int(params.shape[0]))
        self.reduction = Reduction(reducer, seed, os_selection, root_update)
        self.guard = guard
        self.last_screening: Screening | None = None  # the last closed round's
        # where the last closed round's device cohort was reduced: its device, or
        # "host: <reason>" when the chain needed its rows on the host (None: no cohort)
        self.last_chain: str | None = None
        self.transforms = transforms
        self.transform_state = {} if transforms is None else transforms.init(int(params.shape[0]))
        self.client_states = client_states
        self.decoders = decoders
        self.decode_state = {} if decoders is None else decoders.init(int(params.shape[0]))
        self.compression = compression
        self.upload_states = upload_states
        self.broadcast = broadcast
        # per-client weight bounds the runtime knows (registered sizes, counts at join)
        self._example_bound = np.full(num_clients, np.iinfo(np.int64).max, dtype=np.int64)
        self._steps_bound: dict[int, int] = {}  # the local steps each client's plan allows
        self._canary_sum: np.ndarray | None = None
        self.round = 0  # closed rounds (aggregated or skipped)
        self.version = 0  # model updates applied
        self.retries = 0  # failed attempts of the current round
        self._open: _OpenRound | None = None

    @property
    def dim(self) -> int:
        return self.params.shape[0]

    @property
    def start_params(self) -> np.ndarray:
        """The model clients download and train from: the global model, or under
        compressed downloads the broadcast model they reconstruct."""
        return self.params if self.broadcast is None else self.broadcast.held

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
        c = self.begin_cohort(available, stats, now, k, deadline)
        return [
            Dispatch(cid, c.round, c.version, c.plan, seed, deadline)
            for cid, seed in zip(c.client_ids.tolist(), c.seeds.tolist(), strict=True)
        ]

    def begin_cohort(
        self,
        available: np.ndarray | None = None,
        stats: ClientStats | None = None,
        now: float = 0.0,
        k: int | None = None,
        deadline: float | None = None,
    ) -> CohortDispatch:
        """:meth:`begin_round` as one record of arrays instead of a dispatch per client:
        for a runtime that trains the whole cohort at once (with :meth:`receive_cohort`),
        where an object per client would cost more than the training."""
        if self._open is not None:
            raise FedloomError(f"round {self._open.round} is still open")
        ids = np.arange(self.num_clients) if available is None else np.asarray(available)
        k = min(self.clients_per_round if k is None else k, len(ids))
        rnd = self.round + 1
        rng = self.rng
        if self.os_selection:  # unpredictable from the seed (see __init__)
            rng = np.random.default_rng(secrets.randbits(256))
        cohort = np.asarray(self.selector.select(ids, k, rnd, rng, stats, now), dtype=np.int64)
        selected = tuple(cohort.tolist())
        self._open = _OpenRound(rnd, selected, np.empty((len(selected), self.dim), np.float32))
        seeds = client_seeds(self.seed, rnd, cohort)
        return CohortDispatch(rnd, self.version, self.plan, cohort, seeds, deadline)

    def receive(self, update: Update) -> None:
        """Accept one client's update, or raise ``UpdateRejected`` and change nothing.

        The delta is copied into the round's cohort matrix, so the caller may reuse its
        buffer afterwards.
        """
        try:
            self._validate(update)
            update = self._decompress(update)
            self.validation.check(update)
            check_steps(update, self._steps_bound)
            decode_state = None
            if self.decoders is not None:  # decode, then check what it decodes to
                update, decode_state = self._decode(update)
                self.validation.check(update)
        except UpdateRejected as err:
            if self._open is not None:
                self._open.rejected += 1
                if isinstance(update.client_id, int | np.integer):
                    self._open.refusals[int(update.client_id)] = err
            raise
        if decode_state is not None:
            self.decode_state = decode_state
        rnd = self._open
        assert rnd is not None
        limit = int(self._example_bound[update.client_id])
        if self.max_examples is not None:
            limit = min(limit, self.max_examples)
        if update.num_examples > limit:
            rnd.clamped[update.client_id] = (int(update.num_examples), limit)
            update = replace(update, num_examples=limit)
        rnd.matrix[rnd.row[update.client_id]] = update.delta
        rnd.updates[update.client_id] = update
        if update.client_id in rnd.decoded:
            rnd.payloads[update.client_id] = rnd.decoded[update.client_id]

    def receive_cohort(self, cohort: CohortRows) -> dict[int, UpdateRejected]:
        """Accept a whole cohort whose updates stay on their device (a simulated cohort
        trained on an accelerator): every check of :meth:`receive` runs over all rows at
        once, the finiteness and norm checks on the device, and only each row's norm and
        verdict come to the host. The accepted rows stay where they are for
        :meth:`close_round` (``fedloom.server.device_chain``); a refused row is counted
        and kept as :meth:`receive` keeps it. Returns the refusals by client id.

        The round must have no update yet; compression and the clients' two-sided
        transforms decode update by update, so they take :meth:`receive` instead."""
        from fedloom.server import device_chain

        rnd = self._open
        if rnd is None:
            raise FedloomError("no round is open")
        if self.compression is not None or self.decoders is not None:
            raise FedloomError(
                "compressed or encoded updates are decoded one by one: send them with receive()"
            )
        if rnd.updates or rnd.secure is not None or rnd.device is not None:
            raise FedloomError(
                f"round {rnd.round} already has updates; a device cohort brings all of them"
            )
        ids = np.asarray(cohort.client_ids, dtype=np.int64)
        errors: dict[int, UpdateRejected] = {}  # row -> the first reason it is refused

        def refuse(bad: np.ndarray, why: Callable[[int], UpdateRejected]) -> None:
            for i in np.flatnonzero(bad).tolist():
                errors.setdefault(i, why(i))

        def cid(i: int) -> int:
            return int(ids[i])

        sel = np.asarray(rnd.selected, dtype=np.int64)
        if np.array_equal(ids, sel):  # the whole cohort in selection order (distinct ids)
            pos, chosen = np.arange(len(ids)), np.ones(len(ids), dtype=bool)
        else:
            order = np.argsort(sel, kind="stable")
            at = np.minimum(np.searchsorted(sel[order], ids), max(len(sel) - 1, 0))
            pos = order[at] if len(sel) else np.zeros(len(ids), dtype=np.int64)
            chosen = sel[pos] == ids if len(sel) else np.zeros(len(ids), dtype=bool)
        r = rnd.round
        refuse(
            ~chosen,
            lambda i: UpdateRejected(
                cid(i), f"client was not selected for round {r}", _K.UNSELECTED
            ),
        )
        first = np.ones(len(ids), dtype=bool)
        if not np.array_equal(pos, np.arange(len(ids))):  # else distinct, as the selection
            first[:] = False
            first[np.unique(ids, return_index=True)[1]] = True
        refuse(
            ~first,
            lambda i: UpdateRejected(cid(i), f"duplicate update for round {r}", _K.DUPLICATE),
        )
        failed = np.isin(ids, np.fromiter(rnd.failed, dtype=np.int64, count=len(rnd.failed)))
        refuse(
            failed,
            lambda i: UpdateRejected(
                cid(i), "client was already marked failed this round", _K.ALREADY_FAILED
            ),
        )
        if cohort.round != r or cohort.version != self.version:
            stale = (
                f"stale update for round {cohort.round} / model version {cohort.version}; "
                f"expected round {r} / version {self.version}"
            )
            refuse(
                np.ones(len(ids), dtype=bool),
                lambda i: UpdateRejected(cid(i), stale, _K.STALE_VERSION),
            )
        deltas, norms = cohort.deltas, None
        if deltas.shape[1] != self.dim or str(deltas.dtype) != "torch.float32":
            shape = f"rows of shape {tuple(deltas.shape)} and dtype {deltas.dtype}"
            refuse(
                np.ones(len(ids), dtype=bool),
                lambda i: UpdateRejected(
                    cid(i), f"{shape}, expected ({len(ids)}, {self.dim}) float32", _K.WRONG_SHAPE
                ),
            )
        else:
            finite, norms = device_chain.row_checks(deltas)
            refuse(
                ~finite,
                lambda i: UpdateRejected(cid(i), "delta contains NaN/inf values", _K.NONFINITE),
            )
            refuse(
                ~(norms <= self.validation.max_norm),
                lambda i: _raised(self.validation._norm, cid(i), float(norms[i])),
            )
        n, steps, epochs = cohort.num_examples, cohort.steps, cohort.epochs
        samples = cohort.loss_samples
        counted = np.minimum(steps, samples.shape[1])[:, None] > np.arange(samples.shape[1])
        with np.errstate(invalid="ignore"):
            odd = (
                (n < 1)
                | ~np.isfinite(cohort.train_loss)
                | np.isinf(cohort.train_loss_sq)
                | ~np.isfinite(epochs)
                | (epochs < 0)
                | (steps < 0)
                | (counted & ~np.isfinite(samples)).any(axis=1)
                | (counted.sum(axis=1) > MAX_LOSS_SAMPLES)
            )
        refuse(odd, lambda i: _metrics_error(cohort, i))
        known = self._steps_bound
        bound = np.array([known.get(c, -1) for c in ids.tolist()] if known else [-1] * len(ids))
        refuse(
            (bound >= 0) & (steps > bound),
            lambda i: UpdateRejected(
                cid(i),
                f"steps = {int(steps[i])} exceeds the {int(bound[i])} its plan allows",
                _K.BAD_COUNT,
            ),
        )
        for i, err in errors.items():
            rnd.rejected += 1
            rnd.refusals[cid(i)] = err
        ok = np.ones(len(ids), dtype=bool)
        ok[list(errors)] = False
        keep = np.flatnonzero(ok)
        if np.any(np.diff(pos[keep]) < 0):
            keep = keep[np.argsort(pos[keep], kind="stable")]  # selection order
        if len(keep):
            taken = cohort.take(keep)
            limit = self._example_bound[taken.client_ids]
            if self.max_examples is not None:
                limit = np.minimum(limit, self.max_examples)
            over = np.flatnonzero(taken.num_examples > limit)
            for i in over.tolist():
                rnd.clamped[int(taken.client_ids[i])] = (int(taken.num_examples[i]), int(limit[i]))
            if len(over):
                taken = replace(taken, num_examples=np.minimum(taken.num_examples, limit))
            rnd.device, rnd.device_rows = taken, pos[keep]
            rnd.device_norms = None if norms is None else norms[keep]
        return {cid(i): err for i, err in sorted(errors.items())}

    @property
    def received_payloads(self) -> dict[int, tuple[int, float]]:
        """The open round's accepted payloads: client id -> (bytes, setting)."""
        return dict(self._open.payloads) if self._open is not None else {}

    def _decompress(self, update: Update) -> Update:
        """The update with its payload decoded (:func:`decompress`), its size and setting
        kept for the round's compression record."""
        update, decoded = decompress(self.compression, update, self.dim)
        if decoded is not None:
            assert self._open is not None
            self._open.decoded[int(update.client_id)] = decoded
        return update

    def _decode(self, update: Update) -> tuple[Update, State]:
        assert self.decoders is not None
        return decode(self.decoders, self.decode_state, update, self.seed, self.os_selection)

    def bound_steps(self, client_ids: np.ndarray, limits: np.ndarray) -> None:
        """The most local steps each of ``client_ids`` may report for its current work:
        what its dispatched plan asks of its registered data (FedNova divides by the
        reported count, so a larger claim would rescale everyone's update)."""
        ids, bounds = np.asarray(client_ids).tolist(), np.asarray(limits).tolist()
        self._steps_bound.update(zip(ids, bounds, strict=True))

    def bound_examples(self, client_ids: np.ndarray, limits: np.ndarray) -> None:
        """Cap the example count each of ``client_ids`` may weigh with (the lowest bound
        given wins): what the runtime knows of the client, e.g. its registered data size
        or the count it reported when it joined. Counts above are clamped, never refused:
        the update still counts, with a bounded weight."""
        lower_bounds(self._example_bound, client_ids, limits)

    def receive_secure_sum(
        self, total: SecureSum, num_examples: np.ndarray, steps: np.ndarray
    ) -> None:
        """Take the round's securely aggregated sum in place of per-client updates.

        ``total`` holds only sums over ``total.included`` (pending clients of this round).
        ``num_examples`` and ``steps`` (one per included client) are what the server knows
        of them without their updates: registered data sizes and the steps their plans
        imply. Per-client losses stay unknown (NaN) and contributions 0; ``close_round``
        averages ``total.delta / total.weight`` (FedAvg) or releases it under DP. Raises
        ``FedloomError`` and changes nothing if the round already has updates or a sum,
        or the sum is malformed.
        """
        rnd = self._open
        if rnd is None:
            raise FedloomError("no round is open")
        if self.decoders is not None:
            raise FedloomError("a secure sum cannot be decoded per client (two-sided transforms)")
        if rnd.updates or rnd.secure is not None:
            raise FedloomError(
                f"round {rnd.round} already has updates or a secure sum; a secure sum "
                "replaces every update of the round"
            )
        ids = np.asarray(total.included)
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or len(np.unique(ids)) != len(ids):
            raise FedloomError(f"secure sum: included must list distinct ids, got {ids!r}")
        m = len(ids)
        stray = [int(c) for c in ids if not rnd.is_pending(int(c))]
        if stray:
            raise FedloomError(f"secure sum includes client(s) {stray} with no pending work")
        delta = np.asarray(total.delta)
        if delta.shape != (self.dim,) or not np.all(np.isfinite(delta)):
            raise FedloomError(
                f"secure sum: delta must be a finite vector of length {self.dim}, got shape "
                f"{delta.shape}"
            )
        if not (math.isfinite(total.weight) and (total.weight > 0 or m == 0)):
            raise FedloomError(f"secure sum: weight = {total.weight!r}, expected > 0")
        if not (math.isfinite(total.loss) and math.isfinite(total.unclipped)):
            raise FedloomError("secure sum: loss and unclipped must be finite")
        public = []
        for name, values in (("num_examples", num_examples), ("steps", steps)):
            arr = np.asarray(values)
            if arr.shape != (m,) or arr.dtype.kind not in "iu" or np.any(arr < 0):
                raise FedloomError(
                    f"secure sum: {name} must hold {m} non-negative ints, got {values!r}"
                )
            public.append(arr.astype(np.int64))
        if np.any(public[0] < 1):
            raise FedloomError("secure sum: num_examples must be >= 1 for every included client")
        rnd.secure = _Secure(total, *public)

    def _validate(self, u: Update) -> None:
        cid = u.client_id
        if self._open is None:
            raise UpdateRejected(cid, "no round is open", _K.NO_ROUND)
        if self._open.secure is not None:
            raise UpdateRejected(cid, "this round was aggregated securely", _K.SECURE_ROUND)
        if cid not in self._open.row:
            raise UpdateRejected(
                cid, f"client was not selected for round {self._open.round}", _K.UNSELECTED
            )
        if cid in self._open.updates or cid in self._open.device_ids:
            raise UpdateRejected(
                cid, f"duplicate update for round {self._open.round}", _K.DUPLICATE
            )
        if self._open.device is not None:
            raise UpdateRejected(
                cid, "this round's updates arrived as one device cohort", _K.MALFORMED
            )
        if cid in self._open.failed:
            raise UpdateRejected(
                cid, "client was already marked failed this round", _K.ALREADY_FAILED
            )
        if u.round != self._open.round or u.version != self.version:
            raise UpdateRejected(
                cid,
                f"stale update for round {u.round} / model version {u.version}; "
                f"expected round {self._open.round} / version {self.version}",
                _K.STALE_VERSION,
            )

    def skip_round(self, reason: str) -> None:
        """Close the open round, when it closes, as ``"skipped"`` with ``reason``: nothing
        is released (no noise either) and the model is unchanged, whatever arrived.

        For a secure round that has no secure sum to release: its cohort was smaller than
        the configured minimum (``secagg.min_clients``), or the protocol aborted. The
        round counts, as a quorum skip does; the decision rests on the realised cohort.
        """
        if self._open is None:
            raise FedloomError("no round is open")
        self._open.skip = reason

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

        A secure sum (:meth:`receive_secure_sum`) stands in for the rows: FedAvg divides it
        by its weight sum, DP releases it; it is already the whole cohort's, so it is
        never combined.
        """
        if self._open is None:
            raise FedloomError("no round is open")
        rnd = self._open
        dev = rnd.device
        self.last_chain = None
        if dev is not None:  # a device cohort: reduced there unless the chain needs the host
            reason = self._host_reason(combine)
            self.last_chain = str(dev.device) if reason is None else f"host: {reason}"
            if reason is not None:
                self._cohort_to_host(rnd)
                dev = None
        k, d = len(rnd.selected), self.dim
        ups = sorted(rnd.updates.values(), key=lambda u: rnd.row[u.client_id])
        rows = np.array([rnd.row[u.client_id] for u in ups], dtype=np.int64)
        w = np.array([u.num_examples for u in ups], dtype=np.float64)
        packed = np.zeros(d + 4 * k + 2, dtype=np.float64)
        per_client = packed[d : d + 4 * k].reshape(4, k)
        secure = rnd.secure
        if secure is not None and combine is not None:
            raise FedloomError("a secure sum is the whole cohort's already: it cannot be combined")
        rowwise = self.transforms is not None or not self.reduction.decomposable
        if secure is not None and rowwise:
            raise FedloomError(
                "server row transforms and a non-decomposable reducer need the rows; a secure "
                "round has only their sum"
            )
        if combine is not None and not self.reduction.decomposable:
            reducer = type(self.reduction.reducer).__name__
            raise FedloomError(f"reducer {reducer} cannot be combined (it needs every row)")
        matrix = rnd.matrix[rows]
        deltas = None  # a device cohort's rows, after the server transforms
        too_few = None
        self.last_screening = None  # this round's, if its rows are screened
        # the server chain: decode -> validate -> screen -> transforms -> reduce -> central DP
        # -> optimizer
        if secure is not None:  # decode: the secure transform's server half gave these sums
            rows = np.array([rnd.row[int(c)] for c in secure.total.included], dtype=np.int64)
            packed[:d] = secure.total.delta
            packed[-2] = secure.total.unclipped
            per_client[0, rows] = secure.num_examples
            per_client[1:3, rows] = np.nan
            per_client[3, rows] = secure.steps
        elif dev is not None:  # the rows stay on their device (server/device_chain.py)
            from fedloom.server import device_chain

            rows, w, deltas = rnd.device_rows, dev.num_examples.astype(np.float64), dev.deltas
            norms = rnd.device_norms
            if self.transforms is not None:  # stateless stages with a device form only
                stages = device_chain.device_transform(self.transforms)
                assert stages is not None
                deltas, norms = stages(deltas), None
            if self.dp is not None:  # DP-FedAvg: equal weights of clipped updates
                clip = self.dp.clip_norm
                packed[:d], packed[-2] = device_chain.clipped_sum(deltas, clip, norms)
            elif (too_few := self.reduction.too_few(len(rows))) is None:
                packed[:d] = device_chain.weighted_sum(deltas, w)
            per_client[0, rows] = w
            per_client[1, rows] = w * dev.train_loss
            per_client[2, rows] = w * dev.train_loss_sq
            per_client[3, rows] = dev.steps
        elif ups:  # in selection order, so arrival order cannot change the sum
            # validate ran on receipt (Validate.check); then screening (flagged rows may
            # be refused) and the server's row transforms
            if self.guard is not None:
                matrix, ups, w, rows = self._screen(rnd, matrix, ups, w, rows)
            matrix = self._transform_rows(matrix, rnd, ups, w)
            if ups and self.dp is not None:  # DP-FedAvg: equal weights of clipped updates
                clipped, unclipped = self._dp_clip().clip(matrix)
                packed[:d] = clipped.sum(axis=0, dtype=np.float64)
                packed[-2] = unclipped
            elif ups and (too_few := self.reduction.too_few(len(ups))) is None:
                ids = np.array([u.client_id for u in ups], dtype=np.int64)
                start = self.start_params
                steps = np.array([u.metrics.steps for u in ups], dtype=np.int64)
                partial = self.reduction.partial(
                    matrix, w, ids, start, rnd.round, self.retries, steps=steps
                )
                packed[:d] = partial
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
        aggregated = counts > 0
        done = np.flatnonzero(aggregated)
        total = float(counts.sum())
        status = "aggregated"
        central = self.dp is not None and not self.dp.noise_on_clients
        release = None
        # under central DP even an empty cohort releases noise; with the clients' noise, nothing
        if rnd.skip is None and too_few is not None:
            rnd.skip = too_few
        if rnd.skip is not None:
            status = "skipped"
        elif len(done) == 0 and not central:
            status = "empty"
        elif central:  # the quorum is decided on the release's noisy count
            assert self.dp is not None
            release = CentralRelease(self.dp, self.quorum).release(
                packed[:d], packed[-2], len(done)
            )
            if not release.passes:
                retry = self.quorum_policy == "retry" and self.retries < self.max_retries
                status = "retry" if retry else "skipped"
        elif self.quorum is not None and len(done) < self.quorum:
            retry = self.quorum_policy == "retry" and self.retries < self.max_retries
            status = "retry" if retry else "skipped"
        self.last_release = release
        norm, loss = 0.0, float("nan")
        contribution = np.zeros(k)
        if status == "aggregated":
            if release is not None and release.delta is not None:
                delta = release.delta
            elif self.dp is not None:
                delta = self.dp.release(packed[:d], packed[-2], len(done))
            elif secure is not None:
                delta = self.reduction.finish(packed[:d], secure.total.weight)
            else:
                delta = self.reduction.finish(packed[:d], total)
                self.reduction.applied(delta)
            self.params, self.opt_state = self.optimizer.step(self.params, delta, self.opt_state)
            self.version += 1
            if self.broadcast is not None:
                self.broadcast.advance(self.params, self.version)
            norm = float(np.linalg.norm(delta.astype(np.float64)))
            if secure is not None:
                loss = secure.total.loss / secure.total.weight if len(done) else float("nan")
            elif total:
                loss = float(loss_w.sum() / total)
            if norm > 0 and (ups or deltas is not None) and self.dp is None:
                # projected on the unit direction, so the float32 products cannot overflow
                unit = (delta / np.float32(norm)).astype(np.float32)
                if deltas is not None:
                    from fedloom.server.device_chain import project

                    along = project(deltas, unit)
                else:
                    along = matrix @ unit
                contribution[rows] = w * along / (total * norm)
            if combine is not None:
                contribution = np.asarray(combine(contribution), dtype=np.float64)
        for states in (self.client_states, self.upload_states):
            if states is not None:  # the simulated clients whose updates it holds
                held = rnd.updates.keys() | rnd.device_ids
                states.commit(held if secure is None else secure.total.included.tolist())
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
            completed=tuple(sel[done].tolist()),
            failed=tuple(np.sort(sel[~aggregated]).tolist()),
            rejected=int(packed[-1]),
            num_examples=int(total),
            train_loss=loss,
            update_norm=norm,
            status=status,
            clients=clients,
            skip_reason=rnd.skip,
            clamped=tuple((c, n, m) for c, (n, m) in sorted(rnd.clamped.items())),
            excluded=_exclusions(rnd, aggregated),
        )

    def _host_reason(self, combine: Combine | None) -> str | None:
        """Why this server's chain needs a device cohort's rows on the host (None: it
        runs on the device): a stage without a device form."""
        from fedloom.aggregation import WeightedMean
        from fedloom.server.device_chain import host_reason

        if combine is not None:
            return "the cohort is combined across processes"
        if self.guard is not None:
            return "anomaly screening runs on the host"
        reason = host_reason(self.transforms)
        if reason is not None:
            return reason
        reducer = self.reduction.reducer
        if self.dp is None and type(reducer) is not WeightedMean:
            return f"reducer {type(reducer).__name__} has no device implementation"
        return None

    def _cohort_to_host(self, rnd: _OpenRound) -> None:
        """The device cohort's accepted rows copied to the host as ``Update`` records,
        as if each had arrived by :meth:`receive` (the fallback of ``close_round``)."""
        from fedloom.server.device_chain import to_host

        dev = rnd.device
        assert dev is not None
        matrix = to_host(dev.deltas)
        taken = np.minimum(dev.steps, dev.loss_samples.shape[1])
        for i, cid in enumerate(dev.client_ids.tolist()):
            metrics = ClientMetrics(
                float(dev.train_loss[i]),
                int(dev.steps[i]),
                float(dev.epochs[i]),
                float(dev.train_loss_sq[i]),
                tuple(dev.loss_samples[i, : taken[i]].tolist()),
            )
            n = int(dev.num_examples[i])
            update = Update(cid, dev.round, dev.version, matrix[i], n, metrics)
            rnd.matrix[rnd.row[cid]] = matrix[i]
            rnd.updates[cid] = update
        rnd.device, rnd.device_rows, rnd.device_norms = None, np.zeros(0, dtype=np.int64), None

    def _screen(
        self,
        rnd: _OpenRound,
        matrix: np.ndarray,
        ups: list[Update],
        w: np.ndarray,
        rows: np.ndarray,
    ) -> tuple[np.ndarray, list[Update], np.ndarray, np.ndarray]:
        """Screen the round's rows; the updates the guard refuses leave the round."""
        assert self.guard is not None
        ids = np.array([u.client_id for u in ups], dtype=np.int64)
        self.last_screening, refused = self.guard.screen(rnd.round, matrix, ids)
        if not refused:
            return matrix, ups, w, rows
        rnd.refusals.update(refused)
        rnd.rejected += len(refused)
        for cid in refused:  # not held: their clients' staged states are not committed
            del rnd.updates[cid]
        keep = np.array([int(c) not in refused for c in ids])
        return matrix[keep], [u for u, k in zip(ups, keep, strict=True) if k], w[keep], rows[keep]

    def _dp_clip(self) -> ClipL2 | AdaptiveClipL2:
        """Central DP's clipping stage at the current (fixed or adaptive) clip norm."""
        assert self.dp is not None
        if self.dp.clipper is not None:
            return AdaptiveClipL2(self.dp.clipper)
        return ClipL2(self.dp.fixed_clip)

    def _transform_rows(
        self, matrix: np.ndarray, rnd: _OpenRound, ups: list[Update], w: np.ndarray
    ) -> np.ndarray:
        """The server's row transforms over the received rows (selection order)."""
        if self.transforms is None or not ups:
            return matrix
        ctx = Context(
            round=rnd.round,
            client_ids=np.array([u.client_id for u in ups], dtype=np.int64),
            weights=w,
            seed=self.seed,
            losses=np.array([u.metrics.train_loss for u in ups], dtype=np.float64),
            # a deployment's randomness comes from the OS; the simulator's replays exactly
            noise=SecureNoise()
            if self.os_selection
            else GeneratorNoise(np.random.default_rng([self.seed, 19, rnd.round, self.retries])),
            secure=self.os_selection,
        )
        out, self.transform_state = self.transforms.apply(matrix, self.transform_state, ctx)
        out = np.asarray(out, dtype=np.float32)
        if out.shape != matrix.shape:
            raise FedloomError(
                f"server transforms returned rows of shape {out.shape}, expected {matrix.shape}"
            )
        return out

    def observe(self, metrics: dict[str, float]) -> StopDecision | None:
        """Feed the round's evaluation to convergence monitoring; a decision means stop."""
        return observe(self.monitor, self.round, metrics)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: arrays under ``arrays``, the rest JSON."""
        if self._open is not None:
            raise FedloomError("cannot checkpoint while a round is open")
        arrays = {"params": self.params}
        arrays.update({f"opt.{k}": np.asarray(v) for k, v in self.opt_state.items()})
        flat = flatten_state(self.transform_state)
        arrays.update({_XFORM + k: v for k, v in flat.items()})
        if self.client_states is not None:
            arrays.update(self.client_states.arrays(_CLIENT_XFORM))
        if self.upload_states is not None:
            arrays.update(self.upload_states.arrays(_CLIENT_COMPRESSION))
        if self.broadcast is not None:
            arrays.update(self.broadcast.arrays(_BROADCAST))
        arrays.update({_DECODE + k: v for k, v in flatten_state(self.decode_state).items()})
        arrays.update(self.reduction.arrays())
        if self.guard is not None:
            arrays.update(self.guard.arrays())
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
        if self.transforms is not None:
            saved = {k.removeprefix(_XFORM): v for k, v in arrays.items() if k.startswith(_XFORM)}
            fresh = flatten_state(self.transforms.init(self.dim))
            if set(saved) != set(fresh):
                raise FedloomError(
                    f"checkpoint server transform state has {sorted(saved)}, the configured "
                    f"transforms {sorted(fresh)}"
                )
            self.transform_state = unflatten_state(saved)
        if self.client_states is not None:
            self.client_states.load_arrays(arrays, _CLIENT_XFORM)
        if self.upload_states is not None:
            self.upload_states.load_arrays(arrays, _CLIENT_COMPRESSION)
        if self.broadcast is not None:
            if f"{_BROADCAST}held" not in arrays:
                raise FedloomError("checkpoint has no broadcast model (compression.download)")
            self.broadcast.load_arrays(arrays, _BROADCAST)
        if self.decoders is not None:
            saved = {k.removeprefix(_DECODE): v for k, v in arrays.items() if k.startswith(_DECODE)}
            if set(saved) != set(flatten_state(self.decoders.init(self.dim))):
                raise FedloomError(
                    f"checkpoint decoder state has {sorted(saved)}, not the configured one's"
                )
            self.decode_state = unflatten_state(saved)
        self.reduction.load(arrays)
        if self.guard is not None:
            self.guard.load(arrays)
        self.round = int(meta["round"])
        self.version = int(meta["version"])
        self.retries = 0
        self.rng.bit_generator.state = meta["rng"]
        self.monitor.load_state_dict(meta["monitor"])
        self.selector.load_state_dict(meta["selector"])
        if self.dp is not None:
            self.dp.load_state_dict(meta["dp"])
        self._open = None
