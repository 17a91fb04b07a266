"""`ordersync stock check` on SQLite and PostgreSQL: the ledger, the stock table and the
held reservations agree after real movements (exit 0), and a row changed behind the
hub's back is reported, alone, with exit code 1. The command runs in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from sqlalchemy import text

from ordersync.testing.cli import run_cli_streams

from .conftest import ClientFactory, HubStarter
from .test_inventory import (
    FLASH_SKU,
    SHOP_KEY,
    WMS_KEY,
    Stockroom,
    inventory_settings,
    put_stock,
    teapot_order,
)


@pytest.fixture
async def room(start_hub: HubStarter, database_url: str, client_for: ClientFactory) -> Stockroom:
    """Counts at two locations and an unpaid order holding 3 teapots at berlin-dc."""
    hub = await start_hub(inventory_settings(database_url))
    room = Stockroom(hub, client_for(hub, WMS_KEY), client_for(hub, SHOP_KEY))
    await put_stock(room.wms, 10)
    await put_stock(room.wms, 4, location_id="paris-store")
    created = await room.shop.post("/v1/orders", json=teapot_order("HELD", 3))
    assert created.status_code == 201, created.text
    return room


@pytest.fixture
def config(room: Stockroom, tmp_path: Path) -> Path:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump({"database_url": room.hub.settings.database_url}))
    return path


async def check(config: Path, *args: str) -> tuple[int, str]:
    """`ordersync stock check *args -c config`: (exit code, stdout, stderr after it)."""
    code, out, err = await run_cli_streams("stock", "check", *args, "-c", str(config))
    return code, (out + err).decode()


async def check_json(config: Path) -> tuple[int, dict[str, Any]]:
    code, out = await check(config, "--json")
    report: dict[str, Any] = orjson.loads(out)
    return code, report


async def corrupt(room: Stockroom, sql: str) -> None:
    """Change the database directly, bypassing the hub (and so the ledger)."""
    async with room.hub.db.write() as conn:
        await conn.execute(text(sql), {"sku": FLASH_SKU})


async def test_after_real_movements_everything_agrees(room: Stockroom, config: Path) -> None:
    code, out = await check(config)
    json_code, report = await check_json(config)

    assert code == 0, out
    assert out.strip() == "ledger, stock and holds agree: 2 rows"
    assert json_code == 0
    assert report == {"rows": 2, "agree": True, "mismatches": []}


async def test_a_stock_row_changed_behind_the_hubs_back_is_reported_alone(
    room: Stockroom, config: Path
) -> None:
    """A direct UPDATE of paris-store's on_hand: that row, and only it, with exit code 1."""
    await corrupt(
        room,
        "UPDATE stock SET on_hand = on_hand + 5 WHERE sku = :sku AND location_id = 'paris-store'",
    )

    code, report = await check_json(config)
    table_code, table = await check(config)

    assert code == table_code == 1
    assert report == {
        "rows": 2,
        "agree": False,
        "mismatches": [
            {
                "sku": FLASH_SKU,
                "location_id": "paris-store",
                "on_hand": 9,
                "ledger_on_hand": 4,
                "reserved": 0,
                "ledger_reserved": 0,
                "held": 0,
                "problems": ["on_hand != ledger"],
            }
        ],
    }
    assert "paris-store" in table
    assert "berlin-dc" not in table


async def test_holds_and_missing_stock_rows_are_checked_too(room: Stockroom, config: Path) -> None:
    """reserved is compared with the held reservations; a location the ledger knows with
    no stock row is a mismatch, not a silent zero."""
    await corrupt(room, "UPDATE reservations SET quantity = 2 WHERE sku = :sku")
    await corrupt(room, "DELETE FROM stock WHERE sku = :sku AND location_id = 'paris-store'")

    code, report = await check_json(config)

    assert code == 1
    assert report["rows"] == 2
    assert [
        (m["location_id"], m["on_hand"], m["reserved"], m["held"], m["problems"])
        for m in report["mismatches"]
    ] == [
        ("berlin-dc", 10, 3, 2, ["reserved != held"]),
        ("paris-store", None, None, 0, ["no stock row"]),
    ]
