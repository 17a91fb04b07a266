"""Carrier choice, polling and cancellation (issue 6).

- `carrier_rule_overrides`: a rule's carrier switched at run time (`PUT
  /v1/carrier-rules/{id}`), kept across restarts and shared by every process.
- `shipments.polled_us`: when the tracking poller last asked the carrier about the parcel
  (NULL: never), so it polls the oldest-polled first.
- `shipments.poll_state`: NULL while the parcel is still tracked by polling; `final` once
  its status is terminal, `expired` once it outlived the poll's `max_age` (no more polls).
- The partial index covers exactly the rows a poll round reads.

Revision ID: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_POLLABLE = "poll_state IS NULL"


def upgrade() -> None:
    op.create_table(
        "carrier_rule_overrides",
        sa.Column("rule_id", sa.Text, primary_key=True),
        sa.Column("carrier_id", sa.Text, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.Column("updated_by", sa.Text, nullable=False),  # the API key id
    )
    with op.batch_alter_table("shipments") as batch:
        batch.add_column(sa.Column("polled_us", sa.BigInteger))
        batch.add_column(sa.Column("poll_state", sa.Text))
    op.create_index(
        "ix_shipments_poll",
        "shipments",
        ["carrier_id", "polled_us"],
        sqlite_where=sa.text(_POLLABLE),
        postgresql_where=sa.text(_POLLABLE),
    )


def downgrade() -> None:
    op.drop_index("ix_shipments_poll", table_name="shipments")
    with op.batch_alter_table("shipments") as batch:
        batch.drop_column("poll_state")
        batch.drop_column("polled_us")
    op.drop_table("carrier_rule_overrides")
