"""The simulation runtime: drives the sans-IO server over in-process clients."""

from fedloom.sim.executor import SequentialExecutor
from fedloom.sim.runtime import RunSummary, Simulation

__all__ = ["RunSummary", "SequentialExecutor", "Simulation"]
