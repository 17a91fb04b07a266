"""WooCommerce: webhook signatures, the REST v3 order resource, and pull through
`GET /wp-json/wc/v3/orders`.

Facts of the wire format this relies on:
- a webhook is signed with `X-WC-Webhook-Signature`: base64 of HMAC-SHA256 of the raw body,
  keyed with the webhook's secret; `X-WC-Webhook-Topic` (`order.created`, ...),
  `-Resource`, `-Event`, `-ID`, `-Delivery-ID` and `-Source` (the store URL) come with it;
- when a webhook is saved, WooCommerce first POSTs the form body `webhook_id=N` without a
  signature and activates the webhook only if that is answered 2xx;
- order times come twice: site-local (`date_modified`) and GMT without an offset
  (`date_modified_gmt`); only the GMT ones are read;
- amounts are decimal strings, except the line `price`, which is a JSON number;
- the orders list takes `modified_after`/`modified_before` (with `dates_are_gmt=true`),
  `page`, `per_page` (at most 100) and answers `X-WP-Total` / `X-WP-TotalPages`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, Inexact
from typing import Any

import orjson

from ordersync.adapters.channels import readers as r
from ordersync.adapters.channels.base import (
    Capability,
    HttpRequest,
    HttpResponse,
    InboundError,
    InboundMessage,
    MappingError,
    PulledOrder,
    PullError,
    PullPage,
    StatusRule,
    StatusTable,
    Throttled,
    Window,
    pulled_order,
    statuses_for,
)
from ordersync.adapters.channels.shopify import parse_body
from ordersync.config import ChannelConfig, WooCommerceChannel
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.orders import Address, Customer, OrderLine, OrderSnapshot, Totals
from ordersync.service.pull import state_message_id

ORDER_TOPICS = frozenset({"order.created", "order.updated", "order.restored"})
ORDERS_PATH = "/wp-json/wc/v3/orders"
MAX_PER_PAGE = 100
_PING = re.compile(rb"webhook_id=[0-9]+")
_AUDIT_HEADERS = (
    "x-wc-webhook-topic",
    "x-wc-webhook-resource",
    "x-wc-webhook-event",
    "x-wc-webhook-id",
    "x-wc-webhook-delivery-id",
    "x-wc-webhook-source",
)

S, P = OrderStatus, PaymentStatus
DEFAULT_STATUSES = StatusTable(
    {
        "pending": StatusRule(S.PENDING, P.PENDING),  # awaiting payment
        "failed": StatusRule(S.PENDING, P.PENDING),  # payment failed; the buyer may retry
        "on-hold": StatusRule(S.PENDING),  # awaiting a manual payment (bank transfer)
        "processing": StatusRule(S.PAID),  # paid, to be fulfilled
        # Fulfilled and closed by the merchant (the hub's own write-back sets it after
        # shipping). A channel may move an order straight to completed (CHANNEL_TRANSITIONS).
        "completed": StatusRule(S.COMPLETED),
        "cancelled": StatusRule(S.CANCELLED),
        # Fully refunded: the payment says so; the status does not go back.
        "refunded": StatusRule(S.PAID, P.REFUNDED),
        "checkout-draft": StatusRule(S.PENDING, P.PENDING, ignore=True),  # a cart, not an order
    }
)


# ---- signatures -------------------------------------------------------------------------


def sign(secret: str, body: bytes) -> str:
    """The X-WC-Webhook-Signature of `body`: base64 of its HMAC-SHA256."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_signature(secret: str, body: bytes, signature: str | None) -> bool:
    if not secret or not isinstance(signature, str):
        return False
    try:
        given = signature.strip().encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(sign(secret, body).encode("ascii"), given)


def is_ping(body: bytes) -> bool:
    return _PING.fullmatch(body.strip()) is not None


# ---- the order --------------------------------------------------------------------------


def map_order(
    channel_id: str, payload: Mapping[str, Any], statuses: StatusTable = DEFAULT_STATUSES
) -> OrderSnapshot | None:
    """The canonical snapshot of a REST v3 order; None for a status the table ignores."""
    rule = statuses.rule(payload.get("status"), "status")
    if rule.ignore:
        return None
    lines = [
        _line(item, f"line_items[{i}]")
        for i, item in enumerate(r.items(payload.get("line_items"), "line_items"))
    ]
    total = r.money(r.required(payload, "total"), "total")
    subtotals = [_line_subtotal(line) for line in lines]
    return OrderSnapshot(
        channel_id=channel_id,
        external_id=r.ident(r.required(payload, "id"), "id"),
        name=r.text(payload.get("number"), "number"),
        currency=r.currency(r.required(payload, "currency"), "currency"),
        totals=Totals(
            subtotal=functools.reduce(r.EXACT.add, subtotals) if subtotals else None,
            shipping=r.optional_money(payload.get("shipping_total"), "shipping_total"),
            tax=r.optional_money(payload.get("total_tax"), "total_tax"),
            discount=r.optional_money(payload.get("discount_total"), "discount_total"),
            total=total,
        ),
        lines=tuple(lines),
        status=rule.status,
        payment_status=rule.payment or _payment(payload, total),
        customer=_customer(payload),
        shipping_address=_address(payload.get("shipping"), "shipping"),
        billing_address=_address(payload.get("billing"), "billing"),
        note=r.text(payload.get("customer_note"), "customer_note"),
        placed_at=_gmt(payload.get("date_created_gmt"), "date_created_gmt"),
        channel_updated_at=modified_at(payload),
    )


