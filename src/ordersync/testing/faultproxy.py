"""A TCP proxy that injects network faults between the hub and a service it depends on.

Fault-injection tests must cut and restore the hub's connections to PostgreSQL and RabbitMQ
without stopping those services (other tests share them) and without root (no iptables or
tc). So the hub is pointed at this proxy instead, and the test flips its mode: added
latency, connections reset with a TCP RST, or a black hole where bytes vanish the way they
do behind a pulled cable. `FaultProxy` runs on the caller's event loop; `ThreadedFaultProxy`
brings its own loop thread for synchronous tests and benchmark scripts.

Leaving black-hole mode aborts the connections that were black-holed: bytes were dropped
mid-stream, so resuming them would feed the protocol on either side a corrupt stream, and
clients must reconnect, as they would after a real outage.

`python -m ordersync.testing.faultproxy --upstream HOST:PORT` runs a plain pass-through
proxy until Ctrl-C, for watching a service through it by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Self, TypeAlias

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
# Bounded so a slow (or delayed) receiver pushes back on the sender through TCP, instead
# of the proxy buffering an unbounded backlog in memory.
_QUEUE_CHUNKS = 64
# l_onoff=1, l_linger=0: close() then discards unsent data and sends RST instead of FIN.
_LINGER_RST = struct.pack("ii", 1, 0)

_Queue: TypeAlias = asyncio.Queue[tuple[float, bytes] | None]
_Mode: TypeAlias = Literal["pass", "latency", "reset", "blackhole"]


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # The socket may already be gone; aborting the transport is what matters then.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """A client connection and, once connected, its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    blackholed: bool = False
    aborted: bool = False

    def abort(self) -> None:
        self.aborted = True
        for writer in (self.client, self.upstream):
            if writer is not None:
                _rst(writer)

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None and not writer.is_closing():
                writer.close()


class FaultProxy:
    """Forwards TCP connections to one upstream, with faults switchable at any moment."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.connections_total = 0
        self.bytes_up = 0  # client -> upstream, counted as handed to the upstream socket
        self.bytes_down = 0  # upstream -> client
        self._mode: _Mode = "pass"
        self._delay = 0.0
        self._jitter = 0.0
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._stopping = False
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the proxy is not listening; call start() first")
        return self._port

    @property
    def active_connections(self) -> int:
        return len(self._links)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("a FaultProxy starts only once")
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.listen_port)
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is None or self._stopping:
            return
        # Connections whose accept was already under way are reset as they arrive.
        self._stopping = True
        self._server.close()
        # Aborting here, not in the handlers, also reaches links whose task never started.
        for link in self._links:
            link.abort()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        self._links.clear()
        await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def pass_through(self) -> None:
        self._leave_blackhole()
        self._mode, self._delay, self._jitter = "pass", 0.0, 0.0

    def latency(self, seconds: float, jitter: float = 0.0) -> None:
        """Delay every chunk by `seconds` ± `jitter` (never below zero), order kept."""
        if seconds < 0 or jitter < 0:
            raise ValueError("latency and jitter must not be negative")
        self._leave_blackhole()
        self._mode, self._delay, self._jitter = "latency", seconds, jitter

    def reset(self) -> None:
        self._mode = "reset"
        for link in list(self._links):
            link.abort()

    def blackhole(self) -> None:
        self._mode = "blackhole"
        for link in self._links:
            link.blackholed = True

    def restore(self) -> None:
        self.pass_through()

    def _leave_blackhole(self) -> None:
        for link in list(self._links):
            if link.blackholed:
                link.abort()

    def _due(self) -> float:
        delay = self._delay
        if self._jitter:
            delay = max(0.0, delay + random.uniform(-self._jitter, self._jitter))
        return asyncio.get_running_loop().time() + delay

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, so the proxy creates and owns each connection's task.
        self.connections_total += 1
        link = _Link(writer, blackholed=self._mode == "blackhole")
        if self._stopping or self._mode == "reset":
            link.abort()
            return
        # Registered before connecting upstream so a fault set meanwhile reaches it.
        self._links.add(link)
        task = asyncio.get_running_loop().create_task(self._serve(link, reader))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(self, link: _Link, reader: asyncio.StreamReader) -> None:
        try:
            if link.blackholed:
                while await reader.read(_CHUNK):
                    pass
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
            except OSError as e:
                # The client already saw its connect succeed; a reset is the closest to
                # the refusal it would have got without the proxy.
                log.debug("upstream unreachable: %s", e)
                link.abort()
                return
            link.upstream = up_writer
            if link.aborted:
                link.abort()  # reset() ran while connecting; the new upstream goes too
                return
            up: _Queue = asyncio.Queue(_QUEUE_CHUNKS)
            down: _Queue = asyncio.Queue(_QUEUE_CHUNKS)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._read(link, reader, up))
                tasks.create_task(self._forward(link, up, up_writer, upstream=True))
                tasks.create_task(self._read(link, up_reader, down))
                tasks.create_task(self._forward(link, down, link.client, upstream=False))
        except OSError as e:  # the client vanished while black-holed
            log.debug("connection failed: %s", e)
        finally:
            self._links.discard(link)
            link.close()

    async def _read(self, link: _Link, reader: asyncio.StreamReader, queue: _Queue) -> None:
        try:
            while data := await reader.read(_CHUNK):
                if not link.blackholed:
                    await queue.put((self._due(), data))
        except OSError:
            # A peer's reset travels through to the other peer, unless the cable is "out".
            if not link.blackholed:
                link.abort()
        # Not in a finally: a cancelled reader must not block on a full queue.
        await queue.put(None)

    async def _forward(
        self, link: _Link, queue: _Queue, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        # Keeps draining after a failure so the reader never blocks on a full queue.
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            due, data = item
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if link.blackholed or writer.is_closing():
                continue
            # Counted before writing so a peer that has the bytes always sees them counted.
            if upstream:
                self.bytes_up += len(data)
            else:
                self.bytes_down += len(data)
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                link.abort()
        if not link.blackholed and not writer.is_closing() and writer.can_write_eof():
            # Half-close: the peer that stopped sending may still be reading.
            try:
                writer.write_eof()
            except OSError:
                link.abort()


class _Mirror:
    """Reads the same-named counter of the wrapped proxy (ints are safe to read across threads)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: ThreadedFaultProxy, owner: type | None = None) -> int:
        return int(getattr(obj.proxy, self.name))


