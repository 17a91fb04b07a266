"""A simulated Shopify store: realistic order resources, sent as webhooks the way Shopify does.

The demo, the end-to-end tests and the benchmarks drive the hub with this instead of a real
shop, so it reproduces what makes the real thing hard: 64-bit ids beyond 2^53, zero-decimal
currencies, guest checkouts, lines without a SKU, non-ASCII text, non-UTC offsets, and
at-least-once delivery (retries with the same webhook id, duplicates, out-of-order snapshots).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import time
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import aiohttp
import orjson

API_VERSION = "2025-10"
SHOPIFY_TIMEOUT_SECONDS = 5.0
MAX_TRIES = 8
FIRST_BACKOFF_SECONDS = 0.05

# Decimal places per currency: JPY has none, and a hub that assumes cents gets it wrong.
CURRENCY_DECIMALS = {"USD": 2, "EUR": 2, "GBP": 2, "JPY": 0, "CNY": 2}
_FX = {
    "USD": Decimal("1"),
    "EUR": Decimal("0.92"),
    "GBP": Decimal("0.79"),
    "JPY": Decimal("151"),
    "CNY": Decimal("7.2"),
}
_TAX = {  # (tax line title, rate) applied to taxable lines
    "USD": ("NY State Tax", Decimal("0.08875")),
    "EUR": ("DE MwSt", Decimal("0.19")),
    "GBP": ("GB VAT", Decimal("0.2")),
    "JPY": ("JP CT", Decimal("0.1")),
    "CNY": ("CN VAT", Decimal("0.13")),
}
_SHIPPING_USD = [
    ("Standard", "STANDARD", Decimal("4.90")),
    ("Express", "EXPRESS", Decimal("14.50")),
]
_SHIPPING_USD += [("Free shipping", "FREE", Decimal("0"))]

# (title, variant title, sku, price in USD, grams); an empty sku is a real Shopify case.
_CATALOG: list[tuple[str, str | None, str, Decimal, int]] = [
    ("Blue Teapot", "1 L", "BLUE-TEAPOT", Decimal("34.90"), 900),
    ("青花瓷茶壶", None, "QHC-TEAPOT-01", Decimal("89.00"), 1200),
    ("Crème brûlée set", "4 ramekins", "CREME-BRULEE-4", Decimal("27.50"), 1600),
    ("Matcha whisk", None, "MATCHA-WHISK", Decimal("12.00"), 80),
    ("Hand-thrown mug", "Ash glaze", "", Decimal("22.00"), 400),
    ("Gift wrapping", None, "", Decimal("3.50"), 20),
    ("Sencha, 100 g", None, "SENCHA-100", Decimal("9.95"), 110),
    ("Fußmatte «Willkommen»", "Grau", "DOORMAT-GREY", Decimal("19.99"), 1400),
    ("Ceramic pour-over", "White", "POUROVER-WHT", Decimal("41.00"), 700),
    ("Kyūsu 急須 side-handle pot", None, "KYUSU-SIDE", Decimal("58.00"), 650),
]

# Buyers by currency, one "|"-separated row each: first name, last name, address1, city,
# province, province code, country, country code, zip, phone.
_PEOPLE_ROWS = {
    "USD": [
        "Zoë|Parker|350 5th Ave|New York|New York|NY|United States|US|10118|+12125550143",
        "Marcus|O'Neil|1100 Congress Ave|Austin|Texas|TX|United States|US|78701|+15125550199",
    ],
    "EUR": [
        "Jürgen|Müller|Unter den Linden 77|Berlin|Berlin|BE|Germany|DE|10117|+49305550123",
        "Amélie|Lefèvre|12 Rue de Rivoli|Paris|Île-de-France|IDF|France|FR|75004|+33155550177",
    ],
    "GBP": [
        "Siobhan|Smythe-Jones|221B Baker Street|London|England|ENG|United Kingdom|GB|NW1 6XE|"
        "+442075550111",
    ],
    "JPY": ["花子|佐藤|千代田1-1|千代田区|Tōkyō|JP-13|Japan|JP|100-0001|+81355550100"],
    "CNY": ["伟|王|南京东路 100 号|上海|Shanghai|SH|China|CN|200001|+8613800138000"],
}
_PEOPLE = {cur: [tuple(row.split("|")) for row in rows] for cur, rows in _PEOPLE_ROWS.items()}
# The shop's own time zone shows in created_at/updated_at; UTC is only one of them.
_OFFSETS = [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=1))]
_OFFSETS += [timezone(timedelta(hours=8)), timezone(timedelta(hours=9))]
_NOTES = [None, None, "Please leave at the back door.", "礼品包装，谢谢", "Gift — no invoice"]
_WELCOME10 = {
    "type": "discount_code",
    "code": "WELCOME10",
    "value": "10.0",
    "value_type": "percentage",
    "allocation_method": "across",
    "target_selection": "all",
    "target_type": "line_item",
}


@dataclass(frozen=True)
class _Money:
    """Amounts in one currency: rounded to its decimals, written the way Shopify writes them."""

    currency: str

    def round(self, amount: Decimal) -> Decimal:
        quantum = Decimal(1).scaleb(-CURRENCY_DECIMALS[self.currency])
        return amount.quantize(quantum, rounding=ROUND_HALF_UP)

    def text(self, amount: Decimal) -> str:
        return str(self.round(amount))

    def set(self, amount: Decimal) -> dict[str, Any]:
        """A MoneyBag: shop and presentment money (one currency in this simulated shop)."""
        money = {"amount": self.text(amount), "currency_code": self.currency}
        return {"shop_money": money, "presentment_money": dict(money)}

    def field(self, name: str, amount: Decimal) -> dict[str, Any]:
        """`name` as a decimal string plus its `name_set` twin, as Shopify pairs them."""
        return {name: self.text(amount), f"{name}_set": self.set(amount)}


def _rfc3339(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


class OrderFactory:
    """Builds Shopify Admin REST order resources whose totals add up to the last cent.

    Ids mix values above 2^53 (which lose digits as JS/float numbers) with ordinary ones; an
    id block drawn from the seed keeps two unseeded runs against one hub from colliding.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._block = self._rng.randrange(1 << 20) * 1_000_000
        self._orders = 0
        self._ids = 0

    def _next_id(self, base: int) -> int:
        self._ids += 1
        return base + (self._block + self._ids) * 7

    def new_order(self, order_id: int | None = None) -> dict[str, Any]:
        """A fresh order as an orders/create webhook carries it; `order_id` pins the id."""
        rng = self._rng
        self._orders += 1
        n = self._orders
        if order_id is None:
            big = rng.random() < 0.3
            order_id = (
                9_007_199_254_740_993 + (self._block + n) * 7
                if big
                else 5_000_000_000_000 + self._block + n
            )
        currency = rng.choice(list(CURRENCY_DECIMALS))
        money = _Money(currency)
        tax_title, tax_rate = _TAX[currency]
        discount_rate = Decimal("0.10") if rng.random() < 0.3 else Decimal(0)

        lines: list[dict[str, Any]] = []
        line_total = subtotal = tax = Decimal(0)
        for item in rng.sample(_CATALOG, rng.randint(1, 5)):
            price = money.round(item[3] * _FX[currency])
            qty = rng.choice([1, 1, 1, 2, 3])
            discount = money.round(price * qty * discount_rate)
            taxable = item[0] != "Gift wrapping"
            line_tax = money.round((price * qty - discount) * tax_rate) if taxable else Decimal(0)
            line_total += price * qty
            subtotal += price * qty - discount
            tax += line_tax
            line = self._line(item, qty, money, price, discount)
            line["taxable"] = taxable
            line["tax_lines"] = (
                [{"title": tax_title, "rate": float(tax_rate), **money.field("price", line_tax)}]
                if taxable
                else []
            )
            lines.append(line)
        ship_title, ship_code, ship_usd = rng.choice(_SHIPPING_USD)
        shipping = money.round(ship_usd * _FX[currency])
        discounts = line_total - subtotal
        total = subtotal + shipping + tax

        person = rng.choice(_PEOPLE[currency])
        guest = rng.random() < 0.1
        # O'Neil -> oneil, Müller -> muller, 王 -> buyer: mailbox names stay plain ASCII.
        folded = unicodedata.normalize("NFKD", person[1]).encode("ascii", "ignore").decode()
        local = "".join(ch for ch in folded.lower() if ch.isalnum()) or "buyer"
        email = f"{local}.{n}@example.com"
        address = self._address(person, company=rng.choice([None, None, "Teahouse GmbH"]))
        customer_id = 7_000_000_000_000 + self._block + n
        created = _rfc3339(datetime.now(rng.choice(_OFFSETS)).replace(microsecond=0))
        number = 1000 + n
        return {
            "id": order_id,
            "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
            "app_id": 580111,
            "browser_ip": f"203.0.113.{n % 250 + 1}",
            "buyer_accepts_marketing": rng.random() < 0.4,
            "cancel_reason": None,
            "cancelled_at": None,
            "closed_at": None,
            "confirmation_number": "".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ23456789", k=9)),
            "confirmed": True,
            "contact_email": email,
            "created_at": created,
            "processed_at": created,
            "updated_at": created,
            "currency": currency,
            "presentment_currency": currency,
            "customer_locale": {"JPY": "ja", "CNY": "zh-CN", "EUR": "de"}.get(currency, "en"),
            "email": email,
            "phone": None if guest else person[9],
            "estimated_taxes": False,
            "financial_status": rng.choice(["pending", "paid", "paid", "authorized"]),
            "fulfillment_status": None,
            "name": f"#{number}",
            "number": n,
            "order_number": number,
            "note": rng.choice(_NOTES),
            "note_attributes": [],
            "source_name": "web",
            "tags": "",
            "taxes_included": False,
            "test": False,
            "token": uuid.UUID(int=rng.getrandbits(128)).hex,
            "user_id": None,
            **money.field("total_line_items_price", line_total),
            **money.field("total_discounts", discounts),
            **money.field("subtotal_price", subtotal),
            "total_shipping_price_set": money.set(shipping),
            **money.field("total_tax", tax),
            **money.field("total_price", total),
            "current_subtotal_price": money.text(subtotal),
            "current_total_discounts": money.text(discounts),
            "current_total_price": money.text(total),
            "current_total_tax": money.text(tax),
            "total_weight": sum(li["grams"] * li["quantity"] for li in lines),
            "tax_lines": (
                [{"title": tax_title, "rate": float(tax_rate), **money.field("price", tax)}]
                if tax
                else []
            ),
            "discount_codes": (
                [{"code": "WELCOME10", "amount": money.text(discounts), "type": "percentage"}]
                if discounts
                else []
            ),
            "discount_applications": [_WELCOME10] if discounts else [],
            "payment_gateway_names": ["shopify_payments"],
            "line_items": lines,
            "shipping_lines": [
                {
                    "id": self._next_id(4_100_000_000_000),
                    "title": ship_title,
                    "code": ship_code,
                    "source": "shopify",
                    **money.field("price", shipping),
                    **money.field("discounted_price", shipping),
                    "carrier_identifier": None,
                    "tax_lines": [],
                    "discount_allocations": [],
                }
            ],
            "customer": None
            if guest
            else {
                "id": customer_id,
                "admin_graphql_api_id": f"gid://shopify/Customer/{customer_id}",
                "email": email,
                "first_name": person[0],
                "last_name": person[1],
                "phone": person[9],
                "currency": currency,
                "state": "enabled",
                "verified_email": True,
            },
            "shipping_address": address,
            "billing_address": dict(address),
            "fulfillments": [],
            "refunds": [],
        }

    def _line(
        self,
        item: tuple[str, str | None, str, Decimal, int],
        qty: int,
        money: _Money,
        price: Decimal,
        discount: Decimal,
    ) -> dict[str, Any]:
        title, variant, sku, _, grams = item
        line_id = self._next_id(13_000_000_000_000)
        product_id = 8_000_000_000_000 + sum(map(ord, title))
        allocation = {"discount_application_index": 0, **money.field("amount", discount)}
        return {
            "id": line_id,
            "admin_graphql_api_id": f"gid://shopify/LineItem/{line_id}",
            "product_id": product_id,
            "variant_id": product_id * 10 + (1 if variant else 0),
            "sku": sku,
            "title": title,
            "variant_title": variant,
            "name": f"{title} - {variant}" if variant else title,
            "vendor": "ordersync demo",
            "quantity": qty,
            "current_quantity": qty,
            "fulfillable_quantity": qty,
            "fulfillment_service": "manual",
            "fulfillment_status": None,
            "gift_card": False,
            "grams": grams,
            **money.field("price", price),
            "product_exists": True,
            "requires_shipping": True,
            # Like Shopify, a discount code lands in discount_allocations and leaves the legacy
            # total_discount at zero, so a hub reading only total_discount gets totals wrong.
            **money.field("total_discount", Decimal(0)),
            "discount_allocations": [allocation] if discount else [],
            "properties": [],
            "duties": [],
        }

    @staticmethod
    def _address(p: tuple[str, ...], company: str | None) -> dict[str, Any]:
        first, last, address1, city, province, code, country, cc, zip_, phone = p
        return {
            "first_name": first,
            "last_name": last,
            "name": f"{last}{first}" if cc in ("CN", "JP") else f"{first} {last}",
            "address1": address1,
            "address2": None if company is None else "Floor 3",
            "city": city,
            "province": province,
            "province_code": code,
            "country": country,
            "country_code": cc,
            "zip": zip_,
            "phone": phone,
            "company": company,
        }


