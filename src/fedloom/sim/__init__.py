"""The simulation runtime: drives the sans-IO server over in-process clients.

Names are imported lazily so that the executors (``fedloom.sim.vectorized``) load
with only numpy and torch, as the GPU check needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RunSummary": "fedloom.sim.runtime",
    "Simulation": "fedloom.sim.runtime",
    "SequentialExecutor": "fedloom.sim.executor",
    "VectorizedExecutor": "fedloom.sim.vectorized",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedloom.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
