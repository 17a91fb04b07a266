"""Kdniao: DataSign over RequestData + AppKey, trace pushes (full snapshots with State,
StateEx and Traces) mapped to canonical statuses, the acknowledgement body, and the signed
booking and subscription requests."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ordersync.adapters.carriers import kdniao
from ordersync.adapters.carriers.base import (
    Booking,
    CallbackRejected,
    CarrierAccount,
    CarrierError,
    CarrierResponse,
    Item,
    Party,
    read_form,
)
from ordersync.domain.shipments import Shipment, ShipmentStatus

S = ShipmentStatus
APP_KEY = "56da2cf8-c8a2-44b2-b6fa-476cd7d1ba17"
EBID = "1237100"
ACCOUNT = CarrierAccount(
    "kdn-main", "kdniao", "https://api.kdniao.example", {"ebusiness_id": EBID, "app_key": APP_KEY}
)
CONNECTOR = kdniao.KdniaoConnector()


def sign(text: str, key: str = APP_KEY) -> str:
    """The documented recipe, written out: base64 of the lower-case hex MD5."""
    return base64.b64encode(hashlib.md5((text + key).encode()).hexdigest().encode()).decode()  # noqa: S324


def push(data: list[dict[str, Any]], **form: str) -> tuple[bytes, str]:
    text = json.dumps(
        {
            "EBusinessID": EBID,
            "PushTime": "2026-11-21 18:02:11",
            "Count": str(len(data)),
            "Data": data,
        },
        ensure_ascii=False,
    )
    fields = {"RequestData": text, "DataSign": sign(text), "RequestType": "101", **form}
    return urlencode(fields).encode(), text


def parcel(**changes: Any) -> dict[str, Any]:
    """SF parcel 773061155005903: picked up in Hangzhou, out for delivery in Changsha."""
    item = {
        "EBusinessID": EBID,
        "OrderCode": "ORD-2026-0042",
        "ShipperCode": "SF",
        "LogisticCode": "773061155005903",
        "Success": True,
        "State": "2",
        "StateEx": "202",
        "Location": "长沙市",
        "Traces": [
            {
                "AcceptTime": "2026-11-20 11:45:41",
                "AcceptStation": "【杭州市】浙江临安西部公司 已收件",
                "Action": "1",
                "Location": "杭州市",
            },
            {
                "AcceptTime": "2026-11-20 23:17:26",
                "AcceptStation": "浙江临安西部公司 已发往 浙江杭州转运中心",
                "Action": "2",
                "Location": "杭州市",
            },
            {
                "AcceptTime": "2026-11-21 14:45:29",
                "AcceptStation": "已到达 湖南长沙转运中心",
                "Action": "201",
                "Location": "长沙市",
            },
            {
                "AcceptTime": "2026-11-21 16:53:55",
                "AcceptStation": "湖南长沙金盆岭公司 派件员：李师傅 正在派件",
                "Action": "202",
                "Location": "长沙市",
            },
        ],
    }
    item.update(changes)
    return item


def test_data_sign_is_base64_of_lowercase_hex_md5_of_request_data_and_app_key() -> None:
    """The signing helper follows the documented recipe."""
    assert kdniao.data_sign('{"a":1}', APP_KEY) == sign('{"a":1}')
    assert len(kdniao.data_sign("x", "y")) == 44  # base64 of 32 hex characters


def test_a_documented_push_is_parsed_with_non_ascii_stations_and_beijing_times() -> None:
    """Traces become events with raw code, raw text, location and UTC carrier time."""
    body, _ = push([parcel()])
    (update,) = CONNECTOR.parse_callback(ACCOUNT, body, {})
    assert update.tracking_number == "773061155005903"
    assert update.carrier_code == "SF"
    assert update.snapshot
    assert (update.raw_state, update.state) == ("202", S.OUT_FOR_DELIVERY)
    first = update.events[0]
    assert first.carrier_time == datetime(2026, 11, 20, 3, 45, 41, tzinfo=UTC)
    assert first.raw_text == "【杭州市】浙江临安西部公司 已收件"
    assert (first.raw_code, first.status, first.location) == ("1", S.PICKED_UP, "杭州市")
    assert [e.status for e in update.events] == [
        S.PICKED_UP,
        S.IN_TRANSIT,
        S.IN_TRANSIT,
        S.OUT_FOR_DELIVERY,
    ]


def test_a_push_with_several_parcels_yields_one_update_each() -> None:
    """Data[] may carry many parcels; each gets its own update and source id."""
    body, _ = push([parcel(), parcel(LogisticCode="SF0000000002", Traces=[])])
    updates = CONNECTOR.parse_callback(ACCOUNT, body, {})
    assert [u.tracking_number for u in updates] == ["773061155005903", "SF0000000002"]
    assert updates[1].events == ()
    assert len({u.source_id for u in updates}) == 2


def test_traces_without_action_take_state_ex_on_the_latest_trace_only() -> None:
    """Older pushes carry no Action: the parcel's StateEx goes to its latest trace."""
    traces = [{k: v for k, v in t.items() if k != "Action"} for t in parcel()["Traces"]]
    body, _ = push([parcel(Traces=list(reversed(traces)), StateEx="211")])
    (update,) = CONNECTOR.parse_callback(ACCOUNT, body, {})
    by_time = sorted(update.events, key=lambda e: e.carrier_time)
    assert [e.status for e in by_time] == [None, None, None, S.AVAILABLE_FOR_PICKUP]
    assert by_time[-1].raw_code == "211"


