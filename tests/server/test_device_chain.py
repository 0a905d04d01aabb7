"""The server chain over a cohort that stays on its device (CPU tensors here): the same
aggregate and model as the host path for every stage it runs, the host fallback for the
stages it does not, the same refusals, and no client's delta copied to the host."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from fedloom.aggregation import Krum
from fedloom.errors import FedloomError, RejectionKind
from fedloom.optim import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi, ServerOptimizer
from fedloom.privacy.central import CentralDP
from fedloom.privacy.mechanisms import QuantileClipper
from fedloom.records import ClientMetrics, Dispatch, RoundResult, TrainPlan, Update
from fedloom.server import device_chain
from fedloom.server.convergence import ConvergenceMonitor
from fedloom.server.device_chain import CohortRows
from fedloom.server.sync import SyncServer
from fedloom.transforms.base import chain
from fedloom.transforms.clipping import ClipL2

D, N, K = 7, 10, 6
J = 3  # sampled batch losses per client


def server(
    optimizer: ServerOptimizer | None = None,
    dp: Callable[[], CentralDP] | None = None,
    **kw: object,
) -> SyncServer:
    return SyncServer(
        np.linspace(-1, 1, D).astype(np.float32),
        num_clients=N,
        clients_per_round=K,
        plan=TrainPlan(),
        optimizer=optimizer or FedAvg(),
        monitor=ConvergenceMonitor(),
        seed=3,
        dp=None if dp is None else dp(),
        **kw,  # type: ignore[arg-type]
    )


def cohort(dispatches: list[Dispatch], rnd: int, bad: dict[int, float] | None = None) -> CohortRows:
    """Deterministic rows of mixed norms (some over a clip of 1), losses and counts;
    ``bad``: row -> a value written into its first coordinate."""
    ids = np.array([d.client_id for d in dispatches], dtype=np.int64)
    rng = np.random.default_rng([rnd, 5])
    deltas = (rng.standard_normal((len(ids), D)) * rng.uniform(0.1, 2.0, (len(ids), 1))).astype(
        np.float32
    )
    for row, value in (bad or {}).items():
        deltas[row, 0] = value
    steps = rng.integers(1, 5, len(ids))
    samples = np.where(
        np.arange(J)[None, :] < np.minimum(steps, J)[:, None],
        rng.uniform(1, 2, (len(ids), J)),
        np.nan,
    )
    return CohortRows(
        round=dispatches[0].round,
        version=dispatches[0].version,
        client_ids=ids,
        deltas=torch.from_numpy(deltas),
        num_examples=rng.integers(1, 40, len(ids)),
        train_loss=rng.uniform(0.5, 2.0, len(ids)),
        train_loss_sq=rng.uniform(1.0, 4.0, len(ids)),
        steps=steps.astype(np.int64),
        epochs=np.ones(len(ids)),
        loss_samples=samples,
    )


def updates_of(rows: CohortRows) -> list[Update]:
    """The same cohort as ``Update`` records (the host path's input)."""
    deltas = rows.deltas.numpy()
    out = []
    for i, cid in enumerate(rows.client_ids.tolist()):
        taken = min(int(rows.steps[i]), J)
        metrics = ClientMetrics(
            float(rows.train_loss[i]),
            int(rows.steps[i]),
            float(rows.epochs[i]),
            float(rows.train_loss_sq[i]),
            tuple(rows.loss_samples[i, :taken].tolist()),
        )
        out.append(
            Update(
                cid, rows.round, rows.version, deltas[i].copy(), int(rows.num_examples[i]), metrics
            )
        )
    return out


def play(srv: SyncServer, on_device: bool, rounds: int = 2, bad: dict | None = None) -> list:
    """``rounds`` rounds; each round's result and refusals (kind by client)."""
    out = []
    for r in range(1, rounds + 1):
        rows = cohort(srv.begin_round(), r, bad)
        if on_device:
            refused = {c: e.kind for c, e in srv.receive_cohort(rows).items()}
        else:
            refused = {}
            for u in updates_of(rows):
                try:
                    srv.receive(u)
                except FedloomError as err:
                    refused[u.client_id] = err.kind  # type: ignore[attr-defined]
        out.append((srv.close_round(), refused))
    return out


def assert_same(a: SyncServer, b: SyncServer, ra: list, rb: list) -> None:
    np.testing.assert_allclose(a.params, b.params, rtol=1e-6, atol=1e-6)
    for key in a.opt_state:
        np.testing.assert_allclose(a.opt_state[key], b.opt_state[key], rtol=1e-5, atol=1e-6)
    for (x, fx), (y, fy) in zip(ra, rb, strict=True):
        x: RoundResult
        assert fx == fy
        assert (x.status, x.completed, x.failed, x.rejected, x.num_examples) == (
            y.status,
            y.completed,
            y.failed,
            y.rejected,
            y.num_examples,
        )
        assert x.update_norm == pytest.approx(y.update_norm, rel=1e-6)
        assert x.train_loss == pytest.approx(y.train_loss, rel=1e-12, nan_ok=True)
        np.testing.assert_allclose(x.clients.contribution, y.clients.contribution, atol=1e-6)
        np.testing.assert_array_equal(x.clients.steps, y.clients.steps)
        assert [e.client_id for e in x.excluded] == [e.client_id for e in y.excluded]


def dp_fixed() -> CentralDP:
    return CentralDP(clip_norm=1.0, noise_multiplier=0.7, expected_clients=K, seed=4)


def dp_adaptive() -> CentralDP:
    return CentralDP(
        clip_norm=1.0,
        noise_multiplier=0.7,
        expected_clients=K,
        seed=4,
        clipper=QuantileClipper(1.0, count_stddev=2.0),
    )


CASES = {
    "fedavg": {},
    "fedavgm": {"optimizer": FedAvgM(lr=0.5)},
    "fedadam": {"optimizer": FedAdam()},
    "fedyogi": {"optimizer": FedYogi()},
    "fedadagrad": {"optimizer": FedAdagrad()},
    "clip_l2 transform": {"transforms": chain(ClipL2(1.0))},
    "central dp": {"dp": dp_fixed, "optimizer": FedAdam()},
    "central dp, adaptive clip, quorum": {"dp": dp_adaptive, "quorum": 2},
    "clip_l2 transform, then central dp": {"dp": dp_fixed, "transforms": chain(ClipL2(0.8))},
    "max_examples": {"max_examples": 10},
}


@pytest.mark.parametrize("case", list(CASES))
def test_device_chain_gives_the_host_model(case: str) -> None:
    host, dev = server(**CASES[case]), server(**CASES[case])
    rh, rd = play(host, False), play(dev, True)
    assert dev.last_chain == "cpu"
    assert host.last_chain is None
    assert_same(host, dev, rh, rd)
    if case == "max_examples":
        assert rd[0][0].num_examples == rh[0][0].num_examples


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"reducer": Krum(1)}, "reducer Krum has no device implementation"),
        (
            {"transforms": chain(ClipL2(1.0), ClipL2(0.5))},
            None,  # both stages have a device form
        ),
    ],
)
def test_stages_without_a_device_form_run_on_the_host(kw: dict, reason: str | None) -> None:
    host, dev = server(**kw), server(**kw)
    rh, rd = play(host, False), play(dev, True)
    assert dev.last_chain == ("cpu" if reason is None else f"host: {reason}")
    assert_same(host, dev, rh, rd)


