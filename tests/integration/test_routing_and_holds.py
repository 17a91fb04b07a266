"""Routing and holds through the real order flow (API and Shopify webhooks), on SQLite and
PostgreSQL: which location each order ships from and why, what waits for stock, and which
orders stop for a person until their cause clears."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from ordersync.bootstrap import Hub
from ordersync.config import settings_from_mapping
from ordersync.simulators.shopify_store import OrderFactory, update_note
from ordersync.testing.cli import run_cli, run_process

from .conftest import SHOP_SECRET, ClientFactory, HubStarter, Query, ShopifyShop

WMS_KEY = "sk_test_wms_routing_5e1f"
SHOP_KEY = "sk_test_shop_routing_a24c"

# Berlin is the preferred EU warehouse, Paris a store, Newark serves the US, Shenzhen
# the factory that only the Tmall channel ships from.
LOCATIONS = [
    {"id": "berlin-dc", "kind": "warehouse", "region": "eu", "priority": 1},
    {"id": "paris-store", "kind": "store", "region": "eu", "priority": 2},
    {"id": "newark-dc", "kind": "warehouse", "region": "us", "priority": 3},
    {"id": "shenzhen-factory", "kind": "factory", "region": "cn", "priority": 4},
]
REGIONS = {"DE": "eu", "FR": "eu", "NL": "eu", "US": "us", "CN": "cn"}


@dataclass
class Warehouse:
    hub: Hub
    wms: httpx.AsyncClient
    shop: httpx.AsyncClient

    async def stock(self, sku: str, **per_location: int) -> None:
        for loc, n in per_location.items():
            r = await self.wms.put(
                f"/v1/inventory/{sku}", json={"location_id": loc.replace("_", "-"), "on_hand": n}
            )
            assert r.status_code == 200, r.text

    async def order(
        self,
        external_id: str,
        lines: dict[str, int],
        *,
        country: str = "DE",
        channel: str = "web",
        **changes: Any,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "channel_id": channel,
            "external_id": external_id,
            "currency": "EUR",
            "totals": {"total": "49.00"},
            "lines": [
                {"sku": sku, "name": sku.title(), "quantity": q, "unit_price": "7.00"}
                for sku, q in lines.items()
            ],
            "shipping_address": address(country),
        }
        body.update(changes)
        r = await self.shop.post("/v1/orders", json=body)
        assert r.status_code == 201, r.text
        got = await self.shop.get(f"/v1/orders/{r.json()['id']}")
        assert got.status_code == 200, got.text
        return dict(got.json())


def address(country: str, **changes: Any) -> dict[str, Any]:
    base = {
        "name": "Mira Lindqvist",
        "line1": "Teestraße 12",
        "city": "Berlin" if country == "DE" else "Elsewhere",
        "postal_code": "10115",
        "country_code": country,
    }
    return {**base, **changes}


Opener = Callable[..., Awaitable[Warehouse]]


@pytest.fixture
def open_warehouse(start_hub: HubStarter, database_url: str, client_for: ClientFactory) -> Opener:
    """`await open_warehouse(routing={...}, holds={...}, locations=[...])`."""

    async def start(**extra: Any) -> Warehouse:
        raw: dict[str, Any] = {
            "database_url": database_url,
            "channels": [{"id": "shop-eu", "kind": "shopify", "secret": SHOP_SECRET}],
            "api_keys": [
                {
                    "id": "wms",
                    "key": WMS_KEY,
                    "scopes": ["inventory:read", "inventory:write", "orders:read"],
                },
                {"id": "shop", "key": SHOP_KEY, "scopes": ["orders:read", "orders:write"]},
            ],
            "locations": LOCATIONS,
            "inventory": {"expiry_interval": 3600},
            "routing": {"regions": REGIONS},
        }
        for key, value in extra.items():
            if key == "routing":
                raw["routing"] = {**raw["routing"], **value}
            else:
                raw[key] = value
        hub = await start_hub(settings_from_mapping(raw, env={}))
        return Warehouse(hub, client_for(hub, WMS_KEY), client_for(hub, SHOP_KEY))

    return start


def allocations(order: dict[str, Any]) -> list[list[tuple[str, int]]]:
    return [[(a["location_id"], a["quantity"]) for a in ln["allocations"]] for ln in order["lines"]]


# ---- routing ----------------------------------------------------------------------------


async def test_an_order_ships_from_a_location_in_its_region_and_the_order_says_why(
    open_warehouse: Opener, query: Query
) -> None:
    """A US buyer gets the Newark teapot although Berlin ranks first; the reason is stored."""
    room = await open_warehouse()
    await room.stock("BLUE-TEAPOT", berlin_dc=10, newark_dc=10)

    order = await room.order("US-1", {"BLUE-TEAPOT": 2}, country="US")
    stored = await query(
        room.hub,
        "SELECT outcome, locations FROM routing_decisions WHERE order_id = :o",
        o=order["id"],
    )

    assert order["status"] == "pending"
    assert allocations(order) == [[("newark-dc", 2)]]
    assert order["routing"]["outcome"] == "routed"
    assert order["routing"]["locations"] == ["newark-dc"]
    assert order["routing"]["backordered"] == {}
    text = order["routing"]["explanation"]["text"]
    assert "newark-dc: score" in text
    assert "chosen" in text
    assert "berlin-dc: score 35 (priority 10 + distance 25 + cost 0)" in text
    assert [(o, orjson.loads(locs)) for o, locs in stored] == [("routed", ["newark-dc"])]


async def test_within_a_region_the_location_with_the_better_priority_ships(
    open_warehouse: Opener,
) -> None:
    """Berlin (priority 1) before Paris (priority 2) for a German address."""
    room = await open_warehouse()
    await room.stock("BLUE-TEAPOT", berlin_dc=5, paris_store=5)

    order = await room.order("DE-1", {"BLUE-TEAPOT": 1})

    assert allocations(order) == [[("berlin-dc", 1)]]


async def test_a_location_at_its_daily_capacity_is_passed_over(open_warehouse: Opener) -> None:
    """Berlin ships one order a day; the second order of the day goes to Paris."""
    locations = [dict(loc) for loc in LOCATIONS]
    locations[0]["capacity"] = 1
    room = await open_warehouse(locations=locations)
    await room.stock("BLUE-TEAPOT", berlin_dc=5, paris_store=5)

    first = await room.order("CAP-1", {"BLUE-TEAPOT": 1})
    second = await room.order("CAP-2", {"BLUE-TEAPOT": 1})

    assert allocations(first) == [[("berlin-dc", 1)]]
    assert allocations(second) == [[("paris-store", 1)]]
    assert "capacity: at capacity (1 of 1 shipments)" in second["routing"]["explanation"]["text"]


async def test_a_channel_restricted_to_one_location_ships_only_from_there(
    open_warehouse: Opener,
) -> None:
    """Tmall orders ship from Shenzhen even to a German address that Berlin could serve."""
    room = await open_warehouse(routing={"channel_locations": {"tmall": ["shenzhen-factory"]}})
    await room.stock("BLUE-TEAPOT", berlin_dc=5, shenzhen_factory=5)

    order = await room.order("TM-1", {"BLUE-TEAPOT": 1}, channel="tmall")

    assert allocations(order) == [[("shenzhen-factory", 1)]]
    assert "channel tmall may not ship from berlin-dc" in order["routing"]["explanation"]["text"]


async def test_an_order_no_one_location_can_serve_is_split_when_allowed(
    open_warehouse: Opener, query: Query
) -> None:
    """Teapot from Berlin, cups from Paris: two shipments, each line showing its source."""
    room = await open_warehouse()
    await room.stock("BLUE-TEAPOT", berlin_dc=3)
    await room.stock("MATCHA-CUP", paris_store=8)

    order = await room.order("SPLIT-1", {"BLUE-TEAPOT": 1, "MATCHA-CUP": 4})
    held = await query(
        room.hub,
        "SELECT sku, location_id, quantity FROM reservations WHERE order_id = :o ORDER BY sku",
        o=order["id"],
    )

    assert order["status"] == "pending"
    assert allocations(order) == [[("berlin-dc", 1)], [("paris-store", 4)]]
    assert sorted(order["routing"]["locations"]) == ["berlin-dc", "paris-store"]
    assert [tuple(r) for r in held] == [
        ("BLUE-TEAPOT", "berlin-dc", 1),
        ("MATCHA-CUP", "paris-store", 4),
    ]


async def test_without_splitting_the_same_order_is_held_for_stock_shortage_and_says_why(
    open_warehouse: Opener, query: Query
) -> None:
    """One shipment only: nothing is reserved, the order waits with reason stock_shortage."""
    room = await open_warehouse(routing={"allow_split": False})
    await room.stock("BLUE-TEAPOT", berlin_dc=3)
    await room.stock("MATCHA-CUP", paris_store=8)

    order = await room.order("NOSPLIT-1", {"BLUE-TEAPOT": 1, "MATCHA-CUP": 4})
    held = await query(
        room.hub, "SELECT COUNT(*) FROM reservations WHERE order_id = :o", o=order["id"]
    )

    assert order["status"] == "on_hold"
    assert order["hold_reasons"] == ["stock_shortage"]
    assert allocations(order) == [[], []]
    assert order["routing"]["outcome"] == "unroutable"
    assert "splitting is not allowed" in order["routing"]["explanation"]["text"]
    assert held[0][0] == 0


async def test_a_backorder_reserves_what_there_is_and_records_what_waits(
    open_warehouse: Opener,
) -> None:
    """Five teapots wanted, three on the shelf: three held, two backordered, no hold."""
    room = await open_warehouse(routing={"backorder_allowed": True})
    await room.stock("BLUE-TEAPOT", berlin_dc=3)

    order = await room.order("BACK-1", {"BLUE-TEAPOT": 5})
    stock = (await room.wms.get("/v1/inventory/BLUE-TEAPOT")).json()

    assert order["status"] == "pending"
    assert allocations(order) == [[("berlin-dc", 3)]]
    assert order["routing"]["outcome"] == "backordered"
    assert order["routing"]["backordered"] == {"BLUE-TEAPOT": 2}
    assert stock["reserved"] == 3


async def test_the_create_response_already_shows_allocations_and_routing(
    open_warehouse: Opener,
) -> None:
    """POST /v1/orders answers with the same allocations GET shows."""
    room = await open_warehouse()
    await room.stock("BLUE-TEAPOT", paris_store=4)

    created = await room.shop.post(
        "/v1/orders",
        json={
            "channel_id": "web",
            "currency": "EUR",
            "totals": {"total": "14.00"},
            "lines": [{"sku": "BLUE-TEAPOT", "quantity": 2, "unit_price": "7.00"}],
            "shipping_address": address("FR"),
        },
    )
    fetched = await room.shop.get(f"/v1/orders/{created.json()['id']}")

    assert created.status_code == 201
    assert allocations(created.json()) == [[("paris-store", 2)]]
    assert allocations(fetched.json()) == [[("paris-store", 2)]]
    assert created.json()["routing"]["locations"] == fetched.json()["routing"]["locations"]


# ---- holds ------------------------------------------------------------------------------


async def test_an_incomplete_address_holds_the_order_until_the_channel_fixes_it(
    open_warehouse: Opener, client_for: ClientFactory
) -> None:
    """Shopify sends no postcode: on hold (order.held, cause in history); the merchant adds
    it (orders/updated): released automatically (order.released), stock held throughout."""
    room = await open_warehouse(holds={"incomplete_address": True})
    shop = ShopifyShop(client_for(room.hub))
    placed = OrderFactory(seed=4711).new_order()
    placed["financial_status"] = "pending"
    placed["shipping_address"].update({"zip": None, "country_code": "DE"})
    placed["note"] = None
    assert (await shop.send("orders/create", placed)).status_code == 200
    (found,) = (
        await room.shop.get("/v1/orders", params={"external_id": str(placed["id"])})
    ).json()["data"]
    held = (await room.shop.get(f"/v1/orders/{found['id']}")).json()
    fixed = update_note(placed, None)
    fixed["shipping_address"]["zip"] = "10115"
    assert (await shop.send("orders/updated", fixed)).status_code == 200
    released = (await room.shop.get(f"/v1/orders/{found['id']}")).json()
    history = (await room.shop.get(f"/v1/orders/{found['id']}/history")).json()

    assert held["status"] == "on_hold"
    assert held["hold_reasons"] == ["incomplete_address"]
    assert released["status"] == "pending"
    assert released["hold_reasons"] == []
    causes = [h["cause"] for h in history]
    assert any("incomplete_address (shipping address lacks postal_code)" in c for c in causes)
    assert any("cleared incomplete_address" in c for c in causes)


async def test_a_buyer_note_hold_is_released_by_an_operator_through_the_api(
    open_warehouse: Opener,
) -> None:
    """A note stops the order; POST /release lets it go; releasing again is refused."""
    room = await open_warehouse(holds={"buyer_note": True, "incomplete_address": False})
    await room.stock("BLUE-TEAPOT", berlin_dc=5)

    order = await room.order("NOTE-1", {"BLUE-TEAPOT": 1}, note="please gift-wrap the teapot")
    released = await room.shop.post(f"/v1/orders/{order['id']}/release")
    again = await room.shop.post(f"/v1/orders/{order['id']}/release")

    assert order["status"] == "on_hold"
    assert order["hold_reasons"] == ["buyer_note"]
    assert allocations(order) == [[("berlin-dc", 1)]]  # held orders keep their stock
    assert released.status_code == 200
    assert released.json()["status"] == "pending"
    assert again.status_code == 422
    assert again.headers["content-type"].startswith("application/problem+json")
    assert again.json()["type"].endswith("/invalid_order")


async def test_an_amount_above_the_threshold_holds_and_a_smaller_one_does_not(
    open_warehouse: Opener,
) -> None:
    """Above 500 EUR waits for review; in another currency the EUR limit does not apply."""
    room = await open_warehouse(holds={"amount_above": {"EUR": "500.00"}})
    await room.stock("BLUE-TEAPOT", berlin_dc=5)

    big = await room.order("BIG-1", {"BLUE-TEAPOT": 1}, totals={"total": "500.01"})
    small = await room.order("SMALL-1", {"BLUE-TEAPOT": 1}, totals={"total": "500.00"})
    dollars = await room.order(
        "USD-1", {"BLUE-TEAPOT": 1}, currency="USD", totals={"total": "900.00"}
    )

    assert (big["status"], big["hold_reasons"]) == ("on_hold", ["amount_above_threshold"])
    assert small["status"] == "pending"
    assert dollars["status"] == "pending"


# ---- dry run ----------------------------------------------------------------------------


async def test_the_dry_run_shows_how_past_orders_would_route_and_changes_nothing(
    open_warehouse: Opener, query: Query, tmp_path: Path
) -> None:
    """`ordersync route --dry-run --json`: one decision per order, stock untouched."""
    room = await open_warehouse()
    await room.stock("BLUE-TEAPOT", berlin_dc=2, newark_dc=2)
    eu = await room.order("DRY-EU", {"BLUE-TEAPOT": 1})
    us = await room.order("DRY-US", {"BLUE-TEAPOT": 1}, country="US")
    config = tmp_path / "ops.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database_url": room.hub.settings.database_url,
                "locations": LOCATIONS,
                "routing": {"regions": REGIONS},
            }
        )
    )
    before = await query(room.hub, "SELECT sku, location_id, on_hand, reserved FROM stock")

    # The suite's one real `python -m ordersync route` process: this first run, on SQLite.
    on_sqlite = room.hub.settings.database_url.startswith("sqlite")
    rc, out = await ordersync(
        config, "route", "--dry-run", "--json", "--limit", "10", process=on_sqlite
    )
    rc_table, table = await ordersync(config, "route", "--dry-run")
    rc_bad, bad = await ordersync(config, "route", "--dry-run", "--since", "yesterday")
    rc_wet, wet = await ordersync(config, "route")

    assert rc == 0, out
    report = orjson.loads(out)
    assert report["orders"] == 2
    decided = {d["order_id"]: d for d in report["decisions"]}
    assert decided[eu["id"]]["lines"][0]["allocations"] == [
        {"location_id": "berlin-dc", "quantity": 1}
    ]
    assert decided[us["id"]]["lines"][0]["allocations"] == [
        {"location_id": "newark-dc", "quantity": 1}
    ]
    assert "newark-dc" in decided[us["id"]]["text"]
    assert (rc_table, b"nothing changed" in table) == (0, True)
    assert (rc_bad, b"--since" in bad) == (2, True)
    assert (rc_wet, b"--dry-run" in wet) == (2, True)
    assert await query(room.hub, "SELECT sku, location_id, on_hand, reserved FROM stock") == before


async def ordersync(config: Path, *args: str, process: bool = False) -> tuple[int, bytes]:
    """`ordersync *args --config config`: in this process, or as a real child process."""
    if process:
        code, out, err = await run_process(*args, "--config", str(config))
        return code, out + err
    return await run_cli(*args, "--config", str(config))


# ---- stock arriving ---------------------------------------------------------------------


async def test_stock_arriving_releases_orders_held_for_it_oldest_first(
    open_warehouse: Opener,
) -> None:
    """Two orders of 3 wait for teapots; 4 arrive in Paris: the older ships from Paris,
    the newer keeps waiting; with 3 more in Berlin (an adjustment) it goes too."""
    room = await open_warehouse()
    await room.stock("BLUE-TEAPOT", berlin_dc=1)
    older = await room.order("WAIT-1", {"BLUE-TEAPOT": 3})
    newer = await room.order("WAIT-2", {"BLUE-TEAPOT": 3})

    await room.stock("BLUE-TEAPOT", paris_store=4)
    after_delivery = [(await room.shop.get(f"/v1/orders/{o['id']}")).json() for o in (older, newer)]
    adjusted = await room.wms.post(
        "/v1/inventory/adjustments",
        json={"deltas": [{"sku": "BLUE-TEAPOT", "location_id": "berlin-dc", "delta": 3}]},
    )
    newer_now = (await room.shop.get(f"/v1/orders/{newer['id']}")).json()
    history = (await room.shop.get(f"/v1/orders/{older['id']}/history")).json()

    assert [o["status"] for o in (older, newer)] == ["on_hold", "on_hold"]
    assert [o["status"] for o in after_delivery] == ["pending", "on_hold"]
    assert allocations(after_delivery[0]) == [[("paris-store", 3)]]
    assert after_delivery[0]["routing"]["outcome"] == "routed"
    assert after_delivery[1]["routing"]["outcome"] == "unroutable"
    assert adjusted.status_code == 200, adjusted.text
    assert newer_now["status"] == "pending"
    assert allocations(newer_now) == [[("berlin-dc", 3)]]
    assert history[-1]["cause"] == "inventory:stock arrived"
