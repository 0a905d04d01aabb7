"""The vectorized executor trains exactly what the sequential one does, only faster."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedloom.assemble import start_simulation
from fedloom.client.schedule import (
    batch_schedule,
    client_seeds,
    cohort_schedule,
    cohort_schedule_tensors,
    steps_for,
)
from fedloom.client.trainer import TorchTrainer
from fedloom.config import load_config
from fedloom.data import ClientPartition
from fedloom.errors import ConfigError
from fedloom.models import MLP
from fedloom.params import module_vector
from fedloom.records import TrainPlan
from fedloom.sim.executor import SequentialExecutor
from fedloom.sim.vectorized import VectorizedExecutor, unsupported_reason


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def population(sizes, features=6, classes=4, seed=0) -> ClientPartition:
    rng = np.random.default_rng(seed)
    n = int(np.sum(sizes))
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = rng.integers(0, classes, size=n).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return ClientPartition(x, y, offsets, classes)


def both(model, data, plan, ids=None, budget=512.0):
    ids = np.arange(data.num_clients) if ids is None else ids
    seeds = client_seeds(3, 1, ids)
    g = module_vector(model)
    seq = SequentialExecutor(TorchTrainer(copy.deepcopy(model)), data)
    vec = VectorizedExecutor(copy.deepcopy(model), data, memory_budget_mb=budget)
    return seq.train_cohort(g, ids, seeds, plan), vec.train_cohort(g, ids, seeds, plan), vec


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    batch=st.integers(1, 16),
    epochs=st.integers(1, 3),
    local_steps=st.one_of(st.none(), st.integers(1, 9)),
)
def test_cohort_schedule_matches_each_client_alone(sizes, batch, epochs, local_steps):
    plan = TrainPlan(local_epochs=epochs, local_steps=local_steps, batch_size=batch)
    seeds = client_seeds(0, 2, np.arange(len(sizes)))
    sched = cohort_schedule(np.array(sizes), seeds, plan)
    for k, n in enumerate(sizes):
        alone = batch_schedule(n, plan, int(seeds[k]))
        cohort = sched.batches(k)
        assert len(alone) == len(cohort) == sched.steps[k]
        for a, b in zip(alone, cohort, strict=True):
            assert np.array_equal(a, b)
    assert not sched.index[~sched.mask].any(), "padding points at row 0"


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 70), min_size=1, max_size=8),
    batch=st.integers(1, 16),
    epochs=st.integers(1, 3),
    local_steps=st.one_of(st.none(), st.integers(1, 9)),
    run_seed=st.integers(0, 2**40),
)
def test_torch_schedule_is_bit_identical_to_numpy(sizes, batch, epochs, local_steps, run_seed):
    """The accelerator path draws exactly the batches of the host path (here on the CPU;
    benchmarks/gpu_check.sh repeats the check on CUDA)."""
    plan = TrainPlan(local_epochs=epochs, local_steps=local_steps, batch_size=batch)
    sizes = np.array(sizes)
    seeds = client_seeds(run_seed, 7, np.arange(len(sizes)))
    expected = cohort_schedule(sizes, seeds, plan)
    index, mask = cohort_schedule_tensors(sizes, seeds, plan, steps_for(sizes, plan), "cpu")
    assert np.array_equal(index.numpy(), expected.index)
    assert np.array_equal(mask.numpy(), expected.mask)


PLANS = [
    TrainPlan(local_epochs=2, batch_size=4, lr=0.1),
    TrainPlan(local_epochs=1, batch_size=3, lr=0.05, momentum=0.9, weight_decay=1e-3),
    TrainPlan(local_epochs=2, batch_size=5, lr=0.05, momentum=0.8, nesterov=True, prox_mu=0.5),
    TrainPlan(local_steps=6, batch_size=4, optimizer="adam", lr=0.01, weight_decay=1e-4),
]


@pytest.mark.parametrize("plan", PLANS, ids=["sgd", "momentum-wd", "nesterov-prox", "adam"])
def test_vectorized_equals_sequential(plan):
    # sizes spread so clients take 1..8 steps: several buckets and padded steps
    data = population([1, 2, 3, 7, 8, 13, 16, 21, 30, 4])
    seq, vec, ex = both(MLP(6, [8, 5], 4), data, plan)
    assert ex.backend == "bmm"
    assert np.abs(seq.deltas - vec.deltas).max() < 1e-5
    assert np.array_equal(seq.steps, vec.steps)
    assert np.array_equal(seq.num_examples, vec.num_examples)
    assert np.allclose(seq.train_loss, vec.train_loss, atol=1e-5)
    assert np.abs(seq.deltas).max() > 1e-3, "training moved the model"


def test_tanh_and_no_bias_layers():
    model = nn.Sequential(nn.Linear(6, 7, bias=False), nn.Tanh(), nn.Linear(7, 4))
    seq, vec, ex = both(model, population([5, 9, 12]), PLANS[1])
    assert ex.backend == "bmm"
    assert np.abs(seq.deltas - vec.deltas).max() < 1e-5


class TwoTower(nn.Module):
    """Not a Sequential: exercises the torch.func (vmap) path."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(6, 5)
        self.head = nn.Linear(5, 4)

    def forward(self, x):
        return self.head(torch.relu(self.a(x)) * torch.sigmoid(self.b(x)))


