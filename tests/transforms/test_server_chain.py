"""SyncServer.close_round runs the server chain: row transforms, the reducer, DP, and
checkpoints the transforms' state (its own and, in simulation, the clients')."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.aggregation import WeightedMean
from fedloom.errors import FedloomError, UpdateRejected
from fedloom.optim import FedAvg
from fedloom.records import ClientMetrics, TrainPlan, Update
from fedloom.secagg.cohort import SecureSum
from fedloom.server.convergence import ConvergenceMonitor
from fedloom.server.sync import SyncServer
from fedloom.transforms import ClientStates, Context, chain

D = 4


class Shift:
    """A stateful server transform: adds its running round count to every row."""

    def init(self, dim: int) -> dict:
        return {"rounds": np.zeros((), np.int64)}

    def apply(self, updates, state, ctx: Context):
        return updates + np.float32(state["rounds"]), {"rounds": state["rounds"] + 1}


class Median:
    """A reducer that is not decomposable (needs every row)."""

    decomposable = False

    def partial(self, rows, weights):
        return np.median(rows, axis=0).astype(np.float64) * weights.sum()

    def finish(self, total, weight):
        return (total / weight).astype(np.float32)


def server(**kw) -> SyncServer:
    return SyncServer(
        np.zeros(D, np.float32), 4, 3, TrainPlan(), FedAvg(lr=1.0), ConvergenceMonitor(), 0, **kw
    )


def play(srv: SyncServer, deltas: dict[int, float]) -> None:
    for d in srv.begin_round():
        value = deltas.get(d.client_id, 1.0)
        delta = np.full(D, value, np.float32)
        srv.receive(Update(d.client_id, d.round, d.version, delta, 2, ClientMetrics(1.0, 1, 1.0)))


def test_default_reducer_is_the_weighted_mean() -> None:
    a, b = server(), server(reducer=WeightedMean())
    play(a, {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0})
    play(b, {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0})
    ra, rb = a.close_round(), b.close_round()
    np.testing.assert_array_equal(a.params, b.params)
    assert ra.update_norm == rb.update_norm


def test_server_transforms_run_before_the_reducer_and_their_state_checkpoints() -> None:
    srv = server(transforms=chain(Shift()))
    for expected in (1.0, 2.0):  # round r adds r - 1 to each delta of 1.0
        before = srv.params.copy()
        play(srv, {})
        srv.close_round()
        np.testing.assert_allclose(srv.params - before, expected)
    state = srv.state_dict()
    again = server(transforms=chain(Shift()))
    again.load_state_dict(state)
    assert int(again.transform_state["0"]["rounds"]) == 2
    with pytest.raises(FedloomError, match="transform state"):
        server(transforms=chain(Shift(), Shift())).load_state_dict(state)


def test_a_non_decomposable_reducer_refuses_to_be_combined() -> None:
    srv = server(reducer=Median())
    play(srv, {0: 1.0, 1: 5.0, 2: 2.0, 3: 9.0})
    with pytest.raises(FedloomError, match="cannot be combined"):
        srv.close_round(combine=lambda v: v)


def test_row_transforms_refuse_a_secure_sum() -> None:
    srv = server(transforms=chain(Shift()))
    ds = srv.begin_round()
    ids = np.array([d.client_id for d in ds], dtype=np.int64)
    total = SecureSum(ids, np.ones(D), float(len(ids)), 1.0, 0.0)
    srv.receive_secure_sum(total, np.ones(len(ids), np.int64), np.ones(len(ids), np.int64))
    with pytest.raises(FedloomError, match="need the rows"):
        srv.close_round()


class Calls:
    """A client transform counting the rounds its client took part in."""

    def init(self, dim):
        return {"n": np.zeros((), np.int64)}

    def apply(self, updates, state, ctx):
        return updates, {"n": state["n"] + 1}


def test_simulated_clients_states_are_saved_with_the_server() -> None:
    store = ClientStates(chain(Calls()), D)
    srv = server(client_states=store)
    store.apply(np.zeros((2, D), np.float32), Context(1, np.array([1, 3])))
    state = srv.state_dict()
    fresh = ClientStates(chain(Calls()), D)
    server(client_states=fresh).load_state_dict(state)
    assert {c: int(s["0"]["n"]) for c, s in fresh.states.items()} == {1: 1, 3: 1}


def test_a_simulated_clients_state_advances_only_if_the_server_holds_its_update() -> None:
    store = ClientStates(chain(Calls()), D)
    srv = server(client_states=store)
    ds = srv.begin_round()
    ids = np.array([d.client_id for d in ds], dtype=np.int64)
    store.apply(np.zeros((len(ids), D), np.float32), Context(1, ids), stage=True)
    assert store.states == {}  # staged, not kept yet
    good, bad = ds[0], ds[1]
    srv.receive(Update(good.client_id, 1, 0, np.ones(D, np.float32), 2, ClientMetrics(1, 1, 1)))
    with pytest.raises(UpdateRejected):  # a non-finite update is refused
        nan = np.full(D, np.nan, np.float32)
        srv.receive(Update(bad.client_id, 1, 0, nan, 2, ClientMetrics(1.0, 1, 1.0)))
    srv.close_round()
    assert {c: int(s["0"]["n"]) for c, s in store.states.items()} == {good.client_id: 1}
    assert store.pending == {}


def test_server_transforms_draw_seeded_noise_in_simulation_and_the_os_in_a_deployment() -> None:
    class Noisy:
        def init(self, dim):
            return {}

        def apply(self, updates, state, ctx):
            noise = ctx.noise.normal(updates.size, 1.0).reshape(updates.shape)
            return (updates + noise).astype(np.float32), state

    def final(os_selection: bool) -> np.ndarray:
        srv = server(transforms=chain(Noisy()), os_selection=os_selection)
        play(srv, {})
        srv.close_round()
        return srv.params

    np.testing.assert_array_equal(final(False), final(False))  # replays exactly
    assert not np.array_equal(final(True), final(True))  # OS randomness: never the same
