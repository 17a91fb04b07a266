"""The stock ledger, read: one SKU's movements page by page (the API), and the
reconciliation of the ledger, the `stock` table and the held reservations (`ordersync
stock check`). Read-only queries, outside any unit of work.

Summing `stock_ledger` per (SKU, location) must give `stock.on_hand` and `stock.reserved`,
and `stock.reserved` must be what the reservations in state 'held' hold there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text

from ordersync.adapters.db.database import Database
from ordersync.clock import from_us

_LEDGER_COLUMNS = (
    "seq, location_id, cause, on_hand_delta, reserved_delta, reference, reservation_id, at_us"
)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    seq: int
    location_id: str
    cause: str
    on_hand_delta: int
    reserved_delta: int
    reference: str | None
    reservation_id: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class LedgerPage:
    entries: list[LedgerEntry]
    more: bool  # entries after the last one match too


def ledger_statement(
    locations: list[str],
    *,
    cause: str | None = None,
    reference: str | None = None,
) -> str:
    """The page query over `locations` of one SKU, oldest first (params: `sku`, `after`,
    `n`, `l0`..`l<k>` and, when filtered, `cause`, `reference`).

    ix_stock_ledger_sku is (sku, location_id, seq): for one location a range scan in `seq`
    order that stops after `n` rows. Ordering a SKU by `seq` across its locations would
    sort every entry of the SKU after `after`; instead each location reads at most `n`
    entries from the index and the branches are merged (PostgreSQL: Merge Append; SQLite
    orders each branch's at most `n` rows, then merges): a page costs (locations x n) at
    worst, however long the SKU's history. (`WHERE sku = :sku ORDER BY seq` alone sorts
    every entry of the SKU on SQLite and walks the primary key on PostgreSQL.)
    """
    where = "sku = :sku AND location_id = :l{i} AND seq > :after"
    if cause is not None:
        where += " AND cause = :cause"
    if reference is not None:
        where += " AND reference = :reference"
    branches = [
        f"SELECT * FROM (SELECT {_LEDGER_COLUMNS} FROM stock_ledger"  # noqa: S608 - placeholders only
        f" WHERE {where.format(i=i)} ORDER BY seq LIMIT :n) AS b{i}"
        for i in range(len(locations))
    ]
    return " UNION ALL ".join(branches) + " ORDER BY seq LIMIT :n"


async def sku_locations(db: Database, sku: str) -> list[str]:
    """The locations the SKU has a stock row at (none: an unknown SKU)."""
    async with db.read() as conn:
        rows = await conn.execute(
            text("SELECT location_id FROM stock WHERE sku = :sku ORDER BY location_id"),
            {"sku": sku},
        )
        return [r[0] for r in rows]


async def ledger_page(
    db: Database,
    sku: str,
    locations: list[str],
    *,
    after: int = 0,
    limit: int = 100,
    cause: str | None = None,
    reference: str | None = None,
) -> LedgerPage:
    """Up to `limit` entries of `sku` at `locations` with `seq > after`, oldest first."""
    if not locations:
        return LedgerPage([], more=False)
    params: dict[str, Any] = {"sku": sku, "after": after, "n": limit + 1}
    params.update({f"l{i}": loc for i, loc in enumerate(locations)})
    if cause is not None:
        params["cause"] = cause
    if reference is not None:
        params["reference"] = reference
    sql = ledger_statement(locations, cause=cause, reference=reference)
    async with db.read() as conn:
        rows = list(await conn.execute(text(sql), params))
    entries = [
        LedgerEntry(
            seq=int(r[0]),
            location_id=r[1],
            cause=r[2],
            on_hand_delta=int(r[3]),
            reserved_delta=int(r[4]),
            reference=r[5],
            reservation_id=r[6],
            at=from_us(int(r[7])),
        )
        for r in rows[:limit]
    ]
    return LedgerPage(entries, more=len(rows) > limit)


# ---- reconciliation -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One (SKU, location) where the ledger, the stock row and the holds disagree.
    `on_hand`/`reserved` are None when the location has no stock row at all."""

    sku: str
    location_id: str
    on_hand: int | None
    reserved: int | None
    ledger_on_hand: int
    ledger_reserved: int
    held: int

    @property
    def problems(self) -> list[str]:
        if self.on_hand is None or self.reserved is None:
            return ["no stock row"]
        found = []
        if self.ledger_on_hand != self.on_hand:
            found.append("on_hand != ledger")
        if self.ledger_reserved != self.reserved:
            found.append("reserved != ledger")
        if self.held != self.reserved:
            found.append("reserved != held")
        return found


@dataclass(frozen=True, slots=True)
class Reconciliation:
    rows: int  # (SKU, location) pairs seen in the ledger, the stock table or the holds
    mismatches: list[Mismatch]


# One statement, so one snapshot on both databases however busy the hub is: the three
# sources as one stream of partial sums, grouped per (SKU, location), joined to their
# count so that a clean result is still one row.
_RECONCILE = """
WITH per_key AS (
  SELECT sku, location_id,
         SUM(ledger_on_hand) AS ledger_on_hand, SUM(ledger_reserved) AS ledger_reserved,
         MAX(has_stock) AS has_stock, SUM(on_hand) AS on_hand, SUM(reserved) AS reserved,
         SUM(held) AS held
  FROM (
    SELECT sku, location_id, on_hand_delta AS ledger_on_hand,
           reserved_delta AS ledger_reserved, 0 AS has_stock, 0 AS on_hand, 0 AS reserved,
           0 AS held
      FROM stock_ledger
    UNION ALL
    SELECT sku, location_id, 0, 0, 1, on_hand, reserved, 0 FROM stock
    UNION ALL
    SELECT sku, location_id, 0, 0, 0, 0, 0, quantity FROM reservations WHERE state = 'held'
  ) AS parts
  GROUP BY sku, location_id
),
counted AS (SELECT COUNT(*) AS total FROM per_key),
mismatched AS (
  SELECT * FROM per_key
   WHERE has_stock = 0 OR ledger_on_hand <> on_hand OR ledger_reserved <> reserved
      OR held <> reserved
)
SELECT counted.total, m.sku, m.location_id, m.has_stock, m.on_hand, m.reserved,
       m.ledger_on_hand, m.ledger_reserved, m.held
  FROM counted LEFT JOIN mismatched AS m ON 1 = 1
 ORDER BY m.sku, m.location_id
"""


async def reconcile(db: Database) -> Reconciliation:
    """Every (SKU, location) where SUM(ledger) != stock or stock.reserved != the held
    reservations' quantity, and how many pairs were compared."""
    async with db.read() as conn:
        rows = list(await conn.execute(text(_RECONCILE)))
    mismatches = [
        Mismatch(
            sku=r[1],
            location_id=r[2],
            on_hand=int(r[4]) if r[3] else None,
            reserved=int(r[5]) if r[3] else None,
            ledger_on_hand=int(r[6]),
            ledger_reserved=int(r[7]),
            held=int(r[8]),
        )
        for r in rows
        if r[1] is not None
    ]
    return Reconciliation(rows=int(rows[0][0]), mismatches=mismatches)
