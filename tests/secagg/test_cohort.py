"""A round's updates through SecAgg+: FedAvg weights, DP clipping, dropouts, the server's sum."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.errors import FedloomError, RejectionKind, UpdateRejected
from fedloom.optim import FedAvg
from fedloom.privacy.central import CentralDP
from fedloom.privacy.mechanisms import clip_rows
from fedloom.records import ClientMetrics, TrainPlan, Update
from fedloom.secagg import SecAggError
from fedloom.secagg.cohort import LOSS_RANGE, SecureAggregator, SecureSum
from fedloom.secagg.distributed_dp import DistributedDiscreteGaussian
from fedloom.server.convergence import ConvergenceMonitor
from fedloom.server.sync import SyncServer

DIM = 40
COHORT = [3, 7, 11, 12, 20, 21, 30, 31]
SIZES = {c: 5 + 3 * i for i, c in enumerate(COHORT)}  # at most MAX_EXAMPLES
MAX_EXAMPLES = 40


def updates(ids: list[int], scale: float = 0.3) -> list[Update]:
    out = []
    for c in ids:
        rng = np.random.default_rng(c)
        delta = (scale * rng.standard_normal(DIM)).astype(np.float32)
        metrics = ClientMetrics(train_loss=float(rng.uniform(0.1, 3)), steps=2, epochs=1.0)
        out.append(Update(c, 1, 0, delta, SIZES.get(c, 9), metrics))
    return out


def test_fedavg_sum_is_exact_up_to_the_encoding_with_dropouts_at_every_stage() -> None:
    agg = SecureAggregator(DIM, MAX_EXAMPLES, neighbours=4, threshold=0.3, clip=1.0)
    dropouts = {3: "advertise_keys", 7: "share_keys", 11: "masked_input", 12: "unmasking"}
    sent = updates([c for c in COHORT if c not in (3, 7, 11)])
    result = agg.aggregate(COHORT, sent, dropouts, attempt=1)
    assert result.abort is None and result.rejected == {}
    total = result.total
    # the client that dropped before unmasking still counts: its masked input arrived
    assert total.included.tolist() == [12, 20, 21, 30, 31]
    count = len(total.included)
    w = np.array([u.num_examples for u in sent]) / MAX_EXAMPLES
    rows = np.stack([u.delta for u in sent]).astype(np.float64)
    bound = agg.error_bound(len(COHORT), count)
    assert np.abs(total.delta - w @ np.clip(rows, -1, 1)).max() <= bound
    unit = agg.fixed_point(len(COHORT)).error_bound * count
    assert abs(total.weight - w.sum()) <= unit
    assert abs(total.loss - w @ [u.metrics.train_loss for u in sent]) <= LOSS_RANGE * unit
    fedavg = np.array([u.num_examples for u in sent]) @ rows / sum(u.num_examples for u in sent)
    assert np.abs(total.delta / total.weight - fedavg).max() <= 2 * bound / (w.sum() - unit)
    assert result.report.upload_bytes_per_client > 0 and result.neighbours == 4


def test_central_dp_clients_clip_their_own_updates_and_count_the_unclipped() -> None:
    agg = SecureAggregator(DIM, MAX_EXAMPLES)
    sent = updates(COHORT[:4], scale=0.1) + updates(COHORT[4:], scale=3.0)
    result = agg.aggregate(COHORT, sent, {}, attempt=2, dp_clip=1.5)
    clipped, norms = clip_rows(np.stack([u.delta for u in sent]), 1.5)
    assert agg.value_range(1.5) == 1.5  # an L2-clipped update has no larger coordinate
    bound = agg.error_bound(len(COHORT), len(COHORT), dp_clip=1.5)
    assert np.abs(result.total.delta - clipped.sum(axis=0, dtype=np.float64)).max() <= bound
    assert result.total.unclipped == np.count_nonzero(norms <= 1.5) == 4


def test_bad_updates_are_not_sent_and_too_many_dropouts_abort() -> None:
    agg = SecureAggregator(DIM, MAX_EXAMPLES, neighbours="all")
    sent = updates(COHORT)
    sent[0] = Update(3, 1, 0, np.full(DIM, np.nan, np.float32), 5, sent[0].metrics)
    result = agg.aggregate(COHORT, sent, {3: "unmasking"}, attempt=3)
    assert list(result.rejected) == [3]
    assert result.rejected[3].reason == "non-finite update or loss: not sent"
    assert result.rejected[3].kind == RejectionKind.NONFINITE
    assert 3 not in result.total.included  # with nothing to send it is gone by masked_input
    assert result.dropped == {"masked_input": 1}
    assert (result.neighbours, result.threshold) == (7, 5)  # complete graph, t = floor(4) + 1
    gone = {c: "masked_input" for c in COHORT[:4]}
    aborted = agg.aggregate(COHORT, updates(COHORT[4:]), gone, attempt=4)
    assert aborted.total is None and "below the threshold 5" in aborted.abort
    with pytest.raises(SecAggError, match="not in the cohort"):
        agg.aggregate(COHORT, updates([99]), {}, attempt=5)
    with pytest.raises(SecAggError, match="unknown dropout stage"):
        agg.aggregate(COHORT, [], {3: "training"}, attempt=5)


def test_graph_defaults_and_thresholds() -> None:
    agg = SecureAggregator(DIM, MAX_EXAMPLES)
    assert agg.graph(10) == (9, 6)  # small cohorts: SecAgg+ degree covers everyone
    assert agg.graph(100) == (28, 15)  # 4 ceil(log2 100) = 28 neighbours, 29 holders
    assert SecureAggregator(DIM, MAX_EXAMPLES, "all", threshold=1.0).graph(100) == (None, 100)
    assert SecureAggregator(DIM, MAX_EXAMPLES, 6).graph(100) == (6, 4)


def test_a_16_bit_ring_with_stochastic_rounding_halves_the_upload() -> None:
    agg16 = SecureAggregator(DIM, MAX_EXAMPLES, bits=16, rounding="stochastic", clip=1.0)
    agg32 = SecureAggregator(DIM, MAX_EXAMPLES, clip=1.0)
    assert agg16.upload_bytes() * 2 == agg32.upload_bytes() == 4 * (DIM + 3)
    sent = updates(COHORT)
    result = agg16.aggregate(COHORT, sent, {}, attempt=6)
    w = np.array([u.num_examples for u in sent]) / MAX_EXAMPLES
    exact = w @ np.stack([u.delta for u in sent]).astype(np.float64)
    assert np.abs(result.total.delta - exact).max() <= agg16.error_bound(8, 8)


def test_distributed_noise_shares_come_only_from_included_clients() -> None:
    mech = DistributedDiscreteGaussian(1.0, DIM, len(COHORT), 2.0, bits=16)
    agg = SecureAggregator(DIM, MAX_EXAMPLES, bits=16)
    assert agg.upload_bytes(mech) == 2 * (64 + 3)
    sent = updates(COHORT[2:])
    result = agg.aggregate(COHORT, sent, {3: "share_keys", 7: "masked_input"}, 7, None, mech)
    assert len(result.total.included) == 6
    noise = result.total.delta - np.stack([u.delta for u in sent]).sum(axis=0)
    # the noise of 6 of the 8 planned shares, stddev 2 * sqrt(6 / 8) per coordinate
    assert noise.std() == pytest.approx(2 * math.sqrt(6 / 8), rel=0.5)


# ------------------------------------------------------------------- the server's side


def server(dp: CentralDP | None = None, quorum: int | None = None) -> SyncServer:
    return SyncServer(
        np.zeros(DIM, np.float32),
        num_clients=40,
        clients_per_round=len(COHORT),
        plan=TrainPlan(),
        optimizer=FedAvg(lr=1.0),
        monitor=ConvergenceMonitor(),
        seed=0,
        quorum=quorum,
        dp=dp,
    )


def secure_sum(ids: list[int], delta: np.ndarray, weight: float = 2.0) -> SecureSum:
    return SecureSum(np.array(ids), delta, weight, loss=3.0, unclipped=1.0)


def test_server_averages_the_secure_sum_and_learns_no_per_client_loss() -> None:
    srv = server()
    cohort = [d.client_id for d in srv.begin_round()]
    srv.fail(cohort[0], "offline")
    ids = cohort[1:4]
    srv.receive_secure_sum(secure_sum(ids, np.full(DIM, 4.0)), np.array([5, 6, 7]), np.ones(3, int))
    with pytest.raises(UpdateRejected, match="aggregated securely"):
        srv.receive(updates([cohort[5]])[0])
    with pytest.raises(FedloomError, match="no pending work"):
        srv.fail(ids[0], "late")
    result = srv.close_round()
    np.testing.assert_allclose(srv.params, 2.0)  # delta / weight
    assert result.completed == tuple(sorted(ids)) and result.num_examples == 18
    assert result.train_loss == 1.5
    assert np.isnan(result.clients.train_loss).all()
    np.testing.assert_array_equal(result.clients.contribution, 0.0)
    assert cohort[0] in result.failed and cohort[5] in result.failed


def test_central_dp_releases_the_secure_sum_with_its_noise() -> None:
    dp = CentralDP(1.0, 0.5, expected_clients=8, seed=3)
    twin = CentralDP(1.0, 0.5, expected_clients=8, seed=3)
    srv = server(dp=dp, quorum=2)
    cohort = [d.client_id for d in srv.begin_round()]
    srv.receive_secure_sum(secure_sum(cohort[:2], np.ones(DIM)), np.array([4, 4]), np.ones(2, int))
    result = srv.close_round()
    assert result.status == "aggregated"  # two included clients meet the quorum
    np.testing.assert_allclose(srv.params, twin.release(np.ones(DIM), 1.0, 2), rtol=1e-6)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda c: secure_sum([99], np.zeros(DIM)), "no pending work"),
        (lambda c: secure_sum([c[0], c[0]], np.zeros(DIM)), "distinct ids"),
        (lambda c: secure_sum(c[:1], np.zeros(DIM + 1)), "length 40"),
        (lambda c: secure_sum(c[:1], np.full(DIM, np.inf)), "finite vector"),
        (lambda c: secure_sum(c[:1], np.zeros(DIM), weight=0.0), "weight = 0.0"),
    ],
)
def test_malformed_secure_sums_are_refused(make, match) -> None:
    srv = server()
    cohort = [d.client_id for d in srv.begin_round()]
    with pytest.raises(FedloomError, match=match):
        srv.receive_secure_sum(make(cohort), np.array([3]), np.array([1]))
    srv.receive_secure_sum(secure_sum(cohort[:1], np.zeros(DIM)), np.array([3]), np.array([1]))
    with pytest.raises(FedloomError, match="already has updates or a secure sum"):
        srv.receive_secure_sum(secure_sum(cohort[1:2], np.zeros(DIM)), np.array([3]), [1])


def test_distributed_dp_round_without_clients_releases_nothing() -> None:
    srv = server(dp=CentralDP(1.0, 1.0, expected_clients=8, seed=0, noise_on_clients=True))
    srv.begin_round()
    result = srv.close_round()  # e.g. the protocol aborted: no sum, and no noise either
    assert result.status == "empty"
    np.testing.assert_array_equal(srv.params, 0.0)


@settings(max_examples=60, deadline=None)
@given(
    dim=st.integers(1, 400),
    cohort=st.integers(2, 300),
    clip=st.floats(1e-3, 10.0),
    spread=st.floats(0.0, 3.0),
    rounding=st.sampled_from(["nearest", "stochastic"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_dp_clipped_row_decodes_within_the_clip_norm_on_a_16_bit_ring(
    dim: int, cohort: int, clip: float, spread: float, rounding: str, seed: int
) -> None:
    """What the server's noise is calibrated to: one client's decoded contribution to the
    secure sum has L2 norm at most C, whatever the rounding does on a coarse ring."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((3, dim)) * np.exp(spread * rng.standard_normal((3, 1)))
    ups = [
        Update(i, 1, 0, r.astype(np.float32), 5, ClientMetrics(0.5, 1, 1.0))
        for i, r in enumerate(rows)
    ]
    agg = SecureAggregator(dim, 5, bits=16, rounding=rounding, seed=seed)
    encoded = agg.encode(ups, cohort, 1, dp_clip=clip)
    fixed = agg.fixed_point(cohort)
    for row in encoded:
        decoded = fixed.decode_sum(row[:dim], 1) * agg.value_range(clip)
        assert np.linalg.norm(decoded) <= clip
        # still the encoding of the clipped row, each coordinate within one code step
        assert np.all(np.abs(decoded) <= clip)
    clipped, _ = clip_rows(rows.astype(np.float32), clip)
    decoded = np.stack([fixed.decode_sum(r[:dim], 1) for r in encoded]) * clip
    assert np.abs(decoded - clipped).max() <= agg.error_bound(cohort, 1, clip) * (1 + 1e-9)


def test_plain_rounding_on_a_16_bit_ring_would_exceed_the_clip_norm() -> None:
    """The case the bound exists for: a long row clipped to C, stochastically rounded for
    a cohort of 300 on 16 bits (a step of C / 64), decodes longer than C unless the
    encoder shortens it."""
    dim, clip, cohort = 20_000, 1.0, 300
    rows = np.random.default_rng(0).standard_normal((1, dim)).astype(np.float32)
    clipped, _ = clip_rows(rows, clip)
    agg = SecureAggregator(dim, 5, bits=16, rounding="stochastic", seed=1)
    fixed = agg.fixed_point(cohort)
    plain = fixed.decode_sum(fixed.encode(clipped[0], np.random.default_rng(2)), 1)
    assert np.linalg.norm(plain) > 1.1 * clip
    ups = [Update(0, 1, 0, rows[0], 5, ClientMetrics(0.5, 1, 1.0))]
    encoded = agg.encode(ups, cohort, 1, dp_clip=clip)[0]
    assert np.linalg.norm(fixed.decode_sum(encoded[:dim], 1)) <= clip
