"""Merged shipments follow their orders, in the transaction of the order's own change: a
cancelled or refunded member leaves, a group of one dissolves, a shipped member takes the
others along. Here with the shipped in-memory unit of work and a dict of groups."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import orjson

from ordersync.domain.merge_split import Origin, ShipmentGroup, merge, order_group
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.orders import Order
from ordersync.service.grouping import follow_changes, follow_orders, follows
from ordersync.service.outbox import EventRouter, OutboxEntry
from ordersync.testing.factories import PLACED_AT, make_line, make_order
from ordersync.testing.fakes import FakeDatabase, FakeOrderRepository, FakeUnitOfWork

AT = PLACED_AT + timedelta(hours=1)
CUPS = make_line(sku="JADE-CUP", name="Jade cup", quantity=4, external_id="l-cup")
MATCHA = make_line(sku="MATCHA-TIN", name="Matcha tin", quantity=1, external_id="l-tin")


class MemoryGroups:
    """The shipment-group rows of one fake transaction."""

    def __init__(self, uow: FakeUnitOfWork, groups: Iterable[ShipmentGroup]) -> None:
        self._uow = uow
        self.active = {g.id: g for g in groups}
        self.retired: list[str] = []
        self.reads = 0

    @property
    def orders(self) -> FakeOrderRepository:
        return self._uow.orders

    @property
    def router(self) -> EventRouter:
        return self._uow.db.router

    async def active_groups(self, order_ids: Iterable[str]) -> dict[str, list[ShipmentGroup]]:
        self.reads += 1
        out: dict[str, list[ShipmentGroup]] = {}
        for oid in order_ids:
            found = [g for g in self.active.values() if oid in g.order_ids]
            if found:
                out[oid] = found
        return out

    async def retire(self, groups: Sequence[ShipmentGroup], now: datetime) -> None:
        for g in groups:
            del self.active[g.id]
            self.retired.append(g.id)

    async def activate(self, groups: Sequence[ShipmentGroup], now: datetime) -> None:
        self.active.update({g.id: g for g in groups})

    def emit(self, entry: OutboxEntry) -> None:
        self._uow.orders.outbox.append(entry)


def shop(*orders: Order) -> tuple[FakeUnitOfWork, MemoryGroups]:
    """The orders committed, all of them merged into `grp_meilin`."""
    db = FakeDatabase()
    for o in orders:
        db.orders[o.id] = o
    uow = FakeUnitOfWork(db)
    parcel = merge([order_group(o) for o in orders], "grp_meilin", at=AT).groups
    return uow, MemoryGroups(uow, parcel)


def paid(order_id: str, **overrides: object) -> Order:
    return make_order(
        order_id,
        external_id=order_id,
        status=OrderStatus.PAID,
        payment_status=PaymentStatus.PAID,
        **overrides,
    )


async def change(uow: FakeUnitOfWork, order_id: str, target: OrderStatus) -> Order:
    order = await uow.orders.get(order_id)
    assert order is not None
    order.transition_to(target, cause="api:ops", at=AT)
    uow.orders.save(order)
    return order


def events(uow: FakeUnitOfWork) -> list[tuple[str, str]]:
    return [(e.type, e.order_id) for e in uow.orders.outbox]


def causes(uow: FakeUnitOfWork, order_id: str) -> list[str]:
    return [h.cause for oid, h in uow.orders.history if oid == order_id]


async def test_a_cancelled_member_leaves_and_the_other_two_still_ship_together() -> None:
    """The cups are cancelled: the teapot and the matcha keep their one parcel."""
    uow, groups = shop(paid("ord_1"), paid("ord_2", lines=(CUPS,)), paid("ord_3", lines=(MATCHA,)))
    cups = await change(uow, "ord_2", OrderStatus.CANCELLED)

    await follow_orders(uow, groups, [(cups, (OrderStatus.PAID, PaymentStatus.PAID))])

    (parcel,) = groups.active.values()
    assert parcel.id == "grp_meilin"
    assert parcel.order_ids == ("ord_1", "ord_3")
    assert causes(uow, "ord_2") == ["api:ops", "group:leave"]
    assert causes(uow, "ord_1") == causes(uow, "ord_3") == ["group:leave"]
    assert ("order.unmerged", "ord_2") in events(uow)
    assert {("order.merged", "ord_1"), ("order.merged", "ord_3")} <= set(events(uow))
    (told,) = [e for e in uow.orders.outbox if e.type == "order.merged" and e.order_id == "ord_1"]
    body = orjson.loads(told.body)["data"]
    assert [g["order_ids"] for g in body["shipment_groups"]] == [["ord_1", "ord_3"]]


async def test_a_refunded_member_of_two_dissolves_the_group() -> None:
    """The teapot is refunded: the cups ship on their own again, as placed."""
    uow, groups = shop(paid("ord_1"), paid("ord_2", lines=(CUPS,)))
    teapot = await uow.orders.get("ord_1")
    assert teapot is not None
    teapot.payment_status = PaymentStatus.REFUNDED

    await follow_orders(uow, groups, [(teapot, (OrderStatus.PAID, PaymentStatus.PAID))])

    assert groups.retired == ["grp_meilin"]
    assert [(g.kind, g.order_ids) for g in groups.active.values()] == [(Origin.ORDER, ("ord_2",))]
    assert sorted(events(uow)) == [("order.unmerged", "ord_1"), ("order.unmerged", "ord_2")]


async def test_shipping_one_member_ships_every_member() -> None:
    """The teapot's parcel is picked up: the cups in it have shipped too."""
    uow, groups = shop(paid("ord_1"), paid("ord_2", lines=(CUPS,)))
    await change(uow, "ord_1", OrderStatus.SHIPPED)

    await follow_changes(uow, groups)
    await uow.commit()

    cups = uow.committed_orders["ord_2"]
    assert cups.status is OrderStatus.SHIPPED
    assert [h.cause for oid, h in uow.committed_history if oid == "ord_2"] == ["group:ship"]
    assert ("order.shipped", "ord_2") in [(e.type, e.order_id) for e in uow.committed_outbox]
    assert list(groups.active) == ["grp_meilin"]  # what shipped together stays on record


