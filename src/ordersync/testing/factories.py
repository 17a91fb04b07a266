"""Vivid test data: a blue teapot ordered from a Shopify tea house, paid in euros."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ordersync.domain import commands
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.orders import (
    Address,
    Customer,
    Order,
    OrderLine,
    OrderSnapshot,
    Totals,
)

CHANNEL_ID = "shopify-teahouse"
EXTERNAL_ID = "820982911946154508"
PLACED_AT = datetime(2024, 11, 22, 9, 30, tzinfo=UTC)


def make_line(**overrides: Any) -> OrderLine:
    line = OrderLine(
        sku="BLUE-TEAPOT",
        name="Blue teapot, 1.2 l",
        quantity=2,
        unit_price=Decimal("34.50"),
        discount=Decimal("0.00"),
        total=Decimal("69.00"),
        external_id="866550311766439020",
        product_id="632910392",
        variant_id="808950810",
    )
    return dataclasses.replace(line, **overrides)


def make_snapshot(**overrides: Any) -> OrderSnapshot:
    """An order for two blue teapots, shipped to Amsterdam; override any field."""
    snapshot = OrderSnapshot(
        channel_id=CHANNEL_ID,
        external_id=EXTERNAL_ID,
        currency="EUR",
        totals=Totals(
            subtotal=Decimal("69.00"),
            shipping=Decimal("4.90"),
            tax=Decimal("12.83"),
            discount=Decimal("0.00"),
            total=Decimal("73.90"),
        ),
        lines=(make_line(),),
        status=OrderStatus.PENDING,
        payment_status=PaymentStatus.PENDING,
        customer=Customer(
            external_id="207119551", email="mei.lin@example.com", name="Mei Lin", phone=None
        ),
        shipping_address=Address(
            name="Mei Lin",
            line1="Keizersgracht 123",
            city="Amsterdam",
            postal_code="1015 CJ",
            country_code="NL",
        ),
        billing_address=None,
        note="Please wrap it as a gift",
        placed_at=PLACED_AT,
        channel_updated_at=PLACED_AT,
        name="#1001",
    )
    return dataclasses.replace(snapshot, **overrides)


def make_order(
    order_id: str = "ord_BLUETEAPOT",
    *,
    at: datetime = PLACED_AT,
    cause: str = "shopify:orders/create",
    **overrides: Any,
) -> Order:
    """A freshly created order (its creation's history and events already taken)."""
    order = Order.create(
        order_id, make_snapshot(**overrides), cause=cause, message_id="msg-create", at=at
    )
    order.take_changes()
    return order


async def push_snapshot(uow: Any, snap: OrderSnapshot, message_id: str, at: datetime) -> str:
    """The channel sends `snap` (an `orders/updated` webhook), ingested and committed in
    `uow`, as the order handlers do; returns the hub's order id."""
    from ordersync.service.handlers.orders import ingest_channel_order  # service layer

    cmd = commands.IngestChannelOrder(
        snap.channel_id, "shopify", message_id, "orders/updated", snap, at
    )
    result = await ingest_channel_order(cmd, uow)
    await uow.commit()
    assert result.order_id is not None, result
    return result.order_id