def test_general_models_use_vmap_and_agree():
    seq, vec, ex = both(TwoTower(), population([3, 6, 11, 2]), PLANS[0])
    assert ex.backend == "vmap"
    assert np.abs(seq.deltas - vec.deltas).max() < 1e-5


def test_chunking_to_a_tiny_memory_budget_changes_nothing():
    data = population([5, 9, 12, 3, 3, 8])
    ids = np.array([5, 0, 3, 2])  # a subset, out of order
    seq, vec, _ = both(MLP(6, [8], 4), data, PLANS[1], ids=ids, budget=1e-6)
    assert np.abs(seq.deltas - vec.deltas).max() < 1e-5
    assert np.array_equal(vec.num_examples, data.sizes()[ids])


def test_models_with_buffers_fall_back(tmp_path):
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    assert "buffers" in unsupported_reason(bn)
    assert unsupported_reason(MLP(4, [3], 2)) is None
    with pytest.raises(ValueError, match="buffers"):
        VectorizedExecutor(bn, population([3, 3], features=4, classes=2))


def test_simulation_executors_agree(tmp_path):
    def run(executor: str):
        cfg = load_config(
            None,
            [
                f'output_dir="{tmp_path / executor}"',
                "rounds=4",
                "partition.num_clients=30",
                "client.momentum=0.5",
                f'simulation.executor="{executor}"',
            ],
        )
        sim = start_simulation(cfg)
        sim.run()
        return sim

    seq, vec = run("sequential"), run("vectorized")
    assert seq.executor.name == "sequential" and vec.executor.name == "vectorized"
    assert np.abs(seq.server.params - vec.server.params).max() < 1e-5
    start = vec.run_dir.records()[0]
    assert start["executor"] == "vectorized" and "bmm" in start["executor_note"]


def test_explicit_vectorized_with_impossible_device(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    cfg = load_config(None, [f'output_dir="{tmp_path}"', 'simulation.device="cuda"'])
    with pytest.raises(ConfigError, match="simulation.device"):
        start_simulation(cfg)


DP_PLANS = [
    TrainPlan(local_epochs=2, batch_size=4, lr=0.1, dp_sgd_clip=0.5),
    TrainPlan(
        local_epochs=2, batch_size=4, lr=0.1, dp_sgd_clip=0.5, dp_sgd_noise=1.0, momentum=0.5
    ),
]


@pytest.mark.parametrize("plan", DP_PLANS, ids=["clip-only", "clip-and-noise"])
@pytest.mark.parametrize("model_kind", ["mlp", "general"])
def test_dp_sgd_is_the_same_in_both_executors(plan, model_kind):
    model = MLP(6, [8, 5], 4) if model_kind == "mlp" else TwoTower()
    seq, vec, ex = both(model, population([3, 7, 12, 20, 5]), plan)
    assert ex.backend == ("bmm" if model_kind == "mlp" else "vmap")
    assert np.abs(seq.deltas - vec.deltas).max() < 1e-5
    assert np.abs(seq.deltas).max() > 1e-4


def test_dp_sgd_bounds_each_step():
    # without noise every step moves the model by at most lr * clip (mean of clipped grads)
    plan = TrainPlan(local_steps=3, batch_size=4, lr=0.1, dp_sgd_clip=0.01)
    _, vec, _ = both(MLP(6, [8], 4), population([8, 8, 8]), plan)
    assert np.linalg.norm(vec.deltas, axis=1).max() <= 3 * 0.1 * 0.01 + 1e-7
