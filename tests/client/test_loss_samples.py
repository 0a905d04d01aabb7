"""Progress monitoring: a few evenly spaced batch losses per client, the same in both
executors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import vector_to_parameters

from fedloom.client.progress import sample_matrix, sample_steps
from fedloom.client.schedule import batch_schedule, client_seeds
from fedloom.client.trainer import TorchTrainer
from fedloom.data import ClientPartition
from fedloom.errors import ConfigError
from fedloom.models import MLP
from fedloom.params import module_vector
from fedloom.records import Dispatch, TrainPlan
from fedloom.sim.executor import SequentialExecutor, run_dispatches
from fedloom.sim.vectorized import VectorizedExecutor

PLAN = TrainPlan(local_epochs=2, batch_size=4, lr=0.1, momentum=0.5)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def population(sizes: list[int]) -> ClientPartition:
    rng = np.random.default_rng(1)
    n = int(np.sum(sizes))
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=n).astype(np.int64)
    return ClientPartition(x, y, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), 3)


def model() -> MLP:
    torch.manual_seed(0)
    return MLP(6, (8,), 3)


@pytest.mark.parametrize("steps", [0, 1, 2, 3, 4, 5, 9, 10, 37, 1000])
@pytest.mark.parametrize("count", [0, 1, 2, 4, 7])
def test_sampled_steps_are_evenly_spaced_with_the_first_and_last(steps: int, count: int) -> None:
    picked = sample_steps(steps, count)
    want = np.unique(np.rint(np.linspace(0, steps - 1, min(count, steps))).astype(np.int64))
    assert np.array_equal(picked, want if steps and count else np.zeros(0, np.int64))
    assert len(picked) == min(count, steps)
    if min(count, steps) >= 2:
        assert picked[0] == 0 and picked[-1] == steps - 1
    row = sample_matrix(np.array([steps, 3]), count)[0]
    assert np.array_equal(row[row >= 0], picked) and (row[len(picked) :] == -1).all()


def test_first_and_last_samples_are_the_first_and_last_batch_losses() -> None:
    net = model()
    data = population([23])
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    trainer = TorchTrainer(net)
    g = trainer.flat.params.clone()
    out = torch.empty_like(g)
    m = trainer.train(g, x, y, PLAN, 11, out)
    batches = batch_schedule(len(y), PLAN, 11)
    assert m.steps == len(batches) == 12 and len(m.loss_samples) == 4
    # independently: the global model on the first batch; the model after all but the
    # last step on the last batch
    trainer.train(g, x, y, PLAN, 11, out, max_steps=m.steps - 1)
    reference = model()
    with torch.no_grad():
        first = F.cross_entropy(reference(x[batches[0]]), y[batches[0]])
        vector_to_parameters(g + out, reference.parameters())
        last = F.cross_entropy(reference(x[batches[-1]]), y[batches[-1]])
    assert m.loss_samples[0] == pytest.approx(float(first), abs=1e-6)
    assert m.loss_samples[-1] == pytest.approx(float(last), abs=1e-6)
    assert np.mean(m.loss_samples) != m.train_loss  # samples, not the mean


def test_no_samples_when_monitoring_is_off() -> None:
    data = population([9, 5])
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    trainer = TorchTrainer(model(), loss_samples=0)
    g = trainer.flat.params.clone()
    assert trainer.train(g, x, y, PLAN, 0, torch.empty_like(g)).loss_samples == ()
    vec = VectorizedExecutor(model(), data, loss_samples=0)
    res = vec.train_cohort(module_vector(model()), np.arange(2), np.arange(2), PLAN)
    assert res.loss_samples == ((), ())
    with pytest.raises(ConfigError, match="loss_samples = -1"):
        TorchTrainer(model(), loss_samples=-1)
    with pytest.raises(ConfigError, match="loss_samples = 2.5"):
        VectorizedExecutor(model(), data, loss_samples=2.5)


@pytest.mark.parametrize("count", [1, 4, 6])
def test_executors_sample_the_same_losses_of_each_clients_own_steps(count: int) -> None:
    sizes = [1, 3, 9, 17, 40, 6, 25]  # 2 to 20 steps: several buckets, chunks of two
    data = population(sizes)
    net = model()
    seq = SequentialExecutor(TorchTrainer(copy.deepcopy(net), loss_samples=count), data)
    vec = VectorizedExecutor(copy.deepcopy(net), data, memory_budget_mb=0.01, loss_samples=count)
    ids = np.arange(len(sizes))
    seeds = client_seeds(5, 2, ids)
    g = module_vector(net)
    caps = np.array([50, 50, 3, 50, 7, 50, 50])  # stragglers: fewer steps
    a = seq.train_cohort(g, ids, seeds, PLAN, caps)
    b = vec.train_cohort(g, ids, seeds, PLAN, caps)
    assert np.allclose(a.deltas, b.deltas, atol=1e-5)
    for k in range(len(sizes)):
        assert len(a.loss_samples[k]) == len(b.loss_samples[k]) == min(count, a.steps[k])
        assert np.allclose(a.loss_samples[k], b.loss_samples[k], atol=1e-5)
    dispatches = [Dispatch(int(i), 1, 0, PLAN, int(s)) for i, s in zip(ids, seeds, strict=True)]
    for executor in (seq, vec):  # uncapped: what train_cohort gives, in ClientMetrics
        updates = run_dispatches(executor, g, dispatches)
        res = executor.train_cohort(g, ids, seeds, PLAN)
        assert [u.metrics.loss_samples for u in updates] == list(res.loss_samples)
        assert all(len(u.metrics.loss_samples) == min(count, u.metrics.steps) for u in updates)
