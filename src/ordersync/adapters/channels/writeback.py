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
  fulfillment orders, all their lines) and `tracking_info {number, company}`;
  `X-Shopify-Access-Token`. An order whose fulfillment orders are all closed is already
  fulfilled: nothing is sent (so a retry after a lost answer does not fulfil twice).
* WooCommerce REST v3: `GET /wp-json/wc/v3/orders/{id}/notes` (a note naming the tracking
  number means an earlier attempt got this far), `POST .../orders/{id}/notes`
  `{note, customer_note: true}`, then `PUT .../orders/{id}` `{status: "completed"}`; HTTP
  Basic with the consumer key and secret.
* Taobao TOP: `taobao.logistics.offline.send` (`tid`, `out_sid`, `company_code`), signed like
  the pull calls, as a form POST.
* JD JOS: `jingdong.pop.order.shipment` (`orderId`, `logiCoprId`, `logiNo` in
  `360buy_param_json`), signed, as a form POST.
* Douyin: `order.logisticsAdd` (`order_id`, `company_code`, `logistics_code`): the signed
  common parameters in the query, `param_json` as the JSON body.

Failures: HTTP 408, 429 and 5xx, and platform errors that mean "busy" or "our trouble"
(TOP `isp.*` and code 7, JOS/Douyin rate limits) are retryable; any other 4xx and any
business refusal (no such order, already shipped, bad company code, bad signature) is
permanent: the delivery is dead-lettered for an operator to fix and replay.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Generator, Mapping
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
SHOPIFY_FULFILLABLE = frozenset({"open", "in_progress"})
WOO_ORDER_PATH = "/wp-json/wc/v3/orders/{id}"
TAOBAO_METHOD = "taobao.logistics.offline.send"
TAOBAO_RESPONSE_KEY = "logistics_offline_send_response"
JD_METHOD = "jingdong.pop.order.shipment"
JD_RESPONSE_KEY = "jingdong_pop_order_shipment_responce"  # JD's own spelling
DOUYIN_METHOD = "order.logisticsAdd"

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
class Shipped:
    """What a write-back tells the channel about one shipment."""

    order_external_id: str  # the order's id on the platform
    tracking_number: str
    company: str  # the platform's logistics company code (or, for Shopify/Woo, its name)
    shipment_id: str


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
    return Shipped(str(data["external_id"]), str(data["tracking_number"]), company, data["id"])


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


def read_shopify_fulfillment_orders(response: HttpResponse) -> tuple[int, ...]:
    """The ids of the order's fulfillment orders that can still be fulfilled; empty when
    every one is closed (fulfilled before, by us or by the merchant)."""
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
    open_ids = tuple(
        int(fo["id"])
        for fo in orders
        if isinstance(fo, dict) and fo.get("status") in SHOPIFY_FULFILLABLE and "id" in fo
    )
    if not open_ids and not all(
        isinstance(fo, dict) and fo.get("status") == "closed" for fo in orders
    ):
        statuses = sorted({str(fo.get("status")) for fo in orders if isinstance(fo, dict)})
        raise WritebackFailed(
            f"no Shopify fulfillment order can be fulfilled (statuses: {', '.join(statuses)})",
            retryable=False,
            status=response.status,
        )
    return open_ids


