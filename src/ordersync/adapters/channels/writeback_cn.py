"""Shipment write-back to the China platforms, sans-I/O (see `writeback` for the shape:
a request builder and an answer reader per call, a conversation per platform). The calls:

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

Busy answers (TOP `isp.*` and code 7, JOS/Douyin rate limits) are retryable; business
refusals are permanent.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from ordersync.adapters.channels import douyin, jd, taobao
from ordersync.adapters.channels.base import FORM_CONTENT_TYPE, platform_busy
from ordersync.config import ChannelConfig, DouyinChannel, JdChannel, TaobaoChannel
from ordersync.service.pull import HttpResponse, PullError

# What `writeback` re-exports (defined here before anything is imported from it).
__all__ = [
    "DOUYIN_EDIT_METHOD",
    "DOUYIN_METHOD",
    "DOUYIN_PACK_METHOD",
    "JD_GET_FIELDS",
    "JD_GET_KEY",
    "JD_GET_METHOD",
    "JD_METHOD",
    "JD_RESPONSE_KEY",
    "TAOBAO_METHOD",
    "TAOBAO_ORDERS_FIELDS",
    "TAOBAO_ORDERS_KEY",
    "TAOBAO_ORDERS_METHOD",
    "TAOBAO_RESEND_KEY",
    "TAOBAO_RESEND_METHOD",
    "TAOBAO_RESPONSE_KEY",
    "already_shipped",
    "douyin_conversation",
    "douyin_logistics_add",
    "douyin_logistics_edit",
    "douyin_order_detail",
    "jd_conversation",
    "jd_order_get",
    "jd_order_shipment",
    "read_douyin_logistics_add",
    "read_douyin_waybills",
    "read_jd_order_shipment",
    "read_jd_order_waybills",
    "read_taobao_logistics_orders",
    "read_taobao_offline_send",
    "settle_shipped",
    "taobao_consign_resend",
    "taobao_conversation",
    "taobao_logistics_orders",
    "taobao_offline_send",
]

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

_FORM = FORM_CONTENT_TYPE


def _form_post(url: str, params: Mapping[str, str]) -> WritebackRequest:
    return WritebackRequest("POST", url, (_FORM,), urlencode(params).encode("utf-8"))


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


def _ship_or_settle(
    platform: str,
    shipped: Shipped,
    ship: WritebackRequest,
    read_ship: Callable[[HttpResponse], None],
    ask_recorded: Callable[[], WritebackRequest],
    read_recorded: Callable[[HttpResponse], list[str]],
) -> Generator[WritebackRequest, HttpResponse, str | None]:
    """Send the whole-order call `ship`; refused as already shipped, ask which waybills the
    platform records and settle (`settle_shipped`). None: nothing more to do; else the
    replaced waybill, to be changed to ours. Any other refusal is raised."""
    try:
        read_ship((yield ship))
        return None
    except WritebackFailed as e:
        if e.retryable or not already_shipped(e.detail):
            raise
    return settle_shipped(platform, shipped, read_recorded((yield ask_recorded())))


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
    replaced = yield from _ship_or_settle(
        "TOP",
        shipped,
        taobao_offline_send(channel, shipped, now),
        lambda answer: read_taobao_offline_send(channel, answer),
        lambda: taobao_logistics_orders(channel, shipped, now),
        lambda answer: read_taobao_logistics_orders(channel, answer),
    )
    if replaced is not None:
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


def _read_jos(response: HttpResponse, key: str) -> Mapping[str, Any]:
    check_http("JOS", response)
    data = json_body("JOS", response)
    if not isinstance(data, dict):
        raise WritebackFailed("JOS answered JSON that is not an object", retryable=True)
    error = data.get("error_response")
    if error is not None:
        err = error if isinstance(error, Mapping) else {}
        desc = f"{err.get('en_desc', '')} {err.get('zh_desc', '')}".strip()
        raise WritebackFailed(
            f"JOS error {err.get('code', '')}: {desc}",
            retryable=platform_busy(desc),
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
    old = yield from _ship_or_settle(
        "JOS",
        shipped,
        jd_order_shipment(channel, shipped, now),
        read_jd_order_shipment,
        lambda: jd_order_get(channel, shipped, now),
        read_jd_order_waybills,
    )
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
    return WritebackRequest(
        "POST", url, (JSON_CONTENT,), body.encode("utf-8"), tuple(params.items())
    )


def _douyin_waybill(shipped: Shipped) -> dict[str, str]:
    """The whole order's `order_id`, `company_code` and `logistics_code`."""
    return {
        "order_id": shipped.order_external_id,
        "company_code": shipped.company,
        "logistics_code": shipped.tracking_number,
    }


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
    return _douyin_call(channel, DOUYIN_METHOD, _douyin_waybill(shipped), now)


def douyin_logistics_edit(
    channel: DouyinChannel, shipped: Shipped, now: datetime
) -> WritebackRequest:
    """Change the carrier and number of a one-parcel order (its only parcel)."""
    return _douyin_call(channel, DOUYIN_EDIT_METHOD, _douyin_waybill(shipped), now)


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
    data = json_body("Douyin", response)
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
        retryable=platform_busy(words) or "限流" in words or sub_code.startswith("isp."),
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
    replaced = yield from _ship_or_settle(
        "Douyin",
        shipped,
        douyin_logistics_add(channel, shipped, now),
        read_douyin_logistics_add,
        lambda: douyin_order_detail(channel, shipped, now),
        read_douyin_waybills,
    )
    if replaced is not None:
        read_douyin_logistics_add((yield douyin_logistics_edit(channel, shipped, now)))


# The shared definitions, imported last: `writeback` imports this module at its end, and
# nothing above needs them before a call (annotations are strings), so either module may
# be imported first.
from ordersync.adapters.channels.writeback import (  # noqa: E402
    JSON_CONTENT,
    Conversation,
    Shipped,
    WritebackFailed,
    WritebackRequest,
    check_http,
    json_body,
)
