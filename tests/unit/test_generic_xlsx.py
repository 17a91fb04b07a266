"""Spreadsheets for `ordersync import FILE.xlsx`: a sheet's rows read as a CSV's would be, so
the same mapping and per-row errors apply; numbers without float artefacts, naive times in
the mapping's zone, non-ASCII text, blank rows, extra cells, several sheets."""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from openpyxl import Workbook

from ordersync.adapters.channels import generic as g

MAPPING = g.parse_mapping(
    {
        "format": "xlsx",
        "group_by": "order_no",
        "fields": {
            "external_id": "order_no",
            "status": {"path": "status", "transform": ["strip", "upper"]},
            "total": "order_total",
            "customer.name": "buyer",
            "updated_at": {"path": "changed", "transform": "datetime", "timezone": "+08:00"},
        },
        "lines": {"fields": {"sku": "sku", "quantity": "qty", "unit_price": "price"}},
        "statuses": {"PAID": {"status": "paid", "payment": "paid"}},
    }
)
HEADER = ["order_no", "status", "buyer", "order_total", "sku", "qty", "price", "changed"]
CHINA_NOON = datetime(2026, 11, 22, 12, 0)  # as Excel keeps it: no zone


def workbook(*sheets: tuple[str, list[list[Any]]]) -> bytes:
    book = Workbook()
    book.remove(book.active)
    for title, rows in sheets:
        ws = book.create_sheet(title)
        for row in rows:
            ws.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def orders_sheet(*rows: list[Any]) -> bytes:
    return workbook(("订单", [HEADER, *rows]))


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (19.9, "19.9"),
        (0.1 + 0.2, "0.3"),  # 0.30000000000000004 as a float
        (19.900000000000002, "19.9"),  # the next float after 19.9
        (3.0, "3"),
        (1234567.89, "1234567.89"),
        (1e-7, "0.0000001"),
        (1e20, "100000000000000000000"),
    ],
)
def test_number_cells_read_as_the_digits_excel_shows(number: float, text: str) -> None:
    """Fifteen significant digits, as Excel keeps them: never a float artefact or exponent."""
    assert g.excel_number(number) == text


def test_a_sheet_maps_like_its_csv_export_with_exact_money() -> None:
    """Money cells 19.9 and 0.1+0.2 become Decimal 19.9 and 0.3; rows group into an order."""
    body = orders_sheet(
        ["B-2001", " paid ", "周先生", 19.9 + 0.3, "TEA-1", 1, 19.9, CHINA_NOON],
        ["B-2001", " paid ", "周先生", 19.9 + 0.3, "TEA-2", 1, 0.1 + 0.2, CHINA_NOON],
    )

    (parsed,) = g.read_orders("erp", MAPPING, body)

    snap = parsed.snapshot
    assert snap is not None, parsed.error
    assert snap.totals.total == Decimal("20.2")
    assert [line.unit_price for line in snap.lines] == [Decimal("19.9"), Decimal("0.3")]
    assert [line.quantity for line in snap.lines] == [1, 1]
    assert snap.customer is not None
    assert snap.customer.name == "周先生"
    assert parsed.rows == (1, 2)


def test_a_naive_time_cell_is_read_in_the_mapping_zone_as_utc() -> None:
    """12:00 in a sheet mapped at +08:00 is 04:00 UTC, tz-aware."""
    body = orders_sheet(["B-2002", "PAID", "钱女士", 5, "TEA-3", 1, 5, CHINA_NOON])

    (parsed,) = g.read_orders("erp", MAPPING, body)

    assert parsed.snapshot is not None
    assert parsed.snapshot.channel_updated_at == datetime(2026, 11, 22, 4, 0, tzinfo=UTC)


def test_a_time_cell_without_a_mapping_zone_is_a_row_error() -> None:
    """No timezone in the mapping: a zoneless cell is refused with its row, not guessed."""
    fields = dict(MAPPING.fields)
    fields["updated_at"] = g.FieldSpec("changed", transforms=("datetime",))
    mapping = dataclasses.replace(MAPPING, fields=fields)
    body = orders_sheet(["B-2003", "PAID", "孙先生", 5, "TEA-3", 1, 5, CHINA_NOON])

    plan = g.plan_import("erp", mapping, body)

    assert plan.good == ()
    (error,) = plan.errors
    assert (error.row, error.field) == (1, "changed")
    assert "no offset" in error.problem


def test_blank_rows_are_skipped_and_errors_name_the_row_the_merchant_sees() -> None:
    """A blank row between orders keeps the numbering; a negative total is refused there."""
    body = orders_sheet(
        ["B-2004", "PAID", "李先生", 5, "TEA-3", 1, 5, CHINA_NOON],
        [None, None, None],
        ["B-2005", "PAID", "李先生", -5, "TEA-3", 1, 5, CHINA_NOON],
    )

    plan = g.plan_import("erp", MAPPING, body)

    assert [p.rows for p in plan.good] == [(1,)]
    (error,) = plan.errors
    assert (error.row, error.field) == (3, "order_total")


def test_cells_beyond_the_header_are_a_row_error() -> None:
    """As csv.DictReader does, extra cells make the row refused, not silently dropped."""
    body = orders_sheet(["B-2006", "PAID", "周先生", 5, "TEA-3", 1, 5, CHINA_NOON, "surprise"])

    plan = g.plan_import("erp", MAPPING, body)

    (error,) = plan.errors
    assert error.row == 1
    assert "more cells than columns" in error.problem


def test_a_named_sheet_is_read_and_an_unknown_one_refused() -> None:
    """--sheet picks a sheet by name; a name the workbook lacks lists the sheets it has."""
    body = workbook(
        ("说明", [["read me first"]]),
        ("orders", [HEADER, ["B-2007", "PAID", "周先生", 7.5, "TEA-9", 1, 7.5, CHINA_NOON]]),
    )

    plan = g.plan_import("erp", MAPPING, body, sheet="orders")

    assert [p.snapshot.external_id for p in plan.good if p.snapshot] == ["B-2007"]
    with pytest.raises(g.SheetNotFound, match="说明, orders"):
        g.plan_import("erp", MAPPING, body, sheet="Sheet1")


def test_a_file_that_is_not_a_workbook_is_one_error_on_row_zero() -> None:
    """Bytes that are no .xlsx: nothing imported, one clear error."""
    plan = g.plan_import("erp", MAPPING, b"order_no,status\nB-1,PAID\n")

    assert plan.good == ()
    (error,) = plan.errors
    assert error.row == 0
    assert "not a readable .xlsx workbook" in error.problem


def test_an_empty_sheet_has_no_orders() -> None:
    """A sheet with nothing in it is an empty import, not an error."""
    plan = g.plan_import("erp", MAPPING, workbook(("orders", [])))

    assert (plan.good, plan.errors) == ((), ())
