"""The generic EasyPost-like carrier: X-Hmac-Signature webhooks over the exact body, tracker
events with tracking_details[] mapped to canonical statuses, and the JSON REST requests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import unicodedata
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from ordersync.adapters.carriers import generic
from ordersync.adapters.carriers.base import (
    Booking,
    CallbackRejected,
    CarrierAccount,
    CarrierError,
    CarrierResponse,
    Item,
    Party,
)
from ordersync.domain.shipments import Shipment, ShipmentStatus

S = ShipmentStatus
SECRET = "whsec_ünïcode-42"
ACCOUNT = CarrierAccount(
    "ezp", "generic", "https://api.carrier.example", {"api_key": "EZAK_1", "webhook_secret": SECRET}
)
CONNECTOR = generic.GenericConnector()


def detail(when: str, status: str, message: str, city: str = "Zürich") -> dict[str, Any]:
    return {
        "object": "TrackingDetail",
        "message": message,
        "status": status,
        "status_detail": "arrived_at_facility",
        "datetime": when,
        "source": "PostCH",
        "tracking_location": {
            "object": "TrackingLocation",
            "city": city,
            "state": None,
            "country": "CH",
        },
    }


def event(
    status: str = "out_for_delivery", details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "id": "evt_7f3a",
        "object": "Event",
        "mode": "test",
        "description": "tracker.updated",
        "created_at": "2026-11-21T09:00:00Z",
        "result": {
            "id": "trk_91ab",
            "object": "Tracker",
            "tracking_code": "99.00.123456.78901234",
            "carrier": "PostCH",
            "status": status,
            "tracking_details": details
            if details is not None
            else [
                detail("2026-11-20T08:00:00Z", "pre_transit", "Sendung angemeldet"),
                detail(
                    "2026-11-20T15:30:00+01:00", "in_transit", "Sendung in Verarbeitung, Härkingen"
                ),
                detail(
                    "2026-11-21T07:45:00Z",
                    "out_for_delivery",
                    "Sendung unterwegs zur Zustellung, Zürich-Mülligen",
                ),
            ],
        },
    }


def hexmac(secret: str, body: bytes) -> str:
    """The documented recipe: HMAC-SHA256 over the body, key = the NFKD-normalised secret."""
    return hmac.new(
        unicodedata.normalize("NFKD", secret).encode(), body, hashlib.sha256
    ).hexdigest()


def signed(payload: dict[str, Any], secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload, ensure_ascii=False).encode()
    digest = hexmac(secret, body)
    return body, {
        "Content-Type": "application/json",
        "X-Hmac-Signature": f"hmac-sha256-hex={digest}",
    }


def test_a_tracker_webhook_is_parsed_with_non_ascii_messages_and_offsets() -> None:
    """tracking_details become events in UTC with raw status and verbatim message."""
    body, headers = signed(event())
    (update,) = CONNECTOR.parse_callback(ACCOUNT, body, headers)
    assert (update.tracking_number, update.carrier_code) == ("99.00.123456.78901234", "PostCH")
    assert (update.raw_state, update.state) == ("out_for_delivery", S.OUT_FOR_DELIVERY)
    assert update.source_id == "evt_7f3a"
    second = update.events[1]
    assert second.carrier_time == datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
    assert second.raw_text == "Sendung in Verarbeitung, Härkingen"
    assert (second.raw_code, second.status, second.location) == (
        "in_transit",
        S.IN_TRANSIT,
        "Zürich, CH",
    )


def test_the_secret_is_nfkd_normalised_before_signing() -> None:
    """A signature keyed with the raw (composed) non-ASCII secret does not verify."""
    body = json.dumps(event()).encode()
    raw = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert raw != hexmac(SECRET, body)
    with pytest.raises(CallbackRejected):
        CONNECTOR.verify_callback(ACCOUNT, body, {"X-Hmac-Signature": f"hmac-sha256-hex={raw}"})


def test_the_signature_header_is_found_whatever_its_case() -> None:
    """HTTP header names are case-insensitive."""
    body, headers = signed(event())
    lower = {k.lower(): v for k, v in headers.items()}
    assert CONNECTOR.parse_callback(ACCOUNT, body, lower)[0].state is S.OUT_FOR_DELIVERY


def test_a_forged_signature_is_rejected() -> None:
    """Another secret, or a body altered after signing: 401 signature_invalid."""
    body, headers = signed(event(), secret="not-the-secret")
    with pytest.raises(CallbackRejected) as err:
        CONNECTOR.parse_callback(ACCOUNT, body, headers)
    assert (err.value.status, err.value.code) == (401, "signature_invalid")
    body, headers = signed(event())
    with pytest.raises(CallbackRejected, match="does not match"):
        CONNECTOR.verify_callback(ACCOUNT, body.replace(b"out_for_delivery", b"delivered"), headers)


def test_a_missing_signature_is_rejected() -> None:
    """No X-Hmac-Signature header: 401 signature_missing."""
    body, _ = signed(event())
    with pytest.raises(CallbackRejected) as err:
        CONNECTOR.parse_callback(ACCOUNT, body, {"Content-Type": "application/json"})
    assert (err.value.status, err.value.code) == (401, "signature_missing")


def test_a_replayed_webhook_keeps_its_event_id_and_adds_nothing() -> None:
    """The same event delivered twice: same source id (the inbox key), no new events."""
    body, headers = signed(event())
    first = CONNECTOR.parse_callback(ACCOUNT, body, headers)[0]
    again = CONNECTOR.parse_callback(ACCOUNT, body, headers)[0]
    assert first.source_id == again.source_id == "evt_7f3a"
    shipment = Shipment(
        "s", "ezp", first.tracking_number, booked_at=datetime(2026, 11, 19, tzinfo=UTC)
    )
    shipment.apply(first)
    assert shipment.apply(again).added == ()


def test_out_of_order_webhooks_converge_on_delivered() -> None:
    """Delivered first, then the older out-for-delivery snapshot: delivered, no duplicates."""
    full = event()["result"]["tracking_details"]
    delivered = [*full, detail("2026-11-21T11:02:00Z", "delivered", "Zugestellt an Empfänger")]
    shipment = Shipment(
        "s", "ezp", "99.00.123456.78901234", booked_at=datetime(2026, 11, 19, tzinfo=UTC)
    )
    shipment.apply(CONNECTOR.parse_callback(ACCOUNT, *signed(event("delivered", delivered)))[0])
    shipment.apply(CONNECTOR.parse_callback(ACCOUNT, *signed(event()))[0])
    assert shipment.status is S.DELIVERED
    assert len(shipment.events) == 4


def test_a_non_tracker_event_is_acknowledged_with_no_updates() -> None:
    """Other event kinds (e.g. a batch) parse to nothing."""
    payload = {
        "id": "evt_2",
        "object": "Event",
        "description": "batch.updated",
        "result": {"object": "Batch", "tracking_code": "x"},
    }
    assert CONNECTOR.parse_callback(ACCOUNT, *signed(payload)) == []


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"result": {}}',
        b'{"result": {"tracking_code": "1", "tracking_details": [{"status": "x"}]}}',
    ],
)
def test_malformed_webhooks_are_rejected(payload: bytes) -> None:
    """Correctly signed but unusable bodies are refused with 400 malformed."""
    digest = hexmac(SECRET, payload)
    with pytest.raises(CallbackRejected) as err:
        CONNECTOR.parse_callback(
            ACCOUNT, payload, {"X-Hmac-Signature": f"hmac-sha256-hex={digest}"}
        )
    assert err.value.status == 400


DOCUMENTED = {
    "unknown": S.PENDING,
    "pre_transit": S.INFO_RECEIVED,
    "in_transit": S.IN_TRANSIT,
    "out_for_delivery": S.OUT_FOR_DELIVERY,
    "available_for_pickup": S.AVAILABLE_FOR_PICKUP,
    "delivered": S.DELIVERED,
    "return_to_sender": S.RETURNING,
    "failure": S.DELIVERY_FAILED,
    "cancelled": S.CANCELLED,
    "error": S.EXCEPTION,
}


@pytest.mark.parametrize(("code", "status"), sorted(DOCUMENTED.items()))
def test_every_documented_tracker_status_is_mapped_through_a_real_webhook(
    code: str, status: S
) -> None:
    """Each tracker status, as the tracker's and a detail's status, maps to its status."""
    payload = event(code, [detail("2026-11-22T10:00:00Z", code, f"status {code}")])
    (update,) = CONNECTOR.parse_callback(ACCOUNT, *signed(payload))
    assert update.state is status
    assert update.events[0].status is status


def test_the_default_table_covers_exactly_the_documented_statuses() -> None:
    """No documented status missing, none invented."""
    assert {r.raw_code for r in generic.MAPPING.rows} == set(DOCUMENTED)


def test_the_acknowledgement_is_a_2xx_json_body() -> None:
    """Any 2xx acknowledges; a refusal is a 500 so the carrier retries."""
    ack = CONNECTOR.ack(ACCOUNT)
    assert (ack.status, ack.content_type, json.loads(ack.body)) == (
        200,
        "application/json",
        {"received": True},
    )
    assert CONNECTOR.ack(ACCOUNT, ok=False, reason="busy").status == 500


BOOKING = Booking(
    order_id="ORD-9",
    carrier_code="PostCH",
    sender=Party("Teehaus", "+41440000000", "ZH", "Zürich", "", "Bahnhofstrasse 1", "8001", "CH"),
    recipient=Party("Jürg Müller", "+41790000000", "BE", "Bern", "", "Marktgasse 5", "3011", "CH"),
    items=(Item("Sencha", 3),),
    weight_kg=Decimal("0.45"),
    service="Priority",
)


def test_the_booking_request_is_json_with_basic_auth() -> None:
    """POST /v2/shipments, Basic auth with the API key, weight in grams."""
    request = CONNECTOR.build_booking_request(ACCOUNT, BOOKING)
    assert (request.method, request.url) == ("POST", "https://api.carrier.example/v2/shipments")
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"EZAK_1:").decode()
    shipment = json.loads(request.body)["shipment"]
    assert shipment["to_address"]["name"] == "Jürg Müller"
    assert Decimal(shipment["parcel"]["weight"]) == Decimal(450)
    assert shipment["reference"] == "ORD-9"


def test_a_booking_answer_yields_the_tracking_code_and_label() -> None:
    """tracking_code, id and postage_label.label_url; an error body raises."""
    ok = {
        "id": "shp_1",
        "reference": "ORD-9",
        "tracking_code": "99.1",
        "postage_label": {"label_url": "https://l/1.png"},
    }
    result = CONNECTOR.parse_booking_response(
        BOOKING, CarrierResponse(201, {}, json.dumps(ok).encode())
    )
    assert (result.tracking_number, result.carrier_ref, result.label_url) == (
        "99.1",
        "shp_1",
        "https://l/1.png",
    )
    error = {"error": {"code": "ADDRESS.VERIFY.FAILURE", "message": "Address not found"}}
    with pytest.raises(CarrierError, match="Address not found"):
        CONNECTOR.parse_booking_response(
            BOOKING, CarrierResponse(422, {}, json.dumps(error).encode())
        )


def test_the_tracker_request_names_the_tracking_code_and_carrier() -> None:
    """POST /v2/trackers with {"tracker": {...}}."""
    request = CONNECTOR.build_subscription_request(ACCOUNT, "99.1", "PostCH", "unused")
    assert request.url.endswith("/v2/trackers")
    assert json.loads(request.body) == {"tracker": {"tracking_code": "99.1", "carrier": "PostCH"}}
