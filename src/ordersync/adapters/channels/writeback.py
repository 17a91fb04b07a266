"""Shipment write-back, sans-I/O: the platform calls that tell a sales channel an order has
shipped (carrier and tracking number), and the readers of their answers.

Each platform has a builder per call (`(method, url, headers, body)` as a `WritebackRequest`)
and a reader that accepts the answer or raises `WritebackFailed`, saying whether trying
again can help. A write-back that takes several calls is a small conversation: a generator
that yields requests and receives responses (`conversation_for(kind)`), so the sender does
the HTTP and the platform rules stay here, tested with plain bytes.

The calls (each platform's documented API):

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
* Taobao TOP: `taobao.logistics.offline.send` (`tid`, `out_sid`, `company_code`; a partial
  parcel adds `is_split=1` and its sub-orders in `sub_tid`), signed like the pull calls, as
  a form POST; `taobao.logistics.orders.get` (the waybills recorded for the trade) and
  `taobao.logistics.consign.resend` (change a consigned parcel's waybill).
* JD JOS: `jingdong.pop.order.shipment` (`orderId`, `logiCoprId`, `logiNo` in
  `360buy_param_json`), signed, as a form POST; `jingdong.pop.order.get` (its `waybill`).
  JOS ships whole orders once and has no call to change the waybill afterwards: a partial
  parcel is written back only when it completes the order, and a re-booking is refused.
* Douyin: `order.logisticsAdd` (`order_id`, `company_code`, `logistics_code`), or for a
  partial parcel `order.logisticsAddSinglePack` (`shipped_order_info`: sku orders and
  counts, `request_id`: our shipment id, which the platform dedupes): the signed common
  parameters in the query, `param_json` as the JSON body; `order.orderDetail` (the parcels'
  `tracking_no`) and `order.logisticsEdit` (change the tracking of a one-parcel order).

"Already shipped": TOP, JOS and Douyin take no idempotency key on the whole-order call, so a
retry after a lost answer is refused as shipped. The conversation then reads what the
platform recorded (`settle_shipped`): our waybill, done; a waybill this shipment replaces,
updated; any other, a permanent failure naming both (shipped outside the hub).

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
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from ordersync.adapters.channels import douyin, jd, taobao
from ordersync.config import (
    ChannelConfig,
    DouyinChannel,
    JdChannel,
    ShopifyChannel,
    TaobaoChannel,
    WooCommerceChannel,
)
from ordersync.service.pull import HttpResponse, PullError

SHIPMENT_CREATED = "shipment.created"
SHOPIFY_FULFILLMENT_ORDERS_PATH = "/admin/api/{version}/orders/{id}/fulfillment_orders.json"
SHOPIFY_FULFILLMENTS_PATH = "/admin/api/{version}/fulfillments.json"
SHOPIFY_ORDER_FULFILLMENTS_PATH = "/admin/api/{version}/orders/{id}/fulfillments.json"
SHOPIFY_UPDATE_TRACKING_PATH = "/admin/api/{version}/fulfillments/{id}/update_tracking.json"
SHOPIFY_FULFILLABLE = frozenset({"open", "in_progress"})
WOO_ORDER_PATH = "/wp-json/wc/v3/orders/{id}"
TAOBAO_METHOD = "taobao.logistics.offline.send"
TAOBAO_RESPONSE_KEY = "logistics_offline_send_response"
TAOBAO_RESEND_METHOD = "taobao.logistics.consign.resend"
TAOBAO_RESEND_KEY = "logistics_consign_resend_response"
TAOBAO_ORDERS_METHOD = "taobao.logistics.orders.get"
TAOBAO_ORDERS_KEY = "logistics_orders_get_response"
TAOBAO_ORDERS_FIELDS = "tid,out_sid,company_name,sub_tids,status"
JD_METHOD = "jingdong.pop.order.shipment"
JD_RESPONSE_KEY = "jingdong_pop_order_shipment_responce"  # JD's own spelling
JD_GET_METHOD = "jingdong.pop.order.get"
JD_GET_KEY = "jingdong_pop_order_get_responce"
JD_GET_FIELDS = "orderId,orderState,logisticsId,waybill"
DOUYIN_METHOD = "order.logisticsAdd"
DOUYIN_PACK_METHOD = "order.logisticsAddSinglePack"
DOUYIN_EDIT_METHOD = "order.logisticsEdit"

_FORM = ("Content-Type", "application/x-www-form-urlencoded;charset=utf-8")
_JSON = ("Content-Type", "application/json")


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


# ---- "already shipped": a lost answer, a re-booking, or somebody else's waybill -----------


def already_shipped(detail: str) -> bool:
    """Whether a platform's refusal says the order (or these lines) shipped before."""
    words = detail.lower()
    return any(
        w in words for w in ("already shipped", "already consigned", "已发货", "已出库", "已经发货")
    )


