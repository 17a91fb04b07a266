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
from typing import Any

import pytest
from sqlalchemy import text

from ordersync.adapters.db import migrate
from ordersync.adapters.db.database import Database
from ordersync.adapters.db.inventory import (
    SqlInventoryStore,
    SqlStockRepository,
    StaleStock,
    StockCarry,
    sql_carrying,
)
from ordersync.adapters.db.unit_of_work import SqlUnitOfWork
from ordersync.domain import stock_commands as sc
from ordersync.domain.inventory import InventoryPolicy, Location, LocationKind
from ordersync.service.handlers.inventory import preload_stock, reserve_stock
from ordersync.service.inventory import InventoryService
from ordersync.service.outbox import EventRouter
from ordersync.service.pipeline import Turn

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


async def _lock_waiters(db: Database) -> int:
    async with db.read() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                )
            ).scalar_one()
        )


async def _write_uncommitted(db: Database, cart: str) -> tuple[SqlUnitOfWork, StockCarry]:
    """Batch 1, by hand: decided and written (its row locks held), not committed yet."""
    first = _uow(db)
    cmd = sc.ReserveStock(cart, ((SKU, 1),), _now())
    await preload_stock([cmd], first)
    await reserve_stock(cmd, first)
    assert isinstance(first.stock, SqlStockRepository)
    carry = first.stock.carry_over(1)
    conn = await first._c.get()
    await first.stock.flush(conn, 0)
    return first, carry


async def _second_in_turn(db: Database, carry: StockCarry) -> tuple[asyncio.Task[None], Any]:
    """Batch 2 from batch 1's carry, committing in its turn: batch 1 has written (so its
    write may go now) but not committed."""
    second = _uow(db, carry)
    cmd = sc.ReserveStock("cart-2", ((SKU, 1),), _now())
    await preload_stock([cmd], second)
    await reserve_stock(cmd, second)
    first_done = asyncio.get_running_loop().create_future()
    before = asyncio.ensure_future(first_done)
    written, committed = asyncio.Event(), asyncio.Event()
    written.set()
    turn = Turn(before, written, committed, asyncio.Event())  # type: ignore[arg-type]
    task = asyncio.create_task(second.commit(turn))
    while await _lock_waiters(db) == 0:  # its write waits for batch 1's row lock
        assert not task.done(), task.exception()
        await asyncio.sleep(0.01)
    return task, (before, second)


async def test_a_batch_written_while_the_previous_one_commits_is_applied_not_redone(
    database_url: str,
) -> None:
    """The pipelined write goes out before the previous batch's COMMIT returned: it waits
    on the row lock, and the guard is checked on the row that batch committed."""
    db = await _database(database_url, on_hand=5)
    try:
        first, carry = await _write_uncommitted(db, "cart-1")
        task, (before, _) = await _second_in_turn(db, carry)
        await first.commit()  # releases the lock: batch 2's guard now holds
        await task
        before.cancel()
        assert await _counts(db) == (5, 2, 2, 2)
    finally:
        await db.dispose()


async def test_a_batch_written_behind_one_that_rolls_back_writes_nothing(
    database_url: str,
) -> None:
    db = await _database(database_url, on_hand=5)
    try:
        first, carry = await _write_uncommitted(db, "cart-1")
        task, (before, second) = await _second_in_turn(db, carry)
        await first.rollback()  # batch 1 never commits: batch 2's carry is wrong
        with pytest.raises(StaleStock, match="changed under this batch"):
            await task
        await second.rollback()
        before.cancel()
        assert await _counts(db) == (5, 0, 0, 0)
    finally:
        await db.dispose()


async def test_a_steady_rush_through_the_pipelined_writer_redoes_no_batch(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a row changed behind the writer's back makes it redo a batch: its own batches,
    written while their predecessors commit, always find the row as they expect."""
    db = await _database(database_url, on_hand=10_000)
    service = _service(db, pipelined=True)
    await service.start(sweep=False)
    try:
        with caplog.at_level(logging.INFO, logger="ordersync.service.pipeline"):

            async def buyer(b: int) -> int:
                got = 0
                for k in range(12):
                    cmd = sc.ReserveStock(f"b{b}-{k}", ((SKU, 1),), _now())
                    got += (await service.handle(cmd)).reserved
                return got

            got = await asyncio.gather(*(buyer(b) for b in range(256)))
        assert sum(got) == 256 * 12
        assert "redone" not in caplog.text
        assert await _counts(db) == (10_000, 3072, 3072, 3072)
    finally:
        await service.stop()
        await db.dispose()
