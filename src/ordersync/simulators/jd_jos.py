"""A simulated JD JOS gateway serving `jingdong.pop.order.search`.

It checks every call's `sign` (upper-case MD5 of secret + sorted name/value pairs + secret),
the app key and the access token, serves the orders modified in [start_date, end_date]
(China time, at most one month) page by page in JOS's JSON envelope, and can refuse calls
as over the rate limit. Order ids are 64-bit integers, written with every digit.

Shipment write-back: `jingdong.pop.order.shipment` (a whole order, once: an order shipped
before is refused as "订单已出库") and `jingdong.pop.order.get` (the order with its
recorded `waybill`).

It also takes `jingdong.stock.write.updateSkuStock` (`skuId`, `stockNum` in
`360buy_param_json`), signed like every call, and records each level it sets in
`stock_records` (item: the `skuId`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from ordersync.adapters.channels.jd import (
    CHINA,
    RESPONSE_KEY,
    SEARCH_METHOD,
    jos_time,
    sign,
    verify_sign,
)
from ordersync.simulators.server import LoopbackServer
from ordersync.simulators.stock_recorder import StockRecord
from ordersync.simulators.writebacks import WriteBack, WritebackDesk

SHIPMENT_METHOD = "jingdong.pop.order.shipment"
SHIPMENT_RESPONSE_KEY = "jingdong_pop_order_shipment_responce"
ORDER_GET_METHOD = "jingdong.pop.order.get"
ORDER_GET_RESPONSE_KEY = "jingdong_pop_order_get_responce"
SHIPPABLE = "WAIT_SELLER_STOCK_OUT"
STOCK_METHOD = "jingdong.stock.write.updateSkuStock"
STOCK_RESPONSE_KEY = "jingdong_stock_write_updateSkuStock_responce"

__all__ = ["JosGateway", "make_order", "sign"]

FIRST_ORDER_ID = 9_007_199_254_740_993  # 2^53 + 1: a float would round it
MAX_WINDOW = timedelta(days=31)


def make_order(
    order_id: int,
    modified: datetime,
    *,
    state: str = "WAIT_SELLER_STOCK_OUT",
    items: list[dict[str, Any]] | None = None,
    pin: str | None = "jd_茶友",
) -> dict[str, Any]:
    """An order as JOS writes it (amounts as strings of yuan, times in China time)."""
    items = items or [
        {
            "skuId": "100012043978",
            "outerSkuId": "PUER-357",
            "skuName": "云南普洱 357g",
            "jdPrice": "128.00",
            "itemTotal": "2",
            "wareId": "100009876543",
        }
    ]
    cents = sum(int(i["jdPrice"].replace(".", "")) * int(i["itemTotal"]) for i in items)
    amount = f"{cents // 100}.{cents % 100:02d}"
    stamp = jos_time(modified)
    order: dict[str, Any] = {
        "orderId": order_id,
        "venderId": "10086",
        "orderState": state,
        "orderTotalPrice": amount,
        "orderSellerPrice": amount,
        "orderPayment": amount,
        "freightPrice": "0.00",
        "sellerDiscount": "0.00",
        "orderStartTime": stamp,
        "modified": stamp,
        "consigneeInfo": {
            "fullname": "李四",
            "mobile": "139****0000",
            "fullAddress": "北京市朝阳区建国路 88 号",
            "province": "北京",
            "city": "北京市",
            "county": "朝阳区",
        },
        "itemInfoList": items,
    }
    if state not in ("TRADE_CANCELED",):
        order["paymentConfirmTime"] = stamp
    if pin is not None:
        order["pin"] = pin
    return order


class JosGateway(LoopbackServer):
    """The gateway: `app` serves /routerjson; orders are edited through `put`/`update`."""

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
        self.orders: dict[int, dict[str, Any]] = {}
        self.calls = 0
        self.forged = 0
        self.throttle_next = 0  # refuse this many calls as over the call limit
        self.writebacks = WritebackDesk()  # jingdong.pop.order.shipment calls accepted
        self.stock_records: list[StockRecord] = []  # updateSkuStock calls accepted
        self.stock_levels: dict[str, int] = {}  # skuId -> its level now
        self.stock_refuse = False  # answer stock updates as for an unknown SKU
        self.base_url: str | None = None
        self._ids = itertools.count(FIRST_ORDER_ID, 13)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        assert self.base_url is not None
        return self.base_url + "/routerjson"

    def put(self, order: dict[str, Any]) -> dict[str, Any]:
        self.orders[int(order["orderId"])] = order
        return order

    def create(self, **kw: Any) -> dict[str, Any]:
        return self.put(make_order(next(self._ids), self.clock(), **kw))

    def update(self, order_id: int, *, modified: datetime | None = None, **changes: Any) -> None:
        order = {**self.orders[order_id], **changes, "modified": jos_time(modified or self.clock())}
        self.put(order)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/routerjson", self._rest)
        return app

    async def _rest(self, request: web.Request) -> web.Response:
        self.calls += 1
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.post()).items()})
        if params.get("app_key") != self.app_key:
            return _answer(_error("19", "Invalid app_key", "无效的app_key"))
        if not verify_sign(params, self.app_secret):
            self.forged += 1
            return _answer(_error("20", "Invalid signature", "签名无效"))
        if params.get("access_token") != self.access_token:
            return _answer(_error("19", "Invalid access_token", "无效的access_token"))
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return _answer(_error("63", "call limit exceeded", "调用频率超限"))
        if params.get("method") == STOCK_METHOD:
            return self._update_sku_stock(params)
        if params.get("method") == SHIPMENT_METHOD:
            return self._shipment(params)
        if params.get("method") == ORDER_GET_METHOD:
            return self._order_get(params)
        if params.get("method") != SEARCH_METHOD:
            return _answer(_error("22", "Invalid method", "无效的方法"))
        try:
            business = json.loads(params["360buy_param_json"])
            start = _china(business["start_date"])
            end = _china(business["end_date"])
            page = int(business.get("page", "1"))
            size = int(business.get("page_size", "20"))
            states = set(str(business["order_state"]).split(","))
        except (KeyError, ValueError, TypeError):
            return _answer(_error("3", "Invalid arguments", "参数错误"))
        if end < start or end - start > MAX_WINDOW or not (1 <= size <= 100) or page < 1:
            return _answer(_error("3", "Invalid arguments", "参数错误"))
        chosen = sorted(
            (
                o
                for o in self.orders.values()
                if start <= _china(o["modified"]) <= end and o["orderState"] in states
            ),
            key=lambda o: (o["modified"], o["orderId"]),
        )
        part = chosen[(page - 1) * size : page * size]
        result = {
            "apiResult": {
                "success": True,
                "code": "0",
                "englishErrCode": "success",
                "chineseErrCode": "成功",
            },
            "orderInfoList": part,
            "orderTotal": len(chosen),
        }
        return _answer({RESPONSE_KEY: {"code": "0", "searchorderinfo_result": result}})

    def ship_elsewhere(self, order_id: int, waybill: str, company: str = "463") -> None:
        """The seller ships the order in the JD backend, outside the hub."""
        self.update(
            order_id, orderState="WAIT_GOODS_RECEIVE_CONFIRM", waybill=waybill, logisticsId=company
        )

    def _shipment(self, params: Mapping[str, str]) -> web.Response:
        """Ship an order: `orderId`, `logiCoprId` (JD's logistics company id), `logiNo`. An
        order shipped before is refused (JOS ships a whole order once)."""
        if self.writebacks.should_fail():
            return web.Response(status=500, text="Internal Server Error")
        try:
            business = json.loads(params["360buy_param_json"])
            order_id = int(business["orderId"])
            company, number = str(business["logiCoprId"]), str(business["logiNo"])
        except (KeyError, ValueError, TypeError):
            return _answer(_error("3", "Invalid arguments", "参数错误"))
        order = self.orders.get(order_id)
        if order is not None and not self.writebacks.refuse and order.get("waybill"):
            result = {
                "success": False,
                "code": "10400002",
                "englishErrCode": "order already shipped",
                "chineseErrCode": "订单已出库",
            }
        elif order is None or self.writebacks.refuse or order["orderState"] != SHIPPABLE:
            result = {
                "success": False,
                "code": "10400001",
                "englishErrCode": "order cannot be shipped",
                "chineseErrCode": "订单不存在或状态不允许出库",
            }
        else:
            self.writebacks.received.append(WriteBack(str(order_id), company, number))
            self.update(
                order_id,
                orderState="WAIT_GOODS_RECEIVE_CONFIRM",
                waybill=number,
                logisticsId=company,
            )
            if self.writebacks.answer_lost():
                return web.Response(status=500, text="Internal Server Error")
            result = {"success": True, "code": "0", "englishErrCode": "success"}
        return _answer({SHIPMENT_RESPONSE_KEY: {"code": "0", "sopjosshipment_result": result}})

    def _order_get(self, params: Mapping[str, str]) -> web.Response:
        """jingdong.pop.order.get: one order, with the `optional_fields` asked for."""
        try:
            business = json.loads(params["360buy_param_json"])
            order_id = int(business["order_id"])
            fields = [f for f in str(business.get("optional_fields", "")).split(",") if f]
        except (KeyError, ValueError, TypeError):
            return _answer(_error("3", "Invalid arguments", "参数错误"))
        order = self.orders.get(order_id)
        api_result = {"success": order is not None, "code": "0" if order else "10100001"}
        info = None
        if order is not None:
            info = {k: v for k, v in order.items() if not fields or k in fields}
        body = {"code": "0", "orderDetailInfo": {"orderInfo": info, "apiResult": api_result}}
        return _answer({ORDER_GET_RESPONSE_KEY: body})

    def latest_stock(self, sku_id: str) -> int | None:
        """The last level set for a JD `skuId`, if any."""
        return self.stock_levels.get(sku_id)

    def _update_sku_stock(self, params: Mapping[str, str]) -> web.Response:
        """Set the stock of one SKU: `skuId`, `stockNum` (absolute, 0 or more)."""
        try:
            business = json.loads(params["360buy_param_json"])
            sku_id, level = int(business["skuId"]), int(business["stockNum"])
        except (KeyError, ValueError, TypeError):
            return _answer(_error("3", "Invalid arguments", "参数错误"))
        if sku_id <= 0 or level < 0:
            return _answer(_error("3", "Invalid arguments", "参数错误"))
        if self.stock_refuse:
            refused = {"code": "0", "success": False, "message": "sku not found: 商品不存在"}
            return _answer({STOCK_RESPONSE_KEY: refused})
        self.stock_levels[str(sku_id)] = level
        self.stock_records.append(StockRecord("jd", str(sku_id), None, level, self.clock()))
        return _answer({STOCK_RESPONSE_KEY: {"code": "0", "success": True}})

    def signed_params(self, params: Mapping[str, str]) -> dict[str, str]:
        """`params` with the sign a client would add (for tests of the gateway itself)."""
        return {**params, "sign": sign(params, self.app_secret)}


def _china(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=CHINA)


def _error(code: str, en: str, zh: str) -> dict[str, Any]:
    return {"error_response": {"code": code, "en_desc": en, "zh_desc": zh}}


def _answer(data: dict[str, Any]) -> web.Response:
    return web.Response(text=json.dumps(data, ensure_ascii=False), content_type="application/json")
