"""A simulated Shopify Admin REST API: the orders list endpoint the pull engine reads.

It serves order resources (the same JSON `shopify_store.OrderFactory` builds for webhooks)
from a dict the way Shopify does: `X-Shopify-Access-Token` checked, `status`,
`updated_at_min`/`updated_at_max` (inclusive) and `order=updated_at asc`, cursor pagination
through the `Link` header (`page_info` tokens carry the filters; a request with one may add
only `limit` and `fields`), the `X-Shopify-Shop-Api-Call-Limit` header, and forced 429s with
`Retry-After`.

Shipment write-back: `GET orders/{id}/fulfillment_orders.json` (one fulfillment order per
order, its lines' `fulfillable_quantity`), `POST fulfillments.json` (all remaining lines or
a `fulfillment_order_line_items` subset, with `tracking_info`), `GET
orders/{id}/fulfillments.json` and `POST fulfillments/{id}/update_tracking.json`.
"""

from __future__ import annotations

import base64
import copy
import hmac
import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from ordersync.simulators.server import LoopbackServer
from ordersync.simulators.shopify_store import API_VERSION, OrderFactory, encode
from ordersync.simulators.writebacks import WriteBack, WritebackDesk

ORDERS_PATH = "/admin/api/{version}/orders.json"
FULFILLMENT_ORDERS_PATH = "/admin/api/{version}/orders/{{order_id}}/fulfillment_orders.json"
FULFILLMENTS_PATH = "/admin/api/{version}/fulfillments.json"
ORDER_FULFILLMENTS_PATH = "/admin/api/{version}/orders/{{order_id}}/fulfillments.json"
UPDATE_TRACKING_PATH = "/admin/api/{version}/fulfillments/{{fulfillment_id}}/update_tracking.json"
MAX_LIMIT = 250
_PAGE_INFO_ALLOWED = frozenset({"page_info", "limit", "fields"})


