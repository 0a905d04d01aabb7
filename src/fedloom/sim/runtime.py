"""Run a complete federated experiment in one process, with checkpoints and resume.

``Simulation`` wires the core together from a ``RunConfig``: data and partition, the
model (one reused object), the sans-IO ``SyncServer``, an executor, evaluation and
the run directory. Every ``checkpoint.every`` rounds it saves the server state; a
resumed run rebuilds everything from the saved config and seed, loads the newest
checkpoint and continues to the same final model an uninterrupted run reaches.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedloom.client.schedule import examples_seen
from fedloom.client.trainer import TorchTrainer, evaluate_model
from fedloom.config import RunConfig
from fedloom.data.federated import FederatedData, build_federated_data
from fedloom.errors import CheckpointError, ConfigError, FedloomError
from fedloom.models import build_model
from fedloom.optim import make_server_optimizer
from fedloom.params import module_vector
from fedloom.records import Dispatch, RoundResult, TrainPlan
from fedloom.runs import RunDirectory
from fedloom.server.convergence import ConvergenceMonitor, StopDecision
from fedloom.server.sync import SyncServer
from fedloom.sim.executor import Executor, SequentialExecutor, run_dispatches
from fedloom.sim.population import build_network, build_population
from fedloom.sim.shard import Shard
from fedloom.sim.timeline import RoundOutcome, VirtualTime
from fedloom.sim.vectorized import VectorizedExecutor, unsupported_reason

log = logging.getLogger("fedloom")


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


def plan_from_config(config: RunConfig) -> TrainPlan:
    c = config.client
    return TrainPlan(
        local_epochs=c.local_epochs,
        local_steps=c.local_steps,
        batch_size=c.batch_size,
        optimizer=c.optimizer,
        lr=c.lr,
        momentum=c.momentum,
        nesterov=c.nesterov,
        betas=c.betas,
        eps=c.eps,
        weight_decay=c.weight_decay,
        prox_mu=c.prox_mu,
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


class Simulation:
    """One experiment bound to its run directory."""

    def __init__(
        self,
        config: RunConfig,
        run: RunDirectory,
        shard: Shard | None = None,
        data: FederatedData | None = None,
    ) -> None:
        """``data`` replaces the configured dataset (for programmatic use; a resumed run
        rebuilds its data from the config, so pass the same data to ``resume``)."""
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        self.run_dir = run
        self.shard = shard
        self.writer = shard is None or shard.is_writer
        self.data: FederatedData = data or build_federated_data(
            config.data, config.partition, config.seed
        )
        model = build_model(
            config.model, self.data.num_features, self.data.num_classes, config.seed
        )
        self.trainer = TorchTrainer(model)
        self.executor, self.executor_note = make_executor(config, self.trainer, self.data, shard)
        opt = config.server.optimizer.model_dump()
        self.server = SyncServer(
            params=module_vector(model),
            num_clients=self.data.train.num_clients,
            clients_per_round=config.server.clients_per_round,
            plan=plan_from_config(config),
            optimizer=make_server_optimizer(opt.pop("name"), **opt),
            monitor=monitor_from_config(config),
            seed=config.seed,
        )
        self.test_tensors = (torch.from_numpy(self.data.test.x), torch.from_numpy(self.data.test.y))
        population = build_population(config.devices, self.data.train.num_clients, config.seed)
        self.virtual_time = VirtualTime(
            population, build_network(config.network, population), config.seed
        )
        self.stopped: StopDecision | None = None

    # construction ------------------------------------------------------------
    @classmethod
    def start(
        cls, config: RunConfig, shard: Shard | None = None, data: FederatedData | None = None
    ) -> Simulation:
        """A new run in a fresh directory, with the initial model evaluated as round 0."""
        if shard is None:
            run = RunDirectory.create(config)
        else:  # rank 0 picks the directory, the others learn its name
            path = RunDirectory.create(config).path if shard.is_writer else None
            run = RunDirectory(shard.broadcast(path))
        sim = cls(config, run, shard, data)
        sim._append(
            {
                "event": "start",
                "round": 0,
                "clients": sim.data.train.num_clients,
                "params": sim.server.dim,
                "executor": sim.executor.name,
                "executor_note": sim.executor_note,
                "processes": shard.world if shard else 1,
                **sim.evaluate(federated=sim.data.holdout is not None),
            }
        )
        return sim

    @classmethod
    def resume(
        cls, path: Path, shard: Shard | None = None, data: FederatedData | None = None
    ) -> Simulation:
        """Continue the run in ``path`` from its newest checkpoint."""
        run = RunDirectory.open(path)
        sim = cls(run.load_config(), run, shard, data)
        found = run.latest_checkpoint()
        if found is None:
            raise CheckpointError(f"run {str(path)!r} has no checkpoint to resume from")
        ckpt_path, state = found
        sim.server.load_state_dict(state)
        sim.virtual_time.clock.load_state_dict(state["meta"]["clock"])
        stop = state["meta"].get("stopped")
        sim.stopped = StopDecision(**stop) if stop else None
        if sim.writer:
            run.truncate_records(sim.server.round)
        sim._append({"event": "resume", "round": sim.server.round, "checkpoint": ckpt_path.name})
        return sim

    # running -----------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.stopped is not None or self.server.round >= self.config.rounds

    def run(self, on_round: Callable[[dict[str, Any]], None] | None = None) -> RunSummary:
        """Run rounds until the configured count or a stop decision."""
        started = time.perf_counter()
        while not self.finished:
            record = self.step()
            if on_round is not None:
                on_round(record)
        if self.writer and not any(r.get("event") == "stop" for r in self.run_dir.records()):
            reason = self.stopped or StopDecision(
                "max_rounds", self.server.round, f"completed {self.config.rounds} rounds"
            )
            self._append({"event": "stop", "round": self.server.round, **_stop_fields(reason)})
        if self.shard is not None:  # every rank returns after rank 0 finished writing
            self.shard.broadcast(None)
        return self.summary(time.perf_counter() - started)

    def step(self) -> dict[str, Any]:
        """One synchronous round: dispatch, play it in virtual time, train whoever delivers,
        aggregate, evaluate, record."""
        t0 = time.perf_counter()
        vt = self.virtual_time
        available = vt.available()
        while len(available) == 0:
            if not vt.wait_for_clients():
                raise FedloomError(f"at virtual time {vt.now:.0f} s no client will ever be online")
            available = vt.available()
        dispatches = self.server.begin_round(available)
        outcome = self._play(dispatches)
        delivered = set(outcome.delivered.tolist())
        for cid, reason in outcome.failed.items():
            self.server.fail(cid, reason)
        todo = [d for d in dispatches if d.client_id in delivered]
        shard = self.shard
        mine = todo if shard is None else shard.mine(todo)
        updates = run_dispatches(self.executor, self.server.params, mine)
        if shard is not None and shard.mode == "gather":
            updates = [u for part in shard.gather(updates) for u in part]
        for update in updates:
            self.server.receive(update)
        combine = shard.allreduce if shard is not None and shard.mode == "allreduce" else None
        result = self.server.close_round(combine)
        rnd = result.round
        ev = self.config.evaluation
        metrics: dict[str, Any] = {}
        last = rnd >= self.config.rounds
        if rnd % ev.every == 0 or last:
            fed = self.data.holdout is not None and (
                last or (ev.federated_every and rnd % ev.federated_every == 0)
            )
            metrics = self.evaluate(federated=bool(fed))
            self.stopped = self.server.observe(metrics)
        record = _round_record(result, metrics, time.perf_counter() - t0)
        record |= {
            "virtual_time": outcome.end,
            "round_virtual_s": outcome.end - outcome.start,
            "events": outcome.events,
            "dropped": _count_reasons(outcome.failed),
        }
        self._append(record)
        every = self.config.checkpoint.every
        if (every and rnd % every == 0) or self.finished:
            self._checkpoint(self.stopped)
        return record

    def _play(self, dispatches: list[Dispatch]) -> RoundOutcome:
        """Play the round's timeline: who delivers, who drops, when the round ends."""
        ids = np.array([d.client_id for d in dispatches], dtype=np.int64)
        plan = self.server.plan
        samples = examples_seen(self.data.train.sizes()[ids], plan)
        model_bytes = 4 * self.server.dim
        return self.virtual_time.play_round(
            self.server.round + 1,
            ids,
            samples,
            model_bytes,
            model_bytes,
            self.config.server.deadline_s,
        )

    def _append(self, record: dict[str, Any]) -> None:
        if self.writer:
            self.run_dir.append(record)

    def _checkpoint(self, stop: StopDecision | None) -> None:
        if not self.writer:
            return
        state = self.server.state_dict()
        state["meta"]["stopped"] = stop.__dict__ if stop else None
        state["meta"]["clock"] = self.virtual_time.clock.state_dict()
        self.run_dir.save_checkpoint(self.server.round, state, self.config.checkpoint.keep)

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
        "selected": len(result.selected),
        "completed": len(result.completed),
        "failed": len(result.failed),
        "rejected": result.rejected,
        "num_examples": result.num_examples,
        "train_loss": result.train_loss,
        "update_norm": result.update_norm,
        "wall_s": wall_s,
        **metrics,
    }
