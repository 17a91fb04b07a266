"""Routing storage (migration 0007): decisions kept with their order, capacity use per
day, and the read side (an order's allocations and decision; past orders for a dry run).

The writes run inside the unit of work's transaction (called from the stock repository's
flush), so a decision exists exactly when the reservations it made do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersync.adapters.db.database import Database
from ordersync.clock import from_us, to_us
from ordersync.domain.codec import fmt_time, order_from_dict
from ordersync.domain.inventory import Inventory, Location
from ordersync.domain.orders import Order
from ordersync.domain.routing import (
    Destination,
    DryRunSummary,
    RoutingLine,
    RoutingRequest,
    RoutingSetup,
    dry_run,
)

_UPSERT_DECISION = (
    "INSERT INTO routing_decisions (order_id, outcome, locations, backordered, explanation,"
    " decided_us) VALUES (:order_id, :outcome, :locations, :backordered, :explanation,"
    " :decided_us) ON CONFLICT (order_id) DO UPDATE SET outcome = excluded.outcome,"
    " locations = excluded.locations, backordered = excluded.backordered,"
    " explanation = excluded.explanation, decided_us = excluded.decided_us"
)
_UPSERT_SHORT = (
    "INSERT INTO routing_shortages (order_id, sku, quantity, decided_us) VALUES (:order_id,"
    " :sku, :q, :at) ON CONFLICT (order_id, sku) DO UPDATE SET quantity = excluded.quantity,"
    " decided_us = excluded.decided_us"
)
_ADD_LOAD = (
    "INSERT INTO location_load (location_id, day, shipments) VALUES (:loc, :day, :n)"
    " ON CONFLICT (location_id, day) DO UPDATE"
    " SET shipments = location_load.shipments + excluded.shipments"
)


async def flush(conn: AsyncConnection, inv: Inventory) -> None:
    """Write the decisions an inventory collected, and their capacity use."""
    decisions, assigned = inv.take_decisions()
    if decisions:
        await conn.execute(
            text(_UPSERT_DECISION),
            [
                {
                    "order_id": d.order_id,
                    "outcome": d.outcome,
                    "locations": orjson.dumps(list(d.locations)).decode(),
                    "backordered": orjson.dumps(dict(d.backordered)).decode(),
                    "explanation": orjson.dumps(d.explanation).decode(),
                    "decided_us": to_us(d.decided_at),
                }
                for d in decisions
            ],
        )
    short = [
        {"order_id": d.order_id, "sku": sku, "q": q, "at": to_us(d.decided_at)}
        for d in decisions
        for sku, q in d.short.items()
    ]
    if short:
        await conn.execute(text(_UPSERT_SHORT), short)
    if assigned:  # sorted: concurrent transactions take the counter rows in one order
        await conn.execute(
            text(_ADD_LOAD),
            [{"loc": loc, "day": day, "n": n} for (loc, day), n in sorted(assigned.items())],
        )


async def capacity_use(conn: AsyncConnection, day: str, inv: Inventory) -> dict[str, int]:
    """Shipments each location was given on `day`: committed, plus this transaction's own.

    Not locked: capacity is a soft daily limit, and concurrent transactions may each see
    the last free slot (they cannot oversell stock, only exceed a location's plan by a few).
    """
    rows = await conn.execute(
        text("SELECT location_id, shipments FROM location_load WHERE day = :day"), {"day": day}
    )
    out = {r[0]: int(r[1]) for r in rows}
    for (loc, d), n in inv.new_assigned.items():
        if d == day:
            out[loc] = out.get(loc, 0) + n
    return out


async def orders_short_of(conn: AsyncConnection, skus: Iterable[str], limit: int) -> list[str]:
    """Orders on hold whose last routing found `skus` short, oldest order first."""
    wanted = sorted(set(skus))
    if not wanted:
        return []
    stmt = text(
        "SELECT s.order_id, MIN(o.created_us) FROM routing_shortages s"
        " JOIN routing_decisions d ON d.order_id = s.order_id"
        " AND d.decided_us = s.decided_us AND d.outcome = 'unroutable'"
        " JOIN orders o ON o.id = s.order_id AND o.status = 'on_hold'"
        " WHERE s.sku IN :skus GROUP BY s.order_id ORDER BY MIN(o.created_us), s.order_id"
        " LIMIT :limit"
    ).bindparams(bindparam("skus", expanding=True))
    return [r[0] for r in await conn.execute(stmt, {"skus": wanted, "limit": limit})]


def decision_doc(row: Any) -> dict[str, Any]:
    return {
        "outcome": row[0],
        "locations": orjson.loads(row[1]),
        "backordered": orjson.loads(row[2]),
        "explanation": orjson.loads(row[3]),
        "decided_at": fmt_time(from_us(row[4])),
    }


async def fulfilment_of(
    db: Database, order_id: str
) -> tuple[list[tuple[str, str, int]], dict[str, Any] | None]:
    """(sku, location, units) the order holds or shipped from, and its last decision."""
    async with db.read() as conn:
        rows = await conn.execute(
            text(
                "SELECT sku, location_id, quantity FROM reservations WHERE order_id = :o"
                " AND state IN ('held', 'committed') ORDER BY created_us, id"
            ),
            {"o": order_id},
        )
        allocations = [(r[0], r[1], int(r[2])) for r in rows]
        row = (
            await conn.execute(
                text(
                    "SELECT outcome, locations, backordered, explanation, decided_us"
                    " FROM routing_decisions WHERE order_id = :o"
                ),
                {"o": order_id},
            )
        ).first()
    return allocations, decision_doc(row) if row else None


# One round trip for a page of orders: their live allocations (kind 0, in the order they
# were made) and their decisions without the explanation (kind 1), told apart by `kind`.
_PAGE_FULFILMENT = (
    "SELECT order_id, 0 AS kind, sku AS a, location_id AS b, NULL AS c, quantity AS n,"
    " created_us AS at, id AS tie FROM reservations WHERE order_id IN :ids"
    " AND state IN ('held', 'committed')"
    " UNION ALL SELECT order_id, 1, outcome, locations, backordered, NULL, decided_us, NULL"
    " FROM routing_decisions WHERE order_id IN :ids"
    " ORDER BY order_id, kind, at, tie"
)


async def fulfilment_of_orders(
    db: Database, order_ids: Iterable[str]
) -> dict[str, tuple[list[tuple[str, str, int]], dict[str, Any] | None]]:
    """`fulfilment_of` for many orders in one query (a list page, not N+1): per order id,
    (sku, location, units) it holds or shipped from, and its last decision's summary
    (`codec.routing_summary`: no explanation). Orders with neither are absent."""
    ids = sorted(set(order_ids))
    out: dict[str, tuple[list[tuple[str, str, int]], dict[str, Any] | None]] = {}
    if not ids:
        return out
    stmt = text(_PAGE_FULFILMENT).bindparams(bindparam("ids", expanding=True))
    async with db.read() as conn:
        rows = (await conn.execute(stmt, {"ids": ids})).all()
    for order_id, kind, a, b, c, n, at, _ in rows:
        allocations, routing = out.get(order_id, ([], None))
        if kind == 0:
            allocations.append((a, b, int(n)))
        else:
            routing = {
                "outcome": a,
                "locations": orjson.loads(b),
                "backordered": orjson.loads(c),
                "decided_at": fmt_time(from_us(int(at))),
            }
        out[order_id] = (allocations, routing)
    return out


async def past_orders(db: Database, *, since: datetime | None, limit: int) -> list[Order]:
    """Orders created at or after `since`, oldest first (the dry run's input)."""
    async with db.read() as conn:
        rows = await conn.execute(
            text(
                "SELECT doc FROM orders WHERE created_us >= :since ORDER BY created_us, id"
                " LIMIT :limit"
            ),
            {"since": to_us(since) if since else 0, "limit": limit},
        )
        return [order_from_dict(orjson.loads(r[0])) for r in rows]


async def availability(
    db: Database, skus: Iterable[str], order_ids: Iterable[str]
) -> dict[tuple[str, str], int]:
    """Units free per (SKU, location) now, counting what `order_ids` hold as free: the
    stock these orders would meet if they arrived again now."""
    wanted, ids = sorted(set(skus)), sorted(set(order_ids))
    out: dict[tuple[str, str], int] = {}
    if not wanted:
        return out
    async with db.read() as conn:
        stmt = text(
            "SELECT sku, location_id, on_hand - reserved FROM stock WHERE sku IN :skus"
        ).bindparams(bindparam("skus", expanding=True))
        for sku, loc, free in await conn.execute(stmt, {"skus": wanted}):
            out[(sku, loc)] = int(free)
        if ids:
            stmt = text(
                "SELECT sku, location_id, quantity FROM reservations WHERE state = 'held'"
                " AND order_id IN :ids"
            ).bindparams(bindparam("ids", expanding=True))
            for sku, loc, qty in await conn.execute(stmt, {"ids": ids}):
                out[(sku, loc)] = out.get((sku, loc), 0) + int(qty)
    return out


async def dry_run_report(
    db: Database,
    setup: RoutingSetup,
    locations: Mapping[str, Location],
    *,
    since: datetime | None,
    limit: int,
) -> tuple[list[dict[str, Any]], DryRunSummary]:
    """Route past orders again with the configured rules, changing nothing.

    Orders go oldest first, each taking the stock and capacity its decision allocated,
    from the stock as it is now plus what these orders themselves hold.
    """
    orders = await past_orders(db, since=since, limit=limit)
    wanted: dict[str, dict[str, int]] = {}
    for o in orders:
        lines: dict[str, int] = {}
        for line in o.lines:
            if line.sku and line.quantity > 0:
                lines[line.sku] = lines.get(line.sku, 0) + line.quantity
        wanted[o.id] = lines
    stock = await availability(db, {sku for lines in wanted.values() for sku in lines}, wanted)
    tracked = {sku for sku, _ in stock}
    requests = []
    for o in orders:
        lines = {sku: q for sku, q in wanted[o.id].items() if sku in tracked}
        if not lines:
            continue
        addr = o.shipping_address
        requests.append(
            RoutingRequest(
                o.id,
                o.channel_id,
                tuple(RoutingLine(sku, q) for sku, q in lines.items()),
                setup.destination(addr.country_code, addr.region) if addr else Destination(),
            )
        )
    summary = dry_run(
        requests,
        setup.sites_for(locations),
        {k: v for k, v in stock.items() if k[1] in locations},
        setup.policy,
        router=setup.router,
    )
    rows = [
        {
            "order_id": d.order_id,
            "outcome": d.outcome.value,
            "locations": ", ".join(d.locations),
            "backordered": ", ".join(f"{s} x{n}" for s, n in d.backordered.items()),
            "explanation": d.explanation.text(),
            "decision": d.as_dict(),
        }
        for d in summary.decisions
    ]
    return rows, summary
