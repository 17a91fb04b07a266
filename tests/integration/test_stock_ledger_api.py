"""`GET /v1/inventory/{sku}/ledger` on SQLite and PostgreSQL: every movement of a SKU with
its cause, oldest first, keyset pages by `seq`, filters, errors as problem+json, and a
page query that reads ix_stock_ledger_sku without sorting the SKU's history."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from ordersync.adapters.db.stock_audit import ledger_statement
from ordersync.bootstrap import Hub

from .conftest import ClientFactory, HubStarter
from .test_inventory import (
    FLASH_SKU,
    PROBLEM_JSON,
    SHOP_KEY,
    WMS_KEY,
    Stockroom,
    inventory_settings,
    put_stock,
    stock_of,
    teapot_order,
)


@pytest.fixture
async def room(start_hub: HubStarter, database_url: str, client_for: ClientFactory) -> Stockroom:
    hub = await start_hub(inventory_settings(database_url))
    return Stockroom(hub, client_for(hub, WMS_KEY), client_for(hub, SHOP_KEY))


async def ledger(wms: httpx.AsyncClient, sku: str = FLASH_SKU, **params: Any) -> dict[str, Any]:
    response = await wms.get(f"/v1/inventory/{sku}/ledger", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def movements(room: Stockroom) -> tuple[str, str]:
    """Counts at two locations, a stock adjustment, two orders: one cancelled, one shipped.
    Returns the (kept, dropped) order ids."""
    await put_stock(room.wms, 10)
    await put_stock(room.wms, 4, location_id="paris-store")
    adjusted = await room.wms.post(
        "/v1/inventory/adjustments",
        json={
            "deltas": [{"sku": FLASH_SKU, "location_id": "berlin-dc", "delta": -1}],
            "reference": "cycle-count-7",
        },
    )
    assert adjusted.status_code == 200, adjusted.text
    kept = (await room.shop.post("/v1/orders", json=teapot_order("KEPT", 3))).json()["id"]
    dropped = (await room.shop.post("/v1/orders", json=teapot_order("DROPPED", 2))).json()["id"]
    await room.shop.post(f"/v1/orders/{dropped}/status", json={"status": "cancelled"})
    await room.shop.post(f"/v1/orders/{kept}/status", json={"status": "paid"})
    await room.shop.post(f"/v1/orders/{kept}/status", json={"status": "shipped"})
    return kept, dropped


async def test_the_ledger_shows_every_movement_oldest_first_and_sums_to_the_stock(
    room: Stockroom,
) -> None:
    """Each entry has its cause, deltas, reference and time; summed per location they give
    the stock `GET /v1/inventory/{sku}` shows."""
    kept, dropped = await movements(room)

    page = await ledger(room.wms)
    stock = await stock_of(room.wms)

    entries = page["data"]
    assert page["sku"] == FLASH_SKU
    assert page["next"] is None
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
    assert [
        (e["location_id"], e["cause"], e["on_hand_delta"], e["reserved_delta"], e["reference"])
        for e in entries
    ] == [
        ("berlin-dc", "snapshot", 10, 0, None),
        ("paris-store", "snapshot", 4, 0, None),
        ("berlin-dc", "adjustment", -1, 0, "cycle-count-7"),
        ("berlin-dc", "order", 0, 3, kept),
        ("berlin-dc", "order", 0, 2, dropped),
        ("berlin-dc", "cancellation", 0, -2, dropped),
        ("berlin-dc", "shipment", -3, -3, kept),
    ]
    # the cancellation names the reservation the dropped order's entry made
    assert entries[3]["reservation_id"]
    assert entries[4]["reservation_id"]
    assert entries[5]["reservation_id"] == entries[4]["reservation_id"]
    assert all(e["at"].endswith("Z") for e in entries)
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in entries:
        totals[e["location_id"]][0] += e["on_hand_delta"]
        totals[e["location_id"]][1] += e["reserved_delta"]
    assert {loc: tuple(t) for loc, t in totals.items()} == {
        row["location_id"]: (row["on_hand"], row["reserved"]) for row in stock["locations"]
    }


async def test_pages_follow_next_and_filters_narrow_the_entries(room: Stockroom) -> None:
    """`limit` pages chained by `next` (as `after`) give the whole ledger once; location,
    cause and reference filters, alone or together, keep the order and the paging."""
    kept, dropped = await movements(room)
    everything = (await ledger(room.wms))["data"]

    pages, after = [], 0
    while True:
        page = await ledger(room.wms, limit=2, after=after)
        pages.append(page["data"])
        if page["next"] is None:
            break
        after = page["next"]
    paris = await ledger(room.wms, location_id="paris-store")
    orders = await ledger(room.wms, cause="order")
    dropped_only = await ledger(room.wms, reference=dropped)
    kept_shipped = await ledger(room.wms, reference=kept, cause="shipment", location_id="berlin-dc")
    first_order = await ledger(room.wms, cause="order", limit=1)
    nowhere = await ledger(room.wms, location_id="shenzhen-factory")

    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [e for p in pages for e in p] == everything
    assert [e["cause"] for e in paris["data"]] == ["snapshot"]
    assert [e["reference"] for e in orders["data"]] == [kept, dropped]
    assert [e["cause"] for e in dropped_only["data"]] == ["order", "cancellation"]
    assert [(e["cause"], e["reference"]) for e in kept_shipped["data"]] == [("shipment", kept)]
    assert first_order["next"] == first_order["data"][0]["seq"]
    assert (await ledger(room.wms, cause="order", after=first_order["next"]))["data"] == [
        orders["data"][1]
    ]
    assert nowhere == {"sku": FLASH_SKU, "data": [], "next": None}


async def test_an_unknown_sku_is_a_404_and_bad_query_values_are_422(room: Stockroom) -> None:
    """As `GET /v1/inventory/{sku}`: a SKU with no stock recorded is a 404. Bad paging or
    filter values are 422 problem+json; without inventory:read the route is closed."""
    await put_stock(room.wms, 5)

    unknown = await room.wms.get("/v1/inventory/NO-SUCH-SKU/ledger")
    stock_unknown = await room.wms.get("/v1/inventory/NO-SUCH-SKU")
    bad = [
        await room.wms.get(f"/v1/inventory/{FLASH_SKU}/ledger", params=params)
        for params in (
            {"limit": 0},
            {"limit": 1001},
            {"after": -1},
            {"after": "abc"},
            {"after": 2**63},
            {"cause": "theft"},
            {"location_id": ""},
        )
    ]
    no_scope = await room.shop.get(f"/v1/inventory/{FLASH_SKU}/ledger")

    assert unknown.status_code == stock_unknown.status_code == 404
    assert unknown.headers["content-type"] == PROBLEM_JSON
    assert unknown.json()["type"] == stock_unknown.json()["type"]
    assert unknown.json()["type"].endswith("/sku_not_found")
    assert [r.status_code for r in bad] == [422] * len(bad)
    assert {r.headers["content-type"] for r in bad} == {PROBLEM_JSON}
    assert {r.json()["type"].rsplit("/", 1)[-1] for r in bad} == {"validation_error"}
    assert no_scope.status_code == 403


async def test_the_route_is_documented_in_openapi(room: Stockroom) -> None:
    spec = (await room.wms.get("/openapi.json")).json()
    op = spec["paths"]["/v1/inventory/{sku}/ledger"]["get"]
    params = {p["name"] for p in op["parameters"]}

    assert op["summary"].startswith("The stock ledger of one SKU")
    assert {"sku", "after", "limit", "location_id", "cause", "reference"} <= params
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert schema.endswith("/LedgerPageOut")
    assert {"200", "404", "422"} <= set(op["responses"])


# 30 000 entries: 50 SKUs x 3 locations x 200, so that the planner weighs a real table.
_FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000)
INSERT INTO stock_ledger
  (sku, location_id, cause, on_hand_delta, reserved_delta, reference, reservation_id, at_us)
SELECT 'SKU-' || (i % 50),
       CASE (i / 50) % 3 WHEN 0 THEN 'berlin-dc' WHEN 1 THEN 'paris-store'
                         ELSE 'shenzhen-factory' END,
       CASE i % 7 WHEN 0 THEN 'snapshot' ELSE 'order' END, 1, 0, 'ord-' || i, NULL, i
  FROM n
"""
NAIVE = "SELECT * FROM stock_ledger WHERE sku = :sku AND seq > :after ORDER BY seq LIMIT :n"
LOCATIONS = ["berlin-dc", "paris-store", "shenzhen-factory"]


