"""The inventory service: a message bus sharded by SKU, and the durable expiry timer.

Stock commands go through their own `MessageBus`, keyed by SKU: every command for one SKU
meets the same writer, which commits whatever queued up during its previous commit in ONE
transaction. A flash sale on one SKU therefore costs one row lock per batch, not one per
buyer, and other SKUs keep their own writers (ADR 6).

The expiry timer is the `reservations.expires_us` column itself: the sweeper only asks the
database what is due, so a restart loses no timer and several processes sweeping at once
are harmless (expiring re-checks the reservation under lock).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Protocol

from ordersync.clock import utcnow
from ordersync.domain import stock_commands as sc
from ordersync.domain.inventory import InventoryPolicy, Location
from ordersync.service.handlers.inventory import INVENTORY_HANDLERS, preload_stock
from ordersync.service.messagebus import MessageBus
from ordersync.service.pipeline import Carrying, PipelinedBus
from ordersync.service.singleton import cancel_and_wait
from ordersync.service.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


class InventoryStore(Protocol):
    async def sync_locations(self, locations: Iterable[Location], now: datetime) -> None: ...

    async def due_reservations(self, now: datetime, limit: int) -> list[tuple[str, str]]: ...


def _carried(cmd: Any) -> bool:
    """Commands a pipelined writer may decide from a carried-over state: reservations
    only (they add holds; releases and feeds change rows the carry may not know)."""
    return type(cmd) is sc.ReserveStock


class InventoryService:
    def __init__(
        self,
        policy: InventoryPolicy,
        uow_factory: Callable[[], UnitOfWork],
        store: InventoryStore,
        *,
        writers: int = 1,
        max_batch: int = 512,
        expiry_interval: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
        carrying: Carrying | None = None,
    ) -> None:
        self.policy = policy
        self.store = store
        kw: dict[str, Any] = {
            "writers": writers,
            "max_batch": max_batch,
            "handlers": INVENTORY_HANDLERS,
            "before_batch": preload_stock,
        }
        # `carrying` (PostgreSQL): a SKU's writer decides the next batch of reservations
        # while the previous one commits (service/pipeline.py, ADR 10).
        self.bus: MessageBus = (
            MessageBus(uow_factory, **kw)
            if carrying is None
            else PipelinedBus(uow_factory, carrying=carrying, eligible=_carried, **kw)
        )
        self._interval = expiry_interval
        self._clock = clock
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, *, sweep: bool = True) -> None:
        await self.store.sync_locations(self.policy.locations.values(), self._clock())
        self.bus.start()
        if sweep:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="stock-expiry")

    async def stop(self) -> None:
        if self._sweeper is not None:
            await cancel_and_wait(self._sweeper)  # never swallows our own cancellation
            self._sweeper = None
        await self.bus.stop()

    async def handle(self, cmd: Any) -> Any:
        return await self.bus.handle(cmd)

    async def expire_due(self, now: datetime | None = None, limit: int = 1000) -> int:
        """Release unpaid holds whose time is up; returns how many expired."""
        now = now or self._clock()
        due = await self.store.due_reservations(now, limit)
        results = await asyncio.gather(
            *(self.bus.handle(sc.ExpireReservation(rid, sku, now)) for rid, sku in due),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                log.warning("expiring a reservation failed: %s", r)
        return sum(1 for r in results if r is True)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.expire_due()
            except Exception:  # the timer must survive a database restart
                log.warning("reservation expiry sweep failed", exc_info=True)
            await asyncio.sleep(self._interval)
