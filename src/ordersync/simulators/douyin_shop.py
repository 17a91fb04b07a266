"""A simulated Douyin shop (抖店) open API serving `order.searchList`, and a message pusher.

It checks every call's `sign` (md5 or hmac-sha256), the app key and the access token, serves
the orders updated in [update_time_start, update_time_end] (Unix seconds) page by page
(pages counted from 0, as the platform does), and can refuse calls as rate-limited. It also
pushes signed messages ({tag, msg_id, data}) to a URL, as the platform's message service.

Shipment write-back: `order.logisticsAdd` (the whole order; one shipped before is refused
as already shipped), `order.logisticsAddSinglePack` (a parcel of some sku orders, with a
`request_id` the platform dedupes), `order.logisticsEdit` (change a one-parcel order's
tracking number); `order.orderDetail` shows the parcels in `logistics_info`.

It also takes `sku.syncStock` (signed common parameters in the query, `param_json` with
`sku_id` or `code`, `stock_num`, `incremental` as the body) and records each level it sets
in `stock_records` (item: the `sku_id`, or the `code`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from ordersync.adapters.channels.douyin import (
    DETAIL_METHOD,
    OK,
    SEARCH_METHOD,
    event_sign,
    verify_call,
)
from ordersync.simulators.server import LoopbackServer
from ordersync.simulators.stock_recorder import StockRecord
from ordersync.simulators.writebacks import WriteBack, WritebackDesk

LOGISTICS_ADD_METHOD = "order.logisticsAdd"
LOGISTICS_PACK_METHOD = "order.logisticsAddSinglePack"
LOGISTICS_EDIT_METHOD = "order.logisticsEdit"
PARTLY_SHIPPED = 101  # the platform's 部分发货
SYNC_STOCK_METHOD = "sku.syncStock"

__all__ = ["DouyinShop", "make_order"]

FIRST_ORDER_ID = 6_920_000_000_000_000_001  # 19 digits, as real shop order ids


def make_order(
    order_id: int,
    updated: datetime,
    *,
    status: int = 2,
    skus: list[dict[str, Any]] | None = None,
    buyer: str | None = "dy_open_茶友",
) -> dict[str, Any]:
    """An order as the platform writes it: amounts in fen, times in Unix seconds."""
    skus = skus or [
        {
            "order_id": str(order_id + 1),
            "sku_id": 1_700_000_000_001,
            "product_id": "3600000000001",
            "product_name": "安吉白茶 100g",
            "code": "ANJI-100",
            "item_num": 3,
            "goods_price": 5990,
            "pay_amount": 16970,
        }
    ]
    total = sum(int(s["pay_amount"]) for s in skus)
    stamp = int(updated.timestamp())
    order: dict[str, Any] = {
        "order_id": str(order_id),
        "order_status": status,
        "order_amount": total,
        "pay_amount": total,
        "post_amount": 0,
        "promotion_amount": 0,
        "create_time": stamp,
        "update_time": stamp,
        "pay_time": 0 if status == 1 else stamp,
        "post_receiver": "张小花",
        "post_tel": "1380000****",
        "post_addr": {
            "province": {"name": "浙江省", "id": "33"},
            "city": {"name": "湖州市", "id": "3305"},
            "town": {"name": "安吉县", "id": "330523"},
            "street": {"name": "递铺街道", "id": "330523001"},
            "detail": "茶园路 8 号",
        },
        "sku_order_list": skus,
    }
    if buyer is not None:
        order["doudian_open_id"] = buyer
    return order


class DouyinShop(LoopbackServer):
    """The open API (`app`) plus a message pusher; orders are edited with `put`/`update`."""

    def __init__(
        self,
        *,
        app_key: str,
        app_secret: str,
        access_token: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.app_key = app_key
        self.app_secret = app_secret
        self.access_token = access_token
        self.clock = clock
        self.orders: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self.forged = 0
        self.throttle_next = 0
        self.writebacks = WritebackDesk()  # order.logisticsAdd calls accepted
        self.packs: dict[str, dict[str, Any]] = {}  # logisticsAddSinglePack request_id -> answer
        self.stock_records: list[StockRecord] = []  # sku.syncStock calls accepted
        self.stock_levels: dict[str, int] = {}  # sku_id (or code) -> its level now
        self.stock_refuse = False  # answer stock updates as for an unknown SKU
        self.base_url: str | None = None
        self._ids = itertools.count(FIRST_ORDER_ID, 11)
        self._msgs = itertools.count(1)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        assert self.base_url is not None
        return self.base_url

    def put(self, order: dict[str, Any]) -> dict[str, Any]:
        self.orders[str(order["order_id"])] = order
        return order

    def create(self, **kw: Any) -> dict[str, Any]:
        return self.put(make_order(next(self._ids), self.clock(), **kw))

    def update(self, order_id: str, *, updated: datetime | None = None, **changes: Any) -> None:
        stamp = int((updated or self.clock()).timestamp())
        self.put({**self.orders[order_id], **changes, "update_time": stamp})

    # ---- message push --------------------------------------------------------------------
    def message_body(self, tag: str, order: dict[str, Any], *, msg_id: str | None = None) -> bytes:
        """A one-message push about `order` (`msg_id`: resend an earlier message)."""
        data = {
            "p_id": int(order["order_id"]),
            "s_ids": [int(s["order_id"]) for s in order["sku_order_list"]],
            "shop_id": 77_000_001,
            "order_status": order["order_status"],
            "order_type": 0,
            "biz": 2,
            "update_time": order["update_time"],
        }
        msg = {
            "tag": tag,
            "msg_id": msg_id or f"dy-msg-{next(self._msgs)}",
            "data": json.dumps(data),
        }
        return json.dumps([msg], ensure_ascii=False).encode("utf-8")

    async def push(
        self,
        url: str,
        tag: str,
        order: dict[str, Any],
        *,
        sign_method: str = "md5",
        msg_id: str | None = None,
    ) -> int:
        """POST a signed message about `order`; the receiver's HTTP status. Tags as the
        platform's: 100 created, 101 paid, 102 shipped, 103 finished, 106 cancelled."""
        body = self.message_body(tag, order, msg_id=msg_id)
        headers = {
            "content-type": "application/json",
            "app-id": self.app_key,
            "event-sign": event_sign(self.app_key, self.app_secret, body, sign_method),
        }
        if sign_method != "md5":
            headers["sign-method"] = sign_method
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            await response.read()
            return response.status

    # ---- the open API --------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/" + SEARCH_METHOD.replace(".", "/"), self._search)
        app.router.add_route("*", "/" + DETAIL_METHOD.replace(".", "/"), self._detail)
        app.router.add_post("/" + LOGISTICS_ADD_METHOD.replace(".", "/"), self._logistics_add)
        app.router.add_post(
            "/" + LOGISTICS_PACK_METHOD.replace(".", "/"), self._logistics_add_single_pack
        )
        app.router.add_post("/" + LOGISTICS_EDIT_METHOD.replace(".", "/"), self._logistics_edit)
        app.router.add_post("/" + SYNC_STOCK_METHOD.replace(".", "/"), self._sync_stock)
        return app

    def latest_stock(self, item: str) -> int | None:
        """The last level set for a `sku_id` (or a SKU `code`), if any."""
        return self.stock_levels.get(item)

    async def _sync_stock(self, request: web.Request) -> web.Response:
        """Set (`incremental: false`) or shift the stock of one SKU, by `sku_id` or `code`:
        the signed common parameters in the query, `param_json` as the JSON body."""
        self.calls += 1
        params: dict[str, str] = dict(request.query)
        params["param_json"] = (await request.read()).decode("utf-8")
        if (refused := self._refuse(params, SYNC_STOCK_METHOD)) is not None:
            return refused
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return _error(50002, "调用频率超限 (rate limit)", "isp.rate-limited")
        try:
            business = json.loads(params["param_json"])
            amount = int(business["stock_num"])
            item = str(business["sku_id"]) if "sku_id" in business else str(business["code"])
            incremental = business.get("incremental", False)
        except (KeyError, ValueError, TypeError):
            return _error(40004, "参数错误", "isv.parameter-invalid")
        level = amount + self.stock_levels.get(item, 0) if incremental is True else amount
        if level < 0 or not item:
            return _error(40004, "参数错误", "isv.parameter-invalid")
        if self.stock_refuse:
            return _error(50001, "sku不存在", "isv.business-failed:sku-not-found")
        self.stock_levels[item] = level
        self.stock_records.append(StockRecord("douyin", item, None, level, self.clock()))
        return _json({"code": OK, "msg": "success", "data": {}, "log_id": "sim"})

    # ---- shipment write-back ----------------------------------------------------------
    def ship_elsewhere(self, order_id: str, tracking_no: str, company: str = "zhongtong") -> None:
        """The merchant ships the order in the Douyin backend, outside the hub."""
        order = self.orders[order_id]
        left = {str(s["order_id"]): int(s["item_num"]) for s in order["sku_order_list"]}
        self._add_parcel(order_id, company, tracking_no, left)

    def _shipped_nums(self, order: dict[str, Any]) -> dict[str, int]:
        done: dict[str, int] = {}
        for parcel in order.get("logistics_info", []):
            for p in parcel["product_info"]:
                done[p["sku_order_id"]] = done.get(p["sku_order_id"], 0) + p["product_count"]
        return done

    def _add_parcel(
        self, order_id: str, company: str, number: str, nums: dict[str, int]
    ) -> dict[str, Any]:
        order = self.orders[order_id]
        parcel = {
            "tracking_no": number,
            "company": company,
            "ship_time": int(self.clock().timestamp()),
            "pack_id": f"{order_id}-{len(order.get('logistics_info', [])) + 1}",
            "product_info": [
                {"sku_order_id": k, "product_count": v} for k, v in nums.items() if v > 0
            ],
        }
        parcels = [*order.get("logistics_info", []), parcel]
        done = self._shipped_nums({"logistics_info": parcels})
        everything = all(
            done.get(str(s["order_id"]), 0) >= int(s["item_num"]) for s in order["sku_order_list"]
        )
        self.update(
            order_id,
            logistics_info=parcels,
            order_status=3 if everything else PARTLY_SHIPPED,
            ship_time=parcel["ship_time"],
        )
        return parcel

    async def _signed(self, request: web.Request, method: str) -> dict[str, str] | web.Response:
        params: dict[str, str] = dict(request.query)
        params["param_json"] = (await request.read()).decode("utf-8")
        if (refused := self._refuse(params, method)) is not None:
            return refused
        if self.writebacks.should_fail():
            return web.Response(status=500, text="Internal Server Error")
        return params

    async def _waybill_call(
        self, request: web.Request, method: str
    ) -> tuple[str, str, str] | web.Response:
        """A signed call naming an order's waybill: its `order_id`, `company_code` and
        `logistics_code`, or the answer refusing it."""
        params = await self._signed(request, method)
        if isinstance(params, web.Response):
            return params
        try:
            business = json.loads(params["param_json"])
            order_id = str(business["order_id"])
            company, number = str(business["company_code"]), str(business["logistics_code"])
        except (KeyError, ValueError, TypeError):
            return _error(40004, "参数错误", "isv.parameter-invalid")
        return order_id, company, number

    async def _logistics_add(self, request: web.Request) -> web.Response:
        """Ship an order: the signed common parameters in the query, `param_json` (order_id,
        company_code, logistics_code) as the JSON body. An order shipped (or partly shipped)
        before is refused."""
        called = await self._waybill_call(request, LOGISTICS_ADD_METHOD)
        if isinstance(called, web.Response):
            return called
        order_id, company, number = called
        order = self.orders.get(order_id)
        if order is not None and not self.writebacks.refuse and order.get("logistics_info"):
            return _already_shipped()
        if order is None or self.writebacks.refuse or order["order_status"] != 2:
            return _error(50001, "订单状态不允许发货", "isv.business-failed:order-cannot-ship")
        left = {str(s["order_id"]): int(s["item_num"]) for s in order["sku_order_list"]}
        self._add_parcel(order_id, company, number, left)
        self.writebacks.received.append(WriteBack(order_id, company, number))
        if self.writebacks.answer_lost():
            return web.Response(status=500, text="Internal Server Error")
        return _json({"code": OK, "msg": "success", "data": {}, "log_id": "sim"})

    async def _logistics_add_single_pack(self, request: web.Request) -> web.Response:
        """Ship part of an order as one parcel: `order_id_list`, `shipped_order_info`
        ([{shipped_order_id, shipped_num}]), `company_code`, `logistics_code`, `request_id`
        (a repeated request_id answers the parcel it made, shipping nothing twice)."""
        params = await self._signed(request, LOGISTICS_PACK_METHOD)
        if isinstance(params, web.Response):
            return params
        try:
            business = json.loads(params["param_json"])
            [order_id] = [str(x) for x in business["order_id_list"]]
            nums: dict[str, int] = {}
            for item in business["shipped_order_info"]:
                key = str(item["shipped_order_id"])
                nums[key] = nums.get(key, 0) + int(item["shipped_num"])
            company, number = str(business["company_code"]), str(business["logistics_code"])
            request_id = str(business["request_id"])
        except (KeyError, ValueError, TypeError):
            return _error(40004, "参数错误", "isv.parameter-invalid")
        if request_id in self.packs:
            return _json({"code": OK, "msg": "success", "data": self.packs[request_id]})
        order = self.orders.get(order_id)
        if order is None or self.writebacks.refuse or order["order_status"] not in (2, 101):
            return _error(50001, "订单状态不允许发货", "isv.business-failed:order-cannot-ship")
        ordered = {str(s["order_id"]): int(s["item_num"]) for s in order["sku_order_list"]}
        done = self._shipped_nums(order)
        if any(k not in ordered or n <= 0 for k, n in nums.items()):
            return _error(40004, "参数错误: shipped_order_id", "isv.parameter-invalid")
        if any(done.get(k, 0) + n > ordered[k] for k, n in nums.items()):
            return _already_shipped()
        parcel = self._add_parcel(order_id, company, number, nums)
        self.writebacks.received.append(
            WriteBack(order_id, company, number, tuple(sorted(nums.items())))
        )
        data = {"pack_id": parcel["pack_id"]}
        self.packs[request_id] = data
        if self.writebacks.answer_lost():
            return web.Response(status=500, text="Internal Server Error")
        return _json({"code": OK, "msg": "success", "data": data, "log_id": "sim"})

    async def _logistics_edit(self, request: web.Request) -> web.Response:
        """Change a shipped order's carrier and tracking number (`order_id`, `company_code`,
        `logistics_code`). An order shipped in several parcels is refused: those are
        changed per parcel (`order.logisticsEditByPack`)."""
        called = await self._waybill_call(request, LOGISTICS_EDIT_METHOD)
        if isinstance(called, web.Response):
            return called
        order_id, company, number = called
        order = self.orders.get(order_id)
        parcels = [] if order is None else order.get("logistics_info", [])
        if order is None or not parcels or self.writebacks.refuse:
            return _error(50001, "订单未发货，不能修改物流", "isv.business-failed:not-shipped")
        if len(parcels) > 1:
            return _error(
                50001, "多包裹订单请按包裹修改", "isv.business-failed:use-logisticsEditByPack"
            )
        edited = {**parcels[0], "tracking_no": number, "company": company}
        self.update(order_id, logistics_info=[edited])
        self.writebacks.updated.append(WriteBack(order_id, company, number))
        return _json({"code": OK, "msg": "success", "data": {}, "log_id": "sim"})

    async def _detail(self, request: web.Request) -> web.Response:
        """order.orderDetail: one order by `shop_order_id`, as the search lists it."""
        self.calls += 1
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.post()).items()})
        if params.get("app_key") != self.app_key or params.get("method") != DETAIL_METHOD:
            return _error(30002, "method不匹配", "isv.method-invalid")
        if not verify_call(params, self.app_secret):
            self.forged += 1
            return _error(30004, "签名校验失败 (sign invalid)", "isv.sign-invalid")
        if params.get("access_token") != self.access_token:
            return _error(30005, "access_token已过期", "isv.access-token-expired")
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return _error(50002, "调用频率超限 (rate limit)", "isp.rate-limited")
        try:
            order_id = str(json.loads(params["param_json"])["shop_order_id"])
        except (KeyError, ValueError, TypeError):
            return _error(40004, "参数错误", "isv.parameter-invalid")
        order = self.orders.get(order_id)
        if order is None:
            return _error(50001, "订单不存在", "isv.business-failed:order-not-found")
        data = {"shop_order_detail": order}
        return _json({"code": OK, "msg": "success", "data": data, "log_id": "sim"})

    async def _search(self, request: web.Request) -> web.Response:
        self.calls += 1
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.post()).items()})
        if (refused := self._refuse(params, SEARCH_METHOD)) is not None:
            return refused
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return _error(50002, "调用频率超限 (rate limit)", "isp.rate-limited")
        try:
            business = json.loads(params["param_json"])
            start = int(business["update_time_start"])
            end = int(business["update_time_end"])
            page = int(business.get("page", 0))
            size = int(business.get("size", 10))
        except (KeyError, ValueError, TypeError):
            return _error(40004, "参数错误", "isv.parameter-invalid")
        if end < start or not (1 <= size <= 100) or page < 0:
            return _error(40004, "参数错误", "isv.parameter-invalid")
        chosen = sorted(
            (o for o in self.orders.values() if start <= int(o["update_time"]) <= end),
            key=lambda o: (o["update_time"], o["order_id"]),
        )
        part = chosen[page * size : (page + 1) * size]
        data = {"shop_order_list": part, "page": page, "size": size, "total": len(chosen)}
        return _json({"code": OK, "msg": "success", "data": data, "log_id": "sim"})

    def _refuse(self, params: dict[str, str], method: str) -> web.Response | None:
        """The platform's checks of a signed call, in its order: app, method, sign, token."""
        if params.get("app_key") != self.app_key:
            return _error(30001, "app_key不存在", "isv.app-key-invalid")
        if params.get("method") != method:
            return _error(30002, "method不匹配", "isv.method-invalid")
        if not verify_call(params, self.app_secret):
            self.forged += 1
            return _error(30004, "签名校验失败 (sign invalid)", "isv.sign-invalid")
        if params.get("access_token") != self.access_token:
            return _error(30005, "access_token已过期", "isv.access-token-expired")
        return None


def _error(code: int, msg: str, sub_code: str) -> web.Response:
    return _json({"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": msg, "data": {}})


def _json(data: dict[str, Any]) -> web.Response:
    return web.Response(text=json.dumps(data, ensure_ascii=False), content_type="application/json")


def _already_shipped() -> web.Response:
    """The refusal to ship an order (or sku orders) that shipped before."""
    return _error(50001, "订单已发货 (already shipped)", "isv.business-failed:order-shipped")