def test_a_forged_signature_is_rejected() -> None:
    """A push signed with another key is refused with 401 signature_invalid."""
    body, text = push([parcel()], DataSign=sign('{"x":1}'))
    with pytest.raises(CallbackRejected) as err:
        CONNECTOR.parse_callback(ACCOUNT, body, {})
    assert (err.value.status, err.value.code) == (401, "signature_invalid")
    tampered = urlencode({"RequestData": text.replace("202", "3"), "DataSign": sign(text)})
    with pytest.raises(CallbackRejected, match="does not match"):
        CONNECTOR.verify_callback(ACCOUNT, tampered.encode(), {})


def test_a_missing_signature_is_rejected() -> None:
    """No DataSign at all: 401 signature_missing."""
    _, text = push([parcel()])
    with pytest.raises(CallbackRejected) as err:
        CONNECTOR.parse_callback(ACCOUNT, urlencode({"RequestData": text}).encode(), {})
    assert (err.value.status, err.value.code) == (401, "signature_missing")


def test_a_double_url_encoded_signature_and_request_data_are_accepted() -> None:
    """Senders that URL-encode the fields before form encoding still verify."""
    _, text = push([parcel()])
    body = urlencode({"RequestData": quote(text), "DataSign": quote(sign(text))}).encode()
    (update,) = CONNECTOR.parse_callback(ACCOUNT, body, {})
    assert update.state is S.OUT_FOR_DELIVERY


def test_a_replayed_push_verifies_but_changes_nothing() -> None:
    """The same signed push twice: same source id, and the second merge adds no event."""
    body, _ = push([parcel()])
    first = CONNECTOR.parse_callback(ACCOUNT, body, {})[0]
    again = CONNECTOR.parse_callback(ACCOUNT, body, {})[0]
    assert first.source_id == again.source_id
    shipment = Shipment(
        "s1", "kdn-main", first.tracking_number, booked_at=first.events[0].carrier_time
    )
    assert shipment.apply(first).changed
    replay = shipment.apply(again)
    assert replay.added == ()
    assert not replay.changed


def test_a_later_full_snapshot_merges_and_an_older_one_arriving_late_does_not_roll_back() -> None:
    """Snapshot with delivery, then the stale out-for-delivery snapshot: still delivered."""
    delivered = parcel(
        State="3",
        StateEx="301",
        Traces=[
            *parcel()["Traces"],
            {
                "AcceptTime": "2026-11-21 17:32:23",
                "AcceptStation": "已签收，签收人：本人",
                "Action": "301",
            },
        ],
    )
    newer = CONNECTOR.parse_callback(ACCOUNT, push([delivered])[0], {})[0]
    older = CONNECTOR.parse_callback(ACCOUNT, push([parcel()])[0], {})[0]
    shipment = Shipment(
        "s1", "kdn-main", "773061155005903", booked_at=datetime(2026, 11, 20, tzinfo=UTC)
    )
    shipment.apply(newer)
    result = shipment.apply(older)
    assert result.added == ()
    assert shipment.status is S.DELIVERED
    assert len(shipment.events) == 5


