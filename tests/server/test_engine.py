"""The round engine without a runtime: a fake clock, a fake evaluator and an in-memory run
store drive whole rounds, which shows what the engine owns (cohort, registry, records,
checkpoints, stop) and that it needs no simulator, network or run directory. Also the
cohort policy, the one owner of the cohort size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedloom.client.evaluation import Evaluation
from fedloom.metrics import RoundRecord, StopRecord, validate
from fedloom.optim import make_server_optimizer
from fedloom.records import ClientMetrics, TrainPlan, Update
from fedloom.server.cohort import CohortPolicy
from fedloom.server.convergence import ConvergenceMonitor
from fedloom.server.engine import EngineSettings, RoundEngine
from fedloom.server.privacy_plan import PrivacyPlan
from fedloom.server.registry import ClientRegistry
from fedloom.server.selection import PoissonSelector, UniformSelector
from fedloom.server.stats import ClientStats
from fedloom.server.sync import SyncServer

N, DIM = 6, 4


class MemoryStore:
    """A run store that keeps records and checkpoints in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[dict[str, Any]] = []
        self.saved: list[int] = []

    def append(self, record: dict[str, Any]) -> None:
        self.lines.append(record)

    def records(self) -> list[dict[str, Any]]:
        return list(self.lines)

    def save_checkpoint(self, round: int, state: dict, keep: int) -> Path:
        assert "attempts" in state["meta"] and state["meta"]["config"] == "the config"
        self.saved.append(round)
        return self.path / f"round-{round:06d}.npz"


def _engine(tmp_path: Path, cohort: CohortPolicy, rounds: int = 3) -> tuple[RoundEngine, list]:
    clock = iter(range(1000, 100000, 10))
    evaluated: list[np.ndarray] = []

    def evaluate(params: np.ndarray, federated: bool) -> Evaluation:
        evaluated.append(params.copy())
        return Evaluation({"accuracy": 0.5 + 0.1 * len(evaluated), "loss": 1.0})

    server = SyncServer(
        np.zeros(DIM, np.float32),
        N,
        cohort.clients_per_round,
        TrainPlan(),
        make_server_optimizer("fedavg"),
        ConvergenceMonitor(),
        seed=1,
        selector=cohort.selector("uniform", None, {}),
    )
    registry = ClientRegistry(tmp_path / "clients.sqlite")
    registry.register(np.full(N, 10), np.ones(N))
    engine = RoundEngine(
        server,
        registry,
        cohort,
        EngineSettings(rounds=rounds, seed=1, checkpoint_every=2, config_text="the config"),
        MemoryStore(tmp_path),
        evaluate,
        has_holdout=False,
        now=lambda: float(next(clock)),
        privacy=PrivacyPlan(enabled=False),
    )
    return engine, evaluated


def _play(engine: RoundEngine, available: np.ndarray, deliver: int) -> dict[str, Any]:
    """One round as a runtime plays it: the first ``deliver`` of the cohort upload."""
    dispatches = engine.open_round(available)
    cohort = [d.client_id for d in dispatches]
    for d in dispatches[:deliver]:
        delta = np.full(DIM, 0.1 * (d.client_id + 1), np.float32)
        engine.server.receive(
            Update(d.client_id, d.round, d.version, delta, 10, ClientMetrics(0.5, 1, 1.0))
        )
    failed = {c: "deadline" for c in cohort[deliver:]}
    for c, why in failed.items():
        engine.server.fail(c, why)
    result = engine.close_round()
    durations = np.full(len(result.clients.ids), 3.0)
    engine.record_round(np.array(cohort), result, durations, failed, {})
    return engine.finish_round(result, 0.0, {"attempt": engine.attempts, "dispatched": len(cohort)})


def test_rounds_run_on_an_injected_clock_evaluator_and_store(tmp_path: Path) -> None:
    engine, evaluated = _engine(tmp_path, CohortPolicy(3))
    available = np.arange(N)
    records = [_play(engine, available, deliver=2) for _ in range(3)]
    assert engine.finished and engine.attempts == 3
    engine.conclude()
    store = engine.run_dir
    assert isinstance(store, MemoryStore)
    typed = validate(store.lines)  # the records fit the one metrics.jsonl schema
    assert [type(r) for r in typed] == [RoundRecord] * 3 + [StopRecord]
    assert [r["completed"] for r in records] == [2, 2, 2]
    assert [r["accuracy"] for r in records] == pytest.approx([0.6, 0.7, 0.8])
    assert len(evaluated) == 3 and not np.array_equal(evaluated[-1], np.zeros(DIM))
    assert store.saved == [2, 3]  # every 2 rounds and when the run finishes
    stats = engine.registry.stats()
    assert stats.selected.sum() == 9 and stats.completed.sum() == 6
    assert typed[-1].reason == "max_rounds"  # type: ignore[attr-defined]


def test_the_engine_never_selects_an_offline_client_without_dp(tmp_path: Path) -> None:
    engine, _ = _engine(tmp_path, CohortPolicy(3))
    online = np.array([1, 4])
    cohort = {d.client_id for d in engine.open_round(online)}
    assert cohort <= {1, 4}


def test_cohort_policy_owns_size_pool_and_over_selection(tmp_path: Path) -> None:
    registry = ClientRegistry(tmp_path / "clients.sqlite")
    registry.register(np.full(N, 10), np.ones(N))
    stats: ClientStats = registry.stats()
    plain = CohortPolicy(4, over_selection=1.5)
    assert plain.size(stats) == 6
    assert CohortPolicy(4, over_selection="auto").size(stats) == 6  # no history: 1 / 0.77
    assert plain.enough(6) == 4 and plain.enough(4) is None
    online = np.array([0, 2])
    assert plain.pool(online) is online
    fixed = CohortPolicy(4, over_selection=1.0, sampling="fixed", sampling_rate=4 / N)
    assert fixed.sample_all and fixed.pool(online) is None  # DP: drawn from all N
    assert fixed.size(stats) == 4  # exactly the accountant's cohort
    assert isinstance(fixed.selector("oort", None, {}), UniformSelector)
    poisson = CohortPolicy(4, sampling="poisson", sampling_rate=0.5)
    assert isinstance(poisson.selector("oort", None, {}), PoissonSelector)
    assert poisson.enough(9) is None  # a Poisson cohort is never cut
