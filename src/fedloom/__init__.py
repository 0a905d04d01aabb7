"""fedloom: federated learning across edge devices.

The public API is exactly ``__all__``. Names are imported lazily (PEP 562) so that
``import fedloom`` and the CLI start without loading torch or scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # configuration
    "RunConfig": "fedloom.config",
    "load_config": "fedloom.config",
    # errors
    "FedloomError": "fedloom.errors",
    "ConfigError": "fedloom.errors",
    "DataError": "fedloom.errors",
    "UpdateRejected": "fedloom.errors",
    "RejectionKind": "fedloom.errors",
    "CheckpointError": "fedloom.errors",
    # parameters and records
    "ParamLayout": "fedloom.params",
    "FlatModule": "fedloom.params",
    "TrainPlan": "fedloom.records",
    "Dispatch": "fedloom.records",
    "Update": "fedloom.records",
    "RoundResult": "fedloom.records",
    "Exclusion": "fedloom.records",
    "RoundReport": "fedloom.records",
    "ClientMetrics": "fedloom.records",
    # what is learned
    "Task": "fedloom.task",
    "Loss": "fedloom.task",
    "Metric": "fedloom.task",
    # data
    "ArrayDataset": "fedloom.data",
    "ClientPartition": "fedloom.data",
    "partition": "fedloom.data",
    "FederatedData": "fedloom.data.federated",
    # training, aggregation, server
    "TorchTrainer": "fedloom.client",
    "weighted_mean": "fedloom.aggregation",
    "make_server_optimizer": "fedloom.optim",
    "SyncServer": "fedloom.server.sync",
    "ConvergenceMonitor": "fedloom.server.convergence",
    # running: built from a config by the composition root (fedloom.assemble)
    "start_simulation": "fedloom.assemble",
    "resume_simulation": "fedloom.assemble",
    "open_deployment": "fedloom.assemble",
    "deployment_server": "fedloom.assemble",
    "RoundEngine": "fedloom.server.engine",
    "Simulation": "fedloom.sim",
    "RunDirectory": "fedloom.runs",
    "RunSummary": "fedloom.sim.runtime",
    # the library entry points
    "simulate": "fedloom.api",
    "load_model": "fedloom.api",
    # deployment over gRPC
    "DeploymentServer": "fedloom.transport.server",
    "ServerOptions": "fedloom.transport.server",
    "DeploymentClient": "fedloom.transport.client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedloom' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
