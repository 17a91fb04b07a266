"""A simulated Taobao Open Platform gateway serving `taobao.trades.sold.increment.get`.

It checks every call's `sign` (md5, hmac or hmac-sha256), the app key and the session,
serves the trades modified in [start_modified, end_modified] (China time, at most one day)
page by page in JSON or XML, and can refuse calls with TOP's "App Call Limited" error.
Trades keep their 64-bit `tid` as an integer, so its JSON shows every digit.

Shipment write-back: `taobao.logistics.offline.send` (whole trade, or with `is_split=1`
the `sub_tid` sub-orders; a trade or sub-order consigned before is refused as "already
consigned"), `taobao.logistics.orders.get` (the waybills recorded per trade) and
`taobao.logistics.consign.resend` (change a consigned parcel's waybill).

It also takes `taobao.item.quantity.update` (`num_iid`, `sku_id` or `outer_id`, `quantity`,
`type` 1 full / 2 delta), signed like every call, and records each level it sets in
`stock_records` (item `num_iid`, or `num_iid:sku_id` / `num_iid:outer_id`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from ordersync.adapters.channels.taobao import CHINA, INCREMENT_METHOD, sign, top_time, verify_sign
from ordersync.simulators.server import LoopbackServer
from ordersync.simulators.stock_recorder import StockRecord
from ordersync.simulators.writebacks import WriteBack, WritebackDesk

OFFLINE_SEND_METHOD = "taobao.logistics.offline.send"
CONSIGN_RESEND_METHOD = "taobao.logistics.consign.resend"
LOGISTICS_ORDERS_METHOD = "taobao.logistics.orders.get"
QUANTITY_UPDATE_METHOD = "taobao.item.quantity.update"

__all__ = ["TopGateway", "make_trade", "sign"]

FIRST_TID = 4_611_686_018_427_387_905  # beyond 2^53, as real tids are
MAX_WINDOW = timedelta(days=1)


def make_trade(
    tid: int,
    modified: datetime,
    *,
    status: str = "WAIT_SELLER_SEND_GOODS",
    subs: list[dict[str, Any]] | None = None,
    buyer: str | None = "茶友小王",
) -> dict[str, Any]:
    """A trade as TOP writes it (amounts as strings, times in China time)."""
    subs = subs or [
        {
            "oid": tid + 1,
            "title": "西湖龙井 250g",
            "num": 2,
            "price": "88.00",
            "payment": "170.00",
            "total_fee": "176.00",
            "discount_fee": "6.00",
            "outer_sku_id": "LONGJING-250",
            "num_iid": 600_000_000_001,
            "sku_id": 4_000_000_000_001,
            "refund_status": "NO_REFUND",
            "status": status,
        }
    ]
    total_fee = sum(int(s["payment"].replace(".", "")) for s in subs)
    stamp = top_time(modified)
    paid = status not in ("WAIT_BUYER_PAY", "TRADE_NO_CREATE_PAY", "TRADE_CLOSED_BY_TAOBAO")
    trade: dict[str, Any] = {
        "tid": tid,
        "status": status,
        "total_fee": f"{total_fee // 100}.{total_fee % 100:02d}",
        "post_fee": "0.00",
        "discount_fee": "0.00",
        "payment": f"{total_fee // 100}.{total_fee % 100:02d}",
        "created": stamp,
        "modified": stamp,
        "receiver_name": "王小明",
        "receiver_state": "浙江省",
        "receiver_city": "杭州市",
        "receiver_district": "西湖区",
        "receiver_address": "龙井路 1 号",
        "receiver_zip": "310000",
        "receiver_mobile": "13800000000",
        "orders": {"order": subs},
    }
    if paid:
        trade["pay_time"] = stamp
    if buyer is not None:
        trade["buyer_nick"] = buyer
    return trade


class TopGateway(LoopbackServer):
    """The gateway: `app` serves /router/rest; trades are edited through `put`/`update`."""

    def __init__(
        self,
        *,
        app_key: str,
        app_secret: str,
        session: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.app_key = app_key
        self.app_secret = app_secret
        self.session = session
        self.clock = clock
        self.trades: dict[int, dict[str, Any]] = {}
        self.calls = 0
        self.forged = 0
        self.throttle_next = 0  # refuse this many calls with "App Call Limited"
        self.writebacks = WritebackDesk()  # taobao.logistics.offline.send calls accepted
        self.shippings: dict[int, list[dict[str, Any]]] = {}  # tid -> its parcels
        self.stock_records: list[StockRecord] = []  # taobao.item.quantity.update accepted
        self.stock_levels: dict[str, int] = {}  # item key -> its level now
        self.stock_refuse = False  # answer quantity updates as for an unknown item
        self.base_url: str | None = None
        self._tids = itertools.count(FIRST_TID, 17)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        assert self.base_url is not None
        return self.base_url + "/router/rest"

    # ---- trades ---------------------------------------------------------------------
    def put(self, trade: dict[str, Any]) -> dict[str, Any]:
        self.trades[int(trade["tid"])] = trade
        return trade

    def create(self, **kw: Any) -> dict[str, Any]:
        return self.put(make_trade(next(self._tids), self.clock(), **kw))

    def update(self, tid: int, *, modified: datetime | None = None, **changes: Any) -> None:
        trade = {**self.trades[tid], **changes, "modified": top_time(modified or self.clock())}
        self.put(trade)

    # ---- the gateway ----------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/router/rest", self._rest)
        return app

    async def _rest(self, request: web.Request) -> web.Response:
        self.calls += 1
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.post()).items()})
        fmt = params.get("format", "xml")
        if params.get("app_key") != self.app_key:
            return _answer(fmt, _error(29, "Invalid app Key", "isv.appkey-not-exists"))
        if not verify_sign(params, self.app_secret):
            self.forged += 1
            return _answer(fmt, _error(25, "Invalid signature"))
        if params.get("session") != self.session:
            return _answer(fmt, _error(27, "Invalid session", "invalid-sessionkey"))
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return _answer(
                fmt,
                _error(
                    7,
                    "App Call Limited",
                    "accesscontrol.limited-by-app-access-count",
                    "This ban will last for 0 more seconds",
                ),
            )
        if params.get("method") == QUANTITY_UPDATE_METHOD:
            return self._quantity_update(params, fmt)
        if params.get("method") == OFFLINE_SEND_METHOD:
            return self._offline_send(params, fmt)
        if params.get("method") == LOGISTICS_ORDERS_METHOD:
            return self._logistics_orders(params, fmt)
        if params.get("method") == CONSIGN_RESEND_METHOD:
            return self._consign_resend(params, fmt)
        if params.get("method") != INCREMENT_METHOD:
            return _answer(fmt, _error(22, "Invalid method", "isv.method-not-exists"))
        try:
            start = _china(params["start_modified"])
            end = _china(params["end_modified"])
            page = int(params.get("page_no", "1"))
            size = int(params.get("page_size", "40"))
        except (KeyError, ValueError):
            return _answer(fmt, _error(41, "Invalid arguments", "isv.invalid-parameter"))
        if end < start or end - start > MAX_WINDOW or not (1 <= size <= 100) or page < 1:
            return _answer(fmt, _error(41, "Invalid arguments", "isv.invalid-parameter"))
        chosen = sorted(
            (t for t in self.trades.values() if start <= _china(t["modified"]) <= end),
            key=lambda t: (t["modified"], t["tid"]),
        )
        part = chosen[(page - 1) * size : page * size]
        body: dict[str, Any] = {"trades": {"trade": part}}
        if params.get("use_has_next") == "true":
            body["has_next"] = page * size < len(chosen)
        else:
            body["total_results"] = len(chosen)
        return _answer(fmt, {"trades_sold_increment_get_response": body})

    # ---- shipment write-back ----------------------------------------------------------
    def oids(self, tid: int) -> list[int]:
        return [int(o["oid"]) for o in self.trades[tid]["orders"]["order"]]

    def ship_elsewhere(self, tid: int, out_sid: str, company: str = "ZTO") -> None:
        """The seller ships the trade in the Taobao backend, outside the hub."""
        self.shippings.setdefault(tid, []).append(
            {"out_sid": out_sid, "company_code": company, "sub_tids": self.oids(tid)}
        )
        self.update(tid, status="WAIT_BUYER_CONFIRM_GOODS")

    def _shipped_oids(self, tid: int) -> set[int]:
        return {o for s in self.shippings.get(tid, []) for o in s["sub_tids"]}

    def _waybill_params(
        self, params: Mapping[str, str], fmt: str
    ) -> tuple[int, str, str, list[int] | None] | web.Response:
        """tid, out_sid, company_code and, with is_split=1, the sub_tid list."""
        tid, out_sid, company = params.get("tid"), params.get("out_sid"), params.get("company_code")
        if not (tid and out_sid and company and tid.isdigit()):
            return _answer(fmt, _error(41, "Invalid arguments", "isv.invalid-parameter"))
        if params.get("is_split", "0") not in ("0", "1"):
            return _answer(fmt, _error(41, "Invalid arguments", "isv.invalid-parameter"))
        subs: list[int] | None = None
        if params.get("is_split") == "1":
            raw = [x for x in params.get("sub_tid", "").split(",") if x]
            if not raw or not all(x.isdigit() for x in raw):
                return _answer(
                    fmt, _error(41, "Invalid arguments", "isv.invalid-parameter", "sub_tid")
                )
            subs = [int(x) for x in raw]
        return int(tid), out_sid, company, subs

    def _offline_send(self, params: Mapping[str, str], fmt: str) -> web.Response:
        """Ship a trade with the seller's own logistics: `tid`, `out_sid`, `company_code`;
        `is_split=1` with `sub_tid` (comma-separated oids) ships those sub-orders only."""
        if self.writebacks.should_fail():
            return web.Response(status=500, text="Internal Server Error")
        parsed = self._waybill_params(params, fmt)
        if isinstance(parsed, web.Response):
            return parsed
        tid, out_sid, company, subs = parsed
        trade = self.trades.get(tid)
        if trade is None or self.writebacks.refuse or trade["status"] not in _SHIPPABLE:
            if trade is not None and not self.writebacks.refuse and self.shippings.get(tid):
                return _answer(fmt, _ALREADY_CONSIGNED)
            return _answer(
                fmt,
                _error(
                    15,
                    "Remote service error",
                    "isv.logistics-offline-service-error:B01",
                    "交易不存在或状态不允许发货",
                ),
            )
        oids, done = self.oids(tid), self._shipped_oids(tid)
        if subs is not None and not set(subs) <= set(oids):
            return _answer(fmt, _error(41, "Invalid arguments", "isv.invalid-parameter", "sub_tid"))
        chosen = subs if subs is not None else [o for o in oids if o not in done]
        if set(chosen) & done:
            return _answer(fmt, _ALREADY_CONSIGNED)
        self.shippings.setdefault(tid, []).append(
            {"out_sid": out_sid, "company_code": company, "sub_tids": chosen}
        )
        nums = {int(o["oid"]): int(o["num"]) for o in trade["orders"]["order"]}
        lines = tuple((str(o), nums[o]) for o in chosen) if subs is not None else ()
        self.writebacks.received.append(WriteBack(str(tid), company, out_sid, lines))
        everything = self._shipped_oids(tid) >= set(oids)
        self.update(
            tid,
            status="WAIT_BUYER_CONFIRM_GOODS" if everything else "SELLER_CONSIGNED_PART",
            consign_time=top_time(self.clock()),
        )
        if self.writebacks.answer_lost():
            return web.Response(status=500, text="Internal Server Error")
        shipping = {"is_success": True}
        return _answer(fmt, {"logistics_offline_send_response": {"shipping": shipping}})

    def _logistics_orders(self, params: Mapping[str, str], fmt: str) -> web.Response:
        """taobao.logistics.orders.get: the trade's logistics orders (one per parcel)."""
        tid = params.get("tid", "")
        if not tid.isdigit() or not params.get("fields"):
            return _answer(fmt, _error(41, "Invalid arguments", "isv.invalid-parameter"))
        rows = [
            {
                "tid": int(tid),
                "out_sid": s["out_sid"],
                "company_name": s["company_code"],
                "sub_tids": ",".join(str(o) for o in s["sub_tids"]),
                "status": "CREATED",
            }
            for s in self.shippings.get(int(tid), [])
        ]
        body = {"shippings": {"shipping": rows}, "total_results": len(rows)}
        return _answer(fmt, {"logistics_orders_get_response": body})

    def _consign_resend(self, params: Mapping[str, str], fmt: str) -> web.Response:
        """taobao.logistics.consign.resend: change the waybill of a consigned trade (with
        `is_split=1`, of the parcel holding those sub-orders)."""
        if self.writebacks.should_fail():
            return web.Response(status=500, text="Internal Server Error")
        parsed = self._waybill_params(params, fmt)
        if isinstance(parsed, web.Response):
            return parsed
        tid, out_sid, company, subs = parsed
        held = self.shippings.get(tid, [])
        if subs is not None:
            held = [s for s in held if set(subs) <= set(s["sub_tids"])]
        if len(held) != 1 or self.writebacks.refuse:
            return _answer(
                fmt,
                _error(
                    15,
                    "Remote service error",
                    "isv.logistics-consign-resend-error",
                    "订单未发货或包裹不唯一，不能修改运单号",
                ),
            )
        held[0].update(out_sid=out_sid, company_code=company)
        self.writebacks.updated.append(WriteBack(str(tid), company, out_sid))
        shipping = {"is_success": True}
        return _answer(fmt, {"logistics_consign_resend_response": {"shipping": shipping}})

    def latest_stock(self, item: str) -> int | None:
        """The last level set for `item` (`num_iid` or `num_iid:sku_id`), if any."""
        return self.stock_levels.get(item)

    def _quantity_update(self, params: Mapping[str, str], fmt: str) -> web.Response:
        """Set (type 1) or shift (type 2) the stock of an item or one of its SKUs."""
        num_iid, quantity = params.get("num_iid", ""), params.get("quantity", "")
        kind = params.get("type", "1")
        sku = params.get("sku_id") or params.get("outer_id")  # sku_id wins when both
        if not num_iid.isdigit() or kind not in ("1", "2"):
            return _answer(fmt, _error(41, "Invalid arguments", "isv.invalid-parameter"))
        try:
            amount = int(quantity)
        except ValueError:
            return _answer(fmt, _error(41, "Invalid arguments", "isv.invalid-parameter"))
        item = f"{num_iid}:{sku}" if sku else num_iid
        level = amount if kind == "1" else self.stock_levels.get(item, 0) + amount
        if level < 0:
            return _answer(fmt, _error(41, "Invalid arguments", "isv.invalid-parameter"))
        if self.stock_refuse:
            return _answer(
                fmt,
                _error(15, "Remote service error", "isv.item-not-exist", "商品不存在或已删除"),
            )
        now = self.clock()
        self.stock_levels[item] = level
        self.stock_records.append(StockRecord("taobao", item, None, level, now))
        answer: dict[str, Any] = {"num_iid": int(num_iid), "num": level, "modified": top_time(now)}
        if params.get("sku_id"):
            sku_line = {"sku_id": int(params["sku_id"]), "quantity": level}
            answer["skus"] = {"sku": [{**sku_line, "modified": top_time(now)}]}
        return _answer(fmt, {"item_quantity_update_response": {"item": answer}})

    def signed_params(self, params: Mapping[str, str], method: str = "md5") -> dict[str, str]:
        """`params` with the sign a client would add (for tests of the gateway itself)."""
        out = {**params, "sign_method": method}
        out["sign"] = sign(out, self.app_secret, method)
        return out