async def test_a_delivered_member_takes_the_others_to_delivered() -> None:
    """Delivered in one go (a late callback): the others are shipped, then delivered."""
    uow, groups = shop(paid("ord_1"), paid("ord_2", lines=(CUPS,)))
    teapot = await change(uow, "ord_1", OrderStatus.SHIPPED)
    teapot.transition_to(OrderStatus.DELIVERED, cause="carrier:kdniao", at=AT)
    uow.orders.save(teapot)

    await follow_changes(uow, groups)

    assert causes(uow, "ord_2") == ["group:ship", "group:ship"]
    cups = await uow.orders.get("ord_2")
    assert cups is not None
    assert cups.status is OrderStatus.DELIVERED


async def test_a_change_that_cannot_move_a_group_reads_nothing() -> None:
    """Paid to allocated, or a refund after shipping: no group is looked up or changed."""
    uow, groups = shop(paid("ord_1"), paid("ord_2", lines=(CUPS,)))
    allocated = await change(uow, "ord_1", OrderStatus.ALLOCATED)
    shipped_then_refunded = make_order(
        "ord_9", status=OrderStatus.SHIPPED, payment_status=PaymentStatus.REFUNDED
    )

    await follow_changes(uow, groups)

    assert not follows(allocated, (OrderStatus.PAID, PaymentStatus.PAID))
    assert not follows(shipped_then_refunded, (OrderStatus.SHIPPED, PaymentStatus.PAID))
    assert groups.reads == 0
    assert list(groups.active) == ["grp_meilin"]


async def test_a_cancelled_order_in_no_group_changes_nothing_but_is_looked_up_once() -> None:
    """An order shipping as placed is cancelled: one lookup, nothing written."""
    uow, groups = shop(paid("ord_1"), paid("ord_2", lines=(CUPS,)))
    uow.db.orders["ord_5"] = paid("ord_5")
    alone = await change(uow, "ord_5", OrderStatus.CANCELLED)

    await follow_orders(uow, groups, [(alone, (OrderStatus.PAID, PaymentStatus.PAID))])

    assert groups.reads == 1
    assert causes(uow, "ord_5") == ["api:ops"]
    assert groups.retired == []
