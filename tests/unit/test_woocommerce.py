"""WooCommerce: webhook signatures and pings, the REST v3 order mapped to the canonical order,
and the pull request/response of /wp-json/wc/v3/orders."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from ordersync.adapters.channels import woocommerce as wc
from ordersync.adapters.channels.base import (
    HttpResponse,
    InboundError,
    MappingError,
    PullError,
    Throttled,
    Window,
)
from ordersync.config import WooCommerceChannel, settings_from_mapping
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.orders import Address, Customer

SECRET = "wc-hook-5e1f"
STORE = "https://teehaus.example"
BEYOND_FLOAT = 9_007_199_254_740_993  # 2^53 + 1
CONNECTOR = wc.WooCommerceConnector()


def channel(**extra: Any) -> WooCommerceChannel:
    raw = {
        "id": "woo-teehaus",
        "kind": "woocommerce",
        "secret": SECRET,
        "store_url": STORE,
        "consumer_key": "ck_teehaus",
        "consumer_secret": "cs_teehaus",
        **extra,
    }
    (found,) = settings_from_mapping({"channels": [raw]}, env={}).channels
    assert isinstance(found, WooCommerceChannel)
    return found


def teapot_order(**changes: Any) -> dict[str, Any]:
    """Order 4750: two Blue Teapots (5.00 off) and a sample without SKU, for Jürgen in Wien."""
    order: dict[str, Any] = {
        "id": 4750,
        "parent_id": 0,
        "number": "4750",
        "status": "processing",
        "currency": "EUR",
        "date_created": "2026-11-22T11:00:00",
        "date_created_gmt": "2026-11-22T10:00:00",
        "date_modified": "2026-11-22T11:05:00",
        "date_modified_gmt": "2026-11-22T10:05:00",
        "discount_total": "5.00",
        "shipping_total": "4.90",
        "total": "78.70",
        "total_tax": "12.57",
        "customer_id": 42,
        "customer_note": "Bitte klingeln – 2. Stock",
        "billing": {
            "first_name": "Jürgen",
            "last_name": "Größ",
            "company": "",
            "address_1": "Mariahilfer Straße 1",
            "address_2": "",
            "city": "Wien",
            "state": "",
            "postcode": "1060",
            "country": "AT",
            "email": "juergen@example.com",
            "phone": "+4315550123",
        },
        "shipping": {
            "first_name": "Jürgen",
            "last_name": "Größ",
            "company": "Teehaus GmbH",
            "address_1": "Mariahilfer Straße 1",
            "address_2": "",
            "city": "Wien",
            "state": "",
            "postcode": "1060",
            "country": "AT",
        },
        "date_paid_gmt": "2026-11-22T10:01:00",
        "line_items": [
            {
                "id": 315,
                "name": "Blue Teapot",
                "product_id": 93,
                "variation_id": 0,
                "quantity": 2,
                "subtotal": "73.80",
                "total": "68.80",
                "sku": "BLUE-TEAPOT",
                "price": Decimal("34.4"),
            },
            {
                "id": 316,
                "name": "Probe: Sencha",
                "product_id": 94,
                "variation_id": 0,
                "quantity": 1,
                "subtotal": "0.00",
                "total": "0.00",
                "sku": "",
                "price": 0,
            },
        ],
        "refunds": [],
    }
    order.update(changes)
    return order


def body_of(order: dict[str, Any]) -> bytes:
    return orjson.dumps(order, default=float)


def headers_for(body: bytes, topic: str = "order.updated", secret: str = SECRET) -> dict[str, str]:
    return {
        "x-wc-webhook-topic": topic,
        "x-wc-webhook-resource": topic.split(".")[0],
        "x-wc-webhook-event": topic.split(".")[1],
        "x-wc-webhook-signature": wc.sign(secret, body),
        "x-wc-webhook-id": "7",
        "x-wc-webhook-delivery-id": "36e520ebabc2fa725092ff4a47acedf2",
        "x-wc-webhook-source": STORE + "/",
    }


# ---- signatures ---------------------------------------------------------------------------


def test_a_webhook_signed_with_the_store_secret_verifies() -> None:
    """X-WC-Webhook-Signature is base64 HMAC-SHA256 of the raw body."""
    body = body_of(teapot_order())

    assert CONNECTOR.verify(channel(), headers_for(body), body)


@pytest.mark.parametrize(
    "forgery",
    ["tampered body", "wrong secret", "no signature", "hex instead of base64"],
)
def test_forged_webhooks_do_not_verify(forgery: str) -> None:
    """Any change to the body, the key or the encoding of the signature is a forgery."""
    body = body_of(teapot_order())
    headers = headers_for(body)
    if forgery == "tampered body":
        body = body.replace(b'"78.70"', b'"0.01"')
    elif forgery == "wrong secret":
        headers = headers_for(body, secret="guessed")
    elif forgery == "no signature":
        del headers["x-wc-webhook-signature"]
    else:
        raw = base64.b64decode(headers["x-wc-webhook-signature"])
        headers["x-wc-webhook-signature"] = raw.hex()

    assert not CONNECTOR.verify(channel(), headers, body)


def test_the_activation_ping_is_acknowledged_and_nothing_is_stored() -> None:
    """WooCommerce pings `webhook_id=N` unsigned when a webhook is saved; 2xx activates it."""
    body = b"webhook_id=7"

    assert CONNECTOR.verify(channel(), {}, body)
    assert CONNECTOR.parse(channel(), {}, body).ack_only


def test_a_ping_shaped_body_with_a_bad_signature_is_still_a_forgery() -> None:
    """Only the unsigned ping is waved through; a signed body must verify."""
    assert not CONNECTOR.verify(channel(), {"x-wc-webhook-signature": "AAAA"}, b"webhook_id=7")


def test_a_webhook_from_another_store_is_refused() -> None:
    """X-WC-Webhook-Source, when sent, must be this channel's store."""
    body = body_of(teapot_order())
    headers = {**headers_for(body), "x-wc-webhook-source": "https://other.example/"}

    with pytest.raises(InboundError) as e:
        CONNECTOR.parse(channel(), headers, body)

    assert e.value.status == 401


