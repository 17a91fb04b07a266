"""The message bus: routes commands to handlers and commits them in groups.

Callers `await bus.handle(command)` and get the handler's result once the transaction that
holds its effect has committed; only then may an API answer 200. Commands arriving while a
transaction is in flight queue up and go into the next one together (group commit), so
the cost of a durable commit (an fsync on SQLite) is shared by every request in the batch
instead of paid by each. Commands are sharded by key over `writers` lanes: commands for the
same order always meet in the same lane, in arrival order, and different lanes commit in
parallel (PostgreSQL). A failing batch is retried one command at a time, so one poisoned
message cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from ordersync.domain import commands
from ordersync.domain.errors import DomainError
from ordersync.service.handlers import HANDLERS, Handler
from ordersync.service.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


class Sharded(Protocol):
    @property
    def shard_key(self) -> str: ...


class BatchObserver(Protocol):
    def batch_committed(self, size: int, seconds: float, destinations: set[str]) -> None: ...


_Item = tuple[Any, "asyncio.Future[Any]"]


async def prefetch(batch: Iterable[Any], uow: UnitOfWork) -> None:
    """Load what a batch of ingest commands will look up, in two queries per channel."""
    by_channel: dict[str, tuple[list[str], list[str]]] = {}
    for cmd in batch:
        if isinstance(cmd, commands.IngestChannelOrder):
            ext, mids = by_channel.setdefault(cmd.channel_id, ([], []))
            mids.append(cmd.message_id)
            if cmd.snapshot is not None and cmd.snapshot.external_id is not None:
                ext.append(cmd.snapshot.external_id)
    for channel_id, (ext, mids) in by_channel.items():
        await uow.inbox.preload(channel_id, mids)
        if ext:
            await uow.orders.preload_external(channel_id, ext)


class MessageBus:
    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        *,
        writers: int = 1,
        max_batch: int = 256,
        handlers: dict[type, Handler] | None = None,
        observer: BatchObserver | None = None,
        before_batch: Callable[[list[Any], UnitOfWork], Awaitable[None]] = prefetch,
    ) -> None:
        self._uow_factory = uow_factory
        self._handlers = handlers or HANDLERS
        self._max_batch = max_batch
        self._observer = observer
        self._before_batch = before_batch
        self._queues: list[asyncio.Queue[_Item]] = [asyncio.Queue() for _ in range(writers)]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._writer(q), name=f"bus-writer-{i}")
            for i, q in enumerate(self._queues)
        ]

    async def stop(self) -> None:
        """Finish what is queued, then stop the writers."""
        for q in self._queues:
            await q.join()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def handle(self, cmd: Sharded) -> Any:
        if not self._tasks:
            raise RuntimeError("message bus is not running")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        lane = zlib.crc32(cmd.shard_key.encode()) % len(self._queues)
        self._queues[lane].put_nowait((cmd, fut))
        return await fut

    async def _writer(self, queue: asyncio.Queue[_Item]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self._max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._run(batch)
            except Exception:  # never let the writer die; _run already resolved futures
                log.exception("unexpected error in bus writer")
            finally:
                for _ in batch:
                    queue.task_done()

    async def _run(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            async with self._uow_factory() as uow:
                await self._before_batch([cmd for cmd, _ in batch], uow)
                for cmd, fut in batch:
                    try:
                        outcomes.append((fut, await self._handlers[type(cmd)](cmd, uow), None))
                    except DomainError as e:
                        outcomes.append((fut, None, e))
                await uow.commit()
                destinations: set[str] = getattr(uow, "committed_destinations", set())
        except Exception as e:
            if len(batch) > 1:
                log.warning("batch of %d failed (%s); retrying one by one", len(batch), e)
                for item in batch:
                    await self._run([item])
                return
            _, fut = batch[0]
            if not fut.done():
                fut.set_exception(e)
            return
        if self._observer is not None:
            self._observer.batch_committed(len(batch), time.perf_counter() - started, destinations)
        for fut, result, error in outcomes:
            if fut.done():  # the caller went away (client disconnected)
                continue
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)
