"""Shipment write-back, sans-I/O: the platform calls that tell a sales channel an order has
shipped (carrier and tracking number), and the readers of their answers.

Each platform has a builder per call (`(method, url, headers, body)` as a `WritebackRequest`)
and a reader that accepts the answer or raises `WritebackFailed`, saying whether trying
again can help. A write-back that takes several calls is a small conversation: a generator
that yields requests and receives responses (`conversation_for(kind)`), so the sender does
the HTTP and the platform rules stay here, tested with plain bytes.

This module holds what every platform shares (the event, the request, the failure) and the
web shops; the China platforms (Taobao TOP, JD JOS, Douyin) are in `writeback_cn`, whose
names this module re-exports. The calls (each platform's documented API):

* Shopify Admin REST: `GET /admin/api/{v}/orders/{id}/fulfillment_orders.json`, then
  `POST /admin/api/{v}/fulfillments.json` with `line_items_by_fulfillment_order` (the open
  fulfillment orders, all their lines; for a partial parcel its lines as
  `fulfillment_order_line_items`) and `tracking_info {number, company}`;
  `X-Shopify-Access-Token`. An order whose fulfillment orders are all closed is already
  fulfilled: nothing is sent (so a retry after a lost answer does not fulfil twice). A
  parcel or a re-booking first reads `orders/{id}/fulfillments.json`: our tracking number
  there means done, a replaced one is changed with `fulfillments/{id}/update_tracking.json`.
* WooCommerce REST v3: `GET /wp-json/wc/v3/orders/{id}/notes` (a note naming the tracking
  number means an earlier attempt got this far), `POST .../orders/{id}/notes`
  `{note, customer_note: true}` (a parcel's lines, a re-booking's replaced number), then
  `PUT .../orders/{id}` `{status: "completed"}` once the order has shipped in full; HTTP
  Basic with the consumer key and secret.

The event: `shipment.created` data with `external_id`, `tracking_number`, `carrier_code`
and `id`; optionally `lines` ([{external_id (the platform's line id), quantity, sku}], a
partial parcel), `completes_order` (false while lines remain) and `replaces`
([{tracking_number}], the shipments a re-booking supersedes).

Failures: HTTP 408, 429 and 5xx, and platform errors that mean "busy" or "our trouble"
(TOP `isp.*` and code 7, JOS/Douyin rate limits) are retryable; any other 4xx and any
business refusal (no such order, already shipped, bad company code, bad signature) is
permanent: the delivery is dead-lettered for an operator to fix and replay.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, quote

from ordersync.config import (
    ChannelConfig,
    ShopifyChannel,
    WooCommerceChannel,
)
from ordersync.service.pull import HttpResponse

SHIPMENT_CREATED = "shipment.created"
SHOPIFY_FULFILLMENT_ORDERS_PATH = "/admin/api/{version}/orders/{id}/fulfillment_orders.json"
SHOPIFY_FULFILLMENTS_PATH = "/admin/api/{version}/fulfillments.json"
SHOPIFY_ORDER_FULFILLMENTS_PATH = "/admin/api/{version}/orders/{id}/fulfillments.json"
SHOPIFY_UPDATE_TRACKING_PATH = "/admin/api/{version}/fulfillments/{id}/update_tracking.json"
SHOPIFY_FULFILLABLE = frozenset({"open", "in_progress"})
WOO_ORDER_PATH = "/wp-json/wc/v3/orders/{id}"

JSON_CONTENT = ("Content-Type", "application/json")


@dataclass(frozen=True, slots=True)
class WritebackRequest:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    params: tuple[tuple[str, str], ...] = ()  # the query string

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))


@dataclass(frozen=True, slots=True)
class ShippedLine:
    """One order line (or part of one) in a parcel: the line's id on the platform (Shopify
    line item id, TOP `oid`, Douyin sku order id, WooCommerce line item id) and how many."""

    external_id: str
    quantity: int
    sku: str | None = None


@dataclass(frozen=True, slots=True)
class Shipped:
    """What a write-back tells the channel about one shipment."""

    order_external_id: str  # the order's id on the platform
    tracking_number: str
    company: str  # the platform's logistics company code (or, for Shopify/Woo, its name)
    shipment_id: str
    # The parcel's lines when it carries part of the order (empty: the whole order).
    lines: tuple[ShippedLine, ...] = ()
    # False while other lines of the order are still to ship (a partial parcel).
    completes_order: bool = True
    # Tracking numbers of earlier shipments of the order this one replaces (re-booking
    # with another carrier): the platform's record of one of them is to be updated.
    replaces: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        return bool(self.lines)


class WritebackFailed(Exception):
    """The platform did not take the write-back; `retryable` says whether trying again can
    help (busy, down, rate-limited) or not (refused: the delivery goes to dead letters)."""

    def __init__(self, detail: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable
        self.status = status


Conversation = Generator[WritebackRequest, HttpResponse, None]


# ---- the event --------------------------------------------------------------------------


def shipped_from_event(body: bytes, carrier_codes: Mapping[str, str]) -> Shipped:
    """Read a `shipment.created` outbox body; anything else is refused (permanently: the
    same bytes are sent on every retry)."""
    try:
        event = json.loads(body)
    except ValueError as e:
        raise WritebackFailed(f"event body is not JSON: {e}", retryable=False) from None
    if not isinstance(event, dict) or event.get("type") != SHIPMENT_CREATED:
        kind = event.get("type") if isinstance(event, dict) else None
        raise WritebackFailed(f"cannot write back a {kind!r} event", retryable=False)
    data = event.get("data")
    if not isinstance(data, dict):
        raise WritebackFailed("event has no data object", retryable=False)
    missing = [k for k in ("external_id", "tracking_number", "id") if not data.get(k)]
    if missing:
        raise WritebackFailed(
            f"shipment event lacks {', '.join(missing)} (the order has no channel id?)",
            retryable=False,
        )
    code = str(data.get("carrier_code") or "")
    company = carrier_codes.get(code) or code or str(data.get("carrier_id") or "")
    if not company:
        raise WritebackFailed("shipment event has no carrier code", retryable=False)
    return Shipped(
        str(data["external_id"]),
        str(data["tracking_number"]),
        company,
        data["id"],
        lines=_lines_of(data.get("lines")),
        completes_order=data.get("completes_order", True) is not False,
        replaces=_replaced_of(data.get("replaces"), str(data["tracking_number"])),
    )


def _lines_of(raw: Any) -> tuple[ShippedLine, ...]:
    """A parcel's `lines`: [{external_id, quantity, sku}]; absent or empty: the whole order."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise WritebackFailed("shipment event lines are not a list", retryable=False)
    lines = []
    for line in raw:
        ext = line.get("external_id") if isinstance(line, dict) else None
        qty = line.get("quantity") if isinstance(line, dict) else None
        if not ext or not isinstance(qty, int) or isinstance(qty, bool) or qty <= 0:
            raise WritebackFailed(
                f"shipment event line {line!r} lacks the platform line id or a quantity",
                retryable=False,
            )
        sku = line.get("sku")
        lines.append(ShippedLine(str(ext), qty, str(sku) if sku else None))
    return tuple(lines)


