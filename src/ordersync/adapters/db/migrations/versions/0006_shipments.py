"""Shipments (issue 6): parcels booked with carriers, their callback inbox, and alerts.

- `shipments`: one row per booked parcel; tracking events live in `doc` (the `Shipment`
  aggregate's JSON, raw codes and texts kept). `due_us` is the durable anomaly timer: the
  earliest time a rule not yet raised could fire; the partial index lets a sweep read only
  the due rows, so a restart loses no timer.
- `carrier_inbox`: every carrier callback by (carrier, callback id), written in the same
  transaction as its effect, so a replay is acknowledged and changes nothing.
- `alerts`: at most one per (shipment, rule), enforced by the database.

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shipments",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("order_id", sa.Text, nullable=False),
        sa.Column("carrier_id", sa.Text, nullable=False),
        sa.Column("tracking_number", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),  # False once cancelled (re-booked)
        sa.Column("booked_us", sa.BigInteger, nullable=False),
        sa.Column("picked_up_us", sa.BigInteger),
        sa.Column("due_us", sa.BigInteger),  # next anomaly timer; NULL: none can fire
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
    )
    op.create_index("ix_shipments_order", "shipments", ["order_id", "booked_us"])
    op.create_index(
        "ix_shipments_tracking", "shipments", ["carrier_id", "tracking_number"], unique=True
    )
    op.create_index(
        "ix_shipments_due",
        "shipments",
        ["due_us"],
        sqlite_where=sa.text("due_us IS NOT NULL"),
        postgresql_where=sa.text("due_us IS NOT NULL"),
    )
    op.create_table(
        "carrier_inbox",
        sa.Column("carrier_id", sa.Text, primary_key=True),
        sa.Column("callback_id", sa.Text, primary_key=True),
        sa.Column("tracking_number", sa.Text),
        sa.Column("shipment_id", sa.Text),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("received_us", sa.BigInteger, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("shipment_id", sa.Text, nullable=False),
        sa.Column("order_id", sa.Text, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),  # open | closed
        sa.Column("due_us", sa.BigInteger, nullable=False),
        sa.Column("raised_us", sa.BigInteger, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.UniqueConstraint("shipment_id", "rule", name="uq_alerts_shipment_rule"),
    )
    op.create_index("ix_alerts_state", "alerts", ["state", "raised_us"])


def downgrade() -> None:
    op.drop_index("ix_alerts_state", table_name="alerts")
    op.drop_table("alerts")
    op.drop_table("carrier_inbox")
    op.drop_index("ix_shipments_due", table_name="shipments")
    op.drop_index("ix_shipments_tracking", table_name="shipments")
    op.drop_index("ix_shipments_order", table_name="shipments")
    op.drop_table("shipments")