def modified_at(payload: Mapping[str, Any]) -> datetime:
    found = _gmt(r.required(payload, "date_modified_gmt"), "date_modified_gmt")
    assert found is not None
    return found


def _gmt(value: Any, path: str) -> datetime | None:
    return None if value is None or value == "" else r.timestamp(value, path, naive_zone=UTC)


def _line(value: Any, path: str) -> OrderLine:
    item = r.required_obj(value, path)
    qty = r.quantity(r.required(item, "quantity", path), r.at(path, "quantity"))
    total = r.money(r.required(item, "total", path), r.at(path, "total"))
    subtotal_raw = item.get("subtotal")
    subtotal = (
        total if subtotal_raw in (None, "") else r.money(subtotal_raw, r.at(path, "subtotal"))
    )
    return OrderLine(
        sku=r.text(item.get("sku"), r.at(path, "sku")),
        name=r.text(item.get("name"), r.at(path, "name")),
        quantity=qty,
        unit_price=_unit_price(subtotal, qty, item.get("price"), path),
        discount=subtotal - total,
        total=total,
        external_id=r.ident(item.get("id"), r.at(path, "id")),
        product_id=r.ident(item.get("product_id"), r.at(path, "product_id")),
        variant_id=r.ident(item.get("variation_id"), r.at(path, "variation_id")),
    )


def _line_subtotal(line: OrderLine) -> Decimal:
    return line.total + line.discount


def _unit_price(subtotal: Decimal, qty: int, price: Any, path: str) -> Decimal:
    if qty == 0:
        return subtotal
    try:
        return r.EXACT.divide(subtotal, qty)
    except Inexact:
        # 10.00 for three: WooCommerce's own unit `price` then, rounded as it shows it.
        if price is None:
            return subtotal.__truediv__(qty).quantize(Decimal("0.000001"))
        return r.money(price, r.at(path, "price"))


def _payment(payload: Mapping[str, Any], total: Decimal) -> PaymentStatus:
    paid = payload.get("date_paid_gmt") not in (None, "")
    refunded = Decimal(0)
    for i, refund in enumerate(r.items(payload.get("refunds"), "refunds")):
        entry = r.required_obj(refund, f"refunds[{i}]")
        # Refunds are listed as negative totals ("-5.00").
        refunded += abs(
            r.money(
                r.required(entry, "total", f"refunds[{i}]"), f"refunds[{i}].total", negative=True
            )
        )
    if refunded > 0:
        return P.REFUNDED if refunded >= total else P.PARTIALLY_REFUNDED
    return P.PAID if paid else P.PENDING


def _customer(payload: Mapping[str, Any]) -> Customer | None:
    """The buyer; a guest checkout has customer_id 0, maybe only a billing email."""
    billing = r.obj(payload.get("billing"), "billing") or {}
    names = [r.text(billing.get(k), f"billing.{k}") for k in ("first_name", "last_name")]
    customer = Customer(
        external_id=r.ident(payload.get("customer_id"), "customer_id"),
        email=r.text(billing.get("email"), "billing.email"),
        name=" ".join(n for n in names if n) or None,
        phone=r.text(billing.get("phone"), "billing.phone"),
    )
    return None if customer == Customer() else customer


def _address(value: Any, path: str) -> Address | None:
    raw = r.obj(value, path)
    if raw is None:
        return None

    def text(key: str) -> str | None:
        return r.text(raw.get(key), r.at(path, key))

    names = [text("first_name"), text("last_name")]
    address = Address(
        name=" ".join(n for n in names if n) or None,
        company=text("company"),
        line1=text("address_1"),
        line2=text("address_2"),
        city=text("city"),
        region=text("state"),
        postal_code=text("postcode"),
        country_code=text("country"),
        phone=text("phone"),
    )
    return None if address == Address() else address


# ---- the connector ----------------------------------------------------------------------


