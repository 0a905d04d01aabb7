"""A real server and real client processes on 127.0.0.1, with mTLS, failures and faults.

Every run is compared with the simulator on the same config and seed: the deployment
must reach the same model (up to the float differences between the simulator's
vectorized executor and the clients' sequential trainer), which shows that no update
was lost or applied twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from deployment import Deployment
from faultproxy import FaultProxy

from fedloom.secagg.cohort import SecureAggregator
from fedloom.transport.certs import issue

ATOL = 1e-4  # vectorized (simulator) vs sequential (client) training: ~1e-6 per round


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    try:
        yield d
    finally:
        d.close()


def assert_matches_simulator(d: Deployment) -> None:
    params, accuracy = d.simulated_params()
    final = d.final_params()
    assert np.abs(final - params).max() < ATOL, d.logs()
    rounds = [r for r in d.records() if r.get("event") == "round"]
    assert rounds[-1]["accuracy"] == pytest.approx(accuracy, abs=0.005)


def rounds_of(d: Deployment) -> list[dict]:
    return [r for r in d.records() if r.get("event") == "round"]


def test_mtls_run_matches_the_simulator(deployment: Deployment) -> None:
    d = deployment
    d.play()
    rounds = rounds_of(d)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert all(r["status"] == "aggregated" and r["completed"] == d.clients for r in rounds)
    # the server held no client data: its config's data source cannot load, it evaluated
    # on the central set it was given, and each client's size is what it reported
    start = d.records()[0]
    assert start["evaluation"].startswith("central evaluation set"), start
    assert d.run_path is not None
    assert "no-client-data-on-the-server" in (d.run_path / "config.toml").read_text()
    raw = 4 * d.clients * d.final_params().size
    assert all(r["bytes_up"] == raw for r in rounds)
    assert rounds[0]["bytes_down"] == raw  # nothing held yet: the whole model
    assert all(0 < r["bytes_down"] < raw for r in rounds[1:])  # exact deltas, compressed
    assert_matches_simulator(d)


def test_central_dp_over_mtls_matches_the_simulator(tmp_path: Path) -> None:
    """Central DP (every client sampled, fixed size): the deployment draws its noise from
    the OS, the simulator from the run seed, so the two models differ by the noise. With a
    tiny noise multiplier (0 is refused: it gives no privacy) everything else, the
    clipping and the DP average included, must agree within the equivalence tolerance
    plus a margin for the noise: its standard deviation per coordinate is z * C / k per
    round and run, and later rounds' training amplifies it (about 20-fold in this run
    at z = 1e-4), so the margin is 100 such deviations, still far below the tolerance."""
    z, clip, rounds = 1e-6, 1.0, 3
    extra = (
        f'[privacy]\nmode = "central"\nnoise_multiplier = {z}\nclip_norm = {clip}\n'
        'sampling = "fixed"\naccountant = "rdp"\n'
    )
    d = Deployment(tmp_path, rounds=rounds, extra=extra)
    try:
        d.play()
    finally:
        d.close()
    rounds_seen = rounds_of(d)
    assert [r["round"] for r in rounds_seen] == list(range(1, rounds + 1))
    assert all(r["completed"] == d.clients and r["epsilon"] > 0 for r in rounds_seen)
    assert d.records()[0]["randomness"]["dp_noise"] == "os"
    params, accuracy = d.simulated_params()
    sigma = 2 * z * clip / d.clients * np.sqrt(rounds)
    assert np.abs(d.final_params() - params).max() < ATOL + 100 * sigma, d.logs()
    assert rounds_seen[-1]["accuracy"] == pytest.approx(accuracy, abs=0.01)


def test_secure_aggregation_over_mtls_matches_the_simulator(tmp_path: Path) -> None:
    """SecAgg+ (16-bit ring, stochastic rounding from each device's entropy): the server
    sees only masked inputs and their sum, and reaches the simulator's SecAgg+ model."""
    extra = '[secagg]\nenabled = true\nbits = 16\nrounding = "stochastic"\nclip = 0.5\n'
    # five similar clients: the bound below assumes their FedAvg weights sum past 1
    d = Deployment(tmp_path, clients=5, rounds=3, extra=extra)
    try:
        d.play()
    finally:
        d.close()
    rounds = rounds_of(d)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert r["status"] == "aggregated" and r["completed"] == d.clients, r
        assert r["secagg"]["included"] == d.clients and not r["secagg"]["dropped"]
        # 16-bit masked inputs (the update and 3 sums' slots): half a float32 upload; the
        # protocol's keys and encrypted shares add the rest of what clients send
        assert r["secagg"]["masked_input_bytes"] == 2 * (d.final_params().size + 3)
        assert r["bytes_up"] < d.clients * 0.7 * r["secagg"]["plain_upload_bytes"], r
    params, accuracy = d.simulated_params()
    # the rounding draws differ (the simulator seeds them): per round the decoded sum is
    # off by at most the code's error bound, and FedAvg divides it by the weight sum
    # (w_i = n_i / max n, over 1 for these five similar clients)
    code = SecureAggregator(params.size, 1, clip=0.5, bits=16, rounding="stochastic")
    bound = 3 * code.error_bound(d.clients, d.clients)
    assert np.abs(d.final_params() - params).max() < bound + ATOL, d.logs()
    assert rounds[-1]["accuracy"] == pytest.approx(accuracy, abs=0.02)


def test_secure_aggregation_rides_out_connection_resets_and_a_server_restart(
    tmp_path: Path,
) -> None:
    """Resets in the middle of the protocol's stages are retried (every reply is taken
    once); a server killed mid-round resumes and replays the round with fresh keys; no
    client is dropped, so the model is the simulator's."""
    d = Deployment(tmp_path, rounds=4, epochs=25, extra="[secagg]\nenabled = true\n")
    try:
        d.start_server("--client-timeout", "30")
        with FaultProxy(("127.0.0.1", d.port)) as proxy:
            host, port = proxy.address
            clients = [d.start_client(i, f"{host}:{port}") for i in range(d.clients)]
            d.wait_rounds(1)
            assert proxy.reset_all() > 0
            d.wait_rounds(2)
            assert d.server is not None and d.run_path is not None
            d.kill(d.server)
            d.start_server("--client-timeout", "30", resume=d.run_path)  # the same port
            d.wait_server()
            for proc in clients:
                assert proc.wait(90) == 0, d.logs()
    finally:
        d.close()
    assert any(r.get("event") == "resume" for r in d.records())
    rounds = rounds_of(d)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert all(r["secagg"]["included"] == d.clients for r in rounds), rounds
    assert_matches_simulator(d)


def test_a_killed_client_is_dropped_and_the_round_goes_on(tmp_path: Path) -> None:
    d = Deployment(tmp_path, rounds=6, epochs=25)  # rounds long enough to kill one mid-way
    try:
        d.start_server("--min-clients", str(d.clients - 1))
        clients = [d.start_client(i) for i in range(d.clients)]
        last = d.clients - 1
        d.wait_server_log(f"client {last} joined")  # online: the next round will count on it
        d.wait_rounds(1)
        d.kill(clients[-1])
        d.wait_server()
    finally:
        d.close()
    rounds = rounds_of(d)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5, 6]
    assert all(r["status"] == "aggregated" for r in rounds)
    # every dispatched client either delivered or was dropped, never silently lost
    assert all(r["completed"] + sum(r["dropped"].values()) == r["dispatched"] for r in rounds)
    drops = [i for i, r in enumerate(rounds) if r["dropped"]]
    assert len(drops) == 1 and rounds[drops[0]]["dropped"] == {"disconnected": 1}, rounds
    assert all(r["dispatched"] == d.clients - 1 for r in rounds[drops[0] + 1 :]), rounds


