"""Built-in models as tasks: shapes, seeding, parameter names, vmap-ability, training
and the cost of a forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedloom.errors import ConfigError
from fedloom.models import MLP, CharGRU, GRULayer, LeNet, builtin_task, model_stats
from fedloom.params import module_vector
from fedloom.task import Task

torch.set_num_threads(1)

VOCAB = 12
T = 5


def close(a: torch.Tensor, b: torch.Tensor, atol: float) -> bool:
    """Equal shapes and every entry within ``atol`` (torch.testing takes seconds to import)."""
    return a.shape == b.shape and bool((a - b).abs().max() <= atol)


def example_input(kind: str, shape: tuple[int, ...], n: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "char":
        return torch.randint(0, VOCAB, (n, *shape), generator=gen)
    return torch.randn((n, *shape), generator=gen)


# (kind, sample shape, targets, outputs, options, expected output shape for n examples)
CASES = [
    ("mlp", (7,), "classes", 3, {}, (3,)),
    ("mlp", (1, 8, 8), "classes", 10, {"hidden": (16, 8)}, (10,)),
    ("mlp", (3, 32, 32), "values", 1, {}, (1,)),
    ("logistic", (2, 5), "values", 4, {}, (4,)),
    ("cnn", (1, 8, 8), "classes", 10, {}, (10,)),
    ("cnn", (1, 28, 28), "classes", 62, {"norm": "group"}, (62,)),
    ("cnn", (3, 32, 32), "values", 2, {"norm": "batch", "hidden": ()}, (2,)),
    ("cnn", (2, 9, 12), "classes", 3, {"norm": "group", "hidden": (8, 8)}, (3,)),
    ("char", (T,), "classes", VOCAB, {"hidden": (16,)}, (VOCAB,)),
    ("char", (T,), "tokens", VOCAB, {"hidden": (16, 8)}, (T, VOCAB)),
]
IDS = [f"{c[0]}-{'x'.join(map(str, c[1]))}-{c[2]}-{c[4].get('norm', '')}" for c in CASES]


@pytest.mark.parametrize(("kind", "shape", "targets", "outputs", "opts", "out"), CASES, ids=IDS)
def test_output_shapes_and_task_fields(kind, shape, targets, outputs, opts, out) -> None:
    task = builtin_task(kind, shape, targets, outputs, **opts)
    assert isinstance(task, Task)
    assert (task.name, task.input_shape) == (kind, shape)
    model = task.build_model(0)
    x = example_input(kind, shape, 4, torch.Generator().manual_seed(0))
    y = model(x)
    assert y.shape == (4, *out) and y.dtype == torch.float32
    # the task's default loss accepts these outputs against targets of the data's form
    if targets == "values":
        target = torch.zeros(4) if outputs == 1 else torch.zeros(4, outputs)
    elif targets == "tokens":
        target = torch.zeros(4, T, dtype=torch.long)
    else:
        target = torch.zeros(4, dtype=torch.long)
    loss = task.resolved(targets).loss_fn()(y, target)
    assert loss.shape == () and torch.isfinite(loss)


@pytest.mark.parametrize(("kind", "shape", "targets", "outputs", "opts", "out"), CASES, ids=IDS)
def test_same_seed_same_weights_different_seeds_differ(
    kind, shape, targets, outputs, opts, out
) -> None:
    task = builtin_task(kind, shape, targets, outputs, **opts)
    a, b, c = (module_vector(task.build_model(s)) for s in (5, 5, 6))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_mlp_parameter_names_are_unchanged() -> None:
    flat = MLP(64, (16, 8), 10)
    assert list(flat.state_dict()) == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
    ]
    assert list(MLP(64, (), 10).state_dict()) == ["0.weight", "0.bias"]


def test_flattening_mlp_is_the_flat_mlp() -> None:
    """An MLP for [1, 8, 8] examples has the names and seeded weights of the MLP for
    64 features, loads its checkpoint and computes the same function."""
    flat = builtin_task("mlp", (64,), "classes", 10, hidden=(16,)).build_model(3)
    image = builtin_task("mlp", (1, 8, 8), "classes", 10, hidden=(16,)).build_model(3)
    assert list(image.state_dict()) == list(flat.state_dict())
    assert np.array_equal(module_vector(image), module_vector(flat))
    other = builtin_task("mlp", (1, 8, 8), "classes", 10, hidden=(16,)).build_model(4)
    other.load_state_dict(flat.state_dict())
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(other(x), flat(x.reshape(5, 64)))
    # one unbatched example too: only the example's own dims are flattened
    assert torch.equal(other(x[0]), flat(x[0].reshape(64)))


def test_flat_mlp_forward_is_plain_sequential() -> None:
    model = MLP(6, (4,), 2)
    x = torch.randn(3, 6)
    assert torch.equal(model(x), nn.Sequential.forward(model, x))
    assert model(torch.randn(6)).shape == (2,)  # a single unbatched example, as before


def test_only_batchnorm_has_buffers() -> None:
    def buffers(norm: str) -> list[str]:
        model = builtin_task("cnn", (1, 8, 8), "classes", 3, norm=norm).build_model(0)
        return [n for n, _ in model.named_buffers()]

    assert buffers("none") == [] and buffers("group") == []
    assert "features.1.running_mean" in buffers("batch")


def test_gru_layer_is_torch_gru() -> None:
    layer = GRULayer(5, 7)
    ref = nn.GRU(5, 7, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(layer.input.weight)
        ref.bias_ih_l0.copy_(layer.input.bias)
        ref.weight_hh_l0.copy_(layer.hidden.weight)
        ref.bias_hh_l0.copy_(layer.hidden.bias)
    x = torch.randn(3, 6, 5)
    assert close(layer(x), ref(x)[0], 1e-6)


def test_char_model_per_token_last_position_is_the_last_token() -> None:
    last = CharGRU(VOCAB, (8,), per_token=False)
    every = CharGRU(VOCAB, (8,), per_token=True)
    every.load_state_dict(last.state_dict())
    x = torch.randint(0, VOCAB, (2, T))
    assert close(every(x)[:, -1], last(x), 1e-6)


def _stacked(models: list[nn.Module]) -> dict[str, torch.Tensor]:
    names = [n for n, _ in models[0].named_parameters()]
    return {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n in names}


@pytest.mark.parametrize(
    ("kind", "shape", "targets", "opts"),
    [
        ("cnn", (1, 8, 8), "classes", {"norm": "none"}),
        ("cnn", (2, 8, 8), "classes", {"norm": "group", "hidden": (8,)}),
        ("char", (T,), "classes", {"hidden": (8,)}),
        ("char", (T,), "tokens", {"hidden": (8, 6)}),
    ],
    ids=["cnn", "cnn-group", "char", "char-tokens"],
)
def test_vmap_per_client_gradients_match_a_loop(kind, shape, targets, opts) -> None:
    from torch.func import functional_call, grad, vmap

    task = builtin_task(kind, shape, targets, VOCAB, **opts)
    loss_fn = task.resolved(targets).loss_fn()
    k, n = 3, 4
    models = [task.build_model(s) for s in range(k)]
    gen = torch.Generator().manual_seed(1)
    x = torch.stack([example_input(kind, shape, n, gen) for _ in range(k)])
    y_shape = (k, n, T) if targets == "tokens" else (k, n)
    y = torch.randint(0, VOCAB, y_shape, generator=gen)
    template = models[0]

    def loss(params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(template, params, (xb,)), yb)

    batched = vmap(grad(loss))(_stacked(models), x, y)
    for i, model in enumerate(models):
        model.zero_grad()
        loss_fn(model(x[i]), y[i]).backward()
        for name, p in model.named_parameters():
            assert close(batched[name][i], p.grad, 1e-5)
    # a forward pass alone (evaluation) vectorizes too
    outputs = vmap(lambda p, xb: functional_call(template, p, (xb,)))(_stacked(models), x)
    assert close(outputs[1], models[1](x[1]), 1e-5)


@pytest.mark.parametrize(
    ("kind", "shape", "targets", "outputs", "opts"),
    [
        ("logistic", (6,), "classes", 3, {}),
        ("mlp", (1, 8, 8), "values", 1, {"hidden": (16,)}),
        ("cnn", (1, 8, 8), "classes", 4, {"norm": "none", "hidden": (16,)}),
        ("cnn", (1, 8, 8), "classes", 4, {"norm": "group", "hidden": (16,)}),
        ("cnn", (1, 8, 8), "classes", 4, {"norm": "batch", "hidden": (16,)}),
        ("char", (T,), "classes", VOCAB, {"hidden": (16,)}),
        ("char", (T,), "tokens", VOCAB, {"hidden": (16,)}),
    ],
    ids=["logistic", "mlp-values", "cnn", "cnn-group", "cnn-batch", "char", "char-tokens"],
)
def test_brief_sgd_lowers_the_loss(kind, shape, targets, outputs, opts) -> None:
    task = builtin_task(kind, shape, targets, outputs, **opts)
    loss_fn = task.resolved(targets).loss_fn()
    model = task.build_model(0)
    gen = torch.Generator().manual_seed(2)
    x = example_input(kind, shape, 16, gen)
    if targets == "values":
        y = torch.randn(16, generator=gen)
    else:
        y = torch.randint(0, outputs, (16, T) if targets == "tokens" else (16,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=1.0 if kind == "char" else 0.1)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_stats_of_a_linear_layer() -> None:
    stats = model_stats(nn.Linear(5, 3), (5,))
    assert stats.parameters == 5 * 3 + 3
    assert stats.flops == 2 * 5 * 3
    assert stats.activation_bytes == 3 * 4  # three float32 outputs


def test_stats_of_an_mlp_sum_its_layers() -> None:
    stats = model_stats(MLP((2, 3), (4,), 5), (2, 3))
    assert stats.parameters == (6 * 4 + 4) + (4 * 5 + 5)
    assert stats.flops == 2 * (6 * 4 + 4 * 5)
    assert stats.activation_bytes == 4 * (4 + 4 + 5)  # Linear, ReLU, Linear outputs


def test_stats_of_a_cnn_count_the_convolutions() -> None:
    model = LeNet((1, 8, 8), 3, channels=(2,), hidden=())
    stats = model_stats(model, (1, 8, 8))
    conv = 2 * (8 * 8) * 2 * 1 * 9  # outputs x positions x kernel multiply-adds
    assert stats.flops == conv + 2 * (2 * 4 * 4) * 3


def test_stats_of_the_char_model_count_every_step() -> None:
    hidden, embed = 6, 4
    model = CharGRU(VOCAB, (hidden,), embed_dim=embed)
    stats = model_stats(model, (T,), torch.int64)
    per_step = 2 * hidden * 3 * hidden
    assert stats.flops == 2 * T * embed * 3 * hidden + T * per_step + 2 * hidden * VOCAB
    # embedding, input projection, T recurrent projections, head (float32)
    assert stats.activation_bytes == 4 * (T * embed + T * 3 * hidden + T * 3 * hidden + VOCAB)


def test_stats_leave_the_model_as_it_was() -> None:
    model = builtin_task("cnn", (1, 8, 8), "classes", 3, norm="batch").build_model(0)
    model.train()
    model.head.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model_stats(model, (1, 8, 8))
    assert model.training and not model.head.training and model.features.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model._forward_hooks and not model.head[0]._forward_hooks


@pytest.mark.parametrize(
    ("kind", "shape", "targets", "outputs", "opts", "message"),
    [
        ("cnn", (64,), "classes", 10, {}, r"'cnn' needs images \[C, H, W\]; .* \[64\]"),
        ("cnn", (1, 3, 8), "classes", 10, {}, "H and W must be >= 4"),
        ("char", (1, 8, 8), "classes", 10, {}, r"'char' needs token ids \[T\]"),
        ("char", (T,), "values", 1, {}, "'char' predicts characters"),
        ("char", (T,), "classes", VOCAB, {"hidden": ()}, "at least one GRU width"),
        ("mlp", (T,), "tokens", VOCAB, {}, "token targets .* need model.kind = 'char'"),
        ("cnn", (1, 8, 8), "tokens", VOCAB, {}, "token targets"),
        ("rnn", (T,), "classes", 3, {}, "model.kind = 'rnn'"),
        ("mlp", (4,), "labels", 3, {}, "targets = 'labels'"),
        ("mlp", (4,), "classes", 1, {}, "1 outputs for classes targets"),
        ("mlp", (4,), "values", 0, {}, "0 outputs for values targets"),
        ("mlp", (0,), "classes", 3, {}, r"shape \[0\]"),
        ("mlp", (4,), "classes", 3, {"norm": "group"}, "model.norm = 'group' applies to cnn"),
        ("cnn", (1, 8, 8), "classes", 3, {"norm": "layer"}, "model.norm = 'layer'"),
        ("mlp", (4,), "classes", 3, {"hidden": (8, 0)}, r"model.hidden = \[8, 0\]"),
    ],
)
def test_impossible_combinations_are_refused(kind, shape, targets, outputs, opts, message) -> None:
    with pytest.raises(ConfigError, match=message):
        builtin_task(kind, shape, targets, outputs, **opts)


def test_numpy_integers_are_accepted() -> None:
    task = builtin_task("cnn", tuple(np.array([1, 8, 8])), "classes", np.int64(3), (np.int64(8),))
    assert task.input_shape == (1, 8, 8) and type(task.input_shape[0]) is int
    assert task.build_model(0)(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
