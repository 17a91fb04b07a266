"""Order merges and splits (issue 5): shipment groups and who is in them.

- `shipment_groups`: one row per group ever made; `doc` is the group's JSON with its items
  and, recursively, the groups it was made from (`origin`), so `unmerge` and `join` give
  back exactly what was there. `state` is `active` or `retired` (merged away, split up,
  unmerged, joined); a group given back by an undo is the same id made active again.
- `shipment_group_members`: (order, group) for the ACTIVE groups only, so "which groups is
  this order in" is one indexed lookup. An order without rows ships as placed (its implicit
  group `grp_<order id>`).

Revision ID: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shipment_groups",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),  # order | merge | split
        sa.Column("state", sa.Text, nullable=False),  # active | retired
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
    )
    op.create_table(
        "shipment_group_members",
        sa.Column("order_id", sa.Text, sa.ForeignKey("orders.id"), primary_key=True),
        sa.Column("group_id", sa.Text, sa.ForeignKey("shipment_groups.id"), primary_key=True),
    )
    op.create_index("ix_shipment_group_members_group", "shipment_group_members", ["group_id"])


def downgrade() -> None:
    op.drop_index("ix_shipment_group_members_group", table_name="shipment_group_members")
    op.drop_table("shipment_group_members")
    op.drop_table("shipment_groups")
