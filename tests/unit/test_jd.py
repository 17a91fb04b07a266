"""JD (JOS): request signing, the search envelope, statuses, and the messy cases (missing
buyer, empty SKU, huge ids, non-ASCII names, negative amounts, forged signatures)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from ordersync.adapters.channels import jd
from ordersync.adapters.channels.base import HttpResponse, PullError, Throttled, Window
from ordersync.config import JdChannel, settings_from_mapping
from ordersync.domain.events import EventType
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.orders import Order
from ordersync.simulators.jd_jos import make_order

SECRET = "jos-secret-puer"
HUGE_ID = 9_007_199_254_740_993  # 2^53 + 1: a float would round it to ...992
CHINA_NOON = datetime(2026, 11, 22, 12, 0, tzinfo=jd.CHINA)
CONNECTOR = jd.JdConnector()


def channel(**extra: Any) -> JdChannel:
    raw = {
        "id": "jd-flagship",
        "kind": "jd",
        "app_key": "JDKEY01",
        "app_secret": SECRET,
        "access_token": "jd-token-1",
        **extra,
    }
    (found,) = settings_from_mapping({"channels": [raw]}, env={}).channels
    assert isinstance(found, JdChannel)
    return found


def page_body(orders: list[dict[str, Any]], total: int | None = None) -> bytes:
    data = {
        jd.RESPONSE_KEY: {
            "code": "0",
            "searchorderinfo_result": {
                "apiResult": {"success": True, "code": "0"},
                "orderInfoList": orders,
                "orderTotal": len(orders) if total is None else total,
            },
        }
    }
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def pull(orders: list[dict[str, Any]], page_size: int = 20, **extra: Any) -> Any:
    return CONNECTOR.pull_response(
        channel(**extra), HttpResponse(200, {}, page_body(orders)), page_size
    )


def test_signing_is_upper_md5_of_secret_sorted_pairs_and_secret() -> None:
    """sign = upper hex md5(secret + k1v1k2v2... + secret), keys sorted by name."""
    params = {"v": "2.0", "method": jd.SEARCH_METHOD, "app_key": "K", "360buy_param_json": "{}"}
    joined = "".join(k + params[k] for k in sorted(params))
    expected = hashlib.md5((SECRET + joined + SECRET).encode(), usedforsecurity=False)
    assert jd.sign(params, SECRET) == expected.hexdigest().upper()
    assert jd.verify_sign({**params, "sign": expected.hexdigest().upper()}, SECRET)


def test_a_forged_or_tampered_signature_does_not_verify() -> None:
    """Changing any parameter, or signing with another secret, fails verification."""
    params = {"method": jd.SEARCH_METHOD, "app_key": "K", "timestamp": "2026-11-22 12:00:00"}
    signed = {**params, "sign": jd.sign(params, SECRET)}
    assert jd.verify_sign(signed, SECRET)
    assert not jd.verify_sign({**signed, "app_key": "K2"}, SECRET)
    assert not jd.verify_sign({**params, "sign": jd.sign(params, "other")}, SECRET)
    assert not jd.verify_sign(params, SECRET)


def test_the_pull_request_carries_the_window_in_360buy_param_json_and_is_signed() -> None:
    """Business parameters go in one sorted JSON string; times are China time."""
    start = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
    window = Window(start, datetime(2026, 11, 22, 0, 10, tzinfo=UTC))
    req = CONNECTOR.pull_request(channel(), window, 3, 500, now=CHINA_NOON)
    params = dict(req.params)
    assert params["method"] == "jingdong.pop.order.search"
    assert params["access_token"] == "jd-token-1"
    assert params["timestamp"] == "2026-11-22 12:00:00"
    assert params["v"] == "2.0"
    business = json.loads(params["360buy_param_json"])
    assert business["start_date"] == "2026-11-22 08:00:00"
    assert business["end_date"] == "2026-11-22 08:10:00"
    assert business["page"] == "3"
    assert business["page_size"] == str(jd.MAX_PAGE_SIZE)
    assert "WAIT_SELLER_STOCK_OUT" in business["order_state"].split(",")
    assert list(business) == sorted(business)
    assert jd.verify_sign(params, SECRET)


def test_an_order_maps_to_a_canonical_snapshot_with_exact_amounts() -> None:
    """Items, consignee, totals and times land where they belong."""
    order = make_order(HUGE_ID, CHINA_NOON)
    (pulled,) = pull([order]).orders
    snap = pulled.snapshot
    assert snap is not None
    assert pulled.error is None
    assert snap.external_id == "9007199254740993"
    assert snap.status is OrderStatus.PAID
    assert snap.payment_status is PaymentStatus.PAID
    assert snap.totals.total == Decimal("256.00")
    (line,) = snap.lines
    assert (line.sku, line.quantity, line.unit_price, line.total) == (
        "PUER-357",
        2,
        Decimal("128.00"),
        Decimal("256.00"),
    )
    assert line.variant_id == "100012043978"
    assert snap.shipping_address is not None
    assert snap.shipping_address.name == "李四"
    assert snap.shipping_address.country_code == "CN"
    assert snap.channel_updated_at == datetime(2026, 11, 22, 4, 0, tzinfo=UTC)


def test_huge_order_ids_keep_every_digit_as_numbers_or_strings() -> None:
    """orderId beyond 2^53 is read exactly, whether JOS sends a number or a string."""
    as_string = {**make_order(HUGE_ID, CHINA_NOON), "orderId": "9007199254740993"}
    page = pull([make_order(HUGE_ID, CHINA_NOON), as_string])
    assert [p.external_id for p in page.orders] == ["9007199254740993"] * 2


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("WAIT_SELLER_STOCK_OUT", OrderStatus.PAID),
        ("WAIT_GOODS_RECEIVE_CONFIRM", OrderStatus.SHIPPED),
        ("FINISHED_L", OrderStatus.COMPLETED),
        ("TRADE_CANCELED", OrderStatus.CANCELLED),
        ("LOCKED", OrderStatus.ON_HOLD),
        ("POP_ORDER_PAUSE", OrderStatus.ON_HOLD),
    ],
)
def test_default_status_table_maps_jd_order_states(state: str, status: OrderStatus) -> None:
    """Each documented JD state lands on its canonical status."""
    (pulled,) = pull([make_order(HUGE_ID, CHINA_NOON, state=state)]).orders
    assert pulled.snapshot is not None
    assert pulled.snapshot.status is status


def test_a_cancelled_unpaid_order_is_voided() -> None:
    """TRADE_CANCELED without payment confirmation voids the payment."""
    (pulled,) = pull([make_order(HUGE_ID, CHINA_NOON, state="TRADE_CANCELED")]).orders
    assert pulled.snapshot is not None
    assert pulled.snapshot.payment_status is PaymentStatus.VOIDED


def test_a_channel_overrides_a_status_row_in_config() -> None:
    """statuses: {LOCKED: {status: cancelled}} replaces the default row."""
    order = make_order(HUGE_ID, CHINA_NOON, state="LOCKED")
    (pulled,) = pull([order], statuses={"LOCKED": {"status": "cancelled"}}).orders
    assert pulled.snapshot is not None
    assert pulled.snapshot.status is OrderStatus.CANCELLED


def test_an_unknown_state_is_kept_raw_with_its_path() -> None:
    """An unmapped state is refused with the field path, not guessed."""
    (pulled,) = pull([make_order(HUGE_ID, CHINA_NOON, state="SOMETHING_NEW")]).orders
    assert pulled.snapshot is None
    assert pulled.error is not None
    assert "orderInfoList[0].orderState" in pulled.error


def test_a_missing_buyer_and_an_empty_sku_are_absent_not_invented() -> None:
    """No pin means no customer; an empty outerSkuId means no SKU."""
    item = {"skuId": "1", "outerSkuId": "", "skuName": "散茶", "jdPrice": "9.90", "itemTotal": 1}
    (pulled,) = pull([make_order(HUGE_ID, CHINA_NOON, items=[item], pin=None)]).orders
    snap = pulled.snapshot
    assert snap is not None
    assert snap.customer is None
    assert snap.lines[0].sku is None
    assert snap.lines[0].name == "散茶"


def test_a_negative_amount_is_refused_with_its_path() -> None:
    """A negative orderTotalPrice is an error naming the field."""
    order = {**make_order(HUGE_ID, CHINA_NOON), "orderTotalPrice": "-1.00"}
    (pulled,) = pull([order]).orders
    assert pulled.snapshot is None
    assert pulled.error is not None
    assert "orderInfoList[0].orderTotalPrice" in pulled.error


def test_the_page_count_follows_order_total_and_page_size() -> None:
    """orderTotal 45 at page size 20 is three pages."""
    page = CONNECTOR.pull_response(channel(), HttpResponse(200, {}, page_body([], 45)), 20)
    assert (page.total_pages, page.total) == (3, 45)


def test_errors_are_refused_and_rate_limits_throttled() -> None:
    """A bad signature is a PullError; a call limit or 503 is Throttled."""
    bad = {"error_response": {"code": "20", "en_desc": "Invalid signature", "zh_desc": "签名无效"}}
    limited = {"error_response": {"code": "63", "en_desc": "call limit exceeded"}}
    with pytest.raises(PullError, match="Invalid signature"):
        CONNECTOR.pull_response(channel(), HttpResponse(200, {}, json.dumps(bad).encode()), 20)
    with pytest.raises(Throttled):
        CONNECTOR.pull_response(channel(), HttpResponse(200, {}, json.dumps(limited).encode()), 20)
    with pytest.raises(Throttled):
        CONNECTOR.pull_response(channel(), HttpResponse(503, {}, b""), 20)


def test_a_failed_api_result_is_a_pull_error() -> None:
    """apiResult.success false is refused with JD's code."""
    data = {
        jd.RESPONSE_KEY: {
            "searchorderinfo_result": {"apiResult": {"success": False, "code": "100"}}
        }
    }
    with pytest.raises(PullError, match="100"):
        CONNECTOR.pull_response(channel(), HttpResponse(200, {}, json.dumps(data).encode()), 20)


