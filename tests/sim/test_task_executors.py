"""Both executors train any task alike: images through a CNN, regression, token models,
custom losses; the vectorized one refuses what vmap cannot batch at construction; the
executor trial times candidates without leaving a trace."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedloom.client.schedule import client_seeds
from fedloom.client.trainer import TorchTrainer
from fedloom.data import ClientPartition
from fedloom.errors import FedloomError
from fedloom.models import MLP
from fedloom.params import module_vector
from fedloom.records import TrainPlan
from fedloom.sim.batched_mlp import mlp_layers
from fedloom.sim.executor import SequentialExecutor
from fedloom.sim.executor_trial import pick_faster
from fedloom.sim.vectorized import VectorizedExecutor, vmap_failure
from fedloom.task import Task

SIZES = [5, 9, 3, 12]  # uneven: padded batches and clients whose schedule ends early
VOCAB, T = 7, 5


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


class SmallCNN(nn.Module):
    def __init__(self, channels: int = 3, outputs: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.norm = nn.GroupNorm(1, channels)
        self.head = nn.Linear(channels * 4 * 4, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(torch.relu(self.norm(self.conv(x))), 2)
        return self.head(h.flatten(1))


class TokenModel(nn.Module):
    """Embedding, a position-wise layer and next-token logits ``[n, T, V]``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 6)
        self.mix = nn.Linear(6, 6)
        self.out = nn.Linear(6, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = torch.tanh(self.mix(h) + h.cumsum(-2) / 4)  # depends on earlier positions
        return self.out(h)


class DropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(nn.functional.dropout(x, 0.5, self.training))


def offsets() -> np.ndarray:
    return np.concatenate([[0], np.cumsum(SIZES)]).astype(np.int64)


def images(seed: int = 0) -> ClientPartition:
    rng = np.random.default_rng(seed)
    n = sum(SIZES)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    return ClientPartition(x, rng.integers(0, 4, n), offsets(), 4)


def regression(width: int | None = None) -> ClientPartition:
    rng = np.random.default_rng(1)
    n = sum(SIZES)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = x[:, :2].sum(1) if width is None else x[:, :width] * 2
    return ClientPartition(x, y.astype(np.float32), offsets(), None)


def tokens() -> ClientPartition:
    rng = np.random.default_rng(2)
    n = sum(SIZES)
    x = rng.integers(0, VOCAB, size=(n, T))
    y = np.roll(x, -1, axis=1)
    return ClientPartition(x, y, offsets(), VOCAB)


def smooth_l1(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A user's loss: a plain batch-mean callable with no per-example form."""
    return nn.functional.smooth_l1_loss(outputs.squeeze(-1), targets)


CASES = {
    "cnn": (lambda: SmallCNN(), images, None, "classes"),
    "mlp_images": (lambda: MLP((1, 8, 8), [5], 4), images, None, "classes"),
    "regression": (
        lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)),
        regression,
        None,
        "values",
    ),
    "regression_2d": (
        lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)),
        lambda: regression(3),
        None,
        "values",
    ),
    "custom_loss": (
        lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1)),
        regression,
        smooth_l1,
        "values",
    ),
    "tokens": (TokenModel, tokens, None, "tokens"),
}


def build(case: str, seed: int = 0):
    factory, data_fn, loss, targets = CASES[case]
    torch.manual_seed(seed)
    model = factory()
    task = Task(model, loss=loss).resolved(targets)
    return model, data_fn(), task


def both(model, data, task, plan, budget=512.0):
    ids = np.arange(data.num_clients)
    seeds = client_seeds(3, 1, ids)
    g = module_vector(model)
    seq = SequentialExecutor(TorchTrainer(copy.deepcopy(model), task), data)
    vec = VectorizedExecutor(copy.deepcopy(model), data, memory_budget_mb=budget, task=task)
    return seq.train_cohort(g, ids, seeds, plan), vec.train_cohort(g, ids, seeds, plan), vec


