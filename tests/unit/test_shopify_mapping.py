"""The Shopify adapter: webhook signatures, exact parsing, and the mapping to a snapshot."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ordersync.adapters.channels.shopify import (
    TOPICS,
    MappingError,
    map_order,
    parse_body,
    sign,
    verify_hmac,
)
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.orders import Address, Customer, OrderSnapshot

FIXTURES = Path(__file__).parent / "fixtures" / "shopify"
CHANNEL = "shopify-teahouse"
SECRET = "shpss_9f3c1e7a2b4d6f80teahouse"


def raw(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def payload(name: str) -> dict[str, Any]:
    return parse_body(raw(name))


def mapped(name: str) -> OrderSnapshot:
    return map_order(CHANNEL, payload(name))


# ---- signatures ----------------------------------------------------------------------------


def test_topics_are_the_order_webhooks_the_hub_subscribes_to() -> None:
    """Every order topic that carries the full order resource, and nothing else."""
    expected = {
        "orders/create",
        "orders/updated",
        "orders/paid",
        "orders/cancelled",
        "orders/fulfilled",
        "orders/partially_fulfilled",
    }

    assert expected == TOPICS
    assert isinstance(TOPICS, frozenset)


def test_the_signature_is_base64_of_hmac_sha256_not_hex() -> None:
    """sign() reproduces the published HMAC-SHA256 test vector, base64-encoded."""
    digest = bytes.fromhex("f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8")

    signature = sign("key", b"The quick brown fox jumps over the lazy dog")

    assert signature == base64.b64encode(digest).decode()


def test_a_body_signed_with_the_channel_secret_is_accepted() -> None:
    """Shopify's header for the exact raw body verifies."""
    body = raw("eur_multi_line_discounted")

    assert verify_hmac(SECRET, body, sign(SECRET, body))


def test_a_signature_forged_with_another_secret_is_rejected() -> None:
    """Knowing the body is not enough; the signature must come from our secret."""
    body = raw("eur_multi_line_discounted")

    assert not verify_hmac(SECRET, body, sign("shpss_guessed_by_an_attacker", body))


@pytest.mark.parametrize("signature", [None, ""])
def test_a_missing_signature_is_rejected(signature: str | None) -> None:
    """No X-Shopify-Hmac-Sha256 header means not from Shopify."""
    assert not verify_hmac(SECRET, raw("guest_checkout"), signature)


def test_a_body_changed_by_one_byte_is_rejected() -> None:
    """Raising a total from 144.20 to 944.20 breaks the signature."""
    body = raw("eur_multi_line_discounted")
    signature = sign(SECRET, body)
    tampered = body.replace(b'"total_price": "144.20"', b'"total_price": "944.20"')

    assert tampered != body
    assert len(tampered) == len(body)
    assert not verify_hmac(SECRET, tampered, signature)


@pytest.mark.parametrize(
    "signature",
    [
        "not base64 at all!",
        "çà-n'est-pas-ascii",
        "\x00\x00\x00",
        "AAAA",
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8",
    ],
)
def test_garbage_signatures_are_rejected_without_raising(signature: str) -> None:
    """Whatever arrives in the header, the answer is False, never an exception."""
    assert not verify_hmac(SECRET, raw("guest_checkout"), signature)


def test_an_empty_secret_never_verifies() -> None:
    """A channel without a configured secret accepts nothing, not everything."""
    body = raw("guest_checkout")

    assert not verify_hmac("", body, sign("", body))


@given(secret=st.text(min_size=1), body=st.binary(), flip=st.integers(min_value=0))
def test_any_changed_byte_breaks_any_signature(secret: str, body: bytes, flip: int) -> None:
    """Signatures verify for every secret and body, and only for the bytes signed."""
    signature = sign(secret, body)
    changed = bytearray(body or b"\x00")
    changed[flip % len(changed)] ^= 0x01

    assert verify_hmac(secret, body, signature)
    assert not verify_hmac(secret, bytes(changed), signature)


# ---- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "order_id"),
    [
        ("eur_multi_line_discounted", "9007199254740993"),
        ("cny_chinese_20_digit_id", "18446744073709551557"),
    ],
)
def test_order_ids_beyond_2_pow_53_keep_every_digit(fixture: str, order_id: str) -> None:
    """2^53 + 1 and a 20-digit id survive parsing and mapping digit for digit."""
    snap = mapped(fixture)

    assert f'"id": {order_id},'.encode() in raw(fixture)
    assert snap.external_id == order_id


