"""Inventory: locations, stock per (SKU, location), its ledger, reservations, feed dedupe.

- `stock`: the CHECK constraint is the last line against overselling: whatever a bug or a
  race does, the database refuses a row with `reserved > on_hand` or a negative count.
- `stock_ledger`: every movement with its cause; summing it rebuilds `stock`.
- `reservations`: held -> committed | released | expired; the partial index finds the
  unpaid ones that are due (the durable expiry timer).
- `inventory_feed`: WMS/ERP feed message ids and API Idempotency-Keys, with the stored
  response, so a repeated message does nothing.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigSeq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "locations",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("region", sa.Text, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("capacity", sa.Integer),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "stock",
        sa.Column("sku", sa.Text, primary_key=True),
        sa.Column("location_id", sa.Text, primary_key=True),
        sa.Column("on_hand", sa.BigInteger, nullable=False),
        sa.Column("reserved", sa.BigInteger, nullable=False),
        sa.Column("safety_stock", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.CheckConstraint("reserved >= 0 AND on_hand >= reserved", name="ck_stock_never_oversold"),
    )
    op.create_table(
        "stock_ledger",
        sa.Column("seq", BigSeq, primary_key=True, autoincrement=True),
        sa.Column("sku", sa.Text, nullable=False),
        sa.Column("location_id", sa.Text, nullable=False),
        sa.Column("cause", sa.Text, nullable=False),
        sa.Column("on_hand_delta", sa.BigInteger, nullable=False),
        sa.Column("reserved_delta", sa.BigInteger, nullable=False),
        sa.Column("reference", sa.Text),
        sa.Column("reservation_id", sa.Text),
        sa.Column("at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_stock_ledger_sku", "stock_ledger", ["sku", "location_id", "seq"])
    op.create_table(
        "reservations",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("order_id", sa.Text, nullable=False),
        sa.Column("sku", sa.Text, nullable=False),
        sa.Column("location_id", sa.Text, nullable=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("expires_us", sa.BigInteger),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.CheckConstraint("quantity > 0", name="ck_reservations_positive"),
    )
    op.create_index("ix_reservations_order", "reservations", ["order_id"])
    # What an order (or cart) holds now: looked up for every reservation and order change,
    # so a small index of live holds only, which the planner always prefers to a scan.
    op.create_index(
        "ix_reservations_held",
        "reservations",
        ["order_id"],
        sqlite_where=sa.text("state = 'held'"),
        postgresql_where=sa.text("state = 'held'"),
    )
    op.create_index(
        "ix_reservations_due",
        "reservations",
        ["expires_us"],
        sqlite_where=sa.text("state = 'held' AND expires_us IS NOT NULL"),
        postgresql_where=sa.text("state = 'held' AND expires_us IS NOT NULL"),
    )
    op.create_table(
        "inventory_feed",
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("received_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("inventory_feed")
    op.drop_index("ix_reservations_due", table_name="reservations")
    op.drop_index("ix_reservations_held", table_name="reservations")
    op.drop_index("ix_reservations_order", table_name="reservations")
    op.drop_table("reservations")
    op.drop_index("ix_stock_ledger_sku", table_name="stock_ledger")
    op.drop_table("stock_ledger")
    op.drop_table("stock")
    op.drop_table("locations")
