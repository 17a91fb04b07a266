"""`ordersync import FILE` against a SQLite hub: each error policy, the per-row error
report (table and JSON), idempotent re-imports. The command runs in this process
(`run_cli_streams`), except in the table test, the suite's one real `python -m ordersync
import` process."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from openpyxl import Workbook
from sqlalchemy import text

from ordersync.bootstrap import build_hub
from ordersync.config import settings_from_mapping
from ordersync.testing.cli import run_cli_streams, run_process

MAPPING = {
    "format": "csv",
    "group_by": "order_no",
    "fields": {
        "external_id": "order_no",
        "status": {"path": "status", "transform": ["strip", "upper"], "default": "PAID"},
        "total": "order_total",
        "customer.name": "buyer",
        "updated_at": {
            "path": "changed",
            "transform": "datetime",
            "format": "%Y-%m-%d %H:%M",
            "timezone": "+08:00",
        },
    },
    "lines": {"fields": {"sku": "sku", "quantity": "qty", "unit_price": "price"}},
    "statuses": {
        "PAID": {"status": "paid", "payment": "paid"},
        "NEW": {"status": "pending", "payment": "pending"},
    },
}
GOOD_ROWS = (
    "order_no,status,buyer,order_total,sku,qty,price,changed\n"
    "B-1001,paid,周先生,30.00,TEA-1,1,10.00,2026-11-22 12:00\n"
    "B-1001,paid,周先生,30.00,TEA-2,2,10.00,2026-11-22 12:00\n"
    "B-1002,new,,5.00,,1,5.00,2026-11-22 12:05\n"
)
BAD_ROWS = (
    "B-1003,paid,钱女士,-3.00,TEA-3,1,3.00,2026-11-22 12:06\n"
    "B-1004,lost,孙先生,3.00,TEA-3,1,3.00,2026-11-22 12:07\n"
    "B-1005,paid,李先生,3.00,TEA-3,many,3.00,2026-11-22 12:08\n"
)


@pytest.fixture
def hub_config(tmp_path: Path) -> Path:
    mapping = tmp_path / "erp.yaml"
    mapping.write_text(yaml.safe_dump(MAPPING, allow_unicode=True), encoding="utf-8")
    config = tmp_path / "hub.yaml"
    channel = {"id": "erp-inhouse", "kind": "generic", "mapping": str(mapping)}
    data = {"database_url": f"sqlite:///{tmp_path}/hub.db", "channels": [channel]}
    config.write_text(json.dumps(data), encoding="utf-8")
    return config


def csv_file(tmp_path: Path, rows: str, name: str = "orders.csv") -> Path:
    path = tmp_path / name
    path.write_text(rows, encoding="utf-8")
    return path


async def run_import(
    config: Path, file: Path, *args: str, process: bool = False
) -> tuple[int, str, str]:
    """`ordersync import FILE ...`: (exit code, stdout, stderr), in this process or not."""
    run = run_process if process else run_cli_streams
    code, out, err = await run(
        "import", str(file), "--channel", "erp-inhouse", *args, "--config", str(config)
    )
    return code, out.decode(), err.decode()


async def stored(config: Path) -> tuple[dict[str, tuple[str, str]], list[tuple[str, str | None]]]:
    """(external_id -> (status, payment_status), [(inbox topic, outcome)])."""
    raw = yaml.safe_load(await asyncio.to_thread(config.read_text))
    settings = settings_from_mapping(raw, env={})
    hub = build_hub(settings)
    await hub.start(dispatch=False, pull=False)
    try:
        async with hub.db.read() as conn:
            rows = await conn.execute(
                text("SELECT external_id, status, payment_status FROM orders")
            )
            orders = {e: (s, p) for e, s, p in rows}
            inbox = await conn.execute(text("SELECT topic, outcome FROM inbox ORDER BY topic"))
            return orders, [(t, o) for t, o in inbox]
    finally:
        await hub.stop()


def report(out: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(out)
    return found


async def test_a_clean_file_is_imported_and_a_second_import_changes_nothing(
    hub_config: Path, tmp_path: Path
) -> None:
    """Rows grouped into orders land once; re-importing the file is all duplicates."""
    file = csv_file(tmp_path, GOOD_ROWS)

    code, out, err = await run_import(hub_config, file, "--json")
    again_code, again, _ = await run_import(hub_config, file, "--json")

    assert code == 0, err
    assert report(out)["summary"]["outcome_created"] == 2
    assert report(out)["errors"] == []
    assert again_code == 0
    assert report(again)["summary"]["outcome_duplicate"] == 2
    orders, _ = await stored(hub_config)
    assert orders == {"B-1001": ("paid", "paid"), "B-1002": ("pending", "pending")}


async def test_reject_file_imports_nothing_when_any_row_is_bad(
    hub_config: Path, tmp_path: Path
) -> None:
    """One bad row refuses the whole file; every bad row is reported with field and problem."""
    file = csv_file(tmp_path, GOOD_ROWS + BAD_ROWS)

    code, out, _ = await run_import(hub_config, file, "--on-error", "reject-file", "--json")

    assert code == 1
    errors = report(out)["errors"]
    assert [(e["row"], e["field"]) for e in errors] == [
        (4, "order_total"),
        (5, "status"),
        (6, "qty"),
    ]
    assert "negative" in errors[0]["problem"]
    assert await stored(hub_config) == ({}, [])


async def test_skip_bad_rows_imports_the_good_orders_and_reports_the_rest(
    hub_config: Path, tmp_path: Path
) -> None:
    """Good orders land, bad rows are only reported, and the command succeeds."""
    file = csv_file(tmp_path, GOOD_ROWS + BAD_ROWS)

    code, out, _ = await run_import(hub_config, file, "--on-error", "skip-bad-rows", "--json")

    assert code == 0
    summary = report(out)["summary"]
    assert (summary["orders"], summary["bad_orders"], summary["imported"]) == (5, 3, 2)
    orders, inbox = await stored(hub_config)
    assert set(orders) == {"B-1001", "B-1002"}
    assert [t for t, _ in inbox] == ["import", "import"]


async def test_reject_bad_rows_imports_good_orders_and_records_the_bad_ones(
    hub_config: Path, tmp_path: Path
) -> None:
    """Bad orders are kept raw in the inbox as unmappable, and the command exits 1."""
    file = csv_file(tmp_path, GOOD_ROWS + BAD_ROWS)

    code, out, _ = await run_import(hub_config, file, "--on-error", "reject-bad-rows", "--json")

    assert code == 1
    assert len(report(out)["errors"]) == 3
    orders, inbox = await stored(hub_config)
    assert set(orders) == {"B-1001", "B-1002"}
    assert [t for t, _ in inbox].count("import:unmappable") == 3


async def test_the_error_report_is_a_table_without_json(hub_config: Path, tmp_path: Path) -> None:
    """Without --json the refused rows are printed as a table of row, field, problem."""
    file = csv_file(tmp_path, GOOD_ROWS + BAD_ROWS)

    # The suite's one real `python -m ordersync import` process (its table on a real stdout).
    code, out, _ = await run_import(hub_config, file, "--on-error", "skip-bad-rows", process=True)

    assert code == 0
    assert "rows refused" in out
    assert "order_total" in out
    assert "qty" in out


async def test_unknown_policies_and_old_xls_workbooks_are_refused_up_front(
    hub_config: Path, tmp_path: Path
) -> None:
    """A typo in --on-error, or a pre-2007 .xls file, stops with exit 2 before anything is
    read."""
    code, _, err = await run_import(hub_config, csv_file(tmp_path, GOOD_ROWS), "--on-error", "x")
    assert code == 2
    assert "reject-file" in err
    xls = csv_file(tmp_path, "not really a sheet", "orders.xls")
    code, _, err = await run_import(hub_config, xls)
    assert code == 2
    assert ".xlsx" in err


# ---- spreadsheets ---------------------------------------------------------------------------

HEADER = ["order_no", "status", "buyer", "order_total", "sku", "qty", "price", "changed"]
NOON = datetime(2026, 11, 22, 12, 0)  # a time cell: Excel keeps no zone


def xlsx_file(tmp_path: Path, rows: list[list[Any]], *, sheet: str = "订单") -> Path:
    """A workbook whose `sheet` holds the header and `rows` (numbers as numbers)."""
    book = Workbook()
    ws = book.active
    assert ws is not None
    ws.title = sheet
    for row in [HEADER, *rows]:
        ws.append(row)
    path = tmp_path / "orders.xlsx"
    book.save(path)
    return path


GOOD_SHEET: list[list[Any]] = [
    ["B-3001", "paid", "周先生", 19.9 + 0.3, "TEA-1", 1, 19.9, NOON],
    ["B-3001", "paid", "周先生", 19.9 + 0.3, "TEA-2", 1, 0.1 + 0.2, NOON],
    ["B-3002", "new", "Zoë Ångström", 5, "TEA-3", 1, 5, "2026-11-22 12:05"],
]
BAD_SHEET: list[list[Any]] = [
    ["B-3003", "paid", "钱女士", -3, "TEA-3", 1, 3, NOON],
    ["B-3004", "lost", "孙先生", 3, "TEA-3", 1, 3, NOON],
]


async def test_a_sheet_is_imported_with_the_csv_mapping_and_exact_money(
    hub_config: Path, tmp_path: Path
) -> None:
    """The same mapping reads the sheet: money cells land as exact decimals, times in UTC,
    non-ASCII names intact; a second import is all duplicates."""
    file = xlsx_file(tmp_path, GOOD_SHEET)

    code, out, err = await run_import(hub_config, file, "--json")
    again_code, again, _ = await run_import(hub_config, file, "--json")

    assert code == 0, err
    assert report(out)["summary"]["outcome_created"] == 2
    assert (again_code, report(again)["summary"]["outcome_duplicate"]) == (0, 2)
    docs = await stored_docs(hub_config)
    assert docs["B-3001"]["totals"]["total"] == "20.2"
    assert [line["unit_price"] for line in docs["B-3001"]["lines"]] == ["19.9", "0.3"]
    assert docs["B-3001"]["channel_updated_at"] == "2026-11-22T04:00:00Z"
    assert docs["B-3002"]["customer"]["name"] == "Zoë Ångström"


@pytest.mark.parametrize(
    ("policy", "exit_code", "imported", "unmappable"),
    [("reject-file", 1, set(), 0), ("skip-bad-rows", 0, {"B-3001", "B-3002"}, 0),
     ("reject-bad-rows", 1, {"B-3001", "B-3002"}, 2)],
)  # fmt: skip
async def test_bad_sheet_rows_follow_the_error_policy(
    hub_config: Path,
    tmp_path: Path,
    policy: str,
    exit_code: int,
    imported: set[str],
    unmappable: int,
) -> None:
    """Each policy as for CSV; bad rows are reported by row (1 = first data row) and field."""
    file = xlsx_file(tmp_path, GOOD_SHEET + BAD_SHEET)

    code, out, _ = await run_import(hub_config, file, "--on-error", policy, "--json")

    assert code == exit_code
    errors = report(out)["errors"]
    assert [(e["row"], e["field"]) for e in errors] == [(4, "order_total"), (5, "status")]
    orders, inbox = await stored(hub_config)
    assert set(orders) == imported
    assert [t for t, _ in inbox].count("import:unmappable") == unmappable


async def test_a_named_sheet_is_read_and_an_unknown_one_is_a_usage_error(
    hub_config: Path, tmp_path: Path
) -> None:
    """--sheet picks the sheet; a sheet the workbook lacks stops with exit 2, naming the
    sheets it has."""
    file = xlsx_file(tmp_path, GOOD_SHEET, sheet="十一月")

    code, _, err = await run_import(hub_config, file, "--sheet", "Sheet1")
    named, out, _ = await run_import(hub_config, file, "--sheet", "十一月", "--json")

    assert code == 2
    assert "十一月" in err
    assert named == 0
    assert report(out)["summary"]["outcome_created"] == 2


async def test_a_file_named_xlsx_that_is_no_workbook_imports_nothing(
    hub_config: Path, tmp_path: Path
) -> None:
    """Not a workbook: one error on row 0, nothing stored."""
    file = csv_file(tmp_path, "order_no,status\nB-1,paid\n", "orders.xlsx")

    code, out, _ = await run_import(hub_config, file, "--json")

    assert code == 1
    (error,) = report(out)["errors"]
    assert error["row"] == 0
    assert "not a readable .xlsx workbook" in error["problem"]
    assert await stored(hub_config) == ({}, [])


async def stored_docs(config: Path) -> dict[str, Any]:
    """external_id -> the stored order document."""
    raw = yaml.safe_load(await asyncio.to_thread(config.read_text))
    hub = build_hub(settings_from_mapping(raw, env={}))
    await hub.start(dispatch=False, pull=False)
    try:
        async with hub.db.read() as conn:
            rows = await conn.execute(text("SELECT external_id, doc FROM orders"))
            return {e: json.loads(d) if isinstance(d, str | bytes) else d for e, d in rows}
    finally:
        await hub.stop()