def test_line_ids_beyond_2_pow_53_keep_every_digit() -> None:
    """Line ids are 64-bit too."""
    snap = mapped("cny_chinese_20_digit_id")

    assert [line.external_id for line in snap.lines] == [
        "18446744073709551001",
        "18446744073709551002",
    ]


def test_parsing_keeps_json_numbers_exact() -> None:
    """A JSON 0.10 becomes Decimal("0.10"), never the float 0.1000000000000000055."""
    data = parse_body(b'{"total_price": 0.10, "total_tax": 17, "id": 9007199254740993}')

    assert data["total_price"] == Decimal("0.10")
    assert str(data["total_price"]) == "0.10"
    assert data["total_tax"] == 17
    assert data["id"] == 9007199254740993


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'{"id": 1', id="truncated"),
        pytest.param(b'[{"id": 1}]', id="array"),
        pytest.param(b'"orders/create"', id="string"),
        pytest.param(b'{"total_price": NaN}', id="nan"),
        pytest.param(b'{"total_price": Infinity}', id="infinity"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused_at_the_root(body: bytes) -> None:
    """Undecodable or non-object bodies raise MappingError at path "$"."""
    with pytest.raises(MappingError) as caught:
        parse_body(body)

    assert caught.value.path == "$"


# ---- mapping the sample orders -------------------------------------------------------------


def test_a_multi_line_eur_order_keeps_the_channels_totals_to_the_cent() -> None:
    """Subtotal, shipping, tax, discount and total come over exactly, scale included."""
    snap = mapped("eur_multi_line_discounted")

    assert snap.channel_id == CHANNEL
    assert snap.name == "#1042"
    assert snap.currency == "EUR"
    assert snap.totals.subtotal == Decimal("117.39")
    assert snap.totals.shipping == Decimal("4.51")
    assert snap.totals.tax == Decimal("22.30")
    assert snap.totals.discount == Decimal("13.04")
    assert str(snap.totals.total) == "144.20"


def test_line_discounts_come_from_discount_allocations() -> None:
    """A discount code shows in discount_allocations while total_discount stays 0.00."""
    snap = mapped("eur_multi_line_discounted")
    teapot = snap.lines[0]

    assert teapot.sku == "BLUE-TEAPOT"
    assert teapot.name == "Blue Teapot - 1 L"
    assert teapot.quantity == 2
    assert teapot.unit_price == Decimal("32.11")
    assert teapot.discount == Decimal("6.42")
    assert teapot.total == Decimal("57.80")
    assert sum(line.total for line in snap.lines) == snap.totals.subtotal


def test_line_ids_are_strings() -> None:
    """Line, product and variant ids keep their digits as strings."""
    teapot = mapped("eur_multi_line_discounted").lines[0]

    assert teapot.external_id == "13000000000001"
    assert teapot.product_id == "8000000000101"
    assert teapot.variant_id == "80000000001011"


def test_a_known_customer_and_both_addresses_are_mapped() -> None:
    """Customer id, email, full name and phone; the address keeps company and line 2."""
    snap = mapped("eur_multi_line_discounted")

    assert snap.customer == Customer(
        external_id="7000000000042",
        email="juergen.mueller@example.de",
        name="Jürgen Müller",
        phone="+49305550123",
    )
    assert snap.shipping_address == Address(
        name="Jürgen Müller",
        company="Teehaus Müller GmbH",
        line1="Unter den Linden 77",
        line2="3. OG",
        city="Berlin",
        region="BE",
        postal_code="10117",
        country_code="DE",
        phone="+49 30 5550123",
    )
    assert snap.billing_address == snap.shipping_address
    assert snap.note == "Bitte beim Nachbarn abgeben."


def test_shop_local_times_are_converted_to_utc() -> None:
    """16:15 at +01:00 is 15:15 UTC; both stamps come back timezone-aware."""
    snap = mapped("eur_multi_line_discounted")

    assert snap.placed_at == datetime(2026, 11, 20, 15, 15, tzinfo=UTC)
    assert snap.channel_updated_at == datetime(2026, 11, 20, 15, 17, 31, tzinfo=UTC)
    assert snap.placed_at is not None
    assert snap.placed_at.tzinfo is UTC


def test_a_paid_unfulfilled_order_is_paid() -> None:
    """financial_status "paid" with nothing shipped yet is the hub's PAID."""
    snap = mapped("eur_multi_line_discounted")

    assert snap.status is OrderStatus.PAID
    assert snap.payment_status is PaymentStatus.PAID


def test_a_guest_checkout_keeps_only_the_order_email() -> None:
    """No customer record: the buyer is known by the order's email alone."""
    snap = mapped("guest_checkout")

    assert snap.customer == Customer(email="marcus.oneil@example.com")
    assert snap.status is OrderStatus.PAID
    assert snap.payment_status is PaymentStatus.AUTHORIZED


def test_a_walk_in_sale_without_customer_or_email_has_no_customer() -> None:
    """A POS sale to nobody in particular maps to customer None, not an empty one."""
    order = payload("guest_checkout")
    order.update(email=None, contact_email=None, source_name="pos", shipping_address=None)

    snap = map_order(CHANNEL, order)

    assert snap.customer is None
    assert snap.shipping_address is None


def test_empty_address_fields_and_notes_become_none() -> None:
    """Shopify's "" means not given; the mapping says None."""
    snap = mapped("guest_checkout")

    assert snap.shipping_address is not None
    assert snap.shipping_address.line2 is None
    assert snap.shipping_address.phone is None
    assert snap.shipping_address.region == "TX"
    assert snap.note is None


def test_the_province_name_stands_in_for_a_missing_province_code() -> None:
    """Some countries have provinces without codes; the name is the region then."""
    order = payload("gbp_empty_sku")
    order["shipping_address"]["province_code"] = None

    snap = map_order(CHANNEL, order)

    assert snap.shipping_address is not None
    assert snap.shipping_address.region == "England"


def test_a_line_with_an_empty_sku_keeps_its_variant_id() -> None:
    """The handmade mug (SKU "") and the gift wrap (SKU null) stay identifiable."""
    mug, gift_wrap, whisk = mapped("gbp_empty_sku").lines

    assert mug.sku is None
    assert mug.variant_id == "80000000003011"
    assert mug.name == "Hand-thrown mug - Ash glaze"
    assert gift_wrap.sku is None
    assert gift_wrap.variant_id == "80000000003020"
    assert whisk.sku == "MATCHA-WHISK"


def test_an_order_awaiting_bank_transfer_is_pending() -> None:
    """Nothing secured yet: status and payment are both PENDING."""
    snap = mapped("gbp_empty_sku")

    assert snap.status is OrderStatus.PENDING
    assert snap.payment_status is PaymentStatus.PENDING


def test_chinese_names_and_emoji_notes_pass_through_untouched() -> None:
    """Non-ASCII text is kept character for character."""
    snap = mapped("cny_chinese_20_digit_id")

    assert snap.lines[0].name == "青花瓷茶壶"
    assert snap.lines[1].name == "Kyūsu 急須 side-handle pot - 青瓷 🍵"
    assert snap.note == "礼品包装，谢谢 🎁🍵"
    assert snap.shipping_address is not None
    assert snap.shipping_address.name == "王伟"
    assert snap.shipping_address.line1 == "南京东路 100 号"
    assert snap.shipping_address.city == "上海"
    assert snap.placed_at == datetime(2026, 11, 21, 13, 30, tzinfo=UTC)


def test_a_cancelled_and_refunded_order_is_cancelled_with_payment_refunded() -> None:
    """cancelled_at wins over every other signal."""
    snap = mapped("jpy_cancelled_refunded")

    assert snap.status is OrderStatus.CANCELLED
    assert snap.payment_status is PaymentStatus.REFUNDED


def test_yen_amounts_keep_their_zero_decimal_scale() -> None:
    """JPY has no minor unit: "6537" stays Decimal("6537"), not 6537.00."""
    snap = mapped("jpy_cancelled_refunded")

    assert str(snap.totals.total) == "6537"
    assert str(snap.totals.shipping) == "740"
    assert str(snap.lines[0].total) == "5270"


def test_a_fulfilled_order_is_shipped() -> None:
    """fulfillment_status "fulfilled" means every line has left the warehouse."""
    snap = mapped("usd_fulfilled")

    assert snap.status is OrderStatus.SHIPPED
    assert snap.payment_status is PaymentStatus.PAID
    assert snap.placed_at == datetime(2026, 11, 21, 4, 50, tzinfo=UTC)


def test_amounts_sent_as_json_numbers_map_exactly() -> None:
    """195.00 as a JSON number is Decimal("195.00"); 0 is Decimal("0")."""
    snap = mapped("usd_numeric_amounts")

    assert str(snap.totals.total) == "195.00"
    assert str(snap.totals.subtotal) == "179.10"
    assert str(snap.totals.tax) == "15.90"
    assert snap.totals.shipping == Decimal(0)
    assert snap.lines[0].discount == Decimal("19.90")
    assert str(snap.lines[0].total) == "179.10"


def test_the_shipping_lines_stand_in_for_a_missing_shipping_total() -> None:
    """Without total_shipping_price_set, shipping is the sum of shipping_lines[].price."""
    order = payload("usd_fulfilled")
    del order["total_shipping_price_set"]
    order["shipping_lines"].append({**order["shipping_lines"][0], "price": "2.25"})

    snap = map_order(CHANNEL, order)

    assert str(snap.totals.shipping) == "16.75"


def test_no_shipping_information_leaves_shipping_none() -> None:
    """Neither a shipping total nor shipping lines: None, not an invented 0."""
    order = payload("usd_fulfilled")
    del order["total_shipping_price_set"]
    order["shipping_lines"] = []

    assert map_order(CHANNEL, order).totals.shipping is None


def test_missing_optional_amounts_stay_none() -> None:
    """A payload without subtotal, tax or discounts keeps them None."""
    order = payload("usd_fulfilled")
    for key in ("subtotal_price", "total_tax", "total_discounts"):
        del order[key]

    totals = map_order(CHANNEL, order).totals

    assert (totals.subtotal, totals.tax, totals.discount) == (None, None, None)
    assert totals.total == Decimal("59.14")


def test_the_legacy_total_discount_counts_when_there_are_no_allocations() -> None:
    """A draft-order discount set through total_discount still reduces the line."""
    order = payload("usd_fulfilled")
    order["line_items"][0]["total_discount"] = "5.00"

    line = map_order(CHANNEL, order).lines[0]

    assert line.discount == Decimal("5.00")
    assert line.total == Decimal("36.00")


def test_a_line_without_a_name_uses_its_title() -> None:
    """Older payloads may omit the line's name; the product title stands in."""
    order = payload("usd_fulfilled")
    del order["line_items"][0]["name"]

    assert map_order(CHANNEL, order).lines[0].name == "Ceramic pour-over"


def test_processed_at_stands_in_for_a_missing_created_at() -> None:
    """The placing time falls back to processed_at; neither means None."""
    imported = payload("usd_fulfilled")
    imported.update(created_at=None, processed_at="2026-11-20T22:00:00-05:00")
    undated = payload("usd_fulfilled")
    undated.update(created_at=None, processed_at=None)

    assert map_order(CHANNEL, imported).placed_at == datetime(2026, 11, 21, 3, 0, tzinfo=UTC)
    assert map_order(CHANNEL, undated).placed_at is None


@pytest.mark.parametrize(
    ("financial_status", "expected"),
    [
        ("pending", PaymentStatus.PENDING),
        ("authorized", PaymentStatus.AUTHORIZED),
        ("partially_paid", PaymentStatus.PARTIALLY_PAID),
        ("paid", PaymentStatus.PAID),
        ("partially_refunded", PaymentStatus.PARTIALLY_REFUNDED),
        ("refunded", PaymentStatus.REFUNDED),
        ("voided", PaymentStatus.VOIDED),
        (None, PaymentStatus.PENDING),
        ("expired", PaymentStatus.PENDING),
        ("some_future_status", PaymentStatus.PENDING),
    ],
)
def test_financial_status_maps_to_the_payment_status(
    financial_status: str | None, expected: PaymentStatus
) -> None:
    """Every Shopify financial_status has a payment status; unknown ones are PENDING."""
    order = payload("gbp_empty_sku")
    order["financial_status"] = financial_status

    assert map_order(CHANNEL, order).payment_status is expected


@pytest.mark.parametrize(
    ("cancelled_at", "fulfillment_status", "financial_status", "expected"),
    [
        ("2026-11-22T11:05:40+09:00", "fulfilled", "paid", OrderStatus.CANCELLED),
        (None, "fulfilled", "pending", OrderStatus.SHIPPED),
        (None, "partial", "paid", OrderStatus.PAID),
        (None, None, "authorized", OrderStatus.PAID),
        (None, None, "partially_refunded", OrderStatus.PAID),
        (None, None, "partially_paid", OrderStatus.PENDING),
        (None, None, "refunded", OrderStatus.PENDING),
        (None, None, "voided", OrderStatus.PENDING),
        (None, None, None, OrderStatus.PENDING),
    ],
)
def test_the_order_status_follows_cancellation_then_fulfilment_then_payment(
    cancelled_at: str | None,
    fulfillment_status: str | None,
    financial_status: str | None,
    expected: OrderStatus,
) -> None:
    """Cancelled beats fulfilled beats payment secured beats pending."""
    order = payload("gbp_empty_sku")
    order.update(
        cancelled_at=cancelled_at,
        fulfillment_status=fulfillment_status,
        financial_status=financial_status,
    )

    assert map_order(CHANNEL, order).status is expected


# ---- refusing bad payloads -----------------------------------------------------------------

Change = Callable[[dict[str, Any]], object]


def _set(path: list[str | int], value: object) -> Change:
    def change(order: dict[str, Any]) -> None:
        target: Any = order
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _drop(key: str) -> Change:
    return lambda order: order.pop(key)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        pytest.param(_drop("id"), "id", id="no-id"),
        pytest.param(_set(["id"], Decimal("9007199254740993.0")), "id", id="float-id"),
        pytest.param(_drop("total_price"), "total_price", id="no-total"),
        pytest.param(_set(["total_price"], "144,20"), "total_price", id="comma-total"),
        pytest.param(_set(["total_tax"], "lots"), "total_tax", id="word-tax"),
        pytest.param(_set(["total_discounts"], True), "total_discounts", id="bool-discount"),
        pytest.param(_set(["currency"], "EURO"), "currency", id="bad-currency"),
        pytest.param(_drop("updated_at"), "updated_at", id="no-updated-at"),
        pytest.param(_set(["updated_at"], "2026-11-20T16:17:31"), "updated_at", id="no-offset"),
        pytest.param(_set(["created_at"], "yesterday"), "created_at", id="bad-created-at"),
        pytest.param(_set(["line_items"], "BLUE-TEAPOT"), "line_items", id="lines-not-list"),
        pytest.param(
            _set(["line_items", 2, "quantity"], -1),
            "line_items[2].quantity",
            id="negative-quantity",
        ),
        pytest.param(
            _set(["line_items", 1, "quantity"], "1"),
            "line_items[1].quantity",
            id="string-quantity",
        ),
        pytest.param(
            _set(["line_items", 0, "price"], "free"), "line_items[0].price", id="bad-price"
        ),
        pytest.param(
            _set(["line_items", 0, "discount_allocations", 0, "amount"], "10%"),
            "line_items[0].discount_allocations[0].amount",
            id="bad-allocation",
        ),
        pytest.param(_set(["line_items", 1], None), "line_items[1]", id="null-line"),
        pytest.param(_set(["customer"], "Jürgen"), "customer", id="customer-not-object"),
        pytest.param(
            _set(["shipping_address", "city"], 10117),
            "shipping_address.city",
            id="numeric-city",
        ),
        pytest.param(
            _set(["total_shipping_price_set"], {}),
            "total_shipping_price_set.shop_money",
            id="empty-shipping-set",
        ),
    ],
)
def test_a_bad_field_is_refused_with_its_path(change: Change, path: str) -> None:
    """MappingError names the exact field that could not be mapped."""
    order = payload("eur_multi_line_discounted")
    change(order)

    with pytest.raises(MappingError) as caught:
        map_order(CHANNEL, order)

    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: ")
    assert isinstance(caught.value, ValueError)


