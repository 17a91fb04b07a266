"""Inventory through the HTTP API, on a real SQLite file and a real PostgreSQL database:
snapshots and deltas, per-location stock, reservations tied to the order lifecycle, and
never overselling when hundreds of buyers race for the last units."""

from __future__ import annotations

import asyncio
import base64
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from ordersync.adapters.db.database import Database
from ordersync.bootstrap import Hub
from ordersync.clock import utcnow
from ordersync.config import Settings, settings_from_mapping
from ordersync.entrypoints.process import HubProcess, free_port
from ordersync.simulators.shopify_store import OrderFactory, cancel, fulfill, pay

from .conftest import SHOP_SECRET, ClientFactory, HubStarter, Query, ShopifyShop

WMS_KEY = "sk_test_wms_blue_teapot_91ac"
SHOP_KEY = "sk_test_shop_orders_3d7e"
PROBLEM_JSON = "application/problem+json"
FLASH_SKU = "FLASH-TEAPOT"
BUYERS, UNITS = 256, 100


def inventory_settings(
    database_url: str, *, destinations: list[dict[str, Any]] | None = None, **inventory: Any
) -> Settings:
    return settings_from_mapping(
        {
            "database_url": database_url,
            "destinations": destinations or [],
            "channels": [{"id": "shop-eu", "kind": "shopify", "secret": SHOP_SECRET}],
            "api_keys": [
                {
                    "id": "wms",
                    "key": WMS_KEY,
                    "scopes": ["inventory:read", "inventory:write", "orders:read"],
                },
                {"id": "shop", "key": SHOP_KEY, "scopes": ["orders:read", "orders:write"]},
            ],
            "locations": [
                {"id": "berlin-dc", "kind": "warehouse", "region": "eu", "priority": 1},
                {"id": "paris-store", "kind": "store", "region": "eu", "priority": 2},
                {"id": "shenzhen-factory", "kind": "factory", "region": "cn", "priority": 3},
            ],
            "inventory": {"expiry_interval": 3600, **inventory},
        },
        env={},
    )


@dataclass
class Stockroom:
    """A hub with three locations, a WMS client (inventory scopes) and a shop client."""

    hub: Hub
    wms: httpx.AsyncClient
    shop: httpx.AsyncClient


@pytest.fixture
def open_stockroom(
    start_hub: HubStarter, database_url: str, client_for: ClientFactory
) -> Callable[..., Awaitable[Stockroom]]:
    """`await open_stockroom(**inventory_settings)`: start a hub on this test's database."""

    async def start(
        *, destinations: list[dict[str, Any]] | None = None, **inventory: Any
    ) -> Stockroom:
        hub = await start_hub(
            inventory_settings(database_url, destinations=destinations, **inventory)
        )
        return Stockroom(hub, client_for(hub, WMS_KEY), client_for(hub, SHOP_KEY))

    return start


def teapot_order(external_id: str, quantity: int = 1, **changes: Any) -> dict[str, Any]:
    """A flash-sale teapot bought on the web shop, not yet paid."""
    order: dict[str, Any] = {
        "channel_id": "web",
        "external_id": external_id,
        "currency": "EUR",
        "totals": {"total": f"{19 * quantity}.00"},
        "lines": [
            {"sku": FLASH_SKU, "name": "Flash teapot", "quantity": quantity, "unit_price": "19.00"}
        ],
    }
    order.update(changes)
    return order


