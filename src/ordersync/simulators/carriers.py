"""One fake server that plays three carrier formats: Kdniao, Kuaidi100 and a generic
EasyPost-like REST carrier.

It accepts bookings, cancellations, subscriptions and tracking queries in each format,
checking each signature or key the way the real service does, hands out tracking numbers,
and records every parcel and every call (`calls`). `fail(kind)` makes a carrier answer
with a server error (or a refusal) until `heal(kind)`, to exercise fallbacks. Tests
then script a parcel's history (`add_trace`) and `push` signed callbacks in each format to
a URL: the full snapshot, any subset of traces (a stale snapshot arriving late), or a
carrier-code correction. Signing and encoding are written here independently of the
adapters, so the adapters are checked against a second reading of each format.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlencode

import aiohttp
from aiohttp import web

from ordersync.simulators.server import LoopbackServer

CHINA = timezone(timedelta(hours=8))
KINDS = ("kdniao", "kuaidi100", "generic")


# A realistic parcel journey in each carrier's own codes, for tests and demos:
# (hours after booking, raw code, raw text, place).
SAMPLE_JOURNEYS: dict[str, list[tuple[int, str, str, str]]] = {
    "kdniao": [
        (2, "1", "【杭州市】顺丰速运 已收取快件", "杭州市"),
        (9, "2", "快件已发往 长沙转运中心", "杭州市"),
        (30, "202", "派件员 李师傅 正在派件", "长沙市"),
        (33, "301", "已签收，签收人：本人", "长沙市"),
    ],
    "kuaidi100": [
        (2, "103", "【上海市】圆通速递 已揽收", "上海市"),
        (9, "1002", "快件离开 上海转运中心 已发往 北京", "上海市"),
        (30, "501", "快件已由 北京朝阳区菜鸟驿站 代收", "北京市"),
        (33, "304", "已从驿站取出，签收人：菜鸟驿站", "北京市"),
    ],
    "generic": [
        (2, "pre_transit", "Shipment information received", "Zürich"),
        (9, "in_transit", "Sendung in Verarbeitung, Härkingen", "Härkingen"),
        (30, "out_for_delivery", "Unterwegs zur Zustellung", "Bern"),
        (33, "delivered", "Zugestellt an Jürg Müller", "Bern"),
    ],
}


@dataclass(frozen=True)
class KdniaoAccount:
    ebusiness_id: str = "1690001"
    app_key: str = "kdn-appkey-3c1d9e"


@dataclass(frozen=True)
class Kuaidi100Account:
    key: str = "kd100-key-77aa"
    secret: str = "kd100-secret-19f0"  # noqa: S105 - a simulator's test secret
    customer: str = "C0FFEE1234"


@dataclass(frozen=True)
class GenericAccount:
    api_key: str = "EZTK_test_5b0c"
    webhook_secret: str = "whsec-generic-é-8d2"  # noqa: S105 - test secret


@dataclass(frozen=True)
class SimTrace:
    at: datetime
    code: str
    text: str
    location: str = ""


@dataclass
class SimParcel:
    kind: str
    tracking_number: str
    carrier_code: str
    order_id: str = ""
    callback_url: str = ""  # Kuaidi100: from the subscription
    salt: str = ""  # Kuaidi100: from the subscription
    subscribed: bool = False
    traces: list[SimTrace] = field(default_factory=list)
    ref: str = ""  # the carrier's own id of the booking
    cancelled: bool = False


@dataclass
class SimFault:
    """How a failing carrier answers: an HTTP status (5xx), or a refusal in its format."""

    status: int = 503
    refuse: bool = False  # a business refusal (HTTP 200, Success false) instead
    times: int | None = None  # None: until healed


@dataclass(frozen=True)
class PushResult:
    status: int
    body: bytes
    sent: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# ---- encodings (independent of the adapters) ------------------------------------------


def kdniao_sign(data: str, app_key: str) -> str:
    hexdigest = hashlib.md5((data + app_key).encode(), usedforsecurity=False).hexdigest()
    return base64.b64encode(hexdigest.encode()).decode()


def kuaidi100_md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest().upper()


def generic_sign(body: bytes, secret: str) -> str:
    key = unicodedata.normalize("NFKD", secret).encode()
    return "hmac-sha256-hex=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _cn(t: datetime) -> str:
    return t.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")


def _kdniao_state(code: str) -> str:
    """StateEx -> State: the leading digit of a three-digit code."""
    return code[0] if len(code) == 3 else code


def _kuaidi100_state(code: str) -> str:
    """A sub-state -> its state: 10xx is 0 (在途), three digits take the leading digit."""
    if len(code) == 4:
        return "0"
    return code[0] if len(code) == 3 else code


def kdniao_push_body_item(
    account: KdniaoAccount, parcel: SimParcel, traces: Sequence[SimTrace]
) -> str:
    """One parcel as Kdniao describes it: a push's `Data[]` entry, an 8001 query answer."""
    return _json(_kdniao_item(account, parcel, traces))