def _touched(order: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Copy the order with updated_at moved on: now, but always at least 1 s past the last one.

    Hubs order snapshots by updated_at at second resolution, so equal stamps would be ambiguous.
    """
    # A JSON round trip is a deep copy at a quarter of copy.deepcopy's cost; orders are
    # JSON-only, and the simulator shares the CPU with the hub it benchmarks.
    new: dict[str, Any] = orjson.loads(orjson.dumps(order, default=_json_default))
    prev = datetime.fromisoformat(order["updated_at"])
    now = datetime.now(prev.tzinfo).replace(microsecond=0)
    stamp = _rfc3339(max(now, prev + timedelta(seconds=1)))
    new["updated_at"] = stamp
    return new, stamp


def pay(order: dict[str, Any]) -> dict[str, Any]:
    """The payment was captured (topic orders/paid)."""
    new, _ = _touched(order)
    new["financial_status"] = "paid"
    return new


def cancel(order: dict[str, Any], reason: str = "customer") -> dict[str, Any]:
    """The merchant cancelled (orders/cancelled): an uncaptured payment is voided, else refunded."""
    new, stamp = _touched(order)
    new["cancelled_at"] = stamp
    new["closed_at"] = stamp
    new["cancel_reason"] = reason
    was_captured = order["financial_status"] not in ("pending", "authorized")
    new["financial_status"] = "refunded" if was_captured else "voided"
    return new


def fulfill(order: dict[str, Any]) -> dict[str, Any]:
    """Everything shipped in one fulfillment (orders/fulfilled)."""
    new, stamp = _touched(order)
    new["fulfillment_status"] = "fulfilled"
    for line in new["line_items"]:
        line["fulfillable_quantity"] = 0
        line["fulfillment_status"] = "fulfilled"
    fulfillment_id = 5_500_000_000_000 + len(new["fulfillments"]) + int(new["id"]) % 10**9
    new["fulfillments"].append(
        {
            "id": fulfillment_id,
            "admin_graphql_api_id": f"gid://shopify/Fulfillment/{fulfillment_id}",
            "order_id": new["id"],
            "name": f"{new['name']}.{len(new['fulfillments']) + 1}",
            "status": "success",
            "service": "manual",
            "shipment_status": None,
            "created_at": stamp,
            "updated_at": stamp,
            "tracking_company": "UPS",
            "tracking_number": f"1Z999AA1{int(new['id']) % 10**10:010d}",
            "tracking_numbers": [f"1Z999AA1{int(new['id']) % 10**10:010d}"],
            "tracking_url": None,
            "tracking_urls": [],
            "line_items": [
                {"id": li["id"], "sku": li["sku"], "quantity": li["quantity"]}
                for li in new["line_items"]
            ],
        }
    )
    return new


def update_note(order: dict[str, Any], note: str | None) -> dict[str, Any]:
    """The merchant edited the note (orders/updated)."""
    new, _ = _touched(order)
    new["note"] = note
    return new


def sign(secret: str, body: bytes) -> str:
    """Shopify's X-Shopify-Hmac-Sha256: base64 of HMAC-SHA256 over the raw body bytes."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def encode(order: dict[str, Any]) -> bytes:
    """The webhook body: ids stay JSON integers (as Shopify sends them), amounts are strings."""
    return json.dumps(
        order, default=_json_default, ensure_ascii=False, separators=(",", ":")
    ).encode()


@dataclass
class AcceptedOrder:
    """What the hub acknowledged for one order: the end-to-end checks compare against it."""

    first_accepted_at: float
    last_state: dict[str, Any]
    topics: list[str] = field(default_factory=list)


@dataclass
class StoreReport:
    """What the store did.

    `sent` and `retries` count HTTP requests; `accepted` and `failed` count webhooks
    (duplicates and stale resends included), each ending in a 2xx or given up after 8 tries.
    """

    sent: int = 0
    accepted: int = 0
    failed: int = 0
    duplicates_sent: int = 0
    stale_sent: int = 0
    retries: int = 0
    accepted_orders: dict[str, AcceptedOrder] = field(default_factory=dict)
    accept_latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0


@dataclass(frozen=True)
class _Webhook:
    topic: str
    body: bytes
    webhook_id: str
    event_id: str
    triggered_at: str


class StoreSimulator:
    """Sends order webhooks to the hub with Shopify's headers, signature and retry rules.

    Use as `async with StoreSimulator(...) as store:` to share one connection pool between
    calls; `run()` and `send()` also work alone and then open and close their own.
    """

    def __init__(
        self,
        hub_url: str,
        secret: str,
        shop_domain: str = "ordersync-demo.myshopify.com",
        concurrency: int = 32,
        duplicate_rate: float = 0.0,
        reorder_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.hub_url = hub_url
        self.secret = secret
        self.shop_domain = shop_domain
        self.concurrency = concurrency
        self.duplicate_rate = duplicate_rate
        self.reorder_rate = reorder_rate
        self.seed = seed
        self.factory = OrderFactory(seed)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> StoreSimulator:
        self._session = self._new_session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency))

    def _webhook(self, topic: str, order: dict[str, Any], webhook_id: str | None) -> _Webhook:
        # Webhook and event ids always come from the OS, never the seed: a rerun with the same
        # seed must not look like a redelivery to a hub that remembers the first run.
        return _Webhook(
            topic=topic,
            body=encode(order),
            webhook_id=webhook_id or str(uuid.uuid4()),
            event_id=str(uuid.uuid4()),
            triggered_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        )

    async def send(self, topic: str, order: dict[str, Any], webhook_id: str | None = None) -> int:
        """Deliver one webhook with retries; return the final HTTP status (0: no response)."""
        hook = self._webhook(topic, order, webhook_id)
        if self._session is not None:
            return await self._deliver(self._session, hook, StoreReport())
        async with self._new_session() as session:
            return await self._deliver(session, hook, StoreReport())

    async def run(
        self,
        orders: int,
        *,
        lifecycle: bool = True,
        on_accepted: Callable[[], None] | None = None,
    ) -> StoreReport:
        """Create `orders` orders; each one's webhooks go in sequence, orders run concurrently."""
        report = StoreReport()
        started = time.monotonic()
        next_index = 0

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal next_index
            while next_index < orders:
                index = next_index
                next_index += 1
                await self._one_order(session, index, lifecycle, report, on_accepted)

        async def run_all(session: aiohttp.ClientSession) -> None:
            async with asyncio.TaskGroup() as tg:
                for _ in range(max(1, min(self.concurrency, orders))):
                    tg.create_task(worker(session))

        if self._session is not None:
            await run_all(self._session)
        else:
            async with self._new_session() as session:
                await run_all(session)
        report.elapsed = time.monotonic() - started
        return report

    def _lifecycle(
        self, rng: random.Random, order: dict[str, Any]
    ) -> list[tuple[str, dict[str, Any]]]:
        """One order's story: created, then maybe paid, a note edit, cancelled or fulfilled."""
        steps = [("orders/create", order)]
        if order["financial_status"] != "paid" and rng.random() < 0.7:
            steps.append(("orders/paid", pay(steps[-1][1])))
        if rng.random() < 0.3:
            note = rng.choice(["Ring twice, please.", "请工作日送货", "Leave with the concierge"])
            steps.append(("orders/updated", update_note(steps[-1][1], note)))
        if rng.random() < 0.1:
            steps.append(("orders/cancelled", cancel(steps[-1][1])))
        elif steps[-1][1]["financial_status"] == "paid" and rng.random() < 0.6:
            steps.append(("orders/fulfilled", fulfill(steps[-1][1])))
        return steps

    async def _one_order(
        self,
        session: aiohttp.ClientSession,
        index: int,
        lifecycle: bool,
        report: StoreReport,
        on_accepted: Callable[[], None] | None,
    ) -> None:
        # A per-order generator keeps a seeded run's choices independent of task interleaving.
        rng = random.Random(None if self.seed is None else f"{self.seed}:{index}")
        order = self.factory.new_order()
        steps = self._lifecycle(rng, order) if lifecycle else [("orders/create", order)]
        key = str(order["id"])
        previous: tuple[str, dict[str, Any]] | None = None
        for topic, snapshot in steps:
            hook = self._webhook(topic, snapshot, None)
            if not await self._accepted(session, hook, report, on_accepted):
                if topic == "orders/create":
                    return  # Shopify would keep trying; the simulator just drops the order.
                continue
            entry = report.accepted_orders.get(key)
            if entry is None:
                entry = AcceptedOrder(first_accepted_at=time.monotonic(), last_state=snapshot)
                report.accepted_orders[key] = entry
            entry.last_state = snapshot
            entry.topics.append(topic)
            if rng.random() < self.duplicate_rate:
                report.duplicates_sent += 1
                await self._accepted(session, hook, report, on_accepted)
            if previous is not None and rng.random() < self.reorder_rate:
                report.stale_sent += 1
                stale = self._webhook(previous[0], previous[1], None)
                await self._accepted(session, stale, report, on_accepted)
            previous = (topic, snapshot)

    async def _accepted(
        self,
        session: aiohttp.ClientSession,
        hook: _Webhook,
        report: StoreReport,
        on_accepted: Callable[[], None] | None,
    ) -> bool:
        ok = 200 <= await self._deliver(session, hook, report) < 300
        if ok:
            report.accepted += 1
            if on_accepted is not None:
                on_accepted()
        else:
            report.failed += 1
        return ok

    async def _deliver(
        self, session: aiohttp.ClientSession, hook: _Webhook, report: StoreReport
    ) -> int:
        """POST until a 2xx, retrying errors and slow answers with the same webhook id."""
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": hook.topic,
            "X-Shopify-Hmac-Sha256": sign(self.secret, hook.body),
            "X-Shopify-Shop-Domain": self.shop_domain,
            "X-Shopify-Webhook-Id": hook.webhook_id,
            "X-Shopify-Triggered-At": hook.triggered_at,
            "X-Shopify-API-Version": API_VERSION,
            "X-Shopify-Event-Id": hook.event_id,
        }
        timeout = aiohttp.ClientTimeout(total=SHOPIFY_TIMEOUT_SECONDS)
        status = 0
        for attempt in range(MAX_TRIES):
            if attempt:
                report.retries += 1
                await asyncio.sleep(FIRST_BACKOFF_SECONDS * 2 ** (attempt - 1))
            report.sent += 1
            started = time.monotonic()
            try:
                async with session.post(
                    self.hub_url, data=hook.body, headers=headers, timeout=timeout
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
                continue
            if 200 <= status < 300:
                report.accept_latencies.append(time.monotonic() - started)
                return status
        return status