def _stamp(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def _when(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _key(order: dict[str, Any]) -> tuple[datetime, int]:
    return _when(order["updated_at"]), int(order["id"])


def _token(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def _untoken(value: str) -> dict[str, Any]:
    padded = value + "=" * (-len(value) % 4)
    data = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
    if not isinstance(data, dict):
        raise ValueError("not a page_info")
    return data


def _error(status: int, errors: bytes, headers: dict[str, str] | None = None) -> web.Response:
    body = b'{"errors":' + errors + b"}"
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


class ShopifyAdmin(LoopbackServer):
    """The shop's Admin REST API on loopback; `orders` is its data (id -> order resource)."""

    def __init__(
        self,
        *,
        access_token: str,
        api_version: str = API_VERSION,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        seed: int = 7,
        bucket_size: int = 40,
    ) -> None:
        self.access_token = access_token
        self.api_version = api_version
        self.clock = clock
        self.factory = OrderFactory(seed)
        self.orders: dict[int, dict[str, Any]] = {}
        self.requests: list[dict[str, str]] = []  # each request's query, as received
        self.bucket_size = bucket_size
        self.calls_used = 0  # reported in X-Shopify-Shop-Api-Call-Limit; +1 per call
        self.throttle_next = 0  # answer this many requests 429
        self.retry_after = "0"  # their Retry-After
        # Fulfillments created (POST fulfillments.json): one fulfillment order per order,
        # open, in progress once partly fulfilled, closed once every line is.
        self.writebacks = WritebackDesk()
        self.fulfilled: set[int] = set()  # orders with every line fulfilled
        self.fulfilled_qty: dict[int, dict[int, int]] = {}  # order -> line item -> quantity
        self.fulfillments: dict[int, list[dict[str, Any]]] = {}  # order -> its fulfillments
        self._fulfillment_ids = itertools.count(255_858_046)
        self.base_url: str | None = None
        self._runner: web.AppRunner | None = None

    # ---- the shop's data ------------------------------------------------------------
    def put(self, order: dict[str, Any]) -> dict[str, Any]:
        self.orders[int(order["id"])] = order
        return order

    def create(self, updated_at: datetime | None = None, **changes: Any) -> dict[str, Any]:
        """A new order (from the factory, with `changes`) created at `updated_at` (now)."""
        order = self.factory.new_order()
        order.update(changes)
        stamp = _stamp(updated_at or self.clock())
        order["created_at"] = order["updated_at"] = stamp
        return self.put(order)

    def update(
        self, order_id: int, *, updated_at: datetime | None = None, **changes: Any
    ) -> dict[str, Any]:
        """Change an order; updated_at becomes now (or `updated_at`, a late write)."""
        order = copy.deepcopy(self.orders[order_id])
        order.update(changes)
        order["updated_at"] = _stamp(updated_at or self.clock())
        return self.put(order)

    # ---- the REST API ---------------------------------------------------------------
    @property
    def orders_path(self) -> str:
        return ORDERS_PATH.format(version=self.api_version)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(self.orders_path, self._list_orders)
        v = self.api_version
        app.router.add_get(FULFILLMENT_ORDERS_PATH.format(version=v), self._fulfillment_orders)
        app.router.add_post(FULFILLMENTS_PATH.format(version=v), self._fulfill)
        app.router.add_get(ORDER_FULFILLMENTS_PATH.format(version=v), self._order_fulfillments)
        app.router.add_post(UPDATE_TRACKING_PATH.format(version=v), self._update_tracking)
        return app

    def _token_ok(self, request: web.Request) -> bool:
        given = request.headers.get("X-Shopify-Access-Token", "")
        return hmac.compare_digest(given.encode(), self.access_token.encode())

    @staticmethod
    def fulfillment_order_id(order_id: int) -> int:
        """The id of an order's (only) fulfillment order in this simulator."""
        return order_id * 10 + 1

    def _left(self, order_id: int) -> dict[int, int]:
        """Line item id -> quantity still to fulfil."""
        done = self.fulfilled_qty.get(order_id, {})
        return {
            int(li["id"]): int(li["quantity"]) - done.get(int(li["id"]), 0)
            for li in self.orders[order_id].get("line_items", [])
        }

    async def _fulfillment_orders(self, request: web.Request) -> web.Response:
        if not self._token_ok(request):
            return _error(401, b'"[API] Invalid API key or access token"')
        try:
            order_id = int(request.match_info["order_id"])
        except ValueError:
            return _error(404, b'"Not Found"')
        order = self.orders.get(order_id)
        if order is None:
            return _error(404, b'"Not Found"')
        left = self._left(order_id)
        if not any(left.values()):
            status = "closed"
        elif self.fulfilled_qty.get(order_id):
            status = "in_progress"
        else:
            status = "open"
        lines = [
            {
                "id": int(li["id"]) * 10 + 1,
                "line_item_id": li["id"],
                "quantity": li["quantity"],
                "fulfillable_quantity": left[int(li["id"])],
            }
            for li in order.get("line_items", [])
        ]
        fo = {
            "id": self.fulfillment_order_id(order_id),
            "order_id": order_id,
            "status": status,
            "line_items": lines,
        }
        return web.json_response({"fulfillment_orders": [fo]})

    async def _fulfill(self, request: web.Request) -> web.Response:
        """Create a fulfillment: `line_items_by_fulfillment_order` (all the fulfillment
        order's remaining lines, or the `fulfillment_order_line_items` given) and
        `tracking_info`. More than a line has left is refused, as Shopify does."""
        if not self._token_ok(request):
            return _error(401, b'"[API] Invalid API key or access token"')
        if self.writebacks.should_fail():
            return _error(500, b'"Internal Server Error"')
        try:
            body = orjson.loads(await request.read())["fulfillment"]
            [pair] = body["line_items_by_fulfillment_order"]
            fo_id = int(pair["fulfillment_order_id"])
            asked = {
                (int(i["id"]) - 1) // 10: int(i["quantity"])
                for i in pair.get("fulfillment_order_line_items") or []
            }
            tracking = body["tracking_info"]
            number, company = str(tracking["number"]), str(tracking.get("company") or "")
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
            return _error(400, b'{"fulfillment":"Required parameter missing or invalid"}')
        order_id = (fo_id - 1) // 10
        if order_id not in self.orders or self.fulfillment_order_id(order_id) != fo_id:
            return _error(404, b'"Not Found"')
        left = self._left(order_id)
        if self.writebacks.refuse or not any(left.values()):
            return _error(
                422, b'{"base":["Fulfillment order has an unfulfillable status= closed"]}'
            )
        chosen = asked or {k: v for k, v in left.items() if v > 0}
        if any(k not in left or not 0 < v <= left[k] for k, v in chosen.items()):
            return _error(
                422, b'{"base":["Invalid fulfillment order line item quantity requested."]}'
            )
        done = self.fulfilled_qty.setdefault(order_id, {})
        for k, v in chosen.items():
            done[k] = done.get(k, 0) + v
        if not any(self._left(order_id).values()):
            self.fulfilled.add(order_id)
        lines = tuple(sorted((str(k), v) for k, v in chosen.items())) if asked else ()
        self.writebacks.received.append(WriteBack(str(order_id), company, number, lines))
        self.update(
            order_id,
            fulfillment_status="fulfilled" if order_id in self.fulfilled else "partial",
        )
        fulfillment = {
            "id": next(self._fulfillment_ids),
            "order_id": order_id,
            "status": "success",
            "tracking_company": company,
            "tracking_number": number,
            "tracking_numbers": [number],
            "line_items": [{"id": k, "quantity": v} for k, v in chosen.items()],
        }
        self.fulfillments.setdefault(order_id, []).append(fulfillment)
        if self.writebacks.answer_lost():
            return _error(500, b'"Internal Server Error"')
        return web.json_response({"fulfillment": fulfillment}, status=201)

    async def _order_fulfillments(self, request: web.Request) -> web.Response:
        if not self._token_ok(request):
            return _error(401, b'"[API] Invalid API key or access token"')
        try:
            order_id = int(request.match_info["order_id"])
        except ValueError:
            return _error(404, b'"Not Found"')
        if order_id not in self.orders:
            return _error(404, b'"Not Found"')
        return web.json_response({"fulfillments": self.fulfillments.get(order_id, [])})

    async def _update_tracking(self, request: web.Request) -> web.Response:
        """Change a fulfillment's tracking: `tracking_info {number, company}`."""
        if not self._token_ok(request):
            return _error(401, b'"[API] Invalid API key or access token"')
        if self.writebacks.should_fail():
            return _error(500, b'"Internal Server Error"')
        found = next(
            (
                f
                for fs in self.fulfillments.values()
                for f in fs
                if str(f["id"]) == request.match_info["fulfillment_id"]
            ),
            None,
        )
        if found is None:
            return _error(404, b'"Not Found"')
        try:
            tracking = orjson.loads(await request.read())["fulfillment"]["tracking_info"]
            number, company = str(tracking["number"]), str(tracking.get("company") or "")
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
            return _error(400, b'{"tracking_info":"Required parameter missing or invalid"}')
        found.update(tracking_company=company, tracking_number=number, tracking_numbers=[number])
        self.writebacks.updated.append(WriteBack(str(found["order_id"]), company, number))
        return web.json_response({"fulfillment": found})

    async def _list_orders(self, request: web.Request) -> web.Response:
        q = request.query
        self.requests.append(dict(q))
        given = request.headers.get("X-Shopify-Access-Token", "")
        if not hmac.compare_digest(given.encode(), self.access_token.encode()):
            return _error(401, b'"[API] Invalid API key or access token"')
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return _error(
                429,
                b'"Exceeded 2 calls per second for api client."',
                {"Retry-After": self.retry_after},
            )
        self.calls_used = min(self.calls_used + 1, self.bucket_size)
        try:
            limit = int(q.get("limit", "50"))
            if not 1 <= limit <= MAX_LIMIT:
                raise ValueError("limit")
            if "page_info" in q:
                extra = set(q) - _PAGE_INFO_ALLOWED
                if extra:
                    raise ValueError(f"page_info cannot be combined with {sorted(extra)}")
                state = _untoken(q["page_info"])
            else:
                state = {
                    "min": q.get("updated_at_min"),
                    "max": q.get("updated_at_max"),
                    "status": q.get("status", "open"),
                }
                if q.get("order", "updated_at asc") != "updated_at asc":
                    raise ValueError("the simulator sorts by updated_at asc only")
        except (ValueError, KeyError):
            return _error(400, b'{"page_info":"Invalid value."}')
        chosen = sorted(self._matching(state), key=_key)
        if "after" in state:
            after = (_when(state["after"][0]), int(state["after"][1]))
            start = next((i for i, o in enumerate(chosen) if _key(o) > after), len(chosen))
        elif "before" in state:
            before = (_when(state["before"][0]), int(state["before"][1]))
            end = next((i for i, o in enumerate(chosen) if _key(o) >= before), len(chosen))
            start = max(0, end - limit)
        else:
            start = 0
        page = chosen[start : start + limit]
        headers = {
            "X-Shopify-Shop-Api-Call-Limit": f"{self.calls_used}/{self.bucket_size}",
            "X-Shopify-API-Version": self.api_version,
        }
        links = []
        filters = {k: state[k] for k in ("min", "max", "status")}
        base = (self.base_url or "http://127.0.0.1") + self.orders_path
        if page and start > 0:
            first = page[0]
            token = _token({**filters, "before": [first["updated_at"], first["id"]]})
            links.append(f'<{base}?limit={limit}&page_info={token}>; rel="previous"')
        if page and start + limit < len(chosen):
            last = page[-1]
            token = _token({**filters, "after": [last["updated_at"], last["id"]]})
            links.append(f'<{base}?limit={limit}&page_info={token}>; rel="next"')
        if links:
            headers["Link"] = ", ".join(links)
        body = b'{"orders":[' + b",".join(encode(o) for o in page) + b"]}"
        return web.Response(body=body, content_type="application/json", headers=headers)

    def _matching(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        low = _when(state["min"]) if state.get("min") else None
        high = _when(state["max"]) if state.get("max") else None
        status = state.get("status") or "open"
        found = []
        for order in self.orders.values():
            at = _when(order["updated_at"])
            if (low is not None and at < low) or (high is not None and at > high):
                continue
            if status == "open" and order.get("closed_at") is not None:
                continue
            found.append(order)
        return found
