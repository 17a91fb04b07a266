"""Taobao / Tmall (TOP): request signing, trades in JSON and XML, statuses, sub-order refunds,
and the messy cases (missing buyer, empty SKU, huge ids, entities, negative amounts)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from ordersync.adapters.channels import taobao as top
from ordersync.adapters.channels.base import HttpResponse, PullError, Throttled, Window
from ordersync.config import TaobaoChannel, settings_from_mapping
from ordersync.domain.events import EventType
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.orders import Order, OrderSnapshot
from ordersync.simulators.taobao_top import make_trade, to_xml

SECRET = "top-secret-longjing"
HUGE_TID = 4_611_686_018_427_387_905  # 2^62 + 1: beyond 2^53, a float would round it
CHINA_NOON = datetime(2026, 11, 22, 12, 0, tzinfo=top.CHINA)
CONNECTOR = top.TaobaoConnector()


def channel(fmt: str = "json", sign_method: str = "md5") -> TaobaoChannel:
    raw = {
        "id": "tmall-flagship",
        "kind": "taobao",
        "app_key": "12345678",
        "app_secret": SECRET,
        "session": "6100e2a9teahouse",
        "format": fmt,
        "sign_method": sign_method,
    }
    (found,) = settings_from_mapping({"channels": [raw]}, env={}).channels
    assert isinstance(found, TaobaoChannel)
    return found


def page_body(trades: list[dict[str, Any]], fmt: str = "json", total: int | None = None) -> bytes:
    data = {
        "trades_sold_increment_get_response": {
            "total_results": len(trades) if total is None else total,
            "trades": {"trade": trades},
        }
    }
    if fmt == "xml":
        return to_xml(data).encode("utf-8")
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def pull(trades: list[dict[str, Any]], fmt: str = "json", page_size: int = 40) -> Any:
    return CONNECTOR.pull_response(
        channel(fmt), HttpResponse(200, {}, page_body(trades, fmt)), page_size
    )


# ---- signing ------------------------------------------------------------------------------


PARAMS = {
    "method": "taobao.trades.sold.increment.get",
    "app_key": "12345678",
    "timestamp": "2026-11-22 12:00:00",
    "v": "2.0",
    "format": "json",
    "page_no": "1",
}


def test_md5_signing_wraps_the_sorted_parameters_in_the_secret() -> None:
    """sign = upper hex md5(secret + k1v1k2v2... + secret), keys in byte order."""
    joined = "".join(k + PARAMS[k] for k in sorted(PARAMS))
    expected = hashlib.md5((SECRET + joined + SECRET).encode(), usedforsecurity=False)
    expected_hex = expected.hexdigest().upper()

    assert top.sign({**PARAMS, "sign_method": "md5"}, SECRET, "md5") == top.sign(
        dict(reversed(list({**PARAMS, "sign_method": "md5"}.items()))), SECRET, "md5"
    )
    assert top.sign(PARAMS, SECRET, "md5") == expected_hex


@pytest.mark.parametrize(
    ("method", "digest"), [("hmac", hashlib.md5), ("hmac-sha256", hashlib.sha256)]
)
def test_hmac_signing_keys_the_digest_with_the_secret(method: str, digest: Any) -> None:
    """hmac and hmac-sha256 sign the same joined string, keyed with the app secret."""
    joined = "".join(k + PARAMS[k] for k in sorted(PARAMS))
    expected = hmac.new(SECRET.encode(), joined.encode(), digest).hexdigest().upper()

    assert top.sign(PARAMS, SECRET, method) == expected


def test_a_signed_request_verifies_and_any_change_breaks_it() -> None:
    """The simulator's check: the same sign for the same parameters, none for others."""
    request = CONNECTOR.pull_request(
        channel(sign_method="hmac-sha256"),
        Window(CHINA_NOON, CHINA_NOON.replace(hour=13)),
        2,
        40,
        now=CHINA_NOON,
    )
    params = dict(request.params)
    tampered = {**params, "page_no": "3"}

    assert top.verify_sign(params, SECRET)
    assert not top.verify_sign(tampered, SECRET)
    assert not top.verify_sign(params, "guessed-secret")
    assert params["start_modified"] == "2026-11-22 12:00:00"
    assert params["end_modified"] == "2026-11-22 13:00:00"
    assert (params["use_has_next"], params["page_size"]) == ("false", "40")


# ---- trades -------------------------------------------------------------------------------


