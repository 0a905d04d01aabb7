"""Global magnitude pruning and knowledge distillation of a trained model."""

import copy

import pytest
import torch
from edge_models import TRAIN, digits, images, lenet, mlp

from fedloom.edge.distill import distill, soft_kl
from fedloom.edge.prune import compressed_bytes, prune_global, sparsity
from fedloom.edge.quantize import state_dict_bytes
from fedloom.errors import ConfigError
from fedloom.models.mlp import MLP


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.9])
def test_pruning_reaches_the_sparsity_and_leaves_a_plain_module(fraction):
    model = copy.deepcopy(mlp())
    names = list(model.state_dict())
    params = list(model.parameters())
    reached = prune_global(model, fraction)
    assert reached == pytest.approx(fraction, abs=1e-3)
    assert sparsity(model) == reached
    assert list(model.state_dict()) == names  # no weight_orig / weight_mask left
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))


def test_pruning_shrinks_the_compressed_size_not_the_dense_one():
    model = copy.deepcopy(lenet())
    dense, packed = state_dict_bytes(model), compressed_bytes(model)
    prune_global(model, 0.8)
    assert state_dict_bytes(model) == dense
    assert compressed_bytes(model) < 0.5 * packed
    with torch.no_grad():  # pruned globally, the conv layers keep working weights
        assert all(m.weight.count_nonzero() > 0 for m in model.features if hasattr(m, "weight"))
        assert model(images()[:2]).isfinite().all()


@pytest.mark.parametrize("fraction", [-0.1, 1.0, float("nan"), True])
def test_pruning_refuses_a_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="prune fraction"):
        prune_global(copy.deepcopy(mlp()), fraction)


def small_student(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MLP(64, (16,), 10)


def test_distillation_lowers_the_kl_to_the_teacher_deterministically():
    x, y = digits()
    student, history = distill(mlp(), small_student(1), x[:TRAIN], epochs=4, lr=1e-2, seed=3)
    assert len(history.loss) == 4 and len(history.kl) == 5
    assert history.kl[-1] < 0.5 * history.kl[0]
    with torch.no_grad():
        teacher_logits = mlp()(x[TRAIN:])
        before = soft_kl(small_student(1)(x[TRAIN:]), teacher_logits, 4.0)
        after = soft_kl(student(x[TRAIN:]), teacher_logits, 4.0)
        assert after < 0.5 * before  # also on examples it never saw
    again, _ = distill(mlp(), small_student(1), x[:TRAIN], epochs=4, lr=1e-2, seed=3)
    for a, b in zip(student.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_distillation_with_hard_labels_learns_the_task():
    x, y = digits()
    student, history = distill(
        mlp(), small_student(2), x[:TRAIN], y[:TRAIN], alpha=0.5, epochs=4, lr=1e-2
    )
    with torch.no_grad():
        accuracy = (student(x[TRAIN:]).argmax(1) == y[TRAIN:]).float().mean()
    assert accuracy >= 0.8
    assert history.kl[-1] < history.kl[0]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"alpha": 1.5}, "alpha"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"y": torch.zeros(3, dtype=torch.long)}, "labels"),
    ],
)
def test_distillation_refuses_bad_settings(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        distill(mlp(), small_student(0), digits()[0][:10], **kwargs)
