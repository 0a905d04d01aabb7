"""Post-training int8 quantization of a trained model for CPU inference on a device.

Dynamic quantization stores the weights of linear and recurrent layers as int8 and
quantizes activations on the fly from each batch's range: no data needed, the right
choice for models made of linear maps (MLPs, and fedloom's CharGRU, whose gates are
plain ``nn.Linear`` maps). Static quantization (Jacob et al., "Quantization and Training
of Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018) also
fixes the activations' scales from calibration data, so convolutions run in int8
end to end; it is done in FX graph mode (``prepare_fx`` / ``convert_fx`` with the
backend's default qconfig mapping), which needs no hand-placed quant/dequant stubs.

The int8 kernels are the backend's: fbgemm's ``"x86"`` on x86-64, ``"qnnpack"`` on ARM
(``DeviceProfile.quantization_backend``); the engine is set only inside
:func:`quantized_engine`, which restores the previous one.

Why ``torch.ao.quantization``: its successor, torchao, is not a dependency (not
installed), while torch.ao's eager and FX post-training quantization still work in the
torch this project uses and produce the TorchScript-traceable modules that export needs.
torch marks the module deprecated, so that one warning is silenced where it is called,
and nothing else.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fedloom.errors import ConfigError

Method = Literal["dynamic", "static"]
BACKENDS = ("x86", "qnnpack")
DYNAMIC_TYPES: set[type[nn.Module]] = {nn.Linear, nn.GRU, nn.LSTM}
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@contextmanager
def quantized_engine(backend: str) -> Iterator[None]:
    """Run int8 kernels of ``backend`` inside the block; the previous engine after it."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend = {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend not in torch.backends.quantized.supported_engines:
        raise ConfigError(f"backend = {backend!r} is not built into this torch")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextmanager
def torch_ao_quiet() -> Iterator[None]:
    """Silence only the deprecation notices of torch.ao's quantized tensors and observers
    (see the module docstring); every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated")
        warnings.filterwarnings("ignore", message=r".*reduce_range will be deprecated")
        yield


@contextmanager
def torchscript_quiet() -> Iterator[None]:
    """Silence only torch.jit's deprecation notices: TorchScript is the file libtorch's
    device runtimes load (torch.export's programs are not), so it is still written."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        yield


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, CONV_TYPES) for m in model.modules())


def quantize_dynamic(model: nn.Module, backend: str = "x86") -> nn.Module:
    """An int8 copy of ``model``: weights of its Linear, GRU and LSTM layers int8,
    activations quantized per batch at run time. ``model`` is left as it was."""
    with quantized_engine(backend), torch_ao_quiet():
        from torch.ao.quantization import quantize_dynamic as ao_quantize_dynamic

        return ao_quantize_dynamic(
            copy.deepcopy(model).eval(), DYNAMIC_TYPES, dtype=torch.qint8
        ).eval()


def quantize_static(
    model: nn.Module, calibration_batches: Sequence[torch.Tensor], backend: str = "x86"
) -> nn.Module:
    """An int8 copy of ``model`` (weights and activations) by FX graph mode, with the
    activations' ranges observed on ``calibration_batches``. ``model`` is left as it was."""
    if not calibration_batches:
        raise ConfigError("calibration_batches: static quantization needs at least one batch")
    with quantized_engine(backend), torch_ao_quiet():
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        float_model = copy.deepcopy(model).eval()
        prepared = prepare_fx(
            float_model,
            get_default_qconfig_mapping(backend),
            example_inputs=(calibration_batches[0],),
        )
        with torch.no_grad():
            for batch in calibration_batches:
                prepared(batch)
        return convert_fx(prepared).eval()


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what a checkpoint of it weighs."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def torchscript_bytes(model: nn.Module, example: torch.Tensor) -> int:
    """Bytes of the TorchScript file of ``model`` traced on ``example``."""
    buffer = io.BytesIO()
    with torch.no_grad(), torchscript_quiet():
        torch.jit.save(torch.jit.trace(model, example, check_trace=False), buffer)
    return buffer.getbuffer().nbytes


@dataclass(frozen=True)
class Quantized:
    """An int8 model, how it was made, and the serialized sizes of its state dict and
    its TorchScript file against the float model's."""

    model: nn.Module
    method: Method
    backend: str
    float_bytes: int
    int8_bytes: int
    float_script_bytes: int
    int8_script_bytes: int

    @property
    def size_ratio(self) -> float:
        """How many times smaller the int8 state dict is."""
        return self.float_bytes / self.int8_bytes


def batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """``x`` cut along its first dim into batches of at most ``size`` examples."""
    if size < 1:
        raise ConfigError(f"batch size = {size!r} must be >= 1")
    return list(torch.split(x, size))


def quantize(
    model: nn.Module,
    example: torch.Tensor,
    calibration: Sequence[torch.Tensor] | None = None,
    backend: str = "x86",
) -> Quantized:
    """int8 ``model`` for ``backend``: static (calibrated on the ``calibration``
    batches) when it has convolutions, dynamic otherwise; ``example`` (a batch) traces it
    for the TorchScript sizes."""
    if has_convolutions(model):
        if not calibration:
            raise ConfigError(
                "calibration: a convolutional model is quantized statically, which needs "
                "calibration batches (a few hundred training examples)"
            )
        method: Method = "static"
        int8 = quantize_static(model, calibration, backend)
    else:
        method = "dynamic"
        int8 = quantize_dynamic(model, backend)
    with quantized_engine(backend):
        int8_script = torchscript_bytes(int8, example)
    return Quantized(
        int8,
        method,
        backend,
        state_dict_bytes(model),
        state_dict_bytes(int8),
        torchscript_bytes(model, example),
        int8_script,
    )