def shopify_fulfillment(
    channel: ShopifyChannel, shipped: Shipped, fulfillment_order_ids: tuple[int, ...]
) -> WritebackRequest:
    body = {
        "fulfillment": {
            # No fulfillment_order_line_items: every line of each fulfillment order.
            "line_items_by_fulfillment_order": [
                {"fulfillment_order_id": i} for i in fulfillment_order_ids
            ],
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


def shopify_conversation(channel: ChannelConfig, shipped: Shipped, now: datetime) -> Conversation:
    assert isinstance(channel, ShopifyChannel)
    ids = read_shopify_fulfillment_orders((yield shopify_fulfillment_orders(channel, shipped)))
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
    return f"Shipped via {shipped.company}, tracking number {shipped.tracking_number}"


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
    return any(
        isinstance(n, dict) and shipped.tracking_number in str(n.get("note", "")) for n in notes
    )


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
    read_woo((yield woo_complete(channel, shipped)))


# ---- Taobao TOP -------------------------------------------------------------------------


def taobao_offline_send(
    channel: TaobaoChannel, shipped: Shipped, now: datetime
) -> WritebackRequest:
    assert channel.session is not None  # config refuses a write-back without it
    params = {
        "method": TAOBAO_METHOD,
        "app_key": channel.app_key,
        "session": channel.session.get_secret_value(),
        "timestamp": taobao.top_time(now),
        "format": channel.format,
        "v": "2.0",
        "sign_method": channel.sign_method,
        "tid": shipped.order_external_id,
        "out_sid": shipped.tracking_number,
        "company_code": shipped.company,
    }
    params["sign"] = taobao.sign(params, channel.app_secret.get_secret_value(), channel.sign_method)
    return _form_post(channel.gateway, params)


def read_taobao_offline_send(channel: TaobaoChannel, response: HttpResponse) -> None:
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
    shipping = (data.get(TAOBAO_RESPONSE_KEY) or {}).get("shipping")
    ok = isinstance(shipping, Mapping) and shipping.get("is_success") in (True, "true")
    if not ok:
        raise WritebackFailed(
            f"TOP answered without a successful shipping: {response.body[:200]!r}",
            retryable=False,
            status=response.status,
        )


def taobao_conversation(channel: ChannelConfig, shipped: Shipped, now: datetime) -> Conversation:
    assert isinstance(channel, TaobaoChannel)
    read_taobao_offline_send(channel, (yield taobao_offline_send(channel, shipped, now)))


# ---- JD JOS -----------------------------------------------------------------------------


def jd_order_shipment(channel: JdChannel, shipped: Shipped, now: datetime) -> WritebackRequest:
    assert channel.access_token is not None
    business = {
        "orderId": shipped.order_external_id,
        "logiCoprId": shipped.company,
        "logiNo": shipped.tracking_number,
    }
    params = {
        "method": JD_METHOD,
        "app_key": channel.app_key,
        "access_token": channel.access_token.get_secret_value(),
        "timestamp": jd.jos_time(now),
        "v": "2.0",
        "360buy_param_json": jd.param_json(business),
    }
    params["sign"] = jd.sign(params, channel.app_secret.get_secret_value())
    return _form_post(channel.gateway, params)


def _busy(words: str) -> bool:
    return "limit" in words.lower() or "频" in words or "busy" in words.lower() or "繁忙" in words


def read_jd_order_shipment(response: HttpResponse) -> None:
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
    envelope = data.get(JD_RESPONSE_KEY)
    result = envelope.get("sopjosshipment_result") if isinstance(envelope, Mapping) else None
    if not isinstance(result, Mapping) or result.get("success") is not True:
        found = result if isinstance(result, Mapping) else {}
        raise WritebackFailed(
            f"JOS shipment refused {found.get('code', '')}: {found.get('englishErrCode', '')}"
            f" {found.get('chineseErrCode', '')}".rstrip(),
            retryable=False,
            status=response.status,
        )


def jd_conversation(channel: ChannelConfig, shipped: Shipped, now: datetime) -> Conversation:
    assert isinstance(channel, JdChannel)
    read_jd_order_shipment((yield jd_order_shipment(channel, shipped, now)))


# ---- Douyin -----------------------------------------------------------------------------


def douyin_logistics_add(
    channel: DouyinChannel, shipped: Shipped, now: datetime
) -> WritebackRequest:
    assert channel.access_token is not None
    business = {
        "order_id": shipped.order_external_id,
        "company_code": shipped.company,
        "logistics_code": shipped.tracking_number,
    }
    body = douyin.param_json(business)
    stamp = douyin.open_time(now)
    secret = channel.app_secret.get_secret_value()
    params = {
        "app_key": channel.app_key,
        "method": DOUYIN_METHOD,
        "access_token": channel.access_token.get_secret_value(),
        "timestamp": stamp,
        "v": "2",
        "sign_method": channel.sign_method,
        "sign": douyin.sign(
            channel.app_key, secret, DOUYIN_METHOD, body, stamp, "2", channel.sign_method
        ),
    }
    url = channel.gateway.rstrip("/") + "/" + DOUYIN_METHOD.replace(".", "/")
    return WritebackRequest("POST", url, (_JSON,), body.encode("utf-8"), tuple(params.items()))


def read_douyin_logistics_add(response: HttpResponse) -> None:
    check_http("Douyin", response)
    data = _json_body("Douyin", response)
    if not isinstance(data, dict):
        raise WritebackFailed("Douyin answered JSON that is not an object", retryable=True)
    code = data.get("code")
    if code == douyin.OK:
        return
    sub_code = str(data.get("sub_code", ""))
    words = f"{data.get('msg', '')} {data.get('sub_msg', '')}"
    raise WritebackFailed(
        f"Douyin error {code} {data.get('msg', '')} ({sub_code}: {data.get('sub_msg', '')})",
        retryable=_busy(words) or "限流" in words or sub_code.startswith("isp."),
        status=response.status,
    )


def douyin_conversation(channel: ChannelConfig, shipped: Shipped, now: datetime) -> Conversation:
    assert isinstance(channel, DouyinChannel)
    read_douyin_logistics_add((yield douyin_logistics_add(channel, shipped, now)))


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
