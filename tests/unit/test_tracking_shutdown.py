"""Stopping the tracking background jobs: a stop that is itself cancelled (a lease lost
while the sweep was winding down, then the hub stopping) must end, never swallow its own
cancellation and run on (the hang of `hub.stop()` seen once in CI on PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from ordersync.adapters.carriers.base import CarrierRequest, CarrierResponse
from ordersync.adapters.carriers.kuaidi100 import Kuaidi100Connector
from ordersync.service.outbox import EventRouter
from ordersync.service.shipments import ShipmentService
from ordersync.service.singleton import SingletonTask
from ordersync.service.tracking_poll import PollPolicy, TrackingPoller


class SlowToCancelStore:
    """The sweep's first read never answers; cancelled, it still needs a round trip (the
    rollback of its transaction) that the test releases: a window in which the sweep is
    stopping but not stopped."""

    def __init__(self) -> None:
        self.querying = asyncio.Event()
        self.rolling_back = asyncio.Event()
        self.rolled_back = asyncio.Event()

    async def held_back(self, now: object) -> set[tuple[str, str]]:
        return set()

    async def received_callbacks(self, limit: int) -> list[tuple[str, str]]:
        self.querying.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.rolling_back.set()
            await self.rolled_back.wait()
            raise
        return []  # pragma: no cover - never answers

    async def due_for_poll(
        self, carrier_id: str, polled_before: object, limit: int
    ) -> list[object]:
        return await self.received_callbacks(limit)  # type: ignore[return-value]


class Lease:
    """Held (epoch 1) until the test takes it away."""

    def __init__(self) -> None:
        self.lost = False
        self.released = False

    async def acquire(self, owner: str, now_us: int, ttl_us: int) -> int | None:
        return None if self.lost else 1

    async def release(self, owner: str) -> None:
        self.released = True


async def never_called(request: CarrierRequest) -> CarrierResponse:  # pragma: no cover
    raise AssertionError("no carrier call expected")


def service(store: SlowToCancelStore) -> ShipmentService:
    return ShipmentService({}, store, EventRouter([]), never_called)  # type: ignore[arg-type]


async def sweeping(store: SlowToCancelStore) -> ShipmentService:
    """A service whose sweep has started and is stuck in its first read of `store`."""
    svc = service(store)
    svc.start(sweep=True)
    await asyncio.wait_for(store.querying.wait(), 5)  # a hang guard
    return svc


async def polling(store: SlowToCancelStore) -> TrackingPoller:
    """A tracking poller whose first round is stuck asking `store` what is due."""
    policy = PollPolicy(timedelta(minutes=30), 10, 1.0, 1, timedelta(days=30))
    poller = TrackingPoller(service(store), store, {"k100": policy})  # type: ignore[arg-type]
    poller.service.carriers = {"k100": _PollingCarrier()}  # type: ignore[dict-item]
    poller.start()
    await asyncio.wait_for(store.querying.wait(), 5)  # a hang guard
    return poller


async def cancelled_while_rolling_back(
    store: SlowToCancelStore, stop: Coroutine[Any, Any, None]
) -> asyncio.Task[None]:
    """Run `stop`, cancel it while the stuck read rolls back, then let the rollback end."""
    stopping = asyncio.create_task(stop)
    await asyncio.wait_for(store.rolling_back.wait(), 5)
    stopping.cancel()
    store.rolled_back.set()
    await asyncio.wait({stopping})
    return stopping


async def ended(task: asyncio.Task[None]) -> bool:
    """A hang guard, not a timing: a stop that works ends at once, a broken one never."""
    await asyncio.wait({task}, timeout=5)
    if not task.done():
        task.cancel()
        return False
    return True


async def test_a_singleton_stopped_while_its_lost_lease_winds_the_sweep_down_ends() -> None:
    """Lease lost, sweep stopping (its rollback in flight), then the hub stops: stop ends."""
    store = SlowToCancelStore()
    svc = service(store)
    lease = Lease()

    async def start_sweep() -> None:
        svc.start(sweep=True)

    singleton = SingletonTask("shipments-sweep", lease, start_sweep, svc.stop_sweep, ttl=0.03)
    singleton.start()
    await asyncio.wait_for(store.querying.wait(), 5)  # a hang guard
    lease.lost = True  # the next renewal finds it gone: the runner stops the sweep ...
    await asyncio.wait_for(store.rolling_back.wait(), 5)  # ... still rolling back
    stopping = asyncio.create_task(singleton.stop())
    await asyncio.sleep(0)  # the stop cancels the runner while it waits for the sweep
    store.rolled_back.set()

    assert await ended(stopping), "singleton.stop() never returned"
    assert svc._sweeper is None
    assert not singleton.active
    await svc.stop()


async def test_a_cancelled_stop_of_the_sweep_is_cancelled_not_swallowed() -> None:
    """`stop_sweep` cancelled while the sweep winds down raises CancelledError to its caller;
    a second `stop_sweep` finishes the job."""
    store = SlowToCancelStore()
    svc = await sweeping(store)
    stopping = await cancelled_while_rolling_back(store, svc.stop_sweep())

    assert stopping.cancelled()
    await svc.stop_sweep()
    assert svc._sweeper is None
    await svc.stop()


async def test_a_cancelled_stop_of_the_tracking_poller_is_cancelled_not_swallowed() -> None:
    """The poller's `stop` cancelled while its round winds down raises CancelledError too."""
    store = SlowToCancelStore()
    poller = await polling(store)
    stopping = await cancelled_while_rolling_back(store, poller.stop())

    assert stopping.cancelled()
    await poller.stop()
    assert poller._task is None


class _PollingCarrier:
    """Just enough of a configured carrier for the poller to ask the store what is due."""

    def __init__(self) -> None:
        self.connector = Kuaidi100Connector()


class FailingRollbackStore(SlowToCancelStore):
    """Cancelled mid-query, its cleanup fails ("another operation is in progress" from the
    driver): the CancelledError reaches the sweep as another exception."""

    async def received_callbacks(self, limit: int) -> list[tuple[str, str]]:
        if self.querying.is_set():
            return []  # later rounds answer (a sweep that ran on would just go round)
        self.querying.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as e:
            raise RuntimeError("cannot perform operation: another operation is in progress") from e
        return []  # pragma: no cover - never answers

    async def due_shipments(self, now: object, limit: int) -> list[tuple[str, str]]:
        return []

    async def due_reminders(self, now: object, limit: int) -> list[tuple[str, str]]:
        return []


async def test_the_sweep_stops_even_when_a_cancelled_query_fails_to_clean_up() -> None:
    """The sweep survives database errors, but not its own stop disguised as one."""
    store = FailingRollbackStore()
    svc = await sweeping(store)
    stopping = asyncio.create_task(svc.stop_sweep())

    assert await ended(stopping), "stop_sweep() never returned: the sweep ran on"
    assert svc._sweeper is None
    await svc.stop()


async def test_the_poller_stops_even_when_a_cancelled_query_fails_to_clean_up() -> None:
    """Likewise the tracking poller, whose rounds survive database errors."""
    store = FailingRollbackStore()
    poller = await polling(store)
    stopping = asyncio.create_task(poller.stop())

    assert await ended(stopping), "poller.stop() never returned: the poller ran on"
