"""Douyin shop (抖店) through its open API: signed calls, order pull (`order.searchList`) by
update-time window, and signed message pushes.

Facts of the wire format this relies on:
- every call carries `app_key`, `method`, `access_token`, `param_json` (the business
  parameters as compact JSON, keys sorted), `timestamp` ("YYYY-MM-DD HH:MM:SS", China time),
  `v=2`, `sign_method` and `sign`; the signed text is secret + "app_key"+key + "method"+m +
  "param_json"+json + "timestamp"+t + "v"+v + secret, signed as lower-case hex MD5 of it
  (`md5`) or HMAC-SHA256 keyed with the secret (`hmac-sha256`);
- `order.searchList` takes `update_time_start`/`update_time_end` (Unix seconds), `page`
  (0-based) and `size` (at most 100), and answers {code: 10000, data: {shop_order_list,
  total, page, size}}; any other code is an error with `msg`, `sub_code`, `sub_msg`;
- amounts are integers in fen (1/100 yuan); times are Unix seconds; `order_id` is a numeric
  string too long for a float;
- `order.orderDetail` takes `shop_order_id` and answers {code: 10000, data:
  {shop_order_detail}}, the order in the same shape as a search result;
- a message push is a JSON array of {tag, msg_id, data (a JSON string)} with an `event-sign`
  header: MD5 (or, with `sign-method: hmac-sha256`, HMAC-SHA256 keyed with the secret) of
  app_key + body + secret. Trade and refund messages (tags 100-299: created, paid, shipped,
  finished, cancelled, address changed, refund steps...) name the order (`p_id`, `s_ids`)
  and its new status, not the whole order; as the platform's own integrations do, the hub
  fetches that order's detail and ingests it (`adapters/channels/push_fetch.py`). Other
  messages (and every message of a channel without an access token) are only recorded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
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
    numbered_page,
    pulled_order,
    statuses_for,
)
from ordersync.adapters.channels.push_fetch import PushedOrder
from ordersync.config import ChannelConfig, DouyinChannel
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.orders import Address, Customer, OrderLine, OrderSnapshot, Totals

CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")
SEARCH_METHOD = "order.searchList"
DETAIL_METHOD = "order.orderDetail"
OK = 10000
MAX_PAGE_SIZE = 100

S, P = OrderStatus, PaymentStatus
DEFAULT_STATUSES = StatusTable(
    {
        "1": StatusRule(S.PENDING, P.PENDING),  # 待确认/待支付
        "103": StatusRule(S.PENDING, P.PARTIALLY_PAID),  # 部分支付 (deposit presale)
        "105": StatusRule(S.PAID, P.PAID),  # 已支付
        "2": StatusRule(S.PAID, P.PAID),  # 备货中
        "101": StatusRule(S.PAID, P.PAID),  # 部分发货
        "3": StatusRule(S.SHIPPED, P.PAID),  # 已发货
        "5": StatusRule(S.COMPLETED, P.PAID),  # 已完成
        # 已取消: refunded when it was paid, else voided; closed after shipping (a return
        # and refund) is a refund, not a cancellation: see map_order.
        "4": StatusRule(S.CANCELLED),
    }
)


# ---- signing ----------------------------------------------------------------------------


def param_json(params: Mapping[str, Any]) -> str:
    """Business parameters as the platform signs them: compact JSON, keys sorted."""
    return json.dumps(params, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def sign(
    app_key: str,
    secret: str,
    method: str,
    params_json: str,
    timestamp: str,
    v: str = "2",
    sign_method: str = "hmac-sha256",
) -> str:
    """The `sign` of one call."""
    pairs = [("app_key", app_key), ("method", method), ("param_json", params_json)]
    pairs += [("timestamp", timestamp), ("v", v)]
    text = secret + "".join(k + val for k, val in pairs) + secret
    data = text.encode("utf-8")
    if sign_method == "md5":
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    if sign_method == "hmac-sha256":
        return hmac.new(secret.encode("utf-8"), data, hashlib.sha256).hexdigest()
    raise ValueError(f"unknown sign_method {sign_method!r}")


def verify_call(params: Mapping[str, str], secret: str) -> bool:
    """True if a call's `sign` matches its parameters (the simulator's check)."""
    given = params.get("sign")
    if not secret or not given:
        return False
    try:
        expected = sign(
            params.get("app_key", ""),
            secret,
            params.get("method", ""),
            params.get("param_json", ""),
            params.get("timestamp", ""),
            params.get("v", ""),
            params.get("sign_method", "md5"),
        )
    except ValueError:
        return False
    return hmac.compare_digest(expected.encode(), given.lower().encode())


def event_sign(app_key: str, secret: str, body: bytes, sign_method: str = "md5") -> str:
    """The `event-sign` of a message push."""
    data = app_key.encode("utf-8") + body + secret.encode("utf-8")
    if sign_method == "hmac-sha256":
        return hmac.new(secret.encode("utf-8"), data, hashlib.sha256).hexdigest()
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def open_time(t: datetime) -> str:
    return t.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")


# ---- amounts and times ------------------------------------------------------------------


def fen(value: Any, path: str) -> Decimal:
    """Integer fen as exact yuan (1234 -> 12.34); fractions and negatives refused."""
    cents = r.integer(value, path)
    if cents < 0:
        raise MappingError(path, f"amount must not be negative, got {cents}")
    return Decimal(cents).scaleb(-2)


def _optional_fen(value: Any, path: str) -> Decimal | None:
    return None if value is None or value == "" else fen(value, path)


def unix_time(value: Any, path: str) -> datetime | None:
    if value is None or value == "" or value == 0 or value == "0":
        return None
    seconds = r.integer(value, path)
    if seconds < 0:
        raise MappingError(path, f"expected Unix seconds, got {seconds}")
    return datetime.fromtimestamp(seconds, UTC)


# ---- the order --------------------------------------------------------------------------


def map_order(
    channel_id: str,
    order: Mapping[str, Any],
    statuses: StatusTable = DEFAULT_STATUSES,
    path: str = "",
) -> OrderSnapshot:
    raw_status = order.get("order_status")
    status_key = str(raw_status) if isinstance(raw_status, int | str) else raw_status
    rule = statuses.rule(status_key, r.at(path, "order_status"))
    subs = r.items(order.get("sku_order_list"), r.at(path, "sku_order_list"))
    lines = [_line(o, r.at(path, f"sku_order_list[{i}]")) for i, o in enumerate(subs)]
    paid = unix_time(order.get("pay_time"), r.at(path, "pay_time")) is not None
    shipped = unix_time(order.get("ship_time"), r.at(path, "ship_time")) is not None
    status = rule.status
    if status is S.CANCELLED and paid and shipped:
        # Goods that left cannot be un-shipped: closing the order refunded it.
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
            subtotal=None,
            shipping=_optional_fen(order.get("post_amount"), r.at(path, "post_amount")),
            tax=None,
            discount=_optional_fen(order.get("promotion_amount"), r.at(path, "promotion_amount")),
            total=fen(r.required(order, "pay_amount", path), r.at(path, "pay_amount")),
        ),
        lines=tuple(lines),
        status=status,
        payment_status=payment,
        customer=_customer(order, path),
        shipping_address=_address(order, path),
        note=r.text(order.get("buyer_words"), r.at(path, "buyer_words")),
        placed_at=unix_time(order.get("create_time"), r.at(path, "create_time")),
        channel_updated_at=unix_time(
            r.required(order, "update_time", path), r.at(path, "update_time")
        ),
    )


def order_id(order: Mapping[str, Any], path: str = "") -> str:
    found = r.ident(r.required(order, "order_id", path), r.at(path, "order_id"))
    assert found is not None
    return found


def _line(value: Any, path: str) -> OrderLine:
    sub = r.required_obj(value, path)
    num = r.quantity(r.required(sub, "item_num", path), r.at(path, "item_num"))
    price = fen(r.required(sub, "goods_price", path), r.at(path, "goods_price"))
    total = fen(r.required(sub, "pay_amount", path), r.at(path, "pay_amount"))
    return OrderLine(
        sku=r.text(sub.get("code"), r.at(path, "code")),
        name=r.text(sub.get("product_name"), r.at(path, "product_name")),
        quantity=num,
        unit_price=price,
        discount=r.EXACT.subtract(r.EXACT.multiply(price, num), total),
        total=total,
        external_id=r.ident(sub.get("order_id"), r.at(path, "order_id")),
        product_id=r.ident(sub.get("product_id"), r.at(path, "product_id")),
        variant_id=r.ident(sub.get("sku_id"), r.at(path, "sku_id")),
    )


def _customer(order: Mapping[str, Any], path: str) -> Customer | None:
    open_id = r.text(order.get("doudian_open_id"), r.at(path, "doudian_open_id"))
    return Customer(external_id=open_id) if open_id else None


def _address(order: Mapping[str, Any], path: str) -> Address | None:
    addr = r.obj(order.get("post_addr"), r.at(path, "post_addr")) or {}
    apath = r.at(path, "post_addr")

    def named(key: str) -> str | None:
        part = r.obj(addr.get(key), r.at(apath, key))
        return r.text(part.get("name"), r.at(apath, f"{key}.name")) if part else None

    return r.china_address(
        name=r.text(order.get("post_receiver"), r.at(path, "post_receiver")),
        line1=r.text(addr.get("detail"), r.at(apath, "detail")),
        city_parts=[named("city"), named("town"), named("street")],
        region=named("province"),
        phone=r.text(order.get("post_tel"), r.at(path, "post_tel")),
    )


# ---- the connector ----------------------------------------------------------------------


class DouyinConnector:
    """Pull for orders; pushes are verified and recorded (they carry no whole order)."""

    kind = "douyin"
    capabilities = frozenset({Capability.PULL, Capability.PUSH})
    default_statuses = DEFAULT_STATUSES

    def verify(self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes) -> bool:
        assert isinstance(channel, DouyinChannel)
        given = headers.get("event-sign")
        if not given:
            return False
        method = headers.get("sign-method", "md5").lower()
        if method not in ("md5", "hmac-sha256"):
            return False
        secret = channel.app_secret.get_secret_value()
        expected = event_sign(channel.app_key, secret, body, method)
        return hmac.compare_digest(expected.encode(), given.strip().lower().encode())

    def parse(
        self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes
    ) -> InboundMessage:
        """The push as one record (its msg_ids joined); the orders it names are fetched and
        ingested separately, see `pushed_orders`."""
        messages = _messages(channel, headers, body)
        ids = [m.msg_id for m in messages]
        tags = [m.tag for m in messages]
        kept = {"app-id": headers.get("app-id"), "tags": tags}
        return InboundMessage("+".join(ids), _topic(tags), None, orjson.dumps(kept).decode())

    def pushed_orders(
        self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes
    ) -> tuple[PushedOrder, ...]:
        """The orders named by the push's trade and refund messages, one entry per order
        with all of its messages' ids; () without an access token (nothing to fetch with)."""
        assert isinstance(channel, DouyinChannel)
        if channel.access_token is None:
            return ()
        grouped: dict[str, list[_Message]] = {}
        for m in _messages(channel, headers, body):
            if m.order_id is not None:
                grouped.setdefault(m.order_id, []).append(m)
        return tuple(
            PushedOrder(
                order_id,
                "+".join(m.msg_id for m in found),
                _topic([m.tag for m in found]),
            )
            for order_id, found in grouped.items()
        )

    def detail_request(
        self, channel: ChannelConfig, external_id: str, *, now: datetime | None = None
    ) -> HttpRequest:
        assert isinstance(channel, DouyinChannel)
        return _call(channel, DETAIL_METHOD, {"shop_order_id": external_id}, now)

    def detail_response(self, channel: ChannelConfig, response: HttpResponse) -> PulledOrder:
        assert isinstance(channel, DouyinChannel)
        body = _answer(response)
        order = body.get("shop_order_detail")
        if not isinstance(order, Mapping):
            raise PullError("Douyin answered an order detail without shop_order_detail")
        table = statuses_for(DEFAULT_STATUSES, channel)
        return _pulled(channel.id, order, table, "data.shop_order_detail")

    def pull_request(
        self,
        channel: ChannelConfig,
        window: Window,
        page: int,
        page_size: int,
        *,
        now: datetime | None = None,
    ) -> HttpRequest:
        assert isinstance(channel, DouyinChannel)
        business = {
            "update_time_start": int(window.start.timestamp()),
            "update_time_end": math.ceil(window.end.timestamp()),
            "page": page - 1,  # the platform counts pages from 0
            "size": min(page_size, MAX_PAGE_SIZE),
            "order_by": "update_time",
            "order_asc": True,
        }
        return _call(channel, SEARCH_METHOD, business, now)

    def pull_response(
        self, channel: ChannelConfig, response: HttpResponse, page_size: int
    ) -> PullPage:
        assert isinstance(channel, DouyinChannel)
        body = _answer(response)
        table = statuses_for(DEFAULT_STATUSES, channel)
        orders = r.items(body.get("shop_order_list"), "data.shop_order_list")
        pulled = tuple(
            _pulled(channel.id, o, table, f"data.shop_order_list[{i}]")
            for i, o in enumerate(orders)
        )
        total = r.integer(body.get("total") or 0, "data.total")
        return numbered_page(pulled, total, page_size, MAX_PAGE_SIZE)


