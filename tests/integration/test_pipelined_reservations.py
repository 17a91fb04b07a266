"""The pipelined reservation writer on a real PostgreSQL (ADR 10).

A writer decides its next batch from the stock its last batch left, without reading the
row; the write is guarded by the row's version. These tests change the row behind the
writer's back (a second hub process would) and ask for one cart twice while its first
batch is still in flight, and check the counts the database ends with.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from ordersync.adapters.db import migrate
from ordersync.adapters.db.database import Database
from ordersync.adapters.db.inventory import (
    SqlInventoryStore,
    SqlStockRepository,
    StockCarry,
    sql_carrying,
)
from ordersync.adapters.db.unit_of_work import SqlUnitOfWork
from ordersync.domain import stock_commands as sc
from ordersync.domain.inventory import InventoryPolicy, Location, LocationKind
from ordersync.service.handlers.inventory import preload_stock, reserve_stock
from ordersync.service.inventory import InventoryService
from ordersync.service.outbox import EventRouter

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

SKU, LOC = "FLASH-KETTLE", "berlin-dc"
POLICY = InventoryPolicy({LOC: Location(LOC, LocationKind.WAREHOUSE, "eu", 1)})
ROUTER = EventRouter([])


def _uow(db: Database, carry: StockCarry | None = None) -> SqlUnitOfWork:
    return SqlUnitOfWork(db, ROUTER, inventory=POLICY, stock_carry=carry)


def _service(db: Database, *, pipelined: bool) -> InventoryService:
    return InventoryService(
        POLICY,
        lambda: _uow(db),
        SqlInventoryStore(db),
        writers=2,
        carrying=sql_carrying(lambda c: _uow(db, c)) if pipelined else None,
    )


def _now() -> datetime:
    return datetime.now(UTC)


async def _counts(db: Database) -> tuple[int, int, int, int]:
    """(on_hand, reserved, held reservation rows, ledger sum of reserved)."""
    async with db.read() as conn:
        on_hand, reserved = (
            await conn.execute(
                text("SELECT on_hand, reserved FROM stock WHERE sku = :s"), {"s": SKU}
            )
        ).one()
        rows = (
            await conn.execute(text("SELECT COUNT(*) FROM reservations WHERE state = 'held'"))
        ).scalar_one()
        ledger = (
            await conn.execute(text("SELECT COALESCE(SUM(reserved_delta), 0) FROM stock_ledger"))
        ).scalar_one()
    return int(on_hand), int(reserved), int(rows), int(ledger)


async def _database(url: str, on_hand: int) -> Database:
    db = Database(url)
    await migrate.upgrade(db)
    service = _service(db, pipelined=False)
    await service.start(sweep=False)
    await service.handle(sc.SetStock(SKU, LOC, on_hand, _now(), "wms"))
    await service.stop()
    return db


async def test_stock_changed_by_another_process_under_a_carried_state_is_never_oversold(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = await _database(database_url, on_hand=10)
    other = Database(database_url)  # a second hub process, its own connections
    ours, theirs = _service(db, pipelined=True), _service(other, pipelined=False)
    await ours.start(sweep=False)
    await theirs.start(sweep=False)
    try:
        first = await asyncio.gather(
            *(ours.handle(sc.ReserveStock(f"cart-{i}", ((SKU, 1),), _now())) for i in range(5))
        )
        assert all(r.reserved for r in first)
        # Behind our writer's back (it carries "5 of 10 reserved"): a count of 6 on hand.
        await theirs.handle(sc.SetStock(SKU, LOC, 6, _now(), "wms"))
        with caplog.at_level(logging.INFO, logger="ordersync.service.pipeline"):
            later = await asyncio.gather(
                *(ours.handle(sc.ReserveStock(f"late-{i}", ((SKU, 1),), _now())) for i in range(3))
            )
        # Decided from the carried state, all three fitted; the guarded write found the row
        # moved, and the batch was decided again from the locked row: one unit was left.
        assert [r.reserved for r in later].count(True) == 1
        assert "redone from locked rows" in caplog.text
        assert await _counts(db) == (6, 6, 6, 6)
        # The writer carries again from what it read, and goes on selling correctly.
        rest = await asyncio.gather(
            *(ours.handle(sc.ReserveStock(f"rest-{i}", ((SKU, 1),), _now())) for i in range(3))
        )
        assert not any(r.reserved for r in rest)
        assert await _counts(db) == (6, 6, 6, 6)
    finally:
        await ours.stop()
        await theirs.stop()
        await other.dispose()
        await db.dispose()


async def test_asking_again_for_a_cart_whose_hold_is_still_in_flight_returns_that_hold(
    database_url: str,
) -> None:
    """Two unit-of-work steps by hand: batch 1 decides and is not committed yet; batch 2
    starts from its carry (as the pipelined writer does) and is asked for the same cart."""
    db = await _database(database_url, on_hand=3)
    try:
        first = _uow(db)
        cmd = sc.ReserveStock("cart-1", ((SKU, 1),), _now())
        await preload_stock([cmd], first)
        made = await reserve_stock(cmd, first)
        assert first.stock is not None
        carry = first.stock.carry_over(1)
        second = _uow(db, carry.visible_after(0))
        again = await reserve_stock(cmd, second)  # its read cannot see batch 1's rows yet
        assert again.reservations == made.reservations
        await first.commit()
        await second.commit()
        assert await _counts(db) == (3, 1, 1, 1)
    finally:
        await db.dispose()


async def test_a_carried_state_is_only_trusted_while_the_row_keeps_its_version(
    database_url: str,
) -> None:
    db = await _database(database_url, on_hand=4)
    try:
        first = _uow(db)
        cmd = sc.ReserveStock("cart-1", ((SKU, 1),), _now())
        await preload_stock([cmd], first)
        await reserve_stock(cmd, first)
        assert isinstance(first.stock, SqlStockRepository)
        carry = first.stock.carry_over(1)
        await first.rollback()  # batch 1 never commits
        second = _uow(db, carry)
        later = sc.ReserveStock("cart-2", ((SKU, 1),), _now())
        await preload_stock([later], second)
        await reserve_stock(later, second)
        with pytest.raises(Exception, match="changed under this batch"):
            await second.commit()
        await second.rollback()
        assert await _counts(db) == (4, 0, 0, 0)
    finally:
        await db.dispose()
