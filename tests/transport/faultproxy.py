"""A TCP proxy that injects network faults, for integration tests of the gRPC deployment.

Tests put it between client processes and the server and change its faults while traffic
flows: latency, a bandwidth cap, resets, a blackhole, refused connections and resets after a
byte budget. It follows the model of Toxiproxy but is written here because the tests need it
in-process, controllable at run time from the test's own thread, and free of dependencies.

The proxy runs an asyncio loop in a daemon thread. Each direction of each connection is a
delay line: a reader stamps every chunk with the time it is due and queues it, a writer sends
chunks in order once due, throttled by a token bucket. With no fault set, bytes (gRPC's
HTTP/2 included) pass through unchanged, and a half-close on one side is forwarded as one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import socket
import struct
import threading
from dataclasses import dataclass

_CHUNK = 64 * 1024  # largest read from a socket
_LINE_CHUNKS = 1024  # chunks queued per direction: bounds what a stalled receiver can pin
_BURST_S = 0.05  # the token bucket holds this many seconds' worth of bytes
_RST_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


@dataclass(slots=True)
class ProxyStats:
    """Counters since the proxy was created (a snapshot; it does not change afterwards)."""

    connections: int = 0  # client connections accepted and not refused
    active: int = 0  # of those, still open
    bytes_up: int = 0  # forwarded client -> upstream
    bytes_down: int = 0  # forwarded upstream -> client
    resets: int = 0  # connections reset by reset_all or drop_after
    refused: int = 0  # connections closed at once by set_refuse


@dataclass(eq=False)
class _Link:
    """One proxied connection: its handler task, its two sockets, bytes carried upstream."""

    task: asyncio.Task[None]
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    up: int = 0

    def abort(self) -> None:
        """Drop both sides with a TCP RST."""
        for writer in (self.client, self.upstream):
            if writer is not None:
                _rst(writer)


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.fileno() != -1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
    writer.transport.abort()


class _Bucket:
    """Token bucket for one direction; starts full, holds ``_BURST_S`` of bytes (>= 1 byte)."""

    def __init__(self) -> None:
        self._tokens: float | None = None
        self._stamp = 0.0

    @staticmethod
    def piece(rate: float) -> int:
        """Largest write that one take() may ask for at this rate."""
        return max(1, min(_CHUNK, int(rate * _BURST_S)))

    async def take(self, n: int, rate: float) -> None:
        """Wait until ``n`` bytes (at most ``piece(rate)``) may be sent."""
        now = asyncio.get_running_loop().time()
        burst = max(1.0, rate * _BURST_S)
        tokens = burst if self._tokens is None else self._tokens + (now - self._stamp) * rate
        tokens = min(burst, tokens)
        wait = max(0.0, (n - tokens) / rate)
        self._tokens = tokens + wait * rate - n
        self._stamp = now + wait
        if wait:
            await asyncio.sleep(wait)


class FaultProxy:
    """Forwards TCP connections from (listen_host, listen_port) to upstream, with faults."""

    def __init__(
        self, upstream: tuple[str, int], listen_host: str = "127.0.0.1", listen_port: int = 0
    ) -> None:
        self._upstream = upstream
        self._listen = (listen_host, listen_port)
        self._latency = 0.0
        self._rate: float | None = None
        self._blackhole = False
        self._refuse = False
        self._drop_after: int | None = None
        self._stats = ProxyStats()
        self._stats_lock = threading.Lock()
        self._links: set[_Link] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._address: tuple[str, int] | None = None
        self._accepting = False
        self._start_error: OSError | None = None

    # lifecycle

    def start(self) -> tuple[str, int]:
        """Listen and forward in a daemon thread; return the bound (host, port)."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy is already running")
        ready = threading.Event()
        self._start_error = None
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(ready),), name="fedloom-faultproxy", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error
        return self.address

    def stop(self) -> None:
        """Close the listener and every connection, and join the thread; safe to repeat."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        assert self._loop is not None and self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        thread.join()
        self._loop = self._stopping = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) clients connect to."""
        if self._address is None:
            raise RuntimeError("FaultProxy has not been started")
        return self._address

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        with self._stats_lock:
            return dataclasses.replace(self._stats)

    # faults; each may be called from any thread and applies to open connections too

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in each direction (bytes read from now on)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"latency must be a finite number of seconds >= 0, got {seconds!r}")
        self._latency = float(seconds)

    def set_rate(self, bytes_per_s: float | None) -> None:
        """Cap each direction of each connection at ``bytes_per_s``; None lifts the cap."""
        if bytes_per_s is not None and not (math.isfinite(bytes_per_s) and bytes_per_s > 0):
            raise ValueError(f"rate must be a finite bytes/s > 0 or None, got {bytes_per_s!r}")
        self._rate = None if bytes_per_s is None else float(bytes_per_s)

    def set_blackhole(self, on: bool) -> None:
        """While on, keep connections open (new ones too) but silently drop all they carry.

        EOFs are dropped too, so a side that closes meanwhile is never seen closing. Dropped
        bytes are gone for good: a protocol with state across frames (HTTP/2's header
        compression, say) usually finds a connection that lived through it broken afterwards.
        """
        self._blackhole = on

    def set_refuse(self, on: bool) -> None:
        """While on, reset new connections right after accepting them."""
        self._refuse = on

    def drop_after(self, nbytes: int | None) -> None:
        """Reset a connection once it has carried ``nbytes`` upstream; None disables."""
        if nbytes is not None and nbytes < 0:
            raise ValueError(f"drop_after needs a byte count >= 0 or None, got {nbytes!r}")
        self._drop_after = nbytes

    def reset_all(self) -> int:
        """Reset every open connection with a TCP RST; return how many."""
        loop = self._loop
        if loop is None:
            return 0
        return asyncio.run_coroutine_threadsafe(self._reset_all(), loop).result()

    # the loop thread

    async def _main(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._handle, *self._listen)
        except OSError as exc:
            self._start_error = exc
            ready.set()
            return
        self._loop = asyncio.get_running_loop()
        self._address = server.sockets[0].getsockname()[:2]
        self._accepting = True
        ready.set()
        await self._stopping.wait()
        self._accepting = False
        server.close()
        await self._close_links(list(self._links))
        # connections accepted just before the close still have handlers to run (each resets
        # its connection at once): wait for them, so that no socket outlives the loop
        this = asyncio.current_task()
        while others := asyncio.all_tasks() - {this}:
            await asyncio.wait(others)
        await server.wait_closed()

    async def _reset_all(self) -> int:
        links = list(self._links)
        self._count("resets", len(links))
        await self._close_links(links)
        return len(links)

    def _reset(self, link: _Link) -> None:
        self._count("resets")
        link.abort()
        link.task.cancel()

    async def _close_links(self, links: list[_Link]) -> None:
        for link in links:
            link.abort()
            link.task.cancel()
        await asyncio.gather(*(link.task for link in links), return_exceptions=True)

    def _count(self, field: str, n: int = 1) -> None:
        with self._stats_lock:
            setattr(self._stats, field, getattr(self._stats, field) + n)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._accepting:  # accepted just before stop() closed the listener
            _rst(writer)
            return
        if self._refuse:
            self._count("refused")
            _rst(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        link = _Link(task, writer)
        self._links.add(link)
        self._count("connections")
        self._count("active")
        try:
            await self._forward(link, reader)
        except asyncio.CancelledError:
            pass  # reset or stop, both asked for; asyncio would log a cancelled handler as an error
        finally:
            self._links.discard(link)
            self._count("active", -1)
            for side in (link.client, link.upstream):
                if side is not None:
                    side.close()
                    await asyncio.gather(side.wait_closed(), return_exceptions=True)

    async def _forward(self, link: _Link, reader: asyncio.StreamReader) -> None:
        """Connect upstream and pump both directions until both have seen EOF."""
        try:
            up_reader, link.upstream = await asyncio.open_connection(*self._upstream)
            directions = ((reader, link.upstream, True), (up_reader, link.client, False))
            async with asyncio.TaskGroup() as group:
                for src, dst, up in directions:
                    line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_LINE_CHUNKS)
                    group.create_task(self._read(src, line))
                    group.create_task(self._deliver(link, line, dst, up))
        except* OSError:  # upstream unreachable, or one side failed: reset the other
            link.abort()

    async def _read(
        self, src: asyncio.StreamReader, line: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        """Stamp each chunk (b"" for EOF) with its due time and queue it, unless blackholed."""
        loop = asyncio.get_running_loop()
        while True:
            chunk = await src.read(_CHUNK)
            if not self._blackhole:
                await line.put((loop.time() + self._latency, chunk))
            if not chunk:
                return

    async def _deliver(
        self,
        link: _Link,
        line: asyncio.Queue[tuple[float, bytes]],
        dst: asyncio.StreamWriter,
        up: bool,
    ) -> None:
        """Write queued chunks in order once due, at the current rate; forward EOF."""
        loop = asyncio.get_running_loop()
        bucket = _Bucket()
        while True:
            due, chunk = await line.get()
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            if not chunk:
                if dst.can_write_eof():
                    dst.write_eof()
                return
            while chunk:
                n = len(chunk)
                limit = self._drop_after if up else None
                if limit is not None:
                    n = min(n, limit - link.up)
                    if n <= 0:
                        self._reset(link)
                        return
                if (rate := self._rate) is not None:
                    n = min(n, _Bucket.piece(rate))
                    await bucket.take(n, rate)
                if up:
                    link.up += n
                self._count("bytes_up" if up else "bytes_down", n)
                dst.write(chunk[:n])
                chunk = chunk[n:]
                if limit is not None and link.up >= limit:
                    dst.transport.set_write_buffer_limits(0)  # flush all before the RST
                    await dst.drain()
                    self._reset(link)
                    return
                await dst.drain()
