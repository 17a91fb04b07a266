"""What the carrier rules see of a parcel (`facts_of`): a parcel carrying the whole order is
worth the order's total (shipping and tax included); a part of the order is worth the goods
it carries, each line's total (after its discount) prorated by the units in the parcel."""

from __future__ import annotations

from decimal import Decimal

from ordersync.domain.carrier_choice import CarrierRule, choose
from ordersync.domain.orders import Order, Totals
from ordersync.domain.shipments import ParcelLine, whole_order
from ordersync.service.carrier_booking import facts_of, parcel_value
from ordersync.testing.factories import make_line, make_order

# Three blue teapots at 350.00 (30.00 off the line: 1020.00), a whisk at 12.00, and a
# tea tin whose 3 units cost 10.00 together (a third of a cent each is not a round amount).
TEAPOTS = make_line(
    external_id="LI-1",
    sku="BLUE-TEAPOT",
    quantity=3,
    unit_price=Decimal("350.00"),
    discount=Decimal("30.00"),
    total=Decimal("1020.00"),
)
WHISK = make_line(
    external_id="LI-2",
    sku="MATCHA-WHISK",
    quantity=1,
    unit_price=Decimal("12.00"),
    discount=Decimal("0.00"),
    total=Decimal("12.00"),
)
TINS = make_line(
    external_id=None,
    sku="TEA-TIN",
    quantity=3,
    unit_price=Decimal("3.3333"),
    discount=Decimal("0.00"),
    total=Decimal("10.00"),
)


def order() -> Order:
    return make_order(
        lines=(TEAPOTS, WHISK, TINS),
        totals=Totals(
            subtotal=Decimal("1042.00"),
            shipping=Decimal("9.90"),
            tax=Decimal("199.88"),
            discount=Decimal("0.00"),
            total=Decimal("1251.78"),
        ),
    )


def test_a_parcel_of_every_unit_is_worth_the_order_total_shipping_and_tax_included() -> None:
    o = order()
    facts = facts_of(o, whole_order(o.lines), Decimal("2.5"), "express")

    assert facts.total == Decimal("1251.78")
    assert (facts.order_id, facts.currency, facts.weight_kg, facts.service) == (
        o.id,
        "EUR",
        Decimal("2.5"),
        "express",
    )
    assert facts.country == "NL"


def test_a_partial_parcel_is_worth_its_units_of_each_line_after_the_line_discount() -> None:
    """One teapot of three is a third of the discounted line (340.00, not 350.00), plus the
    whole whisk line; no shipping, no tax."""
    o = order()
    parcel = (ParcelLine("LI-1", "BLUE-TEAPOT", 1, 0), ParcelLine("LI-2", "MATCHA-WHISK", 1, 1))

    facts = facts_of(o, parcel, None, "")

    assert facts.total == Decimal("352.00")
    assert facts.total.as_tuple().exponent == -2


def test_prorated_values_are_decimal_to_the_cent() -> None:
    """One tin of three is 10.00 / 3: 3.33 (to the cent, half-even); two are 6.67."""
    o = order()

    one = parcel_value(o, (ParcelLine(None, "TEA-TIN", 1, 2),))
    two = parcel_value(o, (ParcelLine(None, "TEA-TIN", 2, 2),))

    assert (one, two) == (Decimal("3.33"), Decimal("6.67"))
    assert isinstance(one, Decimal)


def test_every_unit_but_one_is_still_a_partial_parcel() -> None:
    o = order()
    parcel = (
        ParcelLine("LI-1", "BLUE-TEAPOT", 3, 0),
        ParcelLine("LI-2", "MATCHA-WHISK", 1, 1),
        ParcelLine(None, "TEA-TIN", 2, 2),
    )

    assert parcel_value(o, parcel) == Decimal("1038.67")  # 1020.00 + 12.00 + 6.67


def test_lines_sharing_a_sku_share_their_units_and_their_value() -> None:
    """Two lines of one SKU without platform ids are one key: a unit is worth the average
    of the two lines (30.00 + 20.00 over 3 units), not the first line's price."""
    o = make_order(
        lines=(
            make_line(external_id=None, quantity=1, total=Decimal("30.00")),
            make_line(external_id=None, quantity=2, total=Decimal("20.00")),
            make_line(external_id=None, sku="MATCHA-WHISK", quantity=1, total=Decimal("12.00")),
        )
    )

    assert parcel_value(o, (ParcelLine(None, "BLUE-TEAPOT", 3, 0),)) == Decimal("50.00")
    assert parcel_value(o, (ParcelLine(None, "BLUE-TEAPOT", 1, 0),)) == Decimal("16.67")


def test_a_max_total_rule_judges_the_parcel_not_the_order() -> None:
    """An order worth 1251.78: the single teapot parcel goes with the cheap carrier, the
    whole order with the insured one, and the explanation names the parcel's value."""
    rules = [
        CarrierRule.build("cheap", "kd100-yt", max_total=Decimal("500"), currency="EUR"),
        CarrierRule.build("insured", "kdn-sf"),
    ]
    o = order()
    carriers = ["kdn-sf", "kd100-yt"]

    part = choose(
        rules, facts_of(o, (ParcelLine("LI-1", "BLUE-TEAPOT", 1, 0),), None, ""), available=carriers
    )
    whole = choose(rules, facts_of(o, whole_order(o.lines), None, ""), available=carriers)

    assert (part.rule_id, part.carriers) == ("cheap", ("kd100-yt",))
    assert part.explanation[0] == "rule cheap matches (parcel value < 500 EUR)"
    assert (whole.rule_id, whole.carriers) == ("insured", ("kdn-sf",))
    assert whole.explanation[0] == "rule cheap: parcel value 1251.78 >= 500"