def settle_shipped(platform: str, shipped: Shipped, recorded: Sequence[str]) -> str | None:
    """The platform refused because the order is shipped already, and records `recorded`
    waybills. Ours among them: an earlier attempt went through and only its answer was lost
    (None: nothing more to do). One we replaced: that waybill, to be updated to ours. Any
    other: a permanent failure naming both, for an operator."""
    if shipped.tracking_number in recorded:
        return None
    for old in recorded:
        if old in shipped.replaces:
            return old
    theirs = ", ".join(recorded) or "none it will show"
    raise WritebackFailed(
        f"{platform} order {shipped.order_external_id} is already shipped with waybill"
        f" {theirs}, not ours ({shipped.tracking_number}): shipped outside the hub?",
        retryable=False,
    )


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


def _json_body(platform: str, response: HttpResponse) -> Any:
    try:
        return json.loads(response.body.decode("utf-8"), parse_float=Decimal)
    except (ValueError, RecursionError) as e:
        # A 2xx that is not JSON comes from a proxy or a gateway in trouble: try again.
        raise WritebackFailed(
            f"{platform} answered malformed JSON: {e}", retryable=True, status=response.status
        ) from None


def _form_post(url: str, params: Mapping[str, str]) -> WritebackRequest:
    return WritebackRequest("POST", url, (_FORM,), urlencode(params).encode("utf-8"))


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


def _shopify_fulfillment_order_list(response: HttpResponse) -> list[dict[str, Any]]:
    check_http("Shopify", response)
    data = _json_body("Shopify", response)
    orders = data.get("fulfillment_orders") if isinstance(data, dict) else None
    if not isinstance(orders, list):
        raise WritebackFailed(
            "Shopify answered without fulfillment_orders", retryable=True, status=response.status
        )
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
    headers = (*_shopify_headers(channel), _JSON)
    return WritebackRequest("POST", url, headers, json.dumps(body).encode("utf-8"))


def read_shopify_fulfillment(response: HttpResponse) -> None:
    check_http("Shopify", response)
    data = _json_body("Shopify", response)
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
    check_http("Shopify", response)
    data = _json_body("Shopify", response)
    found = data.get("fulfillments") if isinstance(data, dict) else None
    if not isinstance(found, list):
        raise WritebackFailed(
            "Shopify answered without fulfillments", retryable=True, status=response.status
        )
    out = []
    for f in found:
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
    headers = (*_shopify_headers(channel), _JSON)
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
    notes = _json_body("WooCommerce", response)
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
        (*_woo_headers(channel), _JSON),
        json.dumps(body).encode("utf-8"),
    )


def woo_complete(channel: WooCommerceChannel, shipped: Shipped) -> WritebackRequest:
    return WritebackRequest(
        "PUT",
        _woo_order_url(channel, shipped),
        (*_woo_headers(channel), _JSON),
        json.dumps({"status": "completed"}).encode("utf-8"),
    )


def read_woo(response: HttpResponse) -> None:
    """The answer to a note or an order update: 2xx with a JSON object."""
    check_http("WooCommerce", response)
    if not isinstance(_json_body("WooCommerce", response), dict):
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


# ---- Taobao TOP -------------------------------------------------------------------------


def _top_call(
    channel: TaobaoChannel, method: str, business: Mapping[str, str], now: datetime
) -> WritebackRequest:
    assert channel.session is not None  # config refuses a write-back without it
    params = {
        "method": method,
        "app_key": channel.app_key,
        "session": channel.session.get_secret_value(),
        "timestamp": taobao.top_time(now),
        "format": channel.format,
        "v": "2.0",
        "sign_method": channel.sign_method,
        **business,
    }
    params["sign"] = taobao.sign(params, channel.app_secret.get_secret_value(), channel.sign_method)
    return _form_post(channel.gateway, params)


