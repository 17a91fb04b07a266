"""Fraud burst holds through the real order flow (native API and Shopify webhooks), on
SQLite and PostgreSQL: too many orders to one door or from one phone within the window
stop for a person, the counts live in `buyer_fingerprints` as hashes only, and a person's
release holds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from ordersync.adapters.db.buyer_fingerprints import FingerprintDigest, count_query
from ordersync.bootstrap import Hub
from ordersync.config import settings_from_mapping
from ordersync.domain.holds import normalized_address
from ordersync.domain.orders import Address
from ordersync.simulators.shopify_store import OrderFactory, pay

from .conftest import SHOP_SECRET, ClientFactory, HubStarter, Query, ShopifyShop

SHOP_KEY = "sk_test_shop_fraud_9d3e"
FRAUD_KEY = "whisper-of-the-blue-teapot-7c1a"


@dataclass
class Shop:
    hub: Hub
    api: httpx.AsyncClient
    seq: int = 0

    async def order(
        self, address: dict[str, Any], phone: str | None = None, **changes: Any
    ) -> dict[str, Any]:
        """One teapot ordered through the API to `address`; the order as GET shows it."""
        self.seq += 1
        body: dict[str, Any] = {
            "channel_id": "web",
            "external_id": f"FRAUD-{self.seq}",
            "currency": "EUR",
            "totals": {"total": "34.50"},
            "lines": [{"sku": "BLUE-TEAPOT", "quantity": 1, "unit_price": "34.50"}],
            "shipping_address": {**address, "phone": phone},
            **changes,
        }
        r = await self.api.post("/v1/orders", json=body)
        assert r.status_code == 201, r.text
        got = await self.api.get(f"/v1/orders/{r.json()['id']}")
        assert got.status_code == 200, got.text
        return dict(got.json())

    async def causes(self, order_id: str) -> list[str]:
        r = await self.api.get(f"/v1/orders/{order_id}/history")
        assert r.status_code == 200, r.text
        return [h["cause"] for h in r.json()]


def berlin(line1: str = "Teestraße 12", **changes: Any) -> dict[str, Any]:
    base = {
        "name": "Mira Lindqvist",
        "line1": line1,
        "city": "Berlin",
        "postal_code": "10115",
        "country_code": "DE",
    }
    return {**base, **changes}


def china(line1: str) -> dict[str, Any]:
    return {
        "name": "王小明",
        "line1": line1,
        "city": "上海市",
        "postal_code": "200000",
        "country_code": "CN",
    }


@pytest.fixture
def open_shop(start_hub: HubStarter, database_url: str, client_for: ClientFactory) -> Any:
    """`await open_shop(holds={...})`: a hub without locations (holds need none)."""

    async def start(holds: dict[str, Any] | None) -> Shop:
        raw: dict[str, Any] = {
            "database_url": database_url,
            "channels": [{"id": "shop-eu", "kind": "shopify", "secret": SHOP_SECRET}],
            "api_keys": [
                {"id": "shop", "key": SHOP_KEY, "scopes": ["orders:read", "orders:write"]}
            ],
            "holds": holds,
        }
        hub = await start_hub(settings_from_mapping(raw, env={"FRAUD_KEY": FRAUD_KEY}))
        return Shop(hub, client_for(hub, SHOP_KEY))

    return start


def fraud(**limits: Any) -> dict[str, Any]:
    """Only the fraud rule, so nothing else holds the teapots."""
    return {"incomplete_address": False, "stock_shortage": False, "suspected_fraud": limits}


async def test_a_fourth_order_to_one_door_within_a_day_is_held_and_no_pii_is_stored(
    open_shop: Any, query: Query
) -> None:
    """Teestraße 12 typed four ways, four names, four phones: the fourth is held with the
    address limit named; the table holds hashes only, one per address and phone."""
    shop = await open_shop(fraud(max_orders_per_address=3))
    spellings = ["Teestraße 12", "TEESTRASSE 12.", "teestrasse  12", "Teestr-asse 12"]

    orders = [
        await shop.order(berlin(line, name=f"Buyer {i}"), phone=f"+49 30 555 010{i}")
        for i, line in enumerate(spellings)
    ]
    causes = await shop.causes(orders[3]["id"])
    rows = await query(shop.hub, "SELECT order_id, kind, digest, placed_us FROM buyer_fingerprints")

    assert [o["status"] for o in orders] == ["pending", "pending", "pending", "on_hold"]
    assert orders[3]["hold_reasons"] == ["suspected_fraud"]
    assert any(
        "suspected_fraud (4 orders to one address within 24 h (limit 3))" in c for c in causes
    )
    assert len(rows) == 8
    assert len({d for _, kind, d, _ in rows if kind == "address"}) == 1
    assert len({d for _, kind, d, _ in rows if kind == "phone"}) == 4
    stored = " ".join(str(v) for row in rows for v in row).lower()
    assert all(len(d) == 64 and int(d, 16) >= 0 for _, _, d, _ in rows)
    assert "teestr" not in stored
    assert "5550100" not in stored
    assert "10115" not in stored


async def test_a_chinese_mobile_written_three_ways_is_one_phone(open_shop: Any) -> None:
    """+86 138 0013 8000, 138-0013-8000 and 0086 13800138000 to three Shanghai doors, a
    limit of two per phone: the third order is held, naming the phone."""
    shop = await open_shop(fraud(max_orders_per_phone=2))

    first = await shop.order(china("南京东路 100 号"), phone="+86 138 0013 8000")
    second = await shop.order(china("淮海中路 200 号"), phone="138-0013-8000")
    third = await shop.order(china("福州路 300 号"), phone="0086 13800138000")
    other = await shop.order(china("福州路 300 号"), phone="139 0000 0000")
    causes = await shop.causes(third["id"])

    assert [o["status"] for o in (first, second, third)] == ["pending", "pending", "on_hold"]
    assert any("3 orders from one phone within 24 h (limit 2)" in c for c in causes)
    assert other["status"] == "pending"


async def test_orders_placed_before_the_window_do_not_count(open_shop: Any) -> None:
    """Three orders placed 100, 70 and 40 hours ago pass a limit of two per day, and so do
    two placed now; the third placed now is over."""
    shop = await open_shop(fraud(max_orders_per_address=2, window_hours=24))
    now = datetime.now(UTC)

    earlier = [
        await shop.order(berlin(), placed_at=(now - timedelta(hours=h)).isoformat())
        for h in (100, 70, 40)
    ]
    today = [await shop.order(berlin(), placed_at=now.isoformat()) for _ in range(3)]

    assert [o["status"] for o in earlier] == ["pending"] * 3
    assert [o["status"] for o in today] == ["pending", "pending", "on_hold"]


async def test_a_released_burst_hold_survives_the_channel_s_next_update(
    open_shop: Any, client_for: ClientFactory
) -> None:
    """Two Shopify orders to one door, a limit of one, the second billed abroad: held for
    both; the merchant releases it through the API; Shopify then reports it paid: paid,
    not held again (neither the burst nor the billing country is judged twice)."""
    shop = await open_shop(fraud(max_orders_per_address=1))
    shopify = ShopifyShop(client_for(shop.hub))
    factory = OrderFactory(seed=5150)
    first, second = factory.new_order(), factory.new_order()
    for placed in (first, second):
        placed["financial_status"] = "pending"
    second["shipping_address"] = {**first["shipping_address"], "country_code": "US"}
    second["billing_address"] = {**first["shipping_address"], "country_code": "GB"}
    first["shipping_address"]["country_code"] = "US"
    for placed in (first, second):
        assert (await shopify.send("orders/create", placed)).status_code == 200
    (found,) = (await shop.api.get("/v1/orders", params={"external_id": str(second["id"])})).json()[
        "data"
    ]

    held = (await shop.api.get(f"/v1/orders/{found['id']}")).json()
    released = await shop.api.post(f"/v1/orders/{found['id']}/release")
    assert (await shopify.send("orders/paid", pay(second))).status_code == 200
    after = (await shop.api.get(f"/v1/orders/{found['id']}")).json()
    again = await shop.api.post(f"/v1/orders/{found['id']}/release")

    causes = await shop.causes(found["id"])

    assert (held["status"], held["hold_reasons"]) == ("on_hold", ["suspected_fraud"])
    assert any(
        "2 orders to one address within 24 h (limit 1); billing country GB, shipping to US" in c
        for c in causes
    )
    assert released.status_code == 200, released.text
    assert released.json()["status"] == "pending"
    assert (after["status"], after["hold_reasons"]) == ("paid", [])
    assert again.status_code == 422
    assert again.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    "holds",
    [
        pytest.param({"buyer_note": True}, id="no-fraud-rule"),
        pytest.param(
            fraud(max_orders_per_address=None, max_orders_per_phone=None), id="mismatch-only"
        ),
    ],
)
async def test_without_a_burst_limit_nothing_is_recorded(
    open_shop: Any, query: Query, holds: dict[str, Any]
) -> None:
    """Five orders to one door: none held for fraud, and not one fingerprint row."""
    shop = await open_shop(holds)

    orders = [await shop.order(berlin(), phone="+49 30 5550100") for _ in range(5)]
    (count,) = await query(shop.hub, "SELECT COUNT(*) FROM buyer_fingerprints")

    assert {o["status"] for o in orders} == {"pending"}
    assert count == (0,)


async def test_with_a_fingerprint_key_the_digests_are_keyed_hashes(
    open_shop: Any, query: Query
) -> None:
    """`fingerprint_key: env:FRAUD_KEY`: the stored address digest is the HMAC under the
    key, not the plain SHA-256 a list of addresses could be matched against."""
    shop = await open_shop(
        {"suspected_fraud": {"fingerprint_key": "env:FRAUD_KEY"}, "stock_shortage": False}
    )
    await shop.order(berlin())
    normalized = normalized_address(Address(**berlin()))
    assert normalized is not None

    (row,) = await query(shop.hub, "SELECT digest FROM buyer_fingerprints WHERE kind = 'address'")

    assert row[0] == FingerprintDigest(FRAUD_KEY.encode())("address", normalized)
    assert row[0] != FingerprintDigest(None)("address", normalized)


async def test_the_burst_count_is_an_index_range_scan(open_shop: Any) -> None:
    """The planner answers the two-fingerprint count from ix_buyer_fingerprints_digest
    (PostgreSQL told to avoid sequential scans, which a small table would favour)."""
    shop = await open_shop(fraud())
    await shop.order(berlin(), phone="+49 30 5550100")
    params = {"o": "x", "since": 0, "until": 1, "k0": "address", "d0": "a", "k1": "phone"}
    params["d1"] = "p"

    async with shop.hub.db.read() as conn:
        if shop.hub.db.is_sqlite:
            plan = await conn.execute(text(f"EXPLAIN QUERY PLAN {count_query(2)}"), params)
        else:
            await conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = await conn.execute(text(f"EXPLAIN {count_query(2)}"), params)
        lines = " ".join(str(row[-1]) for row in plan)

    assert "ix_buyer_fingerprints_digest" in lines