def _replaced_of(raw: Any, ours: str) -> tuple[str, ...]:
    """`replaces`: the shipments this one supersedes ({tracking_number} or plain numbers)."""
    if not isinstance(raw, list):
        return ()
    found = (r.get("tracking_number") if isinstance(r, dict) else r for r in raw)
    return tuple(str(n) for n in found if n and str(n) != ours)


# ---- shared -----------------------------------------------------------------------------


def check_http(platform: str, response: HttpResponse) -> None:
    """Raise unless 2xx: 408, 429 and 5xx may pass on a retry, other statuses will not."""
    status = response.status
    if 200 <= status < 300:
        return
    snippet = response.body[:200].decode("utf-8", "replace")
    retryable = status in (408, 429) or status >= 500
    raise WritebackFailed(
        f"{platform} answered HTTP {status}: {snippet}", retryable=retryable, status=status
    )


def json_body(platform: str, response: HttpResponse) -> Any:
    try:
        return json.loads(response.body.decode("utf-8"), parse_float=Decimal)
    except (ValueError, RecursionError) as e:
        # A 2xx that is not JSON comes from a proxy or a gateway in trouble: try again.
        raise WritebackFailed(
            f"{platform} answered malformed JSON: {e}", retryable=True, status=response.status
        ) from None


# ---- Shopify ----------------------------------------------------------------------------