def test_two_states_stamped_in_the_same_second_are_two_inbox_records() -> None:
    """Created and paid within one second: the paid state is not mistaken for a repeat."""
    created = teapot_order()
    paid = {**created, "status": "completed" if created["status"] != "completed" else "pending"}
    same_again = body_of(created)

    first = CONNECTOR.parse(channel(), headers_for(body_of(created)), body_of(created))
    second = CONNECTOR.parse(channel(), headers_for(body_of(paid)), body_of(paid))
    repeat = CONNECTOR.parse(channel(), headers_for(same_again), same_again)

    assert first.message_id != second.message_id
    assert first.message_id == repeat.message_id


def test_an_order_webhook_is_keyed_by_order_and_modified_time() -> None:
    """Push and pull of the same order state share one inbox key: id @ modified (UTC)."""
    body = body_of(teapot_order())

    msg = CONNECTOR.parse(channel(), headers_for(body), body)

    assert msg.message_id.startswith("4750@2026-11-22T10:05:00+00:00#")
    assert msg.topic == "order.updated"
    assert "36e520ebabc2fa725092ff4a47acedf2" in msg.headers


def test_a_deleted_order_is_recorded_but_carries_no_snapshot() -> None:
    """order.deleted sends only the id; the hub records the delivery and changes nothing."""
    body = b'{"id": 4750}'

    msg = CONNECTOR.parse(channel(), headers_for(body, "order.deleted"), body)

    assert msg.snapshot is None
    assert msg.message_id == "delivery:36e520ebabc2fa725092ff4a47acedf2"


# ---- the mapping --------------------------------------------------------------------------


