"""PostgreSQL compresses the large documents with LZ4 instead of pglz.

An ingested order stores three documents of a few kilobytes each (the order's canonical
JSON in `orders.doc`, the raw webhook in `inbox.body`, the `order.created` body in
`events.body`); past about 2 kB PostgreSQL compresses each in the writing backend, and its
default, pglz, is several times slower than LZ4 (PostgreSQL 14+, built with lz4 by every
major distribution). Only the compression of values written from now on changes; older
values stay readable as they are. SQLite: nothing to do.

Revision ID: 0015
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

COLUMNS = (
    ("orders", "doc"),
    ("inbox", "body"),
    ("events", "body"),
    ("idempotency_keys", "body"),
    ("carrier_inbox", "body"),
    ("inventory_feed", "body"),
    ("shipments", "doc"),
    ("returns", "doc"),
    ("shipment_groups", "doc"),
    ("routing_decisions", "explanation"),
)


def _set(method: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if (
        method == "lz4"
        and not bind.exec_driver_sql(
            "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'"
            " AND 'lz4' = ANY(enumvals)"
        ).first()
    ):
        return  # a server built without lz4 keeps pglz
    for table, column in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method}")


def upgrade() -> None:
    _set("lz4")


def downgrade() -> None:
    _set("pglz")
