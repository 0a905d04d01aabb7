"""Random-k with a shared seed inside the secure sum: the one codec that composes with
secure aggregation. Every client of a round sends the same public coordinates, so the
masked input shrinks to k slots, the server learns only the sum, and the decoded sum is
the kept coordinates of the true sum scaled by d / k (unbiased over rounds)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "transport"))

from inprocess import run_insecure_clients, serve_in_thread  # noqa: E402

from fedloom.assemble import start_simulation  # noqa: E402
from fedloom.config import load_config  # noqa: E402
from fedloom.errors import ConfigError  # noqa: E402
from fedloom.records import ClientMetrics, Update  # noqa: E402
from fedloom.runs import RunDirectory  # noqa: E402
from fedloom.secagg.cohort import AUX_SLOTS, SecureAggregator  # noqa: E402
from fedloom.secagg.encoding import wrap  # noqa: E402
from fedloom.transport.server import ServerOptions  # noqa: E402

SHARED = [
    "secagg.enabled=true",
    'compression.codec="randomk"',
    "compression.params={fraction=0.25, shared_seed=11}",
]
RUN = ["rounds=2", "partition.num_clients=4", "server.clients_per_round=4", "client.local_epochs=1"]


def updates(rows: np.ndarray) -> list[Update]:
    return [
        Update(i, 1, 0, row.astype(np.float32), 50, ClientMetrics(1.0, 1, 1.0))
        for i, row in enumerate(rows)
    ]


def test_the_secure_sum_is_the_kept_coordinates_of_the_sum_scaled_by_d_over_k() -> None:
    d, n = 40, 5
    agg = SecureAggregator(d, 50, keep_fraction=0.25, keep_seed=3)
    plain = SecureAggregator(d, 50)
    assert agg.upload_bytes() == (10 + AUX_SLOTS) * 4 < plain.upload_bytes()
    rows = np.random.default_rng(0).normal(0, 0.1, (n, d))
    result = agg.aggregate(list(range(n)), updates(rows), {}, attempt=4)
    kept = agg.kept(4)
    expected = np.zeros(d)
    expected[kept] = rows.sum(axis=0)[kept] * d / 10
    np.testing.assert_allclose(result.total.delta, expected, atol=1e-6)
    # public, the same for every client of an attempt, fresh for the next attempt
    assert not np.array_equal(agg.kept(4), agg.kept(5))
    np.testing.assert_array_equal(
        agg.kept(4), SecureAggregator(d, 9, keep_fraction=0.25, keep_seed=3).kept(4)
    )


def test_the_decoded_sum_is_unbiased_over_rounds() -> None:
    d, n, attempts = 16, 3, 4000
    agg = SecureAggregator(d, 50, keep_fraction=0.25, keep_seed=5)
    rows = np.random.default_rng(1).normal(0, 0.2, (n, d))
    ups = updates(rows)
    total = np.zeros(d)
    for a in range(attempts):  # encode, sum in the ring (what unmasking yields), decode
        encoded = agg.encode(ups, n, a)
        ring = wrap(encoded.astype(np.uint64).sum(axis=0), agg.bits)
        total += agg.decode(ring, np.arange(n), n, a).delta
    truth = rows.sum(axis=0)
    assert np.linalg.norm(total / attempts - truth) / np.linalg.norm(truth) < 0.05


def test_random_k_inside_secagg_gives_the_simulators_model_over_grpc(tmp_path: Path) -> None:
    config = load_config(None, [*RUN, *SHARED, f"output_dir={tmp_path / 'sim'}"])
    sim = start_simulation(config)
    sim.run()
    simulated = sim.server.params.copy()
    records = [r for r in sim.run_dir.records() if r.get("event") == "round"]
    dim = sim.server.dim
    for r in records:
        assert r["secagg"]["masked_input_bytes"] < r["secagg"]["plain_upload_bytes"] / 3
        assert r["completed"] == 4
    assert records[0]["secagg"]["masked_input_bytes"] == (int(np.ceil(0.25 * dim)) + AUX_SLOTS) * 4

    options = ServerOptions(port=0, insecure=True, linger_s=0.5)
    server, _, thread = serve_in_thread(tmp_path / "grpc", [*RUN, *SHARED], options)
    run_insecure_clients(server, thread, tmp_path / "grpc", [0, 1, 2, 3], timeout_s=120)
    run = next((tmp_path / "grpc" / "runs").iterdir())
    _, state = RunDirectory.open(run).latest_checkpoint()
    np.testing.assert_allclose(state["arrays"]["params"], simulated, atol=1e-4)
    grpc_records = [r for r in RunDirectory.open(run).records() if r.get("event") == "round"]
    for sim_r, grpc_r in zip(records, grpc_records, strict=True):
        assert grpc_r["secagg"]["masked_input_bytes"] == sim_r["secagg"]["masked_input_bytes"]
        assert grpc_r["secagg"]["included"] == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["secagg.enabled=true", 'compression.codec="topk"'], "only a linear codec"),
        (["secagg.enabled=true", 'compression.codec="randomk"'], "shared_seed"),
        (['compression.codec="randomk"', "compression.params={shared_seed=1}"], "secagg.enabled"),
        ([*SHARED, 'privacy.mode="central"', "privacy.noise_multiplier=1.0"], "privacy.mode"),
    ],
)
def test_secure_aggregation_takes_only_the_linear_codec(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*RUN, *overrides])