async def stock_of(wms: httpx.AsyncClient, sku: str = FLASH_SKU) -> dict[str, Any]:
    response = await wms.get(f"/v1/inventory/{sku}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def ledger_matches_stock(hub: Hub, query: Query) -> None:
    ledger = await query(
        hub,
        "SELECT sku, location_id, SUM(on_hand_delta), SUM(reserved_delta) FROM stock_ledger"
        " GROUP BY sku, location_id",
    )
    stock = await query(hub, "SELECT sku, location_id, on_hand, reserved FROM stock")
    assert {(s, loc): (int(h), int(r)) for s, loc, h, r in ledger} == {
        (s, loc): (int(h), int(r)) for s, loc, h, r in stock
    }


Opener = Callable[..., Awaitable[Stockroom]]

# A hub process that reserves 60 teapots, writes every row of it inside its transaction,
# says so, and waits to be killed before it can commit.
HALF_DONE_RESERVATION = """
import asyncio, sys
from ordersync.adapters.db.database import Database
from ordersync.adapters.db.unit_of_work import SqlUnitOfWork
from ordersync.bootstrap import inventory_policy
from ordersync.clock import to_us, utcnow
from ordersync.config import settings_from_mapping
from ordersync.domain.stock_commands import ReserveStock
from ordersync.service.handlers.inventory import reserve_stock
from ordersync.service.outbox import EventRouter

async def main():
    settings = settings_from_mapping({
        "database_url": sys.argv[1],
        "locations": [{"id": "berlin-dc", "kind": "warehouse", "region": "eu"}],
    }, env={})
    db = Database(settings.database_url)
    uow = SqlUnitOfWork(db, EventRouter([]), inventory=inventory_policy(settings))
    result = await reserve_stock(ReserveStock("doomed", (("FLASH-TEAPOT", 60),), utcnow()), uow)
    assert result.reserved
    await uow.stock.flush(await uow._c.get(), to_us(utcnow()))
    print("written, not committed", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def put_stock(wms: httpx.AsyncClient, on_hand: int, **extra: Any) -> httpx.Response:
    body = {"location_id": extra.pop("location_id", "berlin-dc"), "on_hand": on_hand, **extra}
    return await wms.put(f"/v1/inventory/{FLASH_SKU}", json=body)


async def test_a_snapshot_sets_on_hand_and_stock_is_shown_per_location(
    open_stockroom: Opener,
) -> None:
    """PUT sets one location's count; GET shows on_hand, reserved, available per location."""
    room = await open_stockroom()
    await put_stock(room.wms, 40)
    await put_stock(room.wms, 7, location_id="paris-store", safety_stock=2)

    stock = await stock_of(room.wms)

    assert (stock["on_hand"], stock["reserved"], stock["available"]) == (47, 0, 47)
    assert [(row["location_id"], row["available"]) for row in stock["locations"]] == [
        ("berlin-dc", 40),
        ("paris-store", 7),
    ]


async def test_a_repeated_feed_message_is_applied_once_and_a_reused_key_is_a_422(
    open_stockroom: Opener, query: Query
) -> None:
    """Idempotency-Key is the feed message id: same body replays, another body is refused."""
    room = await open_stockroom()
    headers = {"Idempotency-Key": "wms-msg-0001"}
    first = await room.wms.put(
        f"/v1/inventory/{FLASH_SKU}",
        json={"location_id": "berlin-dc", "on_hand": 10},
        headers=headers,
    )
    await put_stock(room.wms, 12)
    again = await room.wms.put(
        f"/v1/inventory/{FLASH_SKU}",
        json={"location_id": "berlin-dc", "on_hand": 10},
        headers=headers,
    )
    reused = await room.wms.put(
        f"/v1/inventory/{FLASH_SKU}",
        json={"location_id": "berlin-dc", "on_hand": 99},
        headers=headers,
    )

    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert reused.status_code == 422
    assert reused.headers["content-type"] == PROBLEM_JSON
    assert (await stock_of(room.wms))["on_hand"] == 12
    assert len(await query(room.hub, "SELECT seq FROM stock_ledger")) == 2


async def test_adjustments_apply_all_or_none(open_stockroom: Opener) -> None:
    """A batch of deltas where one would go negative changes nothing and is a 409."""
    room = await open_stockroom()
    await put_stock(room.wms, 5)
    refused = await room.wms.post(
        "/v1/inventory/adjustments",
        json={
            "deltas": [
                {"sku": FLASH_SKU, "location_id": "paris-store", "delta": 30},
                {"sku": FLASH_SKU, "location_id": "berlin-dc", "delta": -6},
            ]
        },
    )
    applied = await room.wms.post(
        "/v1/inventory/adjustments",
        json={
            "deltas": [
                {"sku": FLASH_SKU, "location_id": "berlin-dc", "delta": -2},
                {"sku": FLASH_SKU, "location_id": "berlin-dc", "delta": 4, "cause": "return"},
            ]
        },
    )

    assert refused.status_code == 409
    assert refused.json()["type"].endswith("/stock_conflict")
    assert applied.status_code == 200, applied.text
    assert [(r["location_id"], r["on_hand"]) for r in (await stock_of(room.wms))["locations"]] == [
        ("berlin-dc", 7)
    ]


async def test_an_unknown_location_or_a_missing_scope_is_refused_as_problem_json(
    open_stockroom: Opener,
) -> None:
    """Locations come from the configuration; reading stock needs inventory:read."""
    room = await open_stockroom()

    unknown = await put_stock(room.wms, 5, location_id="atlantis")
    forbidden = await room.shop.get(f"/v1/inventory/{FLASH_SKU}")

    assert unknown.status_code == 422
    assert unknown.json()["type"].endswith("/unknown_location")
    assert forbidden.status_code == 403
    assert forbidden.headers["content-type"] == PROBLEM_JSON


async def test_256_buyers_racing_for_100_units_through_the_order_api_get_exactly_100(
    open_stockroom: Opener, query: Query
) -> None:
    """Every order is accepted; exactly 100 hold a unit, the rest wait on a stock hold."""
    room = await open_stockroom(record_unrouted_events=True)  # to count them in `events`
    await put_stock(room.wms, UNITS)

    responses = await asyncio.gather(
        *(room.shop.post("/v1/orders", json=teapot_order(f"FLASH-{i:04d}")) for i in range(BUYERS))
    )
    orders = [r.json() for r in responses]
    stock = await stock_of(room.wms)
    events = Counter(
        t for (t,) in await query(room.hub, "SELECT type FROM events WHERE type LIKE 'stock.%'")
    )

    assert [r.status_code for r in responses] == [201] * BUYERS
    assert Counter(o["status"] for o in orders) == {"pending": UNITS, "on_hold": BUYERS - UNITS}
    assert all(o["hold_reasons"] == ["stock_shortage"] for o in orders if o["status"] == "on_hold")
    assert (stock["on_hand"], stock["reserved"], stock["available"]) == (UNITS, UNITS, 0)
    assert events == {"stock.reserved": UNITS, "stock.shortage": BUYERS - UNITS}
    await ledger_matches_stock(room.hub, query)


@pytest.mark.parametrize("pipeline", [False, True], ids=["plain", "pipelined"])
async def test_256_buyers_racing_for_100_units_through_the_reservation_api_get_exactly_100(
    open_stockroom: Opener, query: Query, pipeline: bool
) -> None:
    """The SKU-sharded writer batches the rush (on PostgreSQL optionally pipelined, ADR 10);
    100 get 201, the rest 409, none oversold."""
    room = await open_stockroom(pipeline=pipeline)
    await put_stock(room.wms, 60)
    await put_stock(room.wms, 40, location_id="paris-store")

    responses = await asyncio.gather(
        *(
            room.wms.post(
                "/v1/inventory/reservations",
                json={"order_id": f"cart-{i:04d}", "lines": [{"sku": FLASH_SKU, "quantity": 1}]},
            )
            for i in range(BUYERS)
        )
    )
    stock = await stock_of(room.wms)
    held = await query(room.hub, "SELECT COUNT(*), SUM(quantity) FROM reservations")

    assert Counter(r.status_code for r in responses) == {201: UNITS, 409: BUYERS - UNITS}
    assert (stock["reserved"], stock["available"]) == (UNITS, 0)
    assert all(row["available"] == 0 for row in stock["locations"])
    assert [(int(n), int(q)) for n, q in held] == [(UNITS, UNITS)]
    await ledger_matches_stock(room.hub, query)


async def test_orders_and_carts_racing_for_one_sku_through_both_writers_get_exactly_100(
    open_stockroom: Opener, query: Query
) -> None:
    """Half the buyers place orders (the order writers lock the stock row), half reserve
    carts (the SKU writer, pipelined on PostgreSQL, whose carried state the orders keep
    changing under it): between them, exactly the 100 units are held."""
    room = await open_stockroom(pipeline=True)
    await put_stock(room.wms, UNITS)
    carts = [
        room.wms.post(
            "/v1/inventory/reservations",
            json={"order_id": f"cart-{i:04d}", "lines": [{"sku": FLASH_SKU, "quantity": 1}]},
        )
        for i in range(BUYERS // 2)
    ]
    orders = [
        room.shop.post("/v1/orders", json=teapot_order(f"MIXED-{i:04d}"))
        for i in range(BUYERS // 2)
    ]
    mixed = [c for pair in zip(carts, orders, strict=True) for c in pair]
    responses = await asyncio.gather(*mixed)
    cart_codes = Counter(r.status_code for r in responses[0::2])
    placed = Counter(r.json()["status"] for r in responses[1::2])
    stock = await stock_of(room.wms)
    held = await query(room.hub, "SELECT COUNT(*), SUM(quantity) FROM reservations")

    assert set(cart_codes) <= {201, 409}
    assert set(placed) <= {"pending", "on_hold"}
    assert cart_codes[201] + placed["pending"] == UNITS
    assert (stock["on_hand"], stock["reserved"], stock["available"]) == (UNITS, UNITS, 0)
    assert [(int(n), int(q)) for n, q in held] == [(UNITS, UNITS)]
    await ledger_matches_stock(room.hub, query)


async def test_cancelling_releases_and_shipping_commits_the_reservation(
    open_stockroom: Opener, query: Query
) -> None:
    """Cancel gives the unit back; ship takes it off the shelf; both are in the ledger."""
    room = await open_stockroom()
    await put_stock(room.wms, 10)
    kept = (await room.shop.post("/v1/orders", json=teapot_order("KEPT", 3))).json()
    dropped = (await room.shop.post("/v1/orders", json=teapot_order("DROPPED", 2))).json()

    after_orders = await stock_of(room.wms)
    await room.shop.post(f"/v1/orders/{dropped['id']}/status", json={"status": "cancelled"})
    await room.shop.post(f"/v1/orders/{kept['id']}/status", json={"status": "paid"})
    await room.shop.post(f"/v1/orders/{kept['id']}/status", json={"status": "shipped"})
    final = await stock_of(room.wms)
    causes = [c for (c,) in await query(room.hub, "SELECT cause FROM stock_ledger ORDER BY seq")]
    allocations = (await room.wms.get(f"/v1/inventory/reservations/{kept['id']}")).json()

    assert (after_orders["on_hand"], after_orders["reserved"]) == (10, 5)
    assert (final["on_hand"], final["reserved"], final["available"]) == (7, 0, 7)
    assert causes == ["snapshot", "order", "order", "cancellation", "shipment"]
    assert [(a["location_id"], a["quantity"], a["state"]) for a in allocations["data"]] == [
        ("berlin-dc", 3, "committed")
    ]
    await ledger_matches_stock(room.hub, query)


async def test_an_unpaid_reservation_expires_even_after_a_restart_and_a_paid_one_does_not(
    open_stockroom: Opener, start_hub: HubStarter, database_url: str, client_for: ClientFactory
) -> None:
    """The timer is a column: a new hub on the same database expires what the old one held."""
    room = await open_stockroom(unpaid_ttl=60)
    await put_stock(room.wms, 10)
    unpaid = (await room.shop.post("/v1/orders", json=teapot_order("UNPAID", 4))).json()
    paid = (await room.shop.post("/v1/orders", json=teapot_order("PAID", 1))).json()
    await room.shop.post(f"/v1/orders/{paid['id']}/status", json={"status": "paid"})
    await room.hub.stop()

    restarted = await start_hub(inventory_settings(database_url, unpaid_ttl=60))
    assert restarted.inventory is not None
    expired = await restarted.inventory.expire_due(utcnow() + timedelta(minutes=5))
    wms = client_for(restarted, WMS_KEY)
    stock = await stock_of(wms)
    states = {
        o["id"]: [
            a["state"]
            for a in (await wms.get(f"/v1/inventory/reservations/{o['id']}")).json()["data"]
        ]
        for o in (unpaid, paid)
    }

    assert expired == 1
    assert (stock["on_hand"], stock["reserved"]) == (10, 1)
    assert states == {unpaid["id"]: ["expired"], paid["id"]: ["held"]}


async def test_a_channel_set_to_reserve_on_payment_reserves_only_when_paid(
    open_stockroom: Opener,
) -> None:
    """Per-channel setting: a `paid` channel's pending orders take no stock until paid."""
    room = await open_stockroom(reserve_on={"web": "paid"})
    await put_stock(room.wms, 10)
    order = (await room.shop.post("/v1/orders", json=teapot_order("LATER", 2))).json()

    before = await stock_of(room.wms)
    await room.shop.post(f"/v1/orders/{order['id']}/status", json={"status": "paid"})
    after = await stock_of(room.wms)

    assert (before["reserved"], after["reserved"]) == (0, 2)


async def test_without_locations_orders_flow_untouched_and_inventory_routes_say_so(
    start_hub: HubStarter, database_url: str, client_for: ClientFactory, query: Query
) -> None:
    """Inventory is off until locations are configured: no stock rows, a 409 problem."""
    settings = inventory_settings(database_url).model_copy(update={"locations": []})
    hub = await start_hub(settings)
    shop, wms = client_for(hub, SHOP_KEY), client_for(hub, WMS_KEY)

    created = await shop.post("/v1/orders", json=teapot_order("PLAIN"))
    disabled = await wms.get(f"/v1/inventory/{FLASH_SKU}")

    assert created.status_code == 201
    assert created.json()["status"] == "pending"
    assert disabled.status_code == 409
    assert await query(hub, "SELECT COUNT(*) FROM reservations") == [(0,)]


async def test_a_process_killed_mid_reservation_leaves_no_trace_and_the_race_still_ends_at_100(
    open_stockroom: Opener, database_url: str, query: Query
) -> None:
    """SIGKILL between writing a reservation and committing it: the database forgets it,
    and 256 buyers afterwards still get exactly the 100 units."""
    room = await open_stockroom()
    await put_stock(room.wms, UNITS)
    doomed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HALF_DONE_RESERVATION, database_url, stdout=asyncio.subprocess.PIPE
    )
    assert doomed.stdout is not None
    said = await asyncio.wait_for(doomed.stdout.readline(), timeout=60)
    doomed.send_signal(signal.SIGKILL)
    await doomed.wait()

    responses = await asyncio.gather(
        *(
            room.wms.post(
                "/v1/inventory/reservations",
                json={"order_id": f"cart-{i:04d}", "lines": [{"sku": FLASH_SKU, "quantity": 1}]},
            )
            for i in range(BUYERS)
        )
    )
    stock = await stock_of(room.wms)
    doomed_rows = await query(
        room.hub, "SELECT COUNT(*) FROM reservations WHERE order_id = 'doomed'"
    )

    assert said == b"written, not committed\n"
    assert doomed.returncode == -signal.SIGKILL
    assert doomed_rows == [(0,)]
    assert Counter(r.status_code for r in responses) == {201: UNITS, 409: BUYERS - UNITS}
    assert (stock["on_hand"], stock["reserved"], stock["available"]) == (UNITS, UNITS, 0)
    await ledger_matches_stock(room.hub, query)


async def test_shopify_webhooks_reserve_on_create_confirm_on_payment_and_release_on_cancel(
    open_stockroom: Opener, client_for: ClientFactory, query: Query
) -> None:
    """The ingest path: created unpaid (expiring hold), paid (kept), cancelled (given back);
    a second order fulfilled takes its goods off the shelf."""
    room = await open_stockroom()
    shop = ShopifyShop(client_for(room.hub))
    factory = OrderFactory(seed=2029)
    cancelled, shipped = factory.new_order(), factory.new_order()
    for order in (cancelled, shipped):
        order["financial_status"] = "pending"
    skus = {li["sku"] for o in (cancelled, shipped) for li in o["line_items"] if li["sku"]}
    for sku in skus:
        await room.wms.put(f"/v1/inventory/{sku}", json={"location_id": "berlin-dc", "on_hand": 50})

    async def holds(order: dict[str, Any]) -> list[tuple[str, bool]]:
        rows = await query(
            room.hub, "SELECT id FROM orders WHERE external_id = :e", e=str(order["id"])
        )
        found = (await room.wms.get(f"/v1/inventory/reservations/{rows[0][0]}")).json()["data"]
        return sorted({(r["state"], r["expires_at"] is not None) for r in found})

    async def totals() -> tuple[int, int]:
        stocks = [await stock_of(room.wms, sku) for sku in skus]
        return sum(s["on_hand"] for s in stocks), sum(s["reserved"] for s in stocks)

    def units(order: dict[str, Any]) -> int:
        return sum(li["quantity"] for li in order["line_items"] if li["sku"])

    wanted = units(cancelled) + units(shipped)
    for order in (cancelled, shipped):
        assert (await shop.send("orders/create", order)).status_code == 200
    on_create = (await holds(cancelled), await totals())
    paid = pay(cancelled)
    await shop.send("orders/paid", paid)
    on_payment = await holds(cancelled)
    await shop.send("orders/cancelled", cancel(paid))
    paid_too = pay(shipped)
    await shop.send("orders/paid", paid_too)
    await shop.send("orders/fulfilled", fulfill(paid_too))
    shipped_units = units(shipped)

    assert on_create == ([("held", True)], (50 * len(skus), wanted))
    assert on_payment == [("held", False)]
    assert await holds(cancelled) == [("released", False)]
    assert await holds(shipped) == [("committed", False)]
    assert await totals() == (50 * len(skus) - shipped_units, 0)
    await ledger_matches_stock(room.hub, query)


async def test_releasing_a_stock_hold_tries_again_and_holds_again_if_still_short(
    open_stockroom: Opener,
) -> None:
    """Released by hand while still short, an order is held again; the delivery that
    covers it releases it by itself (routing retries orders held for that SKU)."""
    room = await open_stockroom()
    await put_stock(room.wms, 1)
    order = (await room.shop.post("/v1/orders", json=teapot_order("BIG", 3))).json()
    too_early = await room.shop.post(f"/v1/orders/{order['id']}/release")
    await put_stock(room.wms, 5)
    released = (await room.shop.get(f"/v1/orders/{order['id']}")).json()

    assert order["status"] == "on_hold"
    assert too_early.json()["status"] == "on_hold"
    assert released["status"] == "pending"
    assert (await stock_of(room.wms))["reserved"] == 3


async def test_asking_again_for_the_same_cart_returns_its_hold_instead_of_a_second_one(
    open_stockroom: Opener,
) -> None:
    """A retried reservation (say after a timeout) is safe: one hold per order id."""
    room = await open_stockroom()
    await put_stock(room.wms, 10)
    body = {"order_id": "cart-retry", "lines": [{"sku": FLASH_SKU, "quantity": 4}]}

    first, again = [await room.wms.post("/v1/inventory/reservations", json=body) for _ in "12"]
    released = await room.wms.delete(
        "/v1/inventory/reservations/cart-retry", params={"sku": FLASH_SKU}
    )

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert released.json() == {"order_id": "cart-retry", "released": 1}
    assert (await stock_of(room.wms))["reserved"] == 0


async def test_the_database_itself_refuses_an_oversold_row(
    open_stockroom: Opener, query: Query
) -> None:
    """The last line of defence: a CHECK constraint, whatever code above it does."""
    room = await open_stockroom()
    await put_stock(room.wms, 3)
    refused: list[str] = []
    for sql in (
        "UPDATE stock SET reserved = 4",
        "UPDATE stock SET reserved = -1",
        "UPDATE stock SET on_hand = 2, reserved = 3",
    ):
        try:
            async with room.hub.db.write() as conn:
                await conn.execute(text(sql))
        except IntegrityError:
            refused.append(sql)

    assert len(refused) == 3
    assert await query(room.hub, "SELECT on_hand, reserved FROM stock") == [(3, 0)]


async def test_256_buyers_with_the_hub_killed_mid_race_and_restarted_get_exactly_100(
    database_url: str, tmp_path: Path
) -> None:
    """`ordersync serve` SIGKILLed while buyers race, then restarted; buyers retry with
    their cart id. Exactly 100 carts hold a unit, one each; the ledger agrees."""
    config = tmp_path / "hub.yaml"
    settings = inventory_settings(database_url).model_dump(mode="json", exclude={"channels"})
    settings["api_keys"] = [{"id": "wms", "key": WMS_KEY, "scopes": ["inventory:write"]}]
    config.write_text(yaml.safe_dump({**settings, "log_level": "WARNING"}))
    hub = HubProcess(config, free_port(), log_path=tmp_path / "hub.log")
    hub.start()
    answered: Counter[int] = Counter()
    half_way = asyncio.Event()
    interrupted: set[int] = set()
    try:
        await hub.wait_ready()
        async with httpx.AsyncClient(
            base_url=hub.url, headers={"Authorization": f"Bearer {WMS_KEY}"}, timeout=30
        ) as client:
            first = await client.put(
                f"/v1/inventory/{FLASH_SKU}", json={"location_id": "berlin-dc", "on_hand": UNITS}
            )
            assert first.status_code == 200, first.text

            async def buyer(i: int) -> None:
                body = {"order_id": f"cart-{i:04d}", "lines": [{"sku": FLASH_SKU, "quantity": 1}]}
                pause = 0.05
                while True:
                    try:
                        response = await client.post("/v1/inventory/reservations", json=body)
                    except httpx.TransportError:  # the hub is down: try again, same cart
                        interrupted.add(i)
                        # Back off (as a real client would): 256 buyers retrying every 50 ms
                        # would starve the restarting hub of the CPU it needs to come up.
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, 1.0)
                        continue
                    answered[response.status_code] += 1
                    if sum(answered.values()) >= BUYERS // 8:
                        half_way.set()
                    return

            async def crash_and_restart() -> None:
                await half_way.wait()
                hub.kill()
                hub.start()
                await hub.wait_ready()

            await asyncio.gather(crash_and_restart(), *(buyer(i) for i in range(BUYERS)))
    finally:
        hub.terminate()
    db = Database(database_url)
    try:
        async with db.read() as conn:
            stock = (await conn.execute(text("SELECT on_hand, reserved FROM stock"))).all()
            holds = (
                await conn.execute(
                    text("SELECT COUNT(*), COUNT(DISTINCT order_id) FROM reservations")
                )
            ).all()
            ledger = (
                await conn.execute(
                    text("SELECT SUM(on_hand_delta), SUM(reserved_delta) FROM stock_ledger")
                )
            ).all()
    finally:
        await db.dispose()

    assert interrupted  # the crash did cut buyers off mid-request
    assert answered == {201: UNITS, 409: BUYERS - UNITS}
    assert [tuple(r) for r in stock] == [(UNITS, UNITS)]
    assert [tuple(r) for r in holds] == [(UNITS, UNITS)]
    assert [tuple(int(v) for v in r) for r in ledger] == [(UNITS, UNITS)]


async def test_stock_events_are_stored_for_subscribers_only_and_the_ledger_records_every_one(
    open_stockroom: Opener, query: Query
) -> None:
    """An ERP subscribes to `stock.reserved`: those are stored with a delivery each; the
    shortage nobody subscribes to is not stored (`record_unrouted_events` off, the
    default), and the ledger has every movement all the same."""
    erp = {
        "id": "erp",
        "url": "http://127.0.0.1:9/stock",  # nothing listens: deliveries stay pending
        "secret": "whsec_" + base64.b64encode(b"erp-signing-secret-32-bytes-long").decode(),
        "events": ["stock.reserved"],
    }
    room = await open_stockroom(destinations=[erp])
    await put_stock(room.wms, 3)
    for i in range(4):  # the fourth finds nothing left
        response = await room.shop.post("/v1/orders", json=teapot_order(f"SUB-{i}"))
        assert response.status_code == 201, response.text

    events = await query(
        room.hub, "SELECT type, order_id FROM events WHERE type LIKE 'stock.%' ORDER BY seq"
    )
    deliveries = await query(
        room.hub,
        "SELECT e.type FROM deliveries d JOIN events e ON e.seq = d.event_seq"
        " WHERE d.destination_id = 'erp'",
    )
    ledger = await query(
        room.hub, "SELECT cause, reserved_delta FROM stock_ledger WHERE reserved_delta <> 0"
    )
    assert [t for t, _ in events] == ["stock.reserved"] * 3
    assert [t for (t,) in deliveries] == ["stock.reserved"] * 3
    assert sorted(ledger) == [("order", 1)] * 3
    await ledger_matches_stock(room.hub, query)