class ThreadedFaultProxy:
    """A `FaultProxy` on its own event loop in a daemon thread, for synchronous callers.

    Mode methods block until the mode is in effect, so a connection made right after
    `reset()` returns is reset. Do not call them from the proxy's own thread.
    """

    port = _Mirror()
    connections_total = _Mirror()
    active_connections = _Mirror()
    bytes_up = _Mirror()
    bytes_down = _Mirror()

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.proxy = FaultProxy(upstream_host, upstream_port, listen_host, listen_port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._loop is not None:
            raise RuntimeError("the proxy is already started")
        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="faultproxy", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.proxy.start(), loop).result()
        except BaseException:
            self._halt()
            raise
        return self

    def stop(self) -> None:
        if self._loop is not None:
            try:
                asyncio.run_coroutine_threadsafe(self.proxy.stop(), self._loop).result()
            finally:
                self._halt()

    def _halt(self) -> None:
        assert self._loop is not None
        assert self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _apply(self, change: Callable[[], None]) -> None:
        if self._loop is None:
            raise RuntimeError("the proxy is not running; call start() first")

        async def on_loop() -> None:
            change()

        asyncio.run_coroutine_threadsafe(on_loop(), self._loop).result()

    def pass_through(self) -> None:
        self._apply(self.proxy.pass_through)

    def latency(self, seconds: float, jitter: float = 0.0) -> None:
        self._apply(lambda: self.proxy.latency(seconds, jitter))

    def reset(self) -> None:
        self._apply(self.proxy.reset)

    def blackhole(self) -> None:
        self._apply(self.proxy.blackhole)

    def restore(self) -> None:
        self._apply(self.proxy.restore)


async def _run_forever(host: str, port: int, listen_port: int) -> None:
    async with FaultProxy(host, port, listen_port=listen_port) as proxy:
        print(f"127.0.0.1:{proxy.port} -> {host}:{port} (Ctrl-C stops)", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pass-through TCP proxy for manual debugging.")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT")
    parser.add_argument("--listen-port", type=int, default=0)
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--upstream: expected HOST:PORT, got {args.upstream!r}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_forever(host.strip("[]"), int(port), args.listen_port))


if __name__ == "__main__":
    main()