def test_jd_channels_refuse_pushes() -> None:
    """JD is pull-only; its connector never verifies a webhook."""
    assert not CONNECTOR.verify(channel(), {}, b"{}")


# ---- finished and closed after shipping -------------------------------------------------


NOW = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)


def hub_order(order: dict[str, Any]) -> Order:
    (pulled,) = pull([order]).orders
    assert pulled.snapshot is not None, pulled.error
    made = Order.create("ord_PUER", pulled.snapshot, cause="jd:pull", message_id="m", at=NOW)
    made.take_changes()
    return made


def shipped_then_cancelled() -> dict[str, Any]:
    """Paid, out of the warehouse with a waybill, then cancelled (intercepted, refunded)."""
    order = make_order(HUGE_ID, CHINA_NOON.replace(hour=18), state="TRADE_CANCELED")
    order["paymentConfirmTime"] = jd.jos_time(CHINA_NOON)
    order["outBoundDate"] = jd.jos_time(CHINA_NOON.replace(hour=14))
    order["waybill"] = "JDVA00012345678"
    return order


def test_a_finished_order_first_seen_is_created_completed() -> None:
    """FINISHED_L read first by a backfill: the order starts completed."""
    order = hub_order(make_order(HUGE_ID, CHINA_NOON, state="FINISHED_L"))

    assert (order.status, order.payment_status) == (OrderStatus.COMPLETED, PaymentStatus.PAID)


