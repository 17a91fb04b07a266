"""The simulators behave like the systems they stand in for: Shopify, and the ERP/WMS sinks."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from ordersync.simulators.shopify_store import (
    CURRENCY_DECIMALS,
    OrderFactory,
    StoreSimulator,
    cancel,
    encode,
    fulfill,
    pay,
    sign,
    update_note,
)
from ordersync.simulators.sinks import FaultPlan, Sink, new_secret

SHOP_SECRET = "shpss_blue_teapot_secret"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """A throwaway loopback server answering every POST with `handler`; yields its URL."""
    app = web.Application()
    app.router.add_post("/webhooks", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/webhooks"
    finally:
        await runner.cleanup()


class Recorder:
    """Records what a Shopify-webhook receiver got, answering with scripted statuses."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)

    def webhook_ids(self) -> list[str]:
        return [headers["X-Shopify-Webhook-Id"] for headers, _ in self.requests]


def amounts_add_up(order: dict[str, Any]) -> None:
    lines = order["line_items"]
    gross = sum(Decimal(li["price"]) * li["quantity"] for li in lines)
    discounts = sum(Decimal(a["amount"]) for li in lines for a in li["discount_allocations"])
    line_tax = sum(Decimal(t["price"]) for li in lines for t in li["tax_lines"])
    shipping = sum(Decimal(s["price"]) for s in order["shipping_lines"])

    assert Decimal(order["total_line_items_price"]) == gross
    assert Decimal(order["total_discounts"]) == discounts
    assert Decimal(order["subtotal_price"]) == gross - discounts
    assert Decimal(order["total_tax"]) == line_tax
    assert Decimal(order["total_shipping_price_set"]["shop_money"]["amount"]) == shipping
    assert Decimal(order["total_price"]) == (
        Decimal(order["subtotal_price"]) + shipping + Decimal(order["total_tax"])
    )


def money_strings(order: dict[str, Any]) -> list[str]:
    """Every amount in the order, wherever it sits."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if (
                    key in ("price", "amount", "total_discount")
                    or key.startswith(("total_", "subtotal_", "current_total"))
                ) and isinstance(value, str):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(order)
    return found


# --- the order factory ---------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_every_generated_order_adds_up_to_the_smallest_currency_unit(seed: int) -> None:
    """Total = subtotal + shipping + tax and subtotal = lines - discounts, exactly, in Decimal."""
    factory = OrderFactory(seed)

    for _ in range(10):
        amounts_add_up(factory.new_order())


def test_yen_orders_carry_no_decimal_places() -> None:
    """JPY is a zero-decimal currency, so no JPY amount is written with a fraction."""
    factory = OrderFactory(7)
    orders = [factory.new_order() for _ in range(200)]
    yen = [o for o in orders if o["currency"] == "JPY"]

    assert CURRENCY_DECIMALS["JPY"] == 0
    assert yen
    assert all("." not in amount for o in yen for amount in money_strings(o))
    assert all(
        "." in amount for o in orders if o["currency"] == "USD" for amount in money_strings(o)
    )


def test_the_factory_produces_the_awkward_cases_a_hub_must_handle() -> None:
    """Ids past 2^53, guests, lines without SKU and non-ASCII names all show up."""
    factory = OrderFactory(11)
    orders = [factory.new_order() for _ in range(300)]
    names = {li["name"] for o in orders for li in o["line_items"]}

    assert any(o["id"] > 2**53 for o in orders)
    assert any(o["customer"] is None for o in orders)
    assert any(li["sku"] == "" for o in orders for li in o["line_items"])
    assert "青花瓷茶壶" in names
    assert any(o["created_at"].endswith("-05:00") for o in orders)
    assert len({o["id"] for o in orders}) == len(orders)


def test_a_64_bit_order_id_survives_the_webhook_body_as_an_exact_integer() -> None:
    """The body keeps ids as JSON integers, so the digits past 2^53 are there to lose."""
    order = OrderFactory(1).new_order(order_id=9_007_199_254_740_993)

    decoded = json.loads(encode(order))

    assert decoded["id"] == 9_007_199_254_740_993
    assert b'"id":9007199254740993,' in encode(order)


def test_each_lifecycle_step_returns_a_new_snapshot_at_least_a_second_later() -> None:
    """updated_at strictly increases by >= 1 s, and the earlier snapshot is left untouched."""
    created = OrderFactory(3).new_order()
    created["financial_status"] = "authorized"
    paid = pay(created)
    noted = update_note(paid, "Ring twice, please.")
    shipped = fulfill(noted)
    stamps = [datetime.fromisoformat(o["updated_at"]) for o in (created, paid, noted, shipped)]

    assert all(
        later - earlier >= timedelta(seconds=1) for earlier, later in itertools.pairwise(stamps)
    )
    assert created["financial_status"] == "authorized"
    assert paid["financial_status"] == "paid"
    assert noted["note"] == "Ring twice, please."
    assert shipped["fulfillment_status"] == "fulfilled"
    assert shipped["fulfillments"][0]["status"] == "success"
    assert created["fulfillments"] == []


@pytest.mark.parametrize(
    ("financial_status", "after_cancel"),
    [("pending", "voided"), ("authorized", "voided"), ("paid", "refunded")],
)
def test_cancelling_voids_an_uncaptured_payment_and_refunds_a_captured_one(
    financial_status: str, after_cancel: str
) -> None:
    """A cancel sets cancelled_at and the reason; the money outcome depends on capture."""
    order = OrderFactory(5).new_order()
    order["financial_status"] = financial_status

    cancelled = cancel(order, reason="fraud")

    assert cancelled["financial_status"] == after_cancel
    assert cancelled["cancel_reason"] == "fraud"
    assert cancelled["cancelled_at"] == cancelled["updated_at"]


# --- the store sending webhooks --------------------------------------------------------------


async def test_the_store_signs_each_webhook_with_shopify_headers() -> None:
    """X-Shopify-Hmac-Sha256 is base64 HMAC-SHA256 of the exact body, next to Shopify's headers."""
    recorder = Recorder()
    order = OrderFactory(21).new_order()

    async with serve(recorder.handle) as url:
        status = await StoreSimulator(url, SHOP_SECRET).send("orders/create", order)

    headers, body = recorder.requests[0]
    assert status == 200
    assert headers["X-Shopify-Hmac-Sha256"] == sign(SHOP_SECRET, body)
    assert headers["X-Shopify-Topic"] == "orders/create"
    assert headers["X-Shopify-Shop-Domain"] == "ordersync-demo.myshopify.com"
    assert headers["X-Shopify-API-Version"] == "2025-10"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Shopify-Event-Id"]
    assert datetime.fromisoformat(headers["X-Shopify-Triggered-At"]).tzinfo is not None
    assert json.loads(body)["id"] == order["id"]