def _pulled(channel_id: str, order: Any, table: StatusTable, path: str) -> PulledOrder:
    return pulled_order(
        order,
        path,
        ident=order_id,
        modified=lambda o, at: unix_time(r.required(o, "update_time", at), r.at(at, "update_time")),
        snapshot=lambda o, at: map_order(channel_id, o, table, at),
    )


# ---- calls and answers ------------------------------------------------------------------


def _call(
    channel: DouyinChannel, method: str, business: Mapping[str, Any], now: datetime | None
) -> HttpRequest:
    """A signed GET of `method` with its business parameters."""
    body = param_json(business)
    stamp = open_time(now or datetime.now(CHINA))
    secret = channel.app_secret.get_secret_value()
    params = {
        "app_key": channel.app_key,
        "method": method,
        "access_token": channel.access_token.get_secret_value() if channel.access_token else "",
        "param_json": body,
        "timestamp": stamp,
        "v": "2",
        "sign_method": channel.sign_method,
        "sign": sign(channel.app_key, secret, method, body, stamp, "2", channel.sign_method),
    }
    url = channel.gateway.rstrip("/") + "/" + method.replace(".", "/")
    return HttpRequest("GET", url, params=tuple((k, v) for k, v in params.items() if v))


def _answer(response: HttpResponse) -> Mapping[str, Any]:
    """The `data` of a successful answer; Throttled or PullError otherwise."""
    if response.status in (429, 502, 503, 504):
        raise Throttled(f"Douyin gateway answered {response.status}")
    if response.status != 200:
        raise PullError(f"Douyin gateway answered {response.status}")
    try:
        data = json.loads(response.body.decode("utf-8"), parse_float=Decimal)
    except (ValueError, RecursionError) as e:
        raise PullError(f"Douyin answered malformed JSON: {e}") from None
    if not isinstance(data, Mapping):
        raise PullError("Douyin answered JSON that is not an object")
    code = data.get("code")
    if code != OK:
        detail = (
            f"Douyin error {code} {data.get('msg', '')}"
            f" ({data.get('sub_code', '')}: {data.get('sub_msg', '')})"
        )
        words = f"{data.get('msg', '')} {data.get('sub_msg', '')}"
        if "限流" in words or "频" in words or "limit" in words.lower():
            raise Throttled(detail)
        raise PullError(detail)
    return r.obj(data.get("data"), "data") or {}