def _shopify_headers(channel: ShopifyChannel) -> tuple[tuple[str, str], ...]:
    assert channel.access_token is not None  # config refuses a write-back without it
    return (
        ("X-Shopify-Access-Token", channel.access_token.get_secret_value()),
        ("Accept", "application/json"),
    )


def shopify_fulfillment_orders(channel: ShopifyChannel, shipped: Shipped) -> WritebackRequest:
    path = SHOPIFY_FULFILLMENT_ORDERS_PATH.format(
        version=channel.api_version, id=quote(shipped.order_external_id, safe="")
    )
    return WritebackRequest("GET", channel.admin_base + path, _shopify_headers(channel))


def _shopify_list(response: HttpResponse, key: str) -> list[Any]:
    """The list under `key` in a Shopify answer; none there: a gateway in trouble, retry."""
    check_http("Shopify", response)
    data = json_body("Shopify", response)
    found = data.get(key) if isinstance(data, dict) else None
    if not isinstance(found, list):
        raise WritebackFailed(
            f"Shopify answered without {key}", retryable=True, status=response.status
        )
    return found


def _shopify_fulfillment_order_list(response: HttpResponse) -> list[dict[str, Any]]:
    orders = _shopify_list(response, "fulfillment_orders")
    if not orders:
        raise WritebackFailed(
            "the Shopify order has no fulfillment orders (nothing to ship)",
            retryable=False,
            status=response.status,
        )
    return [fo for fo in orders if isinstance(fo, dict)]


def _open_fulfillment_order_ids(orders: list[dict[str, Any]], status: int) -> tuple[int, ...]:
    open_ids = tuple(
        int(fo["id"]) for fo in orders if fo.get("status") in SHOPIFY_FULFILLABLE and "id" in fo
    )
    if not open_ids and not all(fo.get("status") == "closed" for fo in orders):
        statuses = sorted({str(fo.get("status")) for fo in orders})
        raise WritebackFailed(
            f"no Shopify fulfillment order can be fulfilled (statuses: {', '.join(statuses)})",
            retryable=False,
            status=status,
        )
    return open_ids


def read_shopify_fulfillment_orders(response: HttpResponse) -> tuple[int, ...]:
    """The ids of the order's fulfillment orders that can still be fulfilled; empty when
    every one is closed (fulfilled before, by us or by the merchant)."""
    return _open_fulfillment_order_ids(_shopify_fulfillment_order_list(response), response.status)


LinePicks = tuple[tuple[int, tuple[tuple[int, int], ...]], ...]


def shopify_line_picks(orders: list[dict[str, Any]], shipped: Shipped) -> LinePicks:
    """A partial parcel's lines as fulfillment order line items: (fulfillment order id,
    ((fulfillment order line item id, quantity), ...)), taken from the open fulfillment
    orders' `fulfillable_quantity`. A line that cannot be fulfilled is refused permanently."""
    wanted = {line.external_id: line.quantity for line in shipped.lines}
    picks: dict[int, list[tuple[int, int]]] = {}
    for fo in orders:
        if fo.get("status") not in SHOPIFY_FULFILLABLE:
            continue
        for item in fo.get("line_items") or []:
            ext = str(item.get("line_item_id"))
            left = wanted.get(ext, 0)
            can = int(item.get("fulfillable_quantity", item.get("quantity", 0)))
            take = min(left, can)
            if take > 0:
                picks.setdefault(int(fo["id"]), []).append((int(item["id"]), take))
                wanted[ext] = left - take
    short = {ext: qty for ext, qty in wanted.items() if qty > 0}
    if short:
        said = ", ".join(f"line item {ext} × {qty}" for ext, qty in sorted(short.items()))
        raise WritebackFailed(
            f"Shopify cannot fulfil {said} of order {shipped.order_external_id}"
            " (not open, or fulfilled already)",
            retryable=False,
        )
    return tuple((fo_id, tuple(items)) for fo_id, items in picks.items())


