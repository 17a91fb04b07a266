"""The order handlers keep reservations in step with each order (in-memory stock)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ordersync.domain import commands
from ordersync.domain import stock_commands as sc
from ordersync.domain.errors import IdempotencyKeyReused
from ordersync.domain.inventory import (
    InventoryPolicy,
    ReservationState,
    ReserveOn,
    StockEventType,
)
from ordersync.domain.order_status import HoldReason, OrderStatus, PaymentStatus
from ordersync.domain.orders import Order
from ordersync.service.handlers.inventory import expire_reservation, set_stock
from ordersync.service.handlers.orders import (
    change_order_status,
    create_order,
    ingest_channel_order,
)
from ordersync.testing import FakeDatabase, FakeUnitOfWork, make_line, make_snapshot
from ordersync.testing.factories import CHANNEL_ID, PLACED_AT
from ordersync.testing.inventory import TEAHOUSE_LOCATIONS, MemoryStockRepository

S, P = OrderStatus, PaymentStatus
AT = PLACED_AT + timedelta(minutes=5)


class Shop:
    """A fake database plus one in-memory stock, shared by every unit of work."""

    def __init__(self, reserve_on: dict[str, ReserveOn] | None = None) -> None:
        self.db = FakeDatabase()
        policy = InventoryPolicy(TEAHOUSE_LOCATIONS, reserve_on=reserve_on or {})
        self.stock = MemoryStockRepository(policy)

    def uow(self) -> FakeUnitOfWork:
        uow = FakeUnitOfWork(self.db)
        uow.stock = self.stock
        return uow

    def shelve(self, sku: str = "BLUE-TEAPOT", on_hand: int = 10) -> None:
        self.stock.inventory.set_on_hand(sku, "amsterdam-dc", on_hand, at=PLACED_AT)
        self.stock.inventory.take_changes()

    async def create(self, **snapshot: object) -> Order:
        uow = self.uow()
        response = await create_order(
            commands.CreateOrder(make_snapshot(**snapshot), AT, principal="pos"), uow
        )
        await uow.commit()
        order_id = next(o for o in self.db.orders if o in response.body.decode())
        return self.db.orders[order_id]

    async def change(self, order: Order, target: OrderStatus) -> Order:
        uow = self.uow()
        changed = await change_order_status(
            commands.ChangeOrderStatus(order.id, target, AT, principal="ops"), uow
        )
        await uow.commit()
        return changed

    def level(self, sku: str = "BLUE-TEAPOT") -> tuple[int, int]:
        lv = self.stock.inventory.levels[(sku, "amsterdam-dc")]
        return lv.on_hand, lv.reserved

    def events(self) -> list[StockEventType]:
        return [e.type for e in self.stock.inventory.take_changes()[1]]


async def test_an_accepted_unpaid_order_reserves_with_an_expiry_that_payment_removes() -> None:
    """Two teapots held for 30 minutes; paying keeps them held for good."""
    shop = Shop()
    shop.shelve()

    order = await shop.create()
    (held,) = shop.stock.inventory.held_for(order.id)
    expiry = held.expires_at
    await shop.change(order, S.PAID)

    assert shop.level() == (10, 2)
    assert expiry == AT + timedelta(minutes=30)
    assert held.expires_at is None
    assert shop.events() == [StockEventType.STOCK_RESERVED]


async def test_an_order_that_cannot_be_served_is_held_for_stock_shortage() -> None:
    """Nothing reserved, the order on hold with reason stock_shortage, order.held emitted."""
    shop = Shop()
    shop.shelve(on_hand=1)

    order = await shop.create()

    assert order.status is S.ON_HOLD
    assert order.hold_reasons == (HoldReason.STOCK_SHORTAGE,)
    assert shop.level() == (1, 0)
    assert shop.events() == [StockEventType.STOCK_SHORTAGE]
    assert [e.type for e in shop.db.outbox][-1] == "order.held"


async def test_cancelling_releases_and_shipping_commits() -> None:
    """Cancel gives the units back; ship takes them off the shelf."""
    shop = Shop()
    shop.shelve()
    kept = await shop.create(external_id="KEPT")
    dropped = await shop.create(external_id="DROPPED")

    await shop.change(dropped, S.CANCELLED)
    await shop.change(kept, S.PAID)
    await shop.change(kept, S.SHIPPED)

    assert shop.level() == (8, 0)
    assert [r.state for r in shop.stock.inventory.reservations.values()] == [
        ReservationState.COMMITTED,
        ReservationState.RELEASED,
    ]


async def test_a_channel_reserving_on_payment_takes_stock_only_when_paid() -> None:
    """The per-channel setting: pending orders of a `paid` channel hold nothing."""
    shop = Shop(reserve_on={CHANNEL_ID: ReserveOn.PAID})
    shop.shelve()
    uow = shop.uow()
    await ingest_channel_order(
        commands.IngestChannelOrder(
            CHANNEL_ID, "shopify", "msg-1", "orders/create", make_snapshot(), AT
        ),
        uow,
    )
    await uow.commit()
    before = shop.level()
    uow = shop.uow()
    paid = make_snapshot(payment_status=P.PAID, channel_updated_at=AT + timedelta(minutes=1))
    await ingest_channel_order(
        commands.IngestChannelOrder(CHANNEL_ID, "shopify", "msg-2", "orders/paid", paid, AT),
        uow,
    )
    await uow.commit()

    assert before == (10, 0)
    assert shop.level() == (10, 2)
    assert all(r.expires_at is None for r in shop.stock.inventory.reservations.values())


async def test_a_sku_no_location_stocks_is_not_tracked_and_reserves_nothing() -> None:
    """Orders for untracked goods flow on untouched."""
    shop = Shop()
    shop.shelve()

    order = await shop.create(lines=(make_line(sku="GIFT-CARD"),))

    assert order.status is S.PENDING
    assert shop.stock.inventory.reservations == {}


async def test_the_expiry_timer_releases_an_unpaid_hold_but_not_a_paid_one() -> None:
    """ExpireReservation re-checks: a hold paid in the meantime stays."""
    shop = Shop()
    shop.shelve()
    unpaid = await shop.create(external_id="UNPAID")
    paid = await shop.create(external_id="PAID")
    await shop.change(paid, S.PAID)
    later = AT + timedelta(hours=1)

    results = []
    for order in (unpaid, paid):
        (res,) = shop.stock.inventory.held_for(order.id)
        results.append(
            await expire_reservation(sc.ExpireReservation(res.id, res.sku, later), shop.uow())
        )

    assert results == [True, False]
    assert shop.level() == (10, 2)


async def test_a_repeated_stock_feed_message_replays_and_a_reused_key_is_refused() -> None:
    """Feed message ids make snapshots idempotent (Stripe semantics)."""
    shop = Shop()

    def snapshot(on_hand: int, fingerprint: str) -> sc.SetStock:
        return sc.SetStock(
            "BLUE-TEAPOT",
            "amsterdam-dc",
            on_hand,
            AT,
            "wms",
            message_id="m-1",
            fingerprint=fingerprint,
        )

    first = await set_stock(snapshot(7, "a"), shop.uow())
    shop.stock.inventory.set_on_hand("BLUE-TEAPOT", "amsterdam-dc", 3, at=AT)
    again = await set_stock(snapshot(7, "a"), shop.uow())

    assert again.replayed
    assert again.body == first.body
    assert shop.level() == (3, 0)
    with pytest.raises(IdempotencyKeyReused):
        await set_stock(snapshot(8, "b"), shop.uow())
