"""The server's plan of each client's local work: memory, batch, precision, steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedloom.edge.memory import MB, TrainingMemory
from fedloom.edge.profiles import BUILTIN_PROFILES, DeviceProfile, builtin_profile
from fedloom.errors import ConfigError
from fedloom.records import Dispatch, TrainPlan
from fedloom.server.local_work import LocalWorkPlanner, steps_within

# 1,000 parameters, 4 KB of activations per example
MEMORY = TrainingMemory(parameters=1000, activation_bytes=4096, optimizer="sgd", momentum=True)


def test_training_memory_counts_parameters_state_and_activations_by_hand() -> None:
    # params, grads, global copy and one momentum buffer: 4 x 1000 floats
    assert MEMORY.fixed_bytes == 4 * 1000 * 4
    # 32 examples: forward activations kept, and as much again for their gradients
    assert MEMORY.bytes(32) == 16_000 + 32 * 2 * 4096
    assert MEMORY.bytes(32, "bf16") == 16_000 + 32 * 4096
    adam = TrainingMemory(1000, 4096, "adam")
    assert adam.fixed_bytes == 4 * 1000 * 5
    # the largest batch that fits 1 MB: (2^20 - 16000) // 8192 = 126
    assert MEMORY.largest_batch(1.0) == (MB - 16_000) // 8192 == 126
    assert MEMORY.largest_batch(16_000 / MB) == 0  # the model alone fills it
    assert MEMORY.largest_batch(math.inf) > 1 << 20


def _planner(**kwargs: object) -> LocalWorkPlanner:
    planner = LocalWorkPlanner(MEMORY, **kwargs)  # type: ignore[arg-type]
    profiles = [
        DeviceProfile("tiny", memory_mb=0.01),  # cannot hold the model
        DeviceProfile("small", memory_mb=0.1, fp16=True),  # batch (104857 - 16000) // 8192 = 10
        DeviceProfile("big", memory_mb=1024.0, bf16=True, fp16=True),
    ]
    planner.declare(np.array([0, 1, 2]), profiles)
    return planner


def _dispatches(ids: list[int], plan: TrainPlan) -> list[Dispatch]:
    return [Dispatch(c, 1, 0, plan, seed=c) for c in ids]


def test_a_device_that_cannot_hold_the_model_is_not_eligible() -> None:
    planner = _planner()
    assert planner.eligible(np.array([0, 1, 2, 7])).tolist() == [False, True, True, True]
    # undeclared clients (7) count as unlimited; without memory awareness all are eligible
    assert _planner(memory_aware=False).eligible(np.array([0, 1])).all()


def test_batches_are_capped_by_memory_and_precision_follows_the_hardware() -> None:
    plan = TrainPlan(batch_size=32)
    fitted = _planner(reduced_precision=True, qat=True).fit(_dispatches([1, 2, 9], plan))
    assert [d.plan.batch_size for d in fitted] == [(int(0.1 * MB) - 16_000) // 4096, 32, 32]
    assert [d.plan.precision for d in fitted] == ["fp16", "bf16", "fp32"]
    assert all(d.plan.qat for d in fitted)
    plain = _planner().fit(_dispatches([1, 2], plan))
    assert [d.plan.batch_size for d in plain] == [(int(0.1 * MB) - 16_000) // 8192, 32]
    assert [d.plan.precision for d in plain] == ["fp32", "fp32"]
    # nothing else of the plan or dispatch changes
    assert plain[1] == _dispatches([2], plan)[0]


def test_steps_within_budget_by_hand() -> None:
    full = np.array([10, 10, 10, 10, 10])
    step_s = np.array([1.0, 3.0, 20.0, np.nan, 0.5])
    budget = np.array([12.0, 12.0, 12.0, 12.0, -1.0])
    # 12 s at 1 s/step: all 10; at 3 s: 4; at 20 s: none; unknown speed: the full work;
    # no time left: none
    assert steps_within(full, step_s, budget).tolist() == [10, 4, 0, 10, 0]


def test_profiles_are_checked_and_choose_the_int8_backend() -> None:
    assert builtin_profile("low_end_phone").quantization_backend == "qnnpack"
    assert builtin_profile("x86_server").quantization_backend == "x86"
    assert set(BUILTIN_PROFILES) >= {"high_end_phone", "mid_phone", "low_end_phone", "iot"}
    with pytest.raises(ConfigError, match="memory_mb = -1"):
        DeviceProfile("bad", memory_mb=-1)
    with pytest.raises(ConfigError, match="threads = 0"):
        DeviceProfile("bad", threads=0)
    with pytest.raises(ConfigError, match="arch = 'mips'"):
        DeviceProfile("bad", arch="mips")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ms_per_sample = nan"):
        DeviceProfile("bad", ms_per_sample=float("nan"))
    with pytest.raises(ConfigError, match="'nope' is unknown"):
        builtin_profile("nope")


def test_an_update_claiming_more_steps_than_its_plan_is_refused() -> None:
    from fedloom.errors import RejectionKind, UpdateRejected
    from fedloom.optim import FedAvg
    from fedloom.records import ClientMetrics, Update
    from fedloom.server.convergence import ConvergenceMonitor
    from fedloom.server.sync import SyncServer

    server = SyncServer(
        np.zeros(4, np.float32),
        num_clients=2,
        clients_per_round=2,
        plan=TrainPlan(local_epochs=2, batch_size=10),
        optimizer=FedAvg(lr=1.0),
        monitor=ConvergenceMonitor(),
        seed=0,
    )
    d0, d1 = server.begin_round()
    # 25 examples, batch 10, 2 epochs: 6 steps
    server.bound_steps(np.array([0, 1]), np.array([6, 6]))

    def update(d: Dispatch, steps: int) -> Update:
        metrics = ClientMetrics(1.0, steps, 2.0, 1.0)
        return Update(d.client_id, d.round, d.version, np.ones(4, np.float32), 25, metrics)

    with pytest.raises(UpdateRejected, match="steps = 60 exceeds the 6 its plan allows") as err:
        server.receive(update(d0, 60))
    assert err.value.kind == RejectionKind.BAD_COUNT
    server.receive(update(d1, 6))
    assert server.close_round().completed == (1,)
