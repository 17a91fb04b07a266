"""Shopify: webhook signatures and the mapping of an Admin REST order to an `OrderSnapshot`.

Shopify delivers the whole order resource with every order topic, so one mapping serves
them all. The mapping is strict about what it reads (a wrong amount is worse than a
refused webhook) and never invents what Shopify leaves out.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, Inexact, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from ordersync.domain.order_status import PAYMENT_SECURED, OrderStatus, PaymentStatus
from ordersync.domain.orders import Address, Customer, OrderLine, OrderSnapshot, Totals
from ordersync.service.pull import (
    HttpRequest,
    HttpResponse,
    PulledOrder,
    PullError,
    PullPage,
    Throttled,
    Window,
)

if TYPE_CHECKING:
    from ordersync.config import ShopifyChannel

TOPICS: frozenset[str] = frozenset(
    {
        "orders/create",
        "orders/updated",
        "orders/paid",
        "orders/cancelled",
        "orders/fulfilled",
        "orders/partially_fulfilled",
    }
)

# Shopify's financial_status, as the hub's payment states. "expired" (an authorization
# that lapsed uncaptured), null and values Shopify may add later map to PENDING: no money
# is secured, and unlike VOIDED it is not final, so a later capture or "mark as paid"
# can still move the order on.
PAYMENT_STATUSES: dict[str, PaymentStatus] = {
    "pending": PaymentStatus.PENDING,
    "authorized": PaymentStatus.AUTHORIZED,
    "partially_paid": PaymentStatus.PARTIALLY_PAID,
    "paid": PaymentStatus.PAID,
    "partially_refunded": PaymentStatus.PARTIALLY_REFUNDED,
    "refunded": PaymentStatus.REFUNDED,
    "voided": PaymentStatus.VOIDED,
}

# Amounts as Shopify writes them in strings: "199.00", "-5.00", "0".
_AMOUNT = re.compile(r"-?[0-9]+(\.[0-9]+)?")

# Line arithmetic traps instead of rounding: a total that needs rounding is a bug to see.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact, InvalidOperation])


class MappingError(ValueError):
    """The payload cannot be mapped; `path` points at the offending field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class InexactNumber(MappingError):
    """A float where an exact amount or id belongs: re-parse the body exactly (parse_body)."""


# ---- signatures ----------------------------------------------------------------------------


def sign(secret: str, body: bytes) -> str:
    """The X-Shopify-Hmac-Sha256 value for `body`: base64 of its HMAC-SHA256."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_hmac(secret: str, body: bytes, signature: str | None) -> bool:
    """True only if `signature` is Shopify's signature of exactly these bytes."""
    # With an empty secret anyone can compute the signature, so nothing is authentic.
    if not secret or not isinstance(signature, str):
        return False
    try:
        given = signature.encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(sign(secret, body).encode("ascii"), given)


# ---- parsing -------------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def parse_body(body: bytes) -> dict[str, Any]:
    """The webhook body as a dict, with every id digit and amount digit kept.

    Floats become Decimal and integers stay int, so ids beyond 2^53 and amounts such as
    199.00 arrive exactly as sent.
    """
    try:
        data = json.loads(
            body.decode("utf-8"), parse_float=Decimal, parse_constant=_refuse_constant
        )
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise MappingError("$", f"not a UTF-8 JSON document ({exc})") from None
    if not isinstance(data, dict):
        raise MappingError("$", f"expected a JSON object, got {type(data).__name__}")
    return data


# ---- small readers: each takes the value and its path for the error message ------------


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _object(value: Any, path: str) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise MappingError(path, f"expected an object, got {type(value).__name__}")
    return value


def _required_object(value: Any, path: str) -> Mapping[str, Any]:
    obj = _object(value, path)
    if obj is None:
        raise MappingError(path, "missing")
    return obj


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise MappingError(path, f"expected a list, got {type(value).__name__}")
    return value


