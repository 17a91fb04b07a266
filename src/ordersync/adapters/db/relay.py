"""The relay's tables: which events still need publishing, and who may publish them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from ordersync.adapters.db.database import Database
from ordersync.adapters.db.unit_of_work import OUTBOX_CHANNEL
from ordersync.service.bus import EventMessage

log = logging.getLogger(__name__)

# Take the lease when it is free or expired (a new epoch: the fencing token), or extend it
# while we hold it (same epoch).
_ACQUIRE = text(
    """
    UPDATE relay_lease
    SET owner = :me, until_us = :until,
        epoch = CASE WHEN owner = :me AND until_us >= :now THEN epoch ELSE epoch + 1 END
    WHERE name = :name AND (owner = :me OR owner IS NULL OR until_us < :now)
    RETURNING epoch
    """
)
# Named leases other than the relay's ('outbox', made by migration 0002) get their row on
# first use.
_ENSURE = text(
    "INSERT INTO relay_lease (name, owner, epoch, until_us) VALUES (:name, NULL, 0, 0)"
    " ON CONFLICT (name) DO NOTHING"
)
_UNPUBLISHED = text(
    """
    SELECT e.seq, e.id, e.order_id, e.created_us, d.seq, d.destination_id
    FROM (SELECT seq, id, order_id, created_us FROM events
          WHERE published_us IS NULL ORDER BY seq LIMIT :limit) e
    JOIN deliveries d ON d.event_seq = e.seq
    ORDER BY e.seq, d.seq
    """
)
# The fence: marks land only while our epoch still owns the lease.
_MARK = text(
    """
    UPDATE events SET published_us = :now
    WHERE seq = ANY(CAST(:seqs AS BIGINT[])) AND EXISTS (
      SELECT 1 FROM relay_lease WHERE name = :name AND owner = :me AND epoch = :epoch)
    """
)


class SqlRelayStore:
    """The relay's lease row `name` (and its outbox queries). With another `name` it is a
    plain named lease with epochs, as `SingletonTask` uses (service/singleton.py)."""

    def __init__(self, db: Database, name: str = "outbox") -> None:
        if db.is_sqlite:
            raise ValueError("the outbox relay needs PostgreSQL (broker mode)")
        self.db = db
        self.name = name
        self._ensured = False

    async def acquire(self, owner: str, now_us: int, ttl_us: int) -> int | None:
        """Our epoch if we hold the lease now, else None."""
        async with self.db.write() as conn:
            if not self._ensured:
                await conn.execute(_ENSURE, {"name": self.name})
            row = (
                await conn.execute(
                    _ACQUIRE,
                    {"me": owner, "now": now_us, "until": now_us + ttl_us, "name": self.name},
                )
            ).first()
        self._ensured = True
        return int(row[0]) if row else None

    async def release(self, owner: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                text("UPDATE relay_lease SET until_us = 0 WHERE name = :name AND owner = :me"),
                {"name": self.name, "me": owner},
            )

    async def unpublished(self, limit: int) -> list[EventMessage]:
        async with self.db.read() as conn:
            rows = (await conn.execute(_UNPUBLISHED, {"limit": limit})).all()
        out: list[EventMessage] = []
        current: list[Any] | None = None
        for e_seq, e_id, order_id, created_us, d_seq, dest in rows:
            if current is None or current[0] != e_seq:
                current = [e_seq, e_id, order_id, created_us, []]
                out.append(current)  # type: ignore[arg-type]
            current[4].append((d_seq, dest))
        return [EventMessage(c[0], c[1], c[2], c[3], tuple(c[4])) for c in out]  # type: ignore[index]

    async def mark_published(self, seqs: list[int], owner: str, epoch: int, now_us: int) -> bool:
        """False if the lease moved on: our marks were refused (the new holder republishes)."""
        async with self.db.write() as conn:
            result = await conn.execute(
                _MARK, {"seqs": seqs, "now": now_us, "name": self.name, "me": owner, "epoch": epoch}
            )
        return int(result.rowcount or 0) == len(seqs)

    async def listen(self, wake: Callable[[], None], lost: Callable[[], None]) -> Callable[[], Any]:
        """LISTEN for commits with new outbox rows; `lost` is called if the connection
        drops (a database restart). Returns a coroutine function to stop listening."""
        raw = await asyncpg_connect(self.db)

        def on_notify(*_: Any) -> None:
            wake()

        raw.add_termination_listener(lambda _conn: lost())
        await raw.add_listener(OUTBOX_CHANNEL, on_notify)

        async def close() -> None:
            try:
                await asyncio.wait_for(raw.close(), 2)
            except Exception:  # already broken: nothing to close cleanly
                raw.terminate()

        return close


async def asyncpg_connect(db: Database) -> Any:
    import asyncpg
    from sqlalchemy.engine import make_url

    u = make_url(db.url)
    return await asyncpg.connect(
        host=u.host,
        port=u.port,
        user=u.username,
        password=u.password,
        database=u.database,
        timeout=5,
    )
