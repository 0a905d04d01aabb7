"""SecAgg+ over gRPC with an in-process server and client threads: a client that stops
answering at any stage of the protocol is dropped there, the server unmasks the sum of
everyone else who sent a masked input (exactly FedAvg of their updates), and too few
clients abort the round with the model unchanged. With signed keys over mTLS, a server
that forges a neighbour's key is caught by the client it lies to."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from inprocess import client_threads, serve_in_thread

from fedloom.assemble import deployment_server, open_deployment
from fedloom.config import load_config
from fedloom.data.storage import client_dir
from fedloom.errors import ConfigError
from fedloom.secagg.cohort import AUX_SLOTS
from fedloom.secagg.crypto import generate_keypair
from fedloom.secagg.protocol import STAGES
from fedloom.transport.certs import init_ca, issue
from fedloom.transport.client import DeploymentClient
from fedloom.transport.secure_round import SecureStages, SecureTaskSpec
from fedloom.transport.server import ServerOptions

CLIENTS = 4  # complete graph, threshold 3
RUN = [
    "rounds=1",
    f"partition.num_clients={CLIENTS}",
    f"server.clients_per_round={CLIENTS}",
    "secagg.enabled=true",
]


class Quit(Exception):
    """Raised inside a client to make it vanish mid-protocol."""


class RecordingClient(DeploymentClient):
    """An honest client that keeps its last update, or vanishes at ``quit_at``."""

    def __init__(self, *args, quit_at: str | None = None, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.quit_at = quit_at
        self.delta: np.ndarray | None = None

    def _train(self, task, plan, params):  # noqa: ANN001, ANN202
        delta, metrics, train_s = super()._train(task, plan, params)
        self.delta = delta.copy()
        return delta, metrics, train_s

    def _fetch_stage(self, task, stage):  # noqa: ANN001, ANN202
        if stage == self.quit_at:
            raise Quit(stage)
        return super()._fetch_stage(task, stage)


def play(root: Path, quitters: dict[int, str]) -> tuple[dict, list[RecordingClient], object]:
    options = ServerOptions(
        port=0, insecure=True, client_timeout_s=3.0, heartbeat_s=0.25, linger_s=0.5
    )
    server, port, thread = serve_in_thread(root, RUN, options)
    clients = [
        RecordingClient(
            f"127.0.0.1:{port}",
            client_dir(root / "data", i),
            name=f"client-{i}",
            insecure=True,
            quit_at=quitters.get(i),
        )
        for i in range(CLIENTS)
    ]

    def run(client: RecordingClient) -> None:
        try:
            client.run()
        except Quit:
            pass

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    thread.join(120)
    assert not thread.is_alive()
    for t in threads:
        t.join(30)
    (record,) = [r for r in server.engine.run_dir.records() if r.get("event") == "round"]
    return record, clients, server


def fedavg(initial: np.ndarray, clients: list[RecordingClient], ids: list[int]) -> np.ndarray:
    sizes = np.array([len(c.y) for c in clients], dtype=np.float64)
    w = sizes / sizes.max()  # SecureAggregator's weights: min(n_i, W) / W
    total = sum(w[i] * np.clip(clients[i].delta, -1, 1).astype(np.float64) for i in ids)
    return initial + total / w[ids].sum()


@pytest.mark.parametrize("stage", STAGES)
def test_a_client_vanishing_at_any_stage_leaves_the_exact_sum_of_the_rest(
    tmp_path: Path, stage: str
) -> None:
    record, clients, server = play(tmp_path, {3: stage})
    assert record["status"] == "aggregated", record
    assert record["secagg"]["dropped"] == {stage: 1}
    # a client that sent its masked input is in the sum even if it vanished afterwards
    included = [0, 1, 2, 3] if stage == "unmasking" else [0, 1, 2]
    assert record["secagg"]["included"] == record["completed"] == len(included)
    expected = fedavg(server.engine.initial_params, clients, included)
    np.testing.assert_allclose(server.engine.server.params, expected, atol=1e-5)
    if stage != "unmasking":
        assert record["dropped"] == {"disconnected": 1}


def test_too_few_clients_abort_the_round_and_nothing_is_unmasked(tmp_path: Path) -> None:
    record, _, server = play(tmp_path, {2: "masked_input", 3: "masked_input"})
    assert "below the threshold" in record["secagg"]["aborted"]
    assert record["status"] != "aggregated" and record["completed"] == 0
    np.testing.assert_array_equal(server.engine.server.params, server.engine.initial_params)


def play_signed(root: Path, tamper: bool) -> tuple[dict, object]:
    """Three clients over mTLS with signed keys; ``tamper``: the server swaps client 0's
    view of one neighbour's mask key for its own (a man in the middle)."""
    certs = root / "certs"
    init_ca(certs)
    issue(certs, "server", kind="server")
    for i in range(3):
        issue(certs, f"client-{i:06d}")
    run = ["rounds=1", "secagg.enabled=true", "secagg.signed=true"]
    options = ServerOptions(port=0, certs=certs, client_timeout_s=3.0, heartbeat_s=0.25)
    fetch = SecureStages.fetch

    def swapping_fetch(self, cid, stage):  # noqa: ANN001, ANN202
        message = fetch(self, cid, stage)
        if tamper and message is not None and message.HasField("neighbour_keys"):
            if message.recipient == 0:
                neighbour = min(message.neighbour_keys.keys)
                message.neighbour_keys.keys[neighbour].s_public = generate_keypair()[1]
        return message

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SecureStages, "fetch", swapping_fetch)
        server, port, thread = serve_in_thread(root, run, options)
        client_threads(port, root, [0, 1, 2], certs)
        thread.join(120)
        assert not thread.is_alive()
    (record,) = [r for r in server.engine.run_dir.records() if r.get("event") == "round"]
    return record, server


