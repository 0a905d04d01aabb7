"""Edge training: reduced precision (autocast) and int8 quantization-aware training in the
trainer and both executors."""

from __future__ import annotations

import copy
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from fedloom.client.qat import (
    FakeQuantForward,
    fake_quant_input,
    fake_quant_weight,
    quantized_weights,
)
from fedloom.client.schedule import client_seeds
from fedloom.client.trainer import TorchTrainer
from fedloom.data import ClientPartition
from fedloom.models import MLP, LeNet
from fedloom.params import ParamLayout, module_vector
from fedloom.records import TrainPlan
from fedloom.sim.executor import SequentialExecutor
from fedloom.sim.vectorized import VectorizedExecutor

# 3 local steps: reduced precision's rounding differences grow with every step
PLAN = TrainPlan(local_steps=3, batch_size=8, lr=0.1, momentum=0.5)
BF16_TOL = 5e-2  # relative L2: bfloat16 keeps 8 significant bits (0.4% per rounding)
FP16_TOL = 1e-2  # float16 keeps 11


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def population(sizes: list[int], shape: tuple[int, ...], classes: int = 4) -> ClientPartition:
    rng = np.random.default_rng(0)
    n = int(np.sum(sizes))
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, classes, size=n).astype(np.int64)
    return ClientPartition(x, y, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), classes)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP(6, (16,), 4)


def lenet() -> nn.Module:
    torch.manual_seed(0)
    return LeNet((1, 8, 8), 4, channels=(4, 8), hidden=(16,))


CASES = {"mlp": (mlp, (6,)), "lenet": (lenet, (1, 8, 8))}


def train_both(name: str, plan: TrainPlan) -> tuple[np.ndarray, np.ndarray, str]:
    """Deltas of the sequential and the vectorized executor, and the latter's backend."""
    make, shape = CASES[name]
    model, data = make(), population([13, 20, 7, 30], shape)
    ids = np.arange(data.num_clients)
    seeds, g = client_seeds(3, 1, ids), module_vector(model)
    seq = SequentialExecutor(TorchTrainer(copy.deepcopy(model)), data)
    vec = VectorizedExecutor(copy.deepcopy(model), data)
    a, b = seq.train_cohort(g, ids, seeds, plan), vec.train_cohort(g, ids, seeds, plan)
    return a.deltas, b.deltas, vec.backend


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ------------------------------------------------------------------------------- precision


@pytest.mark.parametrize("name", ["mlp", "lenet"])  # the bmm and the torch.func path
def test_reduced_precision_trains_close_to_fp32_and_executors_agree(name: str) -> None:
    ref_seq, ref_vec, _ = train_both(name, PLAN)
    assert rel(ref_vec, ref_seq) < 1e-5
    for precision, tol in (("bf16", BF16_TOL), ("fp16", FP16_TOL)):
        seq, vec, _ = train_both(name, replace(PLAN, precision=precision))
        for d in (seq, vec):
            assert d.dtype == np.float32 and np.isfinite(d).all()
            assert 0 < rel(d, ref_seq) < tol, precision  # rounded, yet close
        assert rel(vec, seq) < tol, precision


def test_autocast_rounds_the_forward_pass_and_keeps_float32_gradients() -> None:
    model = mlp()
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
    trainer = TorchTrainer(model)
    g = trainer.flat.params.clone()
    out = torch.empty_like(g)
    m = trainer.train(g, x, y, replace(PLAN, precision="bf16"), 0, out)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    grads = trainer.flat.grads
    assert grads.dtype == torch.float32 and grads.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # what the trainer's forward ran in
    assert np.isfinite(m.train_loss)


# ------------------------------------------------------------------------------------- QAT


def test_weight_fake_quant_is_torch_per_channel_int8() -> None:
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    w = torch.randn(7, 3, 3, 3) * torch.linspace(0.01, 3.0, 7).view(-1, 1, 1, 1)
    obs = PerChannelMinMaxObserver(
        ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric
    )
    obs(w)
    scale, zero_point = obs.calculate_qparams()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors' deprecation notice
        q = torch.quantize_per_channel(w, scale, zero_point, 0, torch.qint8).dequantize()
    assert torch.equal(fake_quant_weight(w), q)
    assert fake_quant_weight(w).unique().numel() < w.numel()  # it does round


