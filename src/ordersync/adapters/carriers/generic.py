"""A generic REST carrier in the style of EasyPost: JSON in and out, HMAC-signed webhooks.

- Booking: `POST {endpoint}/v2/shipments` with `{"shipment": {...}}`, HTTP Basic auth with
  the API key as user name; the answer is a shipment with `id`, `tracking_code` and a
  `postage_label.label_url`.
- Subscription: `POST {endpoint}/v2/trackers` with `{"tracker": {"tracking_code",
  "carrier"}}`; the webhook URL is configured on the account.
- Webhook: an Event `{"id", "object": "Event", "description": "tracker.updated",
  "result": <Tracker>}`, signed in `X-Hmac-Signature: hmac-sha256-hex=<hex>` = HMAC-SHA256
  of the exact body with the webhook secret (NFKD-normalised). A Tracker has
  `tracking_code`, `carrier`, `status` and `tracking_details[]` (`message`, `status`,
  `status_detail`, `datetime`, `tracking_location`): the whole history, a full snapshot.
- Cancellation: `DELETE {endpoint}/v2/shipments/{id}` (the booking's `id`; 2xx, or 404
  for one already gone, is done).
- Query, for polling: `GET {endpoint}/v2/trackers?tracking_codes=A,B,...` answers
  `{"trackers": [<Tracker>...]}`: many parcels per query.
- The webhook is acknowledged with any 2xx; we answer `{"received": true}`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from ordersync.adapters.carriers.base import (
    Ack,
    Booking,
    BookingResult,
    CallbackRejected,
    CarrierAccount,
    CarrierError,
    CarrierRequest,
    CarrierResponse,
    Party,
    Waybill,
    callback_id,
)
from ordersync.domain.shipments import (
    CodeMapping,
    MappingTable,
    ShipmentStatus,
    TrackingEvent,
    TrackingUpdate,
)

KIND = "generic"
SIGNATURE_HEADER = "X-Hmac-Signature"
SIGNATURE_PREFIX = "hmac-sha256-hex="

S = ShipmentStatus
CODES: tuple[CodeMapping, ...] = (
    CodeMapping("unknown", S.PENDING, "no information yet"),
    CodeMapping("pre_transit", S.INFO_RECEIVED, "label created, not yet scanned"),
    CodeMapping("in_transit", S.IN_TRANSIT, "in transit"),
    CodeMapping("out_for_delivery", S.OUT_FOR_DELIVERY, "out for delivery"),
    CodeMapping("available_for_pickup", S.AVAILABLE_FOR_PICKUP, "available for pickup"),
    CodeMapping("delivered", S.DELIVERED, "delivered"),
    CodeMapping("return_to_sender", S.RETURNING, "returning to sender"),
    CodeMapping("failure", S.DELIVERY_FAILED, "delivery failure"),
    CodeMapping("cancelled", S.CANCELLED, "cancelled"),
    CodeMapping("error", S.EXCEPTION, "carrier error"),
)
MAPPING = MappingTable.from_rows(KIND, CODES)


def signature(body: bytes, secret: str) -> str:
    key = unicodedata.normalize("NFKD", secret).encode()
    return SIGNATURE_PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str:
    lower = name.lower()
    for k, v in headers.items():
        if k.lower() == lower:
            return v
    return ""


def verify(body: bytes, headers: Mapping[str, str], secret: str) -> None:
    given = _header(headers, SIGNATURE_HEADER).strip()
    if not given:
        raise CallbackRejected(401, "signature_missing", f"{SIGNATURE_HEADER} missing")
    if not hmac.compare_digest(given.encode(), signature(body, secret).encode()):
        raise CallbackRejected(401, "signature_invalid", f"{SIGNATURE_HEADER} does not match")


def parse_time(value: str) -> datetime:
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise CallbackRejected(400, "malformed", f"bad datetime {value!r}") from e
    if t.tzinfo is None:
        raise CallbackRejected(400, "malformed", f"datetime {value!r} has no offset")
    return t


def _location(loc: Any) -> str:
    if not isinstance(loc, dict):
        return ""
    parts = (loc.get("city"), loc.get("state"), loc.get("country"))
    return ", ".join(str(p) for p in parts if p)


def _address(p: Party) -> dict[str, str]:
    return {
        "name": p.name,
        "phone": p.phone,
        "street1": p.address,
        "city": p.city,
        "state": p.province,
        "zip": p.postcode,
        "country": p.country,
    }


def _tracker_update(
    tracker: Mapping[str, Any], number: str, table: MappingTable, source: str
) -> TrackingUpdate:
    """A Tracker (a webhook's `result`, or one listed by a query) as a full snapshot."""
    details = tracker.get("tracking_details") or []
    if not isinstance(details, list):
        raise CallbackRejected(400, "malformed", "tracking_details is not a list")
    events = []
    for d in details:
        if not isinstance(d, dict) or not d.get("datetime"):
            raise CallbackRejected(400, "malformed", "a tracking detail has no datetime")
        code = str(d.get("status") or "")
        events.append(
            TrackingEvent(
                parse_time(str(d["datetime"])),
                code,
                str(d.get("message") or d.get("description") or ""),
                table.lookup(code) if code else None,
                _location(d.get("tracking_location")),
            )
        )
    state = str(tracker.get("status") or "")
    return TrackingUpdate(
        carrier_kind=KIND,
        tracking_number=number,
        carrier_code=str(tracker.get("carrier") or ""),
        events=tuple(events),
        snapshot=True,
        raw_state=state,
        state=table.lookup(state) if state else None,
        source_id=source,
    )


class GenericConnector:
    kind = KIND
    mapping = MAPPING
    poll_batch = 50

    def verify_callback(
        self, account: CarrierAccount, body: bytes, headers: Mapping[str, str]
    ) -> None:
        verify(body, headers, account.secret("webhook_secret"))

    def parse_callback(
        self,
        account: CarrierAccount,
        body: bytes,
        headers: Mapping[str, str],
        mapping: MappingTable | None = None,
    ) -> list[TrackingUpdate]:
        verify(body, headers, account.secret("webhook_secret"))
        try:
            event = json.loads(body)
            tracker = event["result"]
            number = str(tracker["tracking_code"])
        except (ValueError, KeyError, TypeError) as e:
            raise CallbackRejected(400, "malformed", f"not a tracker event: {e}") from e
        if tracker.get("object", "Tracker") != "Tracker":
            return []  # another event type: acknowledged, nothing to track
        source = str(event.get("id") or callback_id(KIND, body))
        return [_tracker_update(tracker, number, mapping or self.mapping, source)]

    def ack(
        self,
        account: CarrierAccount,
        ok: bool = True,
        reason: str = "",
        *,
        now: datetime | None = None,
    ) -> Ack:
        if ok:
            return Ack(200, "application/json", b'{"received":true}')
        return Ack(500, "application/json", json.dumps({"error": reason}).encode())

    def _request(
        self, account: CarrierAccount, path: str, payload: Any, method: str = "POST"
    ) -> CarrierRequest:
        token = base64.b64encode(f"{account.secret('api_key')}:".encode()).decode()
        headers = {"Authorization": f"Basic {token}"}
        body = b""
        if payload is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(payload, ensure_ascii=False).encode()
        return CarrierRequest(method, account.endpoint.rstrip("/") + path, headers, body)

    def build_booking_request(self, account: CarrierAccount, booking: Booking) -> CarrierRequest:
        grams = booking.weight_kg * 1000
        return self._request(
            account,
            "/v2/shipments",
            {
                "shipment": {
                    "reference": booking.order_id,
                    "carrier": booking.carrier_code,
                    "service": booking.service,
                    "to_address": _address(booking.recipient),
                    "from_address": _address(booking.sender),
                    "parcel": {"weight": str(grams), "volume": str(booking.volume_cm3)},
                    "customs_items": [
                        {"description": i.name, "quantity": i.quantity} for i in booking.items
                    ],
                }
            },
        )

    def parse_booking_response(self, booking: Booking, response: CarrierResponse) -> BookingResult:
        try:
            payload = json.loads(response.body)
        except ValueError as e:
            raise CarrierError(f"generic carrier booking answer is not JSON: {e}") from e
        if not 200 <= response.status < 300:
            message = (payload.get("error") or {}).get("message", response.status)
            raise CarrierError(f"generic carrier refused the booking: {message}")
        if not payload.get("tracking_code"):
            raise CarrierError("generic carrier booking answer has no tracking_code")
        return BookingResult(
            order_id=str(payload.get("reference") or booking.order_id),
            tracking_number=str(payload["tracking_code"]),
            carrier_code=str(payload.get("carrier") or booking.carrier_code),
            carrier_ref=str(payload.get("id") or ""),
            label_url=str((payload.get("postage_label") or {}).get("label_url") or ""),
        )

    def build_subscription_request(
        self,
        account: CarrierAccount,
        tracking_number: str,
        carrier_code: str,
        callback_url: str,
    ) -> CarrierRequest:
        tracker = {"tracking_code": tracking_number, "carrier": carrier_code}
        return self._request(account, "/v2/trackers", {"tracker": tracker})

    def parse_subscription_response(self, response: CarrierResponse) -> None:
        if not 200 <= response.status < 300:
            raise CarrierError(f"generic carrier refused the tracker: {response.status}")

    # ---- cancellation and polling -------------------------------------------------------

    def build_cancel_request(self, account: CarrierAccount, waybill: Waybill) -> CarrierRequest:
        ref = quote(waybill.carrier_ref or waybill.tracking_number, safe="")
        return self._request(account, f"/v2/shipments/{ref}", None, "DELETE")

    def parse_cancel_response(self, waybill: Waybill, response: CarrierResponse) -> None:
        if not (200 <= response.status < 300 or response.status == 404):
            raise CarrierError(f"generic carrier refused the cancellation: {response.status}")

    def build_poll_request(
        self, account: CarrierAccount, waybills: Sequence[Waybill]
    ) -> CarrierRequest:
        codes = ",".join(w.tracking_number for w in waybills)
        return self._request(
            account, "/v2/trackers?" + urlencode({"tracking_codes": codes}), None, "GET"
        )

    def parse_poll_response(
        self,
        account: CarrierAccount,
        waybills: Sequence[Waybill],
        response: CarrierResponse,
        mapping: MappingTable | None = None,
    ) -> list[TrackingUpdate]:
        if not 200 <= response.status < 300:
            raise CarrierError(f"generic carrier refused the tracker query: {response.status}")
        try:
            payload = json.loads(response.body)
            trackers = payload["trackers"]
        except (ValueError, KeyError, TypeError) as e:
            raise CarrierError(f"generic carrier tracker query answer: {e}") from e
        if not isinstance(trackers, list):
            raise CarrierError("generic carrier tracker query: trackers is not a list")
        table = mapping or self.mapping
        asked = {w.tracking_number for w in waybills}
        out: list[TrackingUpdate] = []
        for tracker in trackers:
            if not isinstance(tracker, dict) or str(tracker.get("tracking_code")) not in asked:
                continue  # not one we asked for
            number = str(tracker["tracking_code"])
            try:
                out.append(_tracker_update(tracker, number, table, f"{KIND}:query:{number}"))
            except CallbackRejected as e:
                raise CarrierError(f"generic carrier tracker query answer: {e.detail}") from e
        return out
