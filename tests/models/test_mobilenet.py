"""The MobileNetV2-style built-in model: shapes on small images, the width multiplier's
channel rounding, parameters and FLOPs against a hand count, training, per-client
gradients under torch.func.vmap, the zoo's refusals and the width on the wire."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedloom.data.arrays import ClientPartition
from fedloom.errors import ConfigError
from fedloom.models import MobileNetV2, builtin_task, model_stats
from fedloom.models.mobilenet import make_divisible
from fedloom.sim.vectorized import VectorizedExecutor, vmap_grad_fns
from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport.messages import MessageError, ModelSpec

torch.set_num_threads(1)


@pytest.mark.parametrize(("shape", "spatial"), [((1, 8, 8), 2), ((1, 28, 28), 4), ((3, 32, 32), 4)])
@pytest.mark.parametrize("norm", ["none", "group", "batch"])
def test_output_shapes_on_small_images(shape: tuple[int, ...], spatial: int, norm: str) -> None:
    task = builtin_task("mobilenet", shape, "classes", 10, norm=norm, width=0.5)
    assert (task.name, task.input_shape) == ("mobilenet", shape)
    model = task.build_model(0)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    assert model(x).shape == (3, 10)
    # downsampling stops while H and W are still >= 2: a digit ends at 2x2
    assert model.features(x).shape[-2:] == (spatial, spatial)


def test_width_rounds_channels_to_multiples_of_8() -> None:
    assert [make_divisible(v) for v in (3, 8, 12, 18, 89.6, 256)] == [8, 8, 16, 24, 88, 256]
    # 18 rounds to 16, which loses over 10%, so it goes up to 24 (Sandler et al.)

    def channels(width: float) -> list[int]:
        model = MobileNetV2((1, 8, 8), 10, width=width)
        return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]

    half, full, double = channels(0.5), channels(1.0), channels(2.0)
    assert all(c % 8 == 0 and c >= 8 for c in half + full + double)
    assert (half[0], full[0], double[0]) == (8, 16, 32)  # the stem
    assert (half[-1], full[-1], double[-1]) == (256, 256, 512)  # the head widens only above 1
    params = [
        sum(p.numel() for p in MobileNetV2((1, 8, 8), 10, width=w).parameters())
        for w in (0.25, 0.5, 1.0, 2.0)
    ]
    assert params == sorted(params) and len(set(params)) == 4


def _conv(c_in: int, c_out: int, k: int, groups: int, positions: int) -> tuple[int, int]:
    """Hand count of a biased convolution: parameters and forward FLOPs (2 per
    multiply-add, ``positions`` output pixels)."""
    fan_in = c_in // groups * k * k
    return c_out * fan_in + c_out, 2 * positions * c_out * fan_in


def test_parameters_and_flops_of_a_tiny_configuration_by_hand() -> None:
    """Width 0.25 on a 1x4x4 image: every stage is 8 channels (16 for the last), the
    head 256; the first stride-2 block takes 4x4 to 2x2 and nothing downsamples after."""
    expanded = [(8, 48, 1, 1), (48, 48, 3, 48), (48, 8, 1, 1)]  # expand, depthwise, project
    layers = [
        (1, 8, 3, 1, 16),  # stem at 4x4
        (8, 8, 3, 8, 16),  # block 1 (t = 1): depthwise, project
        (8, 8, 1, 1, 16),
        (8, 48, 1, 1, 16),  # stage 2, block 1: expand at 4x4, depthwise at stride 2
        (48, 48, 3, 48, 4),
        (48, 8, 1, 1, 4),
        *[(*layer, 4) for layer in expanded * 3],  # stage 2 block 2, stage 3 (stride 1)
        (8, 48, 1, 1, 4),  # stage 4: 8 -> 16, then 16 -> 16
        (48, 48, 3, 48, 4),
        (48, 16, 1, 1, 4),
        (16, 96, 1, 1, 4),
        (96, 96, 3, 96, 4),
        (96, 16, 1, 1, 4),
        (16, 256, 1, 1, 4),  # head
    ]
    counts = [_conv(*layer) for layer in layers]
    params = sum(p for p, _ in counts) + 256 * 2 + 2  # and the linear classifier
    flops = sum(f for _, f in counts) + 2 * 256 * 2
    assert params == 16154
    stats = model_stats(MobileNetV2((1, 4, 4), 2, width=0.25), (1, 4, 4))
    assert (stats.parameters, stats.flops) == (params, flops)
    # a depthwise convolution's FLOPs: 2 * out.numel() * weight[0].numel()
    depthwise = nn.Conv2d(48, 48, 3, padding=1, groups=48)
    assert model_stats(depthwise, (48, 4, 4)).flops == 2 * (48 * 16) * 9


@pytest.mark.parametrize("norm", ["none", "group"])
def test_a_few_sgd_steps_lower_the_loss(norm: str) -> None:
    """Digits-like images (pixels in [-1, 1]) labelled by a random linear teacher."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(32, 1, 8, 8, generator=gen) * 2 - 1
    y = (x.reshape(32, -1) @ torch.randn(64, 10, generator=gen)).argmax(1)
    task = builtin_task("mobilenet", (1, 8, 8), "classes", 10, norm=norm, width=0.5)
    model, loss_fn = task.build_model(1), task.resolved("classes").loss_fn()
    losses = []
    for _ in range(20):  # plain SGD (torch.optim imports torch._dynamo: seconds)
        model.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.85 * losses[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm", ["none", "group"])
def test_vmap_per_client_gradients_equal_per_client_loops(norm: str, dtype: torch.dtype) -> None:
    """Depthwise convolutions and GroupNorm batch under vmap(grad): each client's
    gradient is its own loop's, to 1e-5 of the gradient's scale in float32 (float
    rounding differs between the batched and the plain kernels) and 1e-10 in float64;
    the losses to 1e-5."""
    task = builtin_task("mobilenet", (1, 8, 8), "classes", 10, norm=norm, width=0.25)
    resolved = task.resolved("classes")
    model, loss_fn = task.build_model(0).to(dtype), resolved.loss_fn()
    k, b = 3, 4
    gen = torch.Generator().manual_seed(2)
    base = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    params = base + 0.01 * torch.randn(k, base.numel(), generator=gen, dtype=dtype)
    x = torch.randn(k, b, 1, 8, 8, generator=gen, dtype=dtype)
    y = torch.randint(0, 10, (k, b), generator=gen)
    grads, losses = vmap_grad_fns(model, resolved)[0](params, x, y, torch.ones(k, b, dtype=dtype))
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for i in range(k):
        torch.nn.utils.vector_to_parameters(params[i], model.parameters())
        model.zero_grad()
        loss = loss_fn(model(x[i]), y[i])
        loss.backward()
        loop = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        assert (grads[i] - loop).abs().max() <= tol * max(1.0, loop.abs().max().item())
        assert abs(losses[i].item() - loss.item()) <= 1e-5


def test_the_vectorized_executor_takes_it_unless_batchnorm() -> None:
    """Its vmap probe passes for norm none and group; BatchNorm's buffers are refused."""
    data = ClientPartition(
        np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32),
        np.arange(8, dtype=np.int64) % 10,
        np.array([0, 4, 8]),
        10,
    )
    for norm in ("none", "group"):
        task = builtin_task("mobilenet", (1, 8, 8), "classes", 10, norm=norm, width=0.25)
        executor = VectorizedExecutor(task.build_model(0), data, task=task.resolved("classes"))
        assert executor.backend == "vmap"
    batch = builtin_task("mobilenet", (1, 8, 8), "classes", 10, norm="batch", width=0.25)
    with pytest.raises(ValueError, match="buffers"):
        VectorizedExecutor(batch.build_model(0), data, task=batch.resolved("classes"))


