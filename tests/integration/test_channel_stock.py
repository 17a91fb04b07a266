"""Channel stock publishing and stock feeds through a running hub (SQLite and PostgreSQL):
stock changes reach a Shopify and a WooCommerce stock endpoint (the recorder simulator),
bursts are coalesced, stale feeds publish 0, CSV feeds apply whole or not at all, and
`inventory.low` fires once per crossing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from aiohttp import web
from sqlalchemy import text

from ordersync.adapters.db import migrate
from ordersync.adapters.db.database import Database
from ordersync.bootstrap import Hub
from ordersync.config import Settings, settings_from_mapping
from ordersync.simulators.stock_recorder import StockRecorder
from ordersync.testing.cli import run_cli_streams, run_process

from .conftest import SHOP_SECRET, ClientFactory, Eventually, HubStarter, Query

WMS_KEY = "sk_test_wms_teahouse_5c21"
SHOP_KEY = "sk_test_shop_teahouse_77e0"
TEAPOT = "BLUE-TEAPOT"
TEAPOT_ITEM = "808950810"  # its Shopify inventory_item_id
TEAPOT_PRODUCT = "4711"  # its WooCommerce product id
SHOPIFY_LOCATION = 655441491


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[StockRecorder, str]]:
    """The stock endpoints of a Shopify shop and a WooCommerce store, on a free port."""
    rec = StockRecorder()
    runner = web.AppRunner(rec.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield rec, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def teahouse_settings(
    database_url: str, base: str, *, publishing: dict[str, Any] | None = None, **inventory: Any
) -> Settings:
    pacing = {"debounce": 0.05, "max_wait": 0.5, "rate": 100, "burst": 10}
    pacing.update(publishing or {})
    return settings_from_mapping(
        {
            "database_url": database_url,
            "channels": [
                {
                    "id": "shop-eu",
                    "kind": "shopify",
                    "secret": SHOP_SECRET,
                    "access_token": "shpat_teahouse_stock",
                    "admin_url": base,
                    "stock_publishing": {
                        "location_id": SHOPIFY_LOCATION,
                        "items": {TEAPOT: int(TEAPOT_ITEM)},
                        **pacing,
                    },
                },
                {
                    "id": "woo-eu",
                    "kind": "woocommerce",
                    "secret": "woo_webhook_secret",
                    "store_url": base,
                    "consumer_key": "ck_teahouse",
                    "consumer_secret": "cs_teahouse",
                    "stock_publishing": {
                        "ratio": "0.5",
                        "locations": ["berlin-dc"],
                        "items": {TEAPOT: int(TEAPOT_PRODUCT)},
                        **pacing,
                    },
                },
            ],
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
            ],
            "inventory": {"expiry_interval": 3600, "publish_poll_interval": 0.05, **inventory},
        },
        env={},
    )


@dataclass
class Teahouse:
    hub: Hub
    wms: httpx.AsyncClient
    shop: httpx.AsyncClient
    recorder: StockRecorder

    def shopify(self) -> int | None:
        return self.recorder.latest("shopify", TEAPOT_ITEM)

    def woo(self) -> int | None:
        return self.recorder.latest("woocommerce", TEAPOT_PRODUCT)


Opener = Callable[..., Awaitable[Teahouse]]


@pytest.fixture
def open_teahouse(
    start_hub: HubStarter,
    database_url: str,
    client_for: ClientFactory,
    recorder: tuple[StockRecorder, str],
) -> Opener:
    async def start(publishing: dict[str, Any] | None = None, **inventory: Any) -> Teahouse:
        rec, base = recorder
        settings = teahouse_settings(database_url, base, publishing=publishing, **inventory)
        hub = await start_hub(settings)
        return Teahouse(hub, client_for(hub, WMS_KEY), client_for(hub, SHOP_KEY), rec)

    return start


def teapot_order(external_id: str, quantity: int) -> dict[str, Any]:
    return {
        "channel_id": "web",
        "external_id": external_id,
        "currency": "EUR",
        "totals": {"total": f"{24 * quantity}.00"},
        "lines": [
            {"sku": TEAPOT, "name": "Blue teapot", "quantity": quantity, "unit_price": "24.00"}
        ],
    }


async def count(wms: httpx.AsyncClient, location: str, on_hand: int, key: str) -> None:
    response = await wms.put(
        f"/v1/inventory/{TEAPOT}",
        json={"location_id": location, "on_hand": on_hand},
        headers={"Idempotency-Key": key},
    )
    assert response.status_code == 200, response.text


async def markers_drained(hub: Hub, query: Query) -> None:
    """Wait (10 s at most) until every "stock changed" marker is settled."""
    for _ in range(500):
        if await query(hub, "SELECT COUNT(*) FROM stock_dirty") == [(0,)]:
            return
        await asyncio.sleep(0.02)
    pytest.fail("stock_dirty markers were never settled")


# ---- publishing ----------------------------------------------------------------------------


async def test_an_order_reservation_reaches_every_channel_as_its_new_ats(
    open_teahouse: Opener, eventually: Eventually
) -> None:
    """A WMS count, then an order for 3 teapots: Shopify and WooCommerce hear the new ATS."""
    t = await open_teahouse()
    await count(t.wms, "berlin-dc", 10, "wms-count-1")
    await count(t.wms, "paris-store", 4, "wms-count-2")
    await eventually(lambda: t.shopify() == 14 and t.woo() == 5, "the counts published")

    created = await t.shop.post("/v1/orders", json=teapot_order("WEB-1001", 3))
    assert created.status_code == 201, created.text
    await eventually(lambda: t.shopify() == 11 and t.woo() == 3, "the reservation published")

    shopify = [r for r in t.recorder.records if r.platform == "shopify"]
    assert {r.location for r in shopify} == {str(SHOPIFY_LOCATION)}
    assert t.shopify() == 11  # all locations
    assert t.woo() == 3  # berlin-dc only (7 available), half of it, rounded down


async def test_a_burst_of_fifty_changes_ends_in_few_pushes_with_the_final_value(
    open_teahouse: Opener, eventually: Eventually, query: Query
) -> None:
    """Fifty one-unit reservations in a row: each channel gets a handful of pushes, the last
    of which is the stock after all fifty."""
    t = await open_teahouse(publishing={"debounce": 1.0, "max_wait": 30.0})
    await count(t.wms, "berlin-dc", 80, "wms-burst-count")
    await eventually(lambda: t.shopify() == 80 and t.woo() == 40, "the count published")
    await markers_drained(t.hub, query)
    before = len(t.recorder.records)

    for i in range(50):
        response = await t.wms.post(
            "/v1/inventory/reservations",
            json={"order_id": f"cart-{i}", "lines": [{"sku": TEAPOT, "quantity": 1}]},
        )
        assert response.status_code == 201, response.text
    await eventually(lambda: t.shopify() == 30 and t.woo() == 15, "the burst published")
    await markers_drained(t.hub, query)

    pushes = t.recorder.records[before:]
    assert 2 <= len(pushes) <= 6  # one or two per channel, not fifty
    assert t.shopify() == 30
    assert t.woo() == 15


async def test_a_stale_feed_publishes_zero_until_the_next_count(
    open_teahouse: Opener, eventually: Eventually
) -> None:
    """With `stale_after: 1`, a count nobody repeats drops to 0 on the channels; the same
    count sent again (unchanged) makes it fresh and sellable again."""
    t = await open_teahouse(publishing={"stale_after": 1.0})
    await count(t.wms, "berlin-dc", 9, "wms-stale-1")
    await eventually(lambda: t.shopify() == 0 and t.woo() == 0, "the stale stock published")

    await count(t.wms, "berlin-dc", 9, "wms-stale-2")
    await eventually(lambda: t.shopify() == 9 and t.woo() == 4, "the fresh count published")

    assert t.shopify() == 9


# ---- CSV feeds -----------------------------------------------------------------------------

CSV = {"Content-Type": "text/csv"}


async def teapot_stock(wms: httpx.AsyncClient) -> dict[str, Any]:
    response = await wms.get(f"/v1/inventory/{TEAPOT}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return {loc["location_id"]: loc["on_hand"] for loc in body["locations"]}


async def test_a_csv_snapshot_applies_every_row_and_a_replay_changes_nothing(
    open_teahouse: Opener, query: Query
) -> None:
    """A feed of two counts applies both; the same feed again is answered from storage."""
    t = await open_teahouse()
    feed = (
        b"sku,location_id,on_hand,safety_stock\n"
        b"BLUE-TEAPOT,berlin-dc,12,2\n"
        b"BLUE-TEAPOT,paris-store,3,\n"
    )
    headers = {**CSV, "Idempotency-Key": "wms-feed-0001"}

    first = await t.wms.post("/v1/inventory/feeds?mode=snapshot", content=feed, headers=headers)
    again = await t.wms.post("/v1/inventory/feeds?mode=snapshot", content=feed, headers=headers)
    other = await t.wms.post(
        "/v1/inventory/feeds?mode=snapshot", content=feed + b"BLUE-TEAPOT,x,1\n", headers=headers
    )

    assert first.status_code == 200, first.text
    assert first.json()["rows"] == 2
    assert again.status_code == 200
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.content == first.content
    assert other.status_code == 422
    assert await teapot_stock(t.wms) == {"berlin-dc": 12, "paris-store": 3}
    ledger = await query(t.hub, "SELECT COUNT(*) FROM stock_ledger WHERE sku = :s", s=TEAPOT)
    assert ledger == [(2,)]
    fed = await query(t.hub, "SELECT COUNT(*) FROM stock WHERE fed_us IS NOT NULL")
    assert fed == [(2,)]


async def test_a_csv_delta_feed_adds_to_the_counts(open_teahouse: Opener) -> None:
    """Delta mode adds each row (repeated rows add up)."""
    t = await open_teahouse()
    await count(t.wms, "berlin-dc", 10, "wms-delta-base")
    feed = b"sku,location_id,delta\nBLUE-TEAPOT,berlin-dc,5\nBLUE-TEAPOT,berlin-dc,-2\n"

    response = await t.wms.post("/v1/inventory/feeds?mode=delta", content=feed, headers=CSV)

    assert response.status_code == 200, response.text
    assert await teapot_stock(t.wms) == {"berlin-dc": 13}


async def test_a_csv_feed_with_bad_rows_is_refused_whole_with_a_report(
    open_teahouse: Opener, query: Query
) -> None:
    """Every bad row is named by line, column and code; not even the good rows apply."""
    t = await open_teahouse()
    await count(t.wms, "berlin-dc", 10, "wms-bad-base")
    await t.wms.post(
        "/v1/inventory/reservations",
        json={"order_id": "cart-held", "lines": [{"sku": TEAPOT, "quantity": 6}]},
    )
    feed = (
        b"sku,location_id,on_hand\n"
        b"GREEN-CUP,berlin-dc,40\n"  # good
        b"GREEN-CUP,lisbon-dc,4\n"  # no such location
        b"SAUCER,berlin-dc,many\n"  # not a number
        b"SAUCER,paris-store,-1\n"  # negative count
        b"GREEN-CUP,berlin-dc,41\n"  # counted twice
    )
    below_reserved = b"sku,location_id,on_hand\nGREEN-CUP,berlin-dc,40\nBLUE-TEAPOT,berlin-dc,5\n"

    bad = await t.wms.post("/v1/inventory/feeds", content=feed, headers=CSV)
    conflict = await t.wms.post("/v1/inventory/feeds", content=below_reserved, headers=CSV)
    json_body = await t.wms.post("/v1/inventory/feeds", json={"sku": TEAPOT})
    no_scope = await t.shop.post("/v1/inventory/feeds", content=feed, headers=CSV)
    no_header = await t.wms.post("/v1/inventory/feeds", content=b"sku,where\nA,B\n", headers=CSV)

    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert bad.json()["type"].endswith("/invalid_feed")
    assert [(e["line"], e["column"], e["code"]) for e in bad.json()["errors"]] == [
        (3, "location_id", "unknown_location"),
        (4, "on_hand", "not_an_integer"),
        (5, "on_hand", "negative"),
        (6, None, "duplicate_row"),
    ]
    assert conflict.status_code == 422
    assert [(e["line"], e["code"]) for e in conflict.json()["errors"]] == [(3, "stock_conflict")]
    assert json_body.status_code == 415
    assert no_scope.status_code == 403
    assert no_header.status_code == 422
    assert {e["code"] for e in no_header.json()["errors"]} == {"missing_column", "unknown_column"}
    assert await query(t.hub, "SELECT COUNT(*) FROM stock WHERE sku = 'GREEN-CUP'") == [(0,)]
    assert await teapot_stock(t.wms) == {"berlin-dc": 10}


async def test_the_stock_import_command_applies_a_feed_file_once(
    open_teahouse: Opener, tmp_path: Path
) -> None:
    """`ordersync stock import FILE --mode snapshot` applies it; running it again is a no-op;
    a bad file exits 1 with the rows refused."""
    t = await open_teahouse()
    settings = t.hub.settings
    config = tmp_path / "stock.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database_url": settings.database_url,
                "locations": [loc.model_dump(mode="json") for loc in settings.locations],
            }
        )
    )
    good = tmp_path / "counts.csv"
    good.write_text("sku,location_id,on_hand\nBLUE-TEAPOT,paris-store,7\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("sku,location_id,on_hand\nBLUE-TEAPOT,lisbon-dc,7\n")

    # The suite's one real `python -m ordersync stock import` process: this first run, on SQLite.
    on_sqlite = settings.database_url.startswith("sqlite")
    rc1, out1 = await ordersync(config, "stock", "import", str(good), "--json", process=on_sqlite)
    rc2, out2 = await ordersync(config, "stock", "import", str(good), "--json")
    rc3, out3 = await ordersync(config, "stock", "import", str(bad), "--json")

    assert rc1 == 0, out1
    assert orjson.loads(out1)["replayed"] is False
    assert rc2 == 0, out2
    assert orjson.loads(out2)["replayed"] is True
    assert rc3 == 1, out3
    assert orjson.loads(out3)["errors"][0]["code"] == "unknown_location"
    assert await teapot_stock(t.wms) == {"paris-store": 7}


async def ordersync(config: Path, *args: str, process: bool = False) -> tuple[int, bytes]:
    """`ordersync *args --config config` in this process (or as a real child process): the
    exit code and stdout, with stderr after it on a failure."""
    run = run_process if process else run_cli_streams
    code, out, err = await run(*args, "--config", str(config))
    return code, out if code == 0 else out + err


# ---- inventory.low ---------------------------------------------------------------------------


async def test_inventory_low_fires_once_per_crossing_of_the_threshold(
    open_teahouse: Opener, query: Query
) -> None:
    """Threshold 3 across all locations: 5 -> 4 -> 3 (alert) -> 2 (quiet); back to 5, then
    down to 3 again (a second alert)."""
    t = await open_teahouse(low_stock_threshold=3, record_unrouted_events=True)
    await count(t.wms, "berlin-dc", 3, "wms-low-1")
    await count(t.wms, "paris-store", 2, "wms-low-2")

    async def hold(cart: str, quantity: int) -> None:
        response = await t.wms.post(
            "/v1/inventory/reservations",
            json={"order_id": cart, "lines": [{"sku": TEAPOT, "quantity": quantity}]},
        )
        assert response.status_code == 201, response.text

    for cart in ("cart-a", "cart-b", "cart-c"):
        await hold(cart, 1)
    for cart in ("cart-a", "cart-b", "cart-c"):
        released = await t.wms.delete(f"/v1/inventory/reservations/{cart}?sku={TEAPOT}")
        assert released.status_code == 200
    await hold("cart-d", 2)

    rows = await query(t.hub, "SELECT body FROM events WHERE type = 'inventory.low'")
    alerts = [orjson.loads(bytes(r[0]))["data"] for r in rows]
    assert [(a["sku"], a["available"], a["location_id"]) for a in alerts] == [
        (TEAPOT, 3, None),
        (TEAPOT, 3, None),
    ]


# ---- migration 0008 --------------------------------------------------------------------------


async def test_upgrading_keeps_rows_fed_by_their_last_feed_movement(database_url: str) -> None:
    """Rows that existed before 0008 take the time of their last snapshot or adjustment from
    the ledger (not of a later reservation); a row no feed ever touched stays unfed."""
    db = Database(database_url)
    try:
        await migrate.upgrade(db, "0007")
        async with db.write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO stock (sku, location_id, on_hand, reserved, safety_stock,"
                    " version, updated_us) VALUES ('BLUE-TEAPOT', 'berlin-dc', 9, 2, 0, 3, 900),"
                    " ('GREEN-CUP', 'berlin-dc', 0, 0, 0, 0, 100)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO stock_ledger (sku, location_id, cause, on_hand_delta,"
                    " reserved_delta, at_us) VALUES"
                    " ('BLUE-TEAPOT', 'berlin-dc', 'snapshot', 10, 0, 100),"
                    " ('BLUE-TEAPOT', 'berlin-dc', 'adjustment', -1, 0, 500),"
                    " ('BLUE-TEAPOT', 'berlin-dc', 'order', 0, 2, 900)"
                )
            )

        await migrate.upgrade(db)

        async with db.read() as conn:
            rows = await conn.execute(text("SELECT sku, fed_us FROM stock ORDER BY sku"))
            fed = [tuple(r) for r in rows]
        assert fed == [("BLUE-TEAPOT", 500), ("GREEN-CUP", None)]
    finally:
        await db.dispose()
