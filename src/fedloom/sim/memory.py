"""How much memory a run's settings ask for, estimated before any work starts.

Settings, not data, decide most of a run's memory: the model's parameter count times the
copies the trainer, executor, server and server optimizer keep; the cohort's ``[K, d]``
update matrix; the vectorized executor's chunk (its batch schedule grows with the batch
size, its activations with the batch and the model); and the evaluation batch.
``check_memory_for`` adds these up from the config, the built model (its parameter count,
and the bytes of its activations for one example, measured by one forward pass with
hooks) and the clients' data sizes, before any training, and refuses a run that would not
fit (the available memory, or ``simulation.memory_limit_mb``) with a one-line error naming
the setting that costs most. ``check_memory`` does the same for a built-in MLP from the config
without building it. The batch size is first capped by the largest client's data: a
batch larger than every client trains exactly as one of that size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedloom.config import RunConfig
from fedloom.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

_F32 = 4
_INDEX = 8 + 4  # one scheduled sample: int64 row index and float32 mask
# a training batch keeps every activation for the backward pass, which adds their
# gradients and the next layer's working copy
ACTIVATION_COPIES = 3
_OPT_SLOTS = {"fedavg": 0, "fedavgm": 1, "fedadagrad": 1, "fedadam": 2, "fedyogi": 2}


def effective_batch_size(batch_size: int, sizes: np.ndarray) -> int:
    """``batch_size`` capped by the largest client's data (at least 1)."""
    largest = int(sizes.max(initial=0))
    return max(1, min(int(batch_size), largest))


def parameter_count(config: RunConfig, num_features: int, num_classes: int) -> int:
    """Parameters of the configured model (weights and biases), without building it."""
    hidden = () if config.model.kind == "logistic" else config.model.hidden
    widths = [num_features, *hidden, num_classes]
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))


@dataclass(frozen=True)
class MemoryTerm:
    """One part of the estimate: the setting that drives it, its bytes, how it arises."""

    setting: str
    bytes: int
    detail: str


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the outputs of every leaf module (each call counted) in one forward pass
    of ``model`` on ``x`` (one example: ``[1, ...]``): what a training batch keeps per
    example for the backward pass. Run in eval mode without gradients (no running
    statistics change), with torch's RNG restored afterwards."""
    import torch

    total = 0

    def count(_module: nn.Module, _inputs: Any, outputs: Any) -> None:
        nonlocal total
        total += sum(t.numel() * t.element_size() for t in _tensors(outputs))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def client_bytes(
    dim: int,
    batch_size: int,
    optimizer_slots: int,
    example_bytes: float,
    activation: float,
    per_sample_grads: bool,
) -> float:
    """Peak memory of one client in a vectorized chunk: its parameters, gradient and
    working copies with ``optimizer_slots`` state vectors, and per example of the batch
    its input, its activations (``ACTIVATION_COPIES`` times ``activation`` bytes) and,
    under DP-SGD, its materialized gradient."""
    per_example = example_bytes + ACTIVATION_COPIES * activation
    if per_sample_grads:
        per_example += _F32 * dim
    return _F32 * dim * (4 + optimizer_slots) + batch_size * per_example


