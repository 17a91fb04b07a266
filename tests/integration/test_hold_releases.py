"""A person's release of an `amount_above_threshold` or `buyer_note` hold through the real
order flow (Shopify webhooks, the API), on SQLite and PostgreSQL: the channel's next update
with the same amount or note leaves the order released; another amount still above the
threshold, or another note, holds it again. The order's document remembers the release
(who, when) and its history shows it."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest

from ordersync.bootstrap import Hub
from ordersync.config import settings_from_mapping
from ordersync.simulators.shopify_store import CURRENCY_DECIMALS, OrderFactory, pay, update_note

from .conftest import SHOP_SECRET, ClientFactory, HubStarter, ShopifyShop

SHOP_KEY = "sk_test_shop_releases_4b7d"


@dataclass
class Shop:
    hub: Hub
    api: httpx.AsyncClient
    shopify: ShopifyShop

    async def send(self, topic: str, order: dict[str, Any]) -> None:
        r = await self.shopify.send(topic, order)
        assert r.status_code == 200, r.text

    async def find(self, placed: dict[str, Any]) -> dict[str, Any]:
        """The hub's order for a Shopify order, as GET shows it."""
        r = await self.api.get("/v1/orders", params={"external_id": str(placed["id"])})
        assert r.status_code == 200, r.text
        (found,) = r.json()["data"]
        got = await self.api.get(f"/v1/orders/{found['id']}")
        assert got.status_code == 200, got.text
        return dict(got.json())

    async def release(self, order_id: str) -> dict[str, Any]:
        r = await self.api.post(f"/v1/orders/{order_id}/release")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def history(self, order_id: str) -> list[dict[str, Any]]:
        r = await self.api.get(f"/v1/orders/{order_id}/history")
        assert r.status_code == 200, r.text
        return list(r.json())


@pytest.fixture
def open_shop(start_hub: HubStarter, database_url: str, client_for: ClientFactory) -> Any:
    """`await open_shop(holds={...})`: a hub without locations (holds need none)."""

    async def start(holds: dict[str, Any]) -> Shop:
        raw: dict[str, Any] = {
            "database_url": database_url,
            "channels": [{"id": "shop-eu", "kind": "shopify", "secret": SHOP_SECRET}],
            "api_keys": [
                {"id": "shop", "key": SHOP_KEY, "scopes": ["orders:read", "orders:write"]}
            ],
            "holds": {"incomplete_address": False, "stock_shortage": False, **holds},
        }
        hub = await start_hub(settings_from_mapping(raw, env={}))
        return Shop(hub, client_for(hub, SHOP_KEY), ShopifyShop(client_for(hub)))

    return start


def placed_order(seed: int, note: str | None) -> dict[str, Any]:
    placed: dict[str, Any] = OrderFactory(seed=seed).new_order()
    placed["financial_status"] = "pending"
    placed["note"] = note
    return placed


def with_total(order: dict[str, Any], total: Decimal) -> dict[str, Any]:
    """The merchant edited the order to another total (orders/updated)."""
    new: dict[str, Any] = update_note(order, order["note"])
    new["total_price"] = str(total)
    return new


def releases_by_a_person(history: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [
        (h["from_status"], h["to_status"], h["cause"])
        for h in history
        if h["from_status"] == "on_hold" and h["cause"].startswith("api:")
    ]


async def test_a_released_amount_hold_stays_released_until_the_total_changes(
    open_shop: Any,
) -> None:
    """Above the threshold: held; released through the API; Shopify reports it paid (same
    total): paid, not held; the merchant raises the total: held again, from paid."""
    shop = await open_shop({"amount_above": {c: "1" for c in CURRENCY_DECIMALS}})
    placed = placed_order(6100, note=None)
    total = Decimal(placed["total_price"])

    await shop.send("orders/create", placed)
    held = await shop.find(placed)
    released = await shop.release(held["id"])
    paid = pay(placed)
    await shop.send("orders/paid", paid)
    after_paid = await shop.find(placed)
    await shop.send("orders/updated", with_total(paid, total + 10))
    raised = await shop.find(placed)
    history = await shop.history(held["id"])

    assert (held["status"], held["hold_reasons"]) == ("on_hold", ["amount_above_threshold"])
    assert released["status"] == "pending"
    assert (after_paid["status"], after_paid["hold_reasons"]) == ("paid", [])
    assert [(r["reason"], r["by"], r["fact"]) for r in after_paid["released_holds"]] == [
        ("amount_above_threshold", "api:shop", f"{placed['currency']} {total.normalize():f}")
    ]
    assert after_paid["released_holds"][0]["at"].endswith("Z")
    assert (raised["status"], raised["held_from"], raised["hold_reasons"]) == (
        "on_hold",
        "paid",
        ["amount_above_threshold"],
    )
    assert "released_holds" not in raised  # that release is spent
    assert releases_by_a_person(history) == [("on_hold", "pending", "api:shop")]
    assert any(f"total {total + 10} " in h["cause"] for h in history)


async def test_a_released_buyer_note_hold_stays_released_until_the_note_changes(
    open_shop: Any,
) -> None:
    """A note: held; released; paid, then an edit elsewhere with the same note: not held;
    the buyer's note changes: held again; released again, recorded again."""
    shop = await open_shop({"buyer_note": True})
    placed = placed_order(6200, note="Bitte als Geschenk verpacken")

    await shop.send("orders/create", placed)
    held = await shop.find(placed)
    await shop.release(held["id"])
    paid = pay(placed)
    await shop.send("orders/paid", paid)
    after_paid = await shop.find(placed)
    same_note = with_total(paid, Decimal(paid["total_price"]) + 1)  # content changed, not the note
    await shop.send("orders/updated", same_note)
    after_edit = await shop.find(placed)
    await shop.send("orders/updated", update_note(same_note, "Bitte klingeln, nicht verpacken"))
    renoted = await shop.find(placed)
    again = await shop.release(held["id"])
    history = await shop.history(held["id"])

    assert (held["status"], held["hold_reasons"]) == ("on_hold", ["buyer_note"])
    assert (after_paid["status"], after_paid["hold_reasons"]) == ("paid", [])
    assert after_edit["status"] == "paid"
    assert after_edit["version"] > after_paid["version"]  # the edit was applied and audited
    assert [r["reason"] for r in after_edit["released_holds"]] == ["buyer_note"]
    assert "Geschenk" not in str(after_edit["released_holds"])  # the note is kept as a digest
    assert (renoted["status"], renoted["held_from"], renoted["hold_reasons"]) == (
        "on_hold",
        "paid",
        ["buyer_note"],
    )
    assert again["status"] == "paid"
    assert [r["reason"] for r in again["released_holds"]] == ["buyer_note"]
    assert releases_by_a_person(history) == [
        ("on_hold", "pending", "api:shop"),
        ("on_hold", "paid", "api:shop"),
    ]
    assert any("buyer note: 'Bitte klingeln" in h["cause"] for h in history)
