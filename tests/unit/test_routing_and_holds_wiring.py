"""Routing and audit holds wired into the order handlers (in-memory stock, fake unit of
work): what is reserved where, what is stored, and how holds follow their causes."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal

import pytest

from ordersync.config import ConfigError, settings_from_mapping
from ordersync.domain import commands
from ordersync.domain.codec import with_fulfilment
from ordersync.domain.holds import (
    BuyerNotePresent,
    HoldPolicy,
    IncompleteAddress,
    StockShortage,
)
from ordersync.domain.inventory import (
    InsufficientStock,
    Inventory,
    InventoryPolicy,
    Location,
    LocationKind,
    StockEventType,
)
from ordersync.domain.order_status import HoldReason, OrderStatus
from ordersync.domain.orders import Address, Order
from ordersync.domain.routing import (
    Destination,
    RoutingLine,
    RoutingPolicy,
    RoutingRequest,
    RoutingSetup,
)
from ordersync.service.handlers.orders import ingest_channel_order
from ordersync.testing import FakeDatabase, FakeUnitOfWork, make_snapshot
from ordersync.testing.factories import PLACED_AT
from ordersync.testing.inventory import MemoryStockRepository

AT = PLACED_AT + timedelta(minutes=5)
LOCATIONS = {
    "amsterdam-dc": Location("amsterdam-dc", LocationKind.WAREHOUSE, "NL", priority=1),
    "lyon-store": Location("lyon-store", LocationKind.STORE, "FR", priority=2),
}


class Shop:
    """One fake database and one in-memory stock shared by every unit of work."""

    def __init__(self, routing: RoutingPolicy | None = None, audit: bool = False) -> None:
        self.db = FakeDatabase()
        setup = RoutingSetup(routing or RoutingPolicy())
        self.stock = MemoryStockRepository(InventoryPolicy(LOCATIONS, routing=setup))
        self.holds = HoldPolicy((IncompleteAddress(), StockShortage())) if audit else None
        self.seq = 0

    def shelve(self, sku: str, location: str, on_hand: int) -> None:
        self.stock.inventory.set_on_hand(sku, location, on_hand, at=PLACED_AT)
        self.stock.inventory.take_changes()

    async def push(self, **snapshot: object) -> Order:
        """The channel sends the order as it is now (create, then updates)."""
        self.seq += 1
        uow = FakeUnitOfWork(self.db)
        uow.stock, uow.holds = self.stock, self.holds
        snap = make_snapshot(channel_updated_at=PLACED_AT + timedelta(seconds=self.seq), **snapshot)
        cmd = commands.IngestChannelOrder(
            snap.channel_id, "shopify", f"msg-{self.seq}", "orders/updated", snap, AT
        )
        result = await ingest_channel_order(cmd, uow)
        await uow.commit()
        assert result.order_id is not None
        return self.db.orders[result.order_id]


async def test_a_dutch_order_reserves_at_the_dutch_warehouse_and_keeps_the_decision() -> None:
    """Lyon has more teapots, but Amsterdam is in the buyer's region and ranks first."""
    shop = Shop()
    shop.shelve("BLUE-TEAPOT", "amsterdam-dc", 5)
    shop.shelve("BLUE-TEAPOT", "lyon-store", 50)

    order = await shop.push()
    (held,) = shop.stock.inventory.held_for(order.id)
    record = shop.stock.inventory.new_decisions[order.id]

    assert (held.location_id, held.quantity) == ("amsterdam-dc", 2)
    assert record.outcome == "routed"
    assert record.locations == ("amsterdam-dc",)
    assert "amsterdam-dc" in str(record.explanation["text"])


async def test_a_preorder_sku_waits_without_holding_the_order() -> None:
    """Nothing on the shelf for a preorder: backordered, the order stays pending."""
    shop = Shop(RoutingPolicy(preorder_skus=frozenset({"BLUE-TEAPOT"})))
    shop.shelve("BLUE-TEAPOT", "amsterdam-dc", 0)

    order = await shop.push()
    record = shop.stock.inventory.new_decisions[order.id]

    assert order.status is OrderStatus.PENDING
    assert record.outcome == "backordered"
    assert dict(record.backordered) == {"BLUE-TEAPOT": 2}
    assert shop.stock.inventory.held_for(order.id) == []


async def test_fixing_the_address_of_an_order_also_short_of_stock_keeps_only_that_hold() -> None:
    """Two causes, one cleared: still on hold, now for stock_shortage alone, history says so."""
    shop = Shop(audit=True)
    shop.shelve("BLUE-TEAPOT", "amsterdam-dc", 1)
    no_postcode = Address(
        name="Mei Lin", line1="Keizersgracht 123", city="Amsterdam", country_code="NL"
    )

    held = await shop.push(shipping_address=no_postcode)
    reasons_at_first = held.hold_reasons
    fixed = await shop.push(
        shipping_address=dataclasses.replace(no_postcode, postal_code="1015 CJ")
    )
    history = shop.db.history

    assert reasons_at_first == (HoldReason.STOCK_SHORTAGE, HoldReason.INCOMPLETE_ADDRESS)
    assert fixed.status is OrderStatus.ON_HOLD
    assert fixed.hold_reasons == (HoldReason.STOCK_SHORTAGE,)
    assert "cleared incomplete_address" in history[-1][1].cause
    assert [e.type for e in shop.db.outbox].count("order.released") == 0


async def test_an_order_without_audit_rules_is_not_held_for_its_address() -> None:
    """No `holds` configured: an incomplete address goes through untouched."""
    shop = Shop()
    shop.shelve("BLUE-TEAPOT", "amsterdam-dc", 5)

    order = await shop.push(shipping_address=Address(country_code="NL"))

    assert order.status is OrderStatus.PENDING


