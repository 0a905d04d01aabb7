"""Choosing an executor by timing it: the same small cohort trained by each candidate.

Which executor is faster depends on the model, the batch size and the machine (the
vectorized one wins on small models and loses on large convolutions on a few CPU cores),
so ``simulation.executor = "auto"`` measures instead of guessing. A trial leaves no trace
on the run: the executors keep no state between cohorts, and what training touches
outside them (the weights and buffers of the modules they train, torch's random number
generators) is restored afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from fedloom.errors import FedloomError
from fedloom.records import TrainPlan
from fedloom.sim.executor import Executor


def _modules(executor: Executor) -> list[nn.Module]:
    """The modules an executor trains with: its own, or its trainer's."""
    found = [getattr(executor, "model", None)]
    found.append(getattr(getattr(executor, "trainer", None), "model", None))
    return [m for m in found if isinstance(m, nn.Module)]


@contextmanager
def _untouched(executors: Sequence[Executor]) -> Iterator[None]:
    """Restore the executors' modules (parameters and buffers, in place, so views of
    flat buffers stay views) and torch's random state on the way out."""
    modules = [m for e in executors for m in _modules(e)]
    saved = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]
    with torch.random.fork_rng():
        try:
            yield
        finally:
            with torch.no_grad():
                for module, state in zip(modules, saved, strict=True):
                    module.load_state_dict(state)


def _time_one(
    executor: Executor,
    global_params: np.ndarray,
    client_ids: np.ndarray,
    seeds: np.ndarray,
    plan: TrainPlan,
    repeats: int,
) -> float:
    """Best seconds per client update over ``repeats`` timed cohorts, after a warm-up."""
    executor.train_cohort(global_params, client_ids, seeds, plan)  # warm-up: first-use costs
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        executor.train_cohort(global_params, client_ids, seeds, plan)
        best = min(best, time.perf_counter() - started)
    return best / len(client_ids)


def pick_faster(
    candidates: Sequence[Executor],
    global_params: np.ndarray,
    client_ids: np.ndarray,
    seeds: np.ndarray,
    plan: TrainPlan,
    repeats: int = 2,
) -> tuple[Executor, dict[str, float | str]]:
    """The candidate that trains ``client_ids`` (a small cohort, with a ``plan`` of one
    or two ``local_steps``) fastest, and every candidate's seconds per client update by
    name. A candidate that raises is skipped, its error text in place of its time;
    ``FedloomError`` if every one does."""
    if not candidates:
        raise FedloomError("pick_faster: no candidate executors")
    if len(client_ids) == 0:
        raise FedloomError("pick_faster: the trial cohort is empty")
    if repeats < 1:
        raise FedloomError(f"pick_faster: repeats = {repeats}, expected >= 1")
    ids = np.asarray(client_ids, dtype=np.int64)
    seeds = np.asarray(seeds, dtype=np.int64)
    timings: dict[str, float | str] = {}
    best: tuple[float, Executor] | None = None
    with _untouched(candidates):
        for i, executor in enumerate(candidates):
            name = executor.name if executor.name not in timings else f"{executor.name} ({i})"
            try:
                seconds = _time_one(executor, global_params, ids, seeds, plan, repeats)
            except Exception as err:  # noqa: BLE001 - the caller records why and moves on
                text = (str(err).strip().splitlines() or [""])[0][:300]
                timings[name] = f"{type(err).__name__}: {text}"
                continue
            timings[name] = seconds
            if best is None or seconds < best[0]:
                best = (seconds, executor)
    if best is None:
        failed = "; ".join(f"{n}: {t}" for n, t in timings.items())
        raise FedloomError(f"every executor failed the trial cohort ({failed})")
    return best[1], timings
