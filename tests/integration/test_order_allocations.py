"""`GET /v1/orders` shows, per line, which location holds or shipped its units, and the
routing summary, on SQLite and PostgreSQL; a whole page costs one extra query."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from ordersync.bootstrap import Hub
from ordersync.config import settings_from_mapping

from .conftest import ClientFactory, Eventually, HubStarter, Sinks

WMS_KEY = "sk_test_wms_allocations_9c3e"
SHOP_KEY = "sk_test_shop_allocations_1f7a"
LOCATIONS = [
    {"id": "berlin-dc", "kind": "warehouse", "region": "eu", "priority": 1},
    {"id": "paris-store", "kind": "store", "region": "eu", "priority": 2},
]


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

    async def order(self, external_id: str, lines: dict[str, int]) -> str:
        body = {
            "channel_id": "web",
            "external_id": external_id,
            "currency": "EUR",
            "totals": {"total": "49.00"},
            "lines": [
                {"sku": sku, "name": sku.title(), "quantity": q, "unit_price": "7.00"}
                for sku, q in lines.items()
            ],
            "shipping_address": {"name": "Mira Lindqvist", "city": "Berlin", "country_code": "DE"},
        }
        r = await self.shop.post("/v1/orders", json=body)
        assert r.status_code == 201, r.text
        order_id: str = r.json()["id"]
        return order_id

    async def listed(self, **params: Any) -> dict[str, Any]:
        r = await self.shop.get("/v1/orders", params=params)
        assert r.status_code == 200, r.text
        page: dict[str, Any] = r.json()
        return page

    async def one(self, order_id: str) -> dict[str, Any]:
        r = await self.shop.get(f"/v1/orders/{order_id}")
        assert r.status_code == 200, r.text
        order: dict[str, Any] = r.json()
        return order


Opener = Callable[..., Awaitable[Warehouse]]


@pytest.fixture
def open_warehouse(start_hub: HubStarter, database_url: str, client_for: ClientFactory) -> Opener:
    """`await open_warehouse(routing={...})`: a hub with two EU locations."""

    async def start(routing: dict[str, Any] | None = None) -> Warehouse:
        raw: dict[str, Any] = {
            "database_url": database_url,
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
            "routing": {"regions": {"DE": "eu"}, **(routing or {})},
        }
        hub = await start_hub(settings_from_mapping(raw, env={}))
        return Warehouse(hub, client_for(hub, WMS_KEY), client_for(hub, SHOP_KEY))

    return start


def picks(order: dict[str, Any]) -> list[list[tuple[str, int]]]:
    return [[(a["location_id"], a["quantity"]) for a in ln["allocations"]] for ln in order["lines"]]


def summary(routing: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if routing is None else {k: v for k, v in routing.items() if k != "explanation"}


@contextmanager
def statements(hub: Hub) -> Iterator[list[str]]:
    """SQL the hub's read engine runs meanwhile (on PostgreSQL, its only engine)."""
    seen: list[str] = []
    engine = hub.db.reader.sync_engine

    def record(_c: Any, _cur: Any, sql: str, *_: Any) -> None:
        seen.append(sql)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_each_listed_line_shows_where_its_units_come_from_as_the_order_itself_does(
    open_warehouse: Opener,
) -> None:
    """Split, backordered, held, cancelled and untracked orders: the list agrees with GET."""
    room = await open_warehouse(routing={"backorder_allowed": True})
    await room.stock("BLUE-TEAPOT", berlin_dc=3)
    await room.stock("MATCHA-CUP", paris_store=8)

    split = await room.order("LIST-SPLIT", {"BLUE-TEAPOT": 1, "MATCHA-CUP": 4})
    backordered = await room.order("LIST-BACK", {"BLUE-TEAPOT": 4})
    cancelled = await room.order("LIST-GONE", {"MATCHA-CUP": 2})
    r = await room.shop.post(f"/v1/orders/{cancelled}/status", json={"status": "cancelled"})
    assert r.status_code == 200, r.text
    untracked = await room.order("LIST-GIFT", {"GIFT-CARD": 1})
    page = await room.listed()
    listed = {o["id"]: o for o in page["data"]}

    assert picks(listed[split]) == [[("berlin-dc", 1)], [("paris-store", 4)]]
    assert listed[split]["routing"]["outcome"] == "routed"
    assert sorted(listed[split]["routing"]["locations"]) == ["berlin-dc", "paris-store"]
    assert picks(listed[backordered]) == [[("berlin-dc", 2)]]
    assert listed[backordered]["routing"]["backordered"] == {"BLUE-TEAPOT": 2}
    assert picks(listed[cancelled]) == [[]]  # released stock is no longer allocated
    assert listed[cancelled]["routing"]["outcome"] == "routed"
    assert picks(listed[untracked]) == [[]]
    assert listed[untracked]["routing"] is None
    for order_id in (split, backordered, cancelled, untracked):
        one = await room.one(order_id)
        assert listed[order_id]["lines"] == one["lines"]
        assert listed[order_id]["routing"] == summary(one["routing"])
        assert {k: v for k, v in listed[order_id].items() if k != "routing"} == {
            k: v for k, v in one.items() if k != "routing"
        }


