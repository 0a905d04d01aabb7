"""A deployment server in a thread of the test process, for tests that need its state
(not a test file). Client data folders are written under ``root / "data"``."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from fedloom.config import load_config
from fedloom.data.federated import build_federated_data
from fedloom.data.storage import write_partition
from fedloom.sim.runtime import Simulation
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
    playing its rounds (the thread that built the simulation, as SQLite requires)."""
    config = load_config(None, [*SMALL_RUN, *overrides, f"output_dir={root / 'runs'}"])
    data = build_federated_data(config.data, config.partition, config.seed)
    write_partition(root / "data", data.train, data.holdout)
    ready: queue.Queue = queue.Queue()

    def serve() -> None:
        server = DeploymentServer(Simulation.start(config), options)
        ready.put((server, server.start()))
        try:
            server.run()
        finally:
            server.stop()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    server, port = ready.get(timeout=120)
    return server, port, thread
