"""Read-side queries for the API and the CLI (no unit of work, no locks)."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import text

from ordersync.adapters.db.database import Database
from ordersync.clock import from_us
from ordersync.domain.codec import fmt_time


async def get_order(db: Database, order_id: str) -> dict[str, Any] | None:
    async with db.read() as conn:
        row = (
            await conn.execute(text("SELECT doc FROM orders WHERE id = :id"), {"id": order_id})
        ).first()
    return orjson.loads(row[0]) if row else None


async def list_orders(
    db: Database,
    *,
    channel_id: str | None = None,
    external_id: str | None = None,
    status: str | None = None,
    after_id: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    clauses: list[str] = ["1 = 1"]
    params: dict[str, Any] = {"limit": limit}
    for col, val in (("channel_id", channel_id), ("external_id", external_id), ("status", status)):
        if val is not None:
            clauses.append(f"{col} = :{col}")
            params[col] = val
    if after_id is not None:
        clauses.append("id > :after")
        params["after"] = after_id
    sql = f"SELECT doc FROM orders WHERE {' AND '.join(clauses)} ORDER BY id LIMIT :limit"  # noqa: S608 - placeholders only
    async with db.read() as conn:
        return [orjson.loads(r[0]) for r in await conn.execute(text(sql), params)]


async def order_history(db: Database, order_id: str) -> list[dict[str, Any]]:
    async with db.read() as conn:
        rows = await conn.execute(
            text(
                "SELECT version, from_status, to_status, from_payment_status, to_payment_status,"
                " cause, message_id, changed, at_us FROM order_history WHERE order_id = :id"
                " ORDER BY version, seq"
            ),
            {"id": order_id},
        )
        return [
            {
                "version": r[0],
                "from_status": r[1],
                "to_status": r[2],
                "from_payment_status": r[3],
                "to_payment_status": r[4],
                "cause": r[5],
                "source_message_id": r[6],
                "changed": r[7].split(",") if r[7] else [],
                "at": fmt_time(from_us(r[8])),
            }
            for r in rows
        ]


async def count_orders(db: Database) -> int:
    async with db.read() as conn:
        row = (await conn.execute(text("SELECT COUNT(*) FROM orders"))).first()
        return int(row[0]) if row else 0


async def inbox_outcomes(db: Database) -> dict[str, int]:
    async with db.read() as conn:
        rows = await conn.execute(text("SELECT outcome, COUNT(*) FROM inbox GROUP BY outcome"))
        return {str(o): int(n) for o, n in rows}
