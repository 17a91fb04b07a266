"""The ONE wiring point: builds the hub's parts from settings. Nothing connects at import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from ordersync.adapters.db import migrate
from ordersync.adapters.db.database import Database
from ordersync.adapters.db.deliveries import SqlDeliveryStore
from ordersync.adapters.db.unit_of_work import SqlUnitOfWork
from ordersync.adapters.destinations.webhooks import HttpSender
from ordersync.adapters.metrics import Metrics
from ordersync.config import DestinationConfig, Settings
from ordersync.domain.delivery import Backoff, RetryPolicy
from ordersync.service.dispatcher import Destination, Dispatcher
from ordersync.service.messagebus import MessageBus
from ordersync.service.outbox import EventRouter

log = logging.getLogger(__name__)


def destination_from_config(c: DestinationConfig) -> Destination:
    b = c.retry_backoff
    return Destination(
        id=c.id,
        url=c.url,
        secret=c.secret.get_secret_value(),
        policy=RetryPolicy(
            schedule=tuple(c.retry_schedule),
            backoff=Backoff(b.base, b.multiplier, b.max_delay, b.max_age) if b else None,
        ),
        timeout=c.timeout,
        max_in_flight=c.max_in_flight,
        breaker_threshold=c.breaker.failure_threshold,
        breaker_cooldown=c.breaker.cooldown,
        breaker_max_cooldown=c.breaker.max_cooldown,
    )


class _BusObserver:
    def __init__(self, metrics: Metrics, dispatcher: Dispatcher) -> None:
        self._metrics = metrics
        self._dispatcher = dispatcher

    def batch_committed(self, size: int, seconds: float, destinations: set[str]) -> None:
        self._metrics.batch_committed(size, seconds, destinations)
        if destinations:
            self._dispatcher.wake(destinations)


@dataclass
class Hub:
    settings: Settings
    db: Database
    metrics: Metrics
    bus: MessageBus
    deliveries: SqlDeliveryStore
    dispatcher: Dispatcher
    sender: HttpSender
    running: bool = False
    _gauge_task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self, *, run_migrations: bool = True, dispatch: bool = True) -> None:
        if run_migrations:
            await migrate.upgrade(self.db)
        self.bus.start()
        if dispatch:
            await self.sender.start()
            self.dispatcher.start()
        self._gauge_task = asyncio.create_task(self._refresh_gauges(), name="gauges")
        self.running = True

    async def stop(self) -> None:
        """Drain: finish queued commands, let in-flight deliveries complete and be recorded."""
        self.running = False
        await self.bus.stop()
        await self.dispatcher.stop()
        await self.sender.close()
        if self._gauge_task is not None:
            self._gauge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauge_task
        await self.db.dispose()

    async def handle(self, cmd: Any) -> Any:
        return await self.bus.handle(cmd)

    async def _refresh_gauges(self) -> None:
        while True:
            try:
                for dest, states in (await self.deliveries.summary()).items():
                    for state, n in states.items():
                        self.metrics.deliveries.labels(dest, state).set(n)
            except Exception:  # metrics must never take the hub down
                log.debug("refreshing delivery gauges failed", exc_info=True)
            await asyncio.sleep(5)


def build_hub(settings: Settings) -> Hub:
    db = Database(settings.database_url)
    metrics = Metrics()
    router = EventRouter((d.id, d.events) for d in settings.destinations)
    store = SqlDeliveryStore(db)
    sender = HttpSender()
    dispatcher = Dispatcher(
        [destination_from_config(d) for d in settings.destinations], store, sender, metrics
    )
    writers = settings.ingest.writers or (1 if db.is_sqlite else 4)
    bus = MessageBus(
        lambda: SqlUnitOfWork(db, router),
        writers=writers,
        max_batch=settings.ingest.max_batch,
        observer=_BusObserver(metrics, dispatcher),
    )
    return Hub(settings, db, metrics, bus, store, dispatcher, sender)
