"""JD (京东) POP shops through the JOS open platform: signed calls and incremental order pull
(`jingdong.pop.order.search`) by modified-time window.

Facts of the wire format this relies on:
- every call carries `method`, `app_key`, `access_token`, `timestamp` ("YYYY-MM-DD
  HH:MM:SS", China time), `v=2.0` and the business parameters as one JSON string,
  `360buy_param_json`; `sign` is the upper-case hex MD5 of secret + the other parameters
  sorted by name and concatenated as name+value + secret;
- the search takes `start_date`/`end_date` (China time; the window applies to the order's
  modified time), `order_state` (comma-separated), `optional_fields`, `page` (1-based) and
  `page_size`, and answers `orderInfoList` with `orderTotal` in
  `jingdong_pop_order_search_responce.searchorderinfo_result` (JD's own spelling);
- `orderId` is 64-bit-ish and sent as a number or a string; amounts are strings of yuan;
  an item's `itemTotal` is its quantity and `jdPrice` its unit price;
- failures come as `error_response` {code, zh_desc, en_desc}, or as an `apiResult` with
  `success: false`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from ordersync.adapters.channels import readers as r
from ordersync.adapters.channels.base import (
    Capability,
    HttpRequest,
    HttpResponse,
    PulledOrder,
    PullError,
    PullOnly,
    PullPage,
    StatusRule,
    StatusTable,
    Throttled,
    Window,
    numbered_page,
    pulled_order,
    statuses_for,
)
from ordersync.config import ChannelConfig, JdChannel
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.orders import Address, Customer, OrderLine, OrderSnapshot, Totals

CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")
SEARCH_METHOD = "jingdong.pop.order.search"
RESPONSE_KEY = "jingdong_pop_order_search_responce"
MAX_PAGE_SIZE = 50
ORDER_FIELDS = (
    "orderId,venderId,orderState,orderTotalPrice,orderSellerPrice,orderPayment,freightPrice,"
    "sellerDiscount,orderStartTime,modified,paymentConfirmTime,orderRemark,pin,"
    "consigneeInfo,itemInfoList,outBoundDate,waybill"
)

S, P = OrderStatus, PaymentStatus
DEFAULT_STATUSES = StatusTable(
    {
        "WAIT_SELLER_STOCK_OUT": StatusRule(S.PAID),  # waiting for the seller to ship
        "WAIT_SELLER_DELIVERY": StatusRule(S.PAID),  # cross-border: waiting to ship
        "WAIT_GOODS_RECEIVE_CONFIRM": StatusRule(S.SHIPPED),
        "FINISHED_L": StatusRule(S.COMPLETED),
        # Cancelled after the goods left the warehouse (intercepted, returned and refunded)
        # is a refund, not a cancellation: see map_order.
        "TRADE_CANCELED": StatusRule(S.CANCELLED),
        "LOCKED": StatusRule(S.ON_HOLD),  # locked by JD (e.g. a cancel request pending)
        "PAUSE": StatusRule(S.ON_HOLD),
        "POP_ORDER_PAUSE": StatusRule(S.ON_HOLD),
    }
)
ORDER_STATES = ",".join(DEFAULT_STATUSES.rules)


# ---- signing ----------------------------------------------------------------------------


def sign(params: Mapping[str, str], secret: str) -> str:
    """The JOS `sign` of `params` (any `sign` among them is left out)."""
    text = "".join(f"{k}{params[k]}" for k in sorted(params) if k != "sign" and params[k] != "")
    data = (secret + text + secret).encode("utf-8")
    return hashlib.md5(data, usedforsecurity=False).hexdigest().upper()


def verify_sign(params: Mapping[str, str], secret: str) -> bool:
    given = params.get("sign")
    if not secret or not given:
        return False
    return hmac.compare_digest(sign(params, secret).encode(), given.upper().encode())


def jos_time(t: datetime) -> str:
    return t.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")


def param_json(params: Mapping[str, Any]) -> str:
    """The business parameters as JOS wants them: one compact JSON object, keys sorted."""
    return json.dumps(params, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


# ---- responses --------------------------------------------------------------------------


def decode(body: bytes) -> dict[str, Any]:
    """A JOS response with exact ints and decimals (never float)."""
    try:
        data = json.loads(body.decode("utf-8"), parse_float=Decimal)
    except (ValueError, RecursionError) as e:
        raise PullError(f"JOS answered malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise PullError("JOS answered JSON that is not an object")
    return data


def raise_for_error(data: Mapping[str, Any]) -> None:
    error = data.get("error_response")
    if error is None:
        return
    err = error if isinstance(error, Mapping) else {}
    code = str(err.get("code", ""))
    desc = f"{err.get('en_desc', '')} {err.get('zh_desc', '')}".strip()
    detail = f"JOS error {code}: {desc}"
    lowered = desc.lower()
    if "limit" in lowered or "频" in desc or "busy" in lowered or "繁忙" in desc:
        raise Throttled(detail)
    raise PullError(detail)


# ---- the order --------------------------------------------------------------------------


def map_order(
    channel_id: str,
    order: Mapping[str, Any],
    statuses: StatusTable = DEFAULT_STATUSES,
    path: str = "",
) -> OrderSnapshot:
    rule = statuses.rule(order.get("orderState"), r.at(path, "orderState"))
    items = r.items(order.get("itemInfoList"), r.at(path, "itemInfoList"))
    lines = [_line(o, r.at(path, f"itemInfoList[{i}]")) for i, o in enumerate(items)]
    paid = order.get("paymentConfirmTime") not in (None, "", "0000-00-00 00:00:00")
    status = rule.status
    if status is S.CANCELLED and paid and _shipped(order):
        # Goods that left cannot be un-shipped: the cancellation refunded the payment.
        status, payment = S.SHIPPED, rule.payment or P.REFUNDED
    elif rule.payment is not None:
        payment = rule.payment
    elif rule.status is S.CANCELLED:
        payment = P.REFUNDED if paid else P.VOIDED
    else:
        payment = P.PAID if paid else P.PENDING
    return OrderSnapshot(
        channel_id=channel_id,
        external_id=order_id(order, path),
        name=None,
        currency="CNY",
        totals=Totals(
            subtotal=r.optional_money(order.get("orderTotalPrice"), r.at(path, "orderTotalPrice")),
            shipping=r.optional_money(order.get("freightPrice"), r.at(path, "freightPrice")),
            tax=None,
            discount=r.optional_money(order.get("sellerDiscount"), r.at(path, "sellerDiscount")),
            total=r.money(r.required(order, "orderPayment", path), r.at(path, "orderPayment")),
        ),
        lines=tuple(lines),
        status=status,
        payment_status=payment,
        customer=_customer(order, path),
        shipping_address=_address(order.get("consigneeInfo"), r.at(path, "consigneeInfo")),
        note=r.text(order.get("orderRemark"), r.at(path, "orderRemark")),
        placed_at=_time(order.get("orderStartTime"), r.at(path, "orderStartTime")),
        channel_updated_at=_time(r.required(order, "modified", path), r.at(path, "modified")),
    )


def order_id(order: Mapping[str, Any], path: str = "") -> str:
    found = r.ident(r.required(order, "orderId", path), r.at(path, "orderId"))
    assert found is not None
    return found


def _shipped(order: Mapping[str, Any]) -> bool:
    """True when the order left the warehouse (an out-bound date or a waybill number)."""
    out = order.get("outBoundDate")
    return out not in (None, "", "0000-00-00 00:00:00") or order.get("waybill") not in (None, "")


def _time(value: Any, path: str) -> datetime | None:
    if value is None or value == "":
        return None
    return r.timestamp(value, path, naive_zone=CHINA)


def _line(value: Any, path: str) -> OrderLine:
    item = r.required_obj(value, path)
    num = r.quantity(r.required(item, "itemTotal", path), r.at(path, "itemTotal"))
    price = r.money(r.required(item, "jdPrice", path), r.at(path, "jdPrice"))
    return OrderLine(
        sku=r.text(item.get("outerSkuId"), r.at(path, "outerSkuId")),
        name=r.text(item.get("skuName"), r.at(path, "skuName")),
        quantity=num,
        unit_price=price,
        discount=Decimal(0),
        total=r.EXACT.multiply(price, num),
        external_id=None,
        product_id=r.ident(item.get("wareId"), r.at(path, "wareId")),
        variant_id=r.ident(item.get("skuId"), r.at(path, "skuId")),
    )


def _customer(order: Mapping[str, Any], path: str) -> Customer | None:
    pin = r.text(order.get("pin"), r.at(path, "pin"))
    return Customer(external_id=pin, name=pin) if pin else None


def _address(value: Any, path: str) -> Address | None:
    info = r.obj(value, path)
    if info is None:
        return None

    def text(key: str) -> str | None:
        return r.text(info.get(key), r.at(path, key))

    return r.china_address(
        name=text("fullname"),
        line1=text("fullAddress"),
        city_parts=[text("city"), text("county"), text("town")],
        region=text("province"),
        phone=text("mobile") or text("telephone"),
    )


# ---- the connector ----------------------------------------------------------------------


class JdConnector(PullOnly):
    """Pull only: JOS pushes through its own message service (JMQ), not HTTP webhooks."""

    kind = "jd"
    capabilities = frozenset({Capability.PULL})
    default_statuses = DEFAULT_STATUSES

    def pull_request(
        self,
        channel: ChannelConfig,
        window: Window,
        page: int,
        page_size: int,
        *,
        now: datetime | None = None,
    ) -> HttpRequest:
        assert isinstance(channel, JdChannel)
        business = {
            "start_date": jos_time(window.start),
            "end_date": jos_time(window.end),
            "order_state": ORDER_STATES,
            "optional_fields": ORDER_FIELDS,
            "page": str(page),
            "page_size": str(min(page_size, MAX_PAGE_SIZE)),
            "dateType": "0",  # 0: by modified time
        }
        params = {
            "method": SEARCH_METHOD,
            "app_key": channel.app_key,
            "access_token": (
                channel.access_token.get_secret_value() if channel.access_token else ""
            ),
            "timestamp": jos_time(now or datetime.now(CHINA)),
            "v": "2.0",
            "360buy_param_json": param_json(business),
        }
        params = {k: v for k, v in params.items() if v != ""}
        params["sign"] = sign(params, channel.app_secret.get_secret_value())
        return HttpRequest("GET", channel.gateway, params=tuple(params.items()))

    def pull_response(
        self, channel: ChannelConfig, response: HttpResponse, page_size: int
    ) -> PullPage:
        assert isinstance(channel, JdChannel)
        if response.status in (429, 502, 503, 504):
            raise Throttled(f"JOS gateway answered {response.status}")
        if response.status != 200:
            raise PullError(f"JOS gateway answered {response.status}")
        data = decode(response.body)
        raise_for_error(data)
        envelope = data.get(RESPONSE_KEY)
        if not isinstance(envelope, Mapping):
            raise PullError(f"JOS answered without {RESPONSE_KEY}")
        result = envelope.get("searchorderinfo_result")
        if not isinstance(result, Mapping):
            raise PullError("JOS answered without searchorderinfo_result")
        api = result.get("apiResult")
        if isinstance(api, Mapping) and api.get("success") is False:
            raise PullError(
                f"JOS search failed {api.get('code', '')}: {api.get('englishErrCode', '')}"
                f" {api.get('chineseErrCode', '')}".rstrip()
            )
        table = statuses_for(DEFAULT_STATUSES, channel)
        orders = r.items(result.get("orderInfoList"), "orderInfoList")
        pulled = tuple(
            _pulled(channel.id, o, table, f"orderInfoList[{i}]") for i, o in enumerate(orders)
        )
        total = r.integer(result.get("orderTotal") or 0, "orderTotal")
        return numbered_page(pulled, total, page_size, MAX_PAGE_SIZE)


def _pulled(channel_id: str, order: Any, table: StatusTable, path: str) -> PulledOrder:
    return pulled_order(
        order,
        path,
        ident=order_id,
        modified=lambda o, at: _time(r.required(o, "modified", at), r.at(at, "modified")),
        snapshot=lambda o, at: map_order(channel_id, o, table, at),
    )
