"""The composition root: the one place that maps a ``RunConfig`` to objects.

Everything below it (the core, the round engine, the runtimes) takes constructor
arguments; this module reads the config and builds the run: data, model, trainer,
executor, privacy plan, secure aggregator, selector and cohort policy, ``SyncServer``,
registry and ``RoundEngine``, and around them a ``Simulation`` (virtual time) or a
``DeploymentServer`` (the network). ``fedloom run`` and ``fedloom server`` build through
it; so do programs that start or resume runs (:func:`start_simulation`,
:func:`resume_simulation`, :func:`open_deployment` with :func:`deployment_server`).
"""

from __future__ import annotations

import copy
import json
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

from fedloom.aggregation import Reducer
from fedloom.atomic import atomic_write_text
from fedloom.attacks import build_adversary
from fedloom.client.evaluation import Evaluation, Evaluator, ReportedEvaluation
from fedloom.client.schedule import steps_for
from fedloom.client.trainer import TorchTrainer
from fedloom.compression.adaptive import AdaptivePolicy
from fedloom.compression.codec import make_codec
from fedloom.compression.download import ModelBroadcast
from fedloom.compression.pipeline import Compression
from fedloom.config import RunConfig, parse_config, to_toml
from fedloom.config import load_config as load_run_config
from fedloom.data.arrays import ArrayDataset
from fedloom.data.federated import FederatedData, build_federated_data
from fedloom.data.storage import read_eval_set
from fedloom.edge.memory import TrainingMemory
from fedloom.edge.profiles import builtin_profile
from fedloom.errors import CheckpointError, ConfigError, FedloomError
from fedloom.models import builtin_task, model_stats
from fedloom.optim import make_server_optimizer
from fedloom.params import module_vector
from fedloom.privacy.accounting import epsilon, noise_multiplier_for
from fedloom.privacy.audit import canary_directions
from fedloom.privacy.calibration import analytic_gaussian_sigma
from fedloom.privacy.ledger import Budget, PrivacyLedger
from fedloom.privacy.tradeoff import Trial, TrialOutcome, TrialRunner
from fedloom.records import TrainPlan
from fedloom.runs import RunDirectory, keep_aside
from fedloom.secagg.cohort import SecureAggregator
from fedloom.secagg.distributed_dp import DistributedDiscreteGaussian
from fedloom.server.anomaly import AnomalyDetector, AnomalyGuard, ReputationPolicy
from fedloom.server.async_engine import AsyncEngine
from fedloom.server.asynchronous import AsyncServer
from fedloom.server.cohort import CohortPolicy
from fedloom.server.convergence import ConvergenceMonitor
from fedloom.server.engine import REGISTRY_PREFIX, EngineSettings, Evaluate, RoundEngine
from fedloom.server.local_work import LocalWorkPlanner
from fedloom.server.privacy_plan import QUORUM_STDDEV_FACTOR, PrivacyPlan
from fedloom.server.reduction import RootUpdate
from fedloom.server.registry import ClientRegistry
from fedloom.server.selection import make_selector
from fedloom.server.staleness import Staleness
from fedloom.server.sync import SyncServer
from fedloom.server.work_scheduler import WorkScheduler
from fedloom.sim import recovery
from fedloom.sim.async_runtime import META_KEY as ASYNC_META
from fedloom.sim.async_runtime import AsyncSimulation, TaskBook
from fedloom.sim.devices import DEFAULT_TIERS, Population
from fedloom.sim.executor import Executor, SequentialExecutor
from fedloom.sim.executor_trial import pick_faster
from fedloom.sim.memory import check_memory, check_memory_for, effective_batch_size
from fedloom.sim.population import build_network, build_population
from fedloom.sim.runtime import Simulation
from fedloom.sim.shard import Shard
from fedloom.sim.timeline import VirtualTime
from fedloom.sim.vectorized import VectorizedExecutor, unsupported_reason
from fedloom.task import MODULE_PREFIX, DataShape, ResolvedTask, Task, check_fit, import_task
from fedloom.tracking import tracked_store
from fedloom.transforms.base import (
    Chain,
    ClientStates,
    build_chain,
    build_sides,
)
from fedloom.transport.async_server import AsyncDeploymentServer
from fedloom.transport.messages import CompressionSpec, ModelSpec
from fedloom.transport.server import DeploymentServer, ServerOptions

log = logging.getLogger("fedloom")
# clients in the measured trial that picks the executor (``simulation.executor = "auto"``)
TRIAL_CLIENTS = 8


# settings -> core objects ----------------------------------------------------------
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
    config: RunConfig,
    trainer: TorchTrainer,
    data: FederatedData,
    shard: Shard | None = None,
    chosen: str | None = None,
) -> tuple[Executor, str]:
    """The configured executor and a note saying why it was chosen.

    ``auto`` trains a small cohort with both executors and keeps the faster (measured,
    so the choice is right for this model on this machine, never the slower one by
    default); ``chosen`` (a resumed run's start record) repeats the original choice so
    the resumed run trains exactly as the original. Under torchrun every process must
    choose alike, so there ``auto`` takes the vectorized executor whenever it can."""
    sim = config.simulation
    task = trainer.task
    reason = unsupported_reason(trainer.model)
    sequential = SequentialExecutor(trainer, data.train)
    if sim.executor == "sequential" or chosen == "sequential":
        return sequential, "requested in config" if chosen is None else "as the run began"
    vec: VectorizedExecutor | None = None
    if reason is None:
        device = resolve_device(sim.device)
        if device == "cuda" and shard is not None and torch.cuda.device_count() > 1:
            rank = int(os.environ.get("LOCAL_RANK", shard.rank))
            device = f"cuda:{rank % torch.cuda.device_count()}"
        try:
            vec = VectorizedExecutor(
                copy.deepcopy(trainer.model),
                data.train,
                device=device,
                memory_budget_mb=sim.memory_budget_mb,
                task=task,
                loss_samples=trainer.loss_samples,
            )
        except ValueError as err:  # e.g. an operation torch.func.vmap cannot batch
            reason = str(err)
    if vec is None:
        if sim.executor == "vectorized":
            raise ConfigError(f"simulation.executor = 'vectorized' is impossible: {reason}")
        log.info("using the sequential executor: %s", reason)
        return sequential, f"sequential: {reason}"
    if sim.executor == "vectorized" or chosen == "vectorized":
        why = "requested in config" if chosen is None else "as the run began"
        return vec, f"{vec.backend} gradients on {vec.device} ({why})"
    if shard is not None or vec.device.type != "cpu":
        return vec, f"{vec.backend} gradients on {vec.device}"
    return _measured_choice(config, trainer, data, sequential, vec)


def _measured_choice(
    config: RunConfig,
    trainer: TorchTrainer,
    data: FederatedData,
    sequential: Executor,
    vec: VectorizedExecutor,
) -> tuple[Executor, str]:
    """``auto``: time both executors on the same small cohort (the largest clients, two
    local steps) and keep the faster; the note gives both times."""
    sizes = data.train.sizes()
    ids = np.sort(np.argsort(-sizes, kind="stable")[: min(TRIAL_CLIENTS, int((sizes > 0).sum()))])
    if len(ids) == 0:
        return vec, f"{vec.backend} gradients on {vec.device}"
    plan = replace(plan_from_config(config, sizes), local_steps=2, local_epochs=1)
    params = module_vector(trainer.model)
    seeds = np.arange(len(ids), dtype=np.int64)
    best, timings = pick_faster([vec, sequential], params, ids, seeds, plan)
    shown = ", ".join(
        f"{name} {t * 1e3:.2f} ms" if isinstance(t, float) else f"{name} failed: {t}"
        for name, t in timings.items()
    )
    what = f"{vec.backend} gradients on {vec.device}" if best is vec else "one client at a time"
    return best, f"{what}; measured per client update: {shown}"


