"""Work that must run in exactly one process at a time, held by a named lease (ADR 4).

Every worker runs a `SingletonTask` per role (the channel pull loops, the shipment timer
sweep); only the holder of the lease runs the work. The runner tries to take or renew the
lease every third of its `ttl`; it starts the work when it gets the lease and stops it at once
when a renewal fails, hangs or finds the lease gone, so the work stops before the lease can
expire under it (a stalled process that wakes after a takeover finds its renewal refused: the
epoch is the fencing token). A clean stop releases the lease, so a stand-by takes over on its
next try instead of waiting for the lease to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ordersync.clock import to_us, utcnow
from ordersync.ids import new_id

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a background task and wait until it has ended.

    Never `with suppress(CancelledError): await task`: if the caller is cancelled while it
    waits (a stop bounded by a timeout, or a singleton stopping the work it was already
    winding down after a lost lease), that swallows the caller's own cancellation and it
    runs on; a `SingletonTask` runner then loops forever and `Hub.stop()` hangs. Waiting
    with `asyncio.wait` leaves the task's CancelledError in the task and lets ours through.
    """
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s failed while stopping", task.get_name(), exc_info=task.exception())


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set (True) or `timeout` seconds have passed (False).

    What a loop waits on between rounds, instead of `wait_for(event.wait(), timeout)`: on
    Python 3.11 wait_for returns the inner result when the event is set just as the task is
    cancelled and drops the cancellation, so the loop runs on and whoever waits for it to end
    hangs. Here the wait runs in the calling task under `asyncio.timeout`, so a cancellation
    always raises; and one that something earlier in the round absorbed (see `cancelling`)
    is raised before waiting, so the loop ends at its next wait.
    """
    if cancelling():
        raise asyncio.CancelledError
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def cancelling() -> bool:
    """True once the running task has been asked to stop. A loop that survives errors
    (`except Exception`) checks it: a cleanup that fails while the cancellation unwinds (a
    rollback on a connection whose query was just cancelled: "another operation is in
    progress") replaces the CancelledError with its own error, and the loop must still end.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class LeaseStore(Protocol):
    """One named lease: `acquire` takes or extends it (our epoch) or returns None."""

    async def acquire(self, owner: str, now_us: int, ttl_us: int) -> int | None: ...
    async def release(self, owner: str) -> None: ...


class SingletonTask:
    def __init__(
        self,
        name: str,
        lease_store: LeaseStore,
        start: Callable[[], Awaitable[None]],
        stop: Callable[[], Awaitable[None]],
        *,
        ttl: float = 3.0,
        owner: str | None = None,
    ) -> None:
        self.name = name
        self.store = lease_store
        self._start_work = start
        self._stop_work = stop
        self.ttl_us = int(ttl * 1e6)
        self.every = ttl / 3
        self.owner = owner or new_id("sgl")
        self.epoch: int | None = None  # the epoch our running work belongs to
        self._held_until = 0.0  # loop time when our last renewal runs out
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        """True while this process runs the work."""
        return self.epoch is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"singleton-{self.name}")

    async def stop(self) -> None:
        """Stop the work if it runs here and release the lease for a stand-by."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self.active:
            await self._halt()
            with contextlib.suppress(Exception):
                await self.store.release(self.owner)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        ttl = self.ttl_us / 1e6
        while True:
            asked = loop.time()
            # While we run the work, a renewal that has not answered shortly before the last
            # one runs out counts as failed: the work stops while the lease still covers it.
            timeout = max(self._held_until - asked - self.every / 2, 0.01) if self.active else ttl
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result
                # of an inner call that finished as the cancellation arrived and drops the
                # cancellation, and this loop would then run on while `stop` waits for it.
                async with asyncio.timeout(timeout):
                    epoch = await self.store.acquire(self.owner, to_us(utcnow()), self.ttl_us)
            except Exception:
                if cancelling():  # stopping: a clean-up error must not keep us looping
                    raise asyncio.CancelledError from None
                log.warning("lease %r: renewal failed", self.name, exc_info=True)
                epoch = None
            if self.active and epoch != self.epoch:
                # Lost, or lapsed and retaken under a new epoch (someone may have run in
                # between): stop, and start again below if we hold it now.
                log.info("lease %r: %s lost it; stopping", self.name, self.owner)
                await self._halt()
            if epoch is not None:
                self._held_until = asked + ttl
            if epoch is not None and not self.active:
                log.info("lease %r: %s takes it (epoch %d)", self.name, self.owner, epoch)
                self.epoch = epoch
                try:
                    await self._start_work()
                except Exception:
                    log.warning("lease %r: starting the work failed", self.name, exc_info=True)
                    await self._halt()
                    with contextlib.suppress(Exception):
                        await self.store.release(self.owner)
            if cancelling():  # a cancellation something below absorbed: honour it
                raise asyncio.CancelledError
            await asyncio.sleep(self.every)

    async def _halt(self) -> None:
        try:
            await self._stop_work()
        except Exception:
            log.warning("lease %r: stopping the work failed", self.name, exc_info=True)
        self.epoch = None  # only now: if cancelled mid-stop, `stop` stops the work again