@pytest.mark.parametrize(
    ("kind", "shape", "options", "match"),
    [
        ("mobilenet", (64,), {}, r"model.kind = 'mobilenet' needs images \[C, H, W\].*\[64\]"),
        ("mobilenet", (1, 3, 8), {}, r"model.kind = 'mobilenet'.*>= 4.*\[1, 3, 8\]"),
        ("mlp", (64,), {"width": 0.5}, r"model.width = 0.5 applies to mobilenet.*'mlp'"),
        ("cnn", (1, 8, 8), {"width": 2.0}, r"model.width = 2.0 applies to mobilenet.*'cnn'"),
        ("mobilenet", (1, 8, 8), {"width": float("nan")}, r"model.width = nan"),
        ("mobilenet", (1, 8, 8), {"width": 0.0}, r"model.width = 0.0"),
        ("mobilenet", (1, 8, 8), {"width": 5.0}, r"model.width = 5.0"),
        ("char", (5,), {"norm": "group"}, r"model.norm = 'group' applies to cnn and mobilenet"),
    ],
)
def test_builtin_task_refusals_name_the_field(kind, shape, options, match) -> None:
    with pytest.raises(ConfigError, match=match):
        builtin_task(kind, shape, "classes", 10, **options)


def wire(msg: pb.ModelSpec) -> pb.ModelSpec:
    return pb.ModelSpec.FromString(msg.SerializeToString())


def test_model_spec_carries_the_width_and_refuses_a_hostile_one() -> None:
    spec = ModelSpec("mobilenet", (32,), (1, 8, 8), "classes", 10, 7, "group", width=0.75)
    assert ModelSpec.from_pb(wire(spec.to_pb())) == spec
    task, model = spec.build()
    assert task.name == "mobilenet" and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    expected = builtin_task("mobilenet", (1, 8, 8), "classes", 10, norm="group", width=0.75)
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in expected.build_model(7).parameters()
    )
    # an older server sends no width: 0 on the wire means 1
    old = pb.ModelSpec(kind="cnn", input_shape=[1, 8, 8], num_classes=10, seed=1)
    assert ModelSpec.from_pb(wire(old)).width == 1.0
    for width in (float("nan"), -1.0, 10.0, float("inf")):
        msg = pb.ModelSpec(kind="mobilenet", input_shape=[1, 8, 8], num_classes=10, width=width)
        with pytest.raises(MessageError, match=r"model.width = "):
            ModelSpec.from_pb(wire(msg))
    # a width on another kind is refused when the device builds it
    with pytest.raises(ConfigError, match="model.width = 0.5 applies to mobilenet"):
        ModelSpec("mlp", (8,), (64,), "classes", 10, 7, width=0.5).build()
