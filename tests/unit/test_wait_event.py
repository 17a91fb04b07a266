"""`wait_event`: what the background loops wait on between rounds. A cancellation that
arrives in the same loop iteration as the wake-up ends the loop; on Python 3.11
`asyncio.wait_for(event.wait(), timeout)` returned True and dropped it, so the loop ran on
and whoever waited for it to end (`cancel_and_wait` in a `stop()`) hung.

The race is arranged deterministically: the event is set and the task cancelled in one
step, before the test yields to the loop. Whether the loop went round again is observed
through an event the loop sets at the start of each round, never through a timing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from datetime import datetime

from ordersync.domain.delivery import RetryPolicy
from ordersync.domain.order_status import OrderStatus
from ordersync.domain.orders import Order
from ordersync.service.bus import EventMessage
from ordersync.service.delivery_ports import DueDelivery
from ordersync.service.dispatcher import (
    DeliveryObserver,
    Destination,
    DestinationWorker,
    ResultWriter,
)
from ordersync.service.grouping import GroupingService, OrderArrivals
from ordersync.service.outbox import EventRouter
from ordersync.service.relay import OutboxRelay
from ordersync.service.singleton import wait_event

FOREVER = 3600.0  # a poll interval no test waits out


class Rounds:
    """Counts the rounds of a loop; `next_round` is set when one more starts."""

    def __init__(self) -> None:
        self.count = 0
        self.next_round = asyncio.Event()

    def started(self) -> None:
        self.count += 1
        self.next_round.set()

    async def after(self, n: int) -> None:
        while self.count < n:
            self.next_round.clear()
            await self.next_round.wait()


async def first_of(task: asyncio.Task[None], rounds: Rounds, n: int) -> None:
    """Wait until `task` ends or its loop starts round `n`, whichever comes first."""
    another = asyncio.create_task(rounds.after(n))
    await asyncio.wait({task, another}, return_when=asyncio.FIRST_COMPLETED)
    another.cancel()
    await asyncio.wait({another})


# ---- the helper ----------------------------------------------------------------------


async def test_returns_true_when_the_event_is_set() -> None:
    event = asyncio.Event()
    waiting = asyncio.create_task(wait_event(event, FOREVER))
    await asyncio.sleep(0)
    assert not waiting.done()
    event.set()
    assert await waiting is True


async def test_returns_true_at_once_when_the_event_is_already_set() -> None:
    event = asyncio.Event()
    event.set()
    assert await wait_event(event, FOREVER) is True
    assert await wait_event(event, 0) is True


async def test_returns_false_when_the_timeout_passes_first() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    assert await wait_event(event, 0) is False
    assert not event.is_set()


async def test_a_pending_cancellation_something_absorbed_is_raised_before_waiting() -> None:
    """A cancellation swallowed earlier in the round (a clean-up error replaced it) still
    ends the loop at its next wait, even if the event is set."""
    event = asyncio.Event()
    event.set()
    reached = asyncio.Event()

    async def absorbs_then_waits() -> bool:
        with contextlib.suppress(asyncio.CancelledError):  # the count stays: cancelling() > 0
            await asyncio.Event().wait()
        reached.set()
        return await wait_event(event, FOREVER)

    task = asyncio.create_task(absorbs_then_waits())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait({task})
    assert reached.is_set()
    assert task.cancelled()


async def waiting_loop() -> tuple[asyncio.Task[None], asyncio.Event, Rounds]:
    """A bare background loop waiting on `wait_event` between rounds, in its first wait."""
    event = asyncio.Event()
    rounds = Rounds()

    async def loop() -> None:
        while True:
            rounds.started()
            await wait_event(event, FOREVER)
            event.clear()

    task = asyncio.create_task(loop())
    await rounds.after(1)
    return task, event, rounds


async def test_a_looping_task_stops_when_cancelled_while_waiting() -> None:
    task, _, rounds = await waiting_loop()
    task.cancel()
    await first_of(task, rounds, 2)
    assert task.cancelled()
    assert rounds.count == 1


async def test_a_looping_task_stops_when_cancelled_as_the_event_is_set() -> None:
    """The 3.11 wait_for race: the wake-up and the cancellation in one iteration."""
    task, event, rounds = await waiting_loop()
    for _ in range(3):  # let the loop settle in its wait, whatever it is made of
        await asyncio.sleep(0)
    event.set()
    task.cancel()
    await first_of(task, rounds, 2)
    assert task.cancelled()
    assert rounds.count == 1


async def test_a_loop_woken_by_timeouts_keeps_going_round() -> None:
    """A timeout still wakes the loop: it is not an error and the loop carries on."""
    event = asyncio.Event()
    rounds = Rounds()
    results: list[bool] = []

    async def loop() -> None:
        while True:
            rounds.started()
            results.append(await wait_event(event, 0))

    task = asyncio.create_task(loop())
    await rounds.after(3)
    task.cancel()
    await asyncio.wait({task})
    assert task.cancelled()
    assert results[:2] == [False, False]


# ---- the loops that use it -------------------------------------------------------------


class IdleDeliveryStore:
    """Nothing is ever due; each fetch is one round of the destination loop."""

    leased = False

    def __init__(self, rounds: Rounds) -> None:
        self.rounds = rounds

    async def fetch_due(
        self, destination_id: str, now_us: int, limit: int, fresh_before_us: int | None = None
    ) -> list[DueDelivery]:
        self.rounds.started()
        return []


async def test_a_destination_loop_cancelled_as_it_is_woken_ends() -> None:
    rounds = Rounds()
    store = IdleDeliveryStore(rounds)
    dest = Destination("d1", "http://127.0.0.1:9/hook", "s3cret", RetryPolicy(), 5.0, 4)
    worker = DestinationWorker(
        dest,
        store,  # type: ignore[arg-type]
        sender=object(),  # type: ignore[arg-type]
        results=ResultWriter(store),  # type: ignore[arg-type]
        observer=DeliveryObserver(),
    )
    task = asyncio.create_task(worker.run())
    await rounds.after(1)
    for _ in range(3):
        await asyncio.sleep(0)
    worker.wake()
    task.cancel()
    await first_of(task, rounds, 2)
    assert task.cancelled()
    assert rounds.count == 1


async def test_a_result_writer_stop_cancelled_as_the_drain_finishes_is_cancelled() -> None:
    """`ResultWriter.stop` bounds its drain with asyncio.timeout: cancelled in the step the
    last result is recorded, it raises CancelledError (wait_for returned and dropped it)."""
    store = IdleDeliveryStore(Rounds())
    writer = ResultWriter(store)  # type: ignore[arg-type]  # not started: the test records
    writer.submit(object(), lambda: None)  # type: ignore[arg-type]
    stopping = asyncio.create_task(writer.stop(timeout=FOREVER))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not stopping.done()
    writer._queue.get_nowait()
    writer._queue.task_done()  # the last attempt is recorded ...
    stopping.cancel()  # ... as the stop is cancelled
    await asyncio.wait({stopping})
    assert stopping.cancelled()


class IdleRelayStore:
    """Nothing to publish; each look is one round of the relay loop."""

    def __init__(self, rounds: Rounds) -> None:
        self.rounds = rounds

    async def unpublished(self, limit: int) -> list[EventMessage]:
        self.rounds.started()
        return []


async def test_the_relay_loop_cancelled_as_it_is_woken_ends() -> None:
    rounds = Rounds()
    relay = OutboxRelay(IdleRelayStore(rounds), publisher=object(), poll=FOREVER)  # type: ignore[arg-type]
    relay.epoch = 1  # leading, so every round looks for events
    task = asyncio.create_task(relay._run())
    await rounds.after(1)
    for _ in range(3):
        await asyncio.sleep(0)
    relay.wake()
    task.cancel()
    await first_of(task, rounds, 2)
    assert task.cancelled()
    assert rounds.count == 1


class IdleGroupingStore:
    """No orders; the sweep and each look at new arrivals count as rounds."""

    def __init__(self, rounds: Rounds) -> None:
        self.rounds = rounds

    async def open_orders(
        self,
        statuses: Iterable[OrderStatus],
        since: datetime,
        limit: int,
        *,
        newest_first: bool = False,
    ) -> list[Order]:
        self.rounds.started()
        return []

    async def grouped(self, order_ids: Iterable[str]) -> set[str]:
        return set()

    async def orders(self, order_ids: Iterable[str]) -> list[Order]:
        self.rounds.started()
        return []


async def test_stopping_the_auto_merge_loop_as_an_order_arrives_does_not_hang() -> None:
    """An order signalled in the same iteration as `stop()` cancels the loop: the stop
    returns (with wait_for the cancellation was dropped and `stop()` waited for ever)."""
    rounds = Rounds()
    arrivals = OrderArrivals()
    grouping = GroupingService(
        IdleGroupingStore(rounds),  # type: ignore[arg-type]
        EventRouter([]),
        auto_interval=FOREVER,
        arrivals=arrivals,
        arrival_gap=0.0,
    )
    grouping.start()
    loop_task = grouping._auto
    assert loop_task is not None
    await rounds.after(1)  # the first sweep
    for _ in range(3):
        await asyncio.sleep(0)
    grouping._order_created("ord-1")  # what `arrivals.created(order)` calls
    stopping = asyncio.create_task(grouping.stop())
    await first_of(loop_task, rounds, 2)
    assert loop_task.cancelled()
    assert rounds.count == 1
    await stopping
    assert grouping._auto is None