def test_an_order_cancelled_after_leaving_the_warehouse_is_a_refund() -> None:
    """TRADE_CANCELED with an out-bound date: still shipped, payment refunded, announced."""
    order = hub_order(make_order(HUGE_ID, CHINA_NOON, state="WAIT_GOODS_RECEIVE_CONFIRM"))
    (pulled,) = pull([shipped_then_cancelled()]).orders
    assert pulled.snapshot is not None

    order.sync(pulled.snapshot, cause="jd:pull", message_id="m-2", at=NOW)

    assert (order.status, order.payment_status) == (OrderStatus.SHIPPED, PaymentStatus.REFUNDED)
    assert [e.type for e in order.new_events] == [
        EventType.ORDER_UPDATED,
        EventType.ORDER_REFUNDED,
    ]


def test_an_order_cancelled_before_shipping_stays_a_cancellation() -> None:
    """Paid, cancelled before out-bound: cancelled and refunded, as before."""
    order = make_order(HUGE_ID, CHINA_NOON, state="TRADE_CANCELED")
    order["paymentConfirmTime"] = jd.jos_time(CHINA_NOON)

    (pulled,) = pull([order]).orders

    assert pulled.snapshot is not None
    assert (pulled.snapshot.status, pulled.snapshot.payment_status) == (
        OrderStatus.CANCELLED,
        PaymentStatus.REFUNDED,
    )
