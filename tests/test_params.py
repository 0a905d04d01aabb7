"""Flat parameter vectors: layout offsets, zero-copy views, round trips and FlatModule binding."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedloom.errors import FedloomError
from fedloom.params import FlatModule, ParamLayout, ParamSpec, module_vector

torch.set_num_threads(1)


class ConvNet(nn.Module):
    """A tiny conv + MLP classifier covering 4-D, 2-D and 1-D parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=3)
        self.head = nn.Sequential(nn.Linear(2 * 2 * 2, 5), nn.ReLU(), nn.Linear(5, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(x)).flatten(1))


def make_net(seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet()


def make_input(seed: int = 1, n: int = 6) -> torch.Tensor:
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


EXPECTED_SHAPES = {
    "conv.weight": (2, 1, 3, 3),
    "conv.bias": (2,),
    "head.0.weight": (5, 8),
    "head.0.bias": (5,),
    "head.2.weight": (3, 5),
    "head.2.bias": (3,),
}


# --------------------------------------------------------------------------- ParamLayout


def test_layout_from_module_names_shapes_offsets_dim() -> None:
    layout = ParamLayout.from_module(make_net())
    assert [s.name for s in layout] == list(EXPECTED_SHAPES)
    assert [s.shape for s in layout] == list(EXPECTED_SHAPES.values())
    numels = [int(np.prod(s)) for s in EXPECTED_SHAPES.values()]
    assert [s.numel for s in layout] == numels
    assert [s.offset for s in layout] == list(np.cumsum([0, *numels[:-1]]))
    assert layout.dim == sum(numels) == 18 + 2 + 40 + 5 + 15 + 3
    assert len(layout) == 6
    assert layout.dim == sum(p.numel() for p in make_net().parameters())


def test_layout_of_sequential_matches_module_vector_order() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    layout = ParamLayout.from_module(model)
    vec = module_vector(model)
    assert vec.dtype == np.float32 and vec.shape == (layout.dim,)
    named = dict(model.named_parameters())
    for name, arr in layout.unflatten(vec).items():
        np.testing.assert_array_equal(arr, named[name].detach().numpy())


def test_module_vector_is_a_copy() -> None:
    model = nn.Linear(2, 2)
    vec = module_vector(model)
    vec[:] = 123.0
    assert not torch.any(model.weight == 123.0)


def test_unflatten_returns_zero_copy_views() -> None:
    layout = ParamLayout.from_module(make_net())
    vec = np.arange(layout.dim, dtype=np.float32)
    views = layout.unflatten(vec)
    for s in layout:
        assert views[s.name].shape == s.shape
        assert np.shares_memory(views[s.name], vec)
        np.testing.assert_array_equal(views[s.name].reshape(-1), vec[s.offset : s.offset + s.numel])
    vec[layout.specs[2].offset] = -7.0
    assert views["head.0.weight"][0, 0] == -7.0
    views["conv.bias"][1] = 99.0
    assert vec[layout.specs[1].offset + 1] == 99.0


def test_flatten_returns_fresh_float32_vector() -> None:
    layout = ParamLayout.from_shapes({"a": (2, 2), "b": (3,)})
    arrays = {"a": np.ones((2, 2), dtype=np.float64), "b": np.array([1, 2, 3])}
    vec = layout.flatten(arrays)
    assert vec.dtype == np.float32
    np.testing.assert_array_equal(vec, [1, 1, 1, 1, 1, 2, 3])
    vec[0] = 5.0
    assert arrays["a"][0, 0] == 1.0


shape_st = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
shapes_st = st.dictionaries(
    st.text("abcdefgh.", min_size=1, max_size=6), shape_st, min_size=1, max_size=5
)


@settings(max_examples=30, deadline=None)
@given(shapes=shapes_st, seed=st.integers(0, 2**32 - 1))
def test_flatten_unflatten_round_trip(shapes: dict[str, tuple[int, ...]], seed: int) -> None:
    layout = ParamLayout.from_shapes(shapes)
    assert layout.dim == sum(int(np.prod(s)) for s in shapes.values())
    vec = np.random.default_rng(seed).standard_normal(layout.dim).astype(np.float32)
    arrays = layout.unflatten(vec)
    assert list(arrays) == list(shapes)
    assert {k: a.shape for k, a in arrays.items()} == shapes
    np.testing.assert_array_equal(layout.flatten(arrays), vec)
    # and the other way round, from independent arrays
    rng = np.random.default_rng(seed + 1)
    fresh = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    back = layout.unflatten(layout.flatten(fresh))
    for k in shapes:
        np.testing.assert_array_equal(back[k], fresh[k])


@settings(max_examples=30, deadline=None)
@given(shapes=shapes_st)
def test_json_round_trip(shapes: dict[str, tuple[int, ...]]) -> None:
    layout = ParamLayout.from_shapes(shapes)
    data = json.loads(json.dumps(layout.to_json()))
    again = ParamLayout.from_json(data)
    assert again == layout
    assert hash(again) == hash(layout)
    assert again.dim == layout.dim
    assert again.specs == layout.specs


def test_layout_equality() -> None:
    a = ParamLayout.from_shapes({"w": (2, 3), "b": (3,)})
    assert a == ParamLayout([ParamSpec("w", (2, 3), 0, 6), ParamSpec("b", (3,), 6, 3)])
    assert a != ParamLayout.from_shapes({"b": (3,), "w": (2, 3)})
    assert a != ParamLayout.from_shapes({"w": (3, 2), "b": (3,)})
    assert a != "not a layout"


@pytest.mark.parametrize(
    "vec",
    [
        np.zeros(8, dtype=np.float32),
        np.zeros(10, dtype=np.float32),
        np.zeros((1, 9), dtype=np.float32),
        np.zeros((9, 1), dtype=np.float32),
        np.zeros((), dtype=np.float32),
    ],
    ids=["short", "long", "row", "column", "scalar"],
)
def test_unflatten_rejects_wrong_vector_shape(vec: np.ndarray) -> None:
    layout = ParamLayout.from_shapes({"w": (2, 3), "b": (3,)})
    with pytest.raises(FedloomError, match=r"expected \(9,\)"):
        layout.unflatten(vec)
    with pytest.raises(FedloomError, match=r"^weights has shape"):
        layout.check_vector(vec, "weights")


def test_check_vector_accepts_torch_tensor() -> None:
    layout = ParamLayout.from_shapes({"w": (2, 3)})
    layout.check_vector(torch.zeros(6))
    with pytest.raises(FedloomError, match=r"\(5,\)"):
        layout.check_vector(torch.zeros(5))


def test_flatten_missing_name_is_named() -> None:
    layout = ParamLayout.from_shapes({"w": (2, 3), "b": (3,)})
    with pytest.raises(FedloomError, match=r"parameter 'b' is missing"):
        layout.flatten({"w": np.zeros((2, 3))})


def test_flatten_wrong_shape_is_named() -> None:
    layout = ParamLayout.from_shapes({"w": (2, 3), "b": (3,)})
    with pytest.raises(FedloomError, match=r"parameter 'w' has shape \(3, 2\), expected \(2, 3\)"):
        layout.flatten({"w": np.zeros((3, 2)), "b": np.zeros(3)})
    # same number of elements but flattened is still a shape mismatch
    with pytest.raises(FedloomError, match=r"'w'"):
        layout.flatten({"w": np.zeros(6), "b": np.zeros(3)})


# --------------------------------------------------------------------------- FlatModule


def test_flat_module_leaves_outputs_unchanged() -> None:
    model = make_net()
    reference = copy.deepcopy(model)
    x = make_input()
    before = model(x).detach().clone()
    flat = FlatModule(model)
    assert flat.module is model
    assert flat.layout == ParamLayout.from_module(reference)
    assert flat.params.dtype == torch.float32 and flat.params.shape == (flat.layout.dim,)
    assert flat.grads.shape == flat.params.shape and not torch.any(flat.grads)
    np.testing.assert_array_equal(model(x).detach().numpy(), before.numpy())
    np.testing.assert_array_equal(flat.vector(), module_vector(reference))


def test_flat_module_parameters_live_in_the_flat_buffers() -> None:
    model = make_net()
    flat = FlatModule(model)
    elem = flat.params.element_size()
    p_lo = flat.params.data_ptr()
    p_hi = p_lo + flat.params.numel() * elem
    g_lo = flat.grads.data_ptr()
    g_hi = g_lo + flat.grads.numel() * elem
    for p, spec in zip(model.parameters(), flat.layout, strict=True):
        assert p_lo <= p.data_ptr() < p_hi
        assert p.data_ptr() == p_lo + spec.offset * elem
        assert p.grad is not None
        assert p.grad.data_ptr() == g_lo + spec.offset * elem
        assert g_lo <= p.grad.data_ptr() < g_hi


@pytest.mark.parametrize("as_numpy", [True, False], ids=["numpy", "torch"])
def test_load_changes_weights_in_place(as_numpy: bool) -> None:
    model = make_net(0)
    flat = FlatModule(model)
    params_before = list(model.parameters())
    ptrs_before = [p.data_ptr() for p in params_before]
    other = make_net(1)
    target = module_vector(other)
    x = make_input()
    out_before = model(x).detach().clone()
    flat.load(target if as_numpy else torch.from_numpy(target.copy()))
    # same parameter objects, same storage, new values
    assert list(model.parameters()) == params_before
    assert [p.data_ptr() for p in model.parameters()] == ptrs_before
    np.testing.assert_array_equal(flat.vector(), target)
    np.testing.assert_array_equal(module_vector(model), target)
    expected = other(x).detach()
    np.testing.assert_array_equal(model(x).detach().numpy(), expected.numpy())
    assert not torch.allclose(out_before, expected)


def test_load_does_not_alias_the_source() -> None:
    flat = FlatModule(make_net())
    src = np.zeros(flat.layout.dim, dtype=np.float32)
    flat.load(src)
    src[:] = 1.0
    assert not torch.any(flat.params)
    vec = flat.vector()
    vec[:] = 2.0
    assert not torch.any(flat.params)


def test_writing_params_changes_module() -> None:
    model = make_net()
    flat = FlatModule(model)
    with torch.no_grad():
        flat.params.zero_()
    assert all(not torch.any(p) for p in model.parameters())
    assert not torch.any(model(make_input()))


def test_load_rejects_wrong_length() -> None:
    flat = FlatModule(make_net())
    before = flat.vector()
    with pytest.raises(FedloomError, match=r"parameter vector has shape"):
        flat.load(np.zeros(flat.layout.dim + 1, dtype=np.float32))
    np.testing.assert_array_equal(flat.vector(), before)


def test_backward_fills_flat_grads() -> None:
    model = make_net()
    reference = copy.deepcopy(model)  # an ordinary module, copied before wrapping
    flat = FlatModule(model)
    x = make_input(n=8)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(reference(x), y).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    np.testing.assert_allclose(flat.grads.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)
    assert torch.any(flat.grads != 0)
    # the per-parameter grads are still views of the flat buffer
    for p, spec in zip(model.parameters(), flat.layout, strict=True):
        assert p.grad.data_ptr() == flat.grads[spec.offset :].data_ptr()
    # zeroing the flat buffer zeroes every parameter's grad, and backward refills it
    flat.grads.zero_()
    assert all(not torch.any(p.grad) for p in model.parameters())
    F.cross_entropy(model(x), y).backward()
    np.testing.assert_allclose(flat.grads.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_flat_module_rejects_non_float32(dtype: torch.dtype) -> None:
    model = nn.Sequential(nn.Linear(3, 2)).to(dtype)
    with pytest.raises(FedloomError, match=r"float32"):
        FlatModule(model)