def _terms(
    config: RunConfig,
    d: int,
    model_setting: str,
    example_bytes: float,
    activation: float,
    sizes: np.ndarray,
    test_size: int,
) -> list[MemoryTerm]:
    """The estimate's parts for a model of ``d`` parameters whose examples take
    ``example_bytes`` and whose forward pass ``activation`` bytes per example."""
    c, srv, sim = config.client, config.server, config.simulation
    slots = _OPT_SLOTS[srv.optimizer.name]
    vectorized = sim.executor != "sequential"
    # trainer parameters and gradients, server parameters and the initial copy, the
    # round's float64 sum, optimizer state, the executor's model, a checkpoint's buffers
    copies = 4 + 2 + slots + int(vectorized) + 2 * (1 + slots)
    terms = [
        MemoryTerm(
            model_setting,
            copies * _F32 * d,
            f"{d:,} parameters x {copies} copies (trainer, server, optimizer, checkpoint)",
        )
    ]
    over = 2.0 if srv.over_selection == "auto" else float(srv.over_selection)
    k = math.ceil(srv.clients_per_round * over)
    rows = 3 + (4 if config.secagg.enabled else 0)  # server matrix, deltas, clipped rows
    terms.append(
        MemoryTerm(
            f"server.clients_per_round = {srv.clients_per_round}",
            rows * _F32 * k * d,
            f"cohort matrix [{k}, {d:,}] x {rows}",
        )
    )
    b = effective_batch_size(c.batch_size, sizes)
    largest = int(sizes.max(initial=0))
    steps = c.local_steps or c.local_epochs * -(-largest // b)
    local = 2 if c.optimizer == "adam" else (1 if c.momentum else 0)
    dp = c.dp_sgd_clip_norm is not None
    per_client = client_bytes(d, b, local, example_bytes, activation, dp) + _INDEX * steps * b
    if vectorized:
        budget = sim.memory_budget_mb * 2**20
        chunk = min(k, max(1, int(budget // per_client)))
    else:
        chunk = 1
    if sim.device == "cpu" or not vectorized:  # on an accelerator the chunk is its memory
        terms.append(
            MemoryTerm(
                f"client.batch_size = {c.batch_size}",
                int(chunk * per_client),
                f"{chunk} client(s) training at once, batch {b}, {steps} steps",
            )
        )
    e = min(config.evaluation.batch_size, max(test_size, 1))
    # without gradients only a layer's input and output are alive: the sum of all leaf
    # outputs already bounds an inference pass
    terms.append(
        MemoryTerm(
            f"evaluation.batch_size = {config.evaluation.batch_size}",
            int(e * (example_bytes + activation)),
            f"evaluation batch of {e} x {_size(example_bytes + activation)} "
            "(example and activations)",
        )
    )
    return terms


def _model_setting(config: RunConfig) -> str:
    if config.model.kind == "mlp":
        return f"model.hidden = {list(config.model.hidden)}"
    return f"model.kind = {config.model.kind!r}"


def estimate(
    config: RunConfig, num_features: int, num_classes: int, sizes: np.ndarray, test_size: int
) -> list[MemoryTerm]:
    """The run's peak memory beyond its data, part by part (bytes), for the MLP of the
    config on ``num_features`` features, without building it."""
    d = parameter_count(config, num_features, num_classes)
    hidden = () if config.model.kind == "logistic" else config.model.hidden
    # a Linear and its activation per hidden width, the logits
    activation = _F32 * (2 * sum(hidden) + num_classes)
    return _terms(
        config, d, _model_setting(config), _F32 * num_features, activation, sizes, test_size
    )


def estimate_for(
    config: RunConfig, model: nn.Module, x: np.ndarray, sizes: np.ndarray, test_size: int
) -> list[MemoryTerm]:
    """The run's peak memory beyond its data, part by part (bytes), for the built
    ``model`` on examples like ``x`` (``[n, ...]``, n >= 1; only its first example is
    used, for one probing forward pass)."""
    import torch

    d = sum(p.numel() for p in model.parameters())
    one = np.ascontiguousarray(x[:1])
    activation = activation_bytes(model, torch.from_numpy(one))
    return _terms(config, d, _model_setting(config), one.nbytes, activation, sizes, test_size)


def available_bytes() -> int | None:
    """Memory the system can still give this process (Linux ``MemAvailable``, else free
    pages from ``os.sysconf``); None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _refuse_over(config: RunConfig, terms: list[MemoryTerm]) -> int:
    """Refuse (``ConfigError``) an estimate over the bound; return its total."""
    total = sum(t.bytes for t in terms)
    limit_mb = config.simulation.memory_limit_mb
    if limit_mb is not None:
        bound, what = int(limit_mb * 2**20), "simulation.memory_limit_mb"
    else:
        bound, what = available_bytes(), "the available memory"
        if bound is None:
            return total
    if total > bound:
        big = sorted((t for t in terms if t.bytes >= total / 10), key=lambda t: -t.bytes)
        parts = "; ".join(f"{t.setting} ({t.detail}: {_size(t.bytes)})" for t in big)
        raise ConfigError(
            f"the run needs an estimated {_size(total)}, more than {what} ({_size(bound)}): "
            f"{parts}; lower {'this setting' if len(big) == 1 else 'these settings'} (or "
            "raise simulation.memory_limit_mb if the estimate is too cautious)"
        )
    return total


def check_memory(
    config: RunConfig, num_features: int, num_classes: int, sizes: np.ndarray, test_size: int
) -> int:
    """Refuse (``ConfigError``) a run of the config's MLP whose estimate exceeds the
    bound; return the estimate."""
    return _refuse_over(config, estimate(config, num_features, num_classes, sizes, test_size))


def check_memory_for(
    config: RunConfig, model: nn.Module, x: np.ndarray, sizes: np.ndarray, test_size: int
) -> int:
    """Refuse (``ConfigError``) a run of the built ``model`` on examples like ``x`` whose
    estimate exceeds the bound; return the estimate (see :func:`estimate_for`)."""
    return _refuse_over(config, estimate_for(config, model, x, sizes, test_size))
