"""What the stock publisher reads and acknowledges (migration 0008).

* `stock_dirty`: SKUs whose stock changed since every channel was last told, with a
  sequence number bumped by each committed change (adapters/db/inventory.py writes it in
  the transaction of the change). `settle(sku, seq)` deletes the marker only if no change
  came after the one the publisher read: a later change keeps its marker.
* `stock.fed_us`: when a WMS/ERP feed last reported a row (staleness).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text

from ordersync.adapters.db.database import Database
from ordersync.clock import from_us, to_us
from ordersync.domain.inventory import StockLevel


class SqlStockPublishingStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def levels(self, sku: str) -> list[tuple[StockLevel, datetime | None]]:
        """Every location's stock of `sku`, with when its feed last reported it."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT location_id, on_hand, reserved, safety_stock, version, fed_us"
                    " FROM stock WHERE sku = :sku"
                ),
                {"sku": sku},
            )
            return [
                (
                    StockLevel(sku, r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4])),
                    from_us(r[5]) if r[5] is not None else None,
                )
                for r in rows
            ]

    async def dirty(self, limit: int = 1000) -> list[tuple[str, int]]:
        """(sku, seq) of the SKUs whose channels still have to be told, oldest first."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                text("SELECT sku, seq FROM stock_dirty ORDER BY changed_us, sku LIMIT :limit"),
                {"limit": limit},
            )
            return [(r[0], int(r[1])) for r in rows]

    async def settle(self, markers: Sequence[tuple[str, int]]) -> None:
        """Every channel has a value read after these (sku, seq) changes: drop their markers
        in one transaction, except those a newer change bumped since (they stay, and are
        published again)."""
        if not markers:
            return
        async with self.db.write() as conn:
            await conn.execute(
                text("DELETE FROM stock_dirty WHERE sku = :sku AND seq = :seq"),
                [{"sku": sku, "seq": seq} for sku, seq in sorted(markers)],
            )

    async def fed_between(self, after: datetime | None, until: datetime) -> list[str]:
        """SKUs with a row last fed in (after, until], or never fed when `after` is None:
        the ones whose feed went stale in that span."""
        if after is None:
            sql = "SELECT DISTINCT sku FROM stock WHERE fed_us IS NULL OR fed_us <= :until"
            params = {"until": to_us(until)}
        else:
            sql = "SELECT DISTINCT sku FROM stock WHERE fed_us > :after AND fed_us <= :until"
            params = {"after": to_us(after), "until": to_us(until)}
        async with self.db.read() as conn:
            return sorted(r[0] for r in await conn.execute(text(sql + " ORDER BY sku"), params))
