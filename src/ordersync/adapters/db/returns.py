"""Return storage (migration 0011): the returns transaction and read-side queries.

A `SqlReturnTx` rides on a `SqlShipmentTx`, and so on the SQL unit of work: the order's
refund, the return row, the reverse shipment, the stock ledger and every outbox entry
commit together. Plain SQL that runs unchanged on SQLite and PostgreSQL; rows about to
change are read `FOR UPDATE` on PostgreSQL.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersync.adapters.db.shipments import SqlShipmentTx
from ordersync.adapters.db.unit_of_work import (
    SqlIdempotencyStore,
    SqlOrderRepository,
)
from ordersync.adapters.db.uow_stores import UowStore
from ordersync.clock import to_us
from ordersync.domain.returns import Return
from ordersync.service.outbox import OutboxEntry
from ordersync.service.shipments import ShipmentTx
from ordersync.service.unit_of_work import StockRepository, StoredResponse

_SELECT = "SELECT doc FROM returns"


def _row(ret: Return, now: datetime) -> dict[str, Any]:
    return {
        "id": ret.id,
        "order_id": ret.order_id,
        "status": str(ret.status),
        "shipment_id": ret.shipment_id,
        "created_us": to_us(ret.created_at),
        "received_us": None if ret.received_at is None else to_us(ret.received_at),
        "updated_us": to_us(now),
        "doc": orjson.dumps(ret.to_dict()).decode(),
    }


def _load(rows: Any) -> list[Return]:
    return [Return.from_dict(orjson.loads(doc)) for (doc,) in rows]


class SqlReturnTx:
    def __init__(self, stx: SqlShipmentTx) -> None:
        self._stx = stx
        self._uow = stx._uow
        self._lock = stx._lock

    @property
    def orders(self) -> SqlOrderRepository:
        return self._stx.orders

    @property
    def shipments(self) -> SqlShipmentTx:
        return self._stx

    @property
    def stock(self) -> StockRepository | None:
        return self._uow.stock

    @property
    def idempotency(self) -> SqlIdempotencyStore:
        return self._uow.idempotency

    async def _conn(self) -> AsyncConnection:
        return await self._uow._c.get()  # the unit of work's own transaction

    async def returns_of_order(self, order_id: str) -> list[Return]:
        conn = await self._conn()
        rows = await conn.execute(
            text(f"{_SELECT} WHERE order_id = :o ORDER BY created_us, id{self._lock}"),
            {"o": order_id},
        )
        return _load(rows)

    async def get(self, return_id: str) -> Return | None:
        conn = await self._conn()
        rows = await conn.execute(text(f"{_SELECT} WHERE id = :id{self._lock}"), {"id": return_id})
        found = _load(rows)
        return found[0] if found else None

    async def by_shipment(self, shipment_id: str) -> Return | None:
        conn = await self._conn()
        rows = await conn.execute(
            text(f"{_SELECT} WHERE shipment_id = :s{self._lock}"), {"s": shipment_id}
        )
        found = _load(rows)
        return found[0] if found else None

    async def origins(self, order_id: str, sku: str) -> list[str]:
        conn = await self._conn()
        rows = await conn.execute(
            text(
                "SELECT location_id, SUM(quantity) FROM reservations"
                " WHERE order_id = :o AND sku = :sku AND state IN ('committed', 'held')"
                " GROUP BY location_id, state"
                " ORDER BY CASE WHEN state = 'committed' THEN 0 ELSE 1 END,"
                " SUM(quantity) DESC, location_id"
            ),
            {"o": order_id, "sku": sku},
        )
        seen: list[str] = []
        for loc, _ in rows:
            if loc not in seen:
                seen.append(str(loc))
        return seen

    async def insert(self, ret: Return, now: datetime) -> None:
        conn = await self._conn()
        await conn.execute(
            text(
                "INSERT INTO returns (id, order_id, status, shipment_id, created_us,"
                " received_us, updated_us, doc) VALUES (:id, :order_id, :status,"
                " :shipment_id, :created_us, :received_us, :updated_us, :doc)"
            ),
            _row(ret, now),
        )

    async def update(self, ret: Return, now: datetime) -> None:
        conn = await self._conn()
        await conn.execute(
            text(
                "UPDATE returns SET status = :status, shipment_id = :shipment_id,"
                " received_us = :received_us, updated_us = :updated_us, doc = :doc"
                " WHERE id = :id"
            ),
            _row(ret, now),
        )

    def emit(self, entry: OutboxEntry) -> None:
        self._stx.emit(entry)

    async def commit(self) -> None:
        await self._stx.commit()


class SqlReturnStore(UowStore):
    def transaction(self) -> AbstractAsyncContextManager[SqlReturnTx]:
        return self._transaction(lambda uow: SqlReturnTx(SqlShipmentTx(uow)))

    def within(self, tx: ShipmentTx) -> SqlReturnTx:
        if not isinstance(tx, SqlShipmentTx):
            raise TypeError(f"a SQL return store cannot join a {type(tx).__name__}")
        return SqlReturnTx(tx)

    async def stored_response(self, principal: str, key: str) -> StoredResponse | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT fingerprint, status, body FROM idempotency_keys"
                        " WHERE principal = :p AND key = :k"
                    ),
                    {"p": principal, "k": key},
                )
            ).first()
        return StoredResponse(row[0], row[1], bytes(row[2])) if row else None

    async def get(self, return_id: str) -> Return | None:
        async with self.db.read() as conn:
            found = _load(await conn.execute(text(f"{_SELECT} WHERE id = :id"), {"id": return_id}))
        return found[0] if found else None

    async def list_for_order(self, order_id: str) -> list[Return]:
        async with self.db.read() as conn:
            return _load(
                await conn.execute(
                    text(f"{_SELECT} WHERE order_id = :o ORDER BY created_us, id"),
                    {"o": order_id},
                )
            )
