"""Initial schema: orders, history, inbox, outbox (events + deliveries), idempotency keys.

Times are integer microseconds since the Unix epoch (UTC) in `*_us` columns: one type that
compares and indexes the same way on SQLite and PostgreSQL.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# An auto-incrementing 64-bit key: BIGINT IDENTITY on PostgreSQL, the rowid on SQLite.
BigSeq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("channel_id", sa.Text, nullable=False),
        sa.Column("external_id", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("payment_status", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("channel_updated_us", sa.BigInteger),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
        sa.UniqueConstraint("channel_id", "external_id", name="uq_orders_channel_external"),
    )
    op.create_index("ix_orders_status", "orders", ["status", "id"])

    op.create_table(
        "order_history",
        sa.Column("seq", BigSeq, primary_key=True, autoincrement=True),
        sa.Column("order_id", sa.Text, sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("from_status", sa.Text),
        sa.Column("to_status", sa.Text, nullable=False),
        sa.Column("from_payment_status", sa.Text),
        sa.Column("to_payment_status", sa.Text, nullable=False),
        sa.Column("cause", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text),
        sa.Column("changed", sa.Text),
        sa.Column("at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_order_history_order", "order_history", ["order_id", "version"])

    op.create_table(
        "inbox",
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("topic", sa.Text),
        sa.Column("received_us", sa.BigInteger, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("order_id", sa.Text),
        sa.Column("detail", sa.Text),
        sa.Column("headers", sa.Text),
        sa.Column("body", sa.LargeBinary),
    )

    op.create_table(
        "events",
        sa.Column("seq", BigSeq, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("order_id", sa.Text, nullable=False),
        sa.Column("order_version", sa.Integer, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_events_order", "events", ["order_id", "seq"])

    op.create_table(
        "deliveries",
        sa.Column("seq", BigSeq, primary_key=True, autoincrement=True),
        sa.Column("event_seq", sa.BigInteger, sa.ForeignKey("events.seq"), nullable=False),
        sa.Column("destination_id", sa.Text, nullable=False),
        sa.Column("order_id", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_us", sa.BigInteger, nullable=False),
        sa.Column("first_attempt_us", sa.BigInteger),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.Column("delivered_us", sa.BigInteger),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.Text),
    )
    # The dispatcher's two questions, both over pending rows only (partial indexes):
    # "what is due for this destination, oldest first" and "is an earlier event of this
    # order still pending for it" (per-order ordering).
    pending = sa.text("state = 'pending'")
    op.create_index(
        "ix_deliveries_due",
        "deliveries",
        ["destination_id", "seq"],
        sqlite_where=pending,
        postgresql_where=pending,
    )
    op.create_index(
        "ix_deliveries_lane",
        "deliveries",
        ["destination_id", "order_id", "seq"],
        sqlite_where=pending,
        postgresql_where=pending,
    )
    op.create_index("ix_deliveries_order", "deliveries", ["order_id", "seq"])
    op.create_index("ix_deliveries_state", "deliveries", ["state", "seq"])

    op.create_table(
        "delivery_attempts",
        sa.Column("seq", BigSeq, primary_key=True, autoincrement=True),
        sa.Column("delivery_seq", sa.BigInteger, sa.ForeignKey("deliveries.seq"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("started_us", sa.BigInteger, nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("status", sa.Integer),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_delivery_attempts_delivery", "delivery_attempts", ["delivery_seq"])

    op.create_table(
        "idempotency_keys",
        sa.Column("principal", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "idempotency_keys",
        "delivery_attempts",
        "deliveries",
        "events",
        "inbox",
        "order_history",
        "orders",
    ):
        op.drop_table(table)
