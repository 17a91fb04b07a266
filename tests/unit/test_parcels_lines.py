"""Parcels: which units of an order's lines a parcel takes, what is left outside the active
parcels, and when an order counts as shipped or delivered by its parcels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ordersync.domain.orders import OrderLine
from ordersync.domain.shipments import (
    FulfillmentStatus,
    ParcelLine,
    ParcelRefused,
    Shipment,
    ShipmentStatus,
    TrackingEvent,
    covers,
    fulfillment_of,
    is_whole,
    pick_lines,
    remaining,
    rest_of,
    whole_order,
)

T0 = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)


def line(sku: str | None, quantity: int, external_id: str | None = None) -> OrderLine:
    price = Decimal("12.00")
    return OrderLine(sku, sku, quantity, price, Decimal("0"), price * quantity, external_id)


TEA = [line("BLUE-TEAPOT", 1, "7001"), line("MATCHA-WHISK", 2, "7002")]


def test_a_booking_by_sku_takes_the_named_units_with_the_platform_line_id() -> None:
    """Asked by SKU, the parcel line carries the order line's id on the platform."""
    picked = pick_lines(TEA, [(None, "MATCHA-WHISK", 1)], remaining(TEA, []))

    assert picked == (ParcelLine("7002", "MATCHA-WHISK", 1, 1),)
    assert not is_whole(TEA, picked)


def test_units_already_in_an_active_parcel_cannot_be_booked_again() -> None:
    """One whisk in a parcel leaves one: asking for two is refused with a 409."""
    left = remaining(TEA, [(ParcelLine("7002", "MATCHA-WHISK", 1, 1),)])

    with pytest.raises(ParcelRefused) as refused:
        pick_lines(TEA, [("7002", None, 2)], left)

    assert (refused.value.status, refused.value.code) == (409, "parcel_exceeds_order")
    assert left == {"id:7001": 1, "id:7002": 1}


def test_asking_for_the_same_line_twice_counts_both_requests() -> None:
    """Two requests of one whisk each fit; a third would not."""
    left = remaining(TEA, [])

    assert pick_lines(TEA, [("7002", None, 1), (None, "MATCHA-WHISK", 1)], left) == (
        ParcelLine("7002", "MATCHA-WHISK", 2, 1),
    )
    with pytest.raises(ParcelRefused):
        pick_lines(TEA, [("7002", None, 1), ("7002", None, 1), ("7002", None, 1)], left)


def test_a_line_the_order_does_not_have_is_refused_with_a_422() -> None:
    """An unknown SKU, an unknown id, an id whose SKU differs."""
    for asked, code in [
        ((None, "GREEN-KETTLE", 1), "line_not_in_order"),
        (("9999", None, 1), "line_not_in_order"),
        (("7001", "MATCHA-WHISK", 1), "line_mismatch"),
    ]:
        with pytest.raises(ParcelRefused) as refused:
            pick_lines(TEA, [asked], remaining(TEA, []))
        assert (refused.value.status, refused.value.code) == (422, code)


def test_a_sku_on_two_lines_takes_from_each_in_turn() -> None:
    """Two lines of whisks (different platform ids): three whisks take 2 + 1."""
    lines = [line("MATCHA-WHISK", 2, "a"), line("MATCHA-WHISK", 2, "b")]

    picked = pick_lines(lines, [(None, "MATCHA-WHISK", 3)], remaining(lines, []))

    assert picked == (ParcelLine("a", "MATCHA-WHISK", 2, 0), ParcelLine("b", "MATCHA-WHISK", 1, 1))


def test_the_rest_is_what_no_active_parcel_holds_and_a_legacy_parcel_holds_all() -> None:
    """After the teapot's parcel the rest is the whisks; a parcel stored before parcels
    existed (None) holds the whole order."""
    teapot = (ParcelLine("7001", "BLUE-TEAPOT", 1, 0),)

    rest = rest_of(TEA, remaining(TEA, [teapot]))

    assert rest == (ParcelLine("7002", "MATCHA-WHISK", 2, 1),)
    assert covers(TEA, [teapot, rest])
    assert not covers(TEA, [teapot])
    assert covers(TEA, [None])
    assert rest_of(TEA, remaining(TEA, [None])) == ()
    assert is_whole(TEA, whole_order(TEA))


def parcel(*scans: tuple[int, ShipmentStatus]) -> Shipment:
    s = Shipment("shp", "kdn-sf", "SF1", booked_at=T0)
    s.merge(TrackingEvent(T0 + timedelta(hours=h), "c", f"{st} +{h}h", st) for h, st in scans)
    return s


def test_a_part_of_the_order_picked_up_or_delivered_is_only_partially_shipped() -> None:
    """Every parcel picked up, even delivered, but units outside them: partially shipped;
    with every unit in them: shipped, then delivered."""
    picked = parcel((1, ShipmentStatus.PICKED_UP))
    delivered = parcel((1, ShipmentStatus.PICKED_UP), (9, ShipmentStatus.DELIVERED))

    assert fulfillment_of([picked], complete=False) is FulfillmentStatus.PARTIALLY_SHIPPED
    assert fulfillment_of([delivered], complete=False) is FulfillmentStatus.PARTIALLY_SHIPPED
    assert fulfillment_of([parcel()], complete=False) is FulfillmentStatus.UNFULFILLED
    assert fulfillment_of([picked], complete=True) is FulfillmentStatus.SHIPPED
    assert fulfillment_of([delivered], complete=True) is FulfillmentStatus.DELIVERED
