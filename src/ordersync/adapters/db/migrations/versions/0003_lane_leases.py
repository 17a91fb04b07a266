"""Lane leases: each RabbitMQ lane is consumed by one worker at a time, shared out fairly.

- `workers`: a heartbeat per worker process, so every worker knows how many are alive;
- `lane_leases`: who consumes which lane, until when (renewed every second).

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("owner", sa.Text, primary_key=True),
        sa.Column("seen_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "lane_leases",
        sa.Column("namespace", sa.Text, primary_key=True),
        sa.Column("lane", sa.Integer, primary_key=True),
        sa.Column("owner", sa.Text),
        sa.Column("until_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("lane_leases")
    op.drop_table("workers")