def test_a_float_amount_from_a_lossy_parser_is_refused() -> None:
    """json.loads without parse_body yields floats; the mapping will not guess digits."""
    order = json.loads(raw("usd_numeric_amounts"))

    with pytest.raises(MappingError) as caught:
        map_order(CHANNEL, order)

    assert caught.value.path == "subtotal_price"


# ---- properties ----------------------------------------------------------------------------

CENTS = st.integers(min_value=0, max_value=10**9)


def _amount(cents: int) -> str:
    return str(Decimal(cents).scaleb(-2))


@st.composite
def shopify_orders(draw: st.DrawFn) -> dict[str, Any]:
    """A Shopify-like order whose totals add up, amounts as two-decimal strings."""
    lines = []
    subtotal = discounts = 0
    for i in range(draw(st.integers(min_value=1, max_value=5))):
        price = draw(CENTS)
        quantity = draw(st.integers(min_value=0, max_value=1000))
        discount = draw(st.integers(min_value=0, max_value=price * quantity))
        # Split the discount over one or two allocations, as stacked discounts arrive.
        first = draw(st.integers(min_value=0, max_value=discount))
        parts = [first, discount - first] if draw(st.booleans()) else [discount]
        lines.append(
            {
                "id": draw(st.integers(min_value=1, max_value=2**64)),
                "variant_id": draw(st.integers(min_value=1, max_value=2**64)),
                "sku": draw(st.sampled_from(["BLUE-TEAPOT", "MATCHA-WHISK", "", None])),
                "name": f"Blue Teapot #{i}",
                "price": _amount(price),
                "quantity": quantity,
                "total_discount": "0.00",
                "discount_allocations": [{"amount": _amount(p)} for p in parts if p],
            }
        )
        subtotal += price * quantity - discount
        discounts += discount
    shipping, tax = draw(CENTS), draw(CENTS)
    return {
        "id": draw(st.integers(min_value=1, max_value=2**64)),
        "name": "#1001",
        "currency": draw(st.sampled_from(["EUR", "USD", "GBP", "CNY"])),
        "financial_status": draw(st.sampled_from(["pending", "paid", "authorized", None])),
        "created_at": "2026-11-20T10:15:00-05:00",
        "updated_at": "2026-11-20T10:16:00-05:00",
        "note": draw(st.text(min_size=1, max_size=30)),
        "subtotal_price": _amount(subtotal),
        "total_discounts": _amount(discounts),
        "total_shipping_price_set": {"shop_money": {"amount": _amount(shipping)}},
        "total_tax": _amount(tax),
        "total_price": _amount(subtotal + shipping + tax),
        "line_items": lines,
    }