class Scale:
    """A server transform with no device form."""

    def init(self, dim: int) -> dict:
        return {}

    def apply(self, updates: np.ndarray, state: dict, ctx: object) -> tuple[np.ndarray, dict]:
        return updates * np.float32(0.5), state


def test_an_unsupported_transform_falls_back_with_its_reason() -> None:
    host, dev = (
        server(transforms=chain(ClipL2(1.0), Scale())),
        server(transforms=chain(ClipL2(1.0), Scale())),
    )
    rh, rd = play(host, False), play(dev, True)
    assert dev.last_chain == "host: server transform Scale has no device implementation"
    assert_same(host, dev, rh, rd)


def test_refusals_match_the_host_path() -> None:
    bad = {1: float("nan"), 3: 3e38}  # nonfinite, and a norm whose square overflows
    host, dev = server(), server()
    rh, rd = play(host, False, bad=bad), play(dev, True, bad=bad)
    kinds = set(rd[0][1].values())
    assert kinds == {RejectionKind.NONFINITE, RejectionKind.OVERFLOW}
    assert_same(host, dev, rh, rd)


def test_stale_unselected_and_bad_metrics_are_refused() -> None:
    srv = server()
    dispatches = srv.begin_round()
    rows = cohort(dispatches, 1)
    outsider = next(c for c in range(N) if c not in rows.client_ids)
    ids = rows.client_ids.copy()
    ids[0] = outsider
    loss = rows.train_loss.copy()
    loss[2] = np.inf
    counts = rows.num_examples.copy()
    counts[4] = 0
    odd = CohortRows(
        **{**rows.__dict__, "client_ids": ids, "train_loss": loss, "num_examples": counts}
    )
    refused = srv.receive_cohort(odd)
    assert {c: e.kind for c, e in refused.items()} == {
        outsider: RejectionKind.UNSELECTED,
        int(ids[2]): RejectionKind.NONFINITE,
        int(ids[4]): RejectionKind.BAD_COUNT,
    }
    result = srv.close_round()
    assert len(result.completed) == K - 3 and result.rejected == 3
    stale = server()
    rows = cohort(stale.begin_round(), 1)
    late = CohortRows(**{**rows.__dict__, "version": 5})
    assert {e.kind for e in stale.receive_cohort(late).values()} == {RejectionKind.STALE_VERSION}


