"""The PostgreSQL batch flush (pg_batch) keeps every body byte for byte: UTF-8 bodies go as
text and come back as the same bytes; a batch with a body that is not UTF-8, or holds a NUL
byte (valid UTF-8, but PostgreSQL text cannot hold it), goes as bytea."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from ordersync.adapters.db import migrate
from ordersync.adapters.db.database import Database
from ordersync.adapters.db.unit_of_work import SqlUnitOfWork
from ordersync.service.outbox import EventRouter
from ordersync.service.unit_of_work import InboxRecord

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

BODIES = {
    "utf8": ['{"note": "茶壶 🫖"}'.encode()],
    "latin1": ["Grüße aus Köln".encode("latin-1"), b'{"plain": "json"}'],
    "nul": [b"before\x00after", b'{"plain": "json"}'],
}


@pytest.mark.parametrize("kind", list(BODIES))
async def test_inbox_bodies_are_stored_byte_for_byte(database_url: str, kind: str) -> None:
    db = Database(database_url)
    try:
        await migrate.upgrade(db)
        uow = SqlUnitOfWork(db, EventRouter([]))
        for i, body in enumerate(BODIES[kind]):
            uow.inbox.record(
                InboxRecord(
                    "shop-eu",
                    f"msg-{kind}-{i}",
                    "orders/create",
                    datetime.now(UTC),
                    "ignored",
                    body=body,
                )
            )
        await uow.commit()
        async with db.read() as conn:
            rows = (
                await conn.execute(text("SELECT message_id, body FROM inbox ORDER BY message_id"))
            ).all()
        assert [(m, bytes(b)) for m, b in rows] == [
            (f"msg-{kind}-{i}", body) for i, body in enumerate(BODIES[kind])
        ]
    finally:
        await db.dispose()
