"""Cancelling waybills and querying tracking, in each carrier's own format: Kdniao
RequestType 1147 and 8001, Kuaidi100 `method=cancel` and `poll/query.do`, and the generic
carrier's DELETE and tracker list."""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import parse_qs

import pytest

from ordersync.adapters.carriers.base import (
    CancellingConnector,
    CarrierAccount,
    CarrierError,
    CarrierResponse,
    PollingConnector,
    Waybill,
)
from ordersync.adapters.carriers.generic import GenericConnector
from ordersync.adapters.carriers.kdniao import KdniaoConnector
from ordersync.adapters.carriers.kuaidi100 import Kuaidi100Connector
from ordersync.domain.shipments import ShipmentStatus

KDN = CarrierAccount(
    "kdn-sf", "kdniao", "https://api.kdniao.test", {"ebusiness_id": "1690001", "app_key": "k3y"}
)
KD100 = CarrierAccount(
    "kd100-yt",
    "kuaidi100",
    "https://poll.kuaidi100.test",
    {"key": "kd100-key", "secret": "s3cret", "customer": "C0FFEE", "fixed_t": "1700000000000"},
)
EZP = CarrierAccount(
    "ezp-post", "generic", "https://api.easypost.test", {"api_key": "EZTK_1", "webhook_secret": "w"}
)
SF_PARCEL = Waybill("ord_MATCHA-1", "SF7700000000001", "SF", "KDNSF7700000000001")
YT_PARCEL = Waybill("ord_MATCHA-2", "YT7700000000002", "yuantong")


def form(body: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}


def answer(payload: object, status: int = 200) -> CarrierResponse:
    return CarrierResponse(status, {}, json.dumps(payload, ensure_ascii=False).encode())


@pytest.mark.parametrize("connector", [KdniaoConnector(), Kuaidi100Connector(), GenericConnector()])
def test_every_builtin_connector_can_cancel_and_poll(connector: object) -> None:
    """The optional capabilities are detected by protocol, not by kind."""
    assert isinstance(connector, CancellingConnector)
    assert isinstance(connector, PollingConnector)


def test_kdniao_cancel_is_request_type_1147_signed_like_every_call() -> None:
    """ExpNo, ShipperCode and OrderCode, DataSign over RequestData + AppKey."""
    request = KdniaoConnector().build_cancel_request(KDN, SF_PARCEL)

    fields = form(request.body)
    data = json.loads(fields["RequestData"])
    digest = hashlib.md5((fields["RequestData"] + "k3y").encode()).hexdigest()  # noqa: S324
    assert request.url == "https://api.kdniao.test/api/EOrderService"
    assert fields["RequestType"] == "1147"
    assert data == {"ShipperCode": "SF", "OrderCode": "ord_MATCHA-1", "ExpNo": "SF7700000000001"}
    assert fields["DataSign"] == base64.b64encode(digest.encode()).decode()


def test_kdniao_cancel_refusal_is_a_carrier_error() -> None:
    """Success false (already picked up, unknown number) raises with the reason."""
    refused = answer({"Success": False, "ResultCode": "106", "Reason": "已揽收，不可取消"})

    with pytest.raises(CarrierError, match="已揽收"):
        KdniaoConnector().parse_cancel_response(SF_PARCEL, refused)
    KdniaoConnector().parse_cancel_response(SF_PARCEL, answer({"Success": True}))


def test_kdniao_instant_query_maps_traces_like_a_push() -> None:
    """8001 answers with one parcel's traces; each Action maps to a canonical status."""
    connector = KdniaoConnector()
    request = connector.build_poll_request(KDN, [SF_PARCEL])
    body = {
        "EBusinessID": "1690001",
        "ShipperCode": "SF",
        "LogisticCode": "SF7700000000001",
        "Success": True,
        "State": "3",
        "StateEx": "301",
        "Traces": [
            {"AcceptTime": "2026-11-20 10:00:00", "AcceptStation": "已收取快件", "Action": "1"},
            {"AcceptTime": "2026-11-21 18:30:00", "AcceptStation": "已签收", "Action": "301"},
        ],
    }

    [update] = connector.parse_poll_response(KDN, [SF_PARCEL], answer(body))

    assert form(request.body)["RequestType"] == "8001"
    assert update.tracking_number == "SF7700000000001"
    assert [e.status for e in update.events] == [
        ShipmentStatus.PICKED_UP,
        ShipmentStatus.DELIVERED,
    ]
    assert update.events[0].carrier_time.isoformat() == "2026-11-20T02:00:00+00:00"  # UTC
    with pytest.raises(ValueError, match="exactly one"):
        connector.build_poll_request(KDN, [SF_PARCEL, SF_PARCEL])