def monitor_from_config(config: RunConfig, task: ResolvedTask) -> ConvergenceMonitor:
    """Early stopping on ``stopping.metric`` (default: the task's first metric), in the
    direction the task gives it."""
    s = config.stopping
    metric = s.metric or task.primary
    maximize = task.maximize(metric)
    if metric == "accuracy" and s.target is not None and not 0 < s.target <= 1:
        raise ConfigError(f"stopping.target = {s.target} is not an accuracy in (0, 1]")
    return ConvergenceMonitor(
        metric=metric,
        mode="max" if maximize else "min",
        patience=s.patience,
        min_delta=s.min_delta,
        target=s.target,
        smoothing=s.smoothing,
        plateau_window=s.plateau_window,
        plateau_tolerance=s.plateau_tolerance,
    )


def privacy_plan(config: RunConfig, num_clients: int, dim: int = 0) -> PrivacyPlan:
    """The run's plan; ``dim`` (the model size) is needed by distributed DP."""
    p = config.privacy
    if p.mode == "off":
        return PrivacyPlan(enabled=False)
    k = config.server.clients_per_round
    q = k / num_clients
    rounds = config.rounds
    a = config.asynchronous
    if a.enabled:  # nobody is sampled; each client enters at most max_contributions steps
        assert a.max_contributions is not None
        k, q, rounds = a.buffer, 1.0, a.max_contributions
    sampling = "poisson" if a.enabled else p.sampling  # q = 1: unsampled
    delta = p.delta if p.delta is not None else 1.0 / num_clients**1.1
    z = p.noise_multiplier
    distributed = None
    if p.mode == "distributed":
        bits = config.secagg.bits
        try:
            distributed = (
                DistributedDiscreteGaussian(p.clip_norm, dim, k, z, bits)
                if z is not None
                # calibrated against the server, which sees each cohort: no
                # amplification by sampling (the ledger's headline, docs/privacy.md)
                else DistributedDiscreteGaussian.for_epsilon(
                    p.target_epsilon, delta, 1.0, config.rounds, p.clip_norm, dim, k, bits
                )
            )
        except ConfigError as err:
            raise ConfigError(
                f"privacy.mode = 'distributed' with secagg.bits = {bits} and "
                f"server.clients_per_round = {k}: {err}"
            ) from None
        z = distributed.noise_multiplier
    elif p.mode == "local":
        assert p.local_epsilon is not None
        # each upload is local_epsilon-LDP under replace-one (sensitivity 2C); the ledger
        # accounts the run's user-level add/remove guarantee (sensitivity C):
        # Gaussian z = sigma / C, Laplace scale / C = 2 / local_epsilon
        if p.local_mechanism == "laplace":
            z = 2.0 / p.local_epsilon
        else:
            z = analytic_gaussian_sigma(p.local_epsilon, delta, 2 * p.clip_norm) / p.clip_norm
    elif z is None:
        assert p.target_epsilon is not None
        z = noise_multiplier_for(
            p.target_epsilon,
            q,
            rounds,
            delta,
            accountant=p.accountant,
            sampling=sampling,
            population=num_clients,
        )
    budget = None if p.budget_epsilon is None else Budget(p.budget_epsilon, delta)
    return PrivacyPlan(
        enabled=True,
        local=p.mode == "local",
        mechanism_kind={"local": p.local_mechanism, "distributed": "distributed_dg"}.get(
            p.mode, "gaussian"
        ),
        local_epsilon=p.local_epsilon or 0.0,
        sampling=sampling,
        sampling_rate=q,
        population=num_clients,
        delta=delta,
        noise_multiplier=z,
        accountant=p.accountant,
        rounds=rounds,
        budget=budget,
        budget_policy=p.budget_policy,
        clip_norm=p.clip_norm,
        adaptive=p.adaptive_clipping,
        target_quantile=p.target_quantile,
        clip_learning_rate=p.clip_learning_rate,
        count_stddev=p.count_stddev,
        secure_noise=p.secure_noise,
        expected_clients=k,
        distributed=distributed,
        # the quorum is decided on a noisy count (sensitivity 1) that takes 1/9 of the
        # round's precision: the sum's multiplier grows by 6% (sync.SyncServer.close_round)
        quorum_stddev=(
            QUORUM_STDDEV_FACTOR * z
            if p.mode == "central" and config.server.quorum is not None
            else None
        ),
        per_client=a.enabled and p.mode == "central",
    )


def dp_sgd_epsilon(config: RunConfig, sizes: np.ndarray, delta: float) -> float | None:
    """Planned sample-level epsilon of client-side DP-SGD for the worst-off client.

    Conservative: the client is assumed to take part in every round, and its
    mini-batches (shuffled epochs) are accounted as Poisson samples at rate
    ``batch_size / n`` of the smallest client, over all its local steps. None when
    DP-SGD is off or adds no noise.
    """
    c = config.client
    if c.dp_sgd_clip_norm is None or not c.dp_sgd_noise_multiplier:
        return None
    n = int(np.min(sizes))
    plan = TrainPlan(
        local_epochs=c.local_epochs, local_steps=c.local_steps, batch_size=c.batch_size
    )
    steps = int(steps_for(np.array([n]), plan)[0])
    rate = min(1.0, c.batch_size / n)
    return epsilon(c.dp_sgd_noise_multiplier, rate, steps * config.rounds, delta, accountant="rdp")


def cohort_policy(config: RunConfig, privacy: PrivacyPlan) -> CohortPolicy:
    """Who a round asks: DP fixes the sampling (the accountant's), else the selector."""
    sampling = privacy.sampling if privacy.enabled else "selector"
    return CohortPolicy(
        config.server.clients_per_round,
        config.server.over_selection,
        sampling,  # type: ignore[arg-type]
        privacy.sampling_rate,
    )


def engine_settings(config: RunConfig) -> EngineSettings:
    return EngineSettings(
        rounds=config.rounds,
        seed=config.seed,
        deadline_s=config.server.deadline_s,
        evaluate_every=config.evaluation.every,
        federated_every=config.evaluation.federated_every,
        checkpoint_every=config.checkpoint.every,
        checkpoint_keep=config.checkpoint.keep,
        secagg_min_clients=config.secagg.min_clients,
        config_text=recovery.config_text(config),
    )


def secure_aggregator(
    config: RunConfig, dim: int, max_examples: int, secure_noise: bool, shard: Shard | None
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
        max_examples,
        s.neighbours,
        s.threshold,
        s.clip,
        s.bits,
        s.rounding,
        config.seed,
        secure_noise=secure_noise,
        signed=s.signed,
        min_clients=s.min_clients,
        **secure_sparsity(config),
    )


def secure_sparsity(config: RunConfig) -> dict[str, Any]:
    """Random-k with a shared seed under secure aggregation (the one codec that is linear
    in the masked sum): the aggregator's kept share and seed; empty otherwise."""
    c = config.compression
    if not (config.secagg.enabled and c.codec == "randomk"):
        return {}
    return {
        "keep_fraction": float(c.params.get("fraction", 0.01)),
        "keep_seed": int(c.params["shared_seed"]),
    }


