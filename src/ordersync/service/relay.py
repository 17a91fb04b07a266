"""The outbox relay: moves committed events to the broker, at least once, in commit order.

Every worker runs one, but only the holder of the relay lease publishes. The lease is short
(`ttl`) and renewed every loop, so a crashed relay's role is taken over within seconds; each
takeover bumps the lease epoch, and an event is marked published only under the epoch that
still holds the lease (fencing), so a relay that stalled past its lease cannot interfere.
A crash between publish and mark republishes: consumers see duplicates and drop them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ordersync.clock import to_us, utcnow
from ordersync.ids import new_id
from ordersync.service.bus import EventMessage, Publisher
from ordersync.service.singleton import cancelling, wait_event

log = logging.getLogger(__name__)


class RelayStore(Protocol):
    async def acquire(self, owner: str, now_us: int, ttl_us: int) -> int | None: ...
    async def release(self, owner: str) -> None: ...
    async def unpublished(self, limit: int) -> list[EventMessage]: ...
    async def mark_published(
        self, seqs: list[int], owner: str, epoch: int, now_us: int
    ) -> bool: ...
    async def listen(
        self, wake: Callable[[], None], lost: Callable[[], None]
    ) -> Callable[[], Any]: ...


class RelayObserver:
    def published(self, lags_seconds: list[float]) -> None:
        pass

    def leader(self, is_leader: bool) -> None:
        pass


class OutboxRelay:
    def __init__(
        self,
        store: RelayStore,
        publisher: Publisher,
        *,
        owner: str | None = None,
        batch: int = 1000,
        ttl: float = 3.0,
        poll: float = 0.5,
        observer: RelayObserver | None = None,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.owner = owner or new_id("rly")
        self.batch = batch
        self.ttl_us = int(ttl * 1e6)
        self.renew_every = ttl / 3
        self.poll = poll
        self.observer = observer or RelayObserver()
        self.epoch: int | None = None
        self.published_total = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._close_listener: Callable[[], Any] | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")
        self._heartbeat = asyncio.create_task(self._keep_lease(), name="relay-lease")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        if self._close_listener is not None:
            with contextlib.suppress(Exception):
                await self._close_listener()
        if self.epoch is not None:
            with contextlib.suppress(Exception):
                await self.store.release(self.owner)  # let another worker take over at once

    async def _run(self) -> None:
        delay = 0.05
        while not self._stopping:
            self._wake.clear()
            try:
                more = await self._step()
                delay = 0.05
            except Exception:
                if cancelling():  # stopping: a clean-up error must not keep us looping
                    raise asyncio.CancelledError from None
                # Broker or database away: keep trying; nothing is marked that was not confirmed.
                log.warning("outbox relay step failed; retrying in %.2fs", delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if more:
                continue
            await wait_event(self._wake, self.poll)

    async def _keep_lease(self) -> None:
        # Its own task, so a slow publish under load never lets the lease lapse.
        while True:
            try:
                epoch = await self.store.acquire(self.owner, to_us(utcnow()), self.ttl_us)
            except Exception:
                log.warning("outbox relay lease renewal failed", exc_info=True)
                epoch = None
            if epoch != self.epoch:
                log.info("outbox relay %s %s", self.owner, "leads" if epoch else "stands by")
                self.observer.leader(epoch is not None)
                self.epoch = epoch
                if epoch is not None:
                    self._wake.set()
            if epoch is not None and self._close_listener is None:
                with contextlib.suppress(Exception):  # polling still works without LISTEN
                    self._close_listener = await self.store.listen(
                        self._wake.set, self._listener_lost
                    )
            await asyncio.sleep(self.renew_every)

    def _listener_lost(self) -> None:
        self._close_listener = None  # the heartbeat listens again
        self._wake.set()

    async def _step(self) -> bool:
        """Publish one batch; True if there may be more right away."""
        epoch = self.epoch
        if epoch is None:
            return False
        messages = await self.store.unpublished(self.batch)
        if not messages:
            return False
        await self.publisher.publish(messages)
        now_us = to_us(utcnow())
        if not await self.store.mark_published(
            [m.event_seq for m in messages], self.owner, epoch, now_us
        ):
            log.warning(
                "outbox relay %s (epoch %s) could not mark %d events; standing by",
                self.owner,
                epoch,
                len(messages),
            )
            self.epoch = None
            return False
        self.published_total += len(messages)
        self.observer.published([(now_us - m.created_us) / 1e6 for m in messages])
        return len(messages) >= self.batch
