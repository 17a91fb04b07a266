"""Inventory storage: the stock repository of the SQL unit of work, and read-side queries.

Rows a unit of work will change are read with `FOR UPDATE` on PostgreSQL (SQLite has one
writer at a time already), decided in the domain, and written at commit with absolute
values under that lock. The `stock` CHECK constraint refuses an oversold row whatever
happens above it, and a process killed mid-reservation leaves an uncommitted transaction
that the database rolls back: nothing half-reserved survives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersync.adapters.db import routing as routing_store
from ordersync.adapters.db.database import Database
from ordersync.adapters.db.pg_batch import Args, in_transaction
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
from ordersync.service.pipeline import Carrying, Turn
from ordersync.service.unit_of_work import StockRepository, StoredResponse

if TYPE_CHECKING:
    from ordersync.adapters.db.unit_of_work import SqlUnitOfWork, _Conn

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


# ---- PostgreSQL: the batch path in as few round trips (and as little Python) as it takes
#
# A flash-sale batch is two statements besides BEGIN and COMMIT: one locks and reads the
# batch's held reservations and stock rows, one writes the stock, the reservations, the
# ledger, the unrouted events and the "stock changed" marker (data-modifying CTEs: one
# statement, so all or nothing like the rest of the transaction). They go straight to
# asyncpg inside the unit of work's transaction (SQLAlchemy's per-statement cost is about
# three times asyncpg's), each column as one parameter (`pg_batch.Args`).
# `= ANY(CAST((SELECT <array>) AS text[]))`: the list is split once per statement (an
# InitPlan), whatever plan the server caches for the prepared statement;
# `ANY(string_to_array($1, ...))` in a sequential scan's filter would split it for every
# row. (A join with the unnested list let a generic plan made while the table was small
# walk the whole held index for every batch.)
_PG_HELD = (
    "SELECT 1 AS k, id, order_id, sku, location_id, quantity, state, expires_us, created_us,"
    " NULL::bigint AS v FROM (SELECT * FROM reservations"
    " WHERE order_id = ANY(CAST((SELECT {a}) AS text[])) AND state = 'held' FOR UPDATE) AS r"
)
_PG_STOCK = (
    "SELECT 0, NULL, NULL, sku, location_id, on_hand, NULL, reserved, safety_stock, version"
    " FROM (SELECT * FROM stock WHERE sku = ANY(CAST((SELECT {a}) AS text[]))"
    " ORDER BY sku, location_id FOR UPDATE) AS s"
)


class StaleStock(Exception):
    """A stock row changed under a batch computed from a carried-over state (ADR 10):
    nothing of the batch was written; it is computed again from locked rows."""


@dataclass(slots=True)
class StockCarry:
    """What a pipelined writer knows after its last batch, before that batch commits.

    The next batch starts from these levels instead of reading (and locking) the rows, so
    its Python work overlaps the previous commit; its stock UPDATE is guarded by the
    version it expects, which only holds once the previous batch committed (ADR 10).
    `reservations` are the holds of batches not known to be committed when the next
    batch read the database (seq -> holds), so asking twice for one order still finds
    its hold while that is in flight."""

    levels: dict[tuple[str, str], StockLevel]
    before: dict[str, int]
    reservations: dict[int, list[Reservation]] = field(default_factory=dict)

    def visible_after(self, committed: int) -> StockCarry:
        """The same carry, without holds of batches committed up to `committed` (the
        database shows them to the next batch's read)."""
        return StockCarry(
            self.levels,
            self.before,
            {seq: held for seq, held in self.reservations.items() if seq > committed},
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
    # Set by the hub (`inventory.record_unrouted_events`): store stock events no destination
    # subscribes to in `events` as well (a record nothing reads; the ledger has each one).
    record_unrouted_events: bool = False

    def __init__(
        self,
        c: _Conn,
        router: EventRouter,
        policy: InventoryPolicy,
        carry: StockCarry | None = None,
    ) -> None:
        self._c = c  # the unit of work's lazily opened write transaction
        self._router = router
        self.policy = policy
        self.inventory = Inventory(policy.locations)
        self._loaded: set[str] = set()
        self._orders: set[str] = set()  # orders whose held reservations are loaded
        self._pending: set[str] = set()  # orders to look up with the next query
        self._feed: dict[tuple[str, str], StoredResponse] = {}
        self._fed: set[tuple[str, str]] = set()  # rows a WMS/ERP feed reported (fed_us)
        self._before: dict[str, int] = {}  # SKU -> available everywhere when loaded
        # (sku, location) -> (version, on_hand, reserved) the database row must still have
        # when this batch writes it: what was read under lock, or what a carried-over state
        # expects (a compare-and-swap on everything the batch's decisions read).
        self._expect: dict[tuple[str, str], tuple[int, int, int]] = {}
        self._carried: dict[int, list[Reservation]] = {}
        self._custom_plans = False  # SET LOCAL plan_cache_mode sent in this transaction
        if carry is not None:
            inv = self.inventory
            for key, level in carry.levels.items():
                inv.add_level(dataclasses.replace(level))
                self._expect[key] = (level.version, level.on_hand, level.reserved)
                self._loaded.add(level.sku)
            self._before.update(carry.before)
            self._carried = carry.reservations
            for held in carry.reservations.values():
                for res in held:
                    inv.add_reservation(res)

    async def _pg(self, conn: AsyncConnection) -> Any:
        """The asyncpg connection of this transaction, with custom plans for its statements.

        The batch statements run prepared (asyncpg caches them per connection). After five
        runs PostgreSQL may switch a prepared statement to a generic plan made with the
        statistics of that moment: during a sale `reservations` grows by thousands of rows
        a second, faster than autovacuum's ANALYZE follows, and a generic plan chosen
        while it was small read the whole table for every batch (PostgreSQL CPU per
        reservation 235 µs instead of 74 at 64 buyers). One `SET LOCAL` per batch, for
        this transaction only: the order path keeps its cached plans."""
        raw = await in_transaction(conn)
        if not self._custom_plans:
            await raw.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            self._custom_plans = True
        return raw

    def carry_over(self, seq: int) -> StockCarry:
        """The state after this batch's changes, for the next batch of a pipelined writer
        (before `flush`, which forgets what is new). Levels are copied when the next unit
        of work starts, so this batch's flush writes exactly what it decided."""
        inv = self.inventory
        reservations = dict(self._carried)
        if inv.new_reservations:
            reservations[seq] = [inv.reservations[rid] for rid in inv.new_reservations]
        before = {sku: sum(lv.available for lv in inv.levels_of(sku)) for sku in self._loaded}
        return StockCarry(dict(inv.levels), before, reservations)

    def mark_fed(self, sku: str, location_id: str) -> None:
        self._fed.add((sku, location_id))

    async def load(self, skus: Iterable[str]) -> Inventory:
        wanted = sorted(set(skus) - self._loaded)
        if wanted or self._pending:
            await self._fetch(wanted)
        return self.inventory

    def _remember(self, rows: Iterable[Any]) -> list[Reservation]:
        out = []
        known = self.inventory.reservations
        for row in rows:
            res = known.get(row[0])
            out.append(
                res if res is not None else self.inventory.add_reservation(_reservation(row))
            )
        return out

    async def held_for_order(self, order_id: str) -> list[Reservation]:
        if order_id not in self._orders:
            self._pending.add(order_id)
            await self._fetch([])
        return self.inventory.held_for(order_id)

    async def preload_orders(self, order_ids: Iterable[str]) -> None:
        """Deferred: looked up with the next `load` (one round trip on PostgreSQL for the
        batch's held reservations and its stock rows, both locked)."""
        self._pending.update(o for o in order_ids if o not in self._orders)

    async def _fetch(self, skus: list[str]) -> None:
        """Lock and load the pending orders' held reservations, then `skus`' stock rows
        (reservations first, as an order change does), then any SKU a hold is of."""
        orders, self._pending = sorted(self._pending), set()
        conn = await self._c.get()
        held: list[Reservation] = []
        rows: list[Any] = []
        if self._c.db.is_sqlite:
            if orders:
                stmt = text(
                    f"{_SELECT_RES} WHERE order_id IN :ids AND state = 'held' ORDER BY id"
                ).bindparams(bindparam("ids", expanding=True))
                held = self._remember(await conn.execute(stmt, {"ids": orders}))
            if skus:
                stmt = text(f"{_SELECT_STOCK} WHERE sku IN :skus ORDER BY sku, location_id")
                rows = list(
                    await conn.execute(
                        stmt.bindparams(bindparam("skus", expanding=True)), {"skus": skus}
                    )
                )
        else:  # one statement, one round trip, whatever the batch size
            pg = await self._pg(conn)
            parts: list[str] = []
            args = Args()
            if orders:
                parts.append(_PG_HELD.format(a=args.array(orders, "text")))
            if skus:
                parts.append(_PG_STOCK.format(a=args.array(skus, "text")))
            if parts:
                fetched = await pg.fetch(" UNION ALL ".join(parts), *args.values)
                held = self._remember(r[1:9] for r in fetched if r[0] == 1)
                rows = [(r[3], r[4], r[5], r[7], r[8], r[9]) for r in fetched if r[0] == 0]
        inv = self.inventory
        for sku, loc, on_hand, reserved, safety, version in rows:
            inv.add_level(
                StockLevel(sku, loc, int(on_hand), int(reserved), int(safety), int(version))
            )
            self._expect[(sku, loc)] = (int(version), int(on_hand), int(reserved))
        self._orders.update(orders)
        self._loaded.update(skus)
        for sku in skus:
            self._before[sku] = sum(lv.available for lv in inv.levels_of(sku))
        if held:  # a hold of a SKU this batch did not ask for (a retry, a release)
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

    async def flush(
        self, conn: AsyncConnection, now_us: int, turn: Turn | None = None
    ) -> list[OutboxEntry]:
        """Write what changed; returns the stock events for the unit of work's outbox
        that someone subscribes to (the unit of work writes those with their deliveries;
        the others are recorded here).

        `turn` (a pipelined batch, ADR 10): a batch of new holds only (stock rows, new
        reservations, ledger, events, markers) builds its statement first and sends it
        once the previous batch's guarded write returned: the UPDATE then waits for that
        batch's row lock and PostgreSQL re-checks the guard against what it committed.
        Anything else (a reservation or routing row updated, a new stock row, a feed)
        waits for the previous batch's COMMIT first, since it may touch rows only that
        COMMIT makes visible."""
        inv = self.inventory
        if turn is not None and (
            inv.dirty_reservations
            or inv.new_levels
            or inv.new_decisions
            or inv.new_assigned
            or self._feed
            or self._fed
        ):
            await turn.wait(committed=True)
        ledger, events = inv.take_changes()
        pg = not self._c.db.is_sqlite
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
        for new in inv.new_levels:
            lv = inv.levels[new]
            self._expect[new] = (lv.version, lv.on_hand, lv.reserved)
        dirty = [inv.levels[k] for k in sorted(inv.dirty_levels)]
        if not pg:
            await _many(
                conn,
                "UPDATE stock SET on_hand = :on_hand, reserved = :reserved,"
                " safety_stock = :safety, version = :version, updated_us = :now"
                " WHERE sku = :sku AND location_id = :loc",
                [level_row(k) for k in sorted(inv.dirty_levels)],
            )

        events, changed = await self._signal_changes(conn, now_us, events, markers=not pg)

        res = [inv.reservations[rid] for rid in inv.new_reservations]
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

        res_rows = [
            (
                r.id,
                r.order_id,
                r.sku,
                r.location_id,
                r.quantity,
                r.state,  # StrEnum members are str: no `.value` (an enum descriptor call)
                to_us(r.expires_at) if r.expires_at else None,
                to_us(r.created_at),
                now_us,
            )
            for r in res
        ]
        ledger_rows = [
            (
                e.sku,
                e.location_id,
                e.cause,
                e.on_hand_delta,
                e.reserved_delta,
                e.reference,
                e.reservation_id,
                to_us(e.at),
            )
            for e in ledger
        ]
        # The unit of work writes the routed events with their deliveries, as it does for
        # orders. Events nobody subscribes to are dropped (the ledger rows above are the
        # record of every movement), or, with `record_unrouted_events`, stored here too.
        routed: list[OutboxEntry] = []
        event_rows: list[tuple[str, str, str, bytes]] = []
        destinations: dict[StockEventType, tuple[str, ...]] = {}
        router, record = self._router, self.record_unrouted_events
        for e in events:
            dest = destinations.get(e.type)
            if dest is None:
                dest = destinations[e.type] = tuple(router.destinations_for(e.type.value))
            if not (dest or record):
                continue
            key = e.order_id or f"sku:{e.sku}"
            body = _event_body(e, fmt_time(e.at))
            event_id = new_id("evt")
            if dest:
                routed.append(OutboxEntry(event_id, e.type.value, key, 0, body, dest))
            else:
                event_rows.append((event_id, e.type.value, key, body))

        if pg:
            await self._write_pg(
                conn, now_us, dirty, changed, res_rows, ledger_rows, event_rows, turn
            )
            return routed
        await self._insert(conn, "reservations", _RES_TYPES, res_rows)
        await self._insert(conn, "stock_ledger", _LEDGER_TYPES, ledger_rows)
        await self._insert(
            conn,
            "events",
            _EVENT_TYPES,
            [(i, t, o, 0, now_us, body, now_us) for i, t, o, body in event_rows],
        )
        return routed

    async def _write_pg(
        self,
        conn: AsyncConnection,
        now_us: int,
        dirty: list[StockLevel],
        changed: list[str],
        res_rows: list[tuple[Any, ...]],
        ledger_rows: list[tuple[Any, ...]],
        event_rows: list[tuple[str, str, str, bytes]],
        turn: Turn | None = None,
    ) -> None:
        """The stock rows, "stock changed" markers, reservations, ledger and unrouted
        events of a batch: one statement (data-modifying CTEs), one round trip; in a
        `turn` (see `flush`) built first and sent once the previous batch has written. (Its
        inserts as a statement of their own, sent before that wait, measured no faster:
        the extra round trip costs what the overlap saves.)"""
        pg = await self._pg(conn)
        args = Args()
        stock = self._pg_stock(args, now_us, dirty, changed, locked=turn is None)
        inserts = _pg_inserts(args, now_us, res_rows, ledger_rows, event_rows)
        if not (stock or inserts):
            return
        sql = _with([*stock, *inserts], dirty, lock=turn is not None and bool(dirty))
        if turn is not None:
            await turn.wait(committed=False)
        written = await pg.fetchval(sql, *args.values)
        if written != len(dirty):
            raise StaleStock(f"{len(dirty) - written} stock row(s) changed under this batch")
        for lv in dirty:  # the next write in this transaction starts from these
            self._expect[(lv.sku, lv.location_id)] = (lv.version, lv.on_hand, lv.reserved)

    def _pg_stock(
        self, args: Args, now_us: int, dirty: list[StockLevel], changed: list[str], *, locked: bool
    ) -> list[str]:
        """The guarded stock UPDATE (first: `w0`, counted) and the markers' upsert.

        Guarded by the row this batch started from (version, on_hand, reserved): under the
        row lock it always holds; from a carried-over state only once the previous batch
        committed exactly what this one assumed. `locked=False` (a pipelined batch, sent
        while the previous one may still be committing): the CTE `g` locks the rows,
        waiting for that COMMIT, and (READ COMMITTED) returns them as committed; the guard
        is checked on those. A guard on `s` itself would be checked on the statement's
        snapshot, before the wait, and miss every time."""
        parts: list[str] = []
        if dirty:
            expect = self._expect
            cols: list[tuple[list[Any], str]] = [
                ([lv.sku for lv in dirty], "text"),
                ([lv.location_id for lv in dirty], "text"),
                ([lv.on_hand for lv in dirty], "bigint"),
                ([lv.reserved for lv in dirty], "bigint"),
                ([lv.safety_stock for lv in dirty], "bigint"),
                ([lv.version for lv in dirty], "bigint"),
                ([expect[(lv.sku, lv.location_id)][0] for lv in dirty], "bigint"),
                ([expect[(lv.sku, lv.location_id)][1] for lv in dirty], "bigint"),
                ([expect[(lv.sku, lv.location_id)][2] for lv in dirty], "bigint"),
            ]
            if locked:
                guard, join = "s", ""
            else:
                guard = "g"
                join = " AND g.sku = v.sku AND g.location_id = v.loc"
                skus = sorted({lv.sku for lv in dirty})
                parts.append(
                    "SELECT sku, location_id, version, on_hand, reserved FROM stock"  # noqa: S608 - constants
                    f" WHERE sku = ANY(CAST((SELECT {args.array(skus, 'text')}) AS text[]))"
                    " ORDER BY sku, location_id FOR UPDATE"
                )
            parts.append(
                "UPDATE stock AS s SET on_hand = v.on_hand, reserved = v.reserved,"  # noqa: S608 - constants
                " safety_stock = v.safety, version = v.version,"
                f" updated_us = {args.scalar(now_us, 'bigint')}"
                f" FROM {args.unnest(cols)}"
                " AS v(sku, loc, on_hand, reserved, safety, version, was, was_on_hand,"
                f" was_reserved){'' if locked else ', g'}"
                f" WHERE s.sku = v.sku AND s.location_id = v.loc{join}"
                f" AND {guard}.version = v.was AND {guard}.on_hand = v.was_on_hand"
                f" AND {guard}.reserved = v.was_reserved"
                " RETURNING 1"
            )
        if changed:
            parts.append(
                "INSERT INTO stock_dirty (sku, seq, changed_us) SELECT v.sku, 1,"  # noqa: S608 - constants
                f" {args.scalar(now_us, 'bigint')} FROM {args.unnest([(changed, 'text')])}"
                " AS v(sku) ON CONFLICT (sku) DO UPDATE SET seq = stock_dirty.seq + 1,"
                " changed_us = excluded.changed_us"
            )
        return parts

    async def _signal_changes(
        self, conn: AsyncConnection, now_us: int, events: list[StockEvent], *, markers: bool
    ) -> tuple[list[StockEvent], list[str]]:
        """Feed freshness, the publisher's "stock changed" markers and SKU-wide low-stock
        alerts, in the transaction of the change (before the change sets are cleared).
        Returns the events and the SKUs changed; `markers=False`: the caller writes their
        markers (the PostgreSQL batch statement)."""
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
        if markers:
            await _many(
                conn,
                "INSERT INTO stock_dirty (sku, seq, changed_us) VALUES (:sku, 1, :now)"
                " ON CONFLICT (sku) DO UPDATE SET seq = stock_dirty.seq + 1,"
                " changed_us = excluded.changed_us",
                [{"sku": sku, "now": now_us} for sku in changed],
            )
        threshold = self.low_stock_threshold
        if threshold is None:
            return events, changed
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
        return out, changed

    async def _insert(
        self,
        conn: AsyncConnection,
        table: str,
        types: tuple[tuple[str, str], ...],
        rows: list[tuple[Any, ...]],
    ) -> None:
        """SQLite: many rows with one driver-level `executemany` (tuples straight to the
        driver: SQLAlchemy's per-row parameter processing cost more than the insert).
        PostgreSQL writes these in `_write_pg`. `table` and `types` are this module's
        constants, never input (hence the S608 noqa)."""
        if not rows:
            return
        cols = ", ".join(name for name, _ in types)
        marks = ", ".join("?" for _ in types)
        await conn.exec_driver_sql(
            f"INSERT INTO {table} ({cols}) VALUES ({marks})",  # noqa: S608 - constants
            rows,
        )


def _pg_inserts(
    args: Args,
    now_us: int,
    res_rows: list[tuple[Any, ...]],
    ledger_rows: list[tuple[Any, ...]],
    event_rows: list[tuple[str, str, str, bytes]],
) -> list[str]:
    """A batch's new reservations, ledger entries and unrouted events, as CTE parts."""
    parts: list[str] = []
    for table, types, rows in (
        ("reservations", _RES_TYPES, res_rows),
        ("stock_ledger", _LEDGER_TYPES, ledger_rows),
    ):
        if rows:
            cols = [([row[i] for row in rows], t) for i, (_, t) in enumerate(types)]
            names = ", ".join(name for name, _ in types)
            unnest = args.unnest(cols)
            parts.append(f"INSERT INTO {table} ({names}) SELECT * FROM {unnest}")  # noqa: S608
    if event_rows:
        now = args.scalar(now_us, "bigint")
        cols = [
            ([r[0] for r in event_rows], "text"),
            ([r[1] for r in event_rows], "text"),
            ([r[2] for r in event_rows], "text"),
            ([r[3].decode() for r in event_rows], "text"),  # JSON: UTF-8 text
        ]
        parts.append(
            "INSERT INTO events (id, type, order_id, order_version, created_us, body,"  # noqa: S608 - constants
            f" published_us) SELECT v.id, v.type, v.order_id, 0, {now},"
            f" convert_to(v.body, 'UTF8'), {now} FROM {args.unnest(cols)}"
            " AS v(id, type, order_id, body)"
        )
    return parts


def _with(parts: list[str], dirty: list[StockLevel], *, lock: bool = False) -> str:
    """One statement of data-modifying CTEs; it returns how many stock rows the guarded
    UPDATE wrote (0 without one). `lock`: the first part is the row lock `g`, the UPDATE
    the second."""
    names = [f"w{i}" for i in range(len(parts))]
    if lock:
        names[0] = "g"
    counted = names[1] if lock else names[0]
    tail = f" SELECT (SELECT count(*) FROM {counted})" if dirty else " SELECT 0"  # noqa: S608
    return "WITH " + ", ".join(f"{n} AS ({p})" for n, p in zip(names, parts, strict=True)) + tail


def _event_body(e: StockEvent, timestamp: str | None) -> bytes:
    return orjson.dumps(
        {
            "type": e.type,  # orjson writes an enum member as its value
            "timestamp": timestamp,
            "data": {
                "sku": e.sku,
                "location_id": e.location_id,
                "quantity": e.quantity,
                "available": e.available,
                "order_id": e.order_id,
                "cause": e.cause,
            },
        }
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


def sql_carrying(factory: Callable[[StockCarry | None], SqlUnitOfWork]) -> Carrying:
    """The pipelined inventory writer's hooks on PostgreSQL (ADR 10). `factory(carry)`
    makes the hub's unit of work, its stock starting from `carry` when one is given."""

    def carry_of(uow: Any, seq: int) -> StockCarry:
        stock: SqlStockRepository = uow.stock
        return stock.carry_over(seq)

    def prune(carry: StockCarry, committed: int) -> StockCarry:
        return carry.visible_after(committed)

    async def commit(uow: Any, turn: Turn) -> None:
        sql_uow: SqlUnitOfWork = uow
        await sql_uow.commit(turn)

    return Carrying(factory, carry_of, prune, commit=commit)
