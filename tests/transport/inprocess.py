"""A deployment server in a thread of the test process, for tests that need its state
(not a test file). Client data folders are written under ``root / "data"``; honest
clients can run as threads of the test process."""

from __future__ import annotations

import threading
from pathlib import Path

from server_thread import start_in_thread

from fedloom.config import load_config
from fedloom.data.federated import build_federated_data
from fedloom.data.storage import client_dir, write_partition
from fedloom.transport.certs import bundle_dir as _bundle
from fedloom.transport.client import DeploymentClient
from fedloom.transport.server import DeploymentServer, ServerOptions

SMALL_RUN = [
    "rounds=2",
    "partition.num_clients=3",
    "server.clients_per_round=3",
    "client.local_epochs=1",
]


def serve_in_thread(
    root: Path, overrides: list[str], options: ServerOptions
) -> tuple[DeploymentServer, int, threading.Thread]:
    """Start a server for ``SMALL_RUN + overrides``; returns it, its port and the thread
    playing its rounds."""
    config = load_config(None, [*SMALL_RUN, *overrides, f"output_dir={root / 'runs'}"])
    data = build_federated_data(config.data, config.partition, config.seed)
    write_partition(root / "data", data.train, data.holdout)
    server, thread = start_in_thread(config, options, timeout_s=120)
    return server, server.port, thread


def bundle_dir(certs: Path, i: int) -> Path:
    """Client ``i``'s bundle in the CA folder ``certs`` (what its device holds)."""
    return _bundle(certs, f"client-{i:06d}")


def client_threads(port: int, root: Path, ids: list[int], certs: Path) -> list[threading.Thread]:
    """Started threads, each an honest ``DeploymentClient`` (mTLS, with its bundle from
    ``certs``) for one client id."""
    threads = [
        threading.Thread(
            target=DeploymentClient(
                f"127.0.0.1:{port}", client_dir(root / "data", i), certs=bundle_dir(certs, i)
            ).run,
            daemon=True,
        )
        for i in ids
    ]
    for t in threads:
        t.start()
    return threads


def run_insecure_clients(
    server: DeploymentServer,
    thread: threading.Thread,
    root: Path,
    ids: list[int],
    timeout_s: float = 180.0,
    trust: tuple[str, ...] = (),
) -> None:
    """Honest plaintext clients (threads) for ``ids`` against ``server`` until its run
    ends; the server is stopped either way, and a run that did not end fails the test.
    ``trust``: packages whose code the clients let the server name."""
    for i in ids:
        folder = client_dir(root / "data", i)
        client = DeploymentClient(f"127.0.0.1:{server.port}", folder, insecure=True, trust=trust)
        threading.Thread(target=client.run, daemon=True).start()
    thread.join(timeout_s)
    alive = thread.is_alive()
    server.stop()
    assert not alive, "the run did not finish"