def _top_waybill(shipped: Shipped) -> dict[str, str]:
    """`tid`, `out_sid`, `company_code`; a partial parcel adds `is_split=1` and its
    sub-orders (`sub_tid`, the lines' `oid`s, comma-separated)."""
    business = {
        "tid": shipped.order_external_id,
        "out_sid": shipped.tracking_number,
        "company_code": shipped.company,
    }
    if shipped.partial:
        business["is_split"] = "1"
        business["sub_tid"] = ",".join(line.external_id for line in shipped.lines)
    return business


def taobao_offline_send(
    channel: TaobaoChannel, shipped: Shipped, now: datetime
) -> WritebackRequest:
    return _top_call(channel, TAOBAO_METHOD, _top_waybill(shipped), now)


def taobao_consign_resend(
    channel: TaobaoChannel, shipped: Shipped, now: datetime
) -> WritebackRequest:
    """Change the waybill of a consigned trade (or of the parcel's sub-orders)."""
    return _top_call(channel, TAOBAO_RESEND_METHOD, _top_waybill(shipped), now)


def taobao_logistics_orders(
    channel: TaobaoChannel, shipped: Shipped, now: datetime
) -> WritebackRequest:
    """The trade's logistics orders: which waybills TOP records for it."""
    business = {"tid": shipped.order_external_id, "fields": TAOBAO_ORDERS_FIELDS}
    return _top_call(channel, TAOBAO_ORDERS_METHOD, business, now)


def _read_top(channel: TaobaoChannel, response: HttpResponse, key: str) -> Mapping[str, Any]:
    check_http("TOP", response)
    try:
        data = taobao.decode(response.body, channel.format)
    except PullError as e:
        raise WritebackFailed(str(e), retryable=True, status=response.status) from None
    error = data.get("error_response")
    if error is not None:
        err = error if isinstance(error, Mapping) else {}
        code, sub_code = str(err.get("code", "")), str(err.get("sub_code", ""))
        detail = f"TOP error {code} {err.get('msg', '')} ({sub_code}: {err.get('sub_msg', '')})"
        busy = code == "7" or "call-limited" in sub_code or "limited-by" in sub_code
        raise WritebackFailed(
            detail, retryable=busy or sub_code.startswith("isp."), status=response.status
        )
    found = data.get(key)
    return found if isinstance(found, Mapping) else {}


def read_taobao_offline_send(
    channel: TaobaoChannel, response: HttpResponse, key: str = TAOBAO_RESPONSE_KEY
) -> None:
    shipping = _read_top(channel, response, key).get("shipping")
    ok = isinstance(shipping, Mapping) and shipping.get("is_success") in (True, "true")
    if not ok:
        raise WritebackFailed(
            f"TOP answered without a successful shipping: {response.body[:200]!r}",
            retryable=False,
            status=response.status,
        )


def read_taobao_logistics_orders(channel: TaobaoChannel, response: HttpResponse) -> list[str]:
    """The waybills (`out_sid`) TOP records for the trade."""
    shippings = _read_top(channel, response, TAOBAO_ORDERS_KEY).get("shippings")
    found = shippings.get("shipping") if isinstance(shippings, Mapping) else None
    rows = found if isinstance(found, list) else [found] if isinstance(found, Mapping) else []
    return [str(r["out_sid"]) for r in rows if isinstance(r, Mapping) and r.get("out_sid")]


def taobao_conversation(channel: ChannelConfig, shipped: Shipped, now: datetime) -> Conversation:
    assert isinstance(channel, TaobaoChannel)
    try:
        read_taobao_offline_send(channel, (yield taobao_offline_send(channel, shipped, now)))
        return
    except WritebackFailed as e:
        if e.retryable or not already_shipped(e.detail):
            raise
    recorded = read_taobao_logistics_orders(
        channel, (yield taobao_logistics_orders(channel, shipped, now))
    )
    if settle_shipped("TOP", shipped, recorded) is not None:
        resend = yield taobao_consign_resend(channel, shipped, now)
        read_taobao_offline_send(channel, resend, TAOBAO_RESEND_KEY)


# ---- JD JOS -----------------------------------------------------------------------------