class WooCommerceConnector:
    kind = "woocommerce"
    capabilities = frozenset({Capability.PUSH, Capability.PULL})
    default_statuses = DEFAULT_STATUSES

    def verify(self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes) -> bool:
        assert isinstance(channel, WooCommerceChannel)
        if is_ping(body) and "x-wc-webhook-signature" not in headers:
            return True  # the unsigned activation ping: answered, never stored
        secret = channel.secret.get_secret_value()
        return verify_signature(secret, body, headers.get("x-wc-webhook-signature"))

    def parse(
        self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes
    ) -> InboundMessage:
        assert isinstance(channel, WooCommerceChannel)
        kept = orjson.dumps({h: headers[h] for h in _AUDIT_HEADERS if h in headers}).decode()
        if is_ping(body):
            return InboundMessage(body.decode("ascii"), "ping", None, kept, ack_only=True)
        source = headers.get("x-wc-webhook-source")
        if source and source.rstrip("/") != channel.store_url.rstrip("/"):
            raise InboundError(401, "unknown_store", "X-WC-Webhook-Source is not this store")
        topic = headers.get("x-wc-webhook-topic")
        if not topic:
            raise InboundError(400, "missing_header", "X-WC-Webhook-Topic is required")
        delivery = headers.get("x-wc-webhook-delivery-id")
        try:
            payload = parse_body(body)
            if topic not in ORDER_TOPICS:
                # order.deleted carries {"id": N} only; other resources are not orders.
                if not delivery:
                    raise InboundError(
                        400, "missing_header", "X-WC-Webhook-Delivery-ID is required"
                    )
                return InboundMessage(f"delivery:{delivery}", topic, None, kept)
            snapshot = map_order(channel.id, payload, statuses_for(DEFAULT_STATUSES, channel))
            external_id = r.ident(r.required(payload, "id"), "id")
            # Keyed by the order's state, not by the delivery, so the same state pushed and
            # pulled is one inbox record.
            message_id = state_message_id(str(external_id), modified_at(payload), snapshot)
        except MappingError as e:
            raise InboundError(422, "invalid_payload", str(e), path=e.path) from None
        return InboundMessage(message_id, topic, snapshot, kept)

    def pull_request(
        self, channel: ChannelConfig, window: Window, page: int, page_size: int
    ) -> HttpRequest:
        assert isinstance(channel, WooCommerceChannel)
        key, secret = channel.consumer_key, channel.consumer_secret
        assert key is not None
        assert secret is not None
        credentials = f"{key.get_secret_value()}:{secret.get_secret_value()}"
        second = timedelta(seconds=1)  # the bounds are exclusive; the overlap dedupes
        return HttpRequest(
            "GET",
            channel.store_url.rstrip("/") + ORDERS_PATH,
            params=(
                ("modified_after", _wc_time(window.start - second)),
                ("modified_before", _wc_time(window.end + second)),
                ("dates_are_gmt", "true"),
                ("orderby", "modified"),
                ("order", "asc"),
                ("page", str(page)),
                ("per_page", str(min(page_size, MAX_PER_PAGE))),
            ),
            headers=(
                ("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode()),
                ("Accept", "application/json"),
            ),
        )

    def pull_response(
        self, channel: ChannelConfig, response: HttpResponse, page_size: int
    ) -> PullPage:
        _raise_for_status(response)
        try:
            data = orjson.loads(response.body) if response.body.strip() else []
            if not isinstance(data, list):
                raise PullError("the orders endpoint did not answer a JSON list")
            exact = _exact_list(response.body)
            table = statuses_for(DEFAULT_STATUSES, channel)
            pulled = tuple(_pulled(channel.id, o, table) for o in exact)
        except orjson.JSONDecodeError as e:
            raise PullError(f"the orders endpoint answered invalid JSON: {e}") from None
        pages = response.headers.get("x-wp-totalpages")
        total_pages = int(pages) if pages and pages.isdigit() else (1 if pulled else 0)
        count = response.headers.get("x-wp-total")
        return PullPage(pulled, total_pages, int(count) if count and count.isdigit() else None)


def _exact_list(body: bytes) -> list[Any]:
    import json

    data = json.loads(body.decode("utf-8"), parse_float=Decimal)
    assert isinstance(data, list)
    return data


def _pulled(channel_id: str, order: Any, table: StatusTable) -> PulledOrder:
    return pulled_order(
        order,
        "$",
        ident=lambda o, _: r.ident(r.required(o, "id"), "id") or "?",
        modified=lambda o, _: modified_at(o),
        snapshot=lambda o, _: map_order(channel_id, o, table),
    )


def _raise_for_status(response: HttpResponse) -> None:
    if response.status == 200:
        return
    if response.status in (429, 500, 502, 503, 504):
        after = response.headers.get("retry-after")
        raise Throttled(
            f"WooCommerce answered {response.status}",
            float(after) if after and after.replace(".", "", 1).isdigit() else None,
        )
    detail = response.body[:300].decode("utf-8", "replace")
    raise PullError(f"WooCommerce answered {response.status}: {detail}")


def _wc_time(t: datetime) -> str:
    return t.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat()