def test_reserving_allocations_is_all_or_nothing() -> None:
    """One allocation too many: refused before any stock changes."""
    inv = Inventory(LOCATIONS)
    inv.set_on_hand("BLUE-TEAPOT", "amsterdam-dc", 3, at=PLACED_AT)
    inv.set_on_hand("MATCHA-CUP", "lyon-store", 1, at=PLACED_AT)
    inv.take_changes()

    with pytest.raises(InsufficientStock):
        inv.reserve_allocations(
            "ord_1",
            [("BLUE-TEAPOT", "amsterdam-dc", 2), ("MATCHA-CUP", "lyon-store", 2)],
            at=AT,
            expires_at=None,
            new_id=lambda: "res_1",
        )

    assert inv.levels[("BLUE-TEAPOT", "amsterdam-dc")].reserved == 0
    assert inv.take_changes() == ([], [])


def test_a_shortage_records_one_event_per_sku_short() -> None:
    inv = Inventory(LOCATIONS)
    inv.set_on_hand("BLUE-TEAPOT", "amsterdam-dc", 1, at=PLACED_AT)
    inv.take_changes()

    inv.record_shortage("ord_1", {"BLUE-TEAPOT": 4}, at=AT)

    (event,) = inv.take_changes()[1]
    assert (event.type, event.quantity, event.available) == (StockEventType.STOCK_SHORTAGE, 4, 1)


def test_two_lines_of_one_sku_share_its_allocations_in_line_order() -> None:
    """3 + 2 teapots over Amsterdam (4) and Lyon (1): the first line fills first."""
    doc = {"lines": [{"sku": "BLUE-TEAPOT", "quantity": 3}, {"sku": "BLUE-TEAPOT", "quantity": 2}]}

    out = with_fulfilment(
        doc,
        [("BLUE-TEAPOT", "amsterdam-dc", 4), ("BLUE-TEAPOT", "lyon-store", 1)],
        None,
    )

    assert [ln["allocations"] for ln in out["lines"]] == [
        [{"location_id": "amsterdam-dc", "quantity": 3}],
        [
            {"location_id": "amsterdam-dc", "quantity": 1},
            {"location_id": "lyon-store", "quantity": 1},
        ],
    ]
    assert out["routing"] is None


def test_hold_and_routing_settings_are_checked_at_start_up() -> None:
    """A bad currency key or an unknown location names its path."""
    base = {"locations": [{"id": "amsterdam-dc", "kind": "warehouse", "region": "NL"}]}

    with pytest.raises(ConfigError, match=r"holds\.amount_above"):
        settings_from_mapping({**base, "holds": {"amount_above": {"euro": "10"}}}, env={})
    with pytest.raises(ConfigError, match=r"routing\.channel_locations\.tmall"):
        settings_from_mapping(
            {**base, "routing": {"channel_locations": {"tmall": ["lyon-store"]}}}, env={}
        )
    ok = settings_from_mapping({**base, "holds": {"amount_above": {"EUR": "500"}}}, env={})
    assert ok.holds is not None
    assert ok.holds.amount_above == {"EUR": Decimal("500")}


def test_orders_of_one_shape_reuse_a_decision_but_each_keeps_its_own_id() -> None:
    """100 then 99 teapots on the shelf route alike; 1 teapot for 2 wanted is decided anew."""
    setup = RoutingSetup()
    stock = {("BLUE-TEAPOT", "amsterdam-dc"): 100}

    def request(order_id: str) -> RoutingRequest:
        return RoutingRequest(order_id, "web", (RoutingLine("BLUE-TEAPOT", 2),), Destination("NL"))

    first, first_record = setup.decide(request("ord_1"), LOCATIONS, stock, None, AT)
    stock[("BLUE-TEAPOT", "amsterdam-dc")] = 99
    second, second_record = setup.decide(request("ord_2"), LOCATIONS, stock, None, AT)
    stock[("BLUE-TEAPOT", "amsterdam-dc")] = 1
    setup.decide(request("ord_3"), LOCATIONS, stock, None, AT)

    assert (first.order_id, second.order_id) == ("ord_1", "ord_2")
    assert (first_record.order_id, second_record.order_id) == ("ord_1", "ord_2")
    assert second.lines == first.lines
    assert second_record.explanation == first_record.explanation
    assert len(setup._memo) == 1


async def test_without_inventory_a_buyer_note_holds_and_removing_it_releases() -> None:
    """Holds need no locations: a note holds (order.held); the channel clears it
    (order.released), back to the status it was held from."""
    db = FakeDatabase()
    holds = HoldPolicy((BuyerNotePresent(),))

    async def push(seq: int, note: str | None) -> Order:
        uow = FakeUnitOfWork(db)
        uow.holds = holds
        snap = make_snapshot(note=note, channel_updated_at=PLACED_AT + timedelta(seconds=seq))
        cmd = commands.IngestChannelOrder(
            snap.channel_id, "shopify", f"msg-{seq}", "orders/updated", snap, AT
        )
        result = await ingest_channel_order(cmd, uow)
        await uow.commit()
        assert result.order_id is not None
        return db.orders[result.order_id]

    held = await push(1, "Please wrap it as a gift")
    held_status = held.status
    released = await push(2, None)

    assert held_status is OrderStatus.ON_HOLD
    assert released.status is OrderStatus.PENDING
    assert released.hold_reasons == ()
    events = [e.type for e in db.outbox]
    assert events.index("order.held") < events.index("order.released")