def test_server_killed_and_restarted_resumes_and_clients_reconnect(tmp_path: Path) -> None:
    d = Deployment(tmp_path, rounds=5, epochs=25)  # slow enough that the kill lands mid-run
    try:
        _kill_and_resume(d)
    finally:
        d.close()


def _kill_and_resume(d: Deployment) -> None:
    d.start_server()
    clients = [d.start_client(i) for i in range(d.clients)]
    d.wait_rounds(2)
    assert d.server is not None
    d.kill(d.server)
    assert d.run_path is not None
    d.start_server(resume=d.run_path)
    d.wait_server()
    for proc in clients:
        assert proc.wait(60) == 0, d.logs()
    assert any(r.get("event") == "resume" for r in d.records())
    assert [r["round"] for r in rounds_of(d)] == [1, 2, 3, 4, 5]
    assert_matches_simulator(d)


def test_network_faults_between_clients_and_server(tmp_path: Path) -> None:
    d = Deployment(tmp_path, rounds=6, epochs=25)  # still running when the faults start
    try:
        _faults(d)
    finally:
        d.close()


def _faults(d: Deployment) -> None:
    # a dead connection is noticed by keepalive within ~10 s: clients must not be dropped
    d.start_server("--client-timeout", "30")
    with FaultProxy(("127.0.0.1", d.port)) as proxy:
        host, port = proxy.address
        clients = [d.start_client(i, f"{host}:{port}") for i in range(d.clients)]
        d.wait_rounds(1)
        proxy.set_latency(0.05)
        d.wait_rounds(2)
        assert proxy.reset_all() > 0  # connection resets mid-run
        proxy.set_blackhole(True)  # a black hole, shorter than the client timeout
        time.sleep(2.0)
        proxy.set_blackhole(False)
        proxy.set_rate(2_000_000)  # throttled to 2 MB/s
        d.wait_server()
        for proc in clients:
            assert proc.wait(90) == 0, d.logs()
        assert proxy.stats.resets > 0
    assert_matches_simulator(d)


def test_clients_behind_a_rate_limited_lossy_link(deployment: Deployment) -> None:
    """Clients in a network namespace: tbf at 10 Mbit/s both ways and 3% packet loss
    (nftables) between them and the server. Needs root; skipped with the reason if not."""
    from netns import LinkedNamespace, netns_unavailable

    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    d = deployment
    with LinkedNamespace(rate="10mbit", loss_percent=3) as ns:
        issue(d.certs, "server", kind="server", hosts=(ns.host_ip,), force=True)
        d.start_server("--host", ns.host_ip, "--client-timeout", "30")
        clients = [
            d.start_client(i, f"{ns.host_ip}:{d.port}", prefix=["ip", "netns", "exec", ns.name])
            for i in range(d.clients)
        ]
        d.wait_server()
        for proc in clients:
            assert proc.wait(90) == 0, d.logs()
        assert ns.loss_counter() > 0  # packets were really dropped
    assert_matches_simulator(d)