def test_the_shopify_signature_matches_a_known_value() -> None:
    """sign() is base64(HMAC-SHA256(secret, body)), not hex and not over a re-encoded body."""
    assert sign("hush", b'{"id":1}') == "VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY="


async def test_the_store_retries_a_server_error_with_the_same_webhook_id() -> None:
    """A 500 is retried after a short backoff, carrying the same X-Shopify-Webhook-Id."""
    recorder = Recorder(statuses=[500, 502])

    async with serve(recorder.handle) as url:
        status = await StoreSimulator(url, SHOP_SECRET).send(
            "orders/paid", OrderFactory(2).new_order(), webhook_id="wh-blue-teapot"
        )

    assert status == 200
    assert recorder.webhook_ids() == ["wh-blue-teapot"] * 3
    assert len({body for _, body in recorder.requests}) == 1


async def test_duplicate_rate_resends_an_accepted_webhook_with_the_same_id() -> None:
    """With duplicate_rate=1 every accepted webhook arrives twice under one webhook id."""
    recorder = Recorder()

    async with serve(recorder.handle) as url:
        store = StoreSimulator(url, SHOP_SECRET, duplicate_rate=1.0, seed=4)
        report = await store.run(5, lifecycle=False)

    assert report.duplicates_sent == 5
    assert sorted(Counter(recorder.webhook_ids()).values()) == [2] * 5
    assert len(report.accepted_orders) == 5


async def test_reorder_rate_sends_an_older_snapshot_after_a_newer_one() -> None:
    """A stale snapshot follows the newer one under a fresh id; last_state stays the newest."""
    recorder = Recorder()

    async with serve(recorder.handle) as url:
        store = StoreSimulator(url, SHOP_SECRET, reorder_rate=1.0, seed=8)
        report = await store.run(30)

    seen: dict[int, list[str]] = {}
    for _, body in recorder.requests:
        order = json.loads(body)
        seen.setdefault(order["id"], []).append(order["updated_at"])
    went_back = [
        stamps for stamps in seen.values() if any(b < a for a, b in itertools.pairwise(stamps))
    ]
    assert report.stale_sent > 0
    assert len(went_back) > 0
    assert len(set(recorder.webhook_ids())) == len(recorder.requests)
    for key, accepted in report.accepted_orders.items():
        assert accepted.last_state["updated_at"] == max(seen[int(key)])


async def test_a_run_reports_each_accepted_order_with_its_topics_in_order() -> None:
    """Every order starts with orders/create; each accepted webhook ticks on_accepted once."""
    recorder = Recorder()
    ticks: list[None] = []

    async with (
        serve(recorder.handle) as url,
        StoreSimulator(url, SHOP_SECRET, concurrency=4, seed=5) as store,
    ):
        report = await store.run(20, on_accepted=lambda: ticks.append(None))

    assert len(report.accepted_orders) == 20
    assert all(o.topics[0] == "orders/create" for o in report.accepted_orders.values())
    assert report.accepted == len(ticks) == len(recorder.requests) == report.sent
    assert report.failed == report.retries == 0
    assert len(report.accept_latencies) == report.accepted