def test_input_fake_quant_is_dynamic_uint8_quantization() -> None:
    for x in (torch.randn(5, 9) * 3 + 1, torch.rand(4, 6) * 10, -torch.rand(3, 3)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = torch.quantize_per_tensor_dynamic(x, torch.quint8, False).dequantize()
        assert torch.allclose(fake_quant_input(x), q, atol=1e-6, rtol=0)


def test_straight_through_gradient_is_the_identity() -> None:
    w = torch.randn(4, 5, requires_grad=True)
    x = torch.randn(6, 5, requires_grad=True)
    up = torch.randn(4, 5)
    (fake_quant_weight(w) * up).sum().backward()
    assert torch.equal(w.grad, up)
    (fake_quant_input(x) * up[0]).sum().backward()
    assert torch.equal(x.grad, up[0].expand(6, 5))


def test_qat_keeps_parameter_names_and_leaves_no_hooks() -> None:
    model = lenet()
    names = [n for n, _ in model.named_parameters()]
    layout = ParamLayout.from_module(model)
    assert quantized_weights(model) == {
        "features.0.weight",
        "features.3.weight",
        "head.0.weight",
        "head.2.weight",
    }
    x = torch.randn(2, 1, 8, 8)
    out = FakeQuantForward(model)(dict(model.named_parameters()), x)
    assert not torch.equal(out, model(x))  # quantized, and the model is plain again
    assert [n for n, _ in model.named_parameters()] == names
    assert ParamLayout.from_module(model) == layout
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert list(model.state_dict()) == list(lenet().state_dict())


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_executors_agree_under_qat(name: str) -> None:
    ref, _, _ = train_both(name, PLAN)
    seq, vec, _ = train_both(name, replace(PLAN, qat=True))
    assert np.isfinite(seq).all() and rel(seq, ref) > 1e-3  # QAT changed the training
    assert rel(vec, seq) < 1e-5
    dp = replace(PLAN, qat=True, dp_sgd_clip=1.0, dp_sgd_noise=0.5)
    seq, vec, _ = train_both(name, dp)
    assert rel(vec, seq) < 1e-5


def test_fake_quantized_forward_is_what_int8_inference_computes() -> None:
    """After QAT training, its forward predicts the int8 model's logits (torch.ao's
    dynamic quantization with per-channel weights on the qnnpack engine, whose inputs use
    the full uint8 range as on ARM devices) far better than the float forward does: the
    model QAT trains is the one the device runs."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if "qnnpack" not in torch.backends.quantized.supported_engines:
        pytest.skip("torch was built without the qnnpack engine")
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 64, generator=gen)  # ten classes of 64 features, overlapping
    y = torch.randint(0, 10, (1500,), generator=gen)
    x = centres[y] + 1.5 * torch.randn(1500, 64, generator=gen)
    torch.manual_seed(0)
    model = MLP(64, (32,), 10)
    trainer = TorchTrainer(model)
    g = trainer.flat.params.clone()
    out = torch.empty_like(g)
    plan = TrainPlan(local_steps=60, batch_size=32, lr=0.05, momentum=0.9, qat=True)
    trainer.train(g, x[:1200], y[:1200], plan, 1, out)
    trainer.flat.load((g + out).numpy())
    model.eval()
    engine = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "qnnpack"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            int8 = quantize_dynamic(
                copy.deepcopy(model), {nn.Linear: per_channel_dynamic_qconfig}, torch.qint8
            )
            with torch.no_grad():
                q = int8(x[1200:])
    finally:
        torch.backends.quantized.engine = engine
    with torch.no_grad():
        fake = FakeQuantForward(model)(dict(model.named_parameters()), x[1200:])
        plain = model(x[1200:])
    accuracy = (q.argmax(1) == y[1200:]).float().mean()
    assert accuracy > 0.85  # it learned
    assert (fake - q).norm() < 0.25 * (plain - q).norm()
