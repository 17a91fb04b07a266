"""Keeping an order in line with its channel, and its canonical JSON form."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ordersync.domain.codec import fmt_time, order_from_dict, order_to_dict, parse_time
from ordersync.domain.errors import InvalidOrder, InvalidTransition
from ordersync.domain.events import EventType
from ordersync.domain.order_status import HoldReason, OrderStatus, PaymentStatus
from ordersync.domain.orders import Address, Customer, Order, OrderLine, OrderSnapshot, Totals
from ordersync.testing import make_line, make_order, make_snapshot
from ordersync.testing.factories import PLACED_AT

S, P, E = OrderStatus, PaymentStatus, EventType
LATER = PLACED_AT + timedelta(minutes=10)


def report(order: Order, *, minutes: int = 10, **changes: Any) -> OrderSnapshot:
    """What the channel says `minutes` after the order was placed: the order plus `changes`."""
    return dataclasses.replace(
        order.snapshot(), channel_updated_at=PLACED_AT + timedelta(minutes=minutes), **changes
    )


def sync(order: Order, snap: OrderSnapshot, message_id: str = "msg-upd") -> bool:
    return order.sync(snap, cause="shopify:orders/updated", message_id=message_id, at=LATER)


def types(order: Order) -> list[EventType]:
    return [e.type for e in order.new_events]


# ---- staleness --------------------------------------------------------------------------------


def test_an_update_older_than_the_one_held_is_stale() -> None:
    """A webhook stamped before the order's channel_updated_at must not roll it back."""
    order = make_order(channel_updated_at=PLACED_AT + timedelta(minutes=5))

    assert order.is_stale(PLACED_AT + timedelta(minutes=4))
    assert not order.is_stale(PLACED_AT + timedelta(minutes=5))
    assert not order.is_stale(PLACED_AT + timedelta(minutes=6))


def test_an_update_without_a_channel_time_is_never_stale() -> None:
    """Without timestamps on either side there is nothing to compare."""
    untimed = make_order(channel_updated_at=None)
    timed = make_order()

    assert not untimed.is_stale(PLACED_AT)
    assert not timed.is_stale(None)


# ---- what a sync changes and announces --------------------------------------------------------


def test_an_unchanged_snapshot_bumps_nothing_and_announces_nothing() -> None:
    """The same teapot order reported again changes no version and emits no event."""
    order = make_order()

    changed = sync(order, report(order))

    assert changed is False
    assert order.version == 1
    assert order.new_history == []
    assert order.new_events == []
    assert order.channel_updated_at == LATER


def test_a_payment_going_from_pending_to_paid_announces_updated_and_paid() -> None:
    """Shopify's orders/paid moves the order to paid and says so once."""
    order = make_order()

    changed = sync(order, report(order, status=S.PAID, payment_status=P.PAID))

    assert changed is True
    assert (order.status, order.payment_status, order.version) == (S.PAID, P.PAID, 2)
    assert types(order) == [E.ORDER_UPDATED, E.ORDER_PAID]


def test_an_authorized_payment_on_a_pending_order_announces_paid() -> None:
    """Payment secured while the status stays pending still emits order.paid."""
    order = make_order()

    sync(order, report(order, payment_status=P.AUTHORIZED))

    assert order.status is S.PENDING
    assert types(order) == [E.ORDER_UPDATED, E.ORDER_PAID]


def test_a_cancellation_announces_updated_and_cancelled() -> None:
    """The channel cancelling the order moves it to cancelled and says so."""
    order = make_order()

    sync(order, report(order, status=S.CANCELLED, payment_status=P.VOIDED))

    assert order.status is S.CANCELLED
    assert types(order) == [E.ORDER_UPDATED, E.ORDER_CANCELLED]


def test_a_refund_announces_refunded() -> None:
    """A paid order refunded by the channel emits order.refunded."""
    order = make_order(status=S.PAID, payment_status=P.PAID)

    sync(order, report(order, payment_status=P.REFUNDED))

    assert types(order) == [E.ORDER_UPDATED, E.ORDER_REFUNDED]


def test_creating_a_paid_order_announces_created_and_paid() -> None:
    """An order that arrives already paid emits order.created then order.paid."""
    order = Order.create(
        "ord_TEAPOT",
        make_snapshot(status=S.PAID, payment_status=P.PAID),
        cause="shopify:orders/create",
        message_id="msg-create",
        at=PLACED_AT,
    )

    assert types(order) == [E.ORDER_CREATED, E.ORDER_PAID]
    assert [h.to_status for h in order.new_history] == [S.PAID]


def test_creating_a_pending_order_announces_only_created() -> None:
    """An unpaid new order emits order.created and nothing else."""
    order = Order.create(
        "ord_TEAPOT", make_snapshot(), cause="api:create", message_id=None, at=PLACED_AT
    )

    assert types(order) == [E.ORDER_CREATED]


def test_an_order_cannot_start_as_allocated() -> None:
    """Only INITIAL_STATUSES are valid for a new order."""

    with pytest.raises(InvalidOrder):
        Order.create(
            "ord_TEAPOT",
            make_snapshot(status=S.ALLOCATED, payment_status=P.PAID),
            cause="api:create",
            message_id=None,
            at=PLACED_AT,
        )