def _jos_call(
    channel: JdChannel, method: str, business: Mapping[str, Any], now: datetime
) -> WritebackRequest:
    assert channel.access_token is not None
    params = {
        "method": method,
        "app_key": channel.app_key,
        "access_token": channel.access_token.get_secret_value(),
        "timestamp": jd.jos_time(now),
        "v": "2.0",
        "360buy_param_json": jd.param_json(business),
    }
    params["sign"] = jd.sign(params, channel.app_secret.get_secret_value())
    return _form_post(channel.gateway, params)


def jd_order_shipment(channel: JdChannel, shipped: Shipped, now: datetime) -> WritebackRequest:
    business = {
        "orderId": shipped.order_external_id,
        "logiCoprId": shipped.company,
        "logiNo": shipped.tracking_number,
    }
    return _jos_call(channel, JD_METHOD, business, now)


def jd_order_get(channel: JdChannel, shipped: Shipped, now: datetime) -> WritebackRequest:
    """The order as JOS holds it, with the waybill it recorded at shipment."""
    business = {"order_id": shipped.order_external_id, "optional_fields": JD_GET_FIELDS}
    return _jos_call(channel, JD_GET_METHOD, business, now)


def _busy(words: str) -> bool:
    return "limit" in words.lower() or "频" in words or "busy" in words.lower() or "繁忙" in words


def _read_jos(response: HttpResponse, key: str) -> Mapping[str, Any]:
    check_http("JOS", response)
    data = _json_body("JOS", response)
    if not isinstance(data, dict):
        raise WritebackFailed("JOS answered JSON that is not an object", retryable=True)
    error = data.get("error_response")
    if error is not None:
        err = error if isinstance(error, Mapping) else {}
        desc = f"{err.get('en_desc', '')} {err.get('zh_desc', '')}".strip()
        raise WritebackFailed(
            f"JOS error {err.get('code', '')}: {desc}",
            retryable=_busy(desc),
            status=response.status,
        )
    envelope = data.get(key)
    return envelope if isinstance(envelope, Mapping) else {}


def read_jd_order_shipment(response: HttpResponse) -> None:
    result = _read_jos(response, JD_RESPONSE_KEY).get("sopjosshipment_result")
    if not isinstance(result, Mapping) or result.get("success") is not True:
        found = result if isinstance(result, Mapping) else {}
        raise WritebackFailed(
            f"JOS shipment refused {found.get('code', '')}: {found.get('englishErrCode', '')}"
            f" {found.get('chineseErrCode', '')}".rstrip(),
            retryable=False,
            status=response.status,
        )


def read_jd_order_waybills(response: HttpResponse) -> list[str]:
    """The waybill numbers JOS records for the order (`waybill`, several comma-separated)."""
    detail = _read_jos(response, JD_GET_KEY).get("orderDetailInfo")
    info = detail.get("orderInfo") if isinstance(detail, Mapping) else None
    if not isinstance(info, Mapping):
        raise WritebackFailed("JOS answered without orderInfo", retryable=True)
    return [w for w in str(info.get("waybill") or "").split(",") if w]


def jd_conversation(channel: ChannelConfig, shipped: Shipped, now: datetime) -> Conversation:
    """JOS ships a whole order with one waybill: a partial parcel is not written back, the
    parcel that completes the order is (with its waybill). JOS offers no call to change
    the waybill of a shipped order, so a re-booking is refused for an operator."""
    assert isinstance(channel, JdChannel)
    if shipped.partial and not shipped.completes_order:
        return
    try:
        read_jd_order_shipment((yield jd_order_shipment(channel, shipped, now)))
        return
    except WritebackFailed as e:
        if e.retryable or not already_shipped(e.detail):
            raise
    recorded = read_jd_order_waybills((yield jd_order_get(channel, shipped, now)))
    old = settle_shipped("JOS", shipped, recorded)
    if old is not None:
        raise WritebackFailed(
            f"JOS order {shipped.order_external_id} shipped with waybill {old}, re-booked as"
            f" {shipped.tracking_number}: JOS cannot change a shipped order's waybill by API;"
            " change it in the JD seller backend",
            retryable=False,
        )


# ---- Douyin -----------------------------------------------------------------------------


