"""Transforms: the protocol, chains, per-client state, the registry, and the built-in
transforms reproducing the mechanisms they wrap bit for bit."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fedloom.errors import ConfigError, FedloomError, RejectionKind, UpdateRejected
from fedloom.privacy.central import CentralDP, Replay
from fedloom.privacy.mechanisms import GeneratorNoise, QuantileClipper, clip_rows, local_gaussian
from fedloom.records import ClientMetrics, Update
from fedloom.secagg.cohort import SecureAggregator
from fedloom.transforms import (
    ClientStates,
    Context,
    build,
    build_chain,
    chain,
    register,
    stack_states,
    unstack_states,
)
from fedloom.transforms.clipping import AdaptiveClipL2, ClipL2
from fedloom.transforms.privacy import AuditCanaries, CentralRelease, LocalNoise
from fedloom.transforms.secure import secure_masking
from fedloom.transforms.validation import MAX_UPDATE_NORM, Validate

D = 6


def rows(k: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((k, D)) * scale).astype(np.float32)


class Count:
    """A stateful toy: adds its per-client call count to every coordinate."""

    def init(self, dim: int) -> dict:
        return {"calls": np.zeros((), np.int64), "nested": {"last": np.zeros(dim, np.float32)}}

    def apply(self, updates, state, ctx):
        out = updates + state["calls"][:, None].astype(np.float32)
        return out, {"calls": state["calls"] + 1, "nested": {"last": out}}


class Scale:
    def __init__(self, factor: float) -> None:
        self.factor = factor

    def init(self, dim: int) -> dict:
        return {}

    def apply(self, updates, state, ctx):
        return updates * np.float32(self.factor), state


def ctx_for(ids: list[int], **kw) -> Context:
    return Context(round=1, client_ids=np.array(ids, dtype=np.int64), **kw)


def test_chain_applies_in_order_and_threads_state() -> None:
    t = chain(Scale(2.0), Count())
    state = t.init(D)
    x = rows(1)
    out, state = t.apply(x, {"0": state["0"], "1": stack_states([state["1"]])}, ctx_for([0]))
    np.testing.assert_array_equal(out, x * 2)
    assert int(state["1"]["calls"][0]) == 1
    assert t.stateful and not chain(Scale(1.0)).stateful


def test_chain_refuses_a_non_transform() -> None:
    with pytest.raises(ConfigError, match="not a transform"):
        chain(Scale(1.0), object())  # type: ignore[arg-type]


def test_stack_and_unstack_are_inverse() -> None:
    states = [Count().init(D) for _ in range(3)]
    states[1]["calls"] = np.array(5)
    back = unstack_states(stack_states(states), 3)
    assert [int(s["calls"]) for s in back] == [0, 5, 0]
    with pytest.raises(FedloomError, match="leading axis"):
        unstack_states({"calls": np.zeros(2)}, 3)


def test_client_states_keep_each_clients_state_and_round_trip_through_arrays() -> None:
    store = ClientStates(Count(), D)
    x = np.zeros((2, D), np.float32)
    store.apply(x, ctx_for([3, 7]))
    out = store.apply(x, ctx_for([7, 1]))
    # client 7 was seen once before (adds 1), client 1 never (adds 0)
    np.testing.assert_array_equal(out[:, 0], [1.0, 0.0])
    arrays = store.arrays("p.")
    again = ClientStates(Count(), D)
    again.load_arrays({**arrays, "other": np.zeros(1)}, "p.")
    assert {c: int(s["calls"]) for c, s in again.states.items()} == {1: 1, 3: 1, 7: 2}
    np.testing.assert_array_equal(again.states[7]["nested"]["last"], out[0])


def test_a_chain_mixing_stateless_and_stateful_transforms_survives_storage() -> None:
    store = ClientStates(chain(Scale(2.0), Count()), D)
    for _ in range(2):
        store.apply(np.ones((1, D), np.float32), ctx_for([5]))
        again = ClientStates(store.transform, D)
        again.load_arrays(store.arrays("x."), "x.")
        store = again
    out = store.apply(np.ones((1, D), np.float32), ctx_for([5]))
    np.testing.assert_array_equal(out, np.full((1, D), 4.0, np.float32))  # 2 * 1 + 2 calls


def test_registry_builds_by_name_and_by_module_path() -> None:
    assert isinstance(build("clip_l2", {"clip_norm": 1.0}), ClipL2)
    t = build(f"{__name__}:Scale", {"factor": 3.0})
    assert isinstance(t, Scale) and t.factor == 3.0
    with pytest.raises(ConfigError, match="unknown transform"):
        build("no_such_transform")
    with pytest.raises(ConfigError, match="cannot be imported"):
        build("no.such.module:Thing")
    with pytest.raises(ConfigError, match="clip_l2"):
        build("clip_l2", {"clip_norm": -1.0})
    with pytest.raises(ConfigError, match="already"):
        register("clip_l2")(Scale)
    assert len(build_chain([("clip_l2", {"clip_norm": 2.0})]).transforms) == 1


def test_clip_l2_is_clip_rows() -> None:
    x = rows(5, scale=3.0)
    out, _ = ClipL2(1.5).apply(x, {}, ctx_for(list(range(5))))
    np.testing.assert_array_equal(out, clip_rows(x, 1.5)[0])
    assert ClipL2(1.5).clip(x)[1] == int(np.count_nonzero(np.linalg.norm(x, axis=1) <= 1.5))


def test_adaptive_clip_uses_and_returns_the_clippers_state() -> None:
    clipper = QuantileClipper(2.0)
    t = AdaptiveClipL2(clipper)
    state = t.init(D)
    state["clip_norm"] = 0.5
    out, new = t.apply(rows(3, scale=3.0), state, ctx_for([0, 1, 2]))
    np.testing.assert_array_equal(out, clip_rows(rows(3, scale=3.0), 0.5)[0])
    assert new["clip_norm"] == 0.5 and clipper.clip_norm == 0.5


def test_local_noise_matches_the_seeded_local_mechanism_per_client() -> None:
    x = rows(3)
    t = LocalNoise(1.0, epsilon=2.0, delta=1e-5)
    out, _ = t.apply(x, {}, ctx_for([4, 9, 2], seed=7, attempt=3))
    for i, cid in enumerate([4, 9, 2]):
        noise = GeneratorNoise(np.random.default_rng([7, 9, 3, cid]))
        np.testing.assert_array_equal(out[i], local_gaussian(x[i], 1.0, 2.0, 1e-5, noise))
    replayed, _ = t.apply(x, {}, ctx_for([4, 9, 2], seed=7, attempt=3, replay=1))
    assert not np.array_equal(replayed, out)


def test_central_release_is_centraldp_release_round() -> None:
    a = CentralDP(1.0, 1.2, 40.0, seed=3, clipper=QuantileClipper(1.0), quorum_stddev=5.0)
    b = copy.deepcopy(a)
    total = rows(1)[0].astype(np.float64)
    t = CentralRelease(a, quorum=2)
    out, state = t.apply(total[None], t.init(D), ctx_for([0, 1, 2], stats={"unclipped": 2}))
    ref = b.release_round(total, 2.0, 3, 2)
    assert t.last is not None and t.last.digest == ref.digest
    if ref.delta is not None:
        np.testing.assert_array_equal(out[0], ref.delta)
    assert state == b.state_dict()
    # a replayed attempt is redrawn from a fresh stream unless it repeats a charged release
    c = copy.deepcopy(a)
    a.replay = Replay(1, frozenset({"not-this-one"}))
    fresh = t.release(total, 2.0, 3)
    assert fresh.digest != CentralRelease(c, 2).release(total, 2.0, 3).digest


def test_canaries_add_their_attempts_contribution() -> None:
    directions = rows(4)
    included = np.array([True, False, True, True])
    t = AuditCanaries(directions, included, 2.0, 0.5, seed=11)
    draw = np.random.default_rng([11, 12, 5]).random(4)
    joins = included & (draw < 0.5)
    expected = 2.0 * directions[joins].sum(axis=0, dtype=np.float64)
    out, _ = t.apply(np.zeros((1, D)), {}, ctx_for([], attempt=5))
    np.testing.assert_array_equal(out[0], expected)


def test_secure_masking_halves_are_the_aggregators_encode_and_decode() -> None:
    agg = SecureAggregator(D, max_examples=10, bits=32, seed=1)
    halves = secure_masking(agg)
    x = rows(3, scale=0.3)
    ids, counts, losses = [2, 5, 8], np.array([4, 10, 7]), np.array([0.5, 1.0, 2.0])
    ctx = ctx_for(ids, weights=counts, losses=losses, attempt=2, stats={"num_clients": 3})
    encoded, _ = halves.client.apply(x, {}, ctx)
    ups = [
        Update(c, 1, 0, r, int(n), ClientMetrics(float(ls), 0, 0.0))
        for c, r, n, ls in zip(ids, x, counts, losses, strict=True)
    ]
    np.testing.assert_array_equal(encoded, agg.encode(ups, 3, 2))
    total = encoded.sum(axis=0, dtype=encoded.dtype)  # wraps modulo 2^bits like the protocol
    decoded, _ = halves.server.apply(total[None], {}, ctx)
    ref = agg.decode(total, np.array(ids), 3, 2)
    np.testing.assert_array_equal(decoded[0, :D], ref.delta)
    w = np.minimum(counts, 10) / 10
    np.testing.assert_allclose(decoded[0, :D], (w[:, None] * x).sum(axis=0), atol=1e-6)
    assert decoded[0, D] == pytest.approx(w.sum(), abs=1e-6)


def test_validation_refuses_each_kind() -> None:
    v = Validate(D)
    ok = Update(1, 1, 0, rows(1)[0], 3, ClientMetrics(1.0, 1, 1.0))
    v.check(ok)
    cases = [
        (np.zeros(D + 1, np.float32), 3, RejectionKind.WRONG_SHAPE),
        (np.zeros(D, np.float64), 3, RejectionKind.WRONG_SHAPE),
        (np.full(D, np.nan, np.float32), 3, RejectionKind.NONFINITE),
        (np.full(D, 3e38, np.float32), 3, RejectionKind.OVERFLOW),
        (np.zeros(D, np.float32), 0, RejectionKind.BAD_COUNT),
    ]
    for delta, n, kind in cases:
        with pytest.raises(UpdateRejected) as err:
            v.check(Update(1, 1, 0, delta, n, ok.metrics))
        assert err.value.kind == kind
    x = rows(3)
    out, _ = v.apply(x, {}, ctx_for([0, 1, 2], weights=np.array([1.0, 2.0, 3.0])))
    assert out is x
    x[1, 0] = np.float32(MAX_UPDATE_NORM)
    x[1, 1] = np.float32(MAX_UPDATE_NORM)
    with pytest.raises(UpdateRejected, match="client 1") as err:
        v.apply(x, {}, ctx_for([0, 1, 2], weights=np.array([1.0, 2.0, 3.0])))
    assert err.value.kind == RejectionKind.OVERFLOW
