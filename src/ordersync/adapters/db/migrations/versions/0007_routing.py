"""Routing decisions and allocations (issue 5).

- `routing_decisions`: the last routing decision of each order, written in the same
  transaction as the reservations it made: outcome, the locations chosen, the units
  waiting for stock (backorders, preorders) and the explanation ("why this warehouse") as
  JSON text. The allocations themselves are the order's reservations (migration 0005).
- `routing_shortages`: per SKU, the orders whose last decision found no way to serve
  them (held for `stock_shortage`); stock arriving for that SKU retries them, oldest first.
  Rows of a later decision's order are ignored by joining the decision (same `decided_us`).
- `location_load`: shipments routed to each location per UTC day, kept only for locations
  with a `capacity` (orders per day); the capacity filter reads it.

Revision ID: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "routing_decisions",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("outcome", sa.Text, nullable=False),  # routed | backordered | unroutable
        sa.Column("locations", sa.Text, nullable=False),  # JSON list of location ids
        sa.Column("backordered", sa.Text, nullable=False),  # JSON {sku: units}
        sa.Column("explanation", sa.Text, nullable=False),  # JSON
        sa.Column("decided_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "routing_shortages",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("sku", sa.Text, primary_key=True),
        sa.Column("quantity", sa.BigInteger, nullable=False),  # units the order wants
        sa.Column("decided_us", sa.BigInteger, nullable=False),  # of the decision
    )
    op.create_index("ix_routing_shortages_sku", "routing_shortages", ["sku"])
    op.create_table(
        "location_load",
        sa.Column("location_id", sa.Text, primary_key=True),
        sa.Column("day", sa.Text, primary_key=True),  # ISO date, UTC
        sa.Column("shipments", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("location_load")
    op.drop_index("ix_routing_shortages_sku", table_name="routing_shortages")
    op.drop_table("routing_shortages")
    op.drop_table("routing_decisions")
