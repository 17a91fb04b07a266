"""Stock feeds and channel stock publishing (issue 5).

- `stock.fed_us`: when a WMS/ERP feed (snapshot, adjustment, CSV import) last reported this
  (SKU, location); reservations do not touch it. Channel publishing treats a location whose
  feed is older than the channel's `stale_after` as empty. Existing rows take the time of
  their last feed movement in the ledger, so upgrading does not make every SKU stale.
- `stock_dirty`: one row per SKU whose stock changed and whose channels have not all been
  told yet. Written (upserted, `seq` bumped) in the same transaction as the change; the
  stock publisher deletes a row only once every channel has the value read after it saw
  that `seq`, so a crash can repeat a publication but never lose one.

Revision ID: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("stock", sa.Column("fed_us", sa.BigInteger, nullable=True))
    op.execute(
        "UPDATE stock SET fed_us = (SELECT MAX(l.at_us) FROM stock_ledger l"
        " WHERE l.sku = stock.sku AND l.location_id = stock.location_id"
        " AND l.cause IN ('snapshot', 'adjustment', 'return'))"
    )
    # The staleness scan asks which rows were last fed within a time span.
    op.create_index("ix_stock_fed", "stock", ["fed_us"])
    op.create_table(
        "stock_dirty",
        sa.Column("sku", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("changed_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("stock_dirty")
    op.drop_index("ix_stock_fed", table_name="stock")
    # A plain DROP COLUMN (SQLite >= 3.35): a batch rebuild would lose the CHECK constraint.
    op.drop_column("stock", "fed_us")
