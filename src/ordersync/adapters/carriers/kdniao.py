"""Kdniao (快递鸟) style aggregator: signed form POSTs, subscription and trace pushes.

Wire format (every request and push is `application/x-www-form-urlencoded`, UTF-8):

- `RequestData`: the JSON payload; `EBusinessID`: the merchant id; `RequestType`: the API
  (1007 electronic waybill, 1147 its cancellation, 1008 trace subscription, 8001 instant
  trace query, 101 trace push); `DataType=2` (JSON);
- `DataSign` = URL-encoded base64 of the lower-case hex MD5 of `RequestData + AppKey`.
  Form encoding already URL-encodes it once; some senders encode it twice, so the
  verifier accepts the plain base64 and its URL-encoded form.

A push carries `Data[]`, one entry per parcel (`LogisticCode`, `ShipperCode`, `State`,
`StateEx`, `Location`, `Traces[]` with `AcceptTime`, `AcceptStation`, `Action`,
`Location`). Each push is a full snapshot of the parcel's traces. Times are Beijing time.
The push is answered with a JSON body `{"EBusinessID", "UpdateTime", "Success", "Reason"}`.
A trace without `Action` has no status of its own; the parcel's `StateEx` (or `State`) is
given to its latest trace.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlencode

from ordersync.adapters.carriers.base import (
    CHINA_TZ,
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
    read_form,
)
from ordersync.domain.shipments import (
    CodeMapping,
    MappingTable,
    ShipmentStatus,
    TrackingEvent,
    TrackingUpdate,
)

KIND = "kdniao"
REQUEST_BOOKING = "1007"
REQUEST_SUBSCRIBE = "1008"
REQUEST_PUSH = "101"
REQUEST_CANCEL = "1147"  # electronic waybill cancellation
REQUEST_QUERY = "8001"  # instant trace query (one parcel per call)
FORM = "application/x-www-form-urlencoded;charset=utf-8"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

S = ShipmentStatus
# State (0-4) and StateEx / Action codes share one code space.
CODES: tuple[CodeMapping, ...] = (
    CodeMapping("0", S.PENDING, "暂无轨迹信息"),
    CodeMapping("1", S.PICKED_UP, "已揽收"),
    CodeMapping("2", S.IN_TRANSIT, "在途中"),
    CodeMapping("201", S.IN_TRANSIT, "到达派件城市"),
    CodeMapping("202", S.OUT_FOR_DELIVERY, "派件中"),
    CodeMapping("204", S.IN_TRANSIT, "到达转运中心"),
    CodeMapping("205", S.IN_TRANSIT, "到达派件网点"),
    CodeMapping("206", S.IN_TRANSIT, "寄件网点发件"),
    CodeMapping("211", S.AVAILABLE_FOR_PICKUP, "已放入快递柜或驿站"),
    CodeMapping("3", S.DELIVERED, "已签收"),
    CodeMapping("301", S.DELIVERED, "正常签收"),
    CodeMapping("302", S.DELIVERED, "派件异常后最终签收"),
    CodeMapping("304", S.DELIVERED, "代收签收"),
    CodeMapping("311", S.DELIVERED, "已取出快递柜或驿站"),
    CodeMapping("4", S.EXCEPTION, "问题件"),
    CodeMapping("401", S.EXCEPTION, "发货无信息"),
    CodeMapping("402", S.EXCEPTION, "超时未签收"),
    CodeMapping("403", S.EXCEPTION, "超时未更新"),
    CodeMapping("404", S.RETURNING, "拒收(退件)"),
    CodeMapping("405", S.DELIVERY_FAILED, "派件异常"),
    CodeMapping("406", S.RETURNED, "退货签收"),
    CodeMapping("407", S.RETURNING, "退货未签收"),
    CodeMapping("412", S.EXCEPTION, "快递柜或驿站超时未取"),
    CodeMapping("413", S.EXCEPTION, "单号已拦截"),
    CodeMapping("414", S.EXCEPTION, "破损"),
    CodeMapping("415", S.CANCELLED, "客户取消发货"),
    CodeMapping("416", S.DELIVERY_FAILED, "无法联系"),
    CodeMapping("417", S.EXCEPTION, "配送延迟"),
    CodeMapping("418", S.EXCEPTION, "快件取出"),
    CodeMapping("419", S.OUT_FOR_DELIVERY, "重新派送"),
    CodeMapping("420", S.DELIVERY_FAILED, "收货地址不详细"),
    CodeMapping("421", S.DELIVERY_FAILED, "收件人电话错误"),
    CodeMapping("422", S.EXCEPTION, "错分件"),
    CodeMapping("423", S.EXCEPTION, "超区件"),
    CodeMapping("5", S.IN_TRANSIT, "转寄"),
    CodeMapping("6", S.IN_TRANSIT, "清关"),
    CodeMapping("601", S.IN_TRANSIT, "待清关"),
    CodeMapping("602", S.IN_TRANSIT, "清关中"),
    CodeMapping("603", S.IN_TRANSIT, "已清关"),
    CodeMapping("604", S.EXCEPTION, "清关异常"),
    CodeMapping("10", S.INFO_RECEIVED, "待揽件"),
)
MAPPING = MappingTable.from_rows(KIND, CODES)


def data_sign(request_data: str, app_key: str) -> str:
    """base64(lower-hex MD5(RequestData + AppKey)), before URL encoding."""
    digest = hashlib.md5((request_data + app_key).encode(), usedforsecurity=False).hexdigest()
    return base64.b64encode(digest.encode()).decode()


def signed_form(
    request_data: Mapping[str, Any], request_type: str, ebusiness_id: str, app_key: str
) -> bytes:
    """A request or push body: the form fields Kdniao sends, signed."""
    text = json.dumps(request_data, ensure_ascii=False, separators=(",", ":"))
    return urlencode(
        {
            "RequestData": text,
            "EBusinessID": ebusiness_id,
            "RequestType": request_type,
            "DataSign": data_sign(text, app_key),
            "DataType": "2",
        }
    ).encode()


def _request_data(form: Mapping[str, str]) -> str:
    text = form.get("RequestData")
    if text is None:
        raise CallbackRejected(400, "malformed", "RequestData missing")
    # Double-encoded senders leave the JSON percent-encoded after one form decode.
    return text if text.lstrip().startswith(("{", "[")) else unquote(text)


def verify_form(form: Mapping[str, str], app_key: str) -> str:
    """Check `DataSign`; return the verified `RequestData` text."""
    given = form.get("DataSign", "")
    if not given:
        raise CallbackRejected(401, "signature_missing", "DataSign missing")
    text = _request_data(form)
    expected = data_sign(text, app_key).encode()
    for candidate in {given, unquote(given)}:
        if hmac.compare_digest(candidate.encode(), expected):
            return text
    raise CallbackRejected(401, "signature_invalid", "DataSign does not match")


def parse_time(value: str) -> datetime:
    """Kdniao's "YYYY-MM-DD HH:MM:SS" in Beijing time (seconds optional)."""
    value = value.strip()
    try:  # the documented form, fast path
        t = datetime.fromisoformat(value)
        return t if t.tzinfo is not None else t.replace(tzinfo=CHINA_TZ)
    except ValueError:
        pass
    for fmt in (TIME_FORMAT, "%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M:%S"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=CHINA_TZ)
        except ValueError:
            continue
    raise CallbackRejected(400, "malformed", f"bad AcceptTime {value!r}")