def test_a_trade_maps_with_its_tid_exact_and_china_time_in_utc() -> None:
    """tid beyond 2^53 keeps all digits; "2026-11-22 12:00:00" (UTC+8) is 04:00 UTC."""
    (pulled,) = pull([make_trade(HUGE_TID, CHINA_NOON)]).orders

    snap = pulled.snapshot
    assert snap is not None
    assert snap.external_id == "4611686018427387905"
    assert pulled.message_id.startswith("4611686018427387905@2026-11-22T04:00:00+00:00#")
    assert snap.channel_updated_at == datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
    assert snap.currency == "CNY"
    assert snap.totals.total == Decimal("170.00")
    assert (snap.status, snap.payment_status) == (OrderStatus.PAID, PaymentStatus.PAID)
    assert snap.customer is not None
    assert snap.customer.name == "茶友小王"
    assert snap.shipping_address is not None
    assert snap.shipping_address.city == "杭州市 西湖区"


def test_sub_orders_become_lines_with_their_own_ids_and_discounts() -> None:
    """oid, num, price, payment: the line's discount is price x num - payment."""
    (pulled,) = pull([make_trade(HUGE_TID, CHINA_NOON)]).orders

    assert pulled.snapshot is not None
    (line,) = pulled.snapshot.lines
    assert line.external_id == str(HUGE_TID + 1)
    assert (line.sku, line.name) == ("LONGJING-250", "西湖龙井 250g")
    assert (line.quantity, line.unit_price) == (2, Decimal("88.00"))
    assert (line.discount, line.total) == (Decimal("6.00"), Decimal("170.00"))


@pytest.mark.parametrize(
    ("platform", "status", "payment"),
    [
        ("TRADE_NO_CREATE_PAY", OrderStatus.PENDING, PaymentStatus.PENDING),
        ("WAIT_BUYER_PAY", OrderStatus.PENDING, PaymentStatus.PENDING),
        ("WAIT_SELLER_SEND_GOODS", OrderStatus.PAID, PaymentStatus.PAID),
        ("SELLER_CONSIGNED_PART", OrderStatus.PAID, PaymentStatus.PAID),
        ("WAIT_BUYER_CONFIRM_GOODS", OrderStatus.SHIPPED, PaymentStatus.PAID),
        ("TRADE_BUYER_SIGNED", OrderStatus.DELIVERED, PaymentStatus.PAID),
        ("TRADE_FINISHED", OrderStatus.COMPLETED, PaymentStatus.PAID),
        ("TRADE_CLOSED", OrderStatus.CANCELLED, PaymentStatus.REFUNDED),
        ("TRADE_CLOSED_BY_TAOBAO", OrderStatus.CANCELLED, PaymentStatus.VOIDED),
    ],
)
def test_each_trade_status_has_a_canonical_status(
    platform: str, status: OrderStatus, payment: PaymentStatus
) -> None:
    """The default table; a trade closed after payment was refunded, before it voided."""
    (pulled,) = pull([make_trade(HUGE_TID, CHINA_NOON, status=platform)]).orders

    assert pulled.snapshot is not None
    assert (pulled.snapshot.status, pulled.snapshot.payment_status) == (status, payment)


def sub_order(oid: int, refund_status: str, sku: str = "TEA-CUP") -> dict[str, Any]:
    return {
        "oid": oid,
        "title": "青瓷茶杯",
        "num": 1,
        "price": "30.00",
        "payment": "30.00",
        "outer_sku_id": sku,
        "refund_status": refund_status,
    }


def test_a_refund_of_one_sub_order_is_a_partial_refund() -> None:
    """refund_status SUCCESS on some sub-orders: the payment is partially refunded."""
    subs = [sub_order(1, "SUCCESS"), sub_order(2, "NO_REFUND")]

    (pulled,) = pull([make_trade(HUGE_TID, CHINA_NOON, subs=subs)]).orders

    assert pulled.snapshot is not None
    assert pulled.snapshot.payment_status is PaymentStatus.PARTIALLY_REFUNDED


def test_refunds_of_every_sub_order_refund_the_payment() -> None:
    """refund_status SUCCESS everywhere: fully refunded."""
    subs = [sub_order(1, "SUCCESS"), sub_order(2, "SUCCESS")]

    (pulled,) = pull([make_trade(HUGE_TID, CHINA_NOON, subs=subs)]).orders

    assert pulled.snapshot is not None
    assert pulled.snapshot.payment_status is PaymentStatus.REFUNDED


