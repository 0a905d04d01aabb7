"""The fault proxy against a threaded echo server and a real gRPC server on 127.0.0.1."""

from __future__ import annotations

import random
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import closing, suppress

import grpc
import pytest
from faultproxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(echo) as p:
        yield p


def connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"connection closed after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def recv_to_end(sock: socket.socket) -> bytes:
    """Everything until EOF or a reset."""
    buf = bytearray()
    with suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            buf += chunk
    return bytes(buf)


def send_in_thread(sock: socket.socket, data: bytes, then_shut: bool = False) -> threading.Thread:
    def send() -> None:
        with suppress(OSError):  # the proxy may reset mid-send
            sock.sendall(data)
            if then_shut:
                sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def assert_closed_by_peer(sock: socket.socket) -> None:
    sock.settimeout(10)
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass


def assert_turned_away(proxy: FaultProxy) -> None:
    """A new connection is reset, during the handshake or right after it."""
    try:
        sock = connect(proxy)
    except ConnectionResetError:
        return
    with closing(sock):
        assert_closed_by_peer(sock)


def test_forwards_bytes_exactly_both_ways_and_half_close(proxy: FaultProxy) -> None:
    data = random.Random(0).randbytes(4_000_000)
    with closing(connect(proxy)) as sock:
        sender = send_in_thread(sock, data, then_shut=True)
        # the echo server sees our EOF only via the proxy, and its own EOF comes back the same way
        assert recv_to_end(sock) == data
        sender.join()
    stats = proxy.stats
    assert (stats.connections, stats.bytes_up, stats.bytes_down) == (1, len(data), len(data))
    assert stats.resets == 0


def test_latency_delays_each_direction_and_keeps_order(proxy: FaultProxy) -> None:
    with closing(connect(proxy)) as sock:
        sock.sendall(b"warm")
        assert recv_exactly(sock, 4) == b"warm"
        proxy.set_latency(0.2)
        start = time.monotonic()
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
        assert time.monotonic() - start >= 2 * 0.2 - 0.01
        proxy.set_latency(0.02)
        messages = [f"{i:04d}".encode() for i in range(100)]
        for message in messages:
            sock.sendall(message)
        assert recv_exactly(sock, 400) == b"".join(messages)


def test_rate_limits_throughput(proxy: FaultProxy) -> None:
    rate, size = 100_000, 60_000
    proxy.set_rate(rate)
    with closing(connect(proxy)) as sock:
        start = time.monotonic()
        sender = send_in_thread(sock, b"r" * size)
        assert recv_exactly(sock, size) == b"r" * size
        elapsed = time.monotonic() - start
        sender.join()
    # the bucket starts with a 50 ms burst; the rest of each direction takes (size - burst) / rate
    assert elapsed >= 0.8 * size / rate


def test_reset_all_resets_open_connections(proxy: FaultProxy) -> None:
    socks = [connect(proxy) for _ in range(2)]
    for sock in socks:
        sock.sendall(b"hi")
        assert recv_exactly(sock, 2) == b"hi"
    assert proxy.reset_all() == 2
    for sock in socks:
        with closing(sock):
            assert_closed_by_peer(sock)
    stats = proxy.stats
    assert (stats.resets, stats.active) == (2, 0)
    with closing(connect(proxy)) as sock:  # the proxy itself keeps serving
        sock.sendall(b"again")
        assert recv_exactly(sock, 5) == b"again"


def test_blackhole_drops_data_until_turned_off(proxy: FaultProxy) -> None:
    with closing(connect(proxy)) as old:
        old.sendall(b"before")
        assert recv_exactly(old, 6) == b"before"
        proxy.set_blackhole(True)
        with closing(connect(proxy)) as new:  # new connections are accepted, then starved too
            for sock in (old, new):
                sock.sendall(b"lost")
                sock.settimeout(0.3)
                with pytest.raises(TimeoutError):
                    sock.recv(1)
            proxy.set_blackhole(False)
            for sock in (old, new):
                sock.settimeout(10)
                sock.sendall(b"found")
                assert recv_exactly(sock, 5) == b"found"
    assert proxy.stats.resets == 0


