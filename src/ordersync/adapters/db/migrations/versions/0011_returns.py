"""Returns and anomaly rules (issue 6).

- `returns`: one row per return of an order's goods. The requested lines, the restock or
  write-off decision per line, the refund amounts (decimal strings) and the reverse
  shipment's id live in `doc`; the columns beside it are what queries filter on. The
  reverse pickup itself is a row of `shipments` (direction `return` in its doc), so it is
  tracked by the same callbacks, mapping tables and anomaly timers as any parcel.

Revision ID: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "returns",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("order_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),  # pickup_booked | in_transit | received
        sa.Column("shipment_id", sa.Text),  # the reverse pickup (NULL: none booked)
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("received_us", sa.BigInteger),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
    )
    op.create_index("ix_returns_order", "returns", ["order_id", "created_us"])
    op.create_index("ix_returns_shipment", "returns", ["shipment_id"], unique=True)
    _tracking_upgrade()


def downgrade() -> None:
    _tracking_downgrade()
    op.drop_index("ix_returns_shipment", table_name="returns")
    op.drop_index("ix_returns_order", table_name="returns")
    op.drop_table("returns")


# ---- tracking side (asynchronous callbacks, alert workflow, review reminders) -----------
#
# - `carrier_inbox.update_doc`: the verified, mapped callback, applied later by the inbox
#   processor; `seq` is the order of arrival (applied in that order per shipment);
#   `applied_us` when it was applied. Rows still `received` are the processor's queue.
# - `alerts.acknowledged_us/resolved_us/resolved_by`: the operator's workflow
#   (open -> acknowledged -> resolved).
# - `order_reminders`: one durable timer per (order, kind), e.g. the review request after
#   delivery; `sent_us` NULL until it fired (the partial index is the sweep's queue).


def _tracking_upgrade() -> None:
    op.add_column("carrier_inbox", sa.Column("seq", sa.BigInteger))
    op.add_column("carrier_inbox", sa.Column("update_doc", sa.Text))
    op.add_column("carrier_inbox", sa.Column("applied_us", sa.BigInteger))
    op.create_index("ix_carrier_inbox_seq", "carrier_inbox", ["seq"])
    op.create_index(
        "ix_carrier_inbox_received",
        "carrier_inbox",
        ["carrier_id", "tracking_number", "seq"],
        sqlite_where=sa.text("outcome = 'received'"),
        postgresql_where=sa.text("outcome = 'received'"),
    )
    op.add_column("alerts", sa.Column("acknowledged_us", sa.BigInteger))
    op.add_column("alerts", sa.Column("resolved_us", sa.BigInteger))
    op.add_column("alerts", sa.Column("resolved_by", sa.Text))
    op.create_table(
        "order_reminders",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, primary_key=True),  # e.g. "review"
        sa.Column("due_us", sa.BigInteger, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("sent_us", sa.BigInteger),  # NULL: not fired yet
    )
    op.create_index(
        "ix_order_reminders_due",
        "order_reminders",
        ["due_us"],
        sqlite_where=sa.text("sent_us IS NULL"),
        postgresql_where=sa.text("sent_us IS NULL"),
    )


def _tracking_downgrade() -> None:
    op.drop_index("ix_order_reminders_due", table_name="order_reminders")
    op.drop_table("order_reminders")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("resolved_by")
        batch.drop_column("resolved_us")
        batch.drop_column("acknowledged_us")
    op.drop_index("ix_carrier_inbox_received", table_name="carrier_inbox")
    op.drop_index("ix_carrier_inbox_seq", table_name="carrier_inbox")
    with op.batch_alter_table("carrier_inbox") as batch:
        batch.drop_column("applied_us")
        batch.drop_column("update_doc")
        batch.drop_column("seq")