def test_kuaidi100_cancel_is_a_signed_label_order_call() -> None:
    """method=cancel, sign = MD5(param + t + key + secret) upper case."""
    request = Kuaidi100Connector().build_cancel_request(KD100, YT_PARCEL)

    fields = form(request.body)
    expected = hashlib.md5(  # noqa: S324
        (fields["param"] + "1700000000000" + "kd100-key" + "s3cret").encode()
    ).hexdigest()
    assert request.url == "https://poll.kuaidi100.test/label/order"
    assert fields["method"] == "cancel"
    assert json.loads(fields["param"])["kuaidinum"] == "YT7700000000002"
    assert fields["sign"] == expected.upper()


def test_kuaidi100_query_is_signed_with_key_and_customer_and_parses_the_snapshot() -> None:
    """poll/query.do: sign = MD5(param + key + customer); the answer is a lastResult."""
    connector = Kuaidi100Connector()
    request = connector.build_poll_request(KD100, [YT_PARCEL])
    fields = form(request.body)
    body = {
        "message": "ok",
        "nu": "YT7700000000002",
        "ischeck": "0",
        "com": "yuantong",
        "status": "200",
        "state": "0",
        "data": [
            {
                "time": "2026-11-20 18:00:00",
                "context": "快件离开 上海转运中心",
                "statusCode": "1002",
            },
            {"time": "2026-11-20 09:00:00", "context": "已揽收", "statusCode": "103"},
        ],
    }

    [update] = connector.parse_poll_response(KD100, [YT_PARCEL], answer(body))

    expected = hashlib.md5((fields["param"] + "kd100-key" + "C0FFEE").encode()).hexdigest()  # noqa: S324
    assert request.url == "https://poll.kuaidi100.test/poll/query.do"
    assert fields["sign"] == expected.upper()
    assert json.loads(fields["param"]) == {
        "com": "yuantong",
        "num": "YT7700000000002",
        "resultv2": "4",
    }
    by_time = sorted(update.events, key=lambda e: e.carrier_time)
    assert [(e.raw_code, e.status) for e in by_time] == [
        ("103", ShipmentStatus.PICKED_UP),
        ("1002", ShipmentStatus.IN_TRANSIT),
    ]


def test_kuaidi100_query_without_result_is_a_carrier_error() -> None:
    """returnCode 500 (no result yet) raises; the poller then tries again later."""
    empty = answer({"result": False, "returnCode": "500", "message": "查询无结果"})

    with pytest.raises(CarrierError, match="查询无结果"):
        Kuaidi100Connector().parse_poll_response(KD100, [YT_PARCEL], empty)


def test_generic_cancel_deletes_the_booking_by_its_id() -> None:
    """DELETE /v2/shipments/{id}; 404 (already gone) counts as done, 500 does not."""
    connector = GenericConnector()
    parcel = Waybill("ord_MATCHA-3", "9400770000000003", "PostCH", "shp_abc/1")

    request = connector.build_cancel_request(EZP, parcel)

    assert (request.method, request.url) == (
        "DELETE",
        "https://api.easypost.test/v2/shipments/shp_abc%2F1",
    )
    assert request.headers["Authorization"].startswith("Basic ")
    connector.parse_cancel_response(parcel, CarrierResponse(404, {}, b"{}"))
    with pytest.raises(CarrierError):
        connector.parse_cancel_response(parcel, CarrierResponse(500, {}, b"oops"))


def test_generic_query_lists_many_trackers_and_ignores_strangers() -> None:
    """One GET for several parcels; a tracker we did not ask about is skipped."""
    connector = GenericConnector()
    asked = [
        Waybill("ord_A", "9400A", "PostCH"),
        Waybill("ord_B", "9400B", "PostCH"),
    ]

    def tracker(code: str, status: str) -> dict[str, object]:
        return {
            "object": "Tracker",
            "tracking_code": code,
            "status": status,
            "tracking_details": [
                {"status": status, "message": status, "datetime": "2026-11-20T09:00:00Z"}
            ],
        }

    body = {"trackers": [tracker("9400A", "in_transit"), tracker("9400Z", "delivered")]}
    request = connector.build_poll_request(EZP, asked)

    updates = connector.parse_poll_response(EZP, asked, answer(body))

    assert request.method == "GET"
    assert request.url == "https://api.easypost.test/v2/trackers?tracking_codes=9400A%2C9400B"
    assert [(u.tracking_number, u.state) for u in updates] == [("9400A", ShipmentStatus.IN_TRANSIT)]


def test_a_carrier_account_never_shows_its_credentials() -> None:
    """The repr (log lines, tracebacks) names the account, not its secrets."""
    shown = repr(KDN)

    assert "k3y" not in shown
    assert "kdn-sf" in shown
