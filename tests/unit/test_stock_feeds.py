"""CSV stock feeds: parsed row by row, every problem named by line, column and code."""

from __future__ import annotations

import pytest

from ordersync.domain.stock_feeds import FeedMode, FeedRow, InvalidFeed, parse_csv

WAREHOUSES = frozenset({"berlin-dc", "paris-store"})


def problems(text: str, mode: FeedMode = FeedMode.SNAPSHOT) -> list[tuple[int, str | None, str]]:
    with pytest.raises(InvalidFeed) as caught:
        parse_csv(text, mode, WAREHOUSES)
    return [(e.line, e.column, e.code) for e in caught.value.errors]


def test_a_snapshot_feed_reads_counts_and_optional_safety_stock() -> None:
    """Columns in any order, blank lines skipped, an empty safety stock left alone."""
    rows = parse_csv(
        "location_id,on_hand,sku,safety_stock\n"
        "berlin-dc,12,BLUE-TEAPOT,2\n"
        "\n"
        "paris-store, 3 ,BLUE-TEAPOT,\n",
        FeedMode.SNAPSHOT,
        WAREHOUSES,
    )

    assert rows == [
        FeedRow(2, "BLUE-TEAPOT", "berlin-dc", 12, 2),
        FeedRow(4, "BLUE-TEAPOT", "paris-store", 3, None),
    ]


def test_a_delta_feed_takes_negative_deltas_and_on_hand_as_an_alias() -> None:
    """`delta` (or `on_hand`) may be negative in delta mode; repeated rows are kept."""
    by_delta = parse_csv(
        "sku,location_id,delta\nBLUE-TEAPOT,berlin-dc,-4\nBLUE-TEAPOT,berlin-dc,1\n",
        FeedMode.DELTA,
        WAREHOUSES,
    )
    by_alias = parse_csv(
        "sku,location_id,on_hand\nBLUE-TEAPOT,berlin-dc,-4\n", FeedMode.DELTA, WAREHOUSES
    )

    assert [r.quantity for r in by_delta] == [-4, 1]
    assert [r.quantity for r in by_alias] == [-4]


def test_every_bad_row_is_reported_at_once() -> None:
    """Unknown location, not a number, negative count, counted twice, missing cells."""
    found = problems(
        "sku,location_id,on_hand\n"
        "BLUE-TEAPOT,lisbon-dc,4\n"
        "BLUE-TEAPOT,berlin-dc,lots\n"
        "GREEN-CUP,berlin-dc,-1\n"
        "SAUCER,berlin-dc,1\n"
        "SAUCER,berlin-dc,2\n"
        ",paris-store,1\n"
        "SAUCER,paris-store\n"
    )

    assert found == [
        (2, "location_id", "unknown_location"),
        (3, "on_hand", "not_an_integer"),
        (4, "on_hand", "negative"),
        (6, None, "duplicate_row"),
        (7, "sku", "missing_value"),
        (8, None, "wrong_cell_count"),
    ]


def test_a_bad_header_or_an_empty_feed_is_refused() -> None:
    """The header must name sku, location_id and the quantity, and nothing else."""
    assert problems("sku,where,on_hand,colour\nA,B,1,red\n") == [
        (1, "location_id", "missing_column"),
        (1, "where", "unknown_column"),
        (1, "colour", "unknown_column"),
    ]
    assert problems("sku,location_id,on_hand\n") == [(1, None, "empty_feed")]
    assert problems("") == [
        (1, "sku", "missing_column"),
        (1, "location_id", "missing_column"),
        (1, "on_hand", "missing_column"),
    ]
