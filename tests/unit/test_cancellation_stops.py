"""Stopping a background loop: a stop that is itself cancelled while the loop winds down
raises CancelledError to its caller, never swallows it and returns as if it had finished
(`with suppress(CancelledError): await task` did: the cause of a `hub.stop()` hang)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from ordersync.domain.order_status import OrderStatus
from ordersync.domain.orders import Order
from ordersync.service.bus import EventMessage
from ordersync.service.grouping import GroupingService, OrderArrivals
from ordersync.service.lanes import LaneAssigner
from ordersync.service.outbox import EventRouter
from ordersync.service.stock_sync import StockSync
from ordersync.testing.fake_bus import FakeBus


class SlowToCancel:
    """A call that never answers; cancelled, it still needs a round trip (a rollback) that
    the test releases: a window in which the loop is stopping but not stopped."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.winding_down = asyncio.Event()
        self.released = asyncio.Event()

    async def hang(self) -> Any:
        self.waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.winding_down.set()
            await self.released.wait()
            raise


async def cancel_while_winding_down(
    slow: SlowToCancel, stop: Callable[[], Awaitable[None]]
) -> asyncio.Task[None]:
    """Start `stop()`, cancel it while the loop is still winding down, let the loop end;
    the stop task once it has ended (a hang guard, not a timing)."""
    await asyncio.wait_for(slow.waiting.wait(), 5)
    stopping = asyncio.create_task(stop())
    await asyncio.wait_for(slow.winding_down.wait(), 5)
    stopping.cancel()
    slow.released.set()
    await asyncio.wait({stopping}, timeout=5)
    if not stopping.done():  # pragma: no cover - a broken stop
        stopping.cancel()
        raise AssertionError("stop() never returned")
    return stopping


class HangingGroupingStore(SlowToCancel):
    """The auto-merge sweep's first read never answers."""

    async def open_orders(
        self,
        statuses: Iterable[OrderStatus],
        since: datetime,
        limit: int,
        *,
        newest_first: bool = False,
    ) -> list[Order]:
        result: list[Order] = await self.hang()
        return result


async def test_a_cancelled_stop_of_the_auto_merge_sweep_is_cancelled_not_swallowed() -> None:
    """`GroupingService.stop` cancelled mid-stop raises CancelledError; a second stop ends it."""
    store = HangingGroupingStore()
    grouping = GroupingService(store, EventRouter([]), arrivals=OrderArrivals())  # type: ignore[arg-type]
    grouping.start()

    stopping = await cancel_while_winding_down(store, grouping.stop)

    assert stopping.cancelled()
    await grouping.stop()
    assert grouping._auto is None


class HangingStockStore(SlowToCancel):
    """The stock publisher's first look at the dirty markers never answers."""

    async def settle(self, markers: object) -> None:
        return None

    async def dirty(self, limit: int = 1000) -> list[tuple[str, int]]:
        result: list[tuple[str, int]] = await self.hang()
        return result


async def test_a_cancelled_stop_of_stock_publishing_is_cancelled_not_swallowed() -> None:
    """`StockSync.stop` cancelled mid-stop raises CancelledError; a second stop ends it."""
    store = HangingStockStore()
    sync = StockSync(store, [], port=object())  # type: ignore[arg-type]
    await sync.start()

    stopping = await cancel_while_winding_down(store, sync.stop)

    assert stopping.cancelled()
    await sync.stop()
    assert sync._task is None


class HangingLaneStore(SlowToCancel):
    """Lane leases: the first rebalance answers (start), the next heartbeat never does."""

    def __init__(self) -> None:
        super().__init__()
        self.heartbeats = 0
        self.retired = False

    async def ensure(self) -> None:
        return None

    async def heartbeat(self, owner: str, now_us: int, ttl_us: int) -> int:
        self.heartbeats += 1
        if self.heartbeats == 1:
            return 1
        result: int = await self.hang()
        return result

    async def renew(self, owner: str, now_us: int, ttl_us: int) -> set[int]:
        return set()

    async def claim(self, owner: str, want: int, now_us: int, ttl_us: int) -> set[int]:
        return set()

    async def release(self, owner: str, lanes: set[int]) -> None:
        return None

    async def retire(self, owner: str) -> None:
        self.retired = True


async def test_a_cancelled_stop_of_the_lane_assigner_is_cancelled_not_swallowed() -> None:
    """`LaneAssigner.stop` cancelled mid-stop raises CancelledError instead of running on
    to release the lanes as if nothing happened; a second stop does that."""
    store = HangingLaneStore()
    assigner = LaneAssigner(store, FakeBus(), lanes=4, owner="worker-teapot", every=0.01)
    await assigner.start()

    stopping = await cancel_while_winding_down(store, assigner.stop)

    assert stopping.cancelled()
    assert not store.retired
    await assigner.stop()
    assert store.retired


async def test_a_cancelled_unsubscribe_of_the_fake_bus_is_cancelled_not_swallowed() -> None:
    """`FakeBus.unsubscribe` cancelled while a handler winds down raises CancelledError."""
    slow = SlowToCancel()
    bus = FakeBus()

    async def handler(message: EventMessage) -> None:
        await slow.hang()

    await bus.subscribe(handler)
    await bus.publish([EventMessage(1, "evt_blue_teapot", "ord_blue_teapot", 0, ((10, "erp"),))])

    stopping = await cancel_while_winding_down(slow, bus.unsubscribe)

    assert stopping.cancelled()
    await bus.unsubscribe()
    assert bus._consumer is not None
    assert bus._consumer.cancelled()
