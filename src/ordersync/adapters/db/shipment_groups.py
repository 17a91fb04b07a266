"""Shipment-group storage (migration 0009): the grouping transaction and read-side queries.

A `SqlGroupingTx` rides on the SQL unit of work: the same connection and transaction, so
the group rows, the membership rows, the orders' new versions and history, and the outbox
entries commit together. Orders are locked through the unit of work's repository
(`FOR UPDATE` on PostgreSQL; SQLite has one writer at a time) BEFORE their groups are
read: membership rows change only under the locks of every order they name.
Plain SQL that runs unchanged on SQLite and PostgreSQL.

The same transaction object is how a group follows its orders inside someone else's unit
of work (a status change, a carrier callback): this module registers it with the grouping
service as the SQL unit of work's `GroupMembership`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersync.adapters.db.unit_of_work import SqlOrderRepository, SqlUnitOfWork
from ordersync.adapters.db.uow_stores import UowStore
from ordersync.clock import to_us
from ordersync.domain.codec import order_from_dict
from ordersync.domain.merge_split import ShipmentGroup, group_from_dict, group_to_dict
from ordersync.domain.order_status import OrderStatus
from ordersync.domain.orders import Order
from ordersync.service.grouping import StoredGroup, register_membership
from ordersync.service.outbox import EventRouter, OutboxEntry
from ordersync.service.unit_of_work import IdempotencyStore, StockRepository, UnitOfWork

_ACTIVE_OF_ORDERS = (
    "SELECT m.order_id, g.doc FROM shipment_group_members m"
    " JOIN shipment_groups g ON g.id = m.group_id"
    " WHERE m.order_id IN :ids AND g.state = 'active' ORDER BY m.order_id, g.id"
)

_OPEN = "SELECT doc FROM orders WHERE status IN :statuses AND created_us >= :since"
_OLDEST_OPEN = f"{_OPEN} ORDER BY created_us, id LIMIT :limit"
_NEWEST_OPEN = f"{_OPEN} ORDER BY created_us DESC, id DESC LIMIT :limit"


def _stored(row: Any) -> StoredGroup:
    return StoredGroup(group_from_dict(orjson.loads(row[0])), row[1] == "active")


async def _active_of_orders(
    conn: AsyncConnection, order_ids: Iterable[str]
) -> dict[str, list[ShipmentGroup]]:
    ids = sorted(set(order_ids))
    out: dict[str, list[ShipmentGroup]] = {}
    if not ids:
        return out
    stmt = text(_ACTIVE_OF_ORDERS).bindparams(bindparam("ids", expanding=True))
    for order_id, doc in await conn.execute(stmt, {"ids": ids}):
        out.setdefault(order_id, []).append(group_from_dict(orjson.loads(doc)))
    return out


class SqlGroupingTx:
    def __init__(self, uow: SqlUnitOfWork) -> None:
        self._uow = uow
        self.orders: SqlOrderRepository = uow.orders
        self.stock: StockRepository | None = uow.stock
        self.idempotency: IdempotencyStore = uow.idempotency

    @property
    def router(self) -> EventRouter:
        return self._uow.orders._router  # the unit of work's own routing

    async def _conn(self) -> AsyncConnection:
        return await self._uow._c.get()  # the unit of work's own transaction

    async def active_groups(self, order_ids: Iterable[str]) -> dict[str, list[ShipmentGroup]]:
        return await _active_of_orders(await self._conn(), order_ids)

    async def group(self, group_id: str) -> StoredGroup | None:
        conn = await self._conn()
        row = (
            await conn.execute(
                text("SELECT doc, state FROM shipment_groups WHERE id = :id"), {"id": group_id}
            )
        ).first()
        return None if row is None else _stored(row)

    async def retire(self, groups: Sequence[ShipmentGroup], now: datetime) -> None:
        ids = sorted({g.id for g in groups})
        if not ids:
            return
        conn = await self._conn()
        await conn.execute(
            text("DELETE FROM shipment_group_members WHERE group_id IN :ids").bindparams(
                bindparam("ids", expanding=True)
            ),
            {"ids": ids},
        )
        await conn.execute(
            text(
                "UPDATE shipment_groups SET state = 'retired', version = version + 1,"
                " updated_us = :now WHERE id IN :ids"
            ).bindparams(bindparam("ids", expanding=True)),
            {"ids": ids, "now": to_us(now)},
        )

    async def activate(self, groups: Sequence[ShipmentGroup], now: datetime) -> None:
        """Store the groups as active (a group given back by an undo keeps its id)."""
        if not groups:
            return
        conn = await self._conn()
        now_us = to_us(now)
        await conn.execute(
            text(
                "INSERT INTO shipment_groups (id, kind, state, version, created_us, updated_us,"
                " doc) VALUES (:id, :kind, 'active', 1, :now, :now, :doc)"
                " ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, state = 'active',"
                " version = shipment_groups.version + 1, updated_us = excluded.updated_us,"
                " doc = excluded.doc"
            ),
            [
                {
                    "id": g.id,
                    "kind": g.kind.value,
                    "now": now_us,
                    "doc": orjson.dumps(group_to_dict(g)).decode(),
                }
                for g in groups
            ],
        )
        # The primary key (order, group) refuses a second copy of any membership.
        await conn.execute(
            text("INSERT INTO shipment_group_members (order_id, group_id) VALUES (:o, :g)"),
            [{"o": o, "g": g.id} for g in groups for o in g.order_ids],
        )

    def emit(self, entry: OutboxEntry) -> None:
        # Flushed with the orders' own outbox entries at commit (events + deliveries).
        self._uow.orders.outbox.append(entry)

    async def commit(self) -> None:
        await self._uow.commit()


class SqlGroupingStore(UowStore):
    def transaction(self) -> AbstractAsyncContextManager[SqlGroupingTx]:
        return self._transaction(SqlGroupingTx)

    async def group(self, group_id: str) -> StoredGroup | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    text("SELECT doc, state FROM shipment_groups WHERE id = :id"),
                    {"id": group_id},
                )
            ).first()
        return None if row is None else _stored(row)

    async def order(self, order_id: str) -> Order | None:
        return await self.load_order(order_id)

    async def orders(self, order_ids: Iterable[str]) -> list[Order]:
        ids = sorted(set(order_ids))
        if not ids:
            return []
        async with self.db.read() as conn:
            rows = await conn.execute(
                text("SELECT doc FROM orders WHERE id IN :ids ORDER BY id").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": ids},
            )
            return [order_from_dict(orjson.loads(doc)) for (doc,) in rows]

    async def groups_of_order(self, order_id: str) -> list[StoredGroup]:
        async with self.db.read() as conn:
            found = await _active_of_orders(conn, [order_id])
        return [StoredGroup(g, True) for g in found.get(order_id, [])]

    async def open_orders(
        self,
        statuses: Iterable[OrderStatus],
        since: datetime,
        limit: int,
        *,
        newest_first: bool = False,
    ) -> list[Order]:
        sql = _NEWEST_OPEN if newest_first else _OLDEST_OPEN
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(sql).bindparams(bindparam("statuses", expanding=True)),
                {
                    "statuses": sorted(s.value for s in statuses),
                    "since": to_us(since),
                    "limit": limit,
                },
            )
            return [order_from_dict(orjson.loads(doc)) for (doc,) in rows]

    async def grouped(self, order_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(order_ids))
        if not ids:
            return set()
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT m.order_id FROM shipment_group_members m"
                    " JOIN shipment_groups g ON g.id = m.group_id"
                    " WHERE m.order_id IN :ids AND g.kind <> 'order'"
                ).bindparams(bindparam("ids", expanding=True)),
                {"ids": ids},
            )
            return {str(o) for (o,) in rows}


def _membership(uow: UnitOfWork) -> SqlGroupingTx | None:
    return SqlGroupingTx(uow) if isinstance(uow, SqlUnitOfWork) else None


register_membership(_membership)
