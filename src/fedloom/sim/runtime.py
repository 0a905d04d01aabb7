"""The simulator: a run in virtual time, every client played in this process.

``Simulation`` is an event source for the round engine (``fedloom.server.engine``): each
round it asks the engine for a cohort of the clients online at the current virtual time,
plays the round's timeline (devices, network, availability, deadline) on the virtual
clock, trains whoever delivers with its executor (vectorized or sequential; under
torchrun a ``Shard`` splits the cohort over processes), simulates the clients' local DP
and the SecAgg+ protocol, hands the updates and dropouts to the server, and lets the
engine close, evaluate, charge, record and checkpoint the round. ``fedloom.assemble``
builds it from a config (``start_simulation``, ``resume_simulation``); a resumed run
continues to the same final model an uninterrupted run reaches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.attacks.adversary import Adversary
from fedloom.client.progress import mean_curve
from fedloom.client.schedule import NO_CAP, examples_seen_each, steps_for_each
from fedloom.client.trainer import TorchTrainer
from fedloom.compression.adaptive import AdaptivePolicy
from fedloom.compression.codec import HEADER_BYTES
from fedloom.compression.pipeline import compression_record
from fedloom.config import RunConfig
from fedloom.data.federated import FederatedData
from fedloom.errors import FedloomError, RunInterrupted, UpdateRejected
from fedloom.privacy.ledger import PrivacyLedger, release_digest
from fedloom.privacy.mechanisms import GeneratorNoise, NoiseSource
from fedloom.records import Dispatch, RoundReport, RoundResult, Update
from fedloom.runs import RunDirectory
from fedloom.secagg.cohort import SecureAggregator, SecureRound
from fedloom.server.convergence import StopDecision
from fedloom.server.engine import RoundEngine, count_reasons
from fedloom.server.local_work import at_least, unfit_reason
from fedloom.server.privacy_plan import PrivacyPlan
from fedloom.server.registry import ClientRegistry
from fedloom.server.sync import SyncServer
from fedloom.sim import device_round, recovery
from fedloom.sim.executor import Executor, run_dispatches
from fedloom.sim.shard import Shard
from fedloom.sim.timeline import RoundOutcome, VirtualTime
from fedloom.sim.vectorized import VectorizedExecutor
from fedloom.transforms.base import Context

log = logging.getLogger("fedloom")


@dataclass(frozen=True)
class RunSummary:
    """How a run ended. ``metric`` is the task's first metric (``accuracy`` for a
    classifier, ``mse`` for a regression), ``value`` its final and ``best_value`` its best
    evaluated value (in the task's direction, at ``best_round``); ``metrics`` is every
    metric of the last evaluation. ``state_dict``: the trained model, when asked for
    (``fedloom.simulate``); ``path`` is None for a run kept in memory."""

    path: Path | None
    rounds: int
    stop_reason: str
    stop_detail: str
    metric: str
    value: float
    best_value: float
    best_round: int
    metrics: dict[str, float]
    loss: float
    wall_s: float
    state_dict: dict[str, Any] | None = None

    @property
    def accuracy(self) -> float:
        """The final test accuracy (NaN for a task that reports none)."""
        return self.metrics.get("accuracy", math.nan)

    @property
    def best_accuracy(self) -> float:
        return self.best_value if self.metric == "accuracy" else math.nan


class Simulation:
    """One experiment bound to its run directory."""

    def __init__(
        self,
        config: RunConfig,
        run: RunDirectory,
        engine: RoundEngine,
        data: FederatedData,
        trainer: TorchTrainer,
        executor: Executor,
        executor_note: str,
        virtual_time: VirtualTime,
        shard: Shard | None = None,
        deployment: bool = False,
    ) -> None:
        """Built by ``fedloom.assemble.build_simulation``. ``deployment``: draw as a
        deployment does, every draw that protects someone from the OS (see
        :meth:`randomness`); a real deployment is an ``assemble.DeploymentRun``."""
        self.config = config
        self.run_dir = run
        self.engine = engine
        self.data = data
        self.trainer = trainer
        self.executor = executor
        self.executor_note = executor_note
        self.virtual_time = virtual_time
        self.shard = shard
        self.writer = shard is None or shard.is_writer
        self.deployment = deployment
        self.adversary: Adversary | None = None  # simulated Byzantine clients (assemble)

    # the engine's parts, read through the simulation
    @property
    def server(self) -> SyncServer:
        return self.engine.server

    @property
    def registry(self) -> ClientRegistry:
        return self.engine.registry

    @property
    def privacy(self) -> PrivacyPlan:
        return self.engine.privacy

    @property
    def secure(self) -> SecureAggregator | None:
        return self.engine.secure

    @property
    def ledger(self) -> PrivacyLedger | None:
        return self.engine.ledger

    @property
    def attempts(self) -> int:
        return self.engine.attempts

    @property
    def stopped(self) -> StopDecision | None:
        return self.engine.stopped

    @property
    def initial_params(self) -> np.ndarray:
        return self.engine.initial_params

    def randomness(self) -> dict[str, str]:
        """Where the draws that protect someone come from (``PrivacyPlan.randomness``)."""
        c = self.config.client
        dp_sgd = c.dp_sgd_clip_norm is not None and bool(c.dp_sgd_noise_multiplier)
        return self.privacy.randomness(self.deployment, dp_sgd)

    # running -----------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.engine.finished

    def run(self, on_round: Callable[[RoundReport], None] | None = None) -> RunSummary:
        """Run rounds until the configured count or a stop decision; ``on_round`` gets each
        recorded round's typed report."""
        started = time.perf_counter()
        with recovery.StopSignals(enabled=self.shard is None) as signals:
            while not self.finished:
                record = self.step()
                if on_round is not None and self.engine.last_report is not None:
                    on_round(self.engine.last_report)
                if signals.caught and record.get("status") != "retry":
                    self.engine.checkpoint(self.stopped)
                    self.engine.append(
                        {"event": "interrupt", "round": self.server.round, "signal": signals.caught}
                    )
                    raise RunInterrupted(signals.caught, self.server.round, self.run_dir.path)
        self.engine.conclude()
        if self.shard is not None:  # every rank returns after rank 0 finished writing
            self.shard.broadcast(None)
        return self.summary(time.perf_counter() - started)

    def step(self) -> dict[str, Any]:
        """One synchronous round: select, play it in virtual time, train whoever delivers,
        aggregate, evaluate, record."""
        t0 = time.perf_counter()
        vt, engine = self.virtual_time, self.engine
        available = vt.available()
        while len(available) == 0:
            if not vt.wait_for_clients():
                raise FedloomError(f"at virtual time {vt.now:.0f} s no client will ever be online")
            available = vt.available()
        dispatches = engine.open_round(available)
        cohort = [d.client_id for d in dispatches]
        refusal = engine.release_refusal(cohort)
        if refusal is not None:
            result, extra = engine.withhold_round(cohort, refusal)
            return engine.finish_round(result, t0, extra)
        offline: dict[int, str] = {}
        if engine.cohort.sample_all:  # drawn from all N: an offline or empty pick drops out
            online = set(available.tolist())
            sizes = self.data.train.sizes()
            offline = {
                c: "offline when sampled" if c not in online else "no training data"
                for c in cohort
                if c not in online or sizes[c] == 0
            }
            for cid, reason in offline.items():
                self.server.fail(cid, reason)
            dispatches = [d for d in dispatches if d.client_id not in offline]
            cohort = [d.client_id for d in dispatches]
        if engine.too_small_for_secagg(cohort):
            result, extra = engine.skip_small_secure_round(cohort)
            extra |= {"virtual_time": vt.now, "round_virtual_s": 0.0}
            return engine.finish_round(result, t0, extra)
        compress = self.server.compression is not None
        if compress:
            dispatches = self._choose_settings(dispatches)
        needed = engine.enough(len(dispatches))
        dispatches, unfit = self._fit(dispatches)
        # compressed uploads have their size only once encoded: first everyone who could
        # deliver (a rehearsal with the smallest uploads), then the round with real bytes
        outcome = self._play(dispatches, None if compress else needed, rehearse=compress)
        delivered = set(outcome.delivered.tolist())
        todo = [d for d in dispatches if d.client_id in delivered]
        shard = self.shard
        mine = todo if shard is None else shard.mine(todo)
        on_device, chain_note = device_round.keeps_updates_on_device(self)
        rows = None  # the cohort's updates, kept on the training device
        if on_device:
            assert isinstance(self.executor, VectorizedExecutor)
            rows = device_round.train_rows(self.executor, self.server.start_params, mine)
            updates: list[Update] = []
        else:
            updates = run_dispatches(self.executor, self.server.start_params, mine)
        if self.adversary is not None:  # malicious clients replace what they trained
            updates = self.adversary.act(updates, self.server.round + 1)
        if self.server.client_states is not None:  # the clients' own transform chain
            updates = self._transform(updates)
        if self.privacy.local:
            updates = self._privatize(updates)
        if shard is not None and shard.mode == "gather":
            updates = [u for part in shard.gather(updates) for u in part]
        if compress:
            updates = self._compress(updates, {d.client_id: d for d in todo})
            sizes = {u.client_id: len(u.payload or b"") for u in updates}
            outcome = self._play(dispatches, needed, sizes=sizes)
            delivered = set(outcome.delivered.tolist())
            todo = [d for d in todo if d.client_id in delivered]
            updates = [u for u in updates if u.client_id in delivered]
        if unfit:
            outcome = replace(outcome, failed={**unfit, **outcome.failed})
        for cid, reason in outcome.failed.items():
            self.server.fail(cid, reason)
        if offline:
            outcome = replace(outcome, failed={**offline, **outcome.failed})
        for cid in outcome.surplus:
            self.server.fail(cid, "surplus")
        rejected: dict[int, UpdateRejected] = {}
        kinds: dict[str, int] = {}
        secure = None
        refusal = None
        if self.privacy.distributed is not None:  # before the server unmasks the sum
            refusal = engine.release_refusal(cohort, shares=len(updates))
        if refusal is not None:
            for cid in sorted(self.server.pending):
                self.server.fail(cid, "privacy budget")
            engine.refuse_release(refusal)
        elif self.secure is not None:
            secure = self._aggregate_securely(cohort, updates, todo, outcome)
            rejected = secure.rejected
        else:
            if rows is not None:
                for cid, err in self.server.receive_cohort(rows).items():
                    rejected[cid] = err
                    kinds[err.kind] = kinds.get(err.kind, 0) + 1
                    log.warning("%s", err)
            for update in updates:
                try:
                    self.server.receive(update)
                except UpdateRejected as err:
                    rejected[update.client_id] = err
                    kinds[err.kind] = kinds.get(err.kind, 0) + 1
                    log.warning("%s", err)
        combine = shard.allreduce if shard is not None and shard.mode == "allreduce" else None
        down = self._download_bytes([d.client_id for d in todo])  # who trained downloaded
        if self.server.broadcast is not None:
            self.server.broadcast.downloaded([d.client_id for d in todo])
        payloads = self.server.received_payloads
        result = engine.close_round(combine)
        self._register_round(dispatches, outcome, result, rejected)
        extra: dict[str, Any] = (
            {} if secure is None else {"secagg": self._secure_record(secure, len(cohort))}
        )
        extra |= {
            "attempt": self.attempts,
            "dispatched": len(dispatches),
            "virtual_time": outcome.end,
            "round_virtual_s": outcome.end - outcome.start,
            "events": outcome.events,
            "dropped": count_reasons(outcome.failed),
            "surplus": len(outcome.surplus),
            "partial": sum(d.max_steps is not None for d in todo),
            "local_loss": mean_curve([u.metrics.loss_samples for u in updates])
            if rows is None
            else device_round.local_loss(rows),
            "bytes_up": sum(self._upload_bytes(u) for u in updates)
            + (0 if rows is None else len(rows.client_ids) * self._upload_bytes()),
            "bytes_down": int(down.sum()),
        }
        if compress or self.server.broadcast is not None:
            extra["compression"] = compression_record(
                self.server.compression, payloads, self.server.dim, self.server.broadcast, down
            )
        if kinds:
            extra["rejections"] = kinds
        if on_device or chain_note is not None:
            extra["server_chain"] = (
                self.server.last_chain or chain_note or str(getattr(self.executor, "device", ""))
            )
        # every delivered update refused (e.g. training diverged): see finish_round
        refused_all = bool(rejected) and not result.completed and result.status != "retry"
        engine.refused_rounds = engine.refused_rounds + 1 if refused_all else 0
        return engine.finish_round(result, t0, extra, uploaded=list(rejected))

    def _transform(self, updates: list[Update], noise: NoiseSource | None = None) -> list[Update]:
        """Every simulated client's transform chain (``[transforms] client``) over its
        update, each with its own state (kept and checkpointed by the server's
        ``client_states``), before local DP and secure encoding, as a device would.
        ``noise``: the transforms' noise (default: seeded per attempt)."""
        states = self.server.client_states
        if not updates or states is None:
            return updates
        ctx = Context(
            round=updates[0].round,
            client_ids=np.array([u.client_id for u in updates], dtype=np.int64),
            weights=np.array([u.num_examples for u in updates], dtype=np.float64),
            losses=np.array([u.metrics.train_loss for u in updates], dtype=np.float64),
            attempt=self.attempts,
            seed=self.config.seed,
            # simulated: seeded per attempt, so a run replays exactly (a device: the OS's)
            noise=noise
            or GeneratorNoise(np.random.default_rng([self.config.seed, 18, self.attempts])),
        )
        # staged: a client's new state is kept once the server accepts its update
        rows = states.apply(np.stack([u.delta for u in updates]), ctx, stage=True)
        return [
            replace(u, delta=np.asarray(rows[i], dtype=np.float32)) for i, u in enumerate(updates)
        ]

    def _privatize(self, updates: list[Update]) -> list[Update]:
        """Local DP: each upload clipped and noised (seeded per attempt and client in
        simulation). An attempt replayed after a resume whose uploads differ from the ones
        charged is noised again from a fresh stream keyed by the replay count."""

        def noised(replay: int) -> list[Update]:
            return [
                replace(
                    u,
                    delta=self.privacy.privatize_locally(
                        u.delta, self.config.seed, self.attempts, u.client_id, replay
                    ),
                )
                for u in updates
            ]

        out = noised(0)
        digest = release_digest(
            np.array([u.client_id for u in out], dtype=np.int64), *[u.delta for u in out]
        )
        charged = () if self.ledger is None else self.ledger.charged(self.attempts)
        same = not charged or self.ledger.is_charged(self.attempts, digest)
        if self.shard is not None:  # every rank decides alike (each sees its own uploads)
            same = float(self.shard.allreduce(np.array([0.0 if same else 1.0]))[0]) == 0.0
        if not same:
            out = noised(len(charged))
            digest = release_digest(
                np.array([u.client_id for u in out], dtype=np.int64), *[u.delta for u in out]
            )
        self.engine.release_digest = digest
        return out

    def _aggregate_securely(
        self, cohort: list[int], updates: list[Update], todo: list[Dispatch], outcome: RoundOutcome
    ) -> SecureRound:
        """Run SecAgg+ over the round's updates and hand the server only the unmasked sum.

        Every dispatched client took part in the key agreement at check-in. Clients that
        fail in the timeline (or are surplus) never send a masked input; clients offline
        when the round ends (availability) drop before unmasking, their input counted.
        The server learns each included client's public facts (registered data size, the
        steps of its plan), never its update or loss.
        """
        gone = {c: "masked_input" for c in [*outcome.failed, *outcome.surplus]}
        delivered = outcome.delivered
        online = self.virtual_time.population.availability.available(delivered, outcome.end)
        gone |= {int(c): "unmasking" for c in delivered[~online]}
        dp, plan = self.server.dp, self.privacy

        def aggregate(key: int) -> SecureRound:
            return self.secure.aggregate(
                cohort,
                updates,
                gone,
                key,
                dp_clip=None if dp is None or dp.noise_on_clients else dp.clip_norm,
                distributed=None if plan.distributed is None else plan.round_mechanism(len(cohort)),
            )

        secure = aggregate(self.attempts)
        if plan.distributed is not None and secure.total is not None:
            # the noisy sum the server unmasks; a replay after resume that differs from the
            # charged one is redone with fresh shares (randomness keyed by the replay count)
            charged = () if self.ledger is None else self.ledger.charged(self.attempts)
            digest = release_digest(secure.total.included, secure.total.delta)
            if charged and not self.ledger.is_charged(self.attempts, digest):
                secure = aggregate(self.attempts + (len(charged) << 40))
                if secure.total is not None:
                    digest = release_digest(secure.total.included, secure.total.delta)
            self.engine.release_digest = digest
        if secure.abort is not None:
            log.warning("secure aggregation aborted: %s", secure.abort)
        if secure.total is None:  # nothing to release: not even central DP's noise alone
            self.server.skip_round(f"secure aggregation aborted: {secure.abort}")
        else:
            ids = secure.total.included
            caps = {d.client_id: d.max_steps or NO_CAP for d in todo}
            plans = {d.client_id: d.plan for d in todo}
            sizes = self.data.train.sizes()[ids]
            steps = steps_for_each(
                sizes, [plans[int(c)] for c in ids], np.array([caps[int(c)] for c in ids])
            )
            self.server.receive_secure_sum(secure.total, sizes, steps)
        return secure

    def _secure_record(self, secure: SecureRound, cohort: int) -> dict[str, Any]:
        """The round's SecAgg cost: who is in the sum, seconds, bytes per client (the keys
        of ``fedloom.metrics.SecAggRecord``, as in a deployment)."""
        assert self.secure is not None
        out: dict[str, Any] = {
            "included": 0 if secure.total is None else len(secure.total.included),
            "cohort": cohort,
            "neighbours": secure.neighbours,
            "threshold": secure.threshold,
            "dropped": secure.dropped,
            "masked_input_bytes": self.secure.upload_bytes(self.privacy.distributed),
            "plain_upload_bytes": 4 * self.server.dim,
        }
        if secure.report is not None:
            r = secure.report
            out |= {
                "server_s": r.server_time_s,
                "client_s": r.client_time_s,
                "upload_bytes": r.upload_bytes_per_client,
                "download_bytes": r.download_bytes_per_client,
            }
        if secure.abort is not None:
            out["aborted"] = secure.abort
        return out

    def _download_bytes(self, clients: list[int]) -> np.ndarray:
        """Bytes each client downloads: the float32 model, or under compressed downloads
        the encoded deltas from the version it holds (or the whole model)."""
        b = self.server.broadcast
        if b is None:
            return np.full(len(clients), 4 * self.server.dim, dtype=np.int64)
        return np.array([b.download_size(c) for c in clients], dtype=np.int64)

    def _upload_bytes(self, update: Update | None = None) -> int:
        """Bytes of one upload: its payload (compressed), SecAgg's masked input, or the
        float32 row; without ``update``, what an upload of this run is planned to take."""
        if update is not None and update.payload is not None:
            return len(update.payload)
        if self.secure is not None:
            return self.secure.upload_bytes(self.privacy.distributed)
        return 4 * self.server.dim

    def _planned_upload(self, dispatches: list[Dispatch]) -> np.ndarray:
        """Each dispatched client's upload bytes before it encodes: its codec setting's
        largest payload under compression, else the fixed upload size."""
        comp = self.server.compression
        if comp is None:
            return np.full(len(dispatches), self._upload_bytes(), dtype=np.int64)
        dim = self.server.dim
        return np.array(
            [comp.codec.size_bound(dim, comp.setting(d.round, d.compression)) for d in dispatches],
            dtype=np.int64,
        )

    def _choose_settings(self, dispatches: list[Dispatch]) -> list[Dispatch]:
        """Each client's codec setting for this round: with ``compression.adaptive``, the
        densest whose upload ends within the round's planned length (the slowest
        client's download and training plus a typical upload, at most the deadline) at its
        link's current rate (device profile times the network changes in effect now),
        else the default (``fedloom.compression.adaptive``)."""
        comp, cfg = self.server.compression, self.config.compression
        assert comp is not None
        if not cfg.adaptive or not dispatches:
            return comp.assign(dispatches)
        vt = self.virtual_time
        pop = vt.population
        ids = np.array([d.client_id for d in dispatches], dtype=np.int64)
        rate = pop.throughput_bytes_per_s(ids, "up") * vt.network.factor_at(ids, vt.now, "up")
        down_bytes = self._download_bytes(ids.tolist())
        down = vt.network.transfer_end(ids, vt.now, down_bytes, "down") - vt.now
        plans = [d.plan for d in dispatches]
        compute = pop.compute_time(ids, examples_seen_each(self.data.train.sizes()[ids], plans))
        settings = AdaptivePolicy(cfg.margin).plan(
            comp.codec,
            self.server.dim,
            comp.setting(dispatches[0].round, None),
            self.config.server.deadline_s,
            rate,
            pop.latency_ms[ids] / 1e3,
            down,
            compute,
        )
        return comp.assign(dispatches, settings)

    def _compress(self, updates: list[Update], dispatched: dict[int, Dispatch]) -> list[Update]:
        """Every simulated client's upload encoded with its dispatched setting and its own
        error-feedback state (kept by the server's ``upload_states``, staged until the
        server accepts the update), as a device would after local DP."""
        comp, states = self.server.compression, self.server.upload_states
        if not updates or comp is None or states is None:
            return updates
        ids = [u.client_id for u in updates]
        rows = np.stack([u.delta for u in updates])
        settings = np.array([dispatched[c].compression for c in ids], dtype=np.float64)
        seeds = np.array([dispatched[c].seed for c in ids], dtype=np.int64)
        payloads = states.update(
            ids, lambda stacked: comp.encode(rows, settings, seeds, stacked), stage=True
        )
        empty = np.zeros(0, dtype=np.float32)
        return [replace(u, delta=empty, payload=p) for u, p in zip(updates, payloads, strict=True)]

    def _fit(self, dispatches: list[Dispatch]) -> tuple[list[Dispatch], dict[int, str]]:
        """With ``server.accept_partial`` or ``edge.local_work = "adaptive"``, a client
        whose full work would miss the deadline trains only the steps that fit at its
        device's speed (its dispatch gets ``max_steps``); one that cannot fit a single
        step (adaptive: ``edge.min_steps``) is dropped (returned with its reason)."""
        vt, srv, edge = self.virtual_time, self.config.server, self.config.edge
        adaptive = edge.local_work == "adaptive"
        if not ((srv.accept_partial or adaptive) and srv.deadline_s is not None and dispatches):
            return dispatches, {}
        ids = np.array([d.client_id for d in dispatches], dtype=np.int64)
        plans = [d.plan for d in dispatches]
        sizes = self.data.train.sizes()[ids]
        full = steps_for_each(sizes, plans)
        fit = vt.steps_that_fit(
            ids,
            full,
            np.minimum(sizes, [p.batch_size for p in plans]),
            self._download_bytes(ids.tolist()),
            self._planned_upload(dispatches),
            srv.deadline_s,
        )
        least = edge.min_steps if adaptive else 1
        fit = at_least(fit, full, least)
        dispatches = [
            replace(d, max_steps=int(f)) if 0 < f < s else d
            for d, f, s in zip(dispatches, fit, full, strict=True)
        ]
        unfit = {int(c): unfit_reason(least) for c in ids[fit == 0]}
        return [d for d, f in zip(dispatches, fit, strict=True) if f > 0], unfit

    def _play(
        self,
        dispatches: list[Dispatch],
        needed: int | None,
        rehearse: bool = False,
        sizes: dict[int, int] | None = None,
    ) -> RoundOutcome:
        """Play the round's timeline: who delivers, who drops, when the round ends.
        ``rehearse``: on a copy of the clock, with the smallest possible uploads (a
        payload's header); ``sizes``: the encoded bytes of the clients that have them
        (the others, which will not deliver, count their planned bytes)."""
        vt, srv = self.virtual_time, self.config.server
        ids = np.array([d.client_id for d in dispatches], dtype=np.int64)
        if rehearse:
            up = np.full(len(ids), HEADER_BYTES, dtype=np.int64)
        else:
            up = self._planned_upload(dispatches)
            if sizes:
                up = np.array([sizes.get(int(c), b) for c, b in zip(ids, up, strict=True)])
        caps = np.array([d.max_steps or NO_CAP for d in dispatches], np.int64)
        plans = [d.plan for d in dispatches]
        samples = examples_seen_each(self.data.train.sizes()[ids], plans, caps)
        play = vt.rehearse if rehearse else vt.play_round
        return play(
            self.server.round + 1,
            ids,
            samples,
            self._download_bytes(ids.tolist()),
            up,
            srv.deadline_s,
            needed=needed,
            attempt=self.server.retries,
        )

    def _register_round(
        self,
        dispatches: list[Dispatch],
        outcome: RoundOutcome,
        result: RoundResult,
        rejected: dict[int, UpdateRejected],
    ) -> None:
        """Tell the registry who was asked, who delivered, how fast, and who failed why.

        Surplus clients (over-selected, not needed) count neither as done nor as failed.
        """
        arrival = dict(zip(outcome.delivered.tolist(), outcome.arrival.tolist(), strict=True))
        ids = result.clients.ids
        asked = ({d.client_id for d in dispatches} | set(outcome.failed)) - set(outcome.surplus)
        self.engine.record_round(
            np.array(sorted(asked), dtype=np.int64),
            result,
            np.array([arrival[int(i)] - outcome.start for i in ids]),
            outcome.failed,
            rejected,
            now=outcome.end,
        )

    def evaluate(self, federated: bool = False) -> dict[str, float]:
        """Central test-set metrics and, if asked, the clients' hold-out metrics."""
        return self.engine.evaluate(federated)

    def summary(self, wall_s: float) -> RunSummary:
        task = self.trainer.task
        metric = task.primary
        records = self.run_dir.records()
        rounds = [r for r in records if metric in r]
        last = rounds[-1] if rounds else {}
        sign = 1.0 if task.maximize(metric) else -1.0
        best = max(rounds, key=lambda r: sign * r[metric]) if rounds else {}
        stop = next((r for r in records if r.get("event") == "stop"), {})
        names = ["loss", *task.metrics]
        return RunSummary(
            path=self.run_dir.path,
            rounds=self.server.round,
            stop_reason=stop.get("reason", "unknown"),
            stop_detail=stop.get("detail", ""),
            metric=metric,
            value=last.get(metric, math.nan),
            best_value=best.get(metric, math.nan),
            best_round=best.get("round", 0),
            metrics={n: last[n] for n in names if n in last},
            loss=last.get("loss", math.nan),
            wall_s=wall_s,
        )