def _kdniao_item(
    account: KdniaoAccount, parcel: SimParcel, traces: Sequence[SimTrace]
) -> dict[str, Any]:
    ordered = sorted(traces, key=lambda t: t.at)
    state_ex = ordered[-1].code if ordered else "0"
    item = {
        "EBusinessID": account.ebusiness_id,
        "ShipperCode": parcel.carrier_code,
        "LogisticCode": parcel.tracking_number,
        "OrderCode": parcel.order_id,
        "Success": True,
        "State": _kdniao_state(state_ex),
        "StateEx": state_ex,
        "Location": ordered[-1].location if ordered else "",
        "Traces": [
            {
                "AcceptTime": _cn(t.at),
                "AcceptStation": t.text,
                "Action": t.code,
                "Location": t.location,
            }
            for t in ordered
        ],
    }
    return item


def kdniao_push_body(
    account: KdniaoAccount, parcel: SimParcel, traces: Sequence[SimTrace], now: datetime
) -> bytes:
    item = _kdniao_item(account, parcel, traces)
    data = _json(
        {"EBusinessID": account.ebusiness_id, "PushTime": _cn(now), "Count": "1", "Data": [item]}
    )
    form = {
        "RequestData": data,
        "DataSign": kdniao_sign(data, account.app_key),
        "RequestType": "101",
    }
    return urlencode(form).encode()


def kuaidi100_push_body(
    parcel: SimParcel,
    traces: Sequence[SimTrace],
    *,
    correction: tuple[str, str] | None = None,
) -> bytes:
    param = kuaidi100_push_body_param(parcel, traces, correction=correction)
    return urlencode({"param": param, "sign": kuaidi100_md5(param + parcel.salt)}).encode()


def kuaidi100_push_body_param(
    parcel: SimParcel,
    traces: Sequence[SimTrace],
    *,
    correction: tuple[str, str] | None = None,
) -> str:
    """A push's `param` JSON; its `lastResult` is also what an instant query answers."""
    newest_first = sorted(traces, key=lambda t: t.at, reverse=True)
    sub = newest_first[0].code if newest_first else "1"
    state = _kuaidi100_state(sub)
    old, new = correction or ("", "")
    param = _json(
        {
            "status": "shutdown" if state in {"3", "4"} else "polling",
            "billstatus": "got",
            "message": "",
            "autoCheck": "1" if correction else "0",
            "comOld": old,
            "comNew": new,
            "lastResult": {
                "message": "ok",
                "nu": parcel.tracking_number,
                "ischeck": "1" if state == "3" else "0",
                "condition": "F00",
                "com": new or parcel.carrier_code,
                "status": "200",
                "state": state,
                "data": [
                    {
                        "time": _cn(t.at),
                        "ftime": _cn(t.at),
                        "context": t.text,
                        "status": "",
                        "statusCode": t.code,
                        "areaName": t.location,
                    }
                    for t in newest_first
                ],
            },
        }
    )
    return param


