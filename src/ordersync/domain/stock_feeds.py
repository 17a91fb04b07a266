"""CSV stock feeds from a WMS/ERP: parsed and checked row by row, applied all or nothing.

Columns (header row, any order, extra columns refused): `sku`, `location_id`, `on_hand`
and optionally `safety_stock`. In `snapshot` mode `on_hand` is the counted quantity (>= 0)
and a (sku, location) may appear once; in `delta` mode the quantity column is `delta`
(`on_hand` is accepted as its alias) and may be negative, and repeated rows add up.

Every problem is reported with the file line it is on (the header is line 1), the column
and a stable code, so a feed is fixed in one round trip. Stdlib only.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from ordersync.domain.errors import DomainError

MAX_ROWS = 100_000
MAX_SKU = 128


class FeedMode(StrEnum):
    SNAPSHOT = "snapshot"  # on_hand replaces what the hub holds
    DELTA = "delta"  # the quantity is added (or removed)


@dataclass(frozen=True, slots=True)
class FeedRow:
    line: int  # in the file; the header is line 1
    sku: str
    location_id: str
    quantity: int  # on_hand (snapshot) or the delta
    safety_stock: int | None = None


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    column: str | None
    code: str
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "column": self.column, "code": self.code, "detail": self.detail}


class InvalidFeed(DomainError):
    code = "invalid_feed"

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(f"the feed has {len(errors)} bad row(s); nothing was applied")
        self.errors = errors


@dataclass(frozen=True, slots=True)
class ImportStockFeed:
    """A whole feed file: every row applies, or none does."""

    rows: tuple[FeedRow, ...]
    mode: FeedMode
    received_at: datetime
    principal: str
    message_id: str | None = None  # the feed's message id / Idempotency-Key
    fingerprint: str | None = None

    @property
    def shard_key(self) -> str:
        return min(r.sku for r in self.rows)


def _int(raw: str, line: int, column: str, errors: list[RowError], *, minimum: int | None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        errors.append(RowError(line, column, "not_an_integer", f"{raw!r} is not a whole number"))
        return 0
    if minimum is not None and value < minimum:
        errors.append(RowError(line, column, "negative", f"{value} is below {minimum}"))
    return value


def parse_csv(text: str, mode: FeedMode, locations: frozenset[str]) -> list[FeedRow]:
    """The feed's rows, or `InvalidFeed` naming every bad one."""
    errors: list[RowError] = []
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    qty_col = "on_hand"
    if mode is FeedMode.DELTA and "delta" in header:
        qty_col = "delta"
    allowed = {"sku", "location_id", qty_col, "safety_stock"}
    missing = [c for c in ("sku", "location_id", qty_col) if c not in header]
    extra = [c for c in header if c not in allowed]
    if missing or extra or len(set(header)) != len(header):
        for c in missing:
            errors.append(RowError(1, c, "missing_column", f"the header has no {c!r} column"))
        for c in extra:
            errors.append(RowError(1, c, "unknown_column", f"{c!r} is not a feed column"))
        if len(set(header)) != len(header):
            errors.append(RowError(1, None, "duplicate_column", "a column is named twice"))
        raise InvalidFeed(errors)
    index = {name: i for i, name in enumerate(header)}
    rows: list[FeedRow] = []
    seen: dict[tuple[str, str], int] = {}
    for record in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue  # blank lines are allowed
        if len(rows) >= MAX_ROWS:
            errors.append(RowError(line, None, "too_many_rows", f"at most {MAX_ROWS} rows"))
            break
        if len(record) != len(header):
            errors.append(
                RowError(
                    line, None, "wrong_cell_count", f"{len(record)} cells, {len(header)} expected"
                )
            )
            continue
        cell = {name: record[i].strip() for name, i in index.items()}
        before = len(errors)
        sku, loc = cell["sku"], cell["location_id"]
        if not sku:
            errors.append(RowError(line, "sku", "missing_value", "sku is empty"))
        elif len(sku) > MAX_SKU:
            errors.append(RowError(line, "sku", "too_long", f"sku is over {MAX_SKU} characters"))
        if not loc:
            errors.append(RowError(line, "location_id", "missing_value", "location_id is empty"))
        elif loc not in locations:
            errors.append(RowError(line, "location_id", "unknown_location", f"no location {loc!r}"))
        minimum = 0 if mode is FeedMode.SNAPSHOT else None
        qty = _int(cell[qty_col], line, qty_col, errors, minimum=minimum)
        safety = None
        if cell.get("safety_stock"):
            safety = _int(cell["safety_stock"], line, "safety_stock", errors, minimum=0)
        if mode is FeedMode.SNAPSHOT and sku and loc:
            if (first := seen.get((sku, loc))) is not None:
                errors.append(
                    RowError(
                        line,
                        None,
                        "duplicate_row",
                        f"{sku} at {loc} was already counted on line {first}",
                    )
                )
            else:
                seen[(sku, loc)] = line
        if len(errors) == before:
            rows.append(FeedRow(line, sku, loc, qty, safety))
    if not rows and not errors:
        errors.append(RowError(1, None, "empty_feed", "the feed has no rows"))
    if errors:
        raise InvalidFeed(errors)
    return rows