def test_an_order_maps_with_exact_money_and_utc_times() -> None:
    """Amounts are Decimals as sent, GMT times become tz-aware UTC, names keep their umlauts."""
    snap = wc.map_order("woo-teehaus", teapot_order())

    assert snap is not None
    assert snap.external_id == "4750"
    assert snap.name == "4750"
    assert snap.currency == "EUR"
    assert snap.totals.total == Decimal("78.70")
    assert snap.totals.subtotal == Decimal("73.80")
    assert snap.totals.shipping == Decimal("4.90")
    assert snap.totals.discount == Decimal("5.00")
    assert snap.totals.tax == Decimal("12.57")
    assert snap.status is OrderStatus.PAID
    assert snap.payment_status is PaymentStatus.PAID
    assert snap.channel_updated_at == datetime(2026, 11, 22, 10, 5, tzinfo=UTC)
    assert snap.placed_at == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert snap.customer == Customer("42", "juergen@example.com", "Jürgen Größ", "+4315550123")
    assert snap.shipping_address == Address(
        name="Jürgen Größ",
        company="Teehaus GmbH",
        line1="Mariahilfer Straße 1",
        city="Wien",
        postal_code="1060",
        country_code="AT",
    )
    assert snap.note == "Bitte klingeln – 2. Stock"


def test_line_items_keep_discounts_and_an_empty_sku_stays_absent() -> None:
    """A line's discount is subtotal - total; "" as SKU is no SKU, never an empty string."""
    snap = wc.map_order("woo-teehaus", teapot_order())

    assert snap is not None
    teapot, sample = snap.lines
    assert (teapot.sku, teapot.quantity, teapot.unit_price) == ("BLUE-TEAPOT", 2, Decimal("36.9"))
    assert (teapot.discount, teapot.total) == (Decimal("5.00"), Decimal("68.80"))
    assert (teapot.external_id, teapot.product_id, teapot.variant_id) == ("315", "93", None)
    assert sample.sku is None
    assert sample.total == Decimal("0.00")


@pytest.mark.parametrize(
    ("platform", "status", "payment"),
    [
        ("pending", OrderStatus.PENDING, PaymentStatus.PENDING),
        ("failed", OrderStatus.PENDING, PaymentStatus.PENDING),
        ("on-hold", OrderStatus.PENDING, PaymentStatus.PENDING),
        ("processing", OrderStatus.PAID, PaymentStatus.PAID),
        ("completed", OrderStatus.COMPLETED, PaymentStatus.PAID),
        ("cancelled", OrderStatus.CANCELLED, PaymentStatus.PENDING),
        ("refunded", OrderStatus.PAID, PaymentStatus.REFUNDED),
    ],
)
def test_each_woocommerce_status_has_a_canonical_status(
    platform: str, status: OrderStatus, payment: PaymentStatus
) -> None:
    """The default table: a paid order is paid, a completed one completed, a refund refunds."""
    paid_at = "2026-11-22T10:01:00" if payment is not PaymentStatus.PENDING else None

    snap = wc.map_order("woo", teapot_order(status=platform, date_paid_gmt=paid_at))

    assert snap is not None
    assert (snap.status, snap.payment_status) == (status, payment)


def test_a_checkout_draft_is_not_an_order_yet() -> None:
    """checkout-draft (block checkout's cart) maps to nothing."""
    assert wc.map_order("woo", teapot_order(status="checkout-draft")) is None


def test_an_unmapped_status_is_refused_naming_it() -> None:
    """A plugin status like "wc-awaiting-shipment" needs a row in the channel's table."""
    with pytest.raises(MappingError, match="unknown status 'awaiting-shipment'") as e:
        wc.map_order("woo", teapot_order(status="awaiting-shipment"))

    assert e.value.path == "status"


def test_a_partial_refund_marks_the_payment_partially_refunded() -> None:
    """Refunds are listed with negative totals; less than the order total is partial."""
    order = teapot_order(refunds=[{"id": 801, "reason": "chipped lid", "total": "-10.00"}])

    snap = wc.map_order("woo", order)

    assert snap is not None
    assert snap.payment_status is PaymentStatus.PARTIALLY_REFUNDED