async def plan_of(hub: Hub, sql: str, params: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(the plan's operations, the sorts that sort rows read from stock_ledger itself rather
    than the branches' at most `n` rows each)."""
    async with hub.db.read() as conn:
        if hub.db.is_sqlite:
            rows = list(await conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"), params))
            steps = [str(r[3]) for r in rows]
            # a temp b-tree sorts what its siblings read
            reads_table = {r[1] for r in rows if "stock_ledger" in str(r[3])}
            return steps, [str(r[3]) for r in rows if "B-TREE" in str(r[3]) and r[1] in reads_table]
        rows = list(await conn.execute(text(f"EXPLAIN (COSTS OFF) {sql}"), params))
    lines = [str(r[0]) for r in rows]
    steps = [ln.split("->")[-1].strip() for i, ln in enumerate(lines) if i == 0 or "->" in ln]
    # a Sort whose input is a scan of the table (not an Append of the branches)
    sorts = [
        s
        for s, below in itertools.pairwise(steps)
        if s.endswith("Sort") and "stock_ledger" in below
    ]
    return steps, sorts


@pytest.mark.parametrize(
    ("locations", "filters"),
    [
        (LOCATIONS, {}),
        (["paris-store"], {}),
        (LOCATIONS, {"cause": "order", "reference": "ord-4242"}),
    ],
    ids=["all-locations", "one-location", "filtered"],
)
async def test_a_page_is_read_from_the_sku_index_without_a_sort(
    room: Stockroom, locations: list[str], filters: dict[str, str]
) -> None:
    """Per location an ix_stock_ledger_sku range in `seq` order, merged: no sequential scan
    and no sort of the SKU's entries, with or without the location filter."""
    hub = room.hub
    async with hub.db.write() as conn:
        await conn.execute(text(_FILL))
    async with hub.db.write() as conn:
        await conn.execute(text("ANALYZE stock_ledger"))
    params: dict[str, Any] = {"sku": "SKU-7", "after": 0, "n": 101, **filters}
    params.update({f"l{i}": loc for i, loc in enumerate(locations)})

    steps, table_sorts = await plan_of(hub, ledger_statement(locations, **filters), params)

    shown = "\n".join(steps)
    assert "ix_stock_ledger_sku" in shown
    assert "SCAN stock_ledger" not in shown, shown
    assert "Seq Scan" not in shown, shown
    if not filters:  # a filter may leave few rows of a location's range to sort: cheap
        assert table_sorts == [], shown
    # the obvious one-statement query cannot do both: it sorts all the SKU's entries
    # (SQLite) or walks the whole ledger in `seq` order looking for the SKU (PostgreSQL)
    naive_steps, naive_sorts = await plan_of(hub, NAIVE, params)
    assert naive_sorts or "ix_stock_ledger_sku" not in "\n".join(naive_steps)