def snapshot_of(trade: dict[str, Any]) -> OrderSnapshot:
    (pulled,) = pull([trade]).orders
    assert pulled.snapshot is not None, pulled.error
    return pulled.snapshot


def hub_order(trade: dict[str, Any]) -> Order:
    """The hub's order for `trade`, created from its pulled state (changes taken)."""
    order = Order.create(
        "ord_LONGJING", snapshot_of(trade), cause="taobao:pull", message_id="m-0", at=CHINA_NOON
    )
    order.take_changes()
    return order


def sync_to(order: Order, trade: dict[str, Any]) -> list[EventType]:
    order.sync(snapshot_of(trade), cause="taobao:pull", message_id="m-1", at=CHINA_NOON)
    _, events = order.take_changes()
    return [e.type for e in events]


def test_a_finished_trade_first_seen_by_a_backfill_creates_a_completed_order() -> None:
    """TRADE_FINISHED arriving first (a backfill) is created completed, and says so."""
    trade = make_trade(HUGE_TID, CHINA_NOON, status="TRADE_FINISHED")

    order = Order.create(
        "ord_LONGJING", snapshot_of(trade), cause="taobao:pull", message_id="m-0", at=CHINA_NOON
    )

    assert (order.status, order.payment_status) == (OrderStatus.COMPLETED, PaymentStatus.PAID)
    assert [e.type for e in order.new_events] == [
        EventType.ORDER_CREATED,
        EventType.ORDER_PAID,
        EventType.ORDER_COMPLETED,
    ]


def test_a_paid_trade_seen_next_as_finished_completes_the_order() -> None:
    """Between two pulls the trade shipped and finished: paid -> completed is accepted."""
    order = hub_order(make_trade(HUGE_TID, CHINA_NOON))
    later = CHINA_NOON.replace(hour=18)

    events = sync_to(order, make_trade(HUGE_TID, later, status="TRADE_FINISHED"))

    assert order.status is OrderStatus.COMPLETED
    assert events == [EventType.ORDER_UPDATED, EventType.ORDER_COMPLETED]


def consigned(trade: dict[str, Any]) -> dict[str, Any]:
    trade["consign_time"] = trade["modified"]
    return trade


def test_a_trade_closed_after_consignment_is_a_refund_not_a_cancellation() -> None:
    """TRADE_CLOSED with a consign_time: goods went and came back; the money is refunded."""
    order = hub_order(
        consigned(make_trade(HUGE_TID, CHINA_NOON, status="WAIT_BUYER_CONFIRM_GOODS"))
    )
    closed = make_trade(HUGE_TID, CHINA_NOON.replace(hour=18), status="TRADE_CLOSED")

    events = sync_to(order, consigned(closed))

    assert (order.status, order.payment_status) == (OrderStatus.SHIPPED, PaymentStatus.REFUNDED)
    assert events == [EventType.ORDER_UPDATED, EventType.ORDER_REFUNDED]


def test_a_sub_order_consign_time_also_marks_the_trade_shipped() -> None:
    """Split consignments stamp the sub-orders, not the trade: either counts."""
    trade = make_trade(HUGE_TID, CHINA_NOON, status="TRADE_CLOSED")
    trade["orders"]["order"][0]["consign_time"] = trade["modified"]

    snap = snapshot_of(trade)

    assert (snap.status, snap.payment_status) == (OrderStatus.SHIPPED, PaymentStatus.REFUNDED)


def test_a_trade_closed_before_consignment_is_still_a_cancellation() -> None:
    """Paid, refunded and closed before anything shipped: cancelled and refunded."""
    order = hub_order(make_trade(HUGE_TID, CHINA_NOON))

    events = sync_to(
        order, make_trade(HUGE_TID, CHINA_NOON.replace(hour=18), status="TRADE_CLOSED")
    )

    assert (order.status, order.payment_status) == (OrderStatus.CANCELLED, PaymentStatus.REFUNDED)
    assert events == [EventType.ORDER_UPDATED, EventType.ORDER_CANCELLED, EventType.ORDER_REFUNDED]


