"""Audit holds as specifications: each rule holds an order, and lets it go when the cause clears."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal

from ordersync.domain.holds import (
    AmountAboveThreshold,
    AuditContext,
    BuyerNotePresent,
    HoldAction,
    IncompleteAddress,
    OrderFootprint,
    StockShortage,
    SuspectedFraud,
    apply,
    default_rules,
    evaluate,
    footprint,
)
from ordersync.domain.order_status import HoldReason, OrderStatus
from ordersync.domain.orders import Address, Order, Totals
from ordersync.testing.factories import PLACED_AT, make_order

NOW = PLACED_AT + timedelta(minutes=5)
CTX = AuditContext(now=NOW)
AMSTERDAM = Address(
    name="Mei Lin",
    line1="Keizersgracht 123",
    city="Amsterdam",
    postal_code="1015 CJ",
    country_code="NL",
    phone="+31 6 1234 5678",
)


def clean_order(order_id: str = "ord_TEAPOT", **overrides: object) -> Order:
    """Two blue teapots to a full Amsterdam address, no note: nothing to audit."""
    fields: dict[str, object] = {"note": None, "shipping_address": AMSTERDAM}
    fields.update(overrides)
    return make_order(order_id, **fields)


def test_a_clean_order_is_not_held() -> None:
    """Full address, modest amount, no note, no burst: the audit changes nothing."""
    result = evaluate(clean_order(), default_rules({"EUR": Decimal(500)}), CTX)

    assert result.action is HoldAction.NONE
    assert result.reasons == ()


def test_an_address_without_a_street_is_held_as_incomplete() -> None:
    """No line1 and no postcode: held with incomplete_address, naming what is missing."""
    order = clean_order(shipping_address=dataclasses.replace(AMSTERDAM, line1="", postal_code=None))

    result = evaluate(order, (IncompleteAddress(),), CTX)

    assert result.action is HoldAction.HOLD
    assert result.reasons == (HoldReason.INCOMPLETE_ADDRESS,)
    assert (
        result.details[HoldReason.INCOMPLETE_ADDRESS] == "shipping address lacks line1, postal_code"
    )


def test_a_hong_kong_address_needs_no_postal_code() -> None:
    """Hong Kong has no postcodes, so a missing one is not incomplete."""
    hk = Address(name="陈小明", line1="皇后大道中 99 号", city="Hong Kong", country_code="HK")

    result = evaluate(clean_order(shipping_address=hk), (IncompleteAddress(),), CTX)

    assert result.action is HoldAction.NONE


def test_an_order_above_the_currency_threshold_is_held() -> None:
    """A 1,250 EUR order passes a 1,000 EUR limit; the same amount in JPY has no limit set."""
    big = Totals(Decimal("1250.00"), None, None, None, Decimal("1250.00"))
    rule = AmountAboveThreshold({"EUR": Decimal(1000)})

    eur = evaluate(clean_order(totals=big), (rule,), CTX)
    jpy = evaluate(clean_order(totals=big, currency="JPY"), (rule,), CTX)

    assert eur.reasons == (HoldReason.AMOUNT_ABOVE_THRESHOLD,)
    assert jpy.action is HoldAction.NONE


def test_a_buyer_note_holds_the_order_for_a_person_to_read() -> None:
    """'Please wrap it as a gift' is something a packer must see: buyer_note."""
    order = clean_order(note="Please wrap it as a gift")

    result = evaluate(order, (BuyerNotePresent(),), CTX)

    assert result.reasons == (HoldReason.BUYER_NOTE,)
    assert "wrap it as a gift" in result.details[HoldReason.BUYER_NOTE]


def test_many_orders_to_one_address_within_the_window_are_suspected_fraud() -> None:
    """A fourth order to the same street within a day trips a limit of three."""
    order = clean_order("ord_4")
    same = footprint(order)
    recent = [
        dataclasses.replace(same, order_id=f"ord_{i}", placed_at=PLACED_AT - timedelta(hours=i))
        for i in (1, 2, 3)
    ]

    result = evaluate(order, (SuspectedFraud(),), AuditContext(NOW, recent))

    assert result.reasons == (HoldReason.SUSPECTED_FRAUD,)
    assert "4 orders to one address within 24 h" in result.details[HoldReason.SUSPECTED_FRAUD]


def test_orders_outside_the_window_do_not_count_towards_fraud() -> None:
    """Three orders from last week to the same address are just a loyal buyer."""
    order = clean_order("ord_4")
    same = footprint(order)
    recent = [
        dataclasses.replace(same, order_id=f"ord_{i}", placed_at=PLACED_AT - timedelta(days=7 + i))
        for i in (1, 2, 3)
    ]

    result = evaluate(order, (SuspectedFraud(),), AuditContext(NOW, recent))

    assert result.action is HoldAction.NONE


def test_many_orders_from_one_phone_are_suspected_fraud_however_it_is_written() -> None:
    """The same mobile, written +31 6 ... and 06-...: one phone, two orders over a limit of one."""
    order = clean_order("ord_2")
    earlier = OrderFootprint("ord_1", PLACED_AT - timedelta(hours=2), "elsewhere", "612345678")

    result = evaluate(
        order, (SuspectedFraud(max_orders_per_phone=1),), AuditContext(NOW, [earlier])
    )

    assert result.details[HoldReason.SUSPECTED_FRAUD] == "2 orders from one phone within 24 h"


def test_billing_in_another_country_than_shipping_is_suspected_fraud() -> None:
    """Billed in Brazil, shipped to Amsterdam: held for a look."""
    billing = dataclasses.replace(AMSTERDAM, city="São Paulo", country_code="BR")

    result = evaluate(clean_order(billing_address=billing), (SuspectedFraud(),), CTX)

    assert result.details[HoldReason.SUSPECTED_FRAUD] == "billing country BR, shipping to NL"


def test_a_stock_shortage_from_routing_holds_the_order() -> None:
    """Routing found no location with the teapots: held with stock_shortage."""
    result = evaluate(clean_order(), (StockShortage(),), AuditContext(NOW, stock_short=True))

    assert result.reasons == (HoldReason.STOCK_SHORTAGE,)


def test_a_held_order_is_released_once_its_only_cause_clears() -> None:
    """The teapots arrive: the shortage clears and the order goes back to pending."""
    order = clean_order()
    rules = (StockShortage(),)
    apply(order, evaluate(order, rules, AuditContext(NOW, stock_short=True)), at=NOW)
    assert order.status is OrderStatus.ON_HOLD

    again = evaluate(order, rules, AuditContext(NOW, stock_short=False))
    changed = apply(order, again, at=NOW + timedelta(hours=1))

    assert again.action is HoldAction.RELEASE
    assert again.remove == frozenset({HoldReason.STOCK_SHORTAGE})
    assert changed
    assert (order.status, order.hold_reasons) == (OrderStatus.PENDING, ())


def test_a_hold_stays_while_another_cause_remains() -> None:
    """Address fixed but the shortage persists: only incomplete_address is removed."""
    order = clean_order(shipping_address=dataclasses.replace(AMSTERDAM, city=None))
    rules = (IncompleteAddress(), StockShortage())
    short = AuditContext(NOW, stock_short=True)
    apply(order, evaluate(order, rules, short), at=NOW)
    order.shipping_address = AMSTERDAM  # the buyer corrected the city

    again = evaluate(order, rules, short)

    assert again.action is HoldAction.UPDATE
    assert again.remove == frozenset({HoldReason.INCOMPLETE_ADDRESS})
    assert again.add == frozenset()
    assert again.reasons == (HoldReason.STOCK_SHORTAGE,)


def test_a_manual_hold_is_never_released_by_the_audit() -> None:
    """An operator's manual hold stays even when every audit rule passes."""
    order = clean_order()
    order.transition_to(
        OrderStatus.ON_HOLD, cause="api:hold", at=NOW, hold_reasons=(HoldReason.MANUAL,)
    )

    result = evaluate(order, default_rules(), CTX)

    assert result.action is HoldAction.NONE
    assert result.reasons == (HoldReason.MANUAL,)


def test_shipped_orders_are_past_auditing() -> None:
    """An order the channel already shipped is not put on hold for its note."""
    order = make_order(status=OrderStatus.SHIPPED)

    result = evaluate(order, (BuyerNotePresent(),), CTX)

    assert result.action is HoldAction.NONE