def test_a_guest_without_email_has_no_customer() -> None:
    """customer_id 0 and an empty billing block: missing data stays missing."""
    order = teapot_order(customer_id=0, billing={"first_name": "", "email": ""})

    snap = wc.map_order("woo", order)

    assert snap is not None
    assert snap.customer is None
    assert snap.billing_address is None


def test_an_order_id_beyond_two_to_the_53_keeps_every_digit() -> None:
    """Ids are read as exact integers, never through float."""
    body = body_of(teapot_order(id=BEYOND_FLOAT))

    msg = CONNECTOR.parse(channel(), headers_for(body), body)

    assert msg.snapshot is not None
    assert msg.snapshot.external_id == "9007199254740993"


def test_a_negative_line_subtotal_is_refused_with_its_path() -> None:
    """A negative amount is a broken payload; the error points at the field."""
    order = teapot_order()
    order["line_items"][0]["subtotal"] = "-73.80"
    body = body_of(order)

    with pytest.raises(InboundError) as e:
        CONNECTOR.parse(channel(), headers_for(body), body)

    assert (e.value.status, e.value.path) == (422, "line_items[0].subtotal")


def test_an_order_without_a_gmt_modified_time_is_refused() -> None:
    """Only the GMT time is unambiguous; the site-local one could be any zone."""
    order = teapot_order(date_modified_gmt=None)

    with pytest.raises(MappingError) as e:
        wc.map_order("woo", order)

    assert e.value.path == "date_modified_gmt"


# ---- pulling ------------------------------------------------------------------------------


WINDOW = Window(datetime(2026, 11, 22, 10, tzinfo=UTC), datetime(2026, 11, 22, 11, tzinfo=UTC))


def test_a_pull_request_asks_for_a_modified_window_oldest_first_with_basic_auth() -> None:
    """modified_after/_before in GMT (one second wider: the bounds are exclusive)."""
    request = CONNECTOR.pull_request(channel(), WINDOW, 3, 50)
    params = dict(request.params)

    assert request.url == STORE + "/wp-json/wc/v3/orders"
    assert params["modified_after"] == "2026-11-22T09:59:59"
    assert params["modified_before"] == "2026-11-22T11:00:01"
    assert params["dates_are_gmt"] == "true"
    assert (params["page"], params["per_page"]) == ("3", "50")
    assert dict(request.headers)["Authorization"] == "Basic " + base64.b64encode(
        b"ck_teehaus:cs_teehaus"
    ).decode("ascii")


def test_a_pulled_page_maps_its_orders_and_reads_the_page_count() -> None:
    """X-WP-TotalPages says how many pages the window has at this page size."""
    orders = [teapot_order(), teapot_order(id=4751, status="wc-unknown")]
    body = orjson.dumps(orders, default=float)

    page = CONNECTOR.pull_response(
        channel(), HttpResponse(200, {"x-wp-totalpages": "4", "x-wp-total": "7"}, body), 2
    )

    assert page.total_pages == 4
    good, bad = page.orders
    assert good.snapshot is not None
    assert good.message_id.startswith("4750@2026-11-22T10:05:00+00:00#")
    assert bad.snapshot is None
    assert bad.error is not None
    assert "wc-unknown" in bad.error


def test_too_many_requests_is_throttling_with_the_given_wait() -> None:
    """429 with Retry-After tells the engine exactly how long to back off."""
    with pytest.raises(Throttled) as e:
        CONNECTOR.pull_response(channel(), HttpResponse(429, {"retry-after": "12"}, b""), 50)

    assert e.value.retry_after == 12.0


def test_bad_credentials_stop_the_pull() -> None:
    """401 will not heal by waiting: it is a PullError for the operator."""
    body = b'{"code":"woocommerce_rest_cannot_view","message":"Sorry"}'

    with pytest.raises(PullError, match="401"):
        CONNECTOR.pull_response(channel(), HttpResponse(401, {}, body), 50)


def test_pulled_pages_are_not_changed_by_mapping() -> None:
    """Mapping reads the payload without modifying it (it is also kept raw in the inbox)."""
    order = teapot_order()
    before = copy.deepcopy(order)

    wc.map_order("woo", order)

    assert order == before