def test_a_channel_behind_the_hub_does_not_move_the_order_back() -> None:
    """The hub allocated the teapots; the channel still saying 'paid' changes nothing."""
    order = make_order(status=S.PAID, payment_status=P.PAID)
    order.transition_to(S.ALLOCATED, cause="api:warehouse", at=LATER)
    order.take_changes()

    changed = sync(order, report(order, status=S.PAID, minutes=20))

    assert changed is False
    assert order.status is S.ALLOCATED
    assert order.version == 2
    assert order.new_events == []


def test_a_sync_while_on_hold_keeps_the_hold_and_remembers_the_channel_status() -> None:
    """A held unpaid order that Shopify reports paid stays on hold; release returns to paid."""
    order = make_order(status=S.PENDING, payment_status=P.PENDING)
    order.transition_to(
        S.ON_HOLD, cause="api:fraud-desk", at=LATER, hold_reasons=(HoldReason.SUSPECTED_FRAUD,)
    )
    order.take_changes()

    changed = sync(order, report(order, status=S.PAID, payment_status=P.PAID, minutes=30))

    assert changed is True
    assert order.status is S.ON_HOLD
    assert order.hold_reasons == (HoldReason.SUSPECTED_FRAUD,)
    assert order.held_from is S.PAID
    assert types(order) == [E.ORDER_UPDATED, E.ORDER_PAID]


def test_a_shipment_from_the_channel_ends_a_hold() -> None:
    """A held order that Shopify ships is shipped; the hold is cleared."""
    order = make_order(status=S.PAID, payment_status=P.PAID)
    order.transition_to(S.ON_HOLD, cause="api:ops", at=LATER, hold_reasons=(HoldReason.MANUAL,))
    order.take_changes()

    sync(order, report(order, status=S.SHIPPED, minutes=30))

    assert (order.status, order.held_from, order.hold_reasons) == (S.SHIPPED, None, ())
    assert types(order) == [E.ORDER_UPDATED, E.ORDER_RELEASED, E.ORDER_SHIPPED]


def test_a_cancellation_from_the_channel_ends_a_hold() -> None:
    """A held order cancelled on the channel is cancelled, and the hold is cleared."""
    order = make_order(status=S.PAID, payment_status=P.PAID)
    order.transition_to(S.ON_HOLD, cause="api:ops", at=LATER, hold_reasons=(HoldReason.MANUAL,))
    order.take_changes()

    sync(order, report(order, status=S.CANCELLED, payment_status=P.REFUNDED, minutes=30))

    assert order.status is S.CANCELLED
    assert (order.hold_reasons, order.held_from) == ((), None)
    assert types(order) == [E.ORDER_UPDATED, E.ORDER_CANCELLED, E.ORDER_REFUNDED]


def test_a_content_change_records_which_fields_changed() -> None:
    """A new gift note and address are applied and named in the history entry."""
    order = make_order()
    moved = Address(name="Mei Lin", line1="Prinsengracht 263", city="Amsterdam")

    sync(order, report(order, note="No gift wrap after all", shipping_address=moved))

    assert order.note == "No gift wrap after all"
    assert order.shipping_address == moved
    [entry] = order.new_history
    assert entry.changed == ("shipping_address", "note")
    assert (entry.from_status, entry.to_status) == (S.PENDING, S.PENDING)
    assert types(order) == [E.ORDER_UPDATED]


def test_a_refused_sync_leaves_the_order_exactly_as_it_was() -> None:
    """A cancelled order the channel calls paid is refused, with a new note not applied."""
    order = make_order(status=S.CANCELLED, payment_status=P.VOIDED)
    before = order.copy()

    with pytest.raises(InvalidTransition):
        sync(order, report(order, status=S.PAID, note="Paid after all?"))

    assert order.copy() == before
    assert order.new_events == []


def test_a_payment_going_backwards_is_refused_as_a_payment_transition() -> None:
    """Refunded money cannot become merely pending again."""
    order = make_order(status=S.PAID, payment_status=P.REFUNDED)

    with pytest.raises(InvalidTransition) as refused:
        sync(order, report(order, payment_status=P.PENDING))

    assert refused.value.what == "payment_status"
    assert order.payment_status is P.REFUNDED


def test_events_carry_the_version_they_describe() -> None:
    """Created at 1, paid at 2, shipped at 3: every event names its own version."""
    order = Order.create(
        "ord_TEAPOT", make_snapshot(), cause="api:create", message_id=None, at=PLACED_AT
    )
    versions = [e.version for e in order.new_events]
    order.take_changes()
    sync(order, report(order, status=S.PAID, payment_status=P.PAID, minutes=1))
    versions += [e.version for e in order.new_events]
    order.take_changes()
    sync(order, report(order, status=S.SHIPPED, minutes=2))
    versions += [e.version for e in order.new_events]

    assert versions == [1, 2, 2, 3, 3]
    assert [h.version for h in order.new_history] == [3]


