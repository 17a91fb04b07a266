"""PostgreSQL ends a transaction the hub left open and idle, so its locks cannot block
every later change of the same rows for ever (adapters/db/database.py)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ordersync.adapters.db.database import Database

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


async def test_a_transaction_left_idle_is_ended_and_its_lock_released(database_url: str) -> None:
    db = Database(database_url, idle_in_transaction_timeout=0.5)
    try:
        async with db.write() as conn:
            await conn.execute(text("CREATE TABLE probe (id int PRIMARY KEY, n int)"))
            await conn.execute(text("INSERT INTO probe VALUES (1, 0)"))
        leaked = await db.writer.connect()
        await leaked.begin()
        await leaked.execute(text("UPDATE probe SET n = 1 WHERE id = 1"))  # holds the row lock
        await asyncio.sleep(1.5)  # ... and then nobody commits or rolls back

        async with db.write() as conn:  # would wait for ever without the timeout
            await conn.execute(text("UPDATE probe SET n = 2 WHERE id = 1"))
        with pytest.raises(DBAPIError):  # the leaked session was ended by the server
            await leaked.execute(text("SELECT 1"))
        await leaked.invalidate()
        async with db.read() as conn:
            assert (await conn.execute(text("SELECT n FROM probe"))).scalar_one() == 2
    finally:
        await db.dispose()