def generic_push_body(parcel: SimParcel, traces: Sequence[SimTrace], now: datetime) -> bytes:
    ordered = sorted(traces, key=lambda t: t.at)
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "Event",
        "mode": "test",
        "description": "tracker.updated",
        "created_at": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "result": {
            "id": f"trk_{hashlib.sha1(parcel.tracking_number.encode()).hexdigest()[:16]}",  # noqa: S324
            "object": "Tracker",
            "tracking_code": parcel.tracking_number,
            "carrier": parcel.carrier_code,
            "status": ordered[-1].code if ordered else "unknown",
            "tracking_details": [
                {
                    "object": "TrackingDetail",
                    "message": t.text,
                    "status": t.code,
                    "datetime": t.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                    "tracking_location": {"city": t.location or None, "country": "US"},
                }
                for t in ordered
            ],
        },
    }
    return json.dumps(event, ensure_ascii=False).encode()


class CarrierSimulator(LoopbackServer):
    """The three carriers on one aiohttp server; `push` sends signed callbacks out."""

    def __init__(
        self,
        *,
        kdniao: KdniaoAccount | None = None,
        kuaidi100: Kuaidi100Account | None = None,
        generic: GenericAccount | None = None,
        push_url: str | None = None,
        clock: Any = None,
    ) -> None:
        self.kdniao = kdniao or KdniaoAccount()
        self.kuaidi100 = kuaidi100 or Kuaidi100Account()
        self.generic = generic or GenericAccount()
        self.push_url = push_url  # Kdniao and generic: set in the carrier's console
        self.clock = clock or (lambda: datetime.now(UTC))
        self.parcels: dict[str, SimParcel] = {}
        self.rejected: list[tuple[str, str]] = []  # (route, reason)
        self.pushes: list[tuple[str, str, int]] = []  # (kind, tracking number, status)
        self.calls: list[tuple[str, str, str]] = []  # (kind, api, tracking number or "")
        self.faults: dict[str, SimFault] = {}
        self.base_url: str | None = None
        self._numbers = itertools.count(1)
        self._runner: web.AppRunner | None = None

    # ---- server ---------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/kdniao/api/EOrderService", self._kdniao)
        app.router.add_post("/kdniao/api/dist", self._kdniao)
        app.router.add_post("/kuaidi100/label/order", self._kuaidi100_order)
        app.router.add_post("/kuaidi100/poll", self._kuaidi100_poll)
        app.router.add_post("/generic/v2/shipments", self._generic_shipment)
        app.router.add_post("/generic/v2/trackers", self._generic_tracker)
        app.router.add_post("/kuaidi100/poll/query.do", self._kuaidi100_query)
        app.router.add_get("/generic/v2/trackers", self._generic_trackers)
        app.router.add_delete("/generic/v2/shipments/{ref}", self._generic_cancel)
        return app

    # ---- faults -----------------------------------------------------------------------

    def fail(
        self, kind: str, *, status: int = 503, refuse: bool = False, times: int | None = None
    ) -> None:
        """Make every call to this carrier fail (the next `times` calls, or until healed)."""
        self.faults[kind] = SimFault(status, refuse, times)

    def heal(self, kind: str) -> None:
        self.faults.pop(kind, None)

    def _fault(self, kind: str) -> web.Response | None:
        fault = self.faults.get(kind)
        if fault is None:
            return None
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                del self.faults[kind]
        self.calls.append((kind, "fault", ""))
        if not fault.refuse:
            return web.Response(status=fault.status, text="upstream unavailable")
        refusal: dict[str, Any] = {
            "kdniao": {"Success": False, "ResultCode": "105", "Reason": "系统繁忙"},
            "kuaidi100": {"success": False, "code": 500, "message": "系统繁忙"},
        }.get(kind, {"error": {"code": "CARRIER.DOWN", "message": "carrier unavailable"}})
        return web.json_response(refusal, status=200 if kind != "generic" else 422)

    def endpoint(self, kind: str) -> str:
        if self.base_url is None:
            raise RuntimeError("carrier simulator is not started")
        return f"{self.base_url}/{kind}"

    def _new_number(self, prefix: str) -> str:
        return f"{prefix}{7_700_000_000_000 + next(self._numbers)}"

    def _reject(self, route: str, reason: str) -> None:
        self.rejected.append((route, reason))

    @staticmethod
    async def _form(request: web.Request) -> dict[str, str]:
        raw = (await request.read()).decode("utf-8")
        return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    # ---- Kdniao -----------------------------------------------------------------------

    async def _kdniao(self, request: web.Request) -> web.Response:
        if (failed := self._fault("kdniao")) is not None:
            return failed
        form = await self._form(request)
        ebid = self.kdniao.ebusiness_id
        data = form.get("RequestData", "")
        answer: dict[str, Any] = {"EBusinessID": ebid, "Success": False}
        if form.get("EBusinessID") != ebid:
            self._reject("kdniao", "unknown EBusinessID")
            return web.json_response({**answer, "ResultCode": "101", "Reason": "用户不存在"})
        if form.get("DataType") != "2":
            self._reject("kdniao", "DataType is not 2")
            return web.json_response({**answer, "ResultCode": "102", "Reason": "DataType错误"})
        if not hmac.compare_digest(
            form.get("DataSign", "").encode(), kdniao_sign(data, self.kdniao.app_key).encode()
        ):
            self._reject("kdniao", "bad DataSign")
            return web.json_response({**answer, "ResultCode": "103", "Reason": "签名错误"})
        payload = json.loads(data)
        request_type = form.get("RequestType")
        if request_type == "1007":
            number = self._new_number("SF")
            self.parcels[number] = SimParcel(
                "kdniao",
                number,
                payload["ShipperCode"],
                order_id=payload["OrderCode"],
                ref=f"KDN{number}",
            )
            self.calls.append(("kdniao", "book", number))
            order = {
                "OrderCode": payload["OrderCode"],
                "ShipperCode": payload["ShipperCode"],
                "LogisticCode": number,
                "KDNOrderCode": f"KDN{number}",
            }
            return web.json_response(
                {
                    **answer,
                    "Success": True,
                    "ResultCode": "100",
                    "Reason": "成功",
                    "Order": order,
                    "UniquerRequestNumber": str(uuid.uuid4()),
                }
            )
        if request_type == "1008":
            parcel = self.parcels.setdefault(
                payload["LogisticCode"],
                SimParcel("kdniao", payload["LogisticCode"], payload["ShipperCode"]),
            )
            parcel.subscribed = True
            return web.json_response(
                {**answer, "Success": True, "UpdateTime": _cn(self.clock()), "Reason": ""}
            )
        if request_type == "1147":
            found = self.parcels.get(payload.get("ExpNo", ""))
            self.calls.append(("kdniao", "cancel", payload.get("ExpNo", "")))
            if found is None:
                return web.json_response({**answer, "ResultCode": "106", "Reason": "单号不存在"})
            found.cancelled = True
            return web.json_response({**answer, "Success": True, "ResultCode": "100"})
        if request_type == "8001":
            number = payload.get("LogisticCode", "")
            self.calls.append(("kdniao", "query", number))
            found = self.parcels.get(number)
            if found is None:
                return web.json_response({**answer, "Reason": "暂无轨迹信息"})
            item = json.loads(kdniao_push_body_item(self.kdniao, found, found.traces))
            return web.json_response({**item, "Success": True})
        self._reject("kdniao", f"unknown RequestType {request_type}")
        return web.json_response({**answer, "ResultCode": "104", "Reason": "RequestType错误"})

    # ---- Kuaidi100 --------------------------------------------------------------------

    async def _kuaidi100_order(self, request: web.Request) -> web.Response:
        if (failed := self._fault("kuaidi100")) is not None:
            return failed
        form = await self._form(request)
        acct = self.kuaidi100
        param, t = form.get("param", ""), form.get("t", "")
        expected = kuaidi100_md5(param + t + acct.key + acct.secret)
        if form.get("key") != acct.key or not hmac.compare_digest(
            form.get("sign", "").encode(), expected.encode()
        ):
            self._reject("kuaidi100/order", "bad key or sign")
            return web.json_response({"success": False, "code": 30002, "message": "验证签名失败"})
        payload = json.loads(param)
        if form.get("method") == "cancel":
            number = payload.get("kuaidinum", "")
            self.calls.append(("kuaidi100", "cancel", number))
            found = self.parcels.get(number)
            if found is None:
                return web.json_response({"success": False, "code": 30003, "message": "无此单号"})
            found.cancelled = True
            return web.json_response({"success": True, "code": 200, "message": "success"})
        number = self._new_number("YT")
        self.parcels[number] = SimParcel(
            "kuaidi100", number, payload["kuaidicom"], order_id=payload.get("orderId", "")
        )
        self.calls.append(("kuaidi100", "book", number))
        return web.json_response(
            {
                "success": True,
                "code": 200,
                "message": "success",
                "data": {
                    "taskId": uuid.uuid4().hex,
                    "kuaidinum": number,
                    "kuaidicom": payload["kuaidicom"],
                },
            }
        )

    async def _kuaidi100_query(self, request: web.Request) -> web.Response:
        if (failed := self._fault("kuaidi100")) is not None:
            return failed
        form = await self._form(request)
        param, customer = form.get("param", ""), form.get("customer", "")
        acct = self.kuaidi100
        expected = kuaidi100_md5(param + acct.key + customer)
        if customer != acct.customer or not hmac.compare_digest(
            form.get("sign", "").encode(), expected.encode()
        ):
            self._reject("kuaidi100/query", "bad customer or sign")
            return web.json_response(
                {"result": False, "returnCode": "601", "message": "key已过期或签名错误"}
            )
        number = json.loads(param).get("num", "")
        self.calls.append(("kuaidi100", "query", number))
        found = self.parcels.get(number)
        if found is None or not found.traces:
            return web.json_response(
                {"result": False, "returnCode": "500", "message": "查询无结果，请隔段时间再查"}
            )
        last = json.loads(kuaidi100_push_body_param(found, found.traces))["lastResult"]
        return web.json_response(last)

    async def _kuaidi100_poll(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        payload = json.loads(form.get("param", "{}"))
        if payload.get("key") != self.kuaidi100.key:
            self._reject("kuaidi100/poll", "bad key")
            return web.json_response(
                {"result": False, "returnCode": "600", "message": "您不是合法的订阅者"}
            )
        params = payload.get("parameters") or {}
        number = payload["number"]
        parcel = self.parcels.setdefault(
            number, SimParcel("kuaidi100", number, payload.get("company", ""))
        )
        if parcel.subscribed:
            return web.json_response({"result": False, "returnCode": "501", "message": "重复订阅"})
        parcel.subscribed = True
        parcel.callback_url = params.get("callbackurl", "")
        parcel.salt = params.get("salt", "")
        return web.json_response({"result": True, "returnCode": "200", "message": "提交成功"})

    # ---- generic ----------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        token = base64.b64encode(f"{self.generic.api_key}:".encode()).decode()
        return hmac.compare_digest(
            request.headers.get("Authorization", "").encode(), f"Basic {token}".encode()
        )

    async def _generic_shipment(self, request: web.Request) -> web.Response:
        if (failed := self._fault("generic")) is not None:
            return failed
        if not self._authorised(request):
            self._reject("generic/shipments", "bad api key")
            return web.json_response(
                {"error": {"code": "APIKEY.INVALID", "message": "invalid api key"}}, status=401
            )
        shipment = (await request.json())["shipment"]
        number = self._new_number("9400")
        ref = f"shp_{uuid.uuid4().hex[:16]}"
        self.parcels[number] = SimParcel(
            "generic",
            number,
            shipment.get("carrier", ""),
            order_id=shipment.get("reference", ""),
            ref=ref,
        )
        self.calls.append(("generic", "book", number))
        return web.json_response(
            {
                "id": ref,
                "object": "Shipment",
                "reference": shipment.get("reference"),
                "carrier": shipment.get("carrier"),
                "tracking_code": number,
                "postage_label": {"label_url": f"{self.endpoint('generic')}/labels/{number}.png"},
            },
            status=201,
        )

    async def _generic_cancel(self, request: web.Request) -> web.Response:
        if (failed := self._fault("generic")) is not None:
            return failed
        if not self._authorised(request):
            return web.json_response({"error": {"code": "APIKEY.INVALID"}}, status=401)
        ref = request.match_info["ref"]
        found = next((p for p in self.parcels.values() if ref in (p.ref, p.tracking_number)), None)
        self.calls.append(("generic", "cancel", found.tracking_number if found else ref))
        if found is None:
            return web.json_response({"error": {"code": "NOT_FOUND"}}, status=404)
        found.cancelled = True
        return web.json_response({"id": found.ref, "refund_status": "submitted"})

    async def _generic_trackers(self, request: web.Request) -> web.Response:
        if (failed := self._fault("generic")) is not None:
            return failed
        if not self._authorised(request):
            return web.json_response({"error": {"code": "APIKEY.INVALID"}}, status=401)
        codes = [c for c in request.query.get("tracking_codes", "").split(",") if c]
        self.calls.append(("generic", "query", ",".join(codes)))
        found = [self.parcels[c] for c in codes if c in self.parcels]
        trackers = [
            json.loads(generic_push_body(p, p.traces, self.clock()))["result"] for p in found
        ]
        return web.json_response({"trackers": trackers})

    async def _generic_tracker(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            self._reject("generic/trackers", "bad api key")
            return web.json_response(
                {"error": {"code": "APIKEY.INVALID", "message": "invalid api key"}}, status=401
            )
        tracker = (await request.json())["tracker"]
        number = tracker["tracking_code"]
        parcel = self.parcels.setdefault(
            number, SimParcel("generic", number, tracker.get("carrier", ""))
        )
        parcel.subscribed = True
        return web.json_response(
            {
                "id": f"trk_{number}",
                "object": "Tracker",
                "tracking_code": number,
                "status": "unknown",
            },
            status=201,
        )

    # ---- scripting and pushing ---------------------------------------------------------

    def add_trace(
        self, tracking_number: str, code: str, text: str, at: datetime, location: str = ""
    ) -> SimTrace:
        trace = SimTrace(at, code, text, location)
        self.parcels[tracking_number].traces.append(trace)
        return trace

    def push_body(
        self,
        tracking_number: str,
        traces: Sequence[SimTrace] | None = None,
        *,
        correction: tuple[str, str] | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The signed body and headers of a push: all traces (a full snapshot) or a subset."""
        parcel = self.parcels[tracking_number]
        chosen = parcel.traces if traces is None else list(traces)
        if parcel.kind == "kdniao":
            body = kdniao_push_body(self.kdniao, parcel, chosen, self.clock())
            return body, {"Content-Type": "application/x-www-form-urlencoded"}
        if parcel.kind == "kuaidi100":
            body = kuaidi100_push_body(parcel, chosen, correction=correction)
            if correction:
                parcel.carrier_code = correction[1]
            return body, {"Content-Type": "application/x-www-form-urlencoded"}
        body = generic_push_body(parcel, chosen, self.clock())
        return body, {
            "Content-Type": "application/json",
            "X-Hmac-Signature": generic_sign(body, self.generic.webhook_secret),
        }

    async def push(
        self,
        tracking_number: str,
        traces: Sequence[SimTrace] | None = None,
        *,
        url: str | None = None,
        correction: tuple[str, str] | None = None,
    ) -> PushResult:
        """POST a signed callback for this parcel and return the hub's answer."""
        parcel = self.parcels[tracking_number]
        target = url or parcel.callback_url or self.push_url
        if not target:
            raise RuntimeError(f"no callback URL for {parcel.kind} parcel {tracking_number}")
        body, headers = self.push_body(tracking_number, traces, correction=correction)
        async with (
            aiohttp.ClientSession() as session,
            session.post(target, data=body, headers=headers) as response,
        ):
            answer = await response.read()
            self.pushes.append((parcel.kind, tracking_number, response.status))
            return PushResult(response.status, answer, body)