_SHIPPABLE = ("WAIT_SELLER_SEND_GOODS", "SELLER_CONSIGNED_PART")


def _china(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=CHINA)


def _error(
    code: int, msg: str, sub_code: str | None = None, sub_msg: str | None = None
) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "msg": msg, "request_id": "sim"}
    if sub_code:
        err["sub_code"] = sub_code
    if sub_msg:
        err["sub_msg"] = sub_msg
    return {"error_response": err}


def _answer(fmt: str, data: dict[str, Any]) -> web.Response:
    if fmt == "json":
        # The stdlib writes big integers with every digit (no float on the way).
        return web.Response(
            text=json.dumps(data, ensure_ascii=False), content_type="application/json"
        )
    return web.Response(text=to_xml(data), content_type="text/xml", charset="utf-8")


def to_xml(data: Mapping[str, Any]) -> str:
    """TOP's XML form: lists as `<trades list="true"><trade>...</trade></trades>`."""
    ((root, body),) = data.items()
    return '<?xml version="1.0" encoding="utf-8" ?>' + _xml(root, body)


def _xml(tag: str, value: Any) -> str:
    if isinstance(value, Mapping):
        if len(value) == 1:
            ((child, inner),) = value.items()
            if isinstance(inner, list):
                items = "".join(_xml(child, v) for v in inner)
                return f'<{tag} list="true">{items}</{tag}>'
        return f"<{tag}>" + "".join(_xml(k, v) for k, v in value.items()) + f"</{tag}>"
    if isinstance(value, bool):
        return f"<{tag}>{str(value).lower()}</{tag}>"
    return f"<{tag}>{escape(str(value))}</{tag}>"


# TOP's refusal to consign a trade (or sub-orders) that was consigned before.
_ALREADY_CONSIGNED = _error(
    15,
    "Remote service error",
    "isv.logistics-offline-service-error:B150",
    "订单已发货，不能重复发货 (already consigned)",
)
