"""Carrier-rule overrides and the tracking poller's bookkeeping (migration 0010).

Plain SQL that runs unchanged on SQLite and PostgreSQL. The poller's writes are small
single-statement transactions beside the shipment's own (the `polled_us` stamp and the
`poll_state` retirement are bookkeeping: losing one to a crash means one extra poll).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import orjson
from sqlalchemy import bindparam, text

from ordersync.adapters.db.database import Database
from ordersync.clock import from_us, to_us
from ordersync.domain.shipments import TERMINAL
from ordersync.service.tracking_poll import Tracked

_TERMINAL = sorted(str(s) for s in TERMINAL)


class SqlOverrideStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def overrides(self) -> dict[str, tuple[str, str, datetime]]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT rule_id, carrier_id, updated_by, updated_us FROM carrier_rule_overrides"
                )
            )
            return {str(r): (str(c), str(b), from_us(int(u))) for r, c, b, u in rows}

    async def set_override(self, rule_id: str, carrier_id: str, by: str, now: datetime) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO carrier_rule_overrides (rule_id, carrier_id, updated_us,"
                    " updated_by) VALUES (:r, :c, :now, :by) ON CONFLICT (rule_id) DO UPDATE"
                    " SET carrier_id = excluded.carrier_id, updated_us = excluded.updated_us,"
                    " updated_by = excluded.updated_by"
                ),
                {"r": rule_id, "c": carrier_id, "now": to_us(now), "by": by},
            )

    async def clear_override(self, rule_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                text("DELETE FROM carrier_rule_overrides WHERE rule_id = :r"), {"r": rule_id}
            )


_DUE = text(
    "SELECT id, order_id, tracking_number, booked_us, polled_us, doc FROM shipments"
    " WHERE carrier_id = :c AND poll_state IS NULL AND active"
    " AND (polled_us IS NULL OR polled_us <= :before)"
    " ORDER BY COALESCE(polled_us, 0), booked_us, id LIMIT :limit"
)
_MARK = text("UPDATE shipments SET polled_us = :now WHERE id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
_RETIRE = text(
    "UPDATE shipments SET poll_state = :state, polled_us = :now WHERE id IN :ids"
    " AND poll_state IS NULL"
).bindparams(bindparam("ids", expanding=True))
_RETIRE_FINAL = text(
    "UPDATE shipments SET poll_state = 'final' WHERE id IN :ids AND poll_state IS NULL"
    " AND (status IN :terminal OR NOT active)"
).bindparams(bindparam("ids", expanding=True), bindparam("terminal", expanding=True))


class SqlPollStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def due_for_poll(
        self, carrier_id: str, polled_before: datetime, limit: int
    ) -> list[Tracked]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                _DUE, {"c": carrier_id, "before": to_us(polled_before), "limit": limit}
            )
            out = []
            for sid, oid, number, booked_us, polled_us, doc in rows:
                d = orjson.loads(doc)
                out.append(
                    Tracked(
                        str(sid),
                        str(oid),
                        str(number),
                        str(d.get("carrier_code") or ""),
                        str((d.get("booking") or {}).get("carrier_ref") or ""),
                        from_us(int(booked_us)),
                        None if polled_us is None else from_us(int(polled_us)),
                    )
                )
            return out

    async def mark_polled(self, shipment_ids: Sequence[str], now: datetime) -> None:
        if shipment_ids:
            async with self.db.write() as conn:
                await conn.execute(_MARK, {"now": to_us(now), "ids": list(shipment_ids)})

    async def retire(self, shipment_ids: Sequence[str], state: str, now: datetime) -> None:
        if shipment_ids:
            async with self.db.write() as conn:
                await conn.execute(
                    _RETIRE, {"state": state, "now": to_us(now), "ids": list(shipment_ids)}
                )

    async def retire_final(self, shipment_ids: Sequence[str], now: datetime) -> int:
        if not shipment_ids:
            return 0
        async with self.db.write() as conn:
            result = await conn.execute(
                _RETIRE_FINAL, {"ids": list(shipment_ids), "terminal": _TERMINAL}
            )
            return int(getattr(result, "rowcount", 0) or 0)

    async def poll_state(self, shipment_id: str) -> tuple[str | None, datetime | None]:
        """(poll_state, polled_at) of one shipment: for the API and tests."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    text("SELECT poll_state, polled_us FROM shipments WHERE id = :id"),
                    {"id": shipment_id},
                )
            ).first()
        if row is None:
            return None, None
        return row[0], None if row[1] is None else from_us(int(row[1]))