def make_canaries(config: RunConfig, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Audit canaries: random directions at the clip norm, each included w.p. 1/2."""
    m = config.privacy.audit_canaries
    if not m:
        return None
    directions = canary_directions(m, dim, np.random.default_rng([config.seed, 10]))
    included = np.random.default_rng([config.seed, 11]).random(m) < 0.5
    return directions, included


def registry_name(shard: Shard | None) -> str:
    """The registry's file: rank 0's is the run's, each extra rank keeps its own copy."""
    if shard is None or shard.is_writer:
        return "clients.sqlite"
    return f"clients.rank{shard.rank}.sqlite"


def open_registry(
    config: RunConfig,
    run: RunDirectory,
    shard: Shard | None,
    data: FederatedData,
    population: Population,
) -> ClientRegistry:
    """The client registry in the run directory, with every client registered (the
    label entropy is a data-quality signal of class labels; other targets register 0)."""
    cfg = config.registry
    registry = ClientRegistry(
        run.path / registry_name(shard), cfg.reliability_decay, cfg.duration_smoothing
    )
    train = data.train
    entropy = np.zeros(train.num_clients)
    if train.targets == "classes":
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


def local_work_planner(
    config: RunConfig, model: torch.nn.Module, sample_shape: tuple[int, ...], int_inputs: bool
) -> LocalWorkPlanner:
    """``[edge]``'s planner for ``model``: its training memory (parameters and one
    example's activations, measured) and the run's optimizer state."""
    dtype = torch.int64 if int_inputs else torch.float32
    stats = model_stats(model, sample_shape, dtype)
    c, e = config.client, config.edge
    memory = TrainingMemory(stats.parameters, stats.activation_bytes, c.optimizer, c.momentum > 0)
    return LocalWorkPlanner(
        memory,
        memory_aware=e.memory_aware_batch,
        reduced_precision=e.precision == "auto",
        qat=e.qat,
        min_steps=e.min_steps,
    )


def population_capabilities(
    config: RunConfig, population: Population
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each simulated device's memory, bf16 and fp16: its tier's built-in profile
    (``edge.profile`` without a tier, or for devices not generated by tier) with the
    device's own memory."""
    default = builtin_profile(config.edge.profile)
    profiles = [builtin_profile(t.name) for t in DEFAULT_TIERS] + [default]
    tier = population.tier.astype(np.int64)
    if config.devices.kind != "tiered":
        tier = np.full(len(tier), -1)
    index = np.where(tier >= 0, tier, len(profiles) - 1)
    bf16 = np.array([p.bf16 for p in profiles])[index]
    fp16 = np.array([p.fp16 for p in profiles])[index]
    return population.memory_mb.copy(), bf16, fp16


# runs -----------------------------------------------------------------------------
def reduce_step(
    config: RunConfig,
    trainer: TorchTrainer,
    root_data: ArrayDataset | None,
    sizes: np.ndarray | None,
) -> tuple[Reducer | None, RootUpdate | None]:
    """The server's reducer (None: FedAvg's mean) and, for FLTrust, the server's own
    update on ``root_data`` (trained like a client, from the round's start model).
    FedNova's normalization follows the clients' plan (its momentum, lr and prox_mu).
    Under secure aggregation norm bounding runs on the clients (the server has only the
    sum): see ``RunConfig.client_transform_specs``."""
    agg = config.aggregation
    if not agg.robust or config.secagg.enabled:
        return None, None
    from fedloom.aggregation.robust import build_reducer

    plan = plan_from_config(config, sizes)
    reducer = build_reducer(agg.rule, agg.params, agg.bucketing, plan=plan)
    if not reducer.needs_reference:
        return reducer, None
    if root_data is None:
        raise ConfigError(
            f"aggregation.rule = {agg.rule!r} needs a root dataset on the server; a "
            "deployment server holds no training data (run it in simulation)"
        )
    x, y = torch.as_tensor(root_data.x), torch.as_tensor(root_data.y)
    out = torch.empty(trainer.dim)

    def root_update(start: np.ndarray, round: int) -> np.ndarray:
        seed = int(np.random.default_rng([config.seed, 31, round]).integers(2**62))
        trainer.train(torch.from_numpy(start), x, y, plan, seed, out)
        return out.numpy().copy()

    return reducer, root_update


def anomaly_guard(config: RunConfig, num_clients: int, dim: int) -> AnomalyGuard | None:
    """Anomaly screening and client reputation (``[anomaly]``; None: off)."""
    a = config.anomaly
    if not a.enabled:
        return None
    return AnomalyGuard(
        AnomalyDetector(num_clients, dim, a.threshold, a.history_smoothing),
        ReputationPolicy(a.reputation_decay, a.quarantine_below, a.probation_rounds),
        a.exclude_flagged,
    )


def root_dataset(config: RunConfig, data: FederatedData) -> ArrayDataset | None:
    """FLTrust's root dataset: ``aggregation.root_examples`` training examples drawn
    with the run's seed, as the paper samples its clean root data (None: not needed)."""
    if config.aggregation.rule != "fltrust" or config.secagg.enabled:
        return None
    pool = data.train
    n = len(pool.y)
    size = min(config.aggregation.root_examples, n)
    take = np.sort(np.random.default_rng([config.seed, 29]).choice(n, size=size, replace=False))
    return ArrayDataset(pool.x[take], pool.y[take], pool.num_classes)


def transforms(
    config: RunConfig, dim: int, shard: Shard | None, deployment: bool
) -> tuple[Chain | None, Chain | None, ClientStates | None]:
    """The server's transform chain, the decoders (server halves of the clients'
    two-sided transforms) and, in simulation, the home of every simulated client's
    transform state (``[transforms]``; a deployed client keeps its own)."""
    t = config.transforms
    server_chain = build_chain(t.specs("server")) if t.server else None
    specs = config.client_transform_specs()
    client_chain, decoders = build_sides(specs) if specs else (None, None)
    stateful = [c for c in (client_chain, decoders) if c is not None and c.stateful]
    if shard is not None and stateful:
        raise ConfigError(
            "transforms.client keeps state (per client, or a decoder's on the server), "
            "which a sharded run (torchrun) would split over its processes; run it in one "
            "process"
        )
    if client_chain is None or deployment:
        return server_chain, decoders, None
    return server_chain, decoders, ClientStates(client_chain, dim)


def compression(
    config: RunConfig, model: torch.nn.Module, shard: Shard | None, deployment: bool
) -> tuple[Compression | None, ClientStates | None]:
    """The run's upload compression (``[compression]``) and, in simulation, the home of
    every simulated client's compression state (a deployed client keeps its own)."""
    c = config.compression
    if not c.enabled or config.secagg.enabled:  # secagg: inside the sum (secure_sparsity)
        return None, None
    shapes = [tuple(p.shape) for p in model.parameters()]
    comp = Compression.build(c.codec, c.params, shapes, c.error_feedback, c.warmup_rounds)
    dim = sum(int(np.prod(s)) for s in shapes)
    if shard is not None:
        raise ConfigError(
            f"compression.codec = {c.codec!r} under torchrun: each process would encode "
            "and time only its own clients' uploads; run compressed uploads in one process"
        )
    return comp, None if deployment else ClientStates(comp, dim)  # type: ignore[arg-type]


def model_broadcast(
    config: RunConfig, model: torch.nn.Module, params: np.ndarray
) -> ModelBroadcast | None:
    """Compressed downloads (``compression.download``): the broadcast model clients hold."""
    c = config.compression
    if c.download == "none":
        return None
    shapes = [tuple(p.shape) for p in model.parameters()]
    return ModelBroadcast(make_codec(c.download, c.download_params, shapes), params, config.seed)


def resolve_task(config: RunConfig, shape: DataShape, task: Task | None = None) -> ResolvedTask:
    """The run's task for data of ``shape``: ``task`` when one is given (from Python), a
    ``module:`` path from ``model.kind``, or the built-in kind built for the shape."""
    m = config.model
    if task is None:
        if m.kind.startswith(MODULE_PREFIX):
            task = import_task(m.kind, m.options)
        else:
            task = builtin_task(
                m.kind,
                shape.sample_shape,
                shape.targets,
                shape.outputs,
                tuple(m.hidden),
                m.norm,
                m.width,
            )
    return task.resolved(shape.targets)


def task_record(
    task: ResolvedTask, model: torch.nn.Module, shape: DataShape, int_inputs: bool
) -> dict[str, Any]:
    """The start record's description of the task: what it is, what it reports, the
    data's shape, and how big its model is (parameters, FLOPs and activation bytes of one
    example; ``int_inputs``: examples are token ids)."""
    dtype = torch.int64 if int_inputs else torch.float32
    stats = model_stats(model, shape.sample_shape, dtype)
    return {
        "name": task.name,
        "reference": task.task.reference,
        "targets": task.targets,
        "loss": task.loss.name,
        "metrics": list(task.metrics),
        "maximize": [m for m, spec in task.metrics.items() if spec.maximize],
        "input_shape": list(shape.sample_shape),
        "num_classes": shape.num_classes,
        "outputs": shape.outputs,
        "parameters": stats.parameters,
        "flops": stats.flops,
        "activation_bytes": stats.activation_bytes,
    }


def build_simulation(
    config: RunConfig,
    run: RunDirectory,
    shard: Shard | None = None,
    data: FederatedData | None = None,
    deployment: bool = False,
    task: Task | None = None,
    executor: str | None = None,
) -> Simulation:
    """Every object of the run in ``run``, nothing recorded yet.

    ``data`` replaces the configured dataset and ``task`` the configured model (for
    programmatic use; a resumed run rebuilds both from the config, so pass the same data
    and task to :func:`resume_simulation`). ``executor``: the executor the run began
    with, repeated on resume.

    ``deployment``: the rounds are driven by real clients (the gRPC server). Then every
    random draw that protects someone comes from the OS, whatever the config says:
    central DP noise and adaptive clipping's count noise (as with
    ``privacy.secure_noise``) and the cohort draws (``SyncServer.os_selection``), because
    every client learns the run seed. The simulator keeps them seeded by the run seed, so
    a simulated run can be replayed exactly; ``Simulation.randomness`` says which holds,
    and the start and resume records carry it.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    data = data or build_federated_data(config.data, config.partition, config.seed)
    root = root_dataset(config, data)  # the server's clean root data (FLTrust)
    # simulated Byzantine clients: their examples poisoned (the same on every resume)
    adversary, data = build_adversary(config.attack, data, config.seed)
    for name, given, found in (
        ("num_features", config.model.num_features, data.num_features),
        ("num_classes", config.model.num_classes, data.num_classes),
        ("input_shape", config.model.input_shape, data.sample_shape),
    ):
        if given is not None and tuple(np.atleast_1d(given)) != tuple(np.atleast_1d(found)):
            raise ConfigError(f"model.{name} = {given}, but the data have {found}")
    shape = DataShape.of(data.train.x, data.train.y, data.num_classes)
    resolved = resolve_task(config, shape, task)
    sizes = data.train.sizes()
    test_size = len(data.test) + (0 if data.holdout is None else len(data.holdout.y))
    if task is None and config.model.kind in ("mlp", "logistic"):  # known without building it
        check_memory(config, int(np.prod(shape.sample_shape)), shape.outputs, sizes, test_size)
    model = resolved.task.build_model(config.seed)
    check_fit(resolved, model, data.train.x[:2], data.train.y[:2], data.num_classes)
    # every model, measured once built, before anything of the run is allocated
    check_memory_for(config, model, data.train.x, sizes, test_size)
    trainer = TorchTrainer(model, resolved, loss_samples=config.edge.loss_samples)
    executor_used, note = make_executor(config, trainer, data, shard, executor)
    population = build_population(config.devices, data.train.num_clients, config.seed)
    virtual_time = VirtualTime(population, build_network(config.network, population), config.seed)
    planner = local_work_planner(
        config, model, shape.sample_shape, np.issubdtype(data.train.x.dtype, np.integer)
    )
    planner.declare_arrays(np.arange(len(population)), *population_capabilities(config, population))
    clients = ClientFacts(
        data.train.num_clients,
        int(sizes.max()),
        sizes,
        lambda: open_registry(config, run, shard, data, population),
        Evaluator(trainer, data.test, data.holdout, config.evaluation.batch_size, task=resolved),
        data.holdout is not None,
        config.server.max_examples_per_client,
    )
    # the asynchronous runtime's own state, carried by the engine's checkpoints
    book = TaskBook() if config.asynchronous.enabled else None

    def checkpoint_meta() -> dict[str, Any]:
        meta: dict[str, Any] = {"clock": virtual_time.clock.state_dict()}
        return meta if book is None else meta | {ASYNC_META: book.meta()}

    engine = _engine(
        config,
        run,
        shard,
        clients,
        trainer,
        deployment,
        # a deployment's rounds happen in wall-clock time, a simulation's in virtual time
        now=time.time if deployment else lambda: virtual_time.now,
        checkpoint_meta=checkpoint_meta,
        checkpoint_arrays=None if book is None else book.arrays,
        root_data=root,
        local_work=planner,
    )
    if book is not None:
        assert isinstance(engine, AsyncEngine)
        sim: Simulation = AsyncSimulation(
            config, run, engine, data, trainer, executor_used, note, virtual_time, book, deployment
        )
    else:
        sim = Simulation(
            config, run, engine, data, trainer, executor_used, note, virtual_time, shard, deployment
        )
    sim.adversary = adversary
    return sim


@dataclass(frozen=True)
class ClientFacts:
    """What the round engine is built from about the clients: in simulation the
    partition the simulator holds; in a deployment the config (N, the size cap) and
    what clients report when they join."""

    num_clients: int
    max_examples: int  # secure aggregation's public bound W on the FedAvg weights
    sizes: np.ndarray | None  # every client's data size (caps the batch size), if known
    registry: Callable[[], ClientRegistry]
    evaluator: Evaluate
    has_holdout: bool
    weight_cap: int | None  # the most examples one update may weigh (None: no cap)


def _engine(
    config: RunConfig,
    run: RunDirectory,
    shard: Shard | None,
    clients: ClientFacts,
    trainer: TorchTrainer,
    deployment: bool,
    now: Callable[[], float],
    checkpoint_meta: Callable[[], dict[str, Any]] | None,
    checkpoint_arrays: Callable[[], dict[str, np.ndarray]] | None = None,
    root_data: ArrayDataset | None = None,
    local_work: LocalWorkPlanner | None = None,
) -> RoundEngine:
    """The run's round engine over ``trainer``'s model: privacy plan, secure aggregator,
    cohort policy, server (with its transform chain and reducer), registry, evaluator,
    canaries. ``root_data``: the server's clean root dataset (FLTrust); ``local_work``:
    each dispatch fitted to its device."""
    model = trainer.model
    opt = config.server.optimizer.model_dump()
    sel, srv = config.selection, config.server
    # the engine writes every record through the store: tracked when [tracking] says so
    store = tracked_store(config, run) if shard is None or shard.is_writer else run
    num_clients = clients.num_clients
    params = module_vector(model)
    privacy = privacy_plan(config, num_clients, params.size)
    if deployment:
        privacy = replace(privacy, secure_noise=True)
    if shard is not None and privacy.secure_noise:
        raise ConfigError(
            "privacy.secure_noise under torchrun would give each process different "
            "noise; run it in one process"
        )
    secure = secure_aggregator(
        config, params.size, clients.max_examples, privacy.secure_noise, shard
    )
    cohort = cohort_policy(config, privacy)
    server_chain, decoders, client_states = transforms(config, params.size, shard, deployment)
    upload, upload_states = compression(config, model, shard, deployment)
    reducer, root = reduce_step(config, trainer, root_data, clients.sizes)
    # what both servers (rounds or asynchronous steps) are built from
    common: dict[str, Any] = dict(
        params=params,
        num_clients=num_clients,
        plan=plan_from_config(config, clients.sizes),
        optimizer=make_server_optimizer(opt.pop("name"), **opt),
        monitor=monitor_from_config(config, trainer.task),
        seed=config.seed,
        dp=privacy.mechanism(config.seed),
        os_selection=deployment,
        max_examples=clients.weight_cap,
        transforms=server_chain,
        client_states=client_states,
        compression=upload,
        upload_states=upload_states,
        reducer=reducer,
        root_update=root,
        guard=anomaly_guard(config, num_clients, params.size),
    )
    if config.asynchronous.enabled:
        if shard is not None:
            raise ConfigError(
                f"asynchronous.mode = {config.asynchronous.mode!r} under torchrun: an "
                "asynchronous run steps on each arrival, in one process"
            )
        a = config.asynchronous
        server = AsyncServer(
            **common,
            mode=a.mode,  # type: ignore[arg-type]
            buffer_size=a.buffer,
            staleness=Staleness(a.staleness, a.staleness_a, a.staleness_b),
            max_staleness=a.max_staleness,
            mixing=a.mixing,
            selector=make_selector(sel.strategy, sel.max_share, **sel.params),
        )
        scheduler = WorkScheduler(
            a.concurrency,
            a.target_rate,
            None if a.server_uplink_kbps is None else a.server_uplink_kbps * 125.0,
            4 * params.size,
            a.backoff_s,
            a.max_backoff_s,
        )
        return AsyncEngine(
            server,
            clients.registry(),
            scheduler,
            engine_settings(config),
            store,
            clients.evaluator,
            has_holdout=clients.has_holdout,
            now=now,
            privacy=privacy,
            max_contributions=a.max_contributions,
            checkpoint_meta=checkpoint_meta,
            checkpoint_arrays=checkpoint_arrays,
            local_work=local_work,
        )
    server = SyncServer(
        **common,
        clients_per_round=srv.clients_per_round,
        selector=cohort.selector(sel.strategy, sel.max_share, sel.params),
        quorum=srv.quorum,
        quorum_policy=srv.quorum_policy,
        max_retries=srv.max_retries,
        decoders=decoders,
        broadcast=model_broadcast(config, model, params),
    )
    return RoundEngine(
        server,
        clients.registry(),
        cohort,
        engine_settings(config),
        store,
        clients.evaluator,
        has_holdout=clients.has_holdout,
        now=now,
        privacy=privacy,
        secure=secure,
        canaries=make_canaries(config, server.dim),
        writer=shard is None or shard.is_writer,
        checkpoint_meta=checkpoint_meta,
        local_work=local_work,
    )


def start_simulation(
    config: RunConfig,
    shard: Shard | None = None,
    data: FederatedData | None = None,
    deployment: bool = False,
    task: Task | None = None,
) -> Simulation:
    """A new run in a fresh directory, with the initial model evaluated as round 0
    (``data``, ``task``, ``deployment``: see :func:`build_simulation`)."""
    if shard is None:
        run = RunDirectory.create(config)
    else:  # rank 0 picks the directory, the others learn its name
        path = RunDirectory.create(config).path if shard.is_writer else None
        run = RunDirectory(shard.broadcast(path))
    return _begin(config, run, shard, data, deployment, task, fresh=True)


def _ledger_path(run: RunDirectory, shard: Shard | None) -> Path | None:
    """``privacy.json`` in the run directory (other ranks keep their ledger in memory)."""
    return run.path / "privacy.json" if shard is None or shard.is_writer else None


def _begin(
    config: RunConfig,
    run: RunDirectory,
    shard: Shard | None,
    data: FederatedData | None,
    deployment: bool,
    task: Task | None,
    fresh: bool,
) -> Simulation:
    """Build the run in ``run``, record round 0 and checkpoint it, so that a run stopped
    at any later moment can be resumed (``fresh``: the directory is new, and removed
    again if the run is refused before it starts)."""
    try:
        sim = build_simulation(config, run, shard, data, deployment, task)
        sim.engine.ledger = sim.privacy.ledger(_ledger_path(run, shard))
    except FedloomError:  # refused before any round (e.g. over the privacy budget)
        if fresh and (shard is None or shard.is_writer):
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    _record_start(
        config,
        sim.engine,
        sim.data,
        sim.executor.name,
        sim.executor_note,
        shard.world if shard else 1,
        sim.randomness(),
        task_record(
            sim.trainer.task,
            sim.trainer.model,
            DataShape.of(sim.data.train.x, sim.data.train.y, sim.data.num_classes),
            np.issubdtype(sim.data.train.x.dtype, np.integer),
        ),
    )
    return sim


def _record_start(
    config: RunConfig,
    engine: RoundEngine,
    data: FederatedData,
    executor: str,
    note: str,
    processes: int,
    randomness: dict[str, str],
    task: dict[str, Any],
) -> None:
    """Round 0: the start record (the initial model evaluated) and its checkpoint."""
    sizes = data.train.sizes()
    engine.append(
        {
            "event": "start",
            "round": 0,
            "clients": data.train.num_clients,
            "params": engine.server.dim,
            "executor": executor,
            "executor_note": note,
            "processes": processes,
            "randomness": randomness,
            "task": task,
            "dp_sgd_epsilon": dp_sgd_epsilon(config, sizes, 1.0 / sizes.sum() ** 1.1),
            **engine.evaluate(federated=data.holdout is not None),
        }
    )
    engine.checkpoint(None)


def resume_simulation(
    path: Path,
    shard: Shard | None = None,
    data: FederatedData | None = None,
    deployment: bool = False,
    task: Task | None = None,
) -> Simulation:
    """Continue the run in ``path`` from its newest checkpoint, with the executor it began
    with (``data``, ``task``, ``deployment``: see :func:`build_simulation`; a run started
    with a task object from Python needs the same task again)."""
    run = RunDirectory.open(path)
    config = run.load_config()
    found = run.latest_checkpoint()
    if found is None:
        return _restart(config, run, shard, data, deployment, task)
    ckpt_path, state = found
    if "clock" not in state["meta"]:
        raise CheckpointError(
            f"checkpoint {str(ckpt_path)!r} was written by a deployment server (it has no "
            f"virtual clock); continue it with `fedloom server --resume {run.path}`"
        )
    notes = _repair(config, run, shard, state)
    start = next((r for r in run.records() if r.get("event") == "start"), {})
    check_task_given(
        start,
        task,
        config,
        run.path,
        "resume it with the same task: resume_simulation(path, task=...)",
    )
    executor = start.get("executor") if config.simulation.executor == "auto" else None
    sim = build_simulation(config, run, shard, data, deployment, task, executor)
    sim.virtual_time.clock.load_state_dict(state["meta"]["clock"])
    if isinstance(sim, AsyncSimulation):
        sim.restore(state)
    _continue(sim.engine, run, shard, state, ckpt_path, notes, sim.randomness())
    return sim


# what `fedloom run --resume RUN --set ...` may change: how long the run goes on and how it
# uses the machine (recovery.MAY_CHANGE, less the run's place, which RUN already names)
EXTENDABLE = tuple(k for k in recovery.MAY_CHANGE if k not in ("name", "output_dir"))


def extend_run(path: Path, overrides: list[str]) -> dict[str, list[Any]]:
    """Apply ``--set`` overrides to a run's ``config.toml`` before it is resumed, e.g.
    ``rounds=N`` to continue a finished run to N rounds; returns ``{setting: [old, new]}``.

    The resumed run then computes exactly what an uninterrupted run of N rounds computes
    (the rounds already done are identical, and nothing else changes). Refused: settings
    other than ``EXTENDABLE`` and ``checkpoint.*``; ``rounds`` not above the rounds done;
    a run that stopped for another reason than its round count (early stopping,
    convergence, the privacy budget, refused updates: it would stop again at once, and a
    longer run with those settings would have stopped there too); a privacy budget
    (``privacy.target_epsilon``) whose noise was calibrated for the old round count.
    """
    run = RunDirectory.open(path)
    before = run.load_config()
    after = load_run_config(run.config_path, overrides)
    keys = [item.partition("=")[0].strip() for item in overrides]
    for key in keys:
        if key not in EXTENDABLE and not key.startswith("checkpoint."):
            raise ConfigError(
                f"--set {key}: a resumed run keeps the settings it computed with; only "
                f"{', '.join(EXTENDABLE)} and checkpoint.* may change (start a new run to "
                f"change {key})"
            )
    changes = recovery.config_changes(recovery.config_text(before), after, run.config_path)
    found = run.latest_checkpoint()
    if "rounds" in keys and found is not None:
        meta = found[1]["meta"]
        done = int(meta["round"])
        if "clock" not in meta:
            raise CheckpointError(
                f"run {str(run.path)!r} was served to real clients; continue it with "
                f"`fedloom server --resume {run.path}`"
            )
        if after.rounds <= done:
            raise ConfigError(
                f"--set rounds={after.rounds}: the run {str(run.path)!r} has already done "
                f"{done} rounds; extend it with rounds above {done}"
            )
        stop = meta.get("stopped")
        if stop:
            raise ConfigError(
                f"--set rounds={after.rounds}: the run {str(run.path)!r} stopped at round "
                f"{stop.get('round')} for {stop.get('reason')} ({stop.get('detail')}), not "
                "for lack of rounds: it would stop again at once; start a new run with "
                "other [stopping] settings"
            )
        if after.privacy.mode != "off" and after.privacy.target_epsilon is not None:
            raise ConfigError(
                f"--set rounds={after.rounds}: privacy.target_epsilon = "
                f"{after.privacy.target_epsilon} calibrated the noise for rounds = "
                f"{before.rounds}; a longer run needs other noise: start a new run"
            )
    if changes:
        atomic_write_text(run.config_path, to_toml(after))
    return changes


def check_task_given(
    start: dict[str, Any], task: Task | None, config: RunConfig, path: Path, remedy: str
) -> None:
    """A run that began with a task object from Python (no import path, and not the
    config's built-in ``model.kind``) is rebuilt only from a task again: from the config
    it would be another model. ``remedy``: the call to make instead."""
    info = start.get("task") or {}
    if task is None and info.get("reference") is None and info.get("name") != config.model.kind:
        raise ConfigError(
            f"run {str(path)!r} trained task {info.get('name')!r} given from Python; {remedy}"
        )


def _continue(
    engine: RoundEngine,
    run: RunDirectory,
    shard: Shard | None,
    state: dict,
    ckpt_path: Path,
    notes: dict[str, Any],
    randomness: dict[str, str],
) -> None:
    """A freshly built engine as of the checkpoint ``state``: server, counters, registry,
    the ledger as saved; ``metrics.jsonl`` cut back to the checkpoint; the resume record."""
    engine.server.load_state_dict(state)
    engine.load_state(state)
    _restore_registry(engine, run, state)
    if engine.privacy.enabled:  # append-only: releases made after the checkpoint stay
        engine.ledger = _reopen_ledger(run, shard)
    if engine.writer and (aside := run.truncate_records(engine.server.round)) is not None:
        notes["damaged_records"] = f"kept aside as {aside.name}"
    engine.append(
        {
            "event": "resume",
            "round": engine.server.round,
            "checkpoint": ckpt_path.name,
            "randomness": randomness,
            **notes,
        }
    )


def _reopen_ledger(run: RunDirectory, shard: Shard | None) -> PrivacyLedger:
    """The run's ledger as saved, every release kept (other ranks get rank 0's copy)."""
    path = _ledger_path(run, shard)
    if path is not None:
        ledger = PrivacyLedger.load(path)
        if shard is not None:
            shard.broadcast(ledger.to_json())
        return ledger
    assert shard is not None
    return PrivacyLedger.from_json(shard.broadcast(None))


def _repair(
    config: RunConfig, run: RunDirectory, shard: Shard | None, state: dict
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
        notes["damaged_checkpoints"] = recovery.set_aside_damaged_checkpoints(run, run.skipped)
    registry = recovery.prepare_registry(run.path / registry_name(shard))
    if registry is not None:
        notes["registry"] = registry
    return notes


def _restore_registry(engine: RoundEngine, run: RunDirectory, state: dict) -> None:
    """The registry as of the checkpoint: its own snapshot or, when the database was lost
    or damaged, the copy of that snapshot the checkpoint carries."""
    registry, attempts = engine.registry, engine.attempts
    if attempts in registry.snapshot_rounds():
        registry.restore(attempts)
        return
    arrays = {
        k.removeprefix(REGISTRY_PREFIX): v
        for k, v in state["arrays"].items()
        if k.startswith(REGISTRY_PREFIX)
    }
    if not arrays:
        raise CheckpointError(
            f"registry {str(registry.path)!r} has no snapshot of round {attempts} and the "
            f"checkpoint carries no copy of it; start the run again with "
            f"`fedloom run {run.config_path}`"
        )
    registry.restore_snapshot_arrays(attempts, arrays)


def _restart(
    config: RunConfig,
    run: RunDirectory,
    shard: Shard | None,
    data: FederatedData | None,
    deployment: bool,
    task: Task | None,
) -> Simulation:
    """Resume a run stopped before its round-0 checkpoint: nothing was trained or released
    yet, so it begins again in its own directory, and what the first attempt wrote is kept
    aside (``<name>.unfinished-<n>``). A run with rounds recorded but no checkpoint left
    is refused."""
    _set_aside_unfinished(run, shard)
    return _begin(config, run, shard, data, deployment, task, fresh=False)


def _set_aside_unfinished(run: RunDirectory, shard: Shard | None) -> None:
    """Before a run stopped ahead of its round-0 checkpoint begins again: refuse one with
    rounds recorded (its state is lost), keep the first attempt's files aside."""
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


# the deployment ---------------------------------------------------------------------
# A deployment server holds no client data (docs/architecture.md, "Deployment over
# gRPC"). A client may report at most this many examples when it joins (a larger report
# is refused), unless server.max_examples_per_client says otherwise; no update weighs
# more in FedAvg. Under secure aggregation it is also the public bound W of the encoded
# weights (min(n, W) / W): set it near the largest client's size for precision.
DEPLOYMENT_MAX_EXAMPLES = 100_000
# one example's shape and the classes of the built-in and standard datasets, known
# without loading them
_SOURCE_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((64,), 10),
    "mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "femnist": ((1, 28, 28), 62),
    "shakespeare": ((80,), 80),
}


def deployment_cap(config: RunConfig) -> int:
    """The most examples a deployed client may report at its join and weigh with."""
    return config.server.max_examples_per_client or DEPLOYMENT_MAX_EXAMPLES


@dataclass
class DeploymentRun:
    """What a deployment server drives: the run's config, directory and round engine, the
    model's shape (from the config, or the central evaluation set) and that set, when the
    server was given one. No client data, no executor and no virtual time: the clients
    hold their data and train, the network is the clock."""

    config: RunConfig
    run_dir: RunDirectory
    engine: RoundEngine
    shape: DataShape
    task: ResolvedTask
    model: torch.nn.Module  # the initial model (its weights live in the engine's server)
    eval_set: ArrayDataset | None = None

    @property
    def num_features(self) -> int:
        return int(np.prod(self.shape.sample_shape))

    @property
    def num_classes(self) -> int | None:
        return self.shape.num_classes

    def randomness(self) -> dict[str, str]:
        return self.engine.privacy.randomness(True, _dp_sgd(self.config))


def _dp_sgd(config: RunConfig) -> bool:
    c = config.client
    return c.dp_sgd_clip_norm is not None and bool(c.dp_sgd_noise_multiplier)


def deployment_shape(config: RunConfig, eval_set: ArrayDataset | None) -> DataShape:
    """The shape of a deployment's data, from what the server may know without client
    data: ``model.input_shape`` (or ``model.num_features``), ``model.num_classes`` and
    ``model.targets``, else the shape of a built-in or standard data source (digits,
    synthetic, mnist, cifar10, femnist, shakespeare), else the central evaluation set.
    Refused in one line when none gives it, or when they disagree."""
    m, d = config.model, config.data
    shapes = {**_SOURCE_SHAPES, "synthetic": ((d.synthetic.num_features,), d.synthetic.num_classes)}
    builtin: tuple[tuple[int, ...] | None, int | None] = shapes.get(d.source, (None, None))
    shape: tuple[int, ...] | None = m.input_shape or (
        (m.num_features,) if m.num_features else builtin[0]
    )
    regression = eval_set is not None and eval_set.num_classes is None
    targets = m.targets or ("values" if regression else "classes")
    classes = None if targets == "values" else (m.num_classes or builtin[1])
    if eval_set is not None:
        found = DataShape.of(eval_set.x, eval_set.y, eval_set.num_classes)
        if shape is not None and int(np.prod(shape)) != int(np.prod(found.sample_shape)):
            raise ConfigError(
                f"--eval-data examples have shape {list(found.sample_shape)} but the model takes "
                f"{list(shape)} (model.input_shape / model.num_features or data.source = "
                f"{d.source!r})"
            )
        if found.targets != targets and m.targets is not None:
            raise ConfigError(
                f"--eval-data holds {found.targets} targets but model.targets = {m.targets!r}"
            )
        if classes is not None and found.num_classes is not None:
            top = int(eval_set.y.max())
            if top >= classes:
                raise ConfigError(
                    f"--eval-data has label {top} but the model has {classes} classes "
                    f"(model.num_classes or data.source = {d.source!r})"
                )
        shape = shape or found.sample_shape
        classes = classes or found.num_classes
        if targets == "values":
            return DataShape(tuple(shape), targets, None, found.outputs)
    if shape is None or (classes is None and targets != "values"):
        raise ConfigError(
            "a deployment server holds no client data, so the model's shape must be given: "
            "set model.num_features (or model.input_shape) and model.num_classes in the "
            "config (or give --eval-data FILE.npz)"
        )
    if targets == "values":
        return DataShape(tuple(shape), targets, None, 1)
    assert classes is not None
    return DataShape(tuple(shape), targets, classes, classes)


def _check_deployment(config: RunConfig, eval_set: ArrayDataset | None) -> None:
    """Refuse what a server without client data cannot do, before anything is built."""
    if config.partition.num_clients < 1:
        raise ConfigError(
            "a deployment needs partition.num_clients (the number of clients N, which the "
            "privacy accountant uses too); the server does not read the data to count them"
        )
    s = config.stopping
    if (
        eval_set is None
        and config.secagg.enabled
        and (s.target is not None or s.patience is not None or s.plateau_window is not None)
    ):
        raise ConfigError(
            f"stopping on {s.metric} needs an evaluation: give the server --eval-data "
            "FILE.npz (under secure aggregation clients report no metrics of their own)"
        )


def _no_evaluation(params: np.ndarray, federated: bool = False) -> Evaluation:
    """A deployment under secure aggregation without a central evaluation set: nothing is
    evaluated (clients send nothing about themselves but masked inputs)."""
    return Evaluation({})


def _deployment_evaluator(
    config: RunConfig, trainer: TorchTrainer, eval_set: ArrayDataset | None
) -> Evaluate:
    """The central set's evaluator; without one, the clients' reported evaluations of the
    model they received (none under secure aggregation)."""
    if eval_set is not None:
        return Evaluator(trainer, eval_set, None, config.evaluation.batch_size, task=trainer.task)
    return _no_evaluation if config.secagg.enabled else ReportedEvaluation()


def open_deployment_registry(
    config: RunConfig, run: RunDirectory, population: Population
) -> ClientRegistry:
    """The registry of a deployment: clients ``0 .. N-1`` (``partition.num_clients``)
    registered as unknown (data size 0, label entropy 0) with the configured device
    profiles, until each joins and reports its data (``ClientRegistry.report``). A
    resumed run's registry keeps the reports it holds."""
    cfg = config.registry
    registry = ClientRegistry(
        run.path / registry_name(None), cfg.reliability_decay, cfg.duration_smoothing
    )
    n = config.partition.num_clients
    if registry.num_clients == 0:
        registry.register(
            np.zeros(n, np.int64),
            np.zeros(n),
            tier=population.tier,
            compute_ms_per_sample=population.compute_ms_per_sample,
            up_kbps=population.up_kbps,
            down_kbps=population.down_kbps,
        )
    elif registry.num_clients != n:
        raise CheckpointError(
            f"registry {str(registry.path)!r} holds {registry.num_clients} clients, the "
            f"config {n} (partition.num_clients)"
        )
    return registry


def _build_deployment(
    config: RunConfig, run: RunDirectory, eval_set: ArrayDataset | None
) -> DeploymentRun:
    """The deployment's objects in ``run``, nothing recorded yet, and no client data: the
    model's shape and N come from the config (or the central evaluation set), each
    client's data size from its join. Every draw that protects someone comes from the OS
    (see :func:`build_simulation`). The registry registers the configured device
    profiles as the simulator does; measured bandwidth then replaces them."""
    if config.threads:
        torch.set_num_threads(config.threads)
    _check_deployment(config, eval_set)
    shape = deployment_shape(config, eval_set)
    task = resolve_task(config, shape)
    model = task.task.build_model(config.seed)
    if eval_set is not None:
        check_fit(task, model, eval_set.x[:2], eval_set.y[:2], shape.num_classes)
    trainer = TorchTrainer(model, task)
    n = config.partition.num_clients
    population = build_population(config.devices, n, config.seed)
    clients = ClientFacts(
        n,
        deployment_cap(config),
        None,  # unknown: a client's batch is capped by its own data
        lambda: open_deployment_registry(config, run, population),
        _deployment_evaluator(config, trainer, eval_set),
        False,
        deployment_cap(config),
    )
    int_inputs = any(isinstance(m, torch.nn.Embedding) for m in model.modules())
    planner = local_work_planner(config, model, shape.sample_shape, int_inputs)
    engine = _engine(config, run, None, clients, trainer, True, time.time, None, local_work=planner)
    return DeploymentRun(config, run, engine, shape, task, model, eval_set)


def _begin_deployment(
    config: RunConfig, run: RunDirectory, fresh: bool, eval_set: ArrayDataset | None
) -> DeploymentRun:
    """A new deployment in ``run``: its start record (round 0, the initial model evaluated
    on the central set if there is one) and checkpoint."""
    try:
        deployed = _build_deployment(config, run, eval_set)
        deployed.engine.ledger = deployed.engine.privacy.ledger(_ledger_path(run, None))
    except FedloomError:  # refused before any round (e.g. over the privacy budget)
        if fresh:
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    engine = deployed.engine
    if eval_set is not None:
        evaluation = f"central evaluation set (--eval-data, {len(eval_set.y)} examples)"
    elif config.secagg.enabled:
        evaluation = (
            "none: no central evaluation set (--eval-data) was given and under secure "
            "aggregation clients report no metrics, so rounds record no evaluation"
        )
    else:
        evaluation = (
            "reported by clients: no central evaluation set (--eval-data) was given, so "
            "fed_* are the clients' evaluations of the model they received on their own "
            "hold-outs (what they claim; none from clients without a hold-out)"
        )
    engine.append(
        {
            "event": "start",
            "round": 0,
            "clients": config.partition.num_clients,
            "params": engine.server.dim,
            "executor": "clients",
            "executor_note": "each client trains on its own device",
            "processes": 1,
            "randomness": deployed.randomness(),
            # the worst-off client's DP-SGD epsilon needs its data size: each client knows it
            "task": task_record(
                deployed.task,
                deployed.model,
                deployed.shape,
                any(isinstance(m, torch.nn.Embedding) for m in deployed.model.modules()),
            ),
            "dp_sgd_epsilon": None,
            "evaluation": evaluation,
            **engine.evaluate(),
        }
    )
    engine.checkpoint(None)
    return deployed


def open_deployment(
    config: RunConfig | None, resume: Path | None, eval_data: Path | None = None
) -> DeploymentRun:
    """The run a deployment server drives: new for ``config``, or the run in ``resume``
    continued from its newest checkpoint (repaired and checked as a simulation's). The
    server builds no dataset and no partition; ``eval_data``: an optional central
    evaluation set (``.npz`` with ``x``, ``y``; give it again on resume)."""
    saved = config if resume is None else RunDirectory.open(resume).load_config()
    assert saved is not None
    eval_set = None
    if eval_data is not None:
        eval_set = read_eval_set(eval_data, saved.model.num_classes)
    _check_deployment(saved, eval_set)  # before a run directory exists
    deployment_shape(saved, eval_set)
    if resume is None:
        return _begin_deployment(saved, RunDirectory.create(saved), True, eval_set)
    run = RunDirectory.open(resume)
    config = run.load_config()
    found = run.latest_checkpoint()
    if found is None:
        _set_aside_unfinished(run, None)
        return _begin_deployment(config, run, False, eval_set)
    ckpt_path, state = found
    notes = _repair(config, run, None, state)
    deployed = _build_deployment(config, run, eval_set)
    _continue(deployed.engine, run, None, state, ckpt_path, notes, deployed.randomness())
    return deployed


def deployment_server(run: DeploymentRun, options: ServerOptions) -> DeploymentServer:
    """The gRPC server driving ``run``'s round engine with real clients: the model spec
    clients build their model from, the client transform chain they run, and the cap on
    the example count a client may report at its join."""
    config = run.config
    m, shape = config.model, run.shape
    spec = ModelSpec(
        m.kind,
        tuple(m.hidden),
        shape.sample_shape,
        shape.targets,
        shape.outputs,
        config.seed,
        m.norm,
        json.dumps(m.options) if m.options else "",
        m.width,
    )
    kind = AsyncDeploymentServer if isinstance(run.engine, AsyncEngine) else DeploymentServer
    return kind(
        run.engine,  # type: ignore[arg-type]
        options,
        spec,
        config.client_transform_specs(),
        max_examples=deployment_cap(config),
        compression=compression_spec(config),
        adaptive=AdaptivePolicy(config.compression.margin) if config.compression.adaptive else None,
        # asynchronous runs have no round deadline to fit work to (refused at load)
        **({} if kind is AsyncDeploymentServer else {"partial_work": partial_work(config)}),
    )


def partial_work(config: RunConfig) -> int | None:
    """The fewest local steps worth asking of a client whose full work would miss the
    deadline (``server.accept_partial``: 1; ``edge.local_work = "adaptive"``:
    ``edge.min_steps``), or None: every client gets the full work."""
    if config.edge.local_work == "adaptive":
        return config.edge.min_steps
    return 1 if config.server.accept_partial else None


def compression_spec(config: RunConfig) -> CompressionSpec | None:
    """What a deployed client is told of the run's compression (None: off)."""
    c = config.compression
    upload = c.enabled and not config.secagg.enabled  # secagg: inside the masked sum
    if not upload and c.download == "none":
        return None
    return CompressionSpec(
        c.codec if upload else "",
        json.dumps(c.params),
        c.error_feedback,
        c.warmup_rounds,
        c.download if c.download != "none" else "",
        json.dumps(c.download_params),
    )


def trial_config(base: RunConfig, trial: Trial) -> RunConfig:
    """``base`` with ``trial``'s privacy settings (and cohort size, rounds, clip norm where
    it gives them), as one experiment of ``fedloom.privacy.sweep`` / ``plan``."""
    data = base.model_dump(mode="json", exclude_none=True)
    data["name"] = f"{base.name}-{trial.name}"
    privacy = data.setdefault("privacy", {})
    privacy.pop("noise_multiplier", None)
    privacy.pop("local_epsilon", None)
    privacy["mode"] = trial.mode
    if trial.target_epsilon is None:
        privacy.pop("target_epsilon", None)
    else:
        privacy["target_epsilon"] = trial.target_epsilon
    if trial.clip_norm is not None:
        privacy["clip_norm"] = trial.clip_norm
    if trial.clients_per_round is not None:
        data.setdefault("server", {})["clients_per_round"] = trial.clients_per_round
    if trial.rounds is not None:
        data["rounds"] = trial.rounds
    return parse_config(data, f"trial {trial.name}")


def trial_runner(base: RunConfig) -> TrialRunner:
    """The runner ``fedloom.privacy.sweep`` / ``plan`` take: each trial is a new simulated
    run of ``base`` with the trial's settings, in its own run directory."""

    def run(trial: Trial) -> TrialOutcome:
        sim = start_simulation(trial_config(base, trial))
        summary = sim.run()
        return TrialOutcome(
            accuracy=summary.accuracy,
            best_accuracy=summary.best_accuracy,
            noise_multiplier=sim.privacy.noise_multiplier if sim.privacy.enabled else 0.0,
            spent_epsilon=sim.ledger.epsilon() if sim.ledger else math.inf,
            run=str(sim.run_dir.path),
        )

    return run