def _party(p: Party) -> dict[str, str]:
    return {
        "Name": p.name,
        "Mobile": p.phone,
        "ProvinceName": p.province,
        "CityName": p.city,
        "ExpAreaName": p.district,
        "Address": p.address,
        "PostCode": p.postcode,
    }


class KdniaoConnector:
    kind = KIND
    mapping = MAPPING
    poll_batch = 1  # the instant query takes one parcel

    # ---- callbacks ----------------------------------------------------------------------

    def verify_callback(
        self, account: CarrierAccount, body: bytes, headers: Mapping[str, str]
    ) -> None:
        verify_form(read_form(body), account.secret("app_key"))

    def parse_callback(
        self,
        account: CarrierAccount,
        body: bytes,
        headers: Mapping[str, str],
        mapping: MappingTable | None = None,
    ) -> list[TrackingUpdate]:
        form = read_form(body)
        text = verify_form(form, account.secret("app_key"))
        try:
            payload = json.loads(text)
            items = payload["Data"]
        except (ValueError, KeyError, TypeError) as e:
            raise CallbackRejected(400, "malformed", f"RequestData has no Data[]: {e}") from e
        if not isinstance(items, list):
            raise CallbackRejected(400, "malformed", "Data is not a list")
        table = mapping or self.mapping
        source = callback_id(KIND, body)
        return [self._update(item, table, f"{source}:{i}") for i, item in enumerate(items)]

    def _update(self, item: Any, table: MappingTable, source: str) -> TrackingUpdate:
        if not isinstance(item, dict) or not item.get("LogisticCode"):
            raise CallbackRejected(400, "malformed", "a Data[] entry has no LogisticCode")
        state = str(item.get("StateEx") or item.get("State") or "")
        traces = item.get("Traces") or []
        if not isinstance(traces, list):
            raise CallbackRejected(400, "malformed", "Traces is not a list")
        parsed: list[tuple[datetime, str, str, str]] = []
        for trace in traces:
            if not isinstance(trace, dict) or "AcceptTime" not in trace:
                raise CallbackRejected(400, "malformed", "a trace has no AcceptTime")
            parsed.append(
                (
                    parse_time(str(trace["AcceptTime"])),
                    str(trace.get("Action") or ""),
                    str(trace.get("AcceptStation") or ""),
                    str(trace.get("Location") or ""),
                )
            )
        latest = max(range(len(parsed)), key=lambda i: parsed[i][0], default=None)
        events = []
        for i, (at, action, station, location) in enumerate(parsed):
            code = action or (state if i == latest else "")
            events.append(
                TrackingEvent(at, code, station, table.lookup(code) if code else None, location)
            )
        return TrackingUpdate(
            carrier_kind=KIND,
            tracking_number=str(item["LogisticCode"]),
            carrier_code=str(item.get("ShipperCode") or ""),
            events=tuple(events),
            snapshot=True,
            raw_state=state,
            state=table.lookup(state) if state else None,
            source_id=source,
        )

    def ack(
        self,
        account: CarrierAccount,
        ok: bool = True,
        reason: str = "",
        *,
        now: datetime | None = None,
    ) -> Ack:
        at = (now or datetime.now(CHINA_TZ)).astimezone(CHINA_TZ)
        body = {
            "EBusinessID": account.secret("ebusiness_id"),
            "UpdateTime": at.strftime(TIME_FORMAT),
            "Success": ok,
            "Reason": reason,
        }
        return Ack(200, "application/json", json.dumps(body, ensure_ascii=False).encode())

    # ---- booking and subscription -------------------------------------------------------

    def _request(
        self, account: CarrierAccount, path: str, request_type: str, data: Mapping[str, Any]
    ) -> CarrierRequest:
        body = signed_form(
            data, request_type, account.secret("ebusiness_id"), account.secret("app_key")
        )
        return CarrierRequest(
            "POST", account.endpoint.rstrip("/") + path, {"Content-Type": FORM}, body
        )

    def build_booking_request(self, account: CarrierAccount, booking: Booking) -> CarrierRequest:
        data = {
            "OrderCode": booking.order_id,
            "ShipperCode": booking.carrier_code,
            "PayType": 1,
            "ExpType": booking.service or "1",
            "Sender": _party(booking.sender),
            "Receiver": _party(booking.recipient),
            "Commodity": [
                {"GoodsName": i.name, "Goodsquantity": i.quantity, "GoodsWeight": str(i.weight_kg)}
                for i in booking.items
            ],
            "Weight": str(booking.weight_kg),
            "Quantity": 1,
            "Volume": str(booking.volume_cm3),
            "Remark": booking.remark,
            "IsReturnPrintTemplate": 0,
        }
        return self._request(account, "/api/EOrderService", REQUEST_BOOKING, data)

    def parse_booking_response(self, booking: Booking, response: CarrierResponse) -> BookingResult:
        try:
            payload = json.loads(response.body)
        except ValueError as e:
            raise CarrierError(f"kdniao booking answer is not JSON: {e}") from e
        if response.status != 200 or not payload.get("Success"):
            code = payload.get("ResultCode", response.status)
            raise CarrierError(f"kdniao refused the booking ({code}): {payload.get('Reason')}")
        order = payload.get("Order") or {}
        if not order.get("LogisticCode"):
            raise CarrierError("kdniao booking answer has no Order.LogisticCode")
        return BookingResult(
            order_id=str(order.get("OrderCode") or booking.order_id),
            tracking_number=str(order["LogisticCode"]),
            carrier_code=str(order.get("ShipperCode") or booking.carrier_code),
            carrier_ref=str(order.get("KDNOrderCode") or ""),
        )

    def build_subscription_request(
        self,
        account: CarrierAccount,
        tracking_number: str,
        carrier_code: str,
        callback_url: str,
    ) -> CarrierRequest:
        # The push URL itself is set in Kdniao's console; `Callback` is echoed in each push.
        data = {
            "ShipperCode": carrier_code,
            "LogisticCode": tracking_number,
            "Callback": callback_url,
        }
        return self._request(account, "/api/dist", REQUEST_SUBSCRIBE, data)

    def parse_subscription_response(self, response: CarrierResponse) -> None:
        try:
            payload = json.loads(response.body)
        except ValueError as e:
            raise CarrierError(f"kdniao subscription answer is not JSON: {e}") from e
        if response.status != 200 or not payload.get("Success"):
            raise CarrierError(f"kdniao refused the subscription: {payload.get('Reason')}")

    # ---- cancellation and polling -------------------------------------------------------

    def build_cancel_request(self, account: CarrierAccount, waybill: Waybill) -> CarrierRequest:
        data = {
            "ShipperCode": waybill.carrier_code,
            "OrderCode": waybill.order_id,
            "ExpNo": waybill.tracking_number,
        }
        return self._request(account, "/api/EOrderService", REQUEST_CANCEL, data)

    def parse_cancel_response(self, waybill: Waybill, response: CarrierResponse) -> None:
        payload = _json_answer(response, "cancellation")
        if response.status != 200 or not payload.get("Success"):
            code = payload.get("ResultCode", response.status)
            raise CarrierError(f"kdniao refused the cancellation ({code}): {payload.get('Reason')}")

    def build_poll_request(
        self, account: CarrierAccount, waybills: Sequence[Waybill]
    ) -> CarrierRequest:
        if len(waybills) != 1:
            raise ValueError("the kdniao instant query takes exactly one parcel")
        [w] = waybills
        data = {"OrderCode": "", "ShipperCode": w.carrier_code, "LogisticCode": w.tracking_number}
        return self._request(account, "/api/dist", REQUEST_QUERY, data)

    def parse_poll_response(
        self,
        account: CarrierAccount,
        waybills: Sequence[Waybill],
        response: CarrierResponse,
        mapping: MappingTable | None = None,
    ) -> list[TrackingUpdate]:
        payload = _json_answer(response, "trace query")
        if response.status != 200 or not payload.get("Success"):
            raise CarrierError(f"kdniao refused the trace query: {payload.get('Reason')}")
        try:
            source = callback_id(KIND, response.body)
            update = self._update(payload, mapping or self.mapping, source)
        except CallbackRejected as e:
            raise CarrierError(f"kdniao trace query answer: {e.detail}") from e
        return [update]


def _json_answer(response: CarrierResponse, what: str) -> dict[str, Any]:
    try:
        payload = json.loads(response.body)
    except ValueError as e:
        raise CarrierError(f"kdniao {what} answer is not JSON ({response.status}): {e}") from e
    if not isinstance(payload, dict):
        raise CarrierError(f"kdniao {what} answer is not an object")
    return payload
