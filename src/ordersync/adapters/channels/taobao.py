"""Taobao / Tmall through the TOP (Taobao Open Platform) router: signed calls, incremental
trade pull (`taobao.trades.sold.increment.get`), trades in JSON or XML.

Facts of the wire format this relies on:
- every call carries `method`, `app_key`, `session`, `timestamp` ("YYYY-MM-DD HH:MM:SS",
  China time), `format`, `v=2.0`, `sign_method` and `sign`: the parameters other than `sign`
  sorted by name and concatenated as name+value; `md5` signs md5(secret + that + secret),
  `hmac` / `hmac-sha256` sign HMAC-MD5 / HMAC-SHA256 of it keyed with the secret; the digest
  is written in upper-case hex;
- the increment call takes a `start_modified`/`end_modified` window (China time, at most a
  day), `page_no`, `page_size`, and with `use_has_next=false` answers `total_results`;
- a trade's `tid` and a sub-order's `oid` are 64-bit (beyond 2^53); amounts are strings;
- failures come as `error_response` {code, msg, sub_code, sub_msg}; code 7 is "App Call
  Limited", whose sub_msg says how many seconds the ban lasts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import xml.etree.ElementTree as ET
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
from ordersync.config import ChannelConfig, TaobaoChannel
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.orders import Address, Customer, OrderLine, OrderSnapshot, Totals

CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")
INCREMENT_METHOD = "taobao.trades.sold.increment.get"
MAX_PAGE_SIZE = 100
TRADE_FIELDS = (
    "tid,tid_str,status,payment,total_fee,post_fee,discount_fee,created,modified,pay_time,"
    "consign_time,"
    "buyer_nick,buyer_open_uid,buyer_message,receiver_name,receiver_state,receiver_city,"
    "receiver_district,receiver_town,receiver_address,receiver_zip,receiver_mobile,"
    "receiver_phone,orders"
)
_BAN_SECONDS = re.compile(r"([0-9]+)\s*more\s*second")

S, P = OrderStatus, PaymentStatus
DEFAULT_STATUSES = StatusTable(
    {
        "TRADE_NO_CREATE_PAY": StatusRule(S.PENDING, P.PENDING),  # no Alipay trade yet
        "WAIT_BUYER_PAY": StatusRule(S.PENDING, P.PENDING),
        "PAY_PENDING": StatusRule(S.PENDING, P.PENDING),  # paid by a method still clearing
        "WAIT_SELLER_SEND_GOODS": StatusRule(S.PAID),
        "SELLER_CONSIGNED_PART": StatusRule(S.PAID),  # some sub-orders shipped
        "WAIT_BUYER_CONFIRM_GOODS": StatusRule(S.SHIPPED),
        "TRADE_BUYER_SIGNED": StatusRule(S.DELIVERED),  # cash on delivery: signed for
        "TRADE_FINISHED": StatusRule(S.COMPLETED),  # confirmed by the buyer, or timed out
        # Refunded after payment, or closed unpaid. Closed after the goods were consigned
        # (a return and refund) is not a cancellation: see map_trade.
        "TRADE_CLOSED": StatusRule(S.CANCELLED),
        "TRADE_CLOSED_BY_TAOBAO": StatusRule(S.CANCELLED, P.VOIDED),  # closed before payment
    }
)


# ---- signing ----------------------------------------------------------------------------


def sign(params: Mapping[str, str], secret: str, method: str = "md5") -> str:
    """The TOP `sign` of `params` (any `sign` among them is left out)."""
    text = "".join(f"{k}{params[k]}" for k in sorted(params) if k != "sign" and params[k] != "")
    key = secret.encode("utf-8")
    if method == "md5":
        digest = hashlib.md5(key + text.encode("utf-8") + key, usedforsecurity=False).hexdigest()
    elif method == "hmac":
        digest = hmac.new(key, text.encode("utf-8"), hashlib.md5).hexdigest()
    elif method == "hmac-sha256":
        digest = hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()
    else:
        raise ValueError(f"unknown sign_method {method!r}")
    return digest.upper()


def verify_sign(params: Mapping[str, str], secret: str) -> bool:
    given = params.get("sign")
    if not secret or not given:
        return False
    try:
        expected = sign(params, secret, params.get("sign_method", "md5"))
    except ValueError:
        return False
    return hmac.compare_digest(expected.encode(), given.upper().encode())


def top_time(t: datetime) -> str:
    return t.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")


# ---- responses --------------------------------------------------------------------------


def decode(body: bytes, fmt: str) -> dict[str, Any]:
    """A TOP response as a dict: JSON with exact ints and decimals, or XML in the same shape
    (a `list="true"` element becomes {child: [...]}, as in the JSON)."""
    if fmt == "xml":
        try:
            # The body comes from the TOP gateway we called over TLS; expat refuses external
            # entities and bounds entity expansion, and only the built-in ones occur.
            root = ET.fromstring(body)  # noqa: S314
        except ET.ParseError as e:
            raise PullError(f"TOP answered malformed XML: {e}") from None
        return {root.tag: _from_xml(root)}
    try:
        data = json.loads(body.decode("utf-8"), parse_float=Decimal)
    except (ValueError, RecursionError) as e:
        raise PullError(f"TOP answered malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise PullError("TOP answered JSON that is not an object")
    return data


def _from_xml(element: ET.Element) -> Any:
    children = list(element)
    if element.get("list") == "true":
        tag = children[0].tag if children else "item"
        return {tag: [_from_xml(c) for c in children]}
    if not children:
        return element.text or ""
    return {c.tag: _from_xml(c) for c in children}


def raise_for_error(data: Mapping[str, Any]) -> None:
    error = data.get("error_response")
    if error is None:
        return
    err = error if isinstance(error, Mapping) else {}
    code, sub_code = str(err.get("code", "")), str(err.get("sub_code", ""))
    detail = f"TOP error {code} {err.get('msg', '')} ({sub_code}: {err.get('sub_msg', '')})"
    if code == "7" or "call-limited" in sub_code or "limited-by" in sub_code:
        ban = _BAN_SECONDS.search(str(err.get("sub_msg", "")))
        raise Throttled(detail, float(ban.group(1)) if ban else None)
    if sub_code.startswith("isp.") and ("unavailable" in sub_code or "timeout" in sub_code):
        raise Throttled(detail)  # the platform's own trouble: back off, try again
    raise PullError(detail)


# ---- the trade --------------------------------------------------------------------------


def map_trade(
    channel_id: str,
    trade: Mapping[str, Any],
    statuses: StatusTable = DEFAULT_STATUSES,
    path: str = "",
) -> OrderSnapshot:
    rule = statuses.rule(trade.get("status"), r.at(path, "status"))
    subs = r.items(
        (r.obj(trade.get("orders"), r.at(path, "orders")) or {}).get("order"),
        r.at(path, "orders.order"),
    )
    lines = [_line(o, r.at(path, f"orders.order[{i}]")) for i, o in enumerate(subs)]
    refunds = [_refunded(o) for o in subs]
    paid = trade.get("pay_time") not in (None, "")
    status = rule.status
    if status is S.CANCELLED and paid and _consigned(trade, subs):
        # The goods left before the trade closed: it closed because everything was refunded
        # (returned), and goods that left cannot be un-shipped.
        status, payment = S.SHIPPED, rule.payment or P.REFUNDED
    elif rule.payment is not None:
        payment = rule.payment
    elif rule.status is S.CANCELLED:
        payment = P.REFUNDED if paid else P.VOIDED
    elif paid and refunds and all(refunds):
        payment = P.REFUNDED
    elif paid and any(refunds):
        payment = P.PARTIALLY_REFUNDED
    else:
        payment = P.PAID if paid else P.PENDING
    return OrderSnapshot(
        channel_id=channel_id,
        external_id=trade_id(trade, path),
        name=None,
        currency="CNY",
        totals=Totals(
            subtotal=r.optional_money(trade.get("total_fee"), r.at(path, "total_fee")),
            shipping=r.optional_money(trade.get("post_fee"), r.at(path, "post_fee")),
            tax=None,
            discount=r.optional_money(trade.get("discount_fee"), r.at(path, "discount_fee")),
            total=r.money(r.required(trade, "payment", path), r.at(path, "payment")),
        ),
        lines=tuple(lines),
        status=status,
        payment_status=payment,
        customer=_customer(trade, path),
        shipping_address=_address(trade, path),
        note=r.text(trade.get("buyer_message"), r.at(path, "buyer_message")),
        placed_at=_time(trade.get("created"), r.at(path, "created")),
        channel_updated_at=_time(r.required(trade, "modified", path), r.at(path, "modified")),
    )


def trade_id(trade: Mapping[str, Any], path: str = "") -> str:
    # tid_str exists because tids outgrew JavaScript numbers; prefer it when sent.
    found = r.ident(trade.get("tid_str"), r.at(path, "tid_str")) or r.ident(
        r.required(trade, "tid", path), r.at(path, "tid")
    )
    assert found is not None
    return found


def _time(value: Any, path: str) -> datetime | None:
    if value is None or value == "":
        return None
    return r.timestamp(value, path, naive_zone=CHINA)


def _consigned(trade: Mapping[str, Any], subs: list[Any]) -> bool:
    """True when the seller had shipped (the trade or any sub-order has a consign time)."""
    return trade.get("consign_time") not in (None, "") or any(
        isinstance(o, Mapping) and o.get("consign_time") not in (None, "") for o in subs
    )


def _refunded(sub: Any) -> bool:
    return isinstance(sub, Mapping) and sub.get("refund_status") == "SUCCESS"


def _line(value: Any, path: str) -> OrderLine:
    sub = r.required_obj(value, path)
    num = r.quantity(r.required(sub, "num", path), r.at(path, "num"))
    price = r.money(r.required(sub, "price", path), r.at(path, "price"))
    paid_raw = sub.get("payment")
    if paid_raw in (None, ""):
        paid_raw = r.required(sub, "total_fee", path)
    total = r.money(paid_raw, r.at(path, "payment"))
    return OrderLine(
        sku=r.text(sub.get("outer_sku_id"), r.at(path, "outer_sku_id"))
        or r.text(sub.get("outer_iid"), r.at(path, "outer_iid")),
        name=r.text(sub.get("title"), r.at(path, "title")),
        quantity=num,
        unit_price=price,
        discount=r.EXACT.subtract(r.EXACT.multiply(price, num), total),
        total=total,
        external_id=r.ident(sub.get("oid_str"), r.at(path, "oid_str"))
        or r.ident(sub.get("oid"), r.at(path, "oid")),
        product_id=r.ident(sub.get("num_iid"), r.at(path, "num_iid")),
        variant_id=r.ident(sub.get("sku_id"), r.at(path, "sku_id")),
    )


def _customer(trade: Mapping[str, Any], path: str) -> Customer | None:
    customer = Customer(
        external_id=r.ident(trade.get("buyer_open_uid"), r.at(path, "buyer_open_uid")),
        name=r.text(trade.get("buyer_nick"), r.at(path, "buyer_nick")),
    )
    return None if customer == Customer() else customer


def _address(trade: Mapping[str, Any], path: str) -> Address | None:
    def text(key: str) -> str | None:
        return r.text(trade.get(key), r.at(path, key))

    return r.china_address(
        name=text("receiver_name"),
        line1=text("receiver_address"),
        city_parts=[text("receiver_city"), text("receiver_district"), text("receiver_town")],
        region=text("receiver_state"),
        postal_code=text("receiver_zip"),
        phone=text("receiver_mobile") or text("receiver_phone"),
    )


# ---- the connector ----------------------------------------------------------------------


class TaobaoConnector(PullOnly):
    """Pull only: TOP pushes through its message service (TMC), not HTTP webhooks."""

    kind = "taobao"
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
        assert isinstance(channel, TaobaoChannel)
        params = {
            "method": INCREMENT_METHOD,
            "app_key": channel.app_key,
            "session": channel.session.get_secret_value() if channel.session else "",
            "timestamp": top_time(now or datetime.now(CHINA)),
            "format": channel.format,
            "v": "2.0",
            "sign_method": channel.sign_method,
            "fields": TRADE_FIELDS,
            "start_modified": top_time(window.start),
            "end_modified": top_time(window.end),
            "page_no": str(page),
            "page_size": str(min(page_size, MAX_PAGE_SIZE)),
            "use_has_next": "false",
        }
        params = {k: v for k, v in params.items() if v != ""}
        params["sign"] = sign(params, channel.app_secret.get_secret_value(), channel.sign_method)
        return HttpRequest("GET", channel.gateway, params=tuple(params.items()))

    def pull_response(
        self, channel: ChannelConfig, response: HttpResponse, page_size: int
    ) -> PullPage:
        assert isinstance(channel, TaobaoChannel)
        if response.status in (429, 502, 503, 504):
            raise Throttled(f"TOP gateway answered {response.status}")
        if response.status != 200:
            raise PullError(f"TOP gateway answered {response.status}")
        data = decode(response.body, channel.format)
        raise_for_error(data)
        body = data.get("trades_sold_increment_get_response")
        if not isinstance(body, Mapping):
            raise PullError("TOP answered without trades_sold_increment_get_response")
        table = statuses_for(DEFAULT_STATUSES, channel)
        trades = r.items((r.obj(body.get("trades"), "trades") or {}).get("trade"), "trades.trade")
        pulled = tuple(
            _pulled(channel.id, t, table, f"trades.trade[{i}]") for i, t in enumerate(trades)
        )
        total = r.integer(body.get("total_results") or 0, "total_results")
        return numbered_page(pulled, total, page_size, MAX_PAGE_SIZE)


def _pulled(channel_id: str, trade: Any, table: StatusTable, path: str) -> PulledOrder:
    return pulled_order(
        trade,
        path,
        ident=trade_id,
        modified=lambda t, at: _time(r.required(t, "modified", at), r.at(at, "modified")),
        snapshot=lambda t, at: map_trade(channel_id, t, table, at),
    )