def shopify_fulfillment(
    channel: ShopifyChannel,
    shipped: Shipped,
    fulfillment_order_ids: tuple[int, ...],
    picks: LinePicks = (),
) -> WritebackRequest:
    by_order: list[dict[str, Any]]
    if picks:  # a partial parcel: only its lines
        by_order = [
            {
                "fulfillment_order_id": fo_id,
                "fulfillment_order_line_items": [{"id": i, "quantity": q} for i, q in items],
            }
            for fo_id, items in picks
        ]
    else:  # no fulfillment_order_line_items: every line of each fulfillment order
        by_order = [{"fulfillment_order_id": i} for i in fulfillment_order_ids]
    body = {
        "fulfillment": {
            "line_items_by_fulfillment_order": by_order,
            "tracking_info": {"number": shipped.tracking_number, "company": shipped.company},
            "notify_customer": True,
        }
    }
    url = channel.admin_base + SHOPIFY_FULFILLMENTS_PATH.format(version=channel.api_version)
    headers = (*_shopify_headers(channel), JSON_CONTENT)
    return WritebackRequest("POST", url, headers, json.dumps(body).encode("utf-8"))


def read_shopify_fulfillment(response: HttpResponse) -> None:
    check_http("Shopify", response)
    data = json_body("Shopify", response)
    if not isinstance(data, dict) or not isinstance(data.get("fulfillment"), dict):
        raise WritebackFailed(
            "Shopify answered without the fulfillment", retryable=True, status=response.status
        )


def shopify_fulfillments(channel: ShopifyChannel, shipped: Shipped) -> WritebackRequest:
    path = SHOPIFY_ORDER_FULFILLMENTS_PATH.format(
        version=channel.api_version, id=quote(shipped.order_external_id, safe="")
    )
    return WritebackRequest("GET", channel.admin_base + path, _shopify_headers(channel))


def read_shopify_fulfillments(response: HttpResponse) -> list[tuple[int, tuple[str, ...]]]:
    """The order's fulfillments that are not cancelled: (id, tracking numbers)."""
    out = []
    for f in _shopify_list(response, "fulfillments"):
        if not isinstance(f, dict) or f.get("status") in ("cancelled", "error", "failure"):
            continue
        numbers = [str(n) for n in f.get("tracking_numbers") or [] if n]
        if not numbers and f.get("tracking_number"):
            numbers = [str(f["tracking_number"])]
        out.append((int(f["id"]), tuple(numbers)))
    return out


def shopify_update_tracking(
    channel: ShopifyChannel, shipped: Shipped, fulfillment_id: int
) -> WritebackRequest:
    body = {
        "fulfillment": {
            "tracking_info": {"number": shipped.tracking_number, "company": shipped.company},
            "notify_customer": True,
        }
    }
    path = SHOPIFY_UPDATE_TRACKING_PATH.format(version=channel.api_version, id=fulfillment_id)
    headers = (*_shopify_headers(channel), JSON_CONTENT)
    return WritebackRequest(
        "POST", channel.admin_base + path, headers, json.dumps(body).encode("utf-8")
    )


def shopify_conversation(channel: ChannelConfig, shipped: Shipped, now: datetime) -> Conversation:
    assert isinstance(channel, ShopifyChannel)
    response = yield shopify_fulfillment_orders(channel, shipped)
    orders = _shopify_fulfillment_order_list(response)
    if shipped.partial or shipped.replaces:
        # Our fulfillment exists already (a lost answer): done. One of a waybill we
        # replaced: its tracking is updated. Neither: fulfil as usual.
        done = read_shopify_fulfillments((yield shopify_fulfillments(channel, shipped)))
        if any(shipped.tracking_number in numbers for _, numbers in done):
            return
        for fulfillment_id, numbers in done:
            if any(n in shipped.replaces for n in numbers):
                update = shopify_update_tracking(channel, shipped, fulfillment_id)
                read_shopify_fulfillment((yield update))
                return
    if shipped.partial:
        picks = shopify_line_picks(orders, shipped)
        read_shopify_fulfillment((yield shopify_fulfillment(channel, shipped, (), picks)))
        return
    ids = _open_fulfillment_order_ids(orders, response.status)
    if ids:
        read_shopify_fulfillment((yield shopify_fulfillment(channel, shipped, ids)))


# ---- WooCommerce ------------------------------------------------------------------------


def _woo_headers(channel: WooCommerceChannel) -> tuple[tuple[str, str], ...]:
    key, secret = channel.consumer_key, channel.consumer_secret
    assert key is not None  # config refuses a write-back without the REST keys
    assert secret is not None
    pair = f"{key.get_secret_value()}:{secret.get_secret_value()}"
    return (
        ("Authorization", "Basic " + base64.b64encode(pair.encode()).decode()),
        ("Accept", "application/json"),
    )


