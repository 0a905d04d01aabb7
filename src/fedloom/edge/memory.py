"""How much memory local training of a model needs, and the largest batch that fits.

The estimate is what training holds at its peak: the parameters, their gradients, the
global model kept for the delta (and FedProx's anchor), the optimizer state (momentum:
one copy, Adam: two) and, per example of the batch, the forward activations kept for the
backward pass plus as much again for their gradients while it runs. Activations are the
model's own measurement (``models.stats.ModelStats.activation_bytes``, every leaf
module's output); under bf16/fp16 autocast they take half the bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedloom.edge.profiles import Precision

MB = float(1 << 20)
UNLIMITED = 1 << 30  # the batch a device without a memory limit holds
BACKWARD_FACTOR = 2.0  # activations kept by the forward pass + their gradients in backward


@dataclass(frozen=True)
class TrainingMemory:
    """``parameters`` (count) and ``activation_bytes`` (one example's forward, fp32)
    of a model; ``optimizer``: ``"sgd"`` with or without momentum, or ``"adam"``."""

    parameters: int
    activation_bytes: int
    optimizer: str = "sgd"
    momentum: bool = False

    @property
    def fixed_bytes(self) -> float:
        """What does not grow with the batch: parameters, gradients, the global copy and
        the optimizer state, all float32."""
        state = 2 if self.optimizer == "adam" else int(self.momentum)
        return 4.0 * self.parameters * (3 + state)

    def per_example_bytes(self, precision: Precision = "fp32") -> float:
        scale = 1.0 if precision == "fp32" else 0.5
        return BACKWARD_FACTOR * self.activation_bytes * scale

    def bytes(self, batch_size: int, precision: Precision = "fp32") -> float:
        """Peak bytes of training with ``batch_size`` examples per step."""
        return self.fixed_bytes + batch_size * self.per_example_bytes(precision)

    def largest_batch(self, memory_mb: float, precision: Precision = "fp32") -> int:
        """The largest batch whose training fits ``memory_mb`` (0: not even one example;
        a huge number for unlimited memory)."""
        if math.isinf(memory_mb):
            return UNLIMITED
        free = memory_mb * MB - self.fixed_bytes
        if free < 0:
            return 0
        per = self.per_example_bytes(precision)
        return int(min(free // per, UNLIMITED)) if per > 0 else UNLIMITED
