"""Inventory storage: the stock repository of the SQL unit of work, and read-side queries.

Rows a unit of work will change are read with `FOR UPDATE` on PostgreSQL (SQLite has one
writer at a time already), decided in the domain, and written at commit with absolute
values under that lock. The `stock` CHECK constraint refuses an oversold row whatever
happens above it, and a process killed mid-reservation leaves an uncommitted transaction
that the database rolls back: nothing half-reserved survives.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersync.adapters.db import routing as routing_store
from ordersync.adapters.db.database import Database
from ordersync.clock import from_us, to_us
from ordersync.domain.codec import fmt_time
from ordersync.domain.inventory import (
    Inventory,
    InventoryPolicy,
    Location,
    Reservation,
    ReservationState,
    StockEvent,
    StockEventType,
    StockLevel,
)
from ordersync.ids import new_id
from ordersync.service.outbox import EventRouter, OutboxEntry
from ordersync.service.unit_of_work import StockRepository, StoredResponse

if TYPE_CHECKING:
    from ordersync.adapters.db.unit_of_work import _Conn

_RES_TYPES = (
    ("id", "text"),
    ("order_id", "text"),
    ("sku", "text"),
    ("location_id", "text"),
    ("quantity", "bigint"),
    ("state", "text"),
    ("expires_us", "bigint"),
    ("created_us", "bigint"),
    ("updated_us", "bigint"),
)
_LEDGER_TYPES = (
    ("sku", "text"),
    ("location_id", "text"),
    ("cause", "text"),
    ("on_hand_delta", "bigint"),
    ("reserved_delta", "bigint"),
    ("reference", "text"),
    ("reservation_id", "text"),
    ("at_us", "bigint"),
)
_EVENT_TYPES = (
    ("id", "text"),
    ("type", "text"),
    ("order_id", "text"),
    ("order_version", "integer"),
    ("created_us", "bigint"),
    ("body", "bytea"),
    ("published_us", "bigint"),
)
_SELECT_STOCK = "SELECT sku, location_id, on_hand, reserved, safety_stock, version FROM stock"
_SELECT_RES = (
    "SELECT id, order_id, sku, location_id, quantity, state, expires_us, created_us"
    " FROM reservations"
)


def _reservation(row: Any) -> Reservation:
    return Reservation(
        id=row[0],
        order_id=row[1],
        sku=row[2],
        location_id=row[3],
        quantity=int(row[4]),
        state=ReservationState(row[5]),
        expires_at=from_us(row[6]) if row[6] is not None else None,
        created_at=from_us(row[7]),
    )


class SqlStockRepository(StockRepository):
    # Set by the hub (bootstrap): inventory.low per SKU across all locations at or below
    # this, instead of per location at its safety stock.
    low_stock_threshold: int | None = None

    def __init__(self, c: _Conn, router: EventRouter, policy: InventoryPolicy) -> None:
        self._c = c  # the unit of work's lazily opened write transaction
        self._router = router
        self.policy = policy
        self.inventory = Inventory(policy.locations)
        self._loaded: set[str] = set()
        self._orders: set[str] = set()
        self._feed: dict[tuple[str, str], StoredResponse] = {}
        self._fed: set[tuple[str, str]] = set()  # rows a WMS/ERP feed reported (fed_us)
        self._before: dict[str, int] = {}  # SKU -> available everywhere when loaded

    def mark_fed(self, sku: str, location_id: str) -> None:
        self._fed.add((sku, location_id))

    async def load(self, skus: Iterable[str]) -> Inventory:
        wanted = sorted(set(skus) - self._loaded)
        if wanted:
            conn = await self._c.get()
            stmt = text(
                f"{_SELECT_STOCK} WHERE sku IN :skus ORDER BY sku, location_id{self._c.lock_suffix}"
            ).bindparams(bindparam("skus", expanding=True))
            for sku, loc, on_hand, reserved, safety, version in await conn.execute(
                stmt, {"skus": wanted}
            ):
                self.inventory.add_level(
                    StockLevel(sku, loc, int(on_hand), int(reserved), int(safety), int(version))
                )
            self._loaded.update(wanted)
            for sku in wanted:
                self._before[sku] = sum(lv.available for lv in self.inventory.levels_of(sku))
        return self.inventory

    def _remember(self, rows: Iterable[Any]) -> list[Reservation]:
        out = []
        for row in rows:
            res = self.inventory.reservations.get(row[0])
            if res is None:
                res = self.inventory.reservations[row[0]] = _reservation(row)
            out.append(res)
        return out

    async def held_for_order(self, order_id: str) -> list[Reservation]:
        if order_id not in self._orders:
            await self.preload_orders([order_id])
        return self.inventory.held_for(order_id)

    async def preload_orders(self, order_ids: Iterable[str]) -> None:
        wanted = sorted(set(order_ids) - self._orders)
        if not wanted:
            return
        conn = await self._c.get()
        if self._c.db.is_sqlite:
            stmt = text(
                f"{_SELECT_RES} WHERE order_id IN :ids AND state = 'held' ORDER BY id"
            ).bindparams(bindparam("ids", expanding=True))
        else:  # one array parameter: one prepared statement whatever the batch size
            stmt = text(
                f"{_SELECT_RES} WHERE order_id = ANY(CAST(:ids AS text[])) AND state = 'held'"
                " FOR UPDATE"
            )
        held = self._remember(await conn.execute(stmt, {"ids": wanted}))
        self._orders.update(wanted)
        await self.load(r.sku for r in held)

    async def get_reservation(self, reservation_id: str) -> Reservation | None:
        if reservation_id not in self.inventory.reservations:
            conn = await self._c.get()
            rows = await conn.execute(
                text(f"{_SELECT_RES} WHERE id = :id{self._c.lock_suffix}"),
                {"id": reservation_id},
            )
            found = self._remember(rows)
            await self.load(r.sku for r in found)
        return self.inventory.reservations.get(reservation_id)

    async def capacity_use(self, day: str) -> dict[str, int]:
        return await routing_store.capacity_use(await self._c.get(), day, self.inventory)

    async def orders_short_of(self, skus: Iterable[str], limit: int) -> list[str]:
        return await routing_store.orders_short_of(await self._c.get(), skus, limit)

    async def feed_get(self, source: str, message_id: str) -> StoredResponse | None:
        if (source, message_id) in self._feed:
            return self._feed[(source, message_id)]
        conn = await self._c.get()
        row = (
            await conn.execute(
                text(
                    "SELECT fingerprint, status, body FROM inventory_feed"
                    " WHERE source = :s AND message_id = :m"
                ),
                {"s": source, "m": message_id},
            )
        ).first()
        return StoredResponse(row[0], row[1], bytes(row[2])) if row else None

    def feed_put(self, source: str, message_id: str, response: StoredResponse) -> None:
        self._feed[(source, message_id)] = response

    async def flush(self, conn: AsyncConnection, now_us: int) -> list[OutboxEntry]:
        """Write what changed; returns the stock events for the unit of work's outbox."""
        inv = self.inventory
        ledger, events = inv.take_changes()
        await routing_store.flush(conn, inv)  # routing decisions commit with their holds

        def level_row(key: tuple[str, str]) -> dict[str, Any]:
            lv = inv.levels[key]
            return {
                "sku": lv.sku,
                "loc": lv.location_id,
                "on_hand": lv.on_hand,
                "reserved": lv.reserved,
                "safety": lv.safety_stock,
                "version": lv.version,
                "now": now_us,
            }

        await _many(
            conn,
            "INSERT INTO stock (sku, location_id, on_hand, reserved, safety_stock, version,"
            " updated_us) VALUES (:sku, :loc, :on_hand, :reserved, :safety, :version, :now)",
            [level_row(k) for k in sorted(inv.new_levels)],
        )
        await _many(
            conn,
            "UPDATE stock SET on_hand = :on_hand, reserved = :reserved, safety_stock = :safety,"
            " version = :version, updated_us = :now WHERE sku = :sku AND location_id = :loc",
            [level_row(k) for k in sorted(inv.dirty_levels)],
        )

        events = await self._signal_changes(conn, now_us, events)

        res = [inv.reservations[rid] for rid in inv.new_reservations]
        await self._insert(
            conn,
            "reservations",
            _RES_TYPES,
            [
                (
                    r.id,
                    r.order_id,
                    r.sku,
                    r.location_id,
                    r.quantity,
                    r.state.value,
                    to_us(r.expires_at) if r.expires_at else None,
                    to_us(r.created_at),
                    now_us,
                )
                for r in res
            ],
        )
        await _many(
            conn,
            "UPDATE reservations SET state = :state, expires_us = :expires, updated_us = :now"
            " WHERE id = :id",
            [
                {
                    "id": r.id,
                    "state": r.state.value,
                    "expires": to_us(r.expires_at) if r.expires_at else None,
                    "now": now_us,
                }
                for r in (inv.reservations[rid] for rid in inv.dirty_reservations)
            ],
        )
        await self._insert(
            conn,
            "stock_ledger",
            _LEDGER_TYPES,
            [
                (
                    e.sku,
                    e.location_id,
                    e.cause.value,
                    e.on_hand_delta,
                    e.reserved_delta,
                    e.reference,
                    e.reservation_id,
                    to_us(e.at),
                )
                for e in ledger
            ],
        )
        await _many(
            conn,
            "INSERT INTO inventory_feed (source, message_id, fingerprint, status, body,"
            " received_us) VALUES (:s, :m, :f, :st, :b, :now)",
            [
                {"s": s, "m": m, "f": r.fingerprint, "st": r.status, "b": r.body, "now": now_us}
                for (s, m), r in self._feed.items()
            ],
        )
        for group in (inv.new_levels, inv.dirty_levels, inv.new_reservations):
            group.clear()
        inv.dirty_reservations.clear()
        self._feed.clear()
        entries = [self._outbox_entry(e) for e in events]
        # Events nobody subscribes to are recorded here in one statement; the unit of work
        # writes the routed ones with their deliveries, as it does for orders.
        await self._insert(
            conn,
            "events",
            _EVENT_TYPES,
            [
                (e.event_id, e.type, e.order_id, e.version, now_us, e.body, now_us)
                for e in entries
                if not e.destinations
            ],
        )
        return [e for e in entries if e.destinations]

    async def _signal_changes(
        self, conn: AsyncConnection, now_us: int, events: list[StockEvent]
    ) -> list[StockEvent]:
        """Feed freshness, the publisher's "stock changed" markers and SKU-wide low-stock
        alerts, in the transaction of the change (before the change sets are cleared)."""
        inv = self.inventory
        changed = sorted({sku for sku, _ in (*inv.new_levels, *inv.dirty_levels, *self._fed)})
        await _many(
            conn,
            "UPDATE stock SET fed_us = :now WHERE sku = :sku AND location_id = :loc",
            [{"sku": s, "loc": loc, "now": now_us} for s, loc in sorted(self._fed)],
        )
        self._fed.clear()
        # One upsert per SKU per batch (not per reservation): the singleton stock publisher
        # deletes a marker only after every channel has the value read after its `seq`.
        await _many(
            conn,
            "INSERT INTO stock_dirty (sku, seq, changed_us) VALUES (:sku, 1, :now)"
            " ON CONFLICT (sku) DO UPDATE SET seq = stock_dirty.seq + 1,"
            " changed_us = excluded.changed_us",
            [{"sku": sku, "now": now_us} for sku in changed],
        )
        threshold = self.low_stock_threshold
        if threshold is None:
            return events
        out = [e for e in events if e.type is not StockEventType.INVENTORY_LOW]
        at = from_us(now_us)
        for sku in changed:
            after = sum(lv.available for lv in inv.levels_of(sku))
            before = self._before.get(sku, 0)
            self._before[sku] = after
            if before > threshold >= after:  # once per downward crossing
                out.append(
                    StockEvent(StockEventType.INVENTORY_LOW, sku, None, threshold, after, at)
                )
        return out

    async def _insert(
        self,
        conn: AsyncConnection,
        table: str,
        types: tuple[tuple[str, str], ...],
        rows: list[tuple[Any, ...]],
    ) -> None:
        """Many rows in one statement on PostgreSQL (`unnest` of one array per column:
        one plan, one round trip); `executemany` on SQLite, where that is already cheap.
        `table` and `types` are this module's constants, never input (hence the S608 noqa)."""
        if not rows:
            return
        cols = ", ".join(name for name, _ in types)
        if self._c.db.is_sqlite:
            marks = ", ".join(f":p{i}" for i in range(len(types)))
            await conn.execute(
                text(f"INSERT INTO {table} ({cols}) VALUES ({marks})"),  # noqa: S608 - constants
                [{f"p{i}": v for i, v in enumerate(row)} for row in rows],
            )
            return
        arrays = ", ".join(f"CAST(:p{i} AS {t}[])" for i, (_, t) in enumerate(types))
        await conn.execute(
            text(f"INSERT INTO {table} ({cols}) SELECT * FROM unnest({arrays})"),  # noqa: S608
            {f"p{i}": [row[i] for row in rows] for i in range(len(types))},
        )

    def _outbox_entry(self, e: StockEvent) -> OutboxEntry:
        data = {
            "sku": e.sku,
            "location_id": e.location_id,
            "quantity": e.quantity,
            "available": e.available,
            "order_id": e.order_id,
            "cause": e.cause.value if e.cause else None,
        }
        body = {"type": e.type.value, "timestamp": fmt_time(e.at), "data": data}
        return OutboxEntry(
            event_id=new_id("evt"),
            type=e.type.value,
            # The delivery ordering key: an order's stock events follow its order events;
            # a SKU's alerts follow each other.
            order_id=e.order_id or f"sku:{e.sku}",
            version=0,
            body=orjson.dumps(body),
            destinations=self._router.destinations_for(e.type.value),
        )


