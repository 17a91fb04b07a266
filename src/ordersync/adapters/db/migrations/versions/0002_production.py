"""Production mode: delivery leases, the outbox relay's publish marks and its lease.

- `deliveries.lease_owner` / `lease_until_us`: a worker claims a delivery before sending it;
  another worker may take it over only once the lease has expired, and a worker records an
  outcome only while it still holds the lease (the owner id is the fencing token).
- `events.published_us`: NULL until the relay has had the event confirmed by the broker.
  Embedded mode (no broker) stamps it at insert, so the partial index stays empty there.
- `relay_lease`: one row per relay role; `epoch` grows with every takeover and guards the
  relay's writes, so a relay that lost its lease (paused, partitioned) cannot mark anything.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("lease_owner", sa.Text))
    op.add_column("deliveries", sa.Column("lease_until_us", sa.BigInteger))
    op.add_column("events", sa.Column("published_us", sa.BigInteger))
    unpublished = sa.text("published_us IS NULL")
    op.create_index(
        "ix_events_unpublished",
        "events",
        ["seq"],
        sqlite_where=unpublished,
        postgresql_where=unpublished,
    )
    # Existing events were delivered by the database queue; the relay must not resend them.
    op.execute("UPDATE events SET published_us = created_us")
    op.create_table(
        "relay_lease",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("until_us", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO relay_lease (name, owner, epoch, until_us) VALUES ('outbox', NULL, 0, 0)"
    )


def downgrade() -> None:
    op.drop_table("relay_lease")
    op.drop_index("ix_events_unpublished", "events")
    op.drop_column("events", "published_us")
    op.drop_column("deliveries", "lease_until_us")
    op.drop_column("deliveries", "lease_owner")
