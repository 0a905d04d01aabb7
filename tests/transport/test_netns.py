"""The emulated links really are slow and lossy, still deliver every byte, and vanish afterwards.

Deployment tests trust netns.LinkedNamespace to stand in for a bad network; these tests check
that trust with plain TCP: a server thread on the host end, a client process in the namespace.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import LinkedNamespace, netns_unavailable

PAYLOAD = 1_500_000
LOSSY_PAYLOAD = 500_000  # 10% loss costs TCP retransmission timeouts: keep the transfer short
RATE_BPS = 4_000_000
CLIENT = """
import random, socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with socket.create_connection((host, port), timeout=60) as conn:
    conn.sendall(random.Random(size).randbytes(size))
"""
ABANDON = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from netns import LinkedNamespace
print(LinkedNamespace().__enter__().name, flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture(autouse=True)
def _needs_netns() -> Iterator[None]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    yield


class Sink(threading.Thread):
    """Accepts one TCP connection on `host` and keeps everything it receives until EOF."""

    def __init__(self, host: str) -> None:
        super().__init__(daemon=True)
        self._server = socket.create_server((host, 0))
        self._server.settimeout(60)
        self.port = self._server.getsockname()[1]
        self.data = bytearray()
        self.elapsed = 0.0

    def run(self) -> None:
        with self._server, self._server.accept()[0] as conn:
            start = time.monotonic()
            conn.settimeout(60)
            while chunk := conn.recv(1 << 16):
                self.data += chunk
            self.elapsed = time.monotonic() - start


def send_from_namespace(ns: LinkedNamespace, size: int) -> Sink:
    """Send `size` seeded random bytes from a client in `ns` to a sink on the host end."""
    sink = Sink(ns.host_ip)
    sink.start()
    client = ns.popen(
        [sys.executable, "-c", CLIENT, ns.host_ip, str(sink.port), str(size)],
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = client.communicate(timeout=120)
    assert client.returncode == 0, err
    sink.join(timeout=60)
    assert not sink.is_alive()
    return sink


def expected(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_rate_limit_slows_the_transfer_and_keeps_it_intact() -> None:
    with LinkedNamespace(rate="4mbit") as ns:
        sink = send_from_namespace(ns, PAYLOAD)
        stats = ns.tbf_stats()
    assert sink.data == expected(PAYLOAD)
    assert stats["ns_to_host"]["bytes"] >= PAYLOAD
    assert stats["ns_to_host"]["overlimits"] > 0
    assert stats["host_to_ns"]["packets"] > 0  # the acks took the other limited end
    assert sink.elapsed >= 0.6 * PAYLOAD * 8 / RATE_BPS


def test_loss_drops_packets_and_tcp_still_delivers_every_byte() -> None:
    with LinkedNamespace(loss_percent=10) as ns:
        sink = send_from_namespace(ns, LOSSY_PAYLOAD)
        dropped = ns.loss_counter()
    assert dropped > 0
    assert sink.data == expected(LOSSY_PAYLOAD)


def test_namespaces_side_by_side_get_their_own_links() -> None:
    with LinkedNamespace() as first, LinkedNamespace() as second:
        assert first.name != second.name
        assert len({first.host_ip, first.ns_ip, second.host_ip, second.ns_ip}) == 4
        for ns in (first, second):
            assert send_from_namespace(ns, 10_000).data == expected(10_000)


def test_exit_removes_the_namespace_its_link_and_its_processes() -> None:
    with LinkedNamespace(rate="1mbit", loss_percent=5) as ns:
        assert ns.name in namespaces().split()
        sleeper = ns.popen(["sleep", "60"])
    assert sleeper.wait(timeout=10) != 0
    assert ns.name not in namespaces().split()
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert ns.host_if not in links


def test_exit_cleans_up_when_the_body_fails() -> None:
    with pytest.raises(RuntimeError), LinkedNamespace(loss_percent=5) as ns:
        raise RuntimeError("boom")
    assert ns.name not in namespaces().split()


def abandon_namespace(how: str) -> tuple[str, int]:
    """Create a namespace in a child process that never leaves the context; (name, exit code)."""
    child = subprocess.run(
        [sys.executable, "-c", ABANDON, str(Path(__file__).parent), how],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return child.stdout.strip(), child.returncode


def test_a_process_that_exits_removes_its_namespaces() -> None:
    name, code = abandon_namespace("exit")
    assert code == 0 and name
    assert name not in namespaces().split()


def test_namespaces_of_a_killed_process_are_reaped_by_the_next_one() -> None:
    name, code = abandon_namespace("kill")
    assert code == -9 and name in namespaces().split()
    with LinkedNamespace():
        assert name not in namespaces().split()
