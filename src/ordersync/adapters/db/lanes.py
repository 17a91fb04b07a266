"""Lane leases and worker heartbeats in PostgreSQL (see `service/lanes.py`)."""

from __future__ import annotations

from sqlalchemy import text

from ordersync.adapters.db.database import Database


class SqlLaneStore:
    def __init__(self, db: Database, namespace: str, lanes: int) -> None:
        self.db = db
        self.namespace = namespace
        self.lanes = lanes

    async def ensure(self) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO lane_leases (namespace, lane, owner, until_us)"
                    " SELECT :ns, g, NULL, 0 FROM generate_series(0, :n - 1) AS g"
                    " ON CONFLICT DO NOTHING"
                ),
                {"ns": self.namespace, "n": self.lanes},
            )

    async def heartbeat(self, owner: str, now_us: int, ttl_us: int) -> int:
        """Record that `owner` is alive; return how many workers are alive."""
        async with self.db.write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO workers (owner, seen_us) VALUES (:me, :now)"
                    " ON CONFLICT (owner) DO UPDATE SET seen_us = EXCLUDED.seen_us"
                ),
                {"me": owner, "now": now_us},
            )
            await conn.execute(
                text("DELETE FROM workers WHERE seen_us < :old"), {"old": now_us - 3600 * 10**6}
            )
            row = (
                await conn.execute(
                    text("SELECT COUNT(*) FROM workers WHERE seen_us >= :live"),
                    {"live": now_us - ttl_us},
                )
            ).first()
        return int(row[0]) if row else 1

    async def renew(self, owner: str, now_us: int, ttl_us: int) -> set[int]:
        """Extend our unexpired leases; return the lanes we still hold."""
        async with self.db.write() as conn:
            rows = await conn.execute(
                text(
                    "UPDATE lane_leases SET until_us = :until WHERE namespace = :ns"
                    " AND owner = :me AND until_us >= :now RETURNING lane"
                ),
                {"ns": self.namespace, "me": owner, "now": now_us, "until": now_us + ttl_us},
            )
            return {int(r[0]) for r in rows}

    async def claim(self, owner: str, want: int, now_us: int, ttl_us: int) -> set[int]:
        """Take up to `want` free or expired lanes."""
        if want <= 0:
            return set()
        async with self.db.write() as conn:
            rows = await conn.execute(
                text(
                    "UPDATE lane_leases SET owner = :me, until_us = :until"
                    " WHERE namespace = :ns AND lane IN ("
                    "   SELECT lane FROM lane_leases WHERE namespace = :ns"
                    "   AND (owner IS NULL OR until_us < :now) ORDER BY lane LIMIT :want"
                    "   FOR UPDATE SKIP LOCKED)"
                    " RETURNING lane"
                ),
                {
                    "ns": self.namespace,
                    "me": owner,
                    "now": now_us,
                    "until": now_us + ttl_us,
                    "want": want,
                },
            )
            return {int(r[0]) for r in rows}

    async def release(self, owner: str, lanes: set[int]) -> None:
        if not lanes:
            return
        async with self.db.write() as conn:
            await conn.execute(
                text(
                    "UPDATE lane_leases SET owner = NULL, until_us = 0 WHERE namespace = :ns"
                    " AND owner = :me AND lane = ANY(CAST(:lanes AS INT[]))"
                ),
                {"ns": self.namespace, "me": owner, "lanes": sorted(lanes)},
            )

    async def retire(self, owner: str) -> None:
        """A worker stopping cleanly: others see one fewer at once."""
        async with self.db.write() as conn:
            await conn.execute(text("DELETE FROM workers WHERE owner = :me"), {"me": owner})