@pytest.mark.parametrize("bad", [b"RequestData=not-json&DataSign=x", b"\xff\xfe", b"DataSign=abc"])
def test_malformed_pushes_are_rejected(bad: bytes) -> None:
    """Garbage never reaches the mapper: malformed or unsigned pushes raise CallbackRejected."""
    with pytest.raises(CallbackRejected):
        CONNECTOR.parse_callback(ACCOUNT, bad, {})


# Every State / StateEx code in Kdniao's push documentation, and what it means to us.
DOCUMENTED = {
    "0": S.PENDING,
    "1": S.PICKED_UP,
    "2": S.IN_TRANSIT,
    "201": S.IN_TRANSIT,
    "202": S.OUT_FOR_DELIVERY,
    "204": S.IN_TRANSIT,
    "205": S.IN_TRANSIT,
    "206": S.IN_TRANSIT,
    "211": S.AVAILABLE_FOR_PICKUP,
    "3": S.DELIVERED,
    "301": S.DELIVERED,
    "302": S.DELIVERED,
    "304": S.DELIVERED,
    "311": S.DELIVERED,
    "4": S.EXCEPTION,
    "401": S.EXCEPTION,
    "402": S.EXCEPTION,
    "403": S.EXCEPTION,
    "404": S.RETURNING,
    "405": S.DELIVERY_FAILED,
    "406": S.RETURNED,
    "407": S.RETURNING,
    "412": S.EXCEPTION,
    "413": S.EXCEPTION,
    "414": S.EXCEPTION,
    "415": S.CANCELLED,
    "416": S.DELIVERY_FAILED,
    "417": S.EXCEPTION,
    "418": S.EXCEPTION,
    "419": S.OUT_FOR_DELIVERY,
    "420": S.DELIVERY_FAILED,
    "421": S.DELIVERY_FAILED,
    "422": S.EXCEPTION,
    "423": S.EXCEPTION,
    "5": S.IN_TRANSIT,
    "6": S.IN_TRANSIT,
    "601": S.IN_TRANSIT,
    "602": S.IN_TRANSIT,
    "603": S.IN_TRANSIT,
    "604": S.EXCEPTION,
    "10": S.INFO_RECEIVED,
}


@pytest.mark.parametrize(("code", "status"), sorted(DOCUMENTED.items()))
def test_every_documented_code_is_mapped_through_a_real_push(code: str, status: S) -> None:
    """Each code, sent as a trace Action and as StateEx, maps to its canonical status."""
    trace = {"AcceptTime": "2026-11-22 10:00:00", "AcceptStation": f"状态 {code}", "Action": code}
    body, _ = push([parcel(State=code[0], StateEx=code, Traces=[trace])])
    (update,) = CONNECTOR.parse_callback(ACCOUNT, body, {})
    assert update.state is status
    assert (update.events[0].raw_code, update.events[0].status) == (code, status)


def test_the_default_table_covers_exactly_the_documented_codes() -> None:
    """No documented code missing, no undocumented code invented."""
    assert {r.raw_code for r in kdniao.MAPPING.rows} == set(DOCUMENTED)


def test_the_acknowledgement_is_the_json_body_kdniao_expects() -> None:
    """EBusinessID, UpdateTime (Beijing time), Success, Reason; JSON content type."""
    now = datetime(2026, 11, 21, 10, 2, 12, tzinfo=UTC)
    ack = CONNECTOR.ack(ACCOUNT, now=now)
    assert (ack.status, ack.content_type) == (200, "application/json")
    assert json.loads(ack.body) == {
        "EBusinessID": EBID,
        "UpdateTime": "2026-11-21 18:02:12",
        "Success": True,
        "Reason": "",
    }
    refusal = json.loads(CONNECTOR.ack(ACCOUNT, ok=False, reason="签名错误", now=now).body)
    assert (refusal["Success"], refusal["Reason"]) == (False, "签名错误")