def test_a_round_takes_one_cohort_and_no_single_updates_after_it() -> None:
    srv = server()
    rows = cohort(srv.begin_round(), 1)
    srv.receive_cohort(rows)
    with pytest.raises(FedloomError, match="already has updates"):
        srv.receive_cohort(rows)
    with pytest.raises(FedloomError, match="duplicate"):
        srv.receive(updates_of(rows)[0])


def test_no_client_delta_is_copied_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    copied: list[tuple[int, ...]] = []
    real = device_chain.to_host

    def spy(t: torch.Tensor) -> np.ndarray:
        copied.append(tuple(t.shape))
        return real(t)

    monkeypatch.setattr(device_chain, "to_host", spy)
    for kw in ({"optimizer": FedAdam()}, {"dp": dp_adaptive}, {"transforms": chain(ClipL2(1.0))}):
        copied.clear()
        play(server(**kw), True, rounds=1)
        assert copied, "the device chain copies its per-client checks and its sum"
        assert all(len(s) == 1 for s in copied), copied
        assert max(int(np.prod(s)) for s in copied) <= max(D + 1, K)
    # the fallback copies the rows, through the same function
    copied.clear()
    play(server(reducer=Krum(1)), True, rounds=1)
    assert (K, D) in copied


def test_begin_cohort_dispatches_what_begin_round_does() -> None:
    a, b = server(), server()
    for _ in range(2):
        dispatches, cohort = a.begin_round(), b.begin_cohort(deadline=5.0)
        assert cohort.client_ids.tolist() == [d.client_id for d in dispatches]
        assert cohort.seeds.tolist() == [d.seed for d in dispatches]
        assert (cohort.round, cohort.version, cohort.plan, cohort.deadline) == (
            dispatches[0].round,
            dispatches[0].version,
            dispatches[0].plan,
            5.0,
        )
        a.receive_cohort(cohort_from(a, dispatches))
        b.receive_cohort(cohort_from(b, dispatches))
        assert a.close_round().completed == b.close_round().completed


def cohort_from(srv: SyncServer, dispatches: list[Dispatch]) -> CohortRows:
    return cohort(dispatches, srv.round + 1)
