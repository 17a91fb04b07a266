"""Buyer fingerprints for the fraud burst rules (issue 5, `holds.suspected_fraud`).

- `buyer_fingerprints`: one row per (order, kind, digest), kind `address` or `phone`.
  `digest` is a keyed hash (HMAC-SHA256 under `holds.suspected_fraud.fingerprint_key`,
  else SHA-256) of the normalized value, never the address or phone itself. `placed_us`
  is when the order was placed (the hub's creation time when the channel gives none).
  Append-only: an order whose address changes keeps its earlier fingerprint too, since
  the orders it counted towards were placed all the same.
- `ix_buyer_fingerprints_digest` serves the burst count: the orders of one fingerprint
  within a window of placing times.

Revision ID: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "buyer_fingerprints",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, primary_key=True),  # address | phone
        sa.Column("digest", sa.Text, primary_key=True),  # 64 hex digits
        sa.Column("placed_us", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_buyer_fingerprints_digest", "buyer_fingerprints", ["kind", "digest", "placed_us"]
    )


def downgrade() -> None:
    op.drop_index("ix_buyer_fingerprints_digest", table_name="buyer_fingerprints")
    op.drop_table("buyer_fingerprints")
