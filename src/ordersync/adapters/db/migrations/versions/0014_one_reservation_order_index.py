"""Reservations keep one index on `order_id`, not two.

`ix_reservations_held` (order_id, partial on `state = 'held'`) duplicated
`ix_reservations_order` (order_id): an order or cart has a handful of reservations, so the
full index finds its live holds as fast (the state is checked on those few rows), and
every reservation paid for both: one index entry fewer per reservation is about a tenth of
PostgreSQL's work for a flash-sale reservation (BENCHMARKS.md).

Revision ID: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_reservations_held", table_name="reservations")


def downgrade() -> None:
    op.create_index(
        "ix_reservations_held",
        "reservations",
        ["order_id"],
        sqlite_where=sa.text("state = 'held'"),
        postgresql_where=sa.text("state = 'held'"),
    )
