"""Kuaidi100: pushes with `param` + upper-case MD5 `sign` (param + salt), lastResult full
snapshots, autoCheck carrier corrections, every state and sub-state mapped, its ack body,
and the waybill and subscription requests."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest

from ordersync.adapters.carriers import kuaidi100
from ordersync.adapters.carriers.base import (
    Booking,
    CallbackRejected,
    CarrierAccount,
    CarrierError,
    CarrierResponse,
    Item,
    Party,
)
from ordersync.domain.shipments import Correction, Shipment, ShipmentStatus

S = ShipmentStatus
SALT = "s4lt-9f1c"
ACCOUNT = CarrierAccount(
    "kd100",
    "kuaidi100",
    "https://poll.kuaidi100.example",
    {"key": "KEY123", "secret": "SEC456", "salt": SALT, "fixed_t": "1764300000000"},
)
CONNECTOR = kuaidi100.Kuaidi100Connector()


def md5_upper(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest().upper()  # noqa: S324


def rows(*items: tuple[str, str, str]) -> list[dict[str, str]]:
    """data[] rows, newest first as Kuaidi100 sends them: (time, context, statusCode)."""
    return [
        {
            "time": t,
            "ftime": t,
            "context": c,
            "status": "",
            "statusCode": code,
            "areaName": "北京市",
        }
        for t, c, code in items
    ]


HISTORY = rows(
    ("2026-11-21 09:10:00", "【北京市】快件已由 北京朝阳区菜鸟驿站 代收，请及时取件", "501"),
    ("2026-11-21 07:58:00", "【北京市】快件到达 北京朝阳区望京营业部", "1001"),
    ("2026-11-20 22:05:00", "【上海市】快件离开 上海转运中心 已发往 北京", "1002"),
    ("2026-11-20 16:31:00", "【上海市】圆通速递 已揽收", "103"),
)


def param(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "status": "polling",
        "billstatus": "got",
        "message": "",
        "autoCheck": "0",
        "comOld": "",
        "comNew": "",
        "lastResult": {
            "message": "ok",
            "state": "5",
            "status": "200",
            "condition": "F00",
            "ischeck": "0",
            "com": "yuantong",
            "nu": "YT9693469735412",
            "data": HISTORY,
        },
    }
    value.update(changes)
    return value


def push(value: dict[str, Any], salt: str = SALT, **form: str) -> bytes:
    text = json.dumps(value, ensure_ascii=False)
    return urlencode({"param": text, "sign": md5_upper(text + salt), **form}).encode()


def test_a_documented_push_is_parsed_into_a_full_snapshot() -> None:
    """lastResult.data rows become events with raw code, raw text and UTC carrier time."""
    (update,) = CONNECTOR.parse_callback(ACCOUNT, push(param()), {})
    assert (update.tracking_number, update.carrier_code) == ("YT9693469735412", "yuantong")
    assert update.snapshot
    assert (update.raw_state, update.state) == ("5", S.OUT_FOR_DELIVERY)
    newest = max(update.events, key=lambda e: e.carrier_time)
    assert newest.carrier_time == datetime(2026, 11, 21, 1, 10, tzinfo=UTC)
    assert newest.raw_text.startswith("【北京市】快件已由 北京朝阳区菜鸟驿站")
    assert (newest.raw_code, newest.status, newest.location) == (
        "501",
        S.AVAILABLE_FOR_PICKUP,
        "北京市",
    )
    shipment = Shipment(
        "s1", "kd100", update.tracking_number, booked_at=datetime(2026, 11, 20, tzinfo=UTC)
    )
    shipment.apply(update)
    assert shipment.status is S.AVAILABLE_FOR_PICKUP
    assert shipment.picked_up_at == datetime(2026, 11, 20, 8, 31, tzinfo=UTC)


def test_rows_without_status_code_give_the_state_to_the_newest_row() -> None:
    """Without resultv2 the rows carry no code: the newest takes lastResult.state."""
    plain = [{k: v for k, v in r.items() if k != "statusCode"} for r in HISTORY]
    value = param()
    value["lastResult"] = {**value["lastResult"], "data": plain, "state": "0"}
    (update,) = CONNECTOR.parse_callback(ACCOUNT, push(value), {})
    coded = [(e.raw_code, e.status) for e in update.events if e.raw_code]
    assert coded == [("0", S.IN_TRANSIT)]


def test_a_lowercase_signature_is_accepted() -> None:
    """The sign is compared case-insensitively (it is hex)."""
    text = json.dumps(param(), ensure_ascii=False)
    body = urlencode({"param": text, "sign": md5_upper(text + SALT).lower()}).encode()
    assert CONNECTOR.parse_callback(ACCOUNT, body, {})[0].state is S.OUT_FOR_DELIVERY


def test_a_forged_signature_is_rejected() -> None:
    """Signed with another salt, or param altered after signing: 401 signature_invalid."""
    with pytest.raises(CallbackRejected) as err:
        CONNECTOR.parse_callback(ACCOUNT, push(param(), salt="guess"), {})
    assert (err.value.status, err.value.code) == (401, "signature_invalid")
    text = json.dumps(param(), ensure_ascii=False)
    tampered = urlencode({"param": text.replace('"5"', '"3"'), "sign": md5_upper(text + SALT)})
    with pytest.raises(CallbackRejected, match="does not match"):
        CONNECTOR.verify_callback(ACCOUNT, tampered.encode(), {})


def test_a_missing_signature_is_rejected() -> None:
    """param without sign: 401 signature_missing."""
    body = urlencode({"param": json.dumps(param())}).encode()
    with pytest.raises(CallbackRejected) as err:
        CONNECTOR.parse_callback(ACCOUNT, body, {})
    assert (err.value.status, err.value.code) == (401, "signature_missing")


def test_a_replayed_push_has_the_same_source_id_and_adds_nothing() -> None:
    """Kuaidi100 retries a push it thinks failed: dedupe makes it a no-op."""
    body = push(param())
    first = CONNECTOR.parse_callback(ACCOUNT, body, {})[0]
    again = CONNECTOR.parse_callback(ACCOUNT, body, {})[0]
    assert first.source_id == again.source_id
    shipment = Shipment(
        "s1", "kd100", first.tracking_number, booked_at=datetime(2026, 11, 20, tzinfo=UTC)
    )
    shipment.apply(first)
    assert shipment.apply(again).added == ()


def test_out_of_order_snapshots_converge_on_the_newest_status() -> None:
    """The delivered snapshot first, then an older one: still delivered, no duplicates."""
    delivered = param()
    delivered["lastResult"] = {
        **delivered["lastResult"],
        "state": "3",
        "ischeck": "1",
        "data": rows(("2026-11-21 12:00:00", "已签收，签收人：菜鸟驿站", "304")) + HISTORY,
    }
    old = param()
    old["lastResult"] = {**old["lastResult"], "state": "0", "data": HISTORY[2:]}
    shipment = Shipment(
        "s1", "kd100", "YT9693469735412", booked_at=datetime(2026, 11, 20, tzinfo=UTC)
    )
    shipment.apply(CONNECTOR.parse_callback(ACCOUNT, push(delivered), {})[0])
    late = shipment.apply(CONNECTOR.parse_callback(ACCOUNT, push(old), {})[0])
    assert late.added == ()
    assert shipment.status is S.DELIVERED
    assert len(shipment.events) == 5


def test_an_auto_check_carrier_correction_is_reported() -> None:
    """autoCheck=1 with comOld/comNew: a carrier-code correction on the update and shipment."""
    value = param(autoCheck="1", comOld="yunda", comNew="yuantong")
    (update,) = CONNECTOR.parse_callback(ACCOUNT, push(value), {})
    assert update.corrections == (Correction("carrier_code", "yunda", "yuantong"),)
    shipment = Shipment(
        "s1",
        "kd100",
        update.tracking_number,
        booked_at=datetime(2026, 11, 20, tzinfo=UTC),
        carrier_code="yunda",
    )
    shipment.apply(update)
    assert shipment.carrier_code == "yuantong"
    plain = CONNECTOR.parse_callback(
        ACCOUNT, push(param(autoCheck="0", comOld="a", comNew="b")), {}
    )
    assert plain[0].corrections == ()


@pytest.mark.parametrize("bad", [b"param=%7Bnot json&sign=x", b"sign=ABC", b"\xff"])
def test_malformed_pushes_are_rejected(bad: bytes) -> None:
    """Unparseable or unsigned bodies raise CallbackRejected, never a crash."""
    with pytest.raises(CallbackRejected):
        CONNECTOR.parse_callback(ACCOUNT, bad, {})


DOCUMENTED = {
    # state
    "0": S.IN_TRANSIT,
    "1": S.PICKED_UP,
    "2": S.EXCEPTION,
    "3": S.DELIVERED,
    "4": S.RETURNED,
    "5": S.OUT_FOR_DELIVERY,
    "6": S.RETURNING,
    "7": S.IN_TRANSIT,
    "8": S.IN_TRANSIT,
    "10": S.IN_TRANSIT,
    "11": S.IN_TRANSIT,
    "12": S.IN_TRANSIT,
    "13": S.EXCEPTION,
    "14": S.RETURNING,
    # sub-states
    "101": S.INFO_RECEIVED,
    "102": S.INFO_RECEIVED,
    "103": S.PICKED_UP,
    "1001": S.IN_TRANSIT,
    "1002": S.IN_TRANSIT,
    "1003": S.IN_TRANSIT,
    "501": S.AVAILABLE_FOR_PICKUP,
    "301": S.DELIVERED,
    "302": S.DELIVERED,
    "303": S.DELIVERED,
    "304": S.DELIVERED,
    "401": S.CANCELLED,
    "201": S.EXCEPTION,
    "202": S.EXCEPTION,
    "203": S.RETURNING,
    "204": S.DELIVERY_FAILED,
    "205": S.EXCEPTION,
    "206": S.DELIVERY_FAILED,
    "207": S.EXCEPTION,
    "208": S.EXCEPTION,
    "209": S.EXCEPTION,
    "210": S.CANCELLED,
}


@pytest.mark.parametrize(("code", "status"), sorted(DOCUMENTED.items()))
def test_every_documented_state_and_sub_state_is_mapped_through_a_real_push(
    code: str, status: S
) -> None:
    """Each code, as a row's statusCode and as lastResult.state, maps to its status."""
    value = param()
    value["lastResult"] = {
        **value["lastResult"],
        "state": code,
        "data": rows(("2026-11-22 10:00:00", f"状态 {code}", code)),
    }
    (update,) = CONNECTOR.parse_callback(ACCOUNT, push(value), {})
    assert update.state is status
    assert (update.events[0].raw_code, update.events[0].status) == (code, status)