def _text(value: Any, path: str) -> str | None:
    """A string as sent (non-ASCII untouched); empty means absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MappingError(path, f"expected a string, got {type(value).__name__}")
    return value


def _id(value: Any, path: str) -> str | None:
    # Ids are 64-bit: only an exact int or a string keeps all digits, never a float.
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        raise InexactNumber(path, f"float id {value!r}; parse the body with parse_body")
    raise MappingError(path, f"expected an integer or string id, got {value!r}")


def _money(value: Any, path: str) -> Decimal:
    """An exact amount, scale kept as sent ("199.00" stays Decimal("199.00"))."""
    if isinstance(value, Decimal) and value.is_finite():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, str) and _AMOUNT.fullmatch(value):
        return Decimal(value)
    if isinstance(value, float):
        # The JSON was parsed without parse_body; the amount may already have lost digits.
        raise InexactNumber(path, f"float amount {value!r}; parse the body with parse_body")
    raise MappingError(path, f"expected an amount, got {value!r}")


def _optional_money(value: Any, path: str) -> Decimal | None:
    return None if value is None else _money(value, path)


def _time(value: Any, path: str) -> datetime:
    """An RFC 3339 timestamp with its offset, converted to UTC."""
    if not isinstance(value, str):
        raise MappingError(path, f"expected a timestamp, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MappingError(path, f"not an ISO 8601 timestamp: {value!r}") from None
    # A wall-clock time without an offset could be any of 24 instants.
    if parsed.utcoffset() is None:
        raise MappingError(path, f"timestamp has no UTC offset: {value!r}")
    return parsed.astimezone(UTC)


def _quantity(value: Any, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MappingError(path, f"expected an integer quantity, got {value!r}")
    if value < 0:
        raise MappingError(path, f"quantity must not be negative, got {value}")
    return value


def _required(obj: Mapping[str, Any], key: str, path: str = "") -> Any:
    value = obj.get(key)
    if value is None or value == "":
        raise MappingError(_at(path, key), "missing")
    return value


def _required_money(obj: Mapping[str, Any], key: str, path: str = "") -> Decimal:
    return _money(_required(obj, key, path), _at(path, key))


# ---- the order -----------------------------------------------------------------------------


def map_order(
    channel_id: str,
    payload: dict[str, Any],
    payments: Mapping[str, PaymentStatus] | None = None,
) -> OrderSnapshot:
    """The canonical snapshot of a Shopify order resource (any order webhook topic).

    `payments` replaces the financial_status table (a channel's configured overrides).
    """
    external_id = _id(_required(payload, "id"), "id")
    payment = _payment_status(
        payload.get("financial_status"), "financial_status", payments or PAYMENT_STATUSES
    )
    lines = _list(_required(payload, "line_items"), "line_items")
    return OrderSnapshot(
        channel_id=channel_id,
        external_id=external_id,
        name=_text(payload.get("name"), "name"),
        currency=_currency(_required(payload, "currency"), "currency"),
        totals=_totals(payload),
        lines=tuple(_line(line, f"line_items[{i}]") for i, line in enumerate(lines)),
        status=_status(payload, payment),
        payment_status=payment,
        customer=_customer(payload),
        shipping_address=_address(payload.get("shipping_address"), "shipping_address"),
        billing_address=_address(payload.get("billing_address"), "billing_address"),
        note=_text(payload.get("note"), "note"),
        placed_at=_placed_at(payload),
        channel_updated_at=_time(_required(payload, "updated_at"), "updated_at"),
    )


def _placed_at(payload: Mapping[str, Any]) -> datetime | None:
    # processed_at differs from created_at only for imported orders; either is the placing.
    key = "created_at" if payload.get("created_at") is not None else "processed_at"
    value = payload.get(key)
    return None if value is None else _time(value, key)


def _currency(value: Any, path: str) -> str:
    if not isinstance(value, str) or len(value) != 3 or not value.isalpha():
        raise MappingError(path, f"expected an ISO 4217 code, got {value!r}")
    return value


def _payment_status(value: Any, path: str, table: Mapping[str, PaymentStatus]) -> PaymentStatus:
    if value is not None and not isinstance(value, str):
        raise MappingError(path, f"expected a string, got {value!r}")
    return table.get(value or "", PaymentStatus.PENDING)


def _status(payload: Mapping[str, Any], payment: PaymentStatus) -> OrderStatus:
    # Only what Shopify can know; on-hold and allocated are decided by the hub.
    if payload.get("cancelled_at"):
        return OrderStatus.CANCELLED
    if payload.get("fulfillment_status") == "fulfilled":
        return OrderStatus.SHIPPED
    if payment in PAYMENT_SECURED:
        return OrderStatus.PAID
    return OrderStatus.PENDING


def _totals(payload: Mapping[str, Any]) -> Totals:
    # The un-prefixed amounts are in the shop currency, the one `currency` names.
    return Totals(
        subtotal=_optional_money(payload.get("subtotal_price"), "subtotal_price"),
        shipping=_shipping(payload),
        tax=_optional_money(payload.get("total_tax"), "total_tax"),
        discount=_optional_money(payload.get("total_discounts"), "total_discounts"),
        total=_required_money(payload, "total_price"),
    )


def _shipping(payload: Mapping[str, Any]) -> Decimal | None:
    price_set = _object(payload.get("total_shipping_price_set"), "total_shipping_price_set")
    if price_set is not None:
        shop_money = _required_object(
            price_set.get("shop_money"), "total_shipping_price_set.shop_money"
        )
        return _required_money(shop_money, "amount", "total_shipping_price_set.shop_money")
    # Older payloads: add up the shipping lines. No lines at all states no amount.
    return _sum_of(
        _list(payload.get("shipping_lines") or [], "shipping_lines"), "price", "shipping_lines"
    )


def _sum_of(items: list[Any], key: str, path: str) -> Decimal | None:
    """The exact sum of `key` over a list of objects; None for an empty list."""
    amounts = [
        _required_money(_required_object(item, f"{path}[{i}]"), key, f"{path}[{i}]")
        for i, item in enumerate(items)
    ]
    return functools.reduce(_EXACT.add, amounts) if amounts else None


def _line(value: Any, path: str) -> OrderLine:
    item = _required_object(value, path)
    unit_price = _required_money(item, "price", path)
    quantity = _quantity(_required(item, "quantity", path), _at(path, "quantity"))
    discount = _line_discount(item, path)
    return OrderLine(
        sku=_text(item.get("sku"), _at(path, "sku")),
        name=_text(item.get("name"), _at(path, "name"))
        or _text(item.get("title"), _at(path, "title")),
        quantity=quantity,
        unit_price=unit_price,
        discount=discount,
        total=_EXACT.subtract(_EXACT.multiply(unit_price, quantity), discount),
        external_id=_id(item.get("id"), _at(path, "id")),
        product_id=_id(item.get("product_id"), _at(path, "product_id")),
        variant_id=_id(item.get("variant_id"), _at(path, "variant_id")),
    )


def _line_discount(item: Mapping[str, Any], path: str) -> Decimal:
    """What the line's discounts took off, across all its units.

    Shopify fills the legacy total_discount only where it was set explicitly (draft orders,
    scripts, the API) and points to discount_allocations instead; a discount code shows up
    in the allocations with total_discount "0.00", so the allocations win when present.
    """
    where = _at(path, "discount_allocations")
    allocated = _sum_of(_list(item.get("discount_allocations") or [], where), "amount", where)
    if allocated is not None:
        return allocated
    total_discount = item.get("total_discount")
    if total_discount is not None:
        return _money(total_discount, _at(path, "total_discount"))
    return Decimal(0)


def _customer(payload: Mapping[str, Any]) -> Customer | None:
    """The buyer; a guest (or POS) order has no customer record, maybe an email."""
    order_email = _text(payload.get("email"), "email") or _text(
        payload.get("contact_email"), "contact_email"
    )
    record = _object(payload.get("customer"), "customer")
    if record is None:
        return None if order_email is None else Customer(email=order_email)
    parts = [
        _text(record.get("first_name"), "customer.first_name"),
        _text(record.get("last_name"), "customer.last_name"),
    ]
    return Customer(
        external_id=_id(record.get("id"), "customer.id"),
        email=_text(record.get("email"), "customer.email") or order_email,
        name=" ".join(p for p in parts if p) or None,
        phone=_text(record.get("phone"), "customer.phone"),
    )


def _address(value: Any, path: str) -> Address | None:
    raw = _object(value, path)
    if raw is None:
        return None

    def text(key: str) -> str | None:
        return _text(raw.get(key), _at(path, key))

    names = [text("first_name"), text("last_name")]
    address = Address(
        name=text("name") or " ".join(n for n in names if n) or None,
        company=text("company"),
        line1=text("address1"),
        line2=text("address2"),
        city=text("city"),
        region=text("province_code") or text("province"),
        postal_code=text("zip"),
        country_code=text("country_code"),
        phone=text("phone"),
    )
    return None if address == Address() else address


def decode_order(
    channel_id: str, body: bytes, payments: Mapping[str, PaymentStatus] | None = None
) -> OrderSnapshot:
    """`map_order(channel_id, parse_body(body))`, five times faster in the usual case.

    Shopify sends amounts as strings and ids as 64-bit integers, which orjson reads exactly.
    Only when that fails (an integer beyond 64 bits, a float amount, bad JSON) do we take the
    exact stdlib path, so the result is always the same as the slow path's.
    """
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return map_order(channel_id, parse_body(body), payments)
    if not isinstance(payload, dict):
        return map_order(channel_id, parse_body(body), payments)
    try:
        return map_order(channel_id, payload, payments)
    except InexactNumber:
        return map_order(channel_id, parse_body(body), payments)


# ---- pull: the Admin REST orders endpoint (sans-I/O; the engine in service/pull.py sends) ---

# GET /admin/api/{version}/orders.json: cursor pagination through the Link header (rel
# "next" / "previous", a `page_info` token that carries the filters, so a request with it may
# add only `limit` and `fields`), at most 250 orders a page, REST calls counted in a leaky
# bucket reported as X-Shopify-Shop-Api-Call-Limit: "used/size" (40 leaking 2 a second on
# the standard plan; larger plans scale both), and 429 with Retry-After once it overflows.
ORDERS_PATH = "/admin/api/{version}/orders.json"
MAX_LIMIT = 250
# Once the call bucket is this full, wait until it has drained to half before the next call.
SLOW_DOWN_AT = 0.8

_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?([A-Za-z]+)"?')


def orders_url(channel: ShopifyChannel) -> str:
    return channel.admin_base + ORDERS_PATH.format(version=channel.api_version)


def _auth(channel: ShopifyChannel) -> tuple[tuple[str, str], ...]:
    token = channel.access_token
    if token is None:
        raise PullError(f"channel {channel.id!r} has no access_token to pull with")
    return (("X-Shopify-Access-Token", token.get_secret_value()), ("Accept", "application/json"))


def _shop_time(t: datetime, *, up: bool) -> str:
    """Whole seconds in UTC (Shopify keeps whole seconds); rounded outwards, since the
    bounds are inclusive and a wider window only re-reads what the inbox dedupes."""
    t = t.astimezone(UTC)
    whole = t.replace(microsecond=0)
    if up and whole < t:
        whole += timedelta(seconds=1)
    return whole.isoformat()


def pull_request(channel: ShopifyChannel, window: Window, page: int, page_size: int) -> HttpRequest:
    """The first page of the orders updated in `window`, oldest update first. Later pages
    are the `next_request` of the page before (cursor pagination has no page numbers)."""
    if page != 1:
        raise PullError("Shopify pages by cursor (Link header); only page 1 is addressable")
    return HttpRequest(
        "GET",
        orders_url(channel),
        params=(
            ("status", "any"),
            ("updated_at_min", _shop_time(window.start, up=False)),
            ("updated_at_max", _shop_time(window.end, up=True)),
            ("order", "updated_at asc"),
            ("limit", str(min(page_size, MAX_LIMIT))),
        ),
        headers=_auth(channel),
    )


def parse_link(header: str | None) -> dict[str, str]:
    """A Link header as {rel: url}, e.g. {"previous": ..., "next": ...}."""
    if not header:
        return {}
    return {rel.lower(): url for url, rel in _LINK.findall(header)}


def page_info(url: str) -> str | None:
    """The page_info token of a Link URL, exactly as given."""
    values = [
        v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True) if k == "page_info"
    ]
    return values[0] if values and values[0] else None


def next_request(
    channel: ShopifyChannel, response: HttpResponse, page_size: int
) -> HttpRequest | None:
    """The request for the page after this response, or None on the last page. Sent to the
    configured shop (only the token is taken from the link, never its host)."""
    url = parse_link(response.headers.get("link")).get("next")
    token = page_info(url) if url else None
    if token is None:
        return None
    return HttpRequest(
        "GET",
        orders_url(channel),
        params=(("limit", str(min(page_size, MAX_LIMIT))), ("page_info", token)),
        headers=_auth(channel),
    )


def call_limit_pause(header: str | None) -> float:
    """Seconds to wait after a call given X-Shopify-Shop-Api-Call-Limit ("used/size"): none
    while below SLOW_DOWN_AT, else until the bucket has drained to half (it leaks size/20
    calls a second: 40 at 2/s, 80 at 4/s, 400 at 20/s)."""
    if not header:
        return 0.0
    used, _, size = header.strip().partition("/")
    if not (used.isdigit() and size.isdigit()) or int(size) == 0:
        return 0.0
    n, cap = int(used), int(size)
    if n < SLOW_DOWN_AT * cap:
        return 0.0
    return (n - cap / 2) / (cap / 20)


def _raise_for_status(response: HttpResponse) -> None:
    if response.status == 200:
        return
    if response.status == 429 or response.status >= 500:
        after = response.headers.get("retry-after")
        try:
            delay = float(after) if after else None
        except ValueError:
            delay = None
        raise Throttled(f"Shopify answered {response.status}", delay)
    detail = response.body[:300].decode("utf-8", "replace")
    raise PullError(f"Shopify answered {response.status}: {detail}")


def pull_response(
    channel: ShopifyChannel,
    response: HttpResponse,
    page_size: int,
    payments: Mapping[str, PaymentStatus] | None = None,
) -> PullPage:
    """One page of orders, each the same resource the webhooks carry (mapped alike)."""
    _raise_for_status(response)
    try:
        pulled = _pulled_orders(channel.id, response.body, payments, exact=False)
    except (orjson.JSONDecodeError, InexactNumber):
        # An id beyond 64 bits or a float amount: read the whole page exactly.
        try:
            pulled = _pulled_orders(channel.id, response.body, payments, exact=True)
        except MappingError as e:
            raise PullError(f"the orders endpoint answered an unreadable page: {e}") from None
    following = next_request(channel, response, page_size)
    return PullPage(
        pulled,
        1 if pulled or following else 0,
        next_request=following,
        slow_down=call_limit_pause(response.headers.get("x-shopify-shop-api-call-limit")),
    )


def _pulled_orders(
    channel_id: str, body: bytes, payments: Mapping[str, PaymentStatus] | None, *, exact: bool
) -> tuple[PulledOrder, ...]:
    data = parse_body(body) if exact else orjson.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("orders"), list):
        raise PullError('the orders endpoint did not answer {"orders": [...]}')
    return tuple(_pulled(channel_id, o, payments) for o in data["orders"])


def _pulled(
    channel_id: str, order: Any, payments: Mapping[str, PaymentStatus] | None
) -> PulledOrder:
    raw = _raw(order)
    external_id, modified = "?", None
    try:
        if not isinstance(order, dict):
            raise MappingError("$", "expected an order object")
        external_id = _id(_required(order, "id"), "id") or "?"
        modified = _time(_required(order, "updated_at"), "updated_at")
        return PulledOrder(external_id, modified, map_order(channel_id, order, payments), raw)
    except InexactNumber:
        raise  # a float: the caller reads the page again exactly (parse_body)
    except MappingError as e:
        # Kept with its id and time when those read, so the inbox shows what was refused.
        return PulledOrder(external_id, modified, None, raw, error=str(e))


def _raw(order: Any) -> bytes:
    try:
        return orjson.dumps(order, default=str)
    except TypeError:  # an integer beyond 64 bits (orjson.JSONEncodeError is a TypeError)
        return json.dumps(order, default=str, ensure_ascii=False).encode()
