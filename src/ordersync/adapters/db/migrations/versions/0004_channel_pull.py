"""Channel pull cursors: where each channel's incremental pull stands, so it resumes after
a restart without missing or re-reading more than one page.

- `channel_cursors`: one row per (channel, purpose) — "live" for the pull loop, "backfill"
  for `ordersync backfill`. `watermark_us`: every order modified before it has been read;
  `window_*_us` / `page`: the window being read and the next page (read last to first).

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "channel_cursors",
        sa.Column("channel_id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("watermark_us", sa.BigInteger, nullable=False),
        sa.Column("window_start_us", sa.BigInteger),
        sa.Column("window_end_us", sa.BigInteger),
        sa.Column("page", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("channel_cursors")