def test_the_default_table_covers_exactly_the_documented_codes() -> None:
    """No documented code missing, none invented."""
    assert {r.raw_code for r in kuaidi100.MAPPING.rows} == set(DOCUMENTED)


def test_the_acknowledgement_is_the_body_kuaidi100_expects() -> None:
    """Success: result true, returnCode "200", message 成功; failure: result false, 500."""
    ack = CONNECTOR.ack(ACCOUNT)
    assert (ack.status, ack.content_type) == (200, "application/json")
    assert json.loads(ack.body) == {"result": True, "returnCode": "200", "message": "成功"}
    refusal = json.loads(CONNECTOR.ack(ACCOUNT, ok=False, reason="稍后重试").body)
    assert refusal == {"result": False, "returnCode": "500", "message": "稍后重试"}


BOOKING = Booking(
    order_id="ORD-88",
    carrier_code="yuantong",
    sender=Party("茶馆仓库", "13800000000", "上海市", "上海市", "浦东新区", "张江路 99 号"),
    recipient=Party("李四", "13900000000", "北京市", "北京市", "朝阳区", "望京街 1 号"),
    items=(Item("白茶饼", 1),),
    weight_kg=Decimal("1.2"),
)


def test_the_waybill_request_is_signed_with_param_t_key_and_secret() -> None:
    """method=order, key, t, param, sign = upper MD5(param + t + key + secret)."""
    request = CONNECTOR.build_booking_request(ACCOUNT, BOOKING)
    assert request.url == "https://poll.kuaidi100.example/label/order"
    form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
    assert form["method"] == "order"
    assert form["t"] == "1764300000000"
    assert form["sign"] == md5_upper(form["param"] + "1764300000000" + "KEY123" + "SEC456")
    body = json.loads(form["param"])
    assert (body["kuaidicom"], body["recMan"]["name"], body["weight"]) == (
        "yuantong",
        "李四",
        "1.2",
    )


