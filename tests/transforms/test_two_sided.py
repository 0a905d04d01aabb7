"""A two-sided client transform: its client half runs on the device, its server half
decodes each update on receipt, in the simulator and over gRPC alike."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "transport"))

from inprocess import SMALL_RUN, run_insecure_clients, serve_in_thread  # noqa: E402

from fedloom.assemble import start_simulation  # noqa: E402
from fedloom.config import load_config  # noqa: E402
from fedloom.errors import ConfigError, RejectionKind, UpdateRejected  # noqa: E402
from fedloom.optim import FedAvg  # noqa: E402
from fedloom.records import ClientMetrics, TrainPlan, Update  # noqa: E402
from fedloom.server.convergence import ConvergenceMonitor  # noqa: E402
from fedloom.server.sync import SyncServer  # noqa: E402
from fedloom.transforms import TwoSided, chain  # noqa: E402
from fedloom.transport.server import ServerOptions  # noqa: E402

ATOL = 1e-4  # simulator vs deployed clients' training (as in test_deployment)


class Negate:
    def init(self, dim: int) -> dict:
        return {}

    def apply(self, updates, state, ctx):
        return -updates, state


class Decoded:
    """A stateful server half: negates back and counts the updates it decoded."""

    def init(self, dim: int) -> dict:
        return {"decoded": np.zeros((), np.int64)}

    def apply(self, updates, state, ctx):
        return -updates, {"decoded": state["decoded"] + 1}


def flip() -> TwoSided:
    """The client sends its update negated, the server negates it back."""
    return TwoSided(Negate(), Decoded())


def negate() -> Negate:
    return Negate()


FLIP = f'transforms.client=[{{name = "{__name__}:flip"}}]'


def run(root: Path, *extra: str) -> SyncServer:
    # one executor for every run compared ("auto" chooses by timing)
    pinned = 'simulation.executor="sequential"'
    config = load_config(None, [*SMALL_RUN, pinned, *extra, f"output_dir={root}"])
    sim = start_simulation(config)
    sim.run()
    return sim.server


def test_the_server_half_undoes_the_client_half_in_the_simulator(tmp_path: Path) -> None:
    plain = run(tmp_path / "plain")
    flipped = run(tmp_path / "flip", FLIP)
    np.testing.assert_array_equal(flipped.params, plain.params)  # decoded exactly
    assert int(flipped.decode_state["0"]["decoded"]) == 6  # 3 clients x 2 rounds
    one_sided = run(tmp_path / "half", f'transforms.client=[{{name = "{__name__}:negate"}}]')
    assert not np.allclose(one_sided.params, plain.params)  # without decoding: wrong way


def test_the_server_half_decodes_uploads_over_grpc(tmp_path: Path) -> None:
    plain = run(tmp_path / "plain").params
    options = ServerOptions(port=0, insecure=True, linger_s=0.5)
    server, port, thread = serve_in_thread(tmp_path / "grpc", [FLIP], options)
    run_insecure_clients(
        server, thread, tmp_path / "grpc", [0, 1, 2], timeout_s=120, trust=(__name__,)
    )
    np.testing.assert_allclose(server.engine.server.params, plain, atol=ATOL)
    assert int(server.engine.server.decode_state["0"]["decoded"]) == 6


def test_an_update_that_cannot_be_decoded_is_refused_as_malformed() -> None:
    class Fails:
        def init(self, dim):
            return {}

        def apply(self, updates, state, ctx):
            raise ValueError("not a code word")

    srv = SyncServer(
        np.zeros(4, np.float32),
        2,
        2,
        TrainPlan(),
        FedAvg(lr=1.0),
        ConvergenceMonitor(),
        0,
        decoders=chain(Fails()),
    )
    d = srv.begin_round()[0]
    with pytest.raises(UpdateRejected, match="cannot be decoded") as err:
        delta = np.ones(4, np.float32)
        srv.receive(Update(d.client_id, d.round, 0, delta, 1, ClientMetrics(1.0, 1, 1.0)))
    assert err.value.kind == RejectionKind.MALFORMED
    assert srv.close_round().rejected == 1


def test_two_sided_transforms_are_refused_where_they_cannot_decode() -> None:
    with pytest.raises(ConfigError, match="two-sided"):
        load_config(None, [f'transforms.server=[{{name = "{__name__}:flip"}}]'])
    with pytest.raises(ConfigError, match="secagg"):
        load_config(None, ["secagg.enabled=true", "secagg.min_clients=1", FLIP])
