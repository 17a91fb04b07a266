"""A tiny fake of both stock-setting endpoints that records every level it is given.

* Shopify: `POST /admin/api/{version}/inventory_levels/set.json` with `location_id`,
  `inventory_item_id` and an integer `available`; needs `X-Shopify-Access-Token`.
* WooCommerce: `PUT /wp-json/wc/v3/products/{id}` with an integer `stock_quantity` and
  `manage_stock: true`; needs HTTP Basic.

Each accepted call is appended to `records` as (platform, item, location, quantity, at).
`fail_next(n)` answers the next n calls with 503 (to exercise retries). The formats are
read here independently of `adapters/channels/stock_push.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web


@dataclass(frozen=True, slots=True)
class StockRecord:
    platform: str  # "shopify" | "woocommerce"
    item: str  # inventory_item_id or product id
    location: str | None  # Shopify location_id; None for WooCommerce
    quantity: int
    at: datetime


@dataclass
class StockRecorder:
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    records: list[StockRecord] = field(default_factory=list)
    _failures_left: int = 0

    def fail_next(self, n: int) -> None:
        self._failures_left = n

    def latest(self, platform: str, item: str) -> int | None:
        for rec in reversed(self.records):
            if rec.platform == platform and rec.item == item:
                return rec.quantity
        return None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/admin/api/{version}/inventory_levels/set.json", self._shopify_set)
        app.router.add_put("/wp-json/wc/v3/products/{id}", self._woo_put)
        return app

    def _fault(self) -> web.Response | None:
        if self._failures_left > 0:
            self._failures_left -= 1
            return web.json_response({"errors": "injected failure"}, status=503)
        return None

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any] | None:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    @staticmethod
    def _is_count(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    async def _shopify_set(self, request: web.Request) -> web.Response:
        if not request.headers.get("X-Shopify-Access-Token"):
            return web.json_response({"errors": "[API] Invalid API key"}, status=401)
        if (fault := self._fault()) is not None:
            return fault
        body = await self._body(request)
        if body is None or not all(
            k in body for k in ("location_id", "inventory_item_id", "available")
        ):
            return web.json_response({"errors": "missing fields"}, status=422)
        if not self._is_count(body["available"]):
            return web.json_response({"errors": {"available": "invalid"}}, status=422)
        now = self.clock()
        self.records.append(
            StockRecord(
                "shopify",
                str(body["inventory_item_id"]),
                str(body["location_id"]),
                body["available"],
                now,
            )
        )
        level = {
            "inventory_item_id": body["inventory_item_id"],
            "location_id": body["location_id"],
            "available": body["available"],
            "updated_at": now.isoformat(),
        }
        return web.json_response({"inventory_level": level})

    async def _woo_put(self, request: web.Request) -> web.Response:
        if not request.headers.get("Authorization", "").startswith("Basic "):
            return web.json_response({"code": "woocommerce_rest_cannot_edit"}, status=401)
        if (fault := self._fault()) is not None:
            return fault
        body = await self._body(request)
        if body is None or body.get("manage_stock") is not True:
            return web.json_response({"code": "rest_invalid_param"}, status=400)
        if not self._is_count(body.get("stock_quantity")):
            return web.json_response({"code": "rest_invalid_param"}, status=400)
        product = request.match_info["id"]
        self.records.append(
            StockRecord("woocommerce", product, None, body["stock_quantity"], self.clock())
        )
        return web.json_response(
            {"id": int(product), "manage_stock": True, "stock_quantity": body["stock_quantity"]}
        )
