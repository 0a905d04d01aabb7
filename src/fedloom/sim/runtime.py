"""Run a complete federated experiment, with checkpoints and resume.

``Simulation`` wires the core together from a ``RunConfig``: data and partition, the
model (one reused object), the sans-IO ``SyncServer`` with its selector and optional
DP-FedAvg release, an executor (vectorized or sequential), virtual time (devices,
network, clock), secure aggregation (SecAgg+ run in-process: the server gets only the
sum), the SQLite client registry, the privacy ledger, evaluation and the run
directory. Under torchrun a ``Shard`` splits each cohort over processes. Every
``checkpoint.every`` rounds it saves the server, clock and registry state; a resumed run
rebuilds everything from the saved config and seed, loads the newest checkpoint and
continues to the same final model an uninterrupted run reaches.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedloom.client.schedule import examples_seen, steps_for
from fedloom.client.trainer import TorchTrainer, evaluate_model
from fedloom.config import RunConfig
from fedloom.data.federated import FederatedData, build_federated_data
from fedloom.errors import (
    CheckpointError,
    ConfigError,
    FedloomError,
    RunInterrupted,
    UpdateRejected,
)
from fedloom.models import build_model
from fedloom.optim import make_server_optimizer
from fedloom.params import module_vector
from fedloom.privacy.accounting import MechanismEvent, compose_epsilon
from fedloom.privacy.audit import AuditResult, audit, canary_directions, canary_scores
from fedloom.privacy.central import Replay
from fedloom.privacy.ledger import PrivacyLedger, release_digest
from fedloom.records import Dispatch, RoundResult, TrainPlan, Update
from fedloom.runs import RunDirectory, keep_aside
from fedloom.secagg.cohort import SecureAggregator, SecureRound
from fedloom.server.convergence import ConvergenceMonitor, StopDecision
from fedloom.server.privacy_plan import PrivacyPlan
from fedloom.server.registry import ClientRegistry, Completion
from fedloom.server.selection import PoissonSelector, UniformSelector, make_selector
from fedloom.server.stats import ClientStats
from fedloom.server.sync import SyncServer
from fedloom.sim import recovery
from fedloom.sim.devices import Population
from fedloom.sim.executor import NO_CAP, Executor, SequentialExecutor, run_dispatches
from fedloom.sim.memory import check_memory, effective_batch_size
from fedloom.sim.population import build_network, build_population
from fedloom.sim.shard import Shard
from fedloom.sim.timeline import RoundOutcome, VirtualTime
from fedloom.sim.vectorized import VectorizedExecutor, unsupported_reason

log = logging.getLogger("fedloom")

_REGISTRY = "registry."  # checkpoint arrays holding the registry's snapshot


@dataclass(frozen=True)
class RunSummary:
    path: Path
    rounds: int
    stop_reason: str
    stop_detail: str
    accuracy: float
    loss: float
    best_accuracy: float
    best_round: int
    wall_s: float


def plan_from_config(config: RunConfig, sizes: np.ndarray | None = None) -> TrainPlan:
    """The clients' training plan; with the clients' data ``sizes``, the batch size is
    capped by the largest client (a larger batch trains exactly as that one)."""
    c = config.client
    return TrainPlan(
        local_epochs=c.local_epochs,
        local_steps=c.local_steps,
        batch_size=c.batch_size if sizes is None else effective_batch_size(c.batch_size, sizes),
        optimizer=c.optimizer,
        lr=c.lr,
        momentum=c.momentum,
        nesterov=c.nesterov,
        betas=c.betas,
        eps=c.eps,
        weight_decay=c.weight_decay,
        prox_mu=c.prox_mu,
        dp_sgd_clip=c.dp_sgd_clip_norm,
        dp_sgd_noise=c.dp_sgd_noise_multiplier,
    )


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"simulation.device = {name!r} but no CUDA device is available")
    return name


def make_executor(
    config: RunConfig, trainer: TorchTrainer, data: FederatedData, shard: Shard | None = None
) -> tuple[Executor, str]:
    """The configured executor and a note saying why it was chosen."""
    sim = config.simulation
    reason = unsupported_reason(trainer.model)
    if sim.executor == "sequential":
        return SequentialExecutor(trainer, data.train), "requested in config"
    if reason is not None:
        if sim.executor == "vectorized":
            raise ConfigError(f"simulation.executor = 'vectorized' is impossible: {reason}")
        log.warning("falling back to the sequential executor: %s", reason)
        return SequentialExecutor(trainer, data.train), f"fallback: {reason}"
    device = resolve_device(sim.device)
    if device == "cuda" and shard is not None and torch.cuda.device_count() > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', shard.rank)) % torch.cuda.device_count()}"
    vec = VectorizedExecutor(
        copy.deepcopy(trainer.model),
        data.train,
        device=device,
        memory_budget_mb=sim.memory_budget_mb,
    )
    return vec, f"{vec.backend} gradients on {device}"


def monitor_from_config(config: RunConfig) -> ConvergenceMonitor:
    s = config.stopping
    return ConvergenceMonitor(
        metric=s.metric,
        mode="max" if s.metric == "accuracy" else "min",
        patience=s.patience,
        min_delta=s.min_delta,
        target=s.target,
        smoothing=s.smoothing,
        plateau_window=s.plateau_window,
        plateau_tolerance=s.plateau_tolerance,
    )


# A simulation stops once this many rounds in a row had every delivered update refused:
# with the model unchanged, later rounds would be refused alike (a diverging client.lr).
REFUSED_ROUNDS_STOP = 3


class Simulation:
    """One experiment bound to its run directory."""

    def __init__(
        self,
        config: RunConfig,
        run: RunDirectory,
        shard: Shard | None = None,
        data: FederatedData | None = None,
        deployment: bool = False,
    ) -> None:
        """``data`` replaces the configured dataset (for programmatic use; a resumed run
        rebuilds its data from the config, so pass the same data to ``resume``).

        ``deployment``: the rounds are driven by real clients (the gRPC server). Then every
        random draw that protects someone comes from the OS, whatever the config says:
        central DP noise and adaptive clipping's count noise (as with
        ``privacy.secure_noise``) and the cohort draws (``SyncServer.os_selection``),
        because every client learns the run seed. The simulator keeps them seeded by the
        run seed, so a simulated run can be replayed exactly; :meth:`randomness` says
        which holds, and the start and resume records carry it."""
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        self.run_dir = run
        self.shard = shard
        self.writer = shard is None or shard.is_writer
        self.data: FederatedData = data or build_federated_data(
            config.data, config.partition, config.seed
        )
        check_memory(  # before the model is built: refuse what cannot fit
            config,
            self.data.num_features,
            self.data.num_classes,
            self.data.train.sizes(),
            len(self.data.test) + (0 if self.data.holdout is None else len(self.data.holdout.y)),
        )
        model = build_model(
            config.model, self.data.num_features, self.data.num_classes, config.seed
        )
        self.trainer = TorchTrainer(model)
        self.executor, self.executor_note = make_executor(config, self.trainer, self.data, shard)
        opt = config.server.optimizer.model_dump()
        sel, srv = config.selection, config.server
        num_clients = self.data.train.num_clients
        params = module_vector(model)
        self.deployment = deployment
        self.privacy = PrivacyPlan.from_config(config, num_clients, params.size)
        if deployment:
            self.privacy = replace(self.privacy, secure_noise=True)
        if shard is not None and self.privacy.secure_noise:
            raise ConfigError(
                "privacy.secure_noise under torchrun would give each process different "
                "noise; run it in one process"
            )
        self.secure = self._secure_aggregator(config, params.size, shard)
        # Under DP the accountant assumes the cohort is a uniform sample of all N clients:
        # Poisson at the planned rate (an offline client simply cannot join), or, with
        # fixed-size sampling, exactly clients_per_round drawn uniformly from all N, the
        # offline picks being dropouts (drawing from the clients online would raise each
        # one's inclusion probability above m / N; see docs/privacy.md).
        self.sample_all = self.privacy.enabled and self.privacy.sampling == "fixed"
        if self.privacy.enabled and self.privacy.sampling == "poisson":
            selector = PoissonSelector(self.privacy.sampling_rate)
        elif self.sample_all:
            selector = UniformSelector()
        else:
            selector = make_selector(sel.strategy, sel.max_share, **sel.params)
        self.server = SyncServer(
            params=params,
            num_clients=self.data.train.num_clients,
            clients_per_round=srv.clients_per_round,
            plan=plan_from_config(config, self.data.train.sizes()),
            optimizer=make_server_optimizer(opt.pop("name"), **opt),
            monitor=monitor_from_config(config),
            seed=config.seed,
            selector=selector,
            quorum=srv.quorum,
            quorum_policy=srv.quorum_policy,
            max_retries=srv.max_retries,
            dp=self.privacy.mechanism(config.seed),
            os_selection=deployment,
            max_examples=srv.max_examples_per_client,
        )
        self.test_tensors = (torch.from_numpy(self.data.test.x), torch.from_numpy(self.data.test.y))
        population = build_population(config.devices, self.data.train.num_clients, config.seed)
        self.virtual_time = VirtualTime(
            population, build_network(config.network, population), config.seed
        )
        self.registry = self._open_registry(population)
        self.ledger: PrivacyLedger | None = None
        self.initial_params = self.server.params.copy()
        self.canaries = self._make_canaries(config)
        self.attempts = 0  # round attempts, retries included: the registry's round counter
        self.refused_rounds = 0  # consecutive simulated rounds whose every update was refused
        self.stopped: StopDecision | None = None
        self._budget_stop: str | None = None  # a release refused for the privacy budget
        self._release_digest = ""  # distributed / local DP: this attempt's release

    def _secure_aggregator(
        self, config: RunConfig, dim: int, shard: Shard | None
    ) -> SecureAggregator | None:
        """SecAgg+ over every round's updates (None when ``secagg.enabled`` is false)."""
        s = config.secagg
        if not s.enabled:
            return None
        if shard is not None:
            raise ConfigError(
                "secagg.enabled = true under torchrun is not supported: the protocol needs "
                "every client's masked input in one process; run it in one process"
            )
        return SecureAggregator(
            dim,
            int(self.data.train.sizes().max()),
            s.neighbours,
            s.threshold,
            s.clip,
            s.bits,
            s.rounding,
            config.seed,
            secure_noise=self.privacy.secure_noise,
            signed=s.signed,
            min_clients=s.min_clients,
        )

    def _make_canaries(self, config: RunConfig) -> tuple[np.ndarray, np.ndarray] | None:
        """Audit canaries: random directions at the clip norm, each included w.p. 1/2."""
        m = config.privacy.audit_canaries
        if not m:
            return None
        directions = canary_directions(m, self.server.dim, np.random.default_rng([config.seed, 10]))
        included = np.random.default_rng([config.seed, 11]).random(m) < 0.5
        return directions, included

    def inject_canaries(self) -> None:
        """Included canaries join this round like any client: w.p. the sampling rate."""
        assert self.canaries is not None
        directions, included = self.canaries
        draw = np.random.default_rng([self.config.seed, 12, self.attempts]).random(len(included))
        joins = included & (draw < self.privacy.sampling_rate)
        clip = self.privacy.clip_norm
        self.server.add_canaries(clip * directions[joins].sum(axis=0, dtype=np.float64))

    def audit(self) -> tuple[AuditResult, float, float] | None:
        """The one-run empirical lower bound on epsilon from the canaries (None without),
        the delta it is stated at, and the accountant's epsilon at that same delta.

        Steinke et al.'s bound charges 2·m·delta for m canaries, so it is evaluated at
        ``delta_a = min(delta, 0.01 / m)``; the accountant's epsilon at ``delta_a`` is what
        it must never exceed.
        """
        if self.canaries is None or self.ledger is None:
            return None
        directions, included = self.canaries
        scores = canary_scores(self.initial_params, self.server.params, directions)
        delta_a = min(self.privacy.delta, 0.01 / len(included))
        found = audit(scores, included, delta=delta_a)
        return found, delta_a, compose_epsilon(self.ledger.events, delta_a, self.privacy.accountant)

    def _reopen_ledger(self) -> PrivacyLedger:
        """The run's ledger as saved, every release kept (other ranks get rank 0's copy)."""
        path = self._ledger_path()
        if path is not None:
            ledger = PrivacyLedger.load(path)
            if self.shard is not None:
                self.shard.broadcast(ledger.to_json())
            return ledger
        assert self.shard is not None
        return PrivacyLedger.from_json(self.shard.broadcast(None))

    def _ledger_path(self) -> Path | None:
        """``privacy.json`` in the run directory (other ranks keep their ledger in memory)."""
        return self.run_dir.path / "privacy.json" if self.writer else None

    def _open_registry(self, population: Population) -> ClientRegistry:
        """The client registry in the run directory (each extra rank keeps its own copy)."""
        name = "clients.sqlite" if self.writer else f"clients.rank{self.shard.rank}.sqlite"
        cfg = self.config.registry
        registry = ClientRegistry(
            self.run_dir.path / name, cfg.reliability_decay, cfg.duration_smoothing
        )
        train = self.data.train
        hist = train.label_histograms().astype(np.float64)
        p = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
        registry.register(
            train.sizes(),
            entropy,
            tier=population.tier,
            compute_ms_per_sample=population.compute_ms_per_sample,
            up_kbps=population.up_kbps,
            down_kbps=population.down_kbps,
        )
        return registry

    # construction ------------------------------------------------------------
    def randomness(self) -> dict[str, str]:
        """Where the draws that protect someone come from: ``"os"`` (the OS CSPRNG, or
        fresh OS entropy per round), ``"seed"`` (derived from the run seed: reproducible,
        and removable by anyone who knows the seed) or ``"none"`` (not drawn).

        ``selection``: the cohorts. ``dp_noise``: central DP and adaptive clipping's count
        noise on the server; local DP and distributed DP noise on the clients.
        ``dp_sgd_noise``: the clients' DP-SGD noise and batches (in a deployment each
        device draws its own; the simulator keys them by the client's seed, even with
        secure_noise).
        """
        c = self.config.client
        dp_sgd = c.dp_sgd_clip_norm is not None and bool(c.dp_sgd_noise_multiplier)
        if self.deployment:
            noise, selection, sgd = "os", "os", "os"
        else:
            noise, selection, sgd = "os" if self.privacy.secure_noise else "seed", "seed", "seed"
        return {
            "runtime": "deployment" if self.deployment else "simulation",
            "selection": selection,
            "dp_noise": noise if self.privacy.enabled else "none",
            "dp_sgd_noise": sgd if dp_sgd else "none",
        }

    @classmethod
    def start(
        cls,
        config: RunConfig,
        shard: Shard | None = None,
        data: FederatedData | None = None,
        deployment: bool = False,
    ) -> Simulation:
        """A new run in a fresh directory, with the initial model evaluated as round 0
        (``deployment``: see ``__init__``)."""
        if shard is None:
            run = RunDirectory.create(config)
        else:  # rank 0 picks the directory, the others learn its name
            path = RunDirectory.create(config).path if shard.is_writer else None
            run = RunDirectory(shard.broadcast(path))
        return cls._begin(config, run, shard, data, deployment, fresh=True)

    @classmethod
    def _begin(
        cls,
        config: RunConfig,
        run: RunDirectory,
        shard: Shard | None,
        data: FederatedData | None,
        deployment: bool,
        fresh: bool,
    ) -> Simulation:
        """Build the run in ``run``, record round 0 and checkpoint it, so that a run
        stopped at any later moment can be resumed (``fresh``: the directory is new, and
        removed again if the run is refused before it starts)."""
        try:
            sim = cls(config, run, shard, data, deployment)
            sim.ledger = sim.privacy.ledger(sim._ledger_path())
        except FedloomError:  # refused before any round (e.g. over the privacy budget)
            if fresh and (shard is None or shard.is_writer):
                shutil.rmtree(run.path, ignore_errors=True)
            raise
        sim._append(
            {
                "event": "start",
                "round": 0,
                "clients": sim.data.train.num_clients,
                "params": sim.server.dim,
                "executor": sim.executor.name,
                "executor_note": sim.executor_note,
                "processes": shard.world if shard else 1,
                "randomness": sim.randomness(),
                "dp_sgd_epsilon": PrivacyPlan.dp_sgd_epsilon(
                    config, sim.data.train.sizes(), 1.0 / sim.data.train.sizes().sum() ** 1.1
                ),
                **sim.evaluate(federated=sim.data.holdout is not None),
            }
        )
        sim._checkpoint(None)
        return sim

    @classmethod
    def resume(
        cls,
        path: Path,
        shard: Shard | None = None,
        data: FederatedData | None = None,
        deployment: bool = False,
    ) -> Simulation:
        """Continue the run in ``path`` from its newest checkpoint (``deployment``: see
        ``__init__``)."""
        run = RunDirectory.open(path)
        config = run.load_config()
        found = run.latest_checkpoint()
        if found is None:
            return cls._restart(config, run, shard, data, deployment)
        ckpt_path, state = found
        notes = cls._repair(config, run, shard, state)
        sim = cls(config, run, shard, data, deployment)
        sim.server.load_state_dict(state)
        sim.virtual_time.clock.load_state_dict(state["meta"]["clock"])
        sim.attempts = int(state["meta"]["attempts"])
        sim.refused_rounds = int(state["meta"].get("refused_rounds", 0))
        sim._restore_registry(state)
        if sim.privacy.enabled:  # append-only: releases made after the checkpoint stay
            sim.ledger = sim._reopen_ledger()
        stop = state["meta"].get("stopped")
        sim.stopped = StopDecision(**stop) if stop else None
        if sim.writer and (aside := run.truncate_records(sim.server.round)) is not None:
            notes["damaged_records"] = f"kept aside as {aside.name}"
        sim._append(
            {
                "event": "resume",
                "round": sim.server.round,
                "checkpoint": ckpt_path.name,
                "randomness": sim.randomness(),
                **notes,
            }
        )
        return sim

    @classmethod
    def _repair(
        cls, config: RunConfig, run: RunDirectory, shard: Shard | None, state: dict
    ) -> dict[str, Any]:
        """Before a resume builds anything: refuse what cannot be repaired (settings edited
        since the checkpoint, a lost privacy ledger) and set damaged files aside (newer
        checkpoints, the registry database). Returns notes for the resume record."""
        notes: dict[str, Any] = {}
        saved = state["meta"].get("config")
        if isinstance(saved, str):
            changed = recovery.config_changes(saved, config, run.config_path)
            if changed:
                notes["config_changes"] = changed
        writer = shard is None or shard.is_writer
        if writer:  # the other ranks receive rank 0's ledger
            recovery.check_ledger(run, config)
        if writer and run.skipped:
            notes["damaged_checkpoints"] = recovery.set_aside_damaged_checkpoints(
                run, run.skipped
            )
        name = "clients.sqlite" if writer else f"clients.rank{shard.rank}.sqlite"
        registry = recovery.prepare_registry(run.path / name)
        if registry is not None:
            notes["registry"] = registry
        return notes

    def _restore_registry(self, state: dict) -> None:
        """The registry as of the checkpoint: its own snapshot or, when the database was
        lost or damaged, the copy of that snapshot the checkpoint carries."""
        if self.attempts in self.registry.snapshot_rounds():
            self.registry.restore(self.attempts)
            return
        arrays = {
            k.removeprefix(_REGISTRY): v
            for k, v in state["arrays"].items()
            if k.startswith(_REGISTRY)
        }
        if not arrays:
            raise CheckpointError(
                f"registry {str(self.registry.path)!r} has no snapshot of round "
                f"{self.attempts} and the checkpoint carries no copy of it; start the run "
                f"again with `fedloom run {self.run_dir.config_path}`"
            )
        self.registry.restore_snapshot_arrays(self.attempts, arrays)

    @classmethod
    def _restart(
        cls,
        config: RunConfig,
        run: RunDirectory,
        shard: Shard | None,
        data: FederatedData | None,
        deployment: bool,
    ) -> Simulation:
        """Resume a run stopped before its round-0 checkpoint: nothing was trained or
        released yet, so it begins again in its own directory, and what the first attempt
        wrote is kept aside (``<name>.unfinished-<n>``). A run with rounds recorded but no
        checkpoint left is refused."""
        rounds = [r["round"] for r in run.records() if r["event"] == "round"]
        if rounds:
            raise CheckpointError(
                f"run {str(run.path)!r} recorded rounds up to {max(rounds)} but has no "
                f"checkpoint left in {str(run.checkpoint_dir)!r}; its state is lost: start "
                f"it again with `fedloom run {run.config_path}`"
            )
        if shard is None or shard.is_writer:
            for name in ("metrics.jsonl", "privacy.json", "clients.sqlite"):
                for suffix in ("", "-wal", "-shm"):
                    if (run.path / (name + suffix)).exists():
                        keep_aside(run.path / (name + suffix), label="unfinished")
        return cls._begin(config, run, shard, data, deployment, fresh=False)

    # running -----------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.stopped is not None or self.server.round >= self.config.rounds

    def run(self, on_round: Callable[[dict[str, Any]], None] | None = None) -> RunSummary:
        """Run rounds until the configured count or a stop decision."""
        started = time.perf_counter()
        with recovery.StopSignals(enabled=self.shard is None) as signals:
            while not self.finished:
                record = self.step()
                if on_round is not None:
                    on_round(record)
                if signals.caught and record.get("status") != "retry":
                    self._checkpoint(self.stopped)
                    self._append(
                        {"event": "interrupt", "round": self.server.round, "signal": signals.caught}
                    )
                    raise RunInterrupted(signals.caught, self.server.round, self.run_dir.path)
        if self.writer and not any(r.get("event") == "stop" for r in self.run_dir.records()):
            reason = self.stopped or StopDecision(
                "max_rounds", self.server.round, f"completed {self.config.rounds} rounds"
            )
            self._append({"event": "stop", "round": self.server.round, **_stop_fields(reason)})
            audited = self.audit()
            if audited is not None:
                found, delta_a, accountant_eps = audited
                self._append(
                    {
                        "event": "audit",
                        "round": self.server.round,
                        "epsilon_lower": found.epsilon_lower,
                        "delta": delta_a,
                        "accountant_epsilon": accountant_eps,
                        "confidence": found.confidence,
                        "canaries": found.num_canaries,
                        "guesses": found.num_guesses,
                        "correct": found.num_correct,
                    }
                )
        if self.shard is not None:  # every rank returns after rank 0 finished writing
            self.shard.broadcast(None)
        return self.summary(time.perf_counter() - started)

    def step(self) -> dict[str, Any]:
        """One synchronous round: select, play it in virtual time, train whoever delivers,
        aggregate, evaluate, record."""
        t0 = time.perf_counter()
        vt, srv = self.virtual_time, self.config.server
        available = vt.available()
        while len(available) == 0:
            if not vt.wait_for_clients():
                raise FedloomError(f"at virtual time {vt.now:.0f} s no client will ever be online")
            available = vt.available()
        self.registry.observe_availability(vt.now, available)
        stats = self.registry.stats()
        need = srv.clients_per_round
        k = self.cohort_size(need, stats)
        deadline = None if srv.deadline_s is None else vt.now + srv.deadline_s
        pool = None if self.sample_all else available
        dispatches = self.server.begin_round(pool, stats, vt.now, k=k, deadline=deadline)
        self.attempts += 1
        cohort = [d.client_id for d in dispatches]
        refusal = self.release_refusal(cohort)
        if refusal is not None:
            result, extra = self.withhold_round(cohort, refusal, vt.now)
            return self.finish_round(result, t0, extra)
        offline: dict[int, str] = {}
        if self.sample_all:  # drawn from all N: an offline pick is a dropout
            online = set(available.tolist())
            offline = {c: "offline when sampled" for c in cohort if c not in online}
            for cid, reason in offline.items():
                self.server.fail(cid, reason)
            dispatches = [d for d in dispatches if d.client_id not in offline]
            cohort = [d.client_id for d in dispatches]
        if self.secure is not None and len(cohort) < self.config.secagg.min_clients:
            result, extra = self.skip_small_secure_round(cohort)
            extra |= {"virtual_time": vt.now, "round_virtual_s": 0.0}
            return self.finish_round(result, t0, extra)
        dispatches, outcome = self._play(dispatches, self.enough(need, len(dispatches)))
        for cid, reason in outcome.failed.items():
            self.server.fail(cid, reason)
        if offline:
            outcome = replace(outcome, failed={**offline, **outcome.failed})
        for cid in outcome.surplus:
            self.server.fail(cid, "surplus")
        delivered = set(outcome.delivered.tolist())
        todo = [d for d in dispatches if d.client_id in delivered]
        shard = self.shard
        mine = todo if shard is None else shard.mine(todo)
        updates = run_dispatches(self.executor, self.server.params, mine)
        if self.privacy.local:
            updates = self._privatize(updates)
        if shard is not None and shard.mode == "gather":
            updates = [u for part in shard.gather(updates) for u in part]
        rejected: dict[int, UpdateRejected] = {}
        kinds: dict[str, int] = {}
        secure = None
        refusal = None
        if self.privacy.distributed is not None:  # before the server unmasks the sum
            refusal = self.release_refusal(cohort, shares=len(updates))
        if refusal is not None:
            for cid in sorted(self.server.pending):
                self.server.fail(cid, "privacy budget")
            self.refuse_release(refusal)
        elif self.secure is not None:
            secure = self._aggregate_securely(cohort, updates, todo, outcome)
            rejected = secure.rejected
        else:
            for update in updates:
                try:
                    self.server.receive(update)
                except UpdateRejected as err:
                    rejected[update.client_id] = err
                    kinds[err.kind] = kinds.get(err.kind, 0) + 1
                    log.warning("%s", err)
        combine = shard.allreduce if shard is not None and shard.mode == "allreduce" else None
        if self.canaries is not None:
            self.inject_canaries()
        self.arm_replay()
        result = self.server.close_round(combine)
        self._register_round(dispatches, outcome, result, rejected)
        extra: dict[str, Any] = {} if secure is None else {"secagg": self._secure_record(secure)}
        extra |= {
            "attempt": self.attempts,
            "dispatched": len(dispatches),
            "virtual_time": outcome.end,
            "round_virtual_s": outcome.end - outcome.start,
            "events": outcome.events,
            "dropped": _count_reasons(outcome.failed),
            "surplus": len(outcome.surplus),
            "partial": sum(d.max_steps is not None for d in todo),
        }
        if kinds:
            extra["rejections"] = kinds
        # every delivered update refused (e.g. training diverged): see finish_round
        refused_all = bool(rejected) and not result.completed and result.status != "retry"
        self.refused_rounds = self.refused_rounds + 1 if refused_all else 0
        return self.finish_round(result, t0, extra, uploaded=list(rejected))

    def finish_round(
        self,
        result: RoundResult,
        started: float,
        extra: dict[str, Any],
        uploaded: list[int] | None = None,
    ) -> dict[str, Any]:
        """Evaluate, charge the privacy ledger, record and checkpoint a closed round: what
        every runtime (this simulator, the gRPC deployment) does after ``close_round``.
        ``started``: ``time.perf_counter()`` at the round's start; ``extra``: the runtime's
        own fields for the round record; ``uploaded``: clients whose uploads the server saw
        besides the completed ones (refused ones: local DP charges them too)."""
        rnd = result.round
        ev = self.config.evaluation
        metrics: dict[str, Any] = {}
        last = rnd >= self.config.rounds
        if result.status != "retry" and (rnd % ev.every == 0 or last):
            fed = self.data.holdout is not None and (
                last or (ev.federated_every and rnd % ev.federated_every == 0)
            )
            metrics = self.evaluate(federated=bool(fed))
            self.stopped = self.server.observe(metrics)
        if self.stopped is None and self.refused_rounds >= REFUSED_ROUNDS_STOP:
            self.stopped = StopDecision(
                "updates_refused",
                rnd,
                f"every update of the last {self.refused_rounds} rounds was refused (e.g. "
                "training diverged: lower client.lr); see the round records' rejections",
            )
        if self._budget_stop is not None:
            self.stopped = StopDecision("privacy_budget", rnd, self._budget_stop)
            self._budget_stop = None
        record = _round_record(result, metrics, time.perf_counter() - started)
        if self.ledger is not None:
            record |= self._charge(result, uploaded or [])
        record |= extra
        self._append(record)
        every = self.config.checkpoint.every
        if result.status != "retry" and ((every and rnd % every == 0) or self.finished):
            self._checkpoint(self.stopped)
        return record

    def release_refusal(self, cohort: list[int], shares: int | None = None) -> str | None:
        """Why this attempt's release would take the ledger's headline epsilon past the
        budget (None: it fits, or there is no budget), checked before anything is released.

        Central DP: the round's release (its noisy quorum count included), known before
        anyone trains. Local DP: one more upload from every client of ``cohort``, before
        dispatch. Distributed DP: a sum of ``shares`` noise shares split over ``cohort``,
        once the masked inputs are in and before the server unmasks the sum.
        """
        ledger, plan = self.ledger, self.privacy
        if ledger is None or ledger.budget is None:
            return None
        if plan.local:
            over = ledger.would_exceed([plan.event()], clients=cohort)
        elif plan.distributed is not None:
            if not shares:
                return None
            over = ledger.would_exceed([plan.event(shares=shares, cohort=len(cohort))])
        else:
            over = ledger.would_exceed([plan.event()])
        if not over:
            return None
        return (
            f"privacy budget: this round's release would take epsilon past the budget "
            f"{ledger.budget.epsilon:g} (spent {ledger.epsilon():.4g}); nothing was released"
        )

    def refuse_release(self, reason: str) -> None:
        """The open round releases nothing (the budget): it closes as skipped and the run
        stops with reason ``"privacy_budget"``. The runtime fails the pending clients."""
        self.server.skip_round(reason)
        self._budget_stop = reason

    def withhold_round(
        self, cohort: list[int], reason: str, now: float
    ) -> tuple[RoundResult, dict[str, Any]]:
        """Close a freshly selected round before anyone is told (:meth:`release_refusal`):
        nothing trains, nothing is released, the run stops. Returns the result and the
        round record's extra fields for :meth:`finish_round`."""
        for cid in cohort:
            self.server.fail(cid, "privacy budget")
        self.refuse_release(reason)
        result = self.server.close_round()
        none = np.zeros(0, dtype=np.int64)
        empty = Completion(none, none * 0.0, none * 0.0, none * 0.0, none, none, none * 0.0)
        self.registry.record_round(self.attempts, now, none, empty, {}, {})
        return result, {"attempt": self.attempts, "dispatched": 0, "withheld": reason}

    def arm_replay(self) -> None:
        """Before central DP's release: if this attempt was released (and charged) before a
        resume, tell the mechanism, so that a release that differs is drawn afresh."""
        dp = self.server.dp
        if dp is None or dp.noise_on_clients or self.ledger is None:
            return
        charged = self.ledger.charged(self.attempts)
        dp.replay = Replay(self.attempts, frozenset(e.digest for e in charged)) if charged else None

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
        self._release_digest = digest
        return out

    def _charge(self, result: RoundResult, uploaded: list[int]) -> dict[str, Any]:
        """Charge this attempt's release to the ledger (nothing if it repeats, bit for bit,
        a release charged before a resume); the round record's privacy fields.

        Central DP: the noisy average (with its noisy quorum count), or the noisy count
        alone below the quorum. Distributed DP: every sum the server unmasked, whatever
        the quorum then decided. Local DP: every upload the server saw, per client.
        """
        assert self.ledger is not None
        plan, release = self.privacy, self.server.last_release
        digest, self._release_digest = self._release_digest, ""
        event: MechanismEvent | None = None
        clients: list[int] | None = None
        if plan.local:
            clients = sorted(set(result.completed) | set(uploaded))
            event = plan.event() if clients else None
        elif result.skip_reason is not None:
            event = None
        elif plan.distributed is not None:
            if result.completed:
                event = plan.event(shares=len(result.completed), cohort=len(result.selected))
        elif release is not None:
            event = plan.event() if release.passes else plan.count_event()
            digest = release.digest
        out: dict[str, Any] = {}
        if event is not None:
            if self.ledger.is_charged(self.attempts, digest):
                out["replayed"] = "identical to the release charged before the resume"
            else:
                self.ledger.record(
                    result.round, event, attempt=self.attempts, digest=digest, clients=clients
                )
            out["epsilon"] = self.ledger.epsilon()
            out |= self.ledger.secondary()
        if release is not None:
            out["clip_norm"] = self.server.dp.clip_norm if self.server.dp else None
            if release.count is not None:
                out["quorum_count"] = release.count
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
            self._release_digest = digest
        if secure.abort is not None:
            log.warning("secure aggregation aborted: %s", secure.abort)
        if secure.total is None:  # nothing to release: not even central DP's noise alone
            self.server.skip_round(f"secure aggregation aborted: {secure.abort}")
        else:
            ids = secure.total.included
            caps = {d.client_id: d.max_steps or NO_CAP for d in todo}
            sizes = self.data.train.sizes()[ids]
            steps = steps_for(sizes, self.server.plan, np.array([caps[int(c)] for c in ids]))
            self.server.receive_secure_sum(secure.total, sizes, steps)
        return secure

    def skip_small_secure_round(self, cohort: list[int]) -> tuple[RoundResult, dict[str, Any]]:
        """Close a secure round whose cohort is below ``secagg.min_clients`` (empty, or one
        client: a sum of one input is that input) before anyone trains: status "skipped",
        nothing released, model unchanged, and the registry counts the clients neither
        as done nor as failed. Both runtimes call it right after selection; returns the
        result and the round record's extra fields for :meth:`finish_round`."""
        need = self.config.secagg.min_clients
        reason = f"cohort of {len(cohort)} is below secagg.min_clients = {need}"
        for cid in cohort:
            self.server.fail(cid, "secure sum too small")
        self.server.skip_round(reason)
        result = self.server.close_round()
        none = np.zeros(0, dtype=np.int64)
        empty = Completion(none, none * 0.0, none * 0.0, none * 0.0, none, none, none * 0.0)
        self.registry.record_round(self.attempts, self.virtual_time.now, none, empty, {}, {})
        extra = {
            "attempt": self.attempts,
            "dispatched": 0,
            "secagg": {"included": 0, "cohort": len(cohort), "aborted": reason},
        }
        return result, extra

    def _secure_record(self, secure: SecureRound) -> dict[str, Any]:
        """The round's SecAgg cost: who is in the sum, seconds, bytes per client."""
        out: dict[str, Any] = {
            "included": 0 if secure.total is None else len(secure.total.included),
            "neighbours": secure.neighbours,
            "threshold": secure.threshold,
            "dropped": secure.dropped,
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

    def enough(self, need: int, dispatched: int) -> int | None:
        """How many delivered updates end a round early, the rest of the ``dispatched``
        clients being surplus (over-selection); None: every dispatched client that
        delivers is aggregated.

        Always None under Poisson sampling (a cohort larger than ``clients_per_round`` is
        a normal draw): the accountant assumes every sampled client's update is in the
        sum, and cutting the cohort would let one client's presence displace another's
        update, moving the sum by up to 2C where the analysis assumes C.
        """
        if isinstance(self.server.selector, PoissonSelector) or dispatched <= need:
            return None
        return need

    def cohort_size(self, need: int, stats: ClientStats) -> int:
        """How many clients to dispatch so that about ``need`` deliver (over-selection).
        Exactly ``need`` under DP with fixed-size sampling: the accountant's cohort size."""
        if self.sample_all:
            return need
        factor = self.config.server.over_selection
        if factor == "auto":  # 1 / expected completion rate of clients seen so far
            seen = stats.selected > 0
            rate = float(stats.reliability[seen].mean()) if seen.any() else 1 / 1.3
            factor = min(2.0, max(1.0, 1.0 / rate))
        return math.ceil(need * factor)

    def _play(
        self, dispatches: list[Dispatch], needed: int | None
    ) -> tuple[list[Dispatch], RoundOutcome]:
        """Play the round's timeline: who delivers, who drops, when the round ends.

        With ``server.accept_partial``, a client whose full work would miss the deadline
        trains only the steps that fit (its dispatch gets ``max_steps``); one that cannot
        fit a single step is dropped.
        """
        vt, srv = self.virtual_time, self.config.server
        ids = np.array([d.client_id for d in dispatches], dtype=np.int64)
        plan = self.server.plan
        sizes = self.data.train.sizes()[ids]
        model_bytes = 4 * self.server.dim
        up_bytes = (
            model_bytes
            if self.secure is None
            else self.secure.upload_bytes(self.privacy.distributed)
        )
        unfit: dict[int, str] = {}
        if srv.accept_partial and srv.deadline_s is not None and len(ids):
            full = steps_for(sizes, plan)
            fit = vt.steps_that_fit(
                ids,
                full,
                np.minimum(sizes, plan.batch_size),
                model_bytes,
                up_bytes,
                srv.deadline_s,
            )
            dispatches = [
                replace(d, max_steps=int(f)) if 0 < f < s else d
                for d, f, s in zip(dispatches, fit, full, strict=True)
            ]
            unfit = {int(c): "cannot finish one step before the deadline" for c in ids[fit == 0]}
            keep = fit > 0
            dispatches = [d for d, ok in zip(dispatches, keep, strict=True) if ok]
            ids, sizes = ids[keep], sizes[keep]
        caps = np.array([d.max_steps or NO_CAP for d in dispatches], np.int64)
        samples = examples_seen(sizes, plan, caps)
        outcome = vt.play_round(
            self.server.round + 1,
            ids,
            samples,
            model_bytes,
            up_bytes,
            srv.deadline_s,
            needed=needed,
            attempt=self.server.retries,
        )
        if unfit:
            outcome = replace(outcome, failed={**unfit, **outcome.failed})
        return dispatches, outcome

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
        c = result.clients
        asked = ({d.client_id for d in dispatches} | set(outcome.failed)) - set(outcome.surplus)
        completion = Completion(
            ids=c.ids,
            duration=np.array([arrival[int(i)] - outcome.start for i in c.ids]),
            loss=c.train_loss,
            loss_sq=c.train_loss_sq,
            num_examples=c.num_examples,
            steps=c.steps,
            contribution=c.contribution,
        )
        self.registry.record_round(
            self.attempts,
            outcome.end,
            np.array(sorted(asked), dtype=np.int64),
            completion,
            outcome.failed,
            rejected,
        )

    def _append(self, record: dict[str, Any]) -> None:
        if self.writer:
            self.run_dir.append(record)

    def _checkpoint(self, stop: StopDecision | None) -> None:
        keep = self.config.checkpoint.keep
        self.registry.snapshot(self.attempts, keep)  # every rank keeps its registry copy
        if not self.writer:
            return
        state = self.server.state_dict()
        state["meta"]["stopped"] = stop.__dict__ if stop else None
        state["meta"]["clock"] = self.virtual_time.clock.state_dict()
        state["meta"]["attempts"] = self.attempts
        state["meta"]["config"] = recovery.config_text(self.config)
        state["arrays"] |= {
            _REGISTRY + name: blob for name, blob in self.registry.snapshot_arrays().items()
        }
        state["meta"]["refused_rounds"] = self.refused_rounds
        self.run_dir.save_checkpoint(self.server.round, state, keep)

    def evaluate(self, federated: bool = False) -> dict[str, float]:
        """Central test-set metrics and, if asked, the clients' hold-out metrics."""
        self.trainer.flat.load(self.server.params)
        bs = self.config.evaluation.batch_size
        loss, correct = evaluate_model(self.trainer.model, *self.test_tensors, batch_size=bs)
        out = {"accuracy": float(correct.mean()), "loss": float(loss.mean())}
        holdout = self.data.holdout
        if federated and holdout is not None:
            x, y = torch.from_numpy(holdout.x), torch.from_numpy(holdout.y)
            h_loss, h_correct = evaluate_model(self.trainer.model, x, y, batch_size=bs)
            sizes = holdout.sizes()
            has = sizes > 0
            starts = holdout.offsets[:-1][has]
            per_client = np.add.reduceat(h_correct.astype(np.float64), starts) / sizes[has]
            per_loss = np.add.reduceat(h_loss.astype(np.float64), starts) / sizes[has]
            self.registry.record_evaluation(
                self.attempts, np.flatnonzero(has), per_client, per_loss
            )
            out |= {
                "fed_accuracy": float(h_correct.mean()),
                "fed_loss": float(h_loss.mean()),
                "fed_accuracy_p10": float(np.percentile(per_client, 10)),
                "fed_clients": int(has.sum()),
            }
        return out

    def summary(self, wall_s: float) -> RunSummary:
        rounds = [r for r in self.run_dir.records() if "accuracy" in r]
        last = rounds[-1] if rounds else {}
        best = max(rounds, key=lambda r: r["accuracy"]) if rounds else {}
        stop = next((r for r in self.run_dir.records() if r.get("event") == "stop"), {})
        return RunSummary(
            path=self.run_dir.path,
            rounds=self.server.round,
            stop_reason=stop.get("reason", "unknown"),
            stop_detail=stop.get("detail", ""),
            accuracy=last.get("accuracy", math.nan),
            loss=last.get("loss", math.nan),
            best_accuracy=best.get("accuracy", math.nan),
            best_round=best.get("round", 0),
            wall_s=wall_s,
        )


def _count_reasons(failed: dict[int, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in failed.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def _stop_fields(decision: StopDecision) -> dict[str, Any]:
    return {"reason": decision.reason, "detail": decision.detail, "stop_round": decision.round}


def _round_record(result: RoundResult, metrics: dict[str, Any], wall_s: float) -> dict[str, Any]:
    return {
        "event": "round",
        "round": result.round,
        "status": result.status,
        "selected": len(result.selected),
        "completed": len(result.completed),
        "failed": len(result.failed),
        "rejected": result.rejected,
        # who is not in the aggregate and why (refused updates, failures and dropouts)
        "excluded": [e.to_json() for e in result.excluded],
        "num_examples": result.num_examples,
        "train_loss": result.train_loss,
        "update_norm": result.update_norm,
        "wall_s": wall_s,
        **({} if result.skip_reason is None else {"skip_reason": result.skip_reason}),
        **metrics,
        # example counts clamped to the client's bound: client -> [declared, used]
        **(
            {"clamped_examples": {str(c): [n, m] for c, n, m in result.clamped}}
            if result.clamped
            else {}
        ),
    }