def assert_same(a, b) -> None:
    np.testing.assert_allclose(a.deltas, b.deltas, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_array_equal(a.num_examples, b.num_examples)


@pytest.mark.parametrize("case", list(CASES))
def test_executors_agree_for_every_task_kind(case):
    model, data, task = build(case)
    plan = TrainPlan(local_epochs=2, batch_size=4, lr=0.1, momentum=0.9)
    seq, vec, ex = both(model, data, task, plan)
    assert ex.backend == ("bmm" if case == "mlp_images" else "vmap")
    assert np.abs(seq.deltas).max() > 1e-3  # the models moved, so agreeing means something
    assert_same(seq, vec)


@pytest.mark.parametrize("case", ["cnn", "tokens", "regression", "mlp_images"])
def test_dp_sgd_is_the_same_in_both_executors(case):
    model, data, task = build(case)
    plan = TrainPlan(local_steps=3, batch_size=4, lr=0.1, dp_sgd_clip=0.5, dp_sgd_noise=0.7)
    seq, vec, _ = both(model, data, task, plan)
    assert np.isfinite(seq.deltas).all() and np.abs(seq.deltas).max() > 1e-4
    assert_same(seq, vec)


def test_chunks_of_an_image_model_change_nothing():
    model, data, task = build("cnn")
    plan = TrainPlan(local_steps=2, batch_size=4, lr=0.1)
    _, whole, ex = both(model, data, task, plan)
    _, chunked, tiny = both(model, data, task, plan, budget=1e-3)
    assert tiny.memory_budget // tiny._bytes_per_client(plan) == 0  # one client per chunk
    np.testing.assert_allclose(whole.deltas, chunked.deltas, atol=1e-6, rtol=0)


def test_memory_per_client_follows_the_activations():
    data = images()
    small = VectorizedExecutor(SmallCNN(channels=2), data)
    wide = VectorizedExecutor(SmallCNN(channels=16), data)
    plan = TrainPlan(batch_size=32)
    ratio = wide._bytes_per_client(plan) / small._bytes_per_client(plan)
    assert ratio > 6  # 8x the channels: the activations, not the parameters, dominate
    assert small._activation > 2 * 8 * 8 * 4  # at least the conv and its GroupNorm outputs


def test_bmm_fast_path_only_for_the_built_in_cross_entropy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 4))
    data = images()
    assert VectorizedExecutor(copy.deepcopy(model), data).backend == "bmm"
    custom = Task(model, loss=nn.functional.cross_entropy).resolved("classes")
    ex = VectorizedExecutor(copy.deepcopy(model), data, task=custom)
    assert ex.backend == "vmap"  # the same function, but not known to be: the general path
    linear = nn.Linear(64, 4)
    assert mlp_layers(nn.Sequential(linear), (64,)) is not None
    assert mlp_layers(nn.Sequential(linear), (1, 8, 8)) is None  # N-D, not flattened
    assert mlp_layers(nn.Sequential(nn.Flatten(0), linear), (1, 8, 8)) is None
    assert mlp_layers(Doubled(linear), (64,)) is None  # its own forward: not known
    assert mlp_layers(MLP((1, 8, 8), [3], 4), (64,)) is None  # flattens 3 dims, data has 1


class Doubled(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_a_model_vmap_cannot_train_is_refused_at_construction():
    model = DropoutNet()
    x = torch.randn(3, 4)
    y = torch.tensor([0, 2, 1])
    task = Task(model).resolved("classes")
    reason = vmap_failure(model.train(), task, x, y)
    assert reason is not None and "vmap" in reason
    assert vmap_failure(model.eval(), task, x, y) is None  # no randomness in eval mode
    data = ClientPartition(x.numpy(), y.numpy(), np.array([0, 1, 3]), 3)
    before = torch.random.get_rng_state()
    with pytest.raises(ValueError, match="cannot vectorize this model: torch.func.vmap"):
        VectorizedExecutor(model, data)
    assert torch.equal(before, torch.random.get_rng_state())
    cnn, images_data, cnn_task = build("cnn")
    assert vmap_failure(cnn, cnn_task, torch.from_numpy(images_data.x[:2]),
                        torch.from_numpy(images_data.y[:2])) is None  # fmt: skip


# ------------------------------------------------------------------------ executor trial


class Broken:
    name = "broken"

    def train_cohort(self, *args, **kwargs):
        raise RuntimeError("out of memory\nsecond line")


def test_pick_faster_times_every_candidate_and_skips_a_raising_one():
    model, data, task = build("cnn")
    seq = SequentialExecutor(TorchTrainer(copy.deepcopy(model), task), data)
    vec = VectorizedExecutor(copy.deepcopy(model), data, task=task)
    ids, seeds = np.array([0, 1, 3]), np.arange(3)
    plan = TrainPlan(local_steps=1, batch_size=4, lr=0.1)
    best, timings = pick_faster([Broken(), vec, seq], module_vector(model), ids, seeds, plan)
    assert best in (vec, seq)
    assert list(timings) == ["broken", "vectorized", "sequential"]
    assert timings["broken"] == "RuntimeError: out of memory"
    chosen = timings[best.name]
    assert isinstance(chosen, float) and chosen > 0
    assert all(chosen <= t for t in timings.values() if isinstance(t, float))
    with pytest.raises(FedloomError, match="every executor failed.*broken: RuntimeError"):
        pick_faster([Broken()], module_vector(model), ids, seeds, plan)


def test_pick_faster_leaves_no_trace_on_the_run():
    """A trial trains the shared sequential model (and its BatchNorm statistics) and may
    draw torch random numbers (dropout); all of it is restored."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(0.2), nn.Flatten(), nn.Linear(72, 4)
    )
    data = images()
    trainer = TorchTrainer(model)
    seq = SequentialExecutor(trainer, data)
    g = module_vector(model)
    ids, seeds = np.array([0, 1, 2, 3]), np.arange(4, dtype=np.int64)
    plan = TrainPlan(local_steps=2, batch_size=4, lr=0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    params = trainer.flat.params
    best, timings = pick_faster([seq], g, ids, seeds, plan)
    assert best is seq and isinstance(timings["sequential"], float)
    after = model.state_dict()
    for key, value in state.items():
        assert torch.equal(after[key], value), key
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert trainer.flat.params is params  # still the buffer the parameters view
    assert next(model.parameters()).data_ptr() == params.data_ptr()
