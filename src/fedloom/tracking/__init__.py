"""Experiment tracking (docs/tracking.md): TensorBoard, MLflow and, when installed, W&B.

``tracked_store(config, run)`` is what ``fedloom.assemble`` gives the round engine in
place of the run directory when ``[tracking] backends`` names any: every record the
run writes is then also sent to the backends (:mod:`fedloom.tracking.base`).
"""

from __future__ import annotations

import importlib.util

from fedloom.config import RunConfig
from fedloom.errors import ConfigError
from fedloom.runs import RunDirectory
from fedloom.tracking.base import Backend, TrackedStore, Tracker, TrackingWarning

__all__ = [
    "Backend",
    "TrackedStore",
    "Tracker",
    "TrackingWarning",
    "make_backends",
    "tracked_store",
]

# the module each backend needs, and how to get it
_REQUIRES = {
    "tensorboard": ("tensorboard", "pip install 'fedloom[tracking]'"),
    "mlflow": ("mlflow", "pip install 'fedloom[tracking]'"),
    "wandb": ("wandb", "pip install wandb"),
}


def make_backends(config: RunConfig, run: RunDirectory) -> list[Backend]:
    """The configured backends for the run in ``run``; a backend whose package is not
    installed is refused before the run starts (``ConfigError``)."""
    t = config.tracking
    out: list[Backend] = []
    for name in t.backends:
        module, install = _REQUIRES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"tracking.backends = {list(t.backends)!r} names {name!r}, but the {module!r} "
                f"package is not installed: {install} (or remove {name!r} from tracking.backends)"
            )
        if name == "tensorboard":
            from fedloom.tracking.tensorboard import TensorBoardBackend

            out.append(TensorBoardBackend(run.path / "tensorboard"))
        elif name == "mlflow":
            from fedloom.tracking.mlflow import MlflowBackend

            experiment = t.mlflow_experiment or config.name
            out.append(MlflowBackend(t.mlflow_uri, experiment, run.path.name, run.path))
        else:
            from fedloom.tracking.wandb import WandbBackend

            project = t.wandb_project or config.name
            out.append(WandbBackend(project, run.path.name, t.wandb_mode, run.path))
    return out


def tracked_store(config: RunConfig, run: RunDirectory) -> RunDirectory | TrackedStore:
    """``run`` itself when nothing is tracked, else ``run`` seen through a tracker."""
    if not config.tracking.backends:
        return run
    return TrackedStore(run, Tracker(config, run, make_backends(config, run)))
