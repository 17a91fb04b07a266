"""Merged shipments follow their orders, on a real SQLite file and a real PostgreSQL
database: a cancelled or refunded member leaves (a group of one dissolves), shipping one
member ships them all, each in the transaction of the order's own change; and with
`merge.auto` a new order is merged as soon as it is committed, by one process only."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import httpx
import pytest

from ordersync.adapters.db.returns import SqlReturnStore
from ordersync.adapters.db.shipments import SqlShipmentStore
from ordersync.adapters.db.unit_of_work import SqlUnitOfWork
from ordersync.clock import utcnow
from ordersync.domain.commands import IngestChannelOrder
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.returns import record_refund
from ordersync.service.outbox import EventRouter

from . import test_shipment_groups as groups
from .test_shipment_groups import CUPS, PLACED, OpenShop, Shop, causes, merge

# The shop fixtures of the merge and split tests, by name.
shop = groups.shop
open_shop = groups.open_shop


def router(shop: Shop) -> EventRouter:
    assert shop.hub.grouping is not None
    return shop.hub.grouping.router


MATCHA = {"sku": "MATCHA-TIN", "name": "Matcha tin", "quantity": 1, "unit_price": "12.00"}


async def set_status(shop: Shop, order_id: str, status: str) -> httpx.Response:
    return await shop.api.post(f"/v1/orders/{order_id}/status", json={"status": status})


async def merged(shop: Shop, *order_ids: str) -> dict[str, Any]:
    response = await merge(shop, *order_ids)
    assert response.status_code == 201, response.text
    group: dict[str, Any] = response.json()
    return group


async def group_rows(shop: Shop) -> list[tuple[Any, ...]]:
    return await shop.query(
        shop.hub, "SELECT id, kind, state FROM shipment_groups WHERE kind = 'merge' ORDER BY id"
    )


async def test_cancelling_one_of_two_merged_orders_dissolves_their_shipment(shop: Shop) -> None:
    """Mei Lin cancels the teapot: the cups ship on their own again; both histories say so."""
    teapot = await shop.order("1001")
    cups = await shop.order("1002", lines=(CUPS,), placed_at=PLACED + timedelta(minutes=20))
    group = await merged(shop, teapot, cups)

    response = await set_status(shop, teapot, "cancelled")

    assert response.status_code == 200, response.text
    assert await group_rows(shop) == [(group["id"], "merge", "retired")]
    assert [(g["kind"], g["order_ids"]) for g in await shop.groups(cups)] == [("order", [cups])]
    assert causes(await shop.history(teapot))[-2:] == ["api:ops", "group:leave"]
    assert causes(await shop.history(cups))[-1] == "group:leave"
    assert sorted(await shop.events("order.unmerged")) == sorted([teapot, cups])
    members = await shop.query(shop.hub, "SELECT order_id FROM shipment_group_members")
    assert members == [(cups,)]


async def test_cancelling_one_of_three_keeps_the_other_two_in_one_shipment(shop: Shop) -> None:
    """The cups are cancelled: the teapot and the matcha still travel together, and
    unmerging afterwards gives back exactly those two."""
    teapot = await shop.order("1001")
    cups = await shop.order("1002", lines=(CUPS,), placed_at=PLACED + timedelta(minutes=10))
    matcha = await shop.order("1003", lines=(MATCHA,), placed_at=PLACED + timedelta(minutes=20))
    group = await merged(shop, teapot, cups, matcha)

    response = await set_status(shop, cups, "cancelled")

    assert response.status_code == 200, response.text
    (now,) = await shop.groups(teapot)
    assert now["id"] == group["id"]
    assert sorted(now["order_ids"]) == sorted([teapot, matcha])
    assert {i["sku"] for i in now["items"]} == {"BLUE-TEAPOT", "MATCHA-TIN"}
    assert [g["kind"] for g in await shop.groups(cups)] == ["order"]
    assert await shop.events("order.unmerged") == [cups]
    assert sorted(await shop.events("order.merged")).count(teapot) == 2  # merged, then told
    undone = await shop.api.post(f"/v1/groups/{group['id']}/unmerge")
    assert undone.status_code == 200, undone.text
    assert sorted(o for g in undone.json()["data"] for o in g["order_ids"]) == sorted(
        [teapot, matcha]
    )


async def test_shipping_one_merged_order_ships_every_order_in_its_shipment(shop: Shop) -> None:
    """The parcel with the teapot left: the cups in it have shipped too (`order.shipped`)."""
    teapot = await shop.order("1001")
    cups = await shop.order("1002", lines=(CUPS,), placed_at=PLACED + timedelta(minutes=20))
    office = await shop.order("1003", placed_at=PLACED + timedelta(hours=5))
    await merged(shop, teapot, cups)

    response = await set_status(shop, teapot, "shipped")

    assert response.status_code == 200, response.text
    history = await shop.history(cups)
    assert (history[-1]["cause"], history[-1]["to_status"]) == ("group:ship", "shipped")
    assert sorted(await shop.events("order.shipped")) == sorted([teapot, cups])
    assert [h["to_status"] for h in await shop.history(office)][-1] == "paid"
    again = await shop.api.post(f"/v1/groups/{(await shop.groups(cups))[0]['id']}/unmerge")
    assert again.status_code == 409  # what shipped together stays on record


async def test_a_carrier_transaction_that_ships_a_member_ships_its_group(shop: Shop) -> None:
    """The shipment store's transaction (carrier callbacks) ships the teapot: the cups
    follow before it commits."""
    teapot = await shop.order("1001")
    cups = await shop.order("1002", lines=(CUPS,), placed_at=PLACED + timedelta(minutes=20))
    await merged(shop, teapot, cups)
    hub = shop.hub
    store = SqlShipmentStore(hub.db, lambda: SqlUnitOfWork(hub.db, router(shop)))

    async with store.transaction() as tx:
        order = await tx.orders.get(teapot)
        assert order is not None
        order.transition_to(OrderStatus.SHIPPED, cause="carrier:kdniao", at=utcnow())
        tx.orders.save(order)
        await tx.commit()

    history = await shop.history(cups)
    assert (history[-1]["cause"], history[-1]["to_status"]) == ("group:ship", "shipped")
    assert sorted(await shop.events("order.shipped")) == sorted([teapot, cups])


async def test_a_refund_recorded_by_the_returns_store_takes_the_order_out(shop: Shop) -> None:
    """A refund before anything shipped: the refunded teapot leaves, the cups ship alone."""
    teapot = await shop.order("1001")
    cups = await shop.order("1002", lines=(CUPS,), placed_at=PLACED + timedelta(minutes=20))
    group = await merged(shop, teapot, cups)
    hub = shop.hub
    store = SqlReturnStore(hub.db, lambda: SqlUnitOfWork(hub.db, router(shop)))

    async with store.transaction() as tx:
        order = await tx.orders.get(teapot)
        assert order is not None
        record_refund(order, PaymentStatus.REFUNDED, cause="return:ret_1", at=utcnow())
        tx.orders.save(order)
        await tx.commit()

    assert await group_rows(shop) == [(group["id"], "merge", "retired")]
    assert causes(await shop.history(teapot))[-1] == "group:leave"
    assert [g["kind"] for g in await shop.groups(cups)] == ["order"]


async def test_a_channel_reporting_a_refund_takes_the_order_out(shop: Shop) -> None:
    """The shop refunds the matcha on the platform: it leaves the parcel, whose other two
    orders still travel together (the channel's own update, one transaction)."""
    teapot = await shop.order("1001")
    cups = await shop.order("1002", lines=(CUPS,), placed_at=PLACED + timedelta(minutes=10))
    matcha = await shop.order("1003", lines=(MATCHA,), placed_at=PLACED + timedelta(minutes=20))
    group = await merged(shop, teapot, cups, matcha)
    assert shop.hub.grouping is not None
    order = await shop.hub.grouping.store.order(matcha)
    assert order is not None
    refunded = dataclasses.replace(
        order.snapshot(),
        payment_status=PaymentStatus.REFUNDED,
        channel_updated_at=utcnow(),
    )

    result = await shop.hub.handle(
        IngestChannelOrder("web", "generic", "refund-1003", "orders/updated", refunded, utcnow())
    )

    assert result.outcome == "updated"
    assert causes(await shop.history(matcha))[-1] == "group:leave"
    assert [g["kind"] for g in await shop.groups(matcha)] == ["order"]
    (parcel,) = await shop.groups(teapot)
    assert (parcel["id"], sorted(parcel["order_ids"])) == (group["id"], sorted([teapot, cups]))


async def test_a_new_order_is_merged_without_waiting_for_the_sweep(open_shop: OpenShop) -> None:
    """`merge.auto` with an hourly sweep: the cups join the teapot as soon as they arrive."""
    shop = await open_shop(auto=True, auto_interval=3600)
    teapot = await shop.order("1001")
    cups = await shop.order("1002", lines=(CUPS,), placed_at=PLACED + timedelta(minutes=30))

    for _ in range(500):  # 10 s at most: a deadline, not a timing assertion
        if [g["kind"] for g in await shop.groups(cups)] == ["merge"]:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the new order was not merged before the next sweep")

    (group,) = await shop.groups(teapot)
    assert sorted(group["order_ids"]) == sorted([teapot, cups])
    assert causes(await shop.history(cups))[-1] == "group:merge"


async def test_an_operator_racing_the_auto_merge_leaves_exactly_one_group(
    open_shop: OpenShop,
) -> None:
    """An operator merges the new orders while the auto-merge does: one of them wins."""
    shop = await open_shop(auto=True, auto_interval=3600)
    teapot = await shop.order("1001")
    cups = await shop.order("1002", lines=(CUPS,), placed_at=PLACED + timedelta(minutes=30))
    grouping = shop.hub.grouping
    assert grouping is not None

    first, swept, second = await asyncio.gather(
        merge(shop, teapot, cups), grouping.auto_merge(), merge(shop, cups, teapot)
    )
    for _ in range(500):  # 10 s at most: the arrival pass may be merging them too
        if [g["kind"] for g in await shop.groups(cups)] == ["merge"]:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # and let a late pass find them merged (it must change nothing)

    assert {first.status_code, second.status_code} <= {201, 409}
    assert [first.status_code, second.status_code].count(201) + len(swept) <= 1
    rows = await shop.query(shop.hub, "SELECT id FROM shipment_groups WHERE state = 'active'")
    assert len(rows) == 1
    assert sorted(await shop.events("order.merged")) == sorted([teapot, cups])
    members = await shop.query(
        shop.hub, "SELECT order_id, COUNT(*) FROM shipment_group_members GROUP BY order_id"
    )
    assert sorted(members) == sorted([(teapot, 1), (cups, 1)])