def _woo_order_url(channel: WooCommerceChannel, shipped: Shipped) -> str:
    path = WOO_ORDER_PATH.format(id=quote(shipped.order_external_id, safe=""))
    return channel.store_url.rstrip("/") + path


def woo_note_text(shipped: Shipped) -> str:
    """The customer note: carrier and number, then (WooCommerce has no parcels) the lines
    of a partial parcel and the number it replaces after a re-booking."""
    text = f"Shipped via {shipped.company}, tracking number {shipped.tracking_number}"
    if shipped.lines:
        parts = (f"{line.quantity} × {line.sku or line.external_id}" for line in shipped.lines)
        text += ": " + ", ".join(parts)
    if shipped.replaces:
        text += f" (replaces tracking number {', '.join(shipped.replaces)})"
    return text


def woo_notes(channel: WooCommerceChannel, shipped: Shipped) -> WritebackRequest:
    return WritebackRequest(
        "GET", _woo_order_url(channel, shipped) + "/notes", _woo_headers(channel)
    )


def read_woo_notes(response: HttpResponse, shipped: Shipped) -> bool:
    """True if the order already carries a note naming this tracking number."""
    check_http("WooCommerce", response)
    notes = json_body("WooCommerce", response)
    if not isinstance(notes, list):
        raise WritebackFailed(
            "WooCommerce answered notes that are not a list", retryable=True, status=response.status
        )
    named = re.compile(rf"tracking number {re.escape(shipped.tracking_number)}(?![^\s:(])")
    return any(isinstance(n, dict) and named.search(str(n.get("note", ""))) for n in notes)


def woo_note(channel: WooCommerceChannel, shipped: Shipped) -> WritebackRequest:
    body = {"note": woo_note_text(shipped), "customer_note": True}
    return WritebackRequest(
        "POST",
        _woo_order_url(channel, shipped) + "/notes",
        (*_woo_headers(channel), JSON_CONTENT),
        json.dumps(body).encode("utf-8"),
    )


def woo_complete(channel: WooCommerceChannel, shipped: Shipped) -> WritebackRequest:
    return WritebackRequest(
        "PUT",
        _woo_order_url(channel, shipped),
        (*_woo_headers(channel), JSON_CONTENT),
        json.dumps({"status": "completed"}).encode("utf-8"),
    )


def read_woo(response: HttpResponse) -> None:
    """The answer to a note or an order update: 2xx with a JSON object."""
    check_http("WooCommerce", response)
    if not isinstance(json_body("WooCommerce", response), dict):
        raise WritebackFailed(
            "WooCommerce answered JSON that is not an object",
            retryable=True,
            status=response.status,
        )


def woocommerce_conversation(
    channel: ChannelConfig, shipped: Shipped, now: datetime
) -> Conversation:
    assert isinstance(channel, WooCommerceChannel)
    if not read_woo_notes((yield woo_notes(channel, shipped)), shipped):
        read_woo((yield woo_note(channel, shipped)))
    if shipped.completes_order:  # a partial parcel leaves the order processing
        read_woo((yield woo_complete(channel, shipped)))


# ---- the China platforms ----------------------------------------------------------------
# In writeback_cn, built on the definitions above, so imported only now (then either module
# may be imported first); its `__all__` is re-exported, so its names are importable here too.
from ordersync.adapters.channels.writeback_cn import *  # noqa: E402, F403
from ordersync.adapters.channels.writeback_cn import (  # noqa: E402
    douyin_conversation,
    jd_conversation,
    taobao_conversation,
)

# ---- by kind ----------------------------------------------------------------------------

ConversationFactory = Callable[[ChannelConfig, Shipped, datetime], Conversation]

CONVERSATIONS: Mapping[str, ConversationFactory] = {
    "shopify": shopify_conversation,
    "woocommerce": woocommerce_conversation,
    "taobao": taobao_conversation,
    "jd": jd_conversation,
    "douyin": douyin_conversation,
}


def conversation_for(kind: str) -> ConversationFactory:
    found = CONVERSATIONS.get(kind)
    if found is None:
        raise ValueError(f"no write-back for {kind!r} channels")
    return found