def test_refuse_closes_new_connections_only(proxy: FaultProxy) -> None:
    with closing(connect(proxy)) as old:
        old.sendall(b"first")  # once this is echoed, the proxy has taken the connection
        assert recv_exactly(old, 5) == b"first"
        proxy.set_refuse(True)
        assert_turned_away(proxy)
        old.sendall(b"still")
        assert recv_exactly(old, 5) == b"still"
        proxy.set_refuse(False)
        with closing(connect(proxy)) as sock:
            sock.sendall(b"open")
            assert recv_exactly(sock, 4) == b"open"
    stats = proxy.stats
    assert (stats.refused, stats.connections) == (1, 2)


def test_drop_after_cuts_a_transfer_midway(proxy: FaultProxy) -> None:
    budget = 100_000
    data = random.Random(1).randbytes(1_000_000)
    proxy.drop_after(budget)
    with closing(connect(proxy)) as sock:
        sender = send_in_thread(sock, data)
        echoed = recv_to_end(sock)
        sender.join()
    assert echoed == data[: len(echoed)]
    assert len(echoed) <= budget
    stats = proxy.stats
    assert (stats.bytes_up, stats.resets) == (budget, 1)
    proxy.drop_after(None)
    with closing(connect(proxy)) as sock:
        sender = send_in_thread(sock, data, then_shut=True)
        assert recv_to_end(sock) == data
        sender.join()


def test_dead_upstream_resets_the_client() -> None:
    with closing(socket.socket()) as unused:
        unused.bind(("127.0.0.1", 0))
        dead = unused.getsockname()
    with FaultProxy(dead) as proxy:
        assert_turned_away(proxy)


def test_stop_closes_everything_and_is_idempotent(echo: tuple[str, int]) -> None:
    proxy = FaultProxy(echo)
    address = proxy.start()
    assert proxy.address == address
    sock = connect(proxy)
    sock.sendall(b"x")
    assert recv_exactly(sock, 1) == b"x"
    proxy.stop()
    with closing(sock):
        assert_closed_by_peer(sock)
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=10).close()
    assert not [t for t in threading.enumerate() if t.name == "fedloom-faultproxy"]


@pytest.mark.parametrize(
    ("control", "value"),
    [
        ("set_latency", -0.5),
        ("set_latency", float("nan")),
        ("set_rate", -10.0),
        ("set_rate", 0),
        ("drop_after", -1),
    ],
)
def test_rejects_bad_arguments(control: str, value: float) -> None:
    proxy = FaultProxy(("127.0.0.1", 1))
    with pytest.raises(ValueError, match=str(value)):
        getattr(proxy, control)(value)


def test_grpc_unary_call_through_proxy() -> None:
    handler = grpc.method_handlers_generic_handler(
        "fedloom.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    fast_reconnect = [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 300),
    ]
    try:
        with FaultProxy(("127.0.0.1", port)) as proxy:
            host, proxy_port = proxy.address
            with grpc.insecure_channel(f"{host}:{proxy_port}", fast_reconnect) as channel:
                echo = channel.unary_unary("/fedloom.test.Echo/Echo")
                payload = random.Random(2).randbytes(200_000)
                assert echo(payload, timeout=10) == payload

                proxy.set_blackhole(True)
                with pytest.raises(grpc.RpcError) as err:
                    echo(b"ping", timeout=0.5)
                assert err.value.code() in (
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.UNAVAILABLE,
                )
                proxy.set_blackhole(False)

                proxy.set_refuse(True)
                proxy.reset_all()  # also drops the connection that lost frames to the blackhole
                with pytest.raises(grpc.RpcError) as err:
                    echo(b"ping", timeout=2)
                assert err.value.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                proxy.set_refuse(False)
                assert echo(b"back", timeout=10, wait_for_ready=True) == b"back"
    finally:
        server.stop(None)