# ---- message push -----------------------------------------------------------------------

# Trade (1xx) and after-sale (2xx) messages name a shop order in `p_id`.
_ORDER_TAGS = range(100, 300)


@dataclass(frozen=True, slots=True)
class _Message:
    tag: str
    msg_id: str
    order_id: str | None  # the shop order a trade or refund message is about


def _messages(channel: ChannelConfig, headers: Mapping[str, str], body: bytes) -> list[_Message]:
    assert isinstance(channel, DouyinChannel)
    if headers.get("app-id") not in (None, channel.app_key):
        raise InboundError(401, "unknown_app", "app-id does not match this channel")
    try:
        messages = json.loads(body.decode("utf-8"), parse_float=Decimal)
    except (ValueError, RecursionError):
        raise InboundError(422, "invalid_payload", "the body is not JSON") from None
    if not isinstance(messages, list) or not messages:
        raise InboundError(422, "invalid_payload", "expected a non-empty array of messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not m.get("msg_id") or m.get("tag") in (None, ""):
            raise InboundError(
                422, "invalid_payload", "each message needs tag and msg_id", path=f"[{i}]"
            )
        tag = str(m["tag"])
        order_id = _order_of(m.get("data"), f"[{i}].data") if _is_order_tag(tag) else None
        out.append(_Message(tag, str(m["msg_id"]), order_id))
    return out


def _is_order_tag(tag: str) -> bool:
    return tag.isdigit() and int(tag) in _ORDER_TAGS


def _order_of(data: Any, path: str) -> str | None:
    """The `p_id` of a message's data (a JSON string, or already an object)."""
    if isinstance(data, str):
        try:
            data = json.loads(data, parse_float=Decimal)  # ints stay exact: 19-digit ids
        except (ValueError, RecursionError):
            raise InboundError(422, "invalid_payload", "data is not JSON", path=path) from None
    if not isinstance(data, Mapping):
        return None
    try:
        return r.ident(data.get("p_id"), f"{path}.p_id")
    except MappingError as e:
        raise InboundError(422, "invalid_payload", e.problem, path=e.path) from None


def _topic(tags: list[str]) -> str:
    return f"douyin:{tags[0]}" if len(set(tags)) == 1 else "douyin:batch"