@given(shopify_orders())
def test_mapped_totals_equal_the_channels_totals_to_the_cent(order: dict[str, Any]) -> None:
    """Every order-level amount arrives exactly as Shopify stated it."""
    totals = map_order(CHANNEL, order).totals

    assert str(totals.total) == order["total_price"]
    assert str(totals.subtotal) == order["subtotal_price"]
    assert str(totals.tax) == order["total_tax"]
    assert str(totals.discount) == order["total_discounts"]
    assert str(totals.shipping) == order["total_shipping_price_set"]["shop_money"]["amount"]


@given(shopify_orders())
def test_each_line_total_is_unit_price_times_quantity_less_discount(
    order: dict[str, Any],
) -> None:
    """Line totals are exact, and together they are the channel's subtotal."""
    snap = map_order(CHANNEL, order)

    for line in snap.lines:
        assert line.total == line.unit_price * line.quantity - line.discount
    assert sum(line.total for line in snap.lines) == Decimal(order["subtotal_price"])
    assert [line.external_id for line in snap.lines] == [
        str(item["id"]) for item in order["line_items"]
    ]


@given(shopify_orders())
def test_mapping_the_json_wire_form_is_deterministic(order: dict[str, Any]) -> None:
    """The same body maps to the same snapshot, and the JSON round trip changes nothing."""
    body = json.dumps(order).encode()

    first = map_order(CHANNEL, parse_body(body))
    second = map_order(CHANNEL, parse_body(body))

    assert first == second
    assert first == map_order(CHANNEL, copy.deepcopy(order))
    assert first.note == order["note"]
    assert first.external_id == str(order["id"])