# ---- the canonical JSON form ------------------------------------------------------------------

ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-3, minutes=-30))]
)
TIMES = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=ZONES
)
MONEY = st.decimals(allow_nan=False, allow_infinity=False)
TEXT = st.text(max_size=20)  # includes non-ASCII: "蓝色茶壶", "Ærøskøbing", emoji


def maybe(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.none() | strategy


lines = st.builds(
    OrderLine,
    sku=maybe(TEXT),
    name=maybe(TEXT),
    quantity=st.integers(0, 10_000),
    unit_price=MONEY,
    discount=MONEY,
    total=MONEY,
    external_id=maybe(st.from_regex(r"[0-9]{1,19}", fullmatch=True)),
    product_id=maybe(TEXT),
    variant_id=maybe(TEXT),
)
addresses = st.builds(
    Address,
    name=maybe(TEXT),
    company=maybe(TEXT),
    line1=maybe(TEXT),
    city=maybe(TEXT),
    postal_code=maybe(TEXT),
    country_code=maybe(st.sampled_from(["NL", "CN", "DE"])),
)
orders = st.builds(
    Order,
    id=st.just("ord_01JD8ZJ0BLUETEAPOT0000000"),
    channel_id=st.just("shopify-teahouse"),
    external_id=maybe(st.from_regex(r"[0-9]{1,19}", fullmatch=True)),
    status=st.sampled_from(list(OrderStatus)),
    payment_status=st.sampled_from(list(PaymentStatus)),
    currency=st.sampled_from(["EUR", "CNY", "JPY"]),
    totals=st.builds(
        Totals,
        subtotal=maybe(MONEY),
        shipping=maybe(MONEY),
        tax=maybe(MONEY),
        discount=maybe(MONEY),
        total=MONEY,
    ),
    lines=st.lists(lines, max_size=3).map(tuple),
    customer=maybe(st.builds(Customer, email=maybe(TEXT), name=maybe(TEXT))),
    shipping_address=maybe(addresses),
    billing_address=maybe(addresses),
    note=maybe(TEXT),
    placed_at=maybe(TIMES),
    created_at=TIMES,
    updated_at=TIMES,
    channel_updated_at=maybe(TIMES),
    name=maybe(TEXT),
    version=st.integers(1, 10_000),
    hold_reasons=st.lists(st.sampled_from(list(HoldReason)), max_size=2, unique=True).map(tuple),
    held_from=maybe(st.sampled_from([S.PENDING, S.PAID, S.ALLOCATED])),
)


def decimals_of(order: Order) -> list[str]:
    """Every amount as its exact string, so 69.00 and 69.0 count as different."""
    t = order.totals
    amounts = [t.subtotal, t.shipping, t.tax, t.discount, t.total]
    for line in order.lines:
        amounts += [line.unit_price, line.discount, line.total]
    return [repr(a) for a in amounts]


def times_of(order: Order) -> list[datetime | None]:
    return [order.placed_at, order.created_at, order.updated_at, order.channel_updated_at]


@settings(max_examples=200, deadline=None)
@given(orders)
def test_an_order_survives_the_json_round_trip_exactly(order: Order) -> None:
    """order_to_dict -> JSON -> order_from_dict keeps every field, decimal scale and instant."""
    wire = orjson.dumps(order_to_dict(order))

    back = order_from_dict(orjson.loads(wire))

    assert back == order
    assert decimals_of(back) == decimals_of(order)
    assert all(t is None or t.utcoffset() == timedelta(0) for t in times_of(back))


def test_money_is_a_decimal_string_with_its_scale() -> None:
    """Two teapots at 34.50 EUR are written as "34.50", never as a float."""
    order = make_order()

    doc = order_to_dict(order)

    assert doc["lines"][0]["unit_price"] == "34.50"
    assert doc["totals"]["total"] == "73.90"
    assert order_from_dict(doc).totals.shipping == Decimal("4.90")
    assert repr(order_from_dict(doc).totals.discount) == "Decimal('0.00')"


def test_times_are_written_in_utc_with_a_z() -> None:
    """A Shanghai timestamp is written as the same instant in UTC."""
    shanghai = datetime(2024, 11, 22, 17, 30, 5, 123456, tzinfo=timezone(timedelta(hours=8)))

    written = fmt_time(shanghai)

    assert written == "2024-11-22T09:30:05.123456Z"
    assert parse_time(written) == shanghai
    assert parse_time(written).tzinfo is UTC  # type: ignore[union-attr]


def test_a_time_without_an_offset_is_refused() -> None:
    """A naive timestamp is ambiguous and must not be guessed."""

    with pytest.raises(ValueError, match="without a UTC offset"):
        parse_time("2024-11-22T09:30:00")


def test_a_chinese_customer_name_survives_the_round_trip() -> None:
    """Non-ASCII names, such as 林美 in 上海, are kept as they are."""
    order = make_order(
        customer=Customer(name="林美", email="lin.mei@example.cn"),
        shipping_address=Address(name="林美", city="上海", country_code="CN"),
        lines=(make_line(name="青花瓷茶壶"),),
    )

    back = order_from_dict(orjson.loads(orjson.dumps(order_to_dict(order))))

    assert back == order
    assert back.lines[0].name == "青花瓷茶壶"