def test_a_waybill_answer_yields_the_tracking_number_or_raises() -> None:
    """data.kuaidinum is the tracking number; success false raises with the message."""
    ok = {
        "success": True,
        "code": 200,
        "message": "success",
        "data": {"taskId": "T1", "kuaidinum": "YT1"},
    }
    result = CONNECTOR.parse_booking_response(
        BOOKING, CarrierResponse(200, {}, json.dumps(ok).encode())
    )
    assert (result.tracking_number, result.carrier_ref) == ("YT1", "T1")
    bad = {"success": False, "code": 30002, "message": "验证签名失败"}
    with pytest.raises(CarrierError, match="验证签名失败"):
        CONNECTOR.parse_booking_response(
            BOOKING, CarrierResponse(200, {}, json.dumps(bad).encode())
        )


def test_the_subscription_carries_key_callback_url_and_salt() -> None:
    """schema=json and param with company, number, key, parameters.callbackurl and salt."""
    request = CONNECTOR.build_subscription_request(
        ACCOUNT, "YT1", "yuantong", "https://hub/cb/kd100"
    )
    assert request.url == "https://poll.kuaidi100.example/poll"
    form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
    assert form["schema"] == "json"
    body = json.loads(form["param"])
    assert (body["company"], body["number"], body["key"]) == ("yuantong", "YT1", "KEY123")
    assert body["parameters"]["callbackurl"] == "https://hub/cb/kd100"
    assert body["parameters"]["salt"] == SALT


def test_subscription_answers_accept_duplicates_and_reject_bad_keys() -> None:
    """returnCode 200 and 501 (already subscribed) are fine; 600 raises."""
    for answer in ({"result": True, "returnCode": "200"}, {"result": False, "returnCode": "501"}):
        CONNECTOR.parse_subscription_response(CarrierResponse(200, {}, json.dumps(answer).encode()))
    with pytest.raises(CarrierError, match="600"):
        CONNECTOR.parse_subscription_response(
            CarrierResponse(200, {}, json.dumps({"result": False, "returnCode": "600"}).encode())
        )
