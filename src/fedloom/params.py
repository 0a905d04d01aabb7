"""Model parameters as one flat float32 vector.

Every update, cohort, checkpoint and transform in fedloom works on a single contiguous
vector per model (a cohort is a ``[K, d]`` matrix), so clipping, compression, noise and
averaging are one vectorized operation instead of a loop over parameter tensors.
``ParamLayout`` records names, shapes and offsets to turn the vector back into tensors.

``bind_flat`` goes one step further for training: it re-points a module's parameters
(and their gradients) at views of one flat buffer, so loading a global model into the
reused model is a single ``copy_`` and an optimizer step is a handful of vector ops.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedloom.errors import FedloomError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ParamSpec:
    """One named tensor inside the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int


class ParamLayout:
    """Names, shapes and offsets of a model's parameters inside one flat vector."""

    def __init__(self, specs: list[ParamSpec]) -> None:
        self.specs = tuple(specs)
        self.dim = sum(s.numel for s in self.specs)

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> ParamLayout:
        specs, offset = [], 0
        for name, shape in shapes.items():
            numel = int(np.prod(shape, dtype=np.int64))
            specs.append(ParamSpec(name, tuple(int(s) for s in shape), offset, numel))
            offset += numel
        return cls(specs)

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> ParamLayout:
        """Layout of ``module.named_parameters()`` in registration order."""
        return cls.from_shapes({n: tuple(p.shape) for n, p in module.named_parameters()})

    def __iter__(self) -> Iterator[ParamSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamLayout) and self.specs == other.specs

    def __hash__(self) -> int:
        return hash(self.specs)

    def to_json(self) -> list[dict]:
        return [{"name": s.name, "shape": list(s.shape)} for s in self.specs]

    @classmethod
    def from_json(cls, data: list[dict]) -> ParamLayout:
        return cls.from_shapes({d["name"]: tuple(d["shape"]) for d in data})

    def check_vector(self, vec: np.ndarray | torch.Tensor, what: str = "vector") -> None:
        """Raise a clear error unless ``vec`` is a 1-D vector of length ``dim``."""
        shape = tuple(vec.shape)
        if shape != (self.dim,):
            raise FedloomError(f"{what} has shape {shape}, expected ({self.dim},) for this model")

    def unflatten(self, vec: np.ndarray) -> dict[str, np.ndarray]:
        """Named arrays that are zero-copy views of ``vec``."""
        self.check_vector(vec)
        return {s.name: vec[s.offset : s.offset + s.numel].reshape(s.shape) for s in self.specs}

    def flatten(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """One float32 vector from named arrays (names and shapes must match the layout)."""
        out = np.empty(self.dim, dtype=np.float32)
        for s in self.specs:
            if s.name not in arrays:
                raise FedloomError(f"parameter {s.name!r} is missing")
            arr = np.asarray(arrays[s.name])
            if tuple(arr.shape) != s.shape:
                raise FedloomError(
                    f"parameter {s.name!r} has shape {tuple(arr.shape)}, expected {s.shape}"
                )
            out[s.offset : s.offset + s.numel] = arr.reshape(-1)
        return out


def module_vector(module: torch.nn.Module) -> np.ndarray:
    """A float32 copy of the module's parameters as one vector."""
    import torch

    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
    return flat.numpy().copy()


class FlatModule:
    """A module whose parameters and gradients are views of two flat float32 buffers.

    ``params`` and ``grads`` are 1-D torch tensors; writing ``params`` changes the
    module's weights in place, and after ``backward()`` the whole gradient is in
    ``grads``. This is what lets one model object serve every client of a process.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        import torch

        self.module = module
        self.layout = ParamLayout.from_module(module)
        params = list(module.parameters())
        if any(p.dtype != torch.float32 for p in params):
            raise FedloomError("fedloom trains float32 models; convert the model with .float()")
        with torch.no_grad():
            self.params = torch.cat([p.detach().reshape(-1) for p in params]).contiguous()
        self.grads = torch.zeros_like(self.params)
        for p, spec in zip(params, self.layout, strict=True):
            p.data = self.params[spec.offset : spec.offset + spec.numel].view(spec.shape)
            p.grad = self.grads[spec.offset : spec.offset + spec.numel].view(spec.shape)

    def load(self, vec: np.ndarray | torch.Tensor) -> None:
        """Overwrite the weights in place with a flat vector."""
        import torch

        self.layout.check_vector(vec, "parameter vector")
        with torch.no_grad():
            src = torch.from_numpy(vec) if isinstance(vec, np.ndarray) else vec
            self.params.copy_(src)

    def vector(self) -> np.ndarray:
        """A float32 numpy copy of the current weights."""
        return self.params.detach().numpy().copy()