BOOKING = Booking(
    order_id="ORD-2026-0042",
    carrier_code="SF",
    sender=Party("茶馆仓库", "13800000000", "浙江省", "杭州市", "西湖区", "龙井路 1 号"),
    recipient=Party("张三", "13900000000", "湖南省", "长沙市", "天心区", "金盆岭 8 栋"),
    items=(Item("龙井茶 250g", 2, Decimal("0.3")),),
    weight_kg=Decimal("0.8"),
    volume_cm3=Decimal("3000"),
)


def test_the_booking_request_is_a_signed_form_with_request_type_1007() -> None:
    """Form fields RequestData, EBusinessID, RequestType, DataSign, DataType=2."""
    request = CONNECTOR.build_booking_request(ACCOUNT, BOOKING)
    assert request.url == "https://api.kdniao.example/api/EOrderService"
    assert request.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
    assert form.keys() == {"RequestData", "EBusinessID", "RequestType", "DataSign", "DataType"}
    assert (form["EBusinessID"], form["RequestType"], form["DataType"]) == (EBID, "1007", "2")
    assert form["DataSign"] == sign(form["RequestData"])
    data = json.loads(form["RequestData"])
    assert data["OrderCode"] == "ORD-2026-0042"
    assert data["Receiver"]["Name"] == "张三"
    assert data["Weight"] == "0.8"


def test_a_booking_answer_yields_the_tracking_number() -> None:
    """Order.LogisticCode is the tracking number; a refusal raises with its reason."""
    ok = {
        "EBusinessID": EBID,
        "Success": True,
        "ResultCode": "100",
        "Order": {
            "OrderCode": "ORD-2026-0042",
            "ShipperCode": "SF",
            "LogisticCode": "SF1409",
            "KDNOrderCode": "K1",
        },
    }
    result = CONNECTOR.parse_booking_response(
        BOOKING, CarrierResponse(200, {}, json.dumps(ok).encode())
    )
    assert (result.tracking_number, result.carrier_code, result.carrier_ref) == (
        "SF1409",
        "SF",
        "K1",
    )
    refused = {"EBusinessID": EBID, "Success": False, "ResultCode": "105", "Reason": "余额不足"}
    with pytest.raises(CarrierError, match="余额不足"):
        CONNECTOR.parse_booking_response(
            BOOKING, CarrierResponse(200, {}, json.dumps(refused).encode())
        )


def test_the_subscription_request_is_signed_with_request_type_1008() -> None:
    """Trace subscription carries ShipperCode, LogisticCode and the Callback echo value."""
    request = CONNECTOR.build_subscription_request(ACCOUNT, "SF1409", "SF", "https://hub/cb")
    form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
    assert form["RequestType"] == "1008"
    assert form["DataSign"] == sign(form["RequestData"])
    assert json.loads(form["RequestData"]) == {
        "ShipperCode": "SF",
        "LogisticCode": "SF1409",
        "Callback": "https://hub/cb",
    }


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=40), max_size=5))
def test_form_decoding_matches_the_standard_library_for_any_text(fields: dict[str, str]) -> None:
    """The fast form reader decodes exactly what urllib's parse_qs decodes."""
    body = urlencode(fields)
    expected = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
    assert read_form(body.encode()) == expected


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="%+&=aF09 z中\\x", max_size=30))
def test_form_decoding_matches_the_standard_library_on_stray_escapes(body: str) -> None:
    """Broken or partial %-escapes and backslashes decode as urllib decodes them; escapes
    that are not UTF-8 are refused rather than replaced."""
    try:
        parsed = parse_qs(body, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        with pytest.raises(CallbackRejected, match="not UTF-8"):
            read_form(body.encode())
        return
    assert read_form(body.encode()) == {k: v[0] for k, v in parsed.items()}
