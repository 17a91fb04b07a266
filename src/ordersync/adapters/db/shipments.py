"""Shipment storage (migration 0006): the shipment transaction and read-side queries.

A `SqlShipmentTx` rides on the SQL unit of work: the same connection and transaction, so
the order's change, its history, the shipment row, the carrier-inbox record, the alerts
and every outbox entry commit together. Rows are read with `FOR UPDATE` on PostgreSQL
(SQLite has one writer at a time already); the order is always locked before its
shipments. Plain SQL that runs unchanged on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersync.adapters.db.shipment_groups import SqlGroupingTx
from ordersync.adapters.db.unit_of_work import SqlOrderRepository, SqlUnitOfWork
from ordersync.adapters.db.uow_stores import UowStore
from ordersync.clock import from_us, to_us
from ordersync.domain.alerts import Alert
from ordersync.domain.codec import fmt_time, order_from_dict
from ordersync.domain.shipments import CallbackRetry
from ordersync.service.grouping import follow_changes
from ordersync.service.outbox import OutboxEntry
from ordersync.service.shipments import ShipmentRecord

_SELECT = "SELECT doc FROM shipments"
_PENDING = (
    "SELECT callback_id, update_doc, received_us FROM carrier_inbox WHERE carrier_id = :c"
    " AND tracking_number = :t AND outcome = 'received' ORDER BY seq, callback_id"
)
_PENDING_MANY = (
    "SELECT tracking_number, callback_id, update_doc, received_us FROM carrier_inbox"
    " WHERE carrier_id = :c AND tracking_number IN :t AND outcome = 'received'"
    " ORDER BY seq, callback_id"
)
_UPDATE_SHIPMENT = (
    "UPDATE shipments SET tracking_number = :tracking_number, status = :status,"
    " active = :active, picked_up_us = :picked_up_us, due_us = :due_us,"
    " updated_us = :updated_us, doc = :doc WHERE id = :id"
)
_FINISH = (
    "UPDATE carrier_inbox SET outcome = :o, shipment_id = :s, applied_us = :now"
    " WHERE carrier_id = :c AND callback_id = :i"
)
_SET_ALERT_STATE = {
    "acknowledged": "UPDATE alerts SET state = :state, acknowledged_us = :now WHERE id = :id",
    "resolved": (
        "UPDATE alerts SET state = :state, resolved_us = :now, resolved_by = :by WHERE id = :id"
    ),
}


def _row(record: ShipmentRecord, due: datetime | None, now: datetime) -> dict[str, Any]:
    s = record.shipment
    picked = s.picked_up_at
    return {
        "id": s.shipment_id,
        "order_id": record.order_id,
        "carrier_id": s.carrier_id,
        "tracking_number": s.tracking_number,
        "status": record.status,
        "active": record.active,
        "booked_us": to_us(s.booked_at),
        "picked_up_us": None if picked is None else to_us(picked),
        "due_us": None if due is None else to_us(due),
        "updated_us": to_us(now),
        "doc": orjson.dumps(record.to_doc()).decode(),
    }


class SqlShipmentTx:
    def __init__(self, uow: SqlUnitOfWork) -> None:
        self._uow = uow
        self.orders: SqlOrderRepository = uow.orders
        self._lock = "" if uow._c.db.is_sqlite else " FOR UPDATE"
        # Filled by `prefetch` (a batch of callbacks): rows read in one query each, the
        # shipment updates and inbox outcomes written with one statement each at commit.
        self._by_order: dict[str, list[ShipmentRecord]] = {}
        self._pending: dict[tuple[str, str], list[tuple[str, str | None, datetime]]] = {}
        self._raised: dict[str, set[str]] = {}
        self._updates: dict[str, dict[str, Any]] = {}
        self._finished: list[dict[str, Any]] = []
        self._prefetched = False

    async def _conn(self) -> AsyncConnection:
        return await self._uow._c.get()  # the unit of work's own transaction

    async def prefetch(self, order_ids: Sequence[str], keys: Sequence[tuple[str, str]]) -> None:
        """Load (and lock, in this order) the orders, their shipments, the keys' pending
        callbacks and the shipments' raised rules with one query each; until commit, the
        reads below answer from them and the writes are buffered."""
        self._prefetched = True
        conn = await self._conn()
        ids = sorted(set(order_ids))
        if ids:
            stmt = text(
                f"SELECT doc FROM orders WHERE id IN :ids ORDER BY id{self._lock}"  # noqa: S608
            ).bindparams(bindparam("ids", expanding=True))
            for (doc,) in await conn.execute(stmt, {"ids": ids}):
                order = order_from_dict(orjson.loads(doc))
                if order.id not in self.orders._by_id:  # loaded before: that one stands
                    self.orders._remember(order)
            stmt = text(
                f"{_SELECT} WHERE order_id IN :ids ORDER BY order_id, booked_us, id{self._lock}"
            ).bindparams(bindparam("ids", expanding=True))
            by_order: dict[str, list[ShipmentRecord]] = {i: [] for i in ids}
            for (doc,) in await conn.execute(stmt, {"ids": ids}):
                record = ShipmentRecord.from_doc(orjson.loads(doc))
                by_order.setdefault(record.order_id, []).append(record)
            self._by_order.update(by_order)
        by_carrier: dict[str, list[str]] = {}
        for carrier_id, number in sorted(set(keys)):
            by_carrier.setdefault(carrier_id, []).append(number)
            self._pending.setdefault((carrier_id, number), [])
        for carrier_id, numbers in by_carrier.items():
            stmt = text(f"{_PENDING_MANY}{self._lock}").bindparams(bindparam("t", expanding=True))
            for t, i, d, r in await conn.execute(stmt, {"c": carrier_id, "t": numbers}):
                self._pending[(carrier_id, str(t))].append(
                    (str(i), None if d is None else str(d), from_us(r))
                )
        sids = sorted(r.shipment.shipment_id for rs in self._by_order.values() for r in rs)
        if sids:
            stmt = text(
                "SELECT shipment_id, rule FROM alerts WHERE shipment_id IN :ids"
            ).bindparams(bindparam("ids", expanding=True))
            raised: dict[str, set[str]] = {sid: set() for sid in sids}
            for sid, rule in await conn.execute(stmt, {"ids": sids}):
                raised.setdefault(str(sid), set()).add(str(rule))
            self._raised.update(raised)

    async def _flush(self) -> None:
        """Write what `prefetch` mode buffered (before a read it could change, at commit)."""
        if not (self._updates or self._finished):
            return
        conn = await self._conn()
        if self._updates:
            rows, self._updates = list(self._updates.values()), {}
            await conn.execute(text(_UPDATE_SHIPMENT), rows)
        if self._finished:
            rows2, self._finished = self._finished, []
            await conn.execute(text(_FINISH), rows2)

    async def claim_callback(
        self,
        carrier_id: str,
        callback_id: str,
        tracking_number: str,
        body: bytes,
        now: datetime,
        update_doc: str | None = None,
    ) -> bool:
        conn = await self._conn()
        # `seq` is the order of arrival; two callbacks racing in separate transactions may
        # share one (their relative order is arbitrary anyway), the callback id breaks it.
        result = await conn.execute(
            text(
                "INSERT INTO carrier_inbox (carrier_id, callback_id, tracking_number, outcome,"
                " received_us, body, update_doc, seq) VALUES (:c, :i, :t, 'received', :now,"
                " :body, :doc, (SELECT COALESCE(MAX(seq), 0) + 1 FROM carrier_inbox))"
                " ON CONFLICT (carrier_id, callback_id) DO NOTHING"
            ),
            {
                "c": carrier_id,
                "i": callback_id,
                "t": tracking_number,
                "now": to_us(now),
                "body": body,
                "doc": update_doc,
            },
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def pending_callbacks(
        self, carrier_id: str, tracking_number: str
    ) -> list[tuple[str, str | None, datetime]]:
        cached = self._pending.pop((carrier_id, tracking_number), None)
        if cached is not None:
            return cached
        await self._flush()
        conn = await self._conn()
        rows = await conn.execute(
            text(f"{_PENDING}{self._lock}"),
            {"c": carrier_id, "t": tracking_number},
        )
        return [(str(i), None if d is None else str(d), from_us(r)) for i, d, r in rows]

    async def finish_callback(
        self,
        carrier_id: str,
        callback_id: str,
        outcome: str,
        shipment_id: str | None,
        now: datetime | None = None,
    ) -> None:
        conn = await self._conn()
        await conn.execute(
            text(_FINISH),
            {
                "o": outcome,
                "s": shipment_id,
                "c": carrier_id,
                "i": callback_id,
                "now": None if now is None else to_us(now),
            },
        )

    async def finish_callbacks(
        self, carrier_id: str, outcomes: Mapping[str, str], shipment_id: str, now: datetime
    ) -> None:
        rows = [
            {"o": o, "s": shipment_id, "c": carrier_id, "i": i, "now": to_us(now)}
            for i, o in outcomes.items()
        ]
        if not rows:
            return
        if self._prefetched:  # written at commit
            self._finished += rows
            return
        conn = await self._conn()
        await conn.execute(text(_FINISH), rows)

    async def _one(self, where: str, params: dict[str, Any]) -> ShipmentRecord | None:
        await self._flush()
        conn = await self._conn()
        row = (await conn.execute(text(f"{_SELECT} WHERE {where}{self._lock}"), params)).first()
        return None if row is None else ShipmentRecord.from_doc(orjson.loads(row[0]))

    async def shipment(self, shipment_id: str) -> ShipmentRecord | None:
        return await self._one("id = :id", {"id": shipment_id})

    async def shipment_by_tracking(
        self, carrier_id: str, tracking_number: str
    ) -> ShipmentRecord | None:
        return await self._one(
            "carrier_id = :c AND tracking_number = :t", {"c": carrier_id, "t": tracking_number}
        )

    async def shipments_of_order(self, order_id: str) -> list[ShipmentRecord]:
        cached = self._by_order.get(order_id)
        if cached is not None:
            return cached  # the same records: what this transaction changed is in them
        await self._flush()
        conn = await self._conn()
        rows = await conn.execute(
            text(f"{_SELECT} WHERE order_id = :o ORDER BY booked_us, id{self._lock}"),
            {"o": order_id},
        )
        return [ShipmentRecord.from_doc(orjson.loads(doc)) for (doc,) in rows]

    async def insert_shipment(
        self, record: ShipmentRecord, due: datetime | None, now: datetime
    ) -> None:
        conn = await self._conn()
        await conn.execute(
            text(
                "INSERT INTO shipments (id, order_id, carrier_id, tracking_number, status,"
                " active, booked_us, picked_up_us, due_us, updated_us, doc) VALUES (:id,"
                " :order_id, :carrier_id, :tracking_number, :status, :active, :booked_us,"
                " :picked_up_us, :due_us, :updated_us, :doc)"
            ),
            _row(record, due, now),
        )

    async def update_shipment(
        self, record: ShipmentRecord, due: datetime | None, now: datetime
    ) -> None:
        row = _row(record, due, now)
        if self._prefetched:  # written at commit (or before a read of shipments)
            self._updates[row["id"]] = row
            return
        conn = await self._conn()
        await conn.execute(text(_UPDATE_SHIPMENT), row)

    async def raised_rules(self, shipment_id: str) -> set[str]:
        cached = self._raised.get(shipment_id)
        if cached is not None:
            return set(cached)
        conn = await self._conn()
        rows = await conn.execute(
            text("SELECT rule FROM alerts WHERE shipment_id = :s"), {"s": shipment_id}
        )
        return {rule for (rule,) in rows}

    async def insert_alert(self, alert_id: str, alert: Alert, order_id: str) -> bool:
        conn = await self._conn()
        result = await conn.execute(
            text(
                "INSERT INTO alerts (id, shipment_id, order_id, rule, state, due_us, raised_us,"
                " detail) VALUES (:id, :s, :o, :rule, 'open', :due, :raised, :detail)"
                " ON CONFLICT (shipment_id, rule) DO NOTHING"
            ),
            {
                "id": alert_id,
                "s": alert.shipment_id,
                "o": order_id,
                "rule": str(alert.kind),
                "due": to_us(alert.due_at),
                "raised": to_us(alert.raised_at),
                "detail": alert.detail,
            },
        )
        inserted = bool(getattr(result, "rowcount", 0) == 1)
        if alert.shipment_id in self._raised:
            self._raised[alert.shipment_id].add(str(alert.kind))
        return inserted

    async def alert(self, alert_id: str) -> dict[str, Any] | None:
        conn = await self._conn()
        row = (
            await conn.execute(text(f"{_ALERT} WHERE id = :id{self._lock}"), {"id": alert_id})
        ).first()
        return None if row is None else _alert_view(row)

    async def set_alert_state(
        self, alert_id: str, state: str, principal: str, now: datetime
    ) -> dict[str, Any]:
        conn = await self._conn()
        await conn.execute(
            text(_SET_ALERT_STATE[state]),
            {"state": state, "now": to_us(now), "by": principal, "id": alert_id},
        )
        row = (await conn.execute(text(f"{_ALERT} WHERE id = :id"), {"id": alert_id})).one()
        return _alert_view(row)

    async def schedule_reminder(
        self, order_id: str, kind: str, due: datetime, now: datetime, *, sent: bool
    ) -> bool:
        conn = await self._conn()
        result = await conn.execute(
            text(
                "INSERT INTO order_reminders (order_id, kind, due_us, created_us, sent_us)"
                " VALUES (:o, :k, :due, :now, :sent)"
                " ON CONFLICT (order_id, kind) DO NOTHING"
            ),
            {
                "o": order_id,
                "k": kind,
                "due": to_us(due),
                "now": to_us(now),
                "sent": to_us(now) if sent else None,
            },
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def fire_reminder(self, order_id: str, kind: str, now: datetime) -> bool:
        conn = await self._conn()
        result = await conn.execute(
            text(
                "UPDATE order_reminders SET sent_us = :now"
                " WHERE order_id = :o AND kind = :k AND sent_us IS NULL"
            ),
            {"o": order_id, "k": kind, "now": to_us(now)},
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    @property
    def unit_of_work(self) -> SqlUnitOfWork:
        return self._uow

    def emit(self, entry: OutboxEntry) -> None:
        # Flushed with the orders' own outbox entries at commit (events + deliveries).
        self._uow.orders.outbox.append(entry)

    async def commit(self) -> None:
        # A merged group follows the orders this transaction shipped, delivered, cancelled
        # or refunded, in this same transaction.
        await follow_changes(self._uow, SqlGroupingTx(self._uow))
        await self._flush()
        await self._uow.commit()


class SqlShipmentStore(UowStore):
    def transaction(self) -> AbstractAsyncContextManager[SqlShipmentTx]:
        return self._transaction(SqlShipmentTx)

    async def order_of_tracking(self, carrier_id: str, tracking_number: str) -> str | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT order_id FROM shipments"
                        " WHERE carrier_id = :c AND tracking_number = :t"
                    ),
                    {"c": carrier_id, "t": tracking_number},
                )
            ).first()
        return None if row is None else str(row[0])

    async def orders_of_tracking(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        by_carrier: dict[str, set[str]] = {}
        for carrier_id, number in keys:
            by_carrier.setdefault(carrier_id, set()).add(number)
        found: dict[tuple[str, str], str] = {}
        if not by_carrier:
            return found
        stmt = text(
            "SELECT tracking_number, order_id FROM shipments"
            " WHERE carrier_id = :c AND tracking_number IN :numbers"
        ).bindparams(bindparam("numbers", expanding=True))
        async with self.db.read() as conn:
            for carrier_id, numbers in sorted(by_carrier.items()):
                rows = await conn.execute(stmt, {"c": carrier_id, "numbers": sorted(numbers)})
                found.update({(carrier_id, str(t)): str(o) for t, o in rows})
        return found

    async def order_of_shipment(self, shipment_id: str) -> str | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    text("SELECT order_id FROM shipments WHERE id = :id"), {"id": shipment_id}
                )
            ).first()
        return None if row is None else str(row[0])

    async def due_shipments(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id, order_id FROM shipments WHERE due_us IS NOT NULL"
                    " AND due_us <= :now ORDER BY due_us LIMIT :limit"
                ),
                {"now": to_us(now), "limit": limit},
            )
            return [(str(i), str(o)) for i, o in rows]

    async def list_for_order(self, order_id: str) -> list[ShipmentRecord]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(f"{_SELECT} WHERE order_id = :o ORDER BY booked_us, id"), {"o": order_id}
            )
            return [ShipmentRecord.from_doc(orjson.loads(doc)) for (doc,) in rows]

    async def open_alerts(self, limit: int) -> list[dict[str, Any]]:
        return await self.alerts(("open", "acknowledged"), limit)

    async def alerts(self, states: tuple[str, ...], limit: int) -> list[dict[str, Any]]:
        if not states:
            return []
        names = ", ".join(f":s{i}" for i in range(len(states)))
        params: dict[str, Any] = {f"s{i}": s for i, s in enumerate(states)}
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(f"{_ALERT} WHERE state IN ({names}) ORDER BY raised_us, id LIMIT :limit"),
                {**params, "limit": limit},
            )
            return [_alert_view(r) for r in rows]

    async def order_of_alert(self, alert_id: str) -> str | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    text("SELECT order_id FROM alerts WHERE id = :id"), {"id": alert_id}
                )
            ).first()
        return None if row is None else str(row[0])

    async def parked_count(self) -> int:
        async with self.db.read() as conn:  # the partial index ix_carrier_inbox_parked
            n = await conn.execute(
                text("SELECT count(*) FROM carrier_inbox WHERE outcome = 'parked'")
            )
            return int(n.scalar_one())

    async def open_alert_counts(self) -> dict[str, int]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                text("SELECT rule, count(*) FROM alerts WHERE state <> 'resolved' GROUP BY rule")
            )
            return {str(rule): int(n) for rule, n in rows}

    async def received_callbacks(self, limit: int) -> list[tuple[str, str]]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT carrier_id, tracking_number, MIN(seq) AS first_seq FROM carrier_inbox"
                    " WHERE outcome = 'received' GROUP BY carrier_id, tracking_number"
                    " ORDER BY first_seq LIMIT :limit"
                ),
                {"limit": limit},
            )
            return [(str(c), str(t)) for c, t, _ in rows]

    async def due_reminders(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT order_id, kind FROM order_reminders WHERE sent_us IS NULL"
                    " AND due_us <= :now ORDER BY due_us LIMIT :limit"
                ),
                {"now": to_us(now), "limit": limit},
            )
            return [(str(o), str(k)) for o, k in rows]

    # ---- callbacks that keep failing to apply (migration 0013) ----------------------

    async def note_apply_failure(
        self,
        carrier_id: str,
        tracking_number: str,
        error: str,
        now: datetime,
        retry: CallbackRetry,
    ) -> list[str]:
        """Count a failed application against the shipment's `received` callbacks: each
        waits until `retry` says, or is parked once it has failed `max_attempts` times.
        Returns the callback ids parked now."""
        parked: list[str] = []
        lock = "" if self.db.is_sqlite else " FOR UPDATE"
        async with self.db.write() as conn:
            rows = await conn.execute(
                text(
                    "SELECT callback_id, attempts FROM carrier_inbox WHERE carrier_id = :c"  # noqa: S608
                    f" AND tracking_number = :t AND outcome = 'received'{lock}"
                ),
                {"c": carrier_id, "t": tracking_number},
            )
            updates = []
            for callback_id, attempts in rows.all():
                n = int(attempts or 0) + 1
                at = retry.next_try(n, now)
                if at is None:
                    parked.append(str(callback_id))
                updates.append(
                    {
                        "c": carrier_id,
                        "i": callback_id,
                        "n": n,
                        "e": error,
                        "retry": None if at is None else to_us(at),
                        "o": "received" if at is not None else "parked",
                        "now": None if at is not None else to_us(now),
                    }
                )
            if updates:
                await conn.execute(
                    text(
                        "UPDATE carrier_inbox SET attempts = :n, last_error = :e,"
                        " retry_us = :retry, outcome = :o, applied_us = :now"
                        " WHERE carrier_id = :c AND callback_id = :i AND outcome = 'received'"
                    ),
                    updates,
                )
        return parked

    async def held_back(self, now: datetime) -> set[tuple[str, str]]:
        """(carrier id, tracking number) whose `received` callbacks wait for a retry."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT DISTINCT carrier_id, tracking_number FROM carrier_inbox"
                    " WHERE outcome = 'received' AND retry_us > :now"
                ),
                {"now": to_us(now)},
            )
            return {(str(c), str(t)) for c, t in rows}

    async def parked_callbacks(self, limit: int) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT i.carrier_id, i.callback_id, i.tracking_number, s.id, s.order_id,"
                    " i.attempts, i.last_error, i.received_us, i.applied_us FROM carrier_inbox i"
                    " LEFT JOIN shipments s ON s.carrier_id = i.carrier_id"
                    " AND s.tracking_number = i.tracking_number"
                    " WHERE i.outcome = 'parked' ORDER BY i.seq, i.callback_id LIMIT :limit"
                ),
                {"limit": limit},
            )
            return [
                {
                    "carrier_id": r[0],
                    "callback_id": r[1],
                    "tracking_number": r[2],
                    "shipment_id": r[3],
                    "order_id": r[4],
                    "attempts": int(r[5] or 0),
                    "last_error": r[6],
                    "received_at": fmt_time(from_us(r[7])),
                    "parked_at": None if r[8] is None else fmt_time(from_us(r[8])),
                }
                for r in rows
            ]

    async def unpark_callback(
        self, carrier_id: str, callback_id: str
    ) -> tuple[str, str | None] | None:
        """Put a parked callback back to `received` with its attempts reset. Returns (its
        outcome before, its tracking number); None if there is no such callback."""
        lock = "" if self.db.is_sqlite else " FOR UPDATE"
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT outcome, tracking_number FROM carrier_inbox"  # noqa: S608
                        f" WHERE carrier_id = :c AND callback_id = :i{lock}"
                    ),
                    {"c": carrier_id, "i": callback_id},
                )
            ).first()
            if row is None:
                return None
            if row[0] == "parked":
                await conn.execute(
                    text(
                        "UPDATE carrier_inbox SET outcome = 'received', attempts = 0,"
                        " retry_us = NULL, applied_us = NULL"
                        " WHERE carrier_id = :c AND callback_id = :i AND outcome = 'parked'"
                    ),
                    {"c": carrier_id, "i": callback_id},
                )
            return str(row[0]), None if row[1] is None else str(row[1])

    async def unpark_callbacks(
        self,
        carrier_ids: Sequence[str],
        *,
        parked_before: datetime | None = None,
        parked_after: datetime | None = None,
        error_contains: str | None = None,
        limit: int = 1000,
    ) -> list[tuple[str, str, str]]:
        """Put the parked callbacks of `carrier_ids` that match the filters (parked in
        [`parked_after`, `parked_before`), `last_error` holding `error_contains`, case
        sensitive) back to `received` with their attempts reset, as `unpark_callback` does,
        the oldest `limit` of them (in order of arrival), in ONE transaction. Returns
        (carrier id, callback id, tracking number) of each, oldest first."""
        if not carrier_ids:
            return []
        where = ["outcome = 'parked'", "carrier_id IN :cs", "tracking_number IS NOT NULL"]
        params: dict[str, Any] = {"cs": list(carrier_ids), "limit": limit}
        if parked_before is not None:
            where.append("applied_us < :before")
            params["before"] = to_us(parked_before)
        if parked_after is not None:
            where.append("applied_us >= :after")
            params["after"] = to_us(parked_after)
        if error_contains is not None:  # a plain substring: no LIKE wildcards to escape
            find = "instr(last_error, :e)" if self.db.is_sqlite else "strpos(last_error, :e)"
            where.append(f"{find} > 0")
            params["e"] = error_contains
        lock = "" if self.db.is_sqlite else " FOR UPDATE"
        stmt = text(
            "SELECT carrier_id, callback_id, tracking_number FROM carrier_inbox"  # noqa: S608
            f" WHERE {' AND '.join(where)} ORDER BY seq, callback_id LIMIT :limit{lock}"
        ).bindparams(bindparam("cs", expanding=True))
        async with self.db.write() as conn:
            rows = [(str(c), str(i), str(t)) for c, i, t in await conn.execute(stmt, params)]
            if rows:
                await conn.execute(
                    text(
                        "UPDATE carrier_inbox SET outcome = 'received', attempts = 0,"
                        " retry_us = NULL, applied_us = NULL"
                        " WHERE carrier_id = :c AND callback_id = :i AND outcome = 'parked'"
                    ),
                    [{"c": c, "i": i} for c, i, _ in rows],
                )
        return rows


_ALERT = (
    "SELECT id, shipment_id, order_id, rule, state, due_us, raised_us, detail,"
    " acknowledged_us, resolved_us, resolved_by FROM alerts"
)


def _alert_view(r: Any) -> dict[str, Any]:
    return {
        "id": r[0],
        "shipment_id": r[1],
        "order_id": r[2],
        "rule": r[3],
        "state": r[4],
        "due_at": fmt_time(from_us(r[5])),
        "raised_at": fmt_time(from_us(r[6])),
        "detail": r[7],
        "acknowledged_at": None if r[8] is None else fmt_time(from_us(r[8])),
        "resolved_at": None if r[9] is None else fmt_time(from_us(r[9])),
        "resolved_by": r[10],
    }
