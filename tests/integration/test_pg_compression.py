"""Migration 0015: PostgreSQL compresses the large documents with LZ4, and they read back."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from ordersync.adapters.db import migrate
from ordersync.adapters.db.database import Database

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


async def test_large_documents_are_stored_lz4_compressed_and_read_back_whole(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        await migrate.upgrade(db)
        doc = '{"note": "' + "teapot " * 2000 + '"}'  # 14 kB: compressed in the row
        async with db.write() as conn:
            methods = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT attrelid::regclass::text, attcompression::text"
                            " FROM pg_attribute WHERE (attrelid, attname) IN"
                            " (('orders'::regclass, 'doc'), ('inbox'::regclass, 'body'),"
                            " ('events'::regclass, 'body'))"
                        )
                    )
                ).all()
            )
            await conn.execute(
                text(
                    "INSERT INTO orders (id, channel_id, external_id, status, payment_status,"
                    " version, created_us, updated_us, doc) VALUES ('ord_lz4', 'web', 'lz4-1',"
                    " 'pending', 'pending', 1, 0, 0, :doc)"
                ),
                {"doc": doc},
            )
        async with db.read() as conn:
            stored, method = (
                await conn.execute(
                    text("SELECT doc, pg_column_compression(doc) FROM orders WHERE id = 'ord_lz4'")
                )
            ).one()
        assert methods == {"orders": "l", "inbox": "l", "events": "l"}
        assert method == "lz4"
        assert stored == doc
    finally:
        await db.dispose()
