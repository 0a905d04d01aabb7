"""How much memory a run's settings ask for, estimated before any work starts.

Settings, not data, decide most of a run's memory: the model's parameter count times the
copies the trainer, executor, server and server optimizer keep; the cohort's ``[K, d]``
update matrix; the vectorized executor's chunk (its batch schedule grows with the batch
size); and the evaluation batch. ``check_memory`` adds these up from the config and the
clients' data sizes, before the model is even built, and refuses a run that would not fit
(the available memory, or ``simulation.memory_limit_mb``) with a one-line error naming the
setting that costs most. The batch size is first capped by the largest client's data:
a batch larger than every client trains exactly as one of that size.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from fedloom.config import RunConfig
from fedloom.errors import ConfigError

_F32 = 4
_INDEX = 8 + 4  # one scheduled sample: int64 row index and float32 mask
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


def estimate(
    config: RunConfig, num_features: int, num_classes: int, sizes: np.ndarray, test_size: int
) -> list[MemoryTerm]:
    """The run's peak memory beyond its data, part by part (bytes)."""
    d = parameter_count(config, num_features, num_classes)
    c, srv, sim = config.client, config.server, config.simulation
    slots = _OPT_SLOTS[srv.optimizer.name]
    vectorized = sim.executor != "sequential"
    # trainer parameters and gradients, server parameters and the initial copy, the
    # round's float64 sum, optimizer state, the executor's model, a checkpoint's buffers
    copies = 4 + 2 + slots + int(vectorized) + 2 * (1 + slots)
    hidden = () if config.model.kind == "logistic" else config.model.hidden
    shown = "model.kind = 'logistic'" if not hidden else f"model.hidden = {list(hidden)}"
    terms = [
        MemoryTerm(
            shown,
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
    widths = sum(hidden) + num_classes
    local = 2 if c.optimizer == "adam" else (1 if c.momentum else 0)
    per_sample = num_features + 6 * widths
    if c.dp_sgd_clip_norm is not None:
        per_sample += d  # per-sample gradients
    per_client = _F32 * (d * (4 + local) + b * per_sample) + _INDEX * steps * b
    if vectorized:
        budget = sim.memory_budget_mb * 2**20
        chunk = min(k, max(1, int(budget // per_client)))
    else:
        chunk = 1
    if sim.device == "cpu" or not vectorized:  # on an accelerator the chunk is its memory
        terms.append(
            MemoryTerm(
                f"client.batch_size = {c.batch_size}",
                chunk * per_client,
                f"{chunk} client(s) training at once, batch {b}, {steps} steps",
            )
        )
    e = min(config.evaluation.batch_size, max(test_size, 1))
    terms.append(
        MemoryTerm(
            f"evaluation.batch_size = {config.evaluation.batch_size}",
            3 * _F32 * e * (num_features + widths),
            f"evaluation batch of {e} x {num_features + widths:,} activations",
        )
    )
    return terms


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


def check_memory(
    config: RunConfig, num_features: int, num_classes: int, sizes: np.ndarray, test_size: int
) -> int:
    """Refuse (``ConfigError``) a run whose estimate exceeds the bound; return the estimate."""
    terms = estimate(config, num_features, num_classes, sizes, test_size)
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