# --- the downstream sinks ----------------------------------------------------------------------


def event(order_id: str = "ord_BLUE_TEAPOT", version: int = 1) -> bytes:
    body = {
        "type": "order.created",
        "timestamp": "2025-06-01T12:00:00Z",
        "data": {"id": order_id, "version": version, "status": "pending"},
    }
    return json.dumps(body).encode()


def signed_headers(
    secret: str, msg_id: str, body: bytes, at: datetime | None = None
) -> dict[str, str]:
    at = at or datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body.decode()),
    }


@asynccontextmanager
async def running(sink: Sink) -> AsyncIterator[str]:
    base = await sink.start()
    try:
        yield base
    finally:
        await sink.stop()


async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        return r.status


async def test_a_sink_rejects_a_forged_signature_and_records_nothing() -> None:
    """An event signed with another secret is a 401 and never reaches the ledger."""
    sink = Sink("erp", new_secret())
    body = event()

    async with running(sink):
        status = await post(sink.events_url, body, signed_headers(new_secret(), "msg_1", body))

    assert status == 401
    assert sink.ledger == []
    assert sink.rejected == 1


async def test_a_sink_rejects_an_event_signed_too_long_ago() -> None:
    """A correctly signed event outside the 5-minute tolerance is refused like a forgery."""
    secret = new_secret()
    sink = Sink("wms", secret)
    body = event()
    old = datetime.now(UTC) - timedelta(minutes=10)

    async with running(sink):
        status = await post(sink.events_url, body, signed_headers(secret, "msg_old", body, old))

    assert status == 401
    assert sink.ledger == []


async def test_a_sink_records_an_event_once_and_suppresses_its_duplicate() -> None:
    """The second delivery of a webhook-id is acknowledged but not applied again."""
    secret = new_secret()
    sink = Sink("erp", secret)
    body = event("ord_BLUE_TEAPOT", version=3)
    headers = signed_headers(secret, "msg_teapot", body)

    async with running(sink) as base:
        first = await post(sink.events_url, body, headers)
        again = await post(f"{base}/", body, headers)
        async with aiohttp.ClientSession() as http, http.get(f"{base}/ledger") as r:
            dump = await r.json()

    assert (first, again) == (200, 200)
    assert sink.duplicates_suppressed == 1
    assert [(e.webhook_id, e.type, e.order_id, e.version) for e in sink.ledger] == [
        ("msg_teapot", "order.created", "ord_BLUE_TEAPOT", 3)
    ]
    assert list(sink.applied_by_order()) == ["ord_BLUE_TEAPOT"]
    assert dump["applied"] == 1
    assert dump["ledger"][0]["webhook_id"] == "msg_teapot"


async def test_a_sink_with_fail_first_two_answers_503_twice_then_records_once() -> None:
    """fail_first counts per webhook id, and the failed attempts leave no trace in the ledger."""
    secret = new_secret()
    sink = Sink("payment", secret, FaultPlan(fail_first=2))
    body = event()
    headers = signed_headers(secret, "msg_retry", body)

    async with running(sink):
        statuses = [await post(sink.events_url, body, headers) for _ in range(4)]

    assert statuses == [503, 503, 200, 200]
    assert len(sink.ledger) == 1
    assert sink.ledger[0].attempt == 3
    assert sink.failures_injected == 2
    assert sink.duplicates_suppressed == 1
    assert sink.attempts == 4


async def test_a_sink_that_always_errors_never_records() -> None:
    """error_rate=1 turns every attempt into a 500 before anything is applied."""
    secret = new_secret()
    sink = Sink("wms", secret, FaultPlan(error_rate=1.0, seed=1))
    body = event()

    async with running(sink):
        status = await post(sink.events_url, body, signed_headers(secret, "msg_500", body))

    assert status == 500
    assert sink.ledger == []


async def test_a_hanging_attempt_the_sender_abandoned_is_not_recorded() -> None:
    """A sender that times out during a hang never sees an ack, so nothing is applied."""
    secret = new_secret()
    sink = Sink("erp", secret, FaultPlan(timeout_rate=1.0, hang_seconds=0.4, seed=1))
    body = event()
    headers = signed_headers(secret, "msg_hang", body)

    async with running(sink):
        with pytest.raises(TimeoutError):
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.1)) as http,
                http.post(sink.events_url, data=body, headers=headers),
            ):
                pass
        status = await post(sink.events_url, body, headers)  # hangs 0.4 s, then applies

    assert status == 200
    assert [e.attempt for e in sink.ledger] == [2]
    assert sink.failures_injected == 1