def test_a_refunded_sub_order_of_a_finished_trade_partially_refunds_it() -> None:
    """One teacup of two refunded on a finished trade: completed, partially refunded."""
    subs = [sub_order(1, "SUCCESS"), sub_order(2, "NO_REFUND")]
    order = hub_order(
        make_trade(HUGE_TID, CHINA_NOON, status="WAIT_BUYER_CONFIRM_GOODS", subs=subs)
    )
    finished = make_trade(HUGE_TID, CHINA_NOON.replace(hour=18), status="TRADE_FINISHED", subs=subs)

    events = sync_to(order, finished)

    assert (order.status, order.payment_status) == (
        OrderStatus.COMPLETED,
        PaymentStatus.PARTIALLY_REFUNDED,
    )
    assert EventType.ORDER_COMPLETED in events


def test_a_trade_without_buyer_or_sku_keeps_those_absent() -> None:
    """No buyer_nick: no customer; an empty outer_sku_id: no SKU (never "")."""
    trade = make_trade(HUGE_TID, CHINA_NOON, buyer=None, subs=[sub_order(1, "NO_REFUND", "")])

    (pulled,) = pull([trade]).orders

    assert pulled.snapshot is not None
    assert pulled.snapshot.customer is None
    assert pulled.snapshot.lines[0].sku is None


def test_an_xml_page_reads_like_the_json_one_entities_included() -> None:
    """The XML form (list="true" wrappers, all values text) maps to the same trade."""
    trade = make_trade(HUGE_TID, CHINA_NOON)
    trade["buyer_message"] = 'Tom & Jerry <茶> "gift"'

    from_json = pull([trade]).orders[0].snapshot
    from_xml = pull([trade], fmt="xml").orders[0].snapshot

    assert from_xml == from_json
    assert from_xml is not None
    assert from_xml.note == 'Tom & Jerry <茶> "gift"'


def test_numeric_character_references_in_xml_are_decoded() -> None:
    """&#x9F99;&#20117; is 龙井, as an XML parser must read it."""
    body = (
        b"<trades_sold_increment_get_response><total_results>1</total_results>"
        b'<trades list="true"><trade><tid>42</tid><status>WAIT_BUYER_PAY</status>'
        b"<payment>9.90</payment><modified>2026-11-22 12:00:00</modified>"
        b'<orders list="true"><order><oid>43</oid><num>1</num><price>9.90</price>'
        b"<payment>9.90</payment><title>&#x9F99;&#20117; &amp; more</title></order></orders>"
        b"</trade></trades></trades_sold_increment_get_response>"
    )

    page = CONNECTOR.pull_response(channel("xml"), HttpResponse(200, {}, body), 40)

    assert page.orders[0].snapshot is not None
    assert page.orders[0].snapshot.lines[0].name == "龙井 & more"


def test_a_negative_sub_order_payment_is_refused_with_its_path() -> None:
    """The trade is kept raw with the error (path included) instead of stalling the pull."""
    trade = make_trade(HUGE_TID, CHINA_NOON)
    trade["orders"]["order"][0]["payment"] = "-170.00"

    (pulled,) = pull([trade]).orders

    assert pulled.snapshot is None
    assert pulled.error is not None
    assert pulled.error.startswith("trades.trade[0].orders.order[0].payment:")
    assert pulled.external_id == str(HUGE_TID)


def test_the_page_count_comes_from_total_results() -> None:
    """With use_has_next=false TOP says how many trades the window holds."""
    page = CONNECTOR.pull_response(channel(), HttpResponse(200, {}, page_body([], total=101)), 50)

    assert page.total_pages == 3


def test_app_call_limited_is_throttling_for_as_long_as_the_ban_lasts() -> None:
    """Error 7 (App Call Limited): wait the seconds its sub_msg names."""
    body = json.dumps(
        {
            "error_response": {
                "code": 7,
                "msg": "App Call Limited",
                "sub_code": "accesscontrol.limited-by-app-access-count",
                "sub_msg": "This ban will last for 17 more seconds",
            }
        }
    ).encode()

    with pytest.raises(Throttled) as e:
        CONNECTOR.pull_response(channel(), HttpResponse(200, {}, body), 40)

    assert e.value.retry_after == 17.0


def test_an_invalid_signature_error_stops_the_pull() -> None:
    """Error 25 will not heal by waiting: a PullError for the operator."""
    body = b"<error_response><code>25</code><msg>Invalid signature</msg></error_response>"

    with pytest.raises(PullError, match="25 Invalid signature"):
        CONNECTOR.pull_response(channel("xml"), HttpResponse(200, {}, body), 40)


def test_taobao_channels_do_not_take_webhooks() -> None:
    """TOP pushes through its message service, not HTTP: nothing verifies."""
    assert not CONNECTOR.verify(channel(), {}, b"{}")
