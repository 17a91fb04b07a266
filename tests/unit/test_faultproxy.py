"""The fault proxy forwards bytes faithfully, and on demand delays, resets or swallows them."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import socketserver
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from ordersync.testing import wait_until
from ordersync.testing.faultproxy import FaultProxy, ThreadedFaultProxy

# Only a guard against hangs: every wait below ends as soon as its bytes (or EOF) arrive.
TIMEOUT = 10.0
# How long "nothing arrived" is watched for; the proxy answers in microseconds otherwise.
SILENCE = 0.5

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """An echo server that also echoes a half-close: EOF in, EOF out."""
    writers: set[asyncio.StreamWriter] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except OSError:  # the proxy cut the connection, as the fault tests make it do
            pass
        finally:
            writer.close()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        task = asyncio.get_running_loop().create_task(echo(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    for writer in writers:
        writer.transport.abort()
    await asyncio.gather(*tasks)
    await server.wait_closed()


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo_port) as running:
        yield running


@asynccontextmanager
async def connected(port: int) -> AsyncIterator[Streams]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def round_trip(streams: Streams, payload: bytes) -> bytes:
    reader, writer = streams

    async def send() -> None:
        writer.write(payload)
        await writer.drain()

    # Sending and reading at once, so a large payload cannot deadlock on full buffers.
    _, echoed = await asyncio.wait_for(
        asyncio.gather(send(), reader.readexactly(len(payload))), TIMEOUT
    )
    return echoed


async def assert_cut(reader: asyncio.StreamReader) -> None:
    """The connection ends: a reset, or an EOF after nothing more."""
    try:
        rest = await asyncio.wait_for(reader.read(), TIMEOUT)
    except ConnectionError:
        return
    assert rest == b""


async def assert_new_connection_cut(port: int) -> None:
    """A new connection is accepted and cut at once (the reset may even beat connect())."""
    try:
        async with connected(port) as (reader, _):
            await assert_cut(reader)
    except ConnectionError:
        pass


async def assert_silent(reader: asyncio.StreamReader) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), SILENCE)


async def test_pass_through_echoes_bytes_intact(proxy: FaultProxy) -> None:
    """By default bytes flow both ways unchanged, a 1 MiB payload included."""
    big = random.Random(7).randbytes(1024 * 1024)
    async with connected(proxy.port) as streams:
        assert await round_trip(streams, b"hello") == b"hello"
        assert await round_trip(streams, big) == big


async def test_half_close_is_forwarded_both_ways(proxy: FaultProxy) -> None:
    """A client that shuts its sending side still gets the whole reply, then EOF."""
    async with connected(proxy.port) as (reader, writer):
        writer.write(b"last words")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"last words"


async def test_latency_still_delivers_every_byte_in_order(proxy: FaultProxy) -> None:
    """With latency and jitter on, every chunk arrives, and in the order it was sent."""
    proxy.latency(0.02, jitter=0.02)
    messages = [f"message {i:03d};".encode() for i in range(100)]
    expected = b"".join(messages)
    async with connected(proxy.port) as (reader, writer):

        async def send() -> None:
            for message in messages:
                writer.write(message)
                await writer.drain()
                # Separate writes become separate chunks, each with its own random delay.
                await asyncio.sleep(0.001)

        _, echoed = await asyncio.wait_for(
            asyncio.gather(send(), reader.readexactly(len(expected))), TIMEOUT
        )
    assert echoed == expected


async def test_latency_rejects_negative_delays(proxy: FaultProxy) -> None:
    """A negative latency or jitter is a mistake in the test, not a fault to inject."""
    with pytest.raises(ValueError, match="negative"):
        proxy.latency(-1)
    with pytest.raises(ValueError, match="negative"):
        proxy.latency(0.1, jitter=-0.1)


async def test_reset_cuts_open_connections(proxy: FaultProxy) -> None:
    """reset() aborts every open connection; the client sees a reset or EOF."""
    async with connected(proxy.port) as streams:
        assert await round_trip(streams, b"before") == b"before"
        proxy.reset()
        await assert_cut(streams[0])
    await wait_until(lambda: proxy.active_connections == 0)


async def test_reset_mode_cuts_new_connections_until_restore(proxy: FaultProxy) -> None:
    """While in reset mode new connections are cut at once; after restore() they echo again."""
    proxy.reset()
    await assert_new_connection_cut(proxy.port)
    proxy.restore()
    async with connected(proxy.port) as streams:
        assert await round_trip(streams, b"back") == b"back"


async def test_blackhole_silences_open_connections(proxy: FaultProxy) -> None:
    """In a black hole a write gets no echo; after restore() a new connection works."""
    async with connected(proxy.port) as streams:
        assert await round_trip(streams, b"before") == b"before"
        proxy.blackhole()
        streams[1].write(b"anyone there?")
        await streams[1].drain()
        await assert_silent(streams[0])
        proxy.restore()
        # Bytes were lost mid-stream, so the proxy cuts the connection to force a reconnect.
        await assert_cut(streams[0])
    async with connected(proxy.port) as streams:
        assert await round_trip(streams, b"after") == b"after"


async def test_blackhole_accepts_new_connections_and_stays_silent(proxy: FaultProxy) -> None:
    """A connection made during a black hole is accepted, hears nothing, and is cut on restore."""
    proxy.blackhole()
    async with connected(proxy.port) as (reader, writer):
        writer.write(b"hello?")
        await writer.drain()
        await assert_silent(reader)
        proxy.restore()
        await assert_cut(reader)


async def test_counters_follow_connections_and_bytes(proxy: FaultProxy) -> None:
    """Counters report connections made and open, and bytes forwarded each way."""
    async with connected(proxy.port) as first, connected(proxy.port) as second:
        await round_trip(first, b"x" * 10)
        await round_trip(second, b"y" * 20)
        assert proxy.connections_total == 2
        assert proxy.active_connections == 2
        assert proxy.bytes_up == 30
        assert proxy.bytes_down == 30
    await wait_until(lambda: proxy.active_connections == 0)
    assert proxy.connections_total == 2


async def test_stop_closes_open_connections(echo_port: int) -> None:
    """stop() closes the listener and every connection through it."""
    async with FaultProxy("127.0.0.1", echo_port) as proxy, connected(proxy.port) as streams:
        assert await round_trip(streams, b"hi") == b"hi"
        await proxy.stop()
        await assert_cut(streams[0])
        assert proxy.active_connections == 0
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.port)


async def test_unreachable_upstream_cuts_the_client() -> None:
    """A client of a proxy whose upstream refuses is cut rather than left hanging."""
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        closed_port = placeholder.getsockname()[1]  # bound, never listening: refuses
        async with FaultProxy("127.0.0.1", closed_port) as proxy:
            await assert_new_connection_cut(proxy.port)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


@pytest.fixture
def threaded_echo_port() -> Iterator[int]:
    """An echo server on threads, for tests without an event loop."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def blocking_round_trip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    echoed = b""
    while len(echoed) < len(payload) and (chunk := sock.recv(65536)):
        echoed += chunk
    return echoed


def assert_new_connection_cut_blocking(port: int) -> None:
    """A new connection is accepted and cut at once (the reset may even beat connect())."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            rest = sock.recv(65536)
    except ConnectionResetError:
        return
    assert rest == b""


def test_threaded_proxy_serves_synchronous_code(threaded_echo_port: int) -> None:
    """ThreadedFaultProxy runs its own loop, so plain blocking sockets can use it."""
    with ThreadedFaultProxy("127.0.0.1", threaded_echo_port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
            assert blocking_round_trip(sock, b"sync hello") == b"sync hello"
        assert proxy.connections_total == 1
        assert proxy.bytes_up == proxy.bytes_down == len(b"sync hello")

        proxy.blackhole()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"hello?")
            sock.settimeout(SILENCE)
            with pytest.raises(TimeoutError):
                sock.recv(1)

        proxy.reset()
        assert_new_connection_cut_blocking(proxy.port)

        proxy.restore()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
            assert blocking_round_trip(sock, b"again") == b"again"
