"""The base of the stores whose transactions ride on the SQL unit of work.

Shipments, returns and shipment groups each open a transaction the same way: a fresh unit
of work, wrapped in the store's own transaction object; rolled back on the way out (a no-op
after commit); and, once it has committed, the destinations of its new deliveries handed to
`on_commit` (which wakes the dispatcher). One copy of that, here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import orjson
from sqlalchemy import text

from ordersync.adapters.db.database import Database
from ordersync.adapters.db.unit_of_work import SqlUnitOfWork
from ordersync.domain.codec import order_from_dict
from ordersync.domain.orders import Order

Tx = TypeVar("Tx")


class UowStore:
    def __init__(
        self,
        db: Database,
        uow_factory: Callable[[], SqlUnitOfWork],
        on_commit: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.db = db
        self._uow_factory = uow_factory
        self._on_commit = on_commit

    @asynccontextmanager
    async def _transaction(self, wrap: Callable[[SqlUnitOfWork], Tx]) -> AsyncIterator[Tx]:
        """`wrap(uow)` for the caller's block, on a fresh unit of work."""
        uow = self._uow_factory()
        try:
            yield wrap(uow)
        finally:
            await uow.rollback()  # a no-op after commit
        if uow.committed_destinations and self._on_commit is not None:
            self._on_commit(uow.committed_destinations)

    async def load_order(self, order_id: str) -> Order | None:
        """Read side, no lock."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(text("SELECT doc FROM orders WHERE id = :id"), {"id": order_id})
            ).first()
        return None if row is None else order_from_dict(orjson.loads(row[0]))