def _douyin_call(
    channel: DouyinChannel, method: str, business: Mapping[str, Any], now: datetime
) -> WritebackRequest:
    assert channel.access_token is not None
    body = douyin.param_json(business)
    stamp = douyin.open_time(now)
    secret = channel.app_secret.get_secret_value()
    params = {
        "app_key": channel.app_key,
        "method": method,
        "access_token": channel.access_token.get_secret_value(),
        "timestamp": stamp,
        "v": "2",
        "sign_method": channel.sign_method,
        "sign": douyin.sign(channel.app_key, secret, method, body, stamp, "2", channel.sign_method),
    }
    url = channel.gateway.rstrip("/") + "/" + method.replace(".", "/")
    return WritebackRequest("POST", url, (_JSON,), body.encode("utf-8"), tuple(params.items()))


def douyin_logistics_add(
    channel: DouyinChannel, shipped: Shipped, now: datetime
) -> WritebackRequest:
    """The whole order in one parcel (`order.logisticsAdd`), or a partial parcel with its
    sku orders and quantities (`order.logisticsAddSinglePack`, `shipped_order_info`)."""
    if shipped.partial:
        pack = {
            "order_id_list": [shipped.order_external_id],
            "shipped_order_info": [
                {"shipped_order_id": line.external_id, "shipped_num": line.quantity}
                for line in shipped.lines
            ],
            "company_code": shipped.company,
            "logistics_code": shipped.tracking_number,
            "request_id": shipped.shipment_id,  # the platform's idempotency key
        }
        return _douyin_call(channel, DOUYIN_PACK_METHOD, pack, now)
    business = {
        "order_id": shipped.order_external_id,
        "company_code": shipped.company,
        "logistics_code": shipped.tracking_number,
    }
    return _douyin_call(channel, DOUYIN_METHOD, business, now)


def douyin_logistics_edit(
    channel: DouyinChannel, shipped: Shipped, now: datetime
) -> WritebackRequest:
    business = {
        "order_id": shipped.order_external_id,
        "company_code": shipped.company,
        "logistics_code": shipped.tracking_number,
    }
    return _douyin_call(channel, DOUYIN_EDIT_METHOD, business, now)


def douyin_order_detail(
    channel: DouyinChannel, shipped: Shipped, now: datetime
) -> WritebackRequest:
    """`order.orderDetail` as the pull reads it: a GET, `param_json` in the query."""
    business = {"shop_order_id": shipped.order_external_id}
    call = _douyin_call(channel, douyin.DETAIL_METHOD, business, now)
    params = (*call.params, ("param_json", call.body.decode("utf-8")))
    return WritebackRequest("GET", call.url, (), b"", params)


def _read_douyin(response: HttpResponse) -> Mapping[str, Any]:
    check_http("Douyin", response)
    data = _json_body("Douyin", response)
    if not isinstance(data, dict):
        raise WritebackFailed("Douyin answered JSON that is not an object", retryable=True)
    code = data.get("code")
    if code == douyin.OK:
        found = data.get("data")
        return found if isinstance(found, Mapping) else {}
    sub_code = str(data.get("sub_code", ""))
    words = f"{data.get('msg', '')} {data.get('sub_msg', '')}"
    raise WritebackFailed(
        f"Douyin error {code} {data.get('msg', '')} ({sub_code}: {data.get('sub_msg', '')})",
        retryable=_busy(words) or "限流" in words or sub_code.startswith("isp."),
        status=response.status,
    )


def read_douyin_logistics_add(response: HttpResponse) -> None:
    _read_douyin(response)


def read_douyin_waybills(response: HttpResponse) -> list[str]:
    """The tracking numbers the order's `logistics_info` records (one per parcel)."""
    detail = _read_douyin(response).get("shop_order_detail")
    parcels = detail.get("logistics_info") if isinstance(detail, Mapping) else None
    if not isinstance(parcels, list):
        return []
    return [
        str(p["tracking_no"]) for p in parcels if isinstance(p, Mapping) and p.get("tracking_no")
    ]


def douyin_conversation(channel: ChannelConfig, shipped: Shipped, now: datetime) -> Conversation:
    assert isinstance(channel, DouyinChannel)
    try:
        read_douyin_logistics_add((yield douyin_logistics_add(channel, shipped, now)))
        return
    except WritebackFailed as e:
        if e.retryable or not already_shipped(e.detail):
            raise
    recorded = read_douyin_waybills((yield douyin_order_detail(channel, shipped, now)))
    if settle_shipped("Douyin", shipped, recorded) is not None:
        read_douyin_logistics_add((yield douyin_logistics_edit(channel, shipped, now)))


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