async def _many(conn: AsyncConnection, sql: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(text(sql), rows)


# ---- outside a unit of work ---------------------------------------------------------------


class SqlInventoryStore:
    """Configuration sync, the expiry timer's query, and the read side for the API."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def sync_locations(self, locations: Iterable[Location], now: datetime) -> None:
        rows = [
            {
                "id": loc.id,
                "kind": loc.kind.value,
                "region": loc.region,
                "priority": loc.priority,
                "capacity": loc.capacity,
                "now": to_us(now),
            }
            for loc in locations
        ]
        if not rows:
            return
        async with self.db.write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO locations (id, kind, region, priority, capacity, updated_us)"
                    " VALUES (:id, :kind, :region, :priority, :capacity, :now)"
                    " ON CONFLICT (id) DO UPDATE SET kind = excluded.kind,"
                    " region = excluded.region, priority = excluded.priority,"
                    " capacity = excluded.capacity, updated_us = excluded.updated_us"
                ),
                rows,
            )

    async def due_reservations(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(reservation id, sku) of unpaid holds whose time is up, oldest first."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id, sku FROM reservations WHERE state = 'held'"
                    " AND expires_us IS NOT NULL AND expires_us <= :now"
                    " ORDER BY expires_us LIMIT :limit"
                ),
                {"now": to_us(now), "limit": limit},
            )
            return [(r[0], r[1]) for r in rows]

    async def stock_of(self, sku: str) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT location_id, on_hand, reserved, safety_stock, updated_us FROM stock"
                    " WHERE sku = :sku ORDER BY location_id"
                ),
                {"sku": sku},
            )
            return [
                {
                    "location_id": r[0],
                    "on_hand": int(r[1]),
                    "reserved": int(r[2]),
                    "available": int(r[1]) - int(r[2]),
                    "safety_stock": int(r[3]),
                    "updated_at": fmt_time(from_us(r[4])),
                }
                for r in rows
            ]

    async def reservations_of(self, order_id: str) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(f"{_SELECT_RES} WHERE order_id = :o ORDER BY id"),
                {"o": order_id},
            )
            return [
                {
                    "id": r.id,
                    "sku": r.sku,
                    "location_id": r.location_id,
                    "quantity": r.quantity,
                    "state": r.state.value,
                    "expires_at": fmt_time(r.expires_at) if r.expires_at else None,
                }
                for r in map(_reservation, rows)
            ]

    async def ledger_totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(on_hand, reserved) per (SKU, location) as the ledger alone says: an audit."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT sku, location_id, SUM(on_hand_delta), SUM(reserved_delta)"
                    " FROM stock_ledger GROUP BY sku, location_id"
                )
            )
            return {(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows}

    async def stock_totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        async with self.db.read() as conn:
            rows = await conn.execute(text("SELECT sku, location_id, on_hand, reserved FROM stock"))
            return {(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows}
