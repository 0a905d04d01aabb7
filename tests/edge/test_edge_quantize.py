"""int8 post-training quantization: dynamic for linear models, static (FX) for CNNs."""

import pytest
import torch
from edge_models import TRAIN, digits, images, lenet, mlp

from fedloom.edge.quantize import (
    batches,
    quantize,
    quantize_dynamic,
    quantize_static,
    quantized_engine,
    state_dict_bytes,
)
from fedloom.errors import ConfigError
from fedloom.models.char import CharGRU

REL_TOL = 0.05  # ||int8 logits - float logits|| / ||float logits|| on these models


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


def relative_error(q: torch.Tensor, f: torch.Tensor) -> float:
    return float((q - f).norm() / f.norm())


@torch.no_grad()
def test_dynamic_int8_mlp_agrees_and_is_smaller():
    x = digits()[0][TRAIN:]
    model = mlp()
    int8 = quantize_dynamic(model)
    with quantized_engine("x86"):
        q = int8(x)
    f = model(x)
    assert (
        float((f.argmax(-1) == digits()[1][TRAIN:]).float().mean()) >= 0.85
    )  # it learned (the last examples are the hardest)
    assert agreement(q, f) >= 0.95
    assert relative_error(q, f) <= REL_TOL
    assert state_dict_bytes(model) >= 3 * state_dict_bytes(int8)
    assert type(model[0]) is torch.nn.Linear  # the float model is left as it was


@torch.no_grad()
def test_dynamic_int8_on_random_inputs():
    x = torch.randn(500, 64, generator=torch.Generator().manual_seed(1))
    with quantized_engine("x86"):
        q = quantize_dynamic(mlp())(x)
    assert agreement(q, mlp()(x)) >= 0.95


@torch.no_grad()
def test_static_int8_lenet_agrees():
    x = images()
    int8 = quantize_static(lenet(), batches(x[:256], 32), "x86")
    with quantized_engine("x86"):
        q = int8(x[TRAIN:])
    f = lenet()(x[TRAIN:])
    assert agreement(q, f) >= 0.95
    assert relative_error(q, f) <= REL_TOL


@torch.no_grad()
def test_quantize_chooses_static_for_convolutions_and_reports_sizes():
    x = images()
    conv = quantize(lenet(), x[:4], batches(x[:64], 32))
    assert conv.method == "static"
    linear = quantize(mlp(), digits()[0][:4])
    assert linear.method == "dynamic"
    assert linear.size_ratio >= 3.5
    assert linear.float_script_bytes > 3 * linear.int8_script_bytes


# torch's dynamic linear always asks for reduce_range, which qnnpack notes it ignores
@pytest.mark.filterwarnings("ignore:Currently, qnnpack incorrectly ignores reduce_range")
@torch.no_grad()
def test_qnnpack_backend_runs():
    x = digits()[0][TRAIN:]
    int8 = quantize_dynamic(mlp(), "qnnpack")
    with quantized_engine("qnnpack"):
        assert agreement(int8(x), mlp()(x)) >= 0.95


@torch.no_grad()
def test_char_gru_linear_maps_are_quantized():
    torch.manual_seed(0)
    model = CharGRU(20, (32,)).eval()
    tokens = torch.randint(0, 20, (64, 10), generator=torch.Generator().manual_seed(0))
    int8 = quantize_dynamic(model)
    assert any("quantized" in type(m).__module__ for m in int8.modules())
    with quantized_engine("x86"):
        assert relative_error(int8(tokens), model(tokens)) <= REL_TOL


def test_engine_is_restored_and_bad_input_refused():
    before = torch.backends.quantized.engine
    with pytest.raises(RuntimeError), quantized_engine("qnnpack"):
        assert torch.backends.quantized.engine == "qnnpack"
        raise RuntimeError
    assert torch.backends.quantized.engine == before
    with pytest.raises(ConfigError, match="backend = 'arm'"):
        quantize_dynamic(mlp(), "arm")
    with pytest.raises(ConfigError, match="calibration"):
        quantize(lenet(), images()[:2])
