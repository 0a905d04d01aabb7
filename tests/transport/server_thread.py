"""A deployment server in a background thread of the calling process, for tests and
benchmarks (not shipped with fedloom, not a test file)."""

from __future__ import annotations

import queue
import threading

from fedloom.assemble import deployment_server, open_deployment
from fedloom.config import RunConfig
from fedloom.transport.server import DeploymentServer, ServerOptions


def start_in_thread(
    config: RunConfig, options: ServerOptions, timeout_s: float = 300.0
) -> tuple[DeploymentServer, threading.Thread]:
    """A server for ``config``, started in a background thread that builds the simulation
    (its SQLite registry belongs to that thread) and then plays the rounds. Returns the
    server, whose ``port`` is bound, and the thread, which ends with the run."""
    ready: queue.Queue[DeploymentServer | BaseException] = queue.Queue()

    def serve() -> None:
        try:
            server = deployment_server(open_deployment(config, None), options)
            server.start()
        except BaseException as err:
            ready.put(err)
            raise
        ready.put(server)
        try:
            server.run()
        finally:
            server.stop()

    thread = threading.Thread(target=serve, name="fedloom-server", daemon=True)
    thread.start()
    started = ready.get(timeout=timeout_s)
    if isinstance(started, BaseException):
        raise started
    return started, thread