async def test_a_held_order_lists_its_unroutable_decision_and_no_allocations(
    open_warehouse: Opener,
) -> None:
    """No splitting allowed and no single location has both: held, nothing reserved."""
    room = await open_warehouse(routing={"allow_split": False})
    await room.stock("BLUE-TEAPOT", berlin_dc=3)
    await room.stock("MATCHA-CUP", paris_store=8)

    held = await room.order("LIST-HELD", {"BLUE-TEAPOT": 1, "MATCHA-CUP": 4})
    (item,) = (await room.listed(status="on_hold"))["data"]

    assert item["id"] == held
    assert picks(item) == [[], []]
    assert item["routing"]["outcome"] == "unroutable"
    assert "explanation" not in item["routing"]


async def test_shipped_units_stay_listed_at_the_location_they_left_from(
    open_warehouse: Opener,
) -> None:
    """Shipping commits the hold: the list still says Paris picked those cups."""
    room = await open_warehouse()
    await room.stock("MATCHA-CUP", paris_store=8)
    order_id = await room.order("LIST-SHIP", {"MATCHA-CUP": 3})
    for status in ("paid", "shipped"):
        r = await room.shop.post(f"/v1/orders/{order_id}/status", json={"status": status})
        assert r.status_code == 200, r.text

    (item,) = (await room.listed())["data"]

    assert item["status"] == "shipped"
    assert picks(item) == [[("paris-store", 3)]]


async def test_every_page_of_a_cursor_walk_carries_its_own_allocations(
    open_warehouse: Opener,
) -> None:
    """Five orders, two per page: each order once, each with its own teapot from Berlin."""
    room = await open_warehouse()
    await room.stock("BLUE-TEAPOT", berlin_dc=50)
    made = {await room.order(f"LIST-PAGE-{n}", {"BLUE-TEAPOT": n}): n for n in range(1, 6)}

    seen: dict[str, list[list[tuple[str, int]]]] = {}
    cursor = None
    while True:
        page = await room.listed(limit=2, **({"cursor": cursor} if cursor else {}))
        seen.update({o["id"]: picks(o) for o in page["data"]})
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == {order_id: [[("berlin-dc", n)]] for order_id, n in made.items()}


async def test_a_page_reads_its_allocations_and_routing_in_one_query_whatever_its_size(
    open_warehouse: Opener,
) -> None:
    """No N+1: a page of two orders and a page of six cost the same single extra query."""
    room = await open_warehouse()
    await room.stock("BLUE-TEAPOT", berlin_dc=20, paris_store=20)
    for n in range(6):
        await room.order(f"LIST-N1-{n}", {"BLUE-TEAPOT": 1 + n % 2})

    with statements(room.hub) as small:
        two = await room.listed(limit=2)
    with statements(room.hub) as large:
        six = await room.listed(limit=6)

    def fulfilment_reads(sql: list[str]) -> list[str]:
        # "order_id": leaves out background sweeps (the expiry timer) sharing the engine.
        return [
            s for s in sql if ("reservations" in s or "routing_decisions" in s) and "order_id" in s
        ]

    assert (len(two["data"]), len(six["data"])) == (2, 6)
    assert all(picks(o) != [[]] for o in six["data"])
    assert len(fulfilment_reads(small)) == 1
    assert len(fulfilment_reads(large)) == 1


async def test_the_wms_is_sent_order_allocated_with_each_lines_location(
    start_hub: HubStarter,
    database_url: str,
    client_for: ClientFactory,
    sinks: Sinks,
    eventually: Eventually,
) -> None:
    """Subscribed to `order.allocated` only: a split order tells it who picks what."""
    raw: dict[str, Any] = {
        "database_url": database_url,
        "api_keys": [
            {"id": "shop", "key": SHOP_KEY, "scopes": ["orders:read", "orders:write"]},
            {"id": "wms", "key": WMS_KEY, "scopes": ["inventory:read", "inventory:write"]},
        ],
        "locations": LOCATIONS,
        "destinations": [
            {
                "id": "wms",
                "url": sinks.wms.events_url,
                "secret": sinks.wms.secret,
                "events": ["order.allocated"],
                "retry_schedule": [0.05],
            }
        ],
    }
    hub = await start_hub(settings_from_mapping(raw, env={}))
    room = Warehouse(hub, client_for(hub, WMS_KEY), client_for(hub, SHOP_KEY))
    await room.stock("BLUE-TEAPOT", berlin_dc=3)
    await room.stock("MATCHA-CUP", paris_store=8)

    order_id = await room.order("EVENT-SPLIT", {"BLUE-TEAPOT": 1, "MATCHA-CUP": 4})
    await eventually(lambda: len(sinks.wms.ledger) == 1, "order.allocated at the WMS")
    (sent,) = sinks.wms.ledger

    assert (sent.type, sent.order_id) == ("order.allocated", order_id)
    assert picks(sent.data) == [[("berlin-dc", 1)], [("paris-store", 4)]]
    assert sent.data["routing"]["outcome"] == "routed"
    assert "explanation" not in sent.data["routing"]
