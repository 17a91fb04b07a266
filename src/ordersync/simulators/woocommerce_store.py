"""A simulated WooCommerce store: the REST v3 orders list the hub pulls, and signed webhooks
it pushes, in WooCommerce's wire format (see adapters/channels/woocommerce.py for the facts).

Orders live in memory and carry `date_modified_gmt`; a test moves the store's clock, edits
orders (which bumps their modified time, as WooCommerce does) or writes one *late* (with a
modified time in the past, as a slow transaction or a replica would show it).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import itertools
import math
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from ordersync.simulators.server import LoopbackServer
from ordersync.simulators.writebacks import WriteBack, WritebackDesk

ORDERS_PATH = "/wp-json/wc/v3/orders"
# The hub's shipment note (adapters/channels/writeback.py::woo_note_text).
# A partial parcel's note goes on with its lines, a re-booking's with the number replaced.
_SHIPPED_NOTE = re.compile(
    r"^Shipped via (?P<company>.+?), tracking number (?P<number>[^\s:]+)"
    r"(?::[^(]*)?(?: \(replaces tracking number (?P<old>[^)]+)\))?$"
)


def sign(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def wc_time(t: datetime) -> str:
    return t.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat()


def encode(value: Any) -> bytes:
    return orjson.dumps(value, default=_default)


def _default(value: object) -> Any:
    if isinstance(value, Decimal):
        return float(value)  # WooCommerce writes line prices as JSON numbers
    raise TypeError(type(value).__name__)


def make_order(
    order_id: int,
    modified: datetime,
    *,
    status: str = "processing",
    lines: list[tuple[str, str, int, str]] | None = None,
    guest: bool = False,
) -> dict[str, Any]:
    """A REST v3 order: (sku, name, quantity, unit price) lines, EUR, shipped to Vienna."""
    lines = lines or [("MATCHA-WHISK", "Matcha whisk", 2, "12.00")]
    items = []
    subtotal = Decimal(0)
    for i, (sku, name, qty, price) in enumerate(lines):
        line_total = Decimal(price) * qty
        subtotal += line_total
        items.append(
            {
                "id": order_id * 100 + i,
                "name": name,
                "product_id": 700 + i,
                "variation_id": 0,
                "quantity": qty,
                "tax_class": "",
                "subtotal": f"{line_total:.2f}",
                "subtotal_tax": "0.00",
                "total": f"{line_total:.2f}",
                "total_tax": "0.00",
                "sku": sku,
                "price": Decimal(price),
            }
        )
    stamp = wc_time(modified)
    billing = {
        "first_name": "Lena",
        "last_name": "Größ",
        "company": "",
        "address_1": "Mariahilfer Straße 1",
        "address_2": "",
        "city": "Wien",
        "state": "",
        "postcode": "1060",
        "country": "AT",
        "email": "" if guest else "lena.gross@example.com",
        "phone": "",
    }
    shipping = {k: v for k, v in billing.items() if k not in ("email",)}
    paid = status in ("processing", "completed", "refunded")
    return {
        "id": order_id,
        "parent_id": 0,
        "number": str(order_id),
        "order_key": f"wc_order_{uuid.uuid4().hex[:13]}",
        "created_via": "checkout",
        "status": status,
        "currency": "EUR",
        "date_created": stamp,
        "date_created_gmt": stamp,
        "date_modified": stamp,
        "date_modified_gmt": stamp,
        "discount_total": "0.00",
        "shipping_total": "4.90",
        "total": f"{subtotal + Decimal('4.90'):.2f}",
        "total_tax": "0.00",
        "prices_include_tax": True,
        "customer_id": 0 if guest else 42,
        "customer_note": "",
        "billing": billing,
        "shipping": shipping,
        "payment_method": "stripe",
        "date_paid": stamp if paid else None,
        "date_paid_gmt": stamp if paid else None,
        "line_items": items,
        "refunds": [],
    }


class WooStore(LoopbackServer):
    """The store: `app` serves the REST API; `send` pushes a signed webhook."""

    def __init__(
        self,
        *,
        consumer_key: str,
        consumer_secret: str,
        webhook_secret: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.webhook_secret = webhook_secret
        self.clock = clock
        self.orders: dict[int, dict[str, Any]] = {}
        self.requests = 0
        self.throttle_next = 0  # answer this many requests 429 (Retry-After: 0)
        # Order notes (REST v3 /orders/{id}/notes); a shipment note is also recorded as a
        # write-back. `fail_next` and `refuse` apply to the status update that follows it.
        self.notes: dict[int, list[dict[str, Any]]] = {}
        self.writebacks = WritebackDesk()
        self.base_url: str | None = None
        self._ids = itertools.count(1001)
        self._runner: web.AppRunner | None = None

    # ---- the store's data -----------------------------------------------------------
    def put(self, order: dict[str, Any]) -> dict[str, Any]:
        self.orders[int(order["id"])] = order
        return order

    def create(self, **kw: Any) -> dict[str, Any]:
        return self.put(make_order(next(self._ids), self.clock(), **kw))

    def update(
        self, order_id: int, *, modified: datetime | None = None, **changes: Any
    ) -> dict[str, Any]:
        """Change an order; its modified time becomes now (or `modified`, a late write)."""
        order = copy.deepcopy(self.orders[order_id])
        order.update(changes)
        stamp = wc_time(modified or self.clock())
        order["date_modified"] = order["date_modified_gmt"] = stamp
        return self.put(order)

    # ---- the REST API ---------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(ORDERS_PATH, self._list_orders)
        app.router.add_get(ORDERS_PATH + "/{order_id}/notes", self._list_notes)
        app.router.add_post(ORDERS_PATH + "/{order_id}/notes", self._add_note)
        app.router.add_put(ORDERS_PATH + "/{order_id}", self._update_order)
        return app

    def _order_of(self, request: web.Request) -> int | None:
        try:
            order_id = int(request.match_info["order_id"])
        except ValueError:
            return None
        return order_id if order_id in self.orders else None

    async def _list_notes(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot view this.")
        order_id = self._order_of(request)
        if order_id is None:
            return _error(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
        return web.Response(
            body=encode(self.notes.get(order_id, [])), content_type="application/json"
        )

    async def _add_note(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "woocommerce_rest_cannot_create", "Sorry, you cannot create.")
        order_id = self._order_of(request)
        if order_id is None:
            return _error(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
        try:
            body = orjson.loads(await request.read())
            text = str(body["note"])
        except (KeyError, TypeError, orjson.JSONDecodeError):
            return _error(400, "rest_missing_callback_param", "Missing parameter(s): note")
        notes = self.notes.setdefault(order_id, [])
        note = {
            "id": order_id * 1000 + len(notes) + 1,
            "author": "ordersync",
            "date_created_gmt": wc_time(self.clock()),
            "note": text,
            "customer_note": bool(body.get("customer_note", False)),
        }
        notes.append(note)
        if m := _SHIPPED_NOTE.match(text):
            record = WriteBack(str(order_id), m.group("company"), m.group("number"))
            self.writebacks.received.append(record)
            if m.group("old"):
                self.writebacks.updated.append(record)
        return web.Response(status=201, body=encode(note), content_type="application/json")

    async def _update_order(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "woocommerce_rest_cannot_edit", "Sorry, you cannot edit.")
        if self.writebacks.should_fail():
            return web.Response(status=500, text="Internal Server Error")
        order_id = self._order_of(request)
        if order_id is None:
            return _error(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise TypeError("not an object")
        except (TypeError, orjson.JSONDecodeError):
            return _error(400, "rest_invalid_json", "The JSON body passed is not valid.")
        if self.writebacks.refuse:
            return _error(400, "woocommerce_rest_invalid_order_status", "Invalid order status.")
        allowed = {k: v for k, v in changes.items() if k in ("status", "customer_note")}
        return web.Response(
            body=encode(self.update(order_id, **allowed)), content_type="application/json"
        )

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return False
        else:  # over HTTPS WooCommerce also takes the keys as query parameters
            user = request.query.get("consumer_key", "")
            password = request.query.get("consumer_secret", "")
        return hmac.compare_digest(user, self.consumer_key) and hmac.compare_digest(
            password, self.consumer_secret
        )

    async def _list_orders(self, request: web.Request) -> web.Response:
        self.requests += 1
        if not self._authorized(request):
            return _error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return web.Response(status=429, headers={"Retry-After": "0"}, text="Too Many Requests")
        q = request.query
        try:
            page = int(q.get("page", "1"))
            per_page = int(q.get("per_page", "10"))
            after = _gmt(q.get("modified_after"))
            before = _gmt(q.get("modified_before"))
        except ValueError:
            return _error(400, "rest_invalid_param", "Invalid parameter(s).")
        if not (1 <= per_page <= 100) or page < 1:
            return _error(400, "rest_invalid_param", "Invalid parameter(s): per_page, page")
        chosen = [
            o
            for o in self.orders.values()
            if (after is None or _modified(o) > after) and (before is None or _modified(o) < before)
        ]
        chosen.sort(key=lambda o: (o["date_modified_gmt"], o["id"]))
        if q.get("order") == "desc":
            chosen.reverse()
        pages = math.ceil(len(chosen) / per_page)
        body = encode(chosen[(page - 1) * per_page : page * per_page])
        headers = {"X-WP-Total": str(len(chosen)), "X-WP-TotalPages": str(pages)}
        return web.Response(body=body, content_type="application/json", headers=headers)

    # ---- webhooks -------------------------------------------------------------------
    def webhook(
        self, topic: str, order: dict[str, Any], *, secret: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers WooCommerce would POST for `topic` (e.g. order.updated)."""
        body = encode(order)
        resource, _, event = topic.partition(".")
        headers = {
            "Content-Type": "application/json",
            "X-WC-Webhook-Source": (self.base_url or "http://127.0.0.1") + "/",
            "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": resource,
            "X-WC-Webhook-Event": event,
            "X-WC-Webhook-Signature": sign(secret or self.webhook_secret, body),
            "X-WC-Webhook-ID": "7",
            "X-WC-Webhook-Delivery-ID": uuid.uuid4().hex,
        }
        return body, headers

    async def send(self, url: str, topic: str, order: dict[str, Any]) -> int:
        body, headers = self.webhook(topic, order)
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            await response.read()
            return response.status

    async def ping(self, url: str, webhook_id: int = 7) -> int:
        """The unsigned activation ping WooCommerce sends when a webhook is saved."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url,
                data=f"webhook_id={webhook_id}".encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ) as response,
        ):
            await response.read()
            return response.status


def _gmt(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.utcoffset() is None else parsed.astimezone(UTC)


def _modified(order: dict[str, Any]) -> datetime:
    found = _gmt(order["date_modified_gmt"])
    assert found is not None
    return found


def _error(status: int, code: str, message: str) -> web.Response:
    body = orjson.dumps({"code": code, "message": message, "data": {"status": status}})
    return web.Response(status=status, body=body, content_type="application/json")
