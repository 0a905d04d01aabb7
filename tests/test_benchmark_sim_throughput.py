"""The hand-written baselines of benchmarks/sim_throughput.py compute fedloom's FedAvg
update and follow the fair loop's definition (one module and one optimizer reused, the
module pointed at one weight buffer at each client's start, gradients zeroed in place);
the quick run prints both kinds of workload and writes ratios and targets derived from
its own measurements."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from fedloom.client.schedule import client_seeds
from fedloom.client.trainer import TorchTrainer
from fedloom.models import builtin_task
from fedloom.params import module_vector
from fedloom.records import TrainPlan
from fedloom.sim.executor import SequentialExecutor

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "sim_throughput.py"


def load_benchmark() -> ModuleType:
    """Import the script as a module (it imports ``targets`` from its own folder)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("sim_throughput_bench", SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPT.parent))


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark()


def test_every_baseline_computes_the_sequential_executors_fedavg_update(
    bench: ModuleType,
) -> None:
    data = bench.synthetic_clients(6, samples=40)
    task = builtin_task("mlp", data.sample_shape, "classes", 10, hidden=(16,))
    model = task.build_model(0)
    g = module_vector(model)
    ids = np.array([0, 2, 3, 5])
    seeds = client_seeds(3, 1, ids)
    plan = TrainPlan(local_epochs=2, batch_size=16, lr=0.1)
    result = SequentialExecutor(
        TorchTrainer(copy.deepcopy(model), task.resolved("classes")), data
    ).train_cohort(g, ids, seeds, plan)
    weights = result.num_examples / result.num_examples.sum()
    expected = weights @ result.deltas.astype(np.float64)
    assert np.abs(expected).max() > 1e-3  # the clients did train
    for train in (
        bench.reused_loop(copy.deepcopy(model), data),
        bench.vmap_loop(copy.deepcopy(model), data, chunk=3),  # two chunks
        bench.deepcopy_loop(copy.deepcopy(model), data),
    ):
        np.testing.assert_allclose(train(g, ids, seeds, plan), expected, atol=1e-6)
        # the global vector is an input only
        np.testing.assert_array_equal(g, module_vector(model))


def test_reused_loop_keeps_one_buffer_one_optimizer_and_its_gradients(
    bench: ModuleType,
) -> None:
    data = bench.synthetic_clients(3, samples=20)
    model = builtin_task("mlp", data.sample_shape, "classes", 10, hidden=(8,)).build_model(0)
    created: list[torch.optim.Optimizer] = []
    real_sgd = torch.optim.SGD

    class CountingSGD(real_sgd):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    torch.optim.SGD = CountingSGD
    try:
        train = bench.reused_loop(model, data)
        g = module_vector(model)
        ids = np.arange(3)
        train(g, ids, client_seeds(0, 1, ids), bench.PLAN)
        params = list(model.parameters())
        grads = [p.grad.data_ptr() for p in params]
        storage = {p.untyped_storage().data_ptr() for p in params}
        train(g, ids, client_seeds(0, 2, ids), bench.PLAN)
    finally:
        torch.optim.SGD = real_sgd
    assert len(created) == 1  # one optimizer for every client and pass
    assert [p.grad.data_ptr() for p in model.parameters()] == grads  # zeroed in place
    assert len(storage) == 1  # every parameter is a view of the one weight buffer
    assert {p.untyped_storage().data_ptr() for p in model.parameters()} == storage


def test_quick_run_reports_tiny_and_realistic_workloads_with_ratios_and_targets(
    tmp_path: Path,
) -> None:
    out = tmp_path / "sim_throughput.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--workloads",
            "digits,synthetic_5ep",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result)[-1] == "targets"
    tiny, realistic = result["workloads"]["digits"], result["workloads"]["synthetic_5ep"]
    assert tiny["local_epochs"] == 1 and tiny["steps_per_client"] == [1, 1]
    assert realistic["local_epochs"] == 5 and realistic["samples_per_client"] == [100, 100]
    assert realistic["steps_per_client"] == [20, 20]  # 4 batches of 32 (the last 4) x 5
    assert set(tiny["updates_per_s"]["1"]) == {
        "plain_reused",
        "plain_vmap",
        "plain_deepcopy",
        "sequential",
        "vectorized",
    }
    assert "plain_deepcopy" not in realistic["updates_per_s"]["1"]
    for r in (tiny, realistic):
        rates, ratios = r["updates_per_s"]["1"], r["ratios"]["1"]
        assert ratios["vectorized/plain_vmap"] == round(
            rates["vectorized"] / rates["plain_vmap"], 3
        )
        assert ratios["sequential/plain_reused"] == round(
            rates["sequential"] / rates["plain_reused"], 3
        )
        assert max(r["max_abs_delta_diff"].values()) <= 1e-4
    targets = {t["name"]: t for t in result["targets"]}
    best = next(t for n, t in targets.items() if n.startswith("synthetic_5ep: fedloom's"))
    assert best["value"] == realistic["ratios"]["1"]["best_fedloom/best_plain"]
    assert best["met"] == (best["value"] >= 1)
    assert "synthetic_5ep" in done.stdout and "best_fedloom/best_plain" in done.stdout


def test_unknown_workload_is_refused_by_name(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["sim_throughput.py", "--workloads", "digits,nope"])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    assert "--workloads 'digits,nope'" in capsys.readouterr().err
