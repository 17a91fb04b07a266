"""Douyin shop (抖店): call signing (md5 and hmac-sha256), message-push verification, orders
with amounts in fen, statuses, and the messy cases (missing buyer, empty SKU, huge ids,
non-ASCII names, negative amounts, forged signatures)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from ordersync.adapters.channels import douyin as dy
from ordersync.adapters.channels.base import (
    HttpResponse,
    InboundError,
    PullError,
    Throttled,
    Window,
)
from ordersync.config import DouyinChannel, settings_from_mapping
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.simulators.douyin_shop import make_order

KEY, SECRET = "7100000000000000001", "dy-secret-baicha"
HUGE_ID = 6_920_000_000_000_000_001  # 19 digits: far beyond 2^53
UPDATED = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
CONNECTOR = dy.DouyinConnector()
SIGNED_PAIRS = f"app_key{KEY}methodorder.searchListparam_json{{}}timestamp2026-11-22 12:00:00v2"


def channel(**extra: Any) -> DouyinChannel:
    raw = {
        "id": "douyin-shop",
        "kind": "douyin",
        "app_key": KEY,
        "app_secret": SECRET,
        "access_token": "dy-token",
        **extra,
    }
    (found,) = settings_from_mapping({"channels": [raw]}, env={}).channels
    assert isinstance(found, DouyinChannel)
    return found


def pull(orders: list[dict[str, Any]], page_size: int = 20, **extra: Any) -> Any:
    data = {"code": 10000, "msg": "success", "data": {"shop_order_list": orders, "total": 45}}
    body = json.dumps(data, ensure_ascii=False).encode("utf-8")
    return CONNECTOR.pull_response(channel(**extra), HttpResponse(200, {}, body), page_size)


def one(order: dict[str, Any], **extra: Any) -> Any:
    (pulled,) = pull([order], **extra).orders
    return pulled


# ---- signing ------------------------------------------------------------------------------


def test_md5_call_sign_wraps_the_fixed_parameter_order_in_the_secret() -> None:
    """md5(secret + app_key.. method.. param_json.. timestamp.. v.. + secret), lower hex."""
    text = SECRET + SIGNED_PAIRS + SECRET
    expected = hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
    got = dy.sign(KEY, SECRET, "order.searchList", "{}", "2026-11-22 12:00:00", "2", "md5")
    assert got == expected


def test_hmac_sha256_call_sign_is_keyed_with_the_secret() -> None:
    """hmac-sha256 signs the same text, keyed with the app secret."""
    text = SECRET + SIGNED_PAIRS + SECRET
    expected = hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()
    got = dy.sign(KEY, SECRET, "order.searchList", "{}", "2026-11-22 12:00:00")
    assert got == expected


def test_param_json_has_sorted_keys_and_no_spaces() -> None:
    """The signed param_json is compact with keys sorted."""
    assert dy.param_json({"size": 10, "page": 0, "b": "白"}) == '{"b":"白","page":0,"size":10}'


def test_the_pull_request_is_signed_with_a_zero_based_page_and_unix_window() -> None:
    """Page 1 of the engine is page 0 of the platform; times are Unix seconds."""
    window = Window(UPDATED, datetime(2026, 11, 22, 4, 10, 0, 500_000, tzinfo=UTC))
    now = datetime(2026, 11, 22, 4, 11, tzinfo=UTC)
    req = CONNECTOR.pull_request(channel(), window, 1, 500, now=now)
    params = dict(req.params)
    assert req.url.endswith("/order/searchList")
    business = json.loads(params["param_json"])
    assert business["page"] == 0
    assert business["size"] == dy.MAX_PAGE_SIZE
    assert business["update_time_start"] == int(UPDATED.timestamp())
    assert business["update_time_end"] == int(UPDATED.timestamp()) + 601
    assert params["timestamp"] == "2026-11-22 12:11:00"
    assert dy.verify_call(params, SECRET)
    assert not dy.verify_call({**params, "param_json": params["param_json"] + " "}, SECRET)


# ---- message push -------------------------------------------------------------------------


def push_body() -> bytes:
    msg = {"tag": "100", "msg_id": "m-1", "data": json.dumps({"p_id": HUGE_ID})}
    return json.dumps([msg]).encode()


@pytest.mark.parametrize("method", ["md5", "hmac-sha256"])
def test_a_signed_push_verifies_and_is_recorded_without_an_order(method: str) -> None:
    """event-sign over app_key + body + secret verifies; the message id is msg_id."""
    body = push_body()
    headers = {"event-sign": dy.event_sign(KEY, SECRET, body, method), "app-id": KEY}
    if method != "md5":
        headers["sign-method"] = method
    assert CONNECTOR.verify(channel(), headers, body)
    msg = CONNECTOR.parse(channel(), headers, body)
    assert msg.message_id == "m-1"
    assert msg.topic == "douyin:100"
    assert msg.snapshot is None


def test_forged_or_tampered_pushes_do_not_verify() -> None:
    """Another secret, a changed body, a missing header or an unknown method all fail."""
    body = push_body()
    good = dy.event_sign(KEY, SECRET, body)
    assert not CONNECTOR.verify(channel(), {"event-sign": dy.event_sign(KEY, "x", body)}, body)
    assert not CONNECTOR.verify(channel(), {"event-sign": good}, body + b" ")
    assert not CONNECTOR.verify(channel(), {}, body)
    assert not CONNECTOR.verify(channel(), {"event-sign": good, "sign-method": "sha1"}, body)


def test_a_push_that_is_not_a_message_array_is_refused() -> None:
    """An object, an empty array or a message without msg_id is a 422 with its path."""
    for body in (b"{}", b"[]"):
        with pytest.raises(InboundError):
            CONNECTOR.parse(channel(), {}, body)
    with pytest.raises(InboundError) as e:
        CONNECTOR.parse(channel(), {}, json.dumps([{"tag": "100"}]).encode())
    assert e.value.path == "[0]"


# ---- orders -------------------------------------------------------------------------------


def test_an_order_maps_with_fen_amounts_as_exact_yuan() -> None:
    """16970 fen is 169.70 yuan, 5990 fen a unit; ids are 19-digit strings."""
    pulled = one(make_order(HUGE_ID, UPDATED))
    snap = pulled.snapshot
    assert pulled.error is None
    assert snap.external_id == "6920000000000000001"
    assert snap.totals.total == Decimal("169.70")
    (line,) = snap.lines
    assert line.unit_price == Decimal("59.90")
    assert line.quantity == 3
    assert line.total == Decimal("169.70")
    assert line.discount == Decimal("10.00")  # 3 x 59.90 = 179.70, paid 169.70
    assert line.sku == "ANJI-100"
    assert line.name == "安吉白茶 100g"
    assert snap.shipping_address.region == "浙江省"
    assert snap.shipping_address.city == "湖州市 安吉县 递铺街道"
    assert snap.channel_updated_at == UPDATED


def test_huge_ids_sent_as_numbers_keep_every_digit() -> None:
    """A 19-digit order_id sent as a JSON number is read exactly (no float)."""
    order = {**make_order(HUGE_ID, UPDATED), "order_id": HUGE_ID}
    assert one(order).external_id == "6920000000000000001"


@pytest.mark.parametrize(
    ("code", "status", "payment"),
    [
        (1, OrderStatus.PENDING, PaymentStatus.PENDING),
        (105, OrderStatus.PAID, PaymentStatus.PAID),
        (2, OrderStatus.PAID, PaymentStatus.PAID),
        (101, OrderStatus.PAID, PaymentStatus.PAID),
        (3, OrderStatus.SHIPPED, PaymentStatus.PAID),
        (5, OrderStatus.COMPLETED, PaymentStatus.PAID),
        (4, OrderStatus.CANCELLED, PaymentStatus.REFUNDED),
    ],
)
def test_default_status_table_maps_order_status_codes(
    code: int, status: OrderStatus, payment: PaymentStatus
) -> None:
    """Each documented order_status code lands on its canonical status and payment."""
    snap = one(make_order(HUGE_ID, UPDATED, status=code)).snapshot
    assert (snap.status, snap.payment_status) == (status, payment)


def test_a_cancelled_unpaid_order_is_voided() -> None:
    """Cancelled without pay_time: payment voided."""
    order = {**make_order(HUGE_ID, UPDATED, status=4), "pay_time": 0}
    assert one(order).snapshot.payment_status is PaymentStatus.VOIDED


def test_an_unknown_status_code_is_refused_with_its_path() -> None:
    """Code 999 is not guessed."""
    pulled = one(make_order(HUGE_ID, UPDATED, status=999))
    assert pulled.snapshot is None
    assert "data.shop_order_list[0].order_status" in pulled.error


def test_a_missing_buyer_and_an_empty_sku_code_are_absent() -> None:
    """No doudian_open_id: no customer; code "": no SKU."""
    sku = {"order_id": "1", "product_name": "散茶", "code": "", "item_num": 1}
    sku |= {"goods_price": 100, "pay_amount": 100}
    snap = one(make_order(HUGE_ID, UPDATED, skus=[sku], buyer=None)).snapshot
    assert snap.customer is None
    assert snap.lines[0].sku is None


def test_negative_or_fractional_fen_amounts_are_refused_with_their_path() -> None:
    """Fen are whole numbers, never negative."""
    negative = one({**make_order(HUGE_ID, UPDATED), "pay_amount": -100})
    assert "data.shop_order_list[0].pay_amount" in negative.error
    fractional = one({**make_order(HUGE_ID, UPDATED), "post_amount": "1.5"})
    assert "data.shop_order_list[0].post_amount" in fractional.error


def test_page_count_and_errors() -> None:
    """total 45 at size 20 is three pages; rate limits throttle; bad signs are errors."""
    assert pull([], 20).total_pages == 3
    limited = {"code": 50002, "msg": "调用频率超限", "sub_code": "isp.rate-limited"}
    with pytest.raises(Throttled):
        CONNECTOR.pull_response(channel(), HttpResponse(200, {}, json.dumps(limited).encode()), 5)
    bad = {"code": 30004, "msg": "签名校验失败", "sub_code": "isv.sign-invalid"}
    with pytest.raises(PullError, match="30004"):
        CONNECTOR.pull_response(channel(), HttpResponse(200, {}, json.dumps(bad).encode()), 5)


# ---- pushes that name orders ----------------------------------------------------------------


def messages(*found: tuple[str, str, Any]) -> bytes:
    """A push of (tag, msg_id, data) messages; data as the platform sends it, a JSON string."""
    return json.dumps(
        [{"tag": tag, "msg_id": msg_id, "data": json.dumps(data)} for tag, msg_id, data in found]
    ).encode()


def test_trade_messages_name_the_orders_to_fetch_with_their_message_ids() -> None:
    """Two messages about one order are one fetch keyed by both ids; p_id stays exact."""
    body = messages(
        ("101", "m-paid", {"p_id": HUGE_ID, "s_ids": [HUGE_ID + 1], "order_status": 2}),
        ("102", "m-ship", {"p_id": HUGE_ID, "order_status": 3}),
        ("200", "m-refund", {"p_id": 6_920_000_000_000_000_099, "aftersale_id": 7}),
        ("400", "m-product", {"product_id": 36}),
    )

    pushed = CONNECTOR.pushed_orders(channel(), {"app-id": KEY}, body)

    assert [(p.external_id, p.message_id, p.topic) for p in pushed] == [
        ("6920000000000000001", "m-paid+m-ship", "douyin:batch"),
        ("6920000000000000099", "m-refund", "douyin:200"),
    ]


def test_without_an_access_token_a_push_is_only_recorded() -> None:
    """No token, nothing to fetch with: the push names no orders to fetch."""
    body = messages(("101", "m-1", {"p_id": HUGE_ID}))
    raw = {"id": "dy", "kind": "douyin", "app_key": KEY, "app_secret": SECRET}
    (tokenless,) = settings_from_mapping({"channels": [raw]}, env={}).channels

    assert CONNECTOR.pushed_orders(tokenless, {}, body) == ()


def test_a_message_whose_data_is_not_json_is_refused_with_its_path() -> None:
    """data must decode; the 422 names the message."""
    body = json.dumps([{"tag": "101", "msg_id": "m-1", "data": "{not json"}]).encode()

    with pytest.raises(InboundError) as e:
        CONNECTOR.pushed_orders(channel(), {}, body)

    assert (e.value.status, e.value.path) == (422, "[0].data")


def test_the_detail_request_is_a_signed_order_detail_call() -> None:
    """order.orderDetail with shop_order_id, signed like every call."""
    request = CONNECTOR.detail_request(
        channel(), "6920000000000000001", now=datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
    )

    params = dict(request.params)
    assert request.url.endswith("/order/orderDetail")
    assert params["method"] == "order.orderDetail"
    assert json.loads(params["param_json"]) == {"shop_order_id": "6920000000000000001"}
    assert dy.verify_call(params, SECRET)


def test_the_detail_answer_maps_like_a_search_result() -> None:
    """shop_order_detail maps to the same snapshot; errors throttle or stop."""
    data = {
        "code": 10000,
        "msg": "success",
        "data": {"shop_order_detail": make_order(HUGE_ID, UPDATED)},
    }
    body = json.dumps(data, ensure_ascii=False).encode()

    pulled = CONNECTOR.detail_response(channel(), HttpResponse(200, {}, body))

    assert pulled.snapshot is not None
    assert pulled.snapshot == one(make_order(HUGE_ID, UPDATED)).snapshot
    limited = {"code": 50002, "msg": "调用频率超限", "sub_code": "isp.rate-limited"}
    with pytest.raises(Throttled):
        CONNECTOR.detail_response(channel(), HttpResponse(200, {}, json.dumps(limited).encode()))
    with pytest.raises(PullError):
        CONNECTOR.detail_response(channel(), HttpResponse(200, {}, b'{"code": 10000, "data": {}}'))


# ---- closed after shipping ------------------------------------------------------------------


def test_an_order_closed_after_shipping_is_refunded_not_cancelled() -> None:
    """Status 4 with a ship_time: the goods left, so the order stays shipped, refunded."""
    order = {**make_order(HUGE_ID, UPDATED, status=4), "ship_time": int(UPDATED.timestamp())}

    snap = one(order).snapshot

    assert (snap.status, snap.payment_status) == (OrderStatus.SHIPPED, PaymentStatus.REFUNDED)


def test_an_order_closed_before_shipping_is_cancelled() -> None:
    """Status 4, paid, no ship_time: cancelled and refunded, as before."""
    snap = one(make_order(HUGE_ID, UPDATED, status=4)).snapshot

    assert (snap.status, snap.payment_status) == (OrderStatus.CANCELLED, PaymentStatus.REFUNDED)
