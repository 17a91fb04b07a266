"""Kuaidi100 (快递100) style aggregator: `param` JSON plus an upper-case MD5 `sign`.

- Subscription (`POST {endpoint}/poll`, form `schema=json`, `param`): `param` holds
  `company`, `number`, `key` and `parameters` (`callbackurl`, `salt`, `resultv2`,
  `autoCom`). It is authorised by the key inside `param`, not signed.
- Electronic waybill (`POST {endpoint}/label/order`, form `method=order`, `key`, `t`,
  `param`, `sign`): `sign` = upper-case MD5 of `param + t + key + secret`.
- Push to our callback URL (form `param`, `sign`): `sign` = upper-case MD5 of
  `param + salt`, the salt given at subscription. `param` holds `status` (polling,
  shutdown, abort, updateall), `message`, `autoCheck` with `comOld`/`comNew` (Kuaidi100
  corrected the carrier code), and `lastResult` {`state`, `ischeck`, `com`, `nu`,
  `data[]` newest first with `time`, `ftime`, `context`, `status`, `statusCode`}: the
  whole history, so every push is a full snapshot. Times are Beijing time.
- Cancel a waybill (`POST {endpoint}/label/order`, form `method=cancel`, signed like a
  booking; `param` holds `kuaidicom`, `kuaidinum`, `partnerId`, `reason`).
- Instant query, for polling (`POST {endpoint}/poll/query.do`, form `customer`, `param`
  {`com`, `num`, `resultv2`}, `sign` = upper-case MD5 of `param + key + customer`): the
  answer is shaped like a push's `lastResult`, one parcel per query.
- The push is answered with `{"result": true, "returnCode": "200", "message": "成功"}`;
  a refusal with `result` false and `returnCode` "500" makes Kuaidi100 push again later.

`state` codes are one or two digits; with `resultv2=4` each trace's `statusCode` carries
the finer three- and four-digit sub-states. One table covers both.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

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
    Correction,
    MappingTable,
    ShipmentStatus,
    TrackingEvent,
    TrackingUpdate,
)

KIND = "kuaidi100"
FORM = "application/x-www-form-urlencoded"

S = ShipmentStatus
CODES: tuple[CodeMapping, ...] = (
    # state
    CodeMapping("0", S.IN_TRANSIT, "在途"),
    CodeMapping("1", S.PICKED_UP, "揽收"),
    CodeMapping("2", S.EXCEPTION, "疑难"),
    CodeMapping("3", S.DELIVERED, "签收"),
    CodeMapping("4", S.RETURNED, "退签"),
    CodeMapping("5", S.OUT_FOR_DELIVERY, "派件"),
    CodeMapping("6", S.RETURNING, "退回"),
    CodeMapping("7", S.IN_TRANSIT, "转投"),
    CodeMapping("8", S.IN_TRANSIT, "清关"),
    CodeMapping("10", S.IN_TRANSIT, "待清关"),
    CodeMapping("11", S.IN_TRANSIT, "清关中"),
    CodeMapping("12", S.IN_TRANSIT, "已清关"),
    CodeMapping("13", S.EXCEPTION, "清关异常"),
    CodeMapping("14", S.RETURNING, "拒签"),
    # sub-states (resultv2=4)
    CodeMapping("101", S.INFO_RECEIVED, "已下单"),
    CodeMapping("102", S.INFO_RECEIVED, "待揽收"),
    CodeMapping("103", S.PICKED_UP, "已揽收"),
    CodeMapping("1001", S.IN_TRANSIT, "到达派件城市"),
    CodeMapping("1002", S.IN_TRANSIT, "干线"),
    CodeMapping("1003", S.IN_TRANSIT, "转递"),
    CodeMapping("501", S.AVAILABLE_FOR_PICKUP, "投柜或驿站"),
    CodeMapping("301", S.DELIVERED, "本人签收"),
    CodeMapping("302", S.DELIVERED, "派件异常后签收"),
    CodeMapping("303", S.DELIVERED, "代签"),
    CodeMapping("304", S.DELIVERED, "投柜或站签收"),
    CodeMapping("401", S.CANCELLED, "已销单"),
    CodeMapping("201", S.EXCEPTION, "超时未签收"),
    CodeMapping("202", S.EXCEPTION, "超时未更新"),
    CodeMapping("203", S.RETURNING, "拒收"),
    CodeMapping("204", S.DELIVERY_FAILED, "派件异常"),
    CodeMapping("205", S.EXCEPTION, "柜或驿站超时未取"),
    CodeMapping("206", S.DELIVERY_FAILED, "无法联系"),
    CodeMapping("207", S.EXCEPTION, "超区"),
    CodeMapping("208", S.EXCEPTION, "滞留"),
    CodeMapping("209", S.EXCEPTION, "破损"),
    CodeMapping("210", S.CANCELLED, "销单"),
)
MAPPING = MappingTable.from_rows(KIND, CODES)
PUSH_STATUSES = frozenset({"polling", "shutdown", "abort", "updateall"})


def md5_upper(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest().upper()


def push_sign(param: str, salt: str) -> str:
    return md5_upper(param + salt)


def api_sign(param: str, t: str, key: str, secret: str) -> str:
    return md5_upper(param + t + key + secret)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def verify_push(form: Mapping[str, str], salt: str) -> str:
    """Check `sign`; return the verified `param` text."""
    param = form.get("param")
    if param is None:
        raise CallbackRejected(400, "malformed", "param missing")
    given = form.get("sign", "")
    if not given:
        raise CallbackRejected(401, "signature_missing", "sign missing")
    if not hmac.compare_digest(given.upper().encode(), push_sign(param, salt).encode()):
        raise CallbackRejected(401, "signature_invalid", "sign does not match")
    return param


def parse_time(value: str) -> datetime:
    try:
        t = datetime.fromisoformat(value.strip())
        return t if t.tzinfo is not None else t.replace(tzinfo=CHINA_TZ)
    except ValueError as e:
        raise CallbackRejected(400, "malformed", f"bad time {value!r}") from e


def _party(p: Party) -> dict[str, str]:
    return {
        "name": p.name,
        "mobile": p.phone,
        "printAddr": f"{p.province}{p.city}{p.district}{p.address}",
        "company": "",
    }


def _update(
    payload: Mapping[str, Any],
    last: Mapping[str, Any],
    number: str,
    table: MappingTable,
    source: str,
) -> TrackingUpdate:
    """A `lastResult` (a push's, or a query's answer itself) as a full-snapshot update."""
    state = str(last.get("state") or "")
    data = last.get("data") or []
    if not isinstance(data, list):
        raise CallbackRejected(400, "malformed", "lastResult.data is not a list")
    parsed: list[tuple[datetime, str, str, str]] = []
    for row in data:
        if not isinstance(row, dict):
            raise CallbackRejected(400, "malformed", "a data[] row is not an object")
        when = row.get("ftime") or row.get("time")
        if not when:
            raise CallbackRejected(400, "malformed", "a data[] row has no time")
        parsed.append(
            (
                parse_time(str(when)),
                str(row.get("statusCode") or ""),
                str(row.get("context") or ""),
                str(row.get("areaName") or row.get("location") or ""),
            )
        )
    latest = max(range(len(parsed)), key=lambda i: parsed[i][0], default=None)
    events = []
    for i, (at, code, text, location) in enumerate(parsed):
        code = code or (state if i == latest else "")
        events.append(TrackingEvent(at, code, text, table.lookup(code) if code else None, location))
    corrections: tuple[Correction, ...] = ()
    com_old, com_new = str(payload.get("comOld") or ""), str(payload.get("comNew") or "")
    if str(payload.get("autoCheck") or "0") == "1" and com_new and com_new != com_old:
        corrections = (Correction("carrier_code", com_old, com_new),)
    return TrackingUpdate(
        carrier_kind=KIND,
        tracking_number=number,
        carrier_code=str(last.get("com") or com_new or ""),
        events=tuple(events),
        snapshot=True,
        raw_state=state,
        state=table.lookup(state) if state else None,
        corrections=corrections,
        source_id=source,
    )


class Kuaidi100Connector:
    kind = KIND
    mapping = MAPPING
    poll_batch = 1  # the instant query takes one parcel

    def verify_callback(
        self, account: CarrierAccount, body: bytes, headers: Mapping[str, str]
    ) -> None:
        verify_push(read_form(body), account.secret("salt"))

    def parse_callback(
        self,
        account: CarrierAccount,
        body: bytes,
        headers: Mapping[str, str],
        mapping: MappingTable | None = None,
    ) -> list[TrackingUpdate]:
        param = verify_push(read_form(body), account.secret("salt"))
        try:
            payload = json.loads(param)
            last = payload["lastResult"]
            number = str(last["nu"])
        except (ValueError, KeyError, TypeError) as e:
            raise CallbackRejected(400, "malformed", f"param has no lastResult.nu: {e}") from e
        return [_update(payload, last, number, mapping or self.mapping, callback_id(KIND, body))]

    def ack(
        self,
        account: CarrierAccount,
        ok: bool = True,
        reason: str = "",
        *,
        now: datetime | None = None,
    ) -> Ack:
        body = (
            {"result": True, "returnCode": "200", "message": "成功"}
            if ok
            else {"result": False, "returnCode": "500", "message": reason or "失败"}
        )
        return Ack(200, "application/json", json.dumps(body, ensure_ascii=False).encode())

    def build_booking_request(self, account: CarrierAccount, booking: Booking) -> CarrierRequest:
        param = dumps(
            {
                "kuaidicom": booking.carrier_code,
                "partnerId": account.credentials.get("partner_id", ""),
                "recMan": _party(booking.recipient),
                "sendMan": _party(booking.sender),
                "cargo": ",".join(i.name for i in booking.items),
                "count": sum(i.quantity for i in booking.items),
                "weight": str(booking.weight_kg),
                "volumn": str(booking.volume_cm3),
                "remark": booking.remark,
                "orderId": booking.order_id,
                "printType": "NON",
                "expType": booking.service or "标准快递",
            }
        )
        key, secret = account.secret("key"), account.secret("secret")
        t = account.credentials.get("fixed_t") or str(int(datetime.now().timestamp() * 1000))
        form = {"method": "order", "key": key, "t": t, "param": param}
        form["sign"] = api_sign(param, t, key, secret)
        return CarrierRequest(
            "POST",
            account.endpoint.rstrip("/") + "/label/order",
            {"Content-Type": FORM},
            urlencode(form).encode(),
        )

    def parse_booking_response(self, booking: Booking, response: CarrierResponse) -> BookingResult:
        try:
            payload = json.loads(response.body)
        except ValueError as e:
            raise CarrierError(f"kuaidi100 booking answer is not JSON: {e}") from e
        if response.status != 200 or not payload.get("success"):
            raise CarrierError(
                f"kuaidi100 refused the booking ({payload.get('code')}): {payload.get('message')}"
            )
        data = payload.get("data") or {}
        if not data.get("kuaidinum"):
            raise CarrierError("kuaidi100 booking answer has no data.kuaidinum")
        return BookingResult(
            order_id=booking.order_id,
            tracking_number=str(data["kuaidinum"]),
            carrier_code=str(data.get("kuaidicom") or booking.carrier_code),
            carrier_ref=str(data.get("taskId") or ""),
            label_url=str(data.get("label") or ""),
        )

    def build_subscription_request(
        self,
        account: CarrierAccount,
        tracking_number: str,
        carrier_code: str,
        callback_url: str,
    ) -> CarrierRequest:
        param = dumps(
            {
                "company": carrier_code,
                "number": tracking_number,
                "key": account.secret("key"),
                "parameters": {
                    "callbackurl": callback_url,
                    "salt": account.secret("salt"),
                    "resultv2": "4",
                    "autoCom": "1",
                },
            }
        )
        return CarrierRequest(
            "POST",
            account.endpoint.rstrip("/") + "/poll",
            {"Content-Type": FORM},
            urlencode({"schema": "json", "param": param}).encode(),
        )

    def parse_subscription_response(self, response: CarrierResponse) -> None:
        try:
            payload = json.loads(response.body)
        except ValueError as e:
            raise CarrierError(f"kuaidi100 subscription answer is not JSON: {e}") from e
        # 501: already subscribed, which is what we wanted.
        if not payload.get("result") and str(payload.get("returnCode")) != "501":
            raise CarrierError(
                f"kuaidi100 refused the subscription ({payload.get('returnCode')}): "
                f"{payload.get('message')}"
            )

    # ---- cancellation and polling -------------------------------------------------------

    def build_cancel_request(self, account: CarrierAccount, waybill: Waybill) -> CarrierRequest:
        param = dumps(
            {
                "partnerId": account.credentials.get("partner_id", ""),
                "kuaidicom": waybill.carrier_code,
                "kuaidinum": waybill.tracking_number,
                "reason": "re-booked with another carrier",
            }
        )
        key, secret = account.secret("key"), account.secret("secret")
        t = account.credentials.get("fixed_t") or str(int(datetime.now().timestamp() * 1000))
        form = {"method": "cancel", "key": key, "t": t, "param": param}
        form["sign"] = api_sign(param, t, key, secret)
        return CarrierRequest(
            "POST",
            account.endpoint.rstrip("/") + "/label/order",
            {"Content-Type": FORM},
            urlencode(form).encode(),
        )

    def parse_cancel_response(self, waybill: Waybill, response: CarrierResponse) -> None:
        payload = _answer(response, "cancellation")
        if response.status != 200 or not payload.get("success"):
            raise CarrierError(
                f"kuaidi100 refused the cancellation ({payload.get('code')}):"
                f" {payload.get('message')}"
            )

    def build_poll_request(
        self, account: CarrierAccount, waybills: Sequence[Waybill]
    ) -> CarrierRequest:
        if len(waybills) != 1:
            raise ValueError("the kuaidi100 instant query takes exactly one parcel")
        [w] = waybills
        param = dumps({"com": w.carrier_code, "num": w.tracking_number, "resultv2": "4"})
        customer = account.secret("customer")
        form = {
            "customer": customer,
            "param": param,
            "sign": md5_upper(param + account.secret("key") + customer),
        }
        return CarrierRequest(
            "POST",
            account.endpoint.rstrip("/") + "/poll/query.do",
            {"Content-Type": FORM},
            urlencode(form).encode(),
        )

    def parse_poll_response(
        self,
        account: CarrierAccount,
        waybills: Sequence[Waybill],
        response: CarrierResponse,
        mapping: MappingTable | None = None,
    ) -> list[TrackingUpdate]:
        payload = _answer(response, "query")
        if response.status != 200 or str(payload.get("status")) != "200" or not payload.get("nu"):
            raise CarrierError(
                f"kuaidi100 refused the query ({payload.get('returnCode')}):"
                f" {payload.get('message')}"
            )
        try:
            return [
                _update(
                    {},
                    payload,
                    str(payload["nu"]),
                    mapping or self.mapping,
                    callback_id(KIND, response.body),
                )
            ]
        except CallbackRejected as e:
            raise CarrierError(f"kuaidi100 query answer: {e.detail}") from e


def _answer(response: CarrierResponse, what: str) -> dict[str, Any]:
    try:
        payload = json.loads(response.body)
    except ValueError as e:
        raise CarrierError(f"kuaidi100 {what} answer is not JSON ({response.status}): {e}") from e
    if not isinstance(payload, dict):
        raise CarrierError(f"kuaidi100 {what} answer is not an object")
    return payload
