"""The callback processor under load: the recorded callbacks of many shipments are applied
in one transaction (each shipment's in order of arrival, each exactly once), and a push
that arrives before its booking has committed is applied as soon as the booking commits,
not at the next periodic sweep."""

from __future__ import annotations

import asyncio
from typing import Any

from ordersync.adapters.carriers.base import CarrierRequest, CarrierResponse

from . import test_tracking_async
from .conftest import Query
from .test_shipments_api import (
    BOOKED,
    assert_acked,
    book,
    event_types,
    new_order,
    order_status,
    push,
)
from .test_tracking_async import (
    K100,
    H,
    Start,
    eventually,
    hold,
    inbox,
    journey,
    svc,
)

sim = test_tracking_async.sim  # the fixtures: the carrier simulator, and hubs on it
start = test_tracking_async.start


async def new_orders(w: Any, n: int) -> list[str]:
    return [await new_order(w, f"POS-BATCH-{i:03d}") for i in range(n)]


async def test_callbacks_of_many_shipments_are_applied_in_one_batch_each_once(
    start: Start, query: Query
) -> None:
    """Six parcels, two pushes each, recorded while the processor is held: one pass applies
    all twelve in one transaction, in order per parcel; a second pass finds nothing."""
    w = await start()
    await hold(w)
    order_ids = await new_orders(w, 6)
    numbers = [(await book(w, o, K100))["tracking_number"] for o in order_ids]
    for number in numbers:
        journey(w, number, upto=2)
        assert_acked("kuaidi100", await push(w, "kuaidi100", number), w.sim)
        w.sim.add_trace(number, "501", "快件已由 驿站 代收", BOOKED + 30 * H, "北京市")
        assert_acked("kuaidi100", await push(w, "kuaidi100", number), w.sim)
    batches: list[int] = []
    real = svc(w).apply_batch

    async def counted(keys: Any) -> Any:
        batches.append(len(keys))
        return await real(keys)

    svc(w).apply_batch = counted

    assert await svc(w).process_received() == 12
    assert await svc(w).process_received() == 0

    assert batches == [6]
    for order_id, number in zip(order_ids, numbers, strict=True):
        assert await inbox(query, w.hub, number) == ["applied", "applied"]
        assert await order_status(w, order_id) == "shipped"
        types = await event_types(query, w.hub, order_id)
        assert types.count("shipment.updated") == 2
        assert types.count("order.shipped") == 1


async def test_a_push_before_its_booking_commits_is_applied_when_the_booking_commits(
    start: Start, query: Query
) -> None:
    """The carrier pushes the pickup while the hub is still booking (before its shipment
    row exists): the processor cannot apply it yet; the booking's commit re-queues it, so
    it is applied at once although the periodic sweep is an hour away."""
    w = await start()
    shipments = svc(w)
    await shipments.stop_sweep()
    shipments.sweep_interval = 3600.0
    order_id = (await new_orders(w, 1))[0]
    real_send = shipments.send
    early: list[str] = []

    before = set(w.sim.parcels)

    async def carrier_pushes_at_once(request: CarrierRequest) -> CarrierResponse:
        response = await real_send(request)
        for number in sorted(set(w.sim.parcels) - before - set(early)):
            if not w.sim.parcels[number].callback_url:
                continue  # booked, not subscribed yet: the push follows the subscription
            early.append(number)
            journey(w, number, upto=1)
            assert_acked("kuaidi100", await push(w, "kuaidi100", number), w.sim)
            for _ in range(200):  # the processor has tried it and found no shipment
                if (K100, number) in shipments._early:
                    break
                await asyncio.sleep(0.01)
            assert (K100, number) in shipments._early
        return response

    shipments.send = carrier_pushes_at_once

    number = (await book(w, order_id, K100))["tracking_number"]

    assert early == [number]

    async def applied() -> bool:
        return await inbox(query, w.hub, number) == ["applied"]

    await eventually(applied, "the early push is applied once the booking committed")
    assert await order_status(w, order_id) == "shipped"
