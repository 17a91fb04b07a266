"""Carrier callbacks that keep failing to apply: retried with backoff, then parked.

- `carrier_inbox.attempts`: failed applications of a callback still `received` (each
  failure of its shipment's batch counts once); `retry_us`: not retried before then (NULL:
  at once); `last_error`: the class and message of the last failure. After
  `callback_max_attempts` failures its `outcome` becomes `parked`: no longer retried, listed
  by `GET /v1/carrier-callbacks/parked`, put back to `received` by a replay.
- `ix_carrier_inbox_parked` serves that list (parked rows are few; the partial index keeps
  them out of the applied millions).

Revision ID: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "carrier_inbox",
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.add_column("carrier_inbox", sa.Column("retry_us", sa.BigInteger))
    op.add_column("carrier_inbox", sa.Column("last_error", sa.Text))
    op.create_index(
        "ix_carrier_inbox_parked",
        "carrier_inbox",
        ["seq"],
        sqlite_where=sa.text("outcome = 'parked'"),
        postgresql_where=sa.text("outcome = 'parked'"),
    )


def downgrade() -> None:
    op.drop_index("ix_carrier_inbox_parked", table_name="carrier_inbox")
    with op.batch_alter_table("carrier_inbox") as batch:
        batch.drop_column("last_error")
        batch.drop_column("retry_us")
        batch.drop_column("attempts")
