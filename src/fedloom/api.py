"""The library entry points: run a simulated experiment from Python, load a trained model.

``simulate`` is what ``fedloom run`` does, for a program or a notebook: any config (a
path, a dict, a ``RunConfig`` or the built-in default), any task (``fedloom.Task``) and
data (``fedloom.FederatedData``), a typed callback per round, a progress bar that renders
in a terminal and in Jupyter (rich), and a ``RunSummary`` carrying the trained model's
``state_dict``. ``load_model`` rebuilds the trained ``nn.Module`` of a run directory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedloom.config import RunConfig, load_config, parse_config
from fedloom.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from torch import nn

    from fedloom.data.federated import FederatedData
    from fedloom.records import RoundReport
    from fedloom.sim.runtime import RunSummary, Simulation
    from fedloom.task import Task


def as_config(config: RunConfig | Mapping[str, Any] | str | Path | None) -> RunConfig:
    """A ``RunConfig`` from any of the forms ``simulate`` accepts."""
    if config is None or isinstance(config, str | Path):
        return load_config(None if config is None else Path(config))
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, Mapping):
        return parse_config(dict(config), "simulate(config=...)")
    raise ConfigError(f"config must be a path, a dict or a RunConfig, got {type(config).__name__}")


def simulate(
    config: RunConfig | Mapping[str, Any] | str | Path | None = None,
    *,
    task: Task | None = None,
    data: FederatedData | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
    progress: bool = True,
    in_memory: bool = False,
    resume: str | Path | None = None,
) -> RunSummary:
    """Run a simulated federated experiment and return its summary with the trained model.

    ``task`` and ``data`` replace the config's model and dataset; ``on_round`` receives
    each recorded round's typed report; ``progress`` shows a progress bar. ``in_memory``:
    the run's files (records, checkpoints, registry) live in a temporary directory that is
    removed when the run ends, so nothing is left on disk and ``summary.path`` is None.
    ``resume``: continue the run in that directory (pass the same ``task`` and ``data``
    when the run was started with them).
    """
    from fedloom.assemble import resume_simulation, start_simulation

    if resume is not None:
        if config is not None or in_memory:
            raise ConfigError("simulate(resume=...) takes the run's saved config, in its directory")
        sim = resume_simulation(Path(resume), data=data, task=task)
        return _finish(sim, on_round, progress, keep=True)
    cfg = as_config(config)
    if not in_memory:
        return _finish(start_simulation(cfg, data=data, task=task), on_round, progress, keep=True)
    with tempfile.TemporaryDirectory(prefix="fedloom-") as tmp:
        cfg = cfg.model_copy(update={"output_dir": Path(tmp)})
        sim = start_simulation(cfg, data=data, task=task)
        summary = _finish(sim, on_round, progress, keep=False)
    return replace(summary, path=None)


def _finish(
    sim: Simulation,
    on_round: Callable[[RoundReport], None] | None,
    progress: bool,
    keep: bool,
) -> RunSummary:
    """Run ``sim`` to its end and add the trained model to its summary (``keep``: also
    write the run's plots next to its records)."""
    if progress:
        from fedloom.progress import run_with_progress

        summary = run_with_progress(sim, on_round)
    else:
        summary = sim.run(on_round)
    if keep:
        from fedloom.report import write_plots

        write_plots(sim.run_dir)
    sim.trainer.flat.load(sim.server.params)
    state = {k: v.detach().clone() for k, v in sim.trainer.model.state_dict().items()}
    return replace(summary, state_dict=state)


def load_model(run_dir: str | Path, task: Task | None = None) -> nn.Module:
    """The trained model of the run in ``run_dir`` (its newest checkpoint), built from the
    run's config, or from ``task`` for a run whose task was given from Python. Buffers
    (e.g. BatchNorm statistics) are not federated and keep their initial values."""
    from fedloom.assemble import check_task_given, resolve_task
    from fedloom.client.trainer import TorchTrainer
    from fedloom.runs import RunDirectory
    from fedloom.task import DataShape

    run = RunDirectory.open(Path(run_dir))
    config = run.load_config()
    found = run.latest_checkpoint()
    if found is None:
        raise CheckpointError(f"run {str(run.path)!r} has no checkpoint to load a model from")
    _, state = found
    start = next((r for r in run.records() if r.get("event") == "start"), {})
    info = start.get("task")
    if info is None:
        raise CheckpointError(f"run {str(run.path)!r} records no task (no start record)")
    check_task_given(
        start, task, config, run.path, "load it with the same task: load_model(run_dir, task=...)"
    )
    shape = DataShape(
        tuple(info["input_shape"]), info["targets"], info["num_classes"], info["outputs"]
    )
    resolved = resolve_task(config, shape, task)
    trainer = TorchTrainer(resolved.task.build_model(config.seed), resolved)
    trainer.flat.load(state["arrays"]["params"])
    return trainer.model.eval()