def test_signed_keys_over_mtls_complete_a_round(tmp_path: Path) -> None:
    record, _ = play_signed(tmp_path, tamper=False)
    assert record["status"] == "aggregated" and record["secagg"]["included"] == 3


def test_a_server_swapping_keys_is_caught_by_the_signed_client(tmp_path: Path) -> None:
    record, _ = play_signed(tmp_path, tamper=True)
    # client 0 refuses the forged neighbour key and leaves; the other two finish
    assert record["secagg"]["dropped"] == {"share_keys": 1}
    assert record["secagg"]["included"] == 2


def test_signed_keys_need_mtls(tmp_path: Path) -> None:
    config = load_config(
        None, ["secagg.enabled=true", "secagg.signed=true", f"output_dir={tmp_path}"]
    )
    with pytest.raises(ConfigError, match="needs mTLS"):
        deployment_server(open_deployment(config, None), ServerOptions(port=0, insecure=True))


def test_a_malformed_secure_sum_is_refused_and_the_server_goes_on(tmp_path: Path) -> None:
    """A client may encode anything (the server sees no single input): here client 0
    puts the most negative ring value in its FedAvg-weight slot, so the sum's weight is
    negative. The server refuses the sum, applies nothing and finishes the run."""
    encode = SecureTaskSpec.encode

    def hostile_encode(self, delta, num_examples, metrics):  # noqa: ANN001, ANN202
        row = encode(self, delta, num_examples, metrics)
        if self.index == 0:
            row[-AUX_SLOTS] = 1 << (row.dtype.itemsize * 8 - 1)
        return row

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SecureTaskSpec, "encode", hostile_encode)
        record, _, server = play(tmp_path, {})
    assert "secure sum refused" in record["secagg"]["aborted"]
    assert "weight" in record["secagg"]["aborted"]
    assert record["secagg"]["included"] == record["completed"] == 0
    assert record["dropped"] == {"secure sum refused": CLIENTS}
    np.testing.assert_array_equal(server.engine.server.params, server.engine.initial_params)
