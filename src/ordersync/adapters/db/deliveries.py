"""Delivery records: the dispatcher's queue (db-queue backend) and the operator's view."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import bindparam, text

from ordersync.adapters.db.database import Database
from ordersync.clock import from_us
from ordersync.domain.codec import fmt_time
from ordersync.domain.delivery import DeliveryState
from ordersync.domain.errors import DeliveryNotFound, DeliveryNotReplayable
from ordersync.ids import new_id
from ordersync.service.delivery_ports import AttemptRecord, DueDelivery

log = logging.getLogger(__name__)

# A delivery is due when it is pending, its time has come, and no earlier event of the
# same order is still pending for the same destination: that is per-order ordering.
# `:fresh` holds back first attempts younger than the broker's grace period in broker mode
# (the bus consumers take those); without a broker it is simply "now".
_DUE_WHERE = """
    d.destination_id = :dest AND d.state = 'pending' AND d.next_attempt_us <= :now
      AND (d.attempts > 0 OR d.created_us <= :fresh)
      AND NOT EXISTS (
        SELECT 1 FROM deliveries p
        WHERE p.destination_id = d.destination_id AND p.order_id = d.order_id
          AND p.state = 'pending' AND p.seq < d.seq)
"""
_FETCH_DUE = text(
    f"""
    SELECT d.seq, d.order_id, d.attempts, d.first_attempt_us, e.id, e.type, e.body
    FROM deliveries d JOIN events e ON e.seq = d.event_seq
    WHERE {_DUE_WHERE}
    ORDER BY d.seq
    LIMIT :limit
    """  # noqa: S608 - fixed SQL
)
# PostgreSQL, several workers: claim with a lease in the same statement. SKIP LOCKED lets
# concurrent workers pass each other instead of queueing on the same rows.
_CLAIM_DUE = text(
    f"""
    WITH c AS (
      UPDATE deliveries SET lease_owner = :me, lease_until_us = :until
      WHERE seq IN (
        SELECT d.seq FROM deliveries d
        WHERE {_DUE_WHERE}
          AND (d.lease_until_us IS NULL OR d.lease_until_us < :now)
        ORDER BY d.seq LIMIT :limit
        FOR UPDATE SKIP LOCKED)
      RETURNING seq, order_id, attempts, first_attempt_us, event_seq, destination_id)
    SELECT c.seq, c.order_id, c.attempts, c.first_attempt_us, e.id, e.type, e.body,
      c.destination_id
    FROM c JOIN events e ON e.seq = c.event_seq ORDER BY c.seq
    """  # noqa: S608 - fixed SQL
)
# A bus consumer claims the deliveries named in a message, if they still head their lane.
_CLAIM_SEQS = text(
    """
    WITH c AS (
      UPDATE deliveries SET lease_owner = :me, lease_until_us = :until
      WHERE seq IN (
        SELECT d.seq FROM deliveries d
        WHERE d.seq = ANY(CAST(:seqs AS BIGINT[])) AND d.state = 'pending'
          AND d.next_attempt_us <= :now
          AND (d.lease_until_us IS NULL OR d.lease_until_us < :now)
          AND NOT EXISTS (
            SELECT 1 FROM deliveries p
            WHERE p.destination_id = d.destination_id AND p.order_id = d.order_id
              AND p.state = 'pending' AND p.seq < d.seq)
        FOR UPDATE SKIP LOCKED)
      RETURNING seq, order_id, attempts, first_attempt_us, event_seq, destination_id)
    SELECT c.seq, c.order_id, c.attempts, c.first_attempt_us, e.id, e.type, e.body,
      c.destination_id
    FROM c JOIN events e ON e.seq = c.event_seq ORDER BY c.seq
    """
)
# Record outcomes only for deliveries this worker still holds: the owner id is the fence.
# A worker whose lease was taken over (it stalled past the lease) records nothing; the new
# holder sends again with the same webhook-id, which receivers dedupe.
_RECORD_LEASED = text(
    """
    UPDATE deliveries d SET state = v.state, attempts = v.attempt, next_attempt_us = v.next,
      first_attempt_us = COALESCE(d.first_attempt_us, v.started), updated_us = v.started,
      last_status = v.status, last_error = v.error, delivered_us = v.delivered,
      lease_owner = NULL, lease_until_us = NULL
    FROM unnest(CAST(:seqs AS BIGINT[]), CAST(:states AS TEXT[]), CAST(:attempts AS INT[]),
                CAST(:nexts AS BIGINT[]), CAST(:starteds AS BIGINT[]),
                CAST(:statuses AS INT[]), CAST(:errors AS TEXT[]),
                CAST(:delivereds AS BIGINT[]))
      AS v(seq, state, attempt, next, started, status, error, delivered)
    WHERE d.seq = v.seq AND d.lease_owner = :me AND d.state = 'pending'
    RETURNING d.seq
    """
)
_RENEW = text(
    "UPDATE deliveries SET lease_until_us = :until WHERE seq = ANY(CAST(:seqs AS BIGINT[]))"
    " AND lease_owner = :me AND state = 'pending'"
)
_INSERT_ATTEMPTS = text(
    "INSERT INTO delivery_attempts (delivery_seq, attempt, started_us, duration_ms,"
    " status, outcome, error) VALUES (:seq, :attempt, :started, :ms, :status,"
    " :outcome, :error)"
)


_LIST = (
    "SELECT d.seq, d.destination_id, d.order_id, d.state, d.attempts, d.next_attempt_us,"
    " d.created_us, d.updated_us, d.delivered_us, d.last_status, d.last_error, e.id,"
    " e.type, e.order_version FROM deliveries d JOIN events e ON e.seq = d.event_seq"
    " WHERE {where} ORDER BY d.seq LIMIT :limit"
)


def public_id(seq: int) -> str:
    return f"dlv_{seq}"


def parse_public_id(delivery_id: str) -> int:
    prefix, _, num = delivery_id.partition("_")
    if prefix != "dlv" or not (num.isascii() and num.isdigit()) or len(num) > 18:  # BIGINT range
        raise DeliveryNotFound(delivery_id)
    return int(num)


def _due(r: Any, destination_id: str) -> DueDelivery:
    return DueDelivery(
        seq=r[0],
        destination_id=destination_id,
        order_id=r[1],
        attempts=r[2],
        first_attempt_us=r[3],
        event_id=r[4],
        event_type=r[5],
        body=bytes(r[6]),
    )


def _attempt_row(r: AttemptRecord) -> dict[str, Any]:
    return {
        "seq": r.delivery.seq,
        "attempt": r.attempt,
        "started": r.started_us,
        "ms": r.outcome.duration_ms,
        "status": r.outcome.status,
        "outcome": "ok" if r.outcome.ok else "failed",
        "error": r.outcome.error,
    }


class SqlDeliveryStore:
    """On SQLite (one process by design) claims live in the dispatcher's memory. On
    PostgreSQL every claim is a lease in the row, so any number of worker processes can
    share the queue: `owner` names this process, `lease_seconds` is how long a claim holds
    without renewal (a killed worker's work is taken over that much later)."""

    def __init__(self, db: Database, *, owner: str = "", lease_seconds: float = 4.0) -> None:
        self.db = db
        self.owner = owner or new_id("wrk")
        self.leased = not db.is_sqlite
        self.lease_us = int(lease_seconds * 1e6)
        self.lost_leases = 0  # outcomes discarded because another worker took the delivery

    async def fetch_due(
        self, destination_id: str, now_us: int, limit: int, fresh_before_us: int | None = None
    ) -> list[DueDelivery]:
        params = {
            "dest": destination_id,
            "now": now_us,
            "fresh": now_us if fresh_before_us is None else fresh_before_us,
            "limit": limit,
        }
        if not self.leased:
            async with self.db.read() as conn:
                rows = (await conn.execute(_FETCH_DUE, params)).all()
            return [_due(r, destination_id) for r in rows]
        params |= {"me": self.owner, "until": now_us + self.lease_us}
        async with self.db.write() as conn:
            rows = (await conn.execute(_CLAIM_DUE, params)).all()
        return [_due(r, r[7]) for r in rows]

    async def claim(self, seqs: list[int], now_us: int) -> list[DueDelivery]:
        """Claim these deliveries if they are pending, due, unleased and head their lane."""
        if not seqs:
            return []
        if not self.leased:
            raise NotImplementedError("claims by id need PostgreSQL (broker mode)")
        params = {"seqs": seqs, "now": now_us, "me": self.owner, "until": now_us + self.lease_us}
        async with self.db.write() as conn:
            rows = (await conn.execute(_CLAIM_SEQS, params)).all()
        return [_due(r, r[7]) for r in rows]

    async def renew(self, seqs: list[int], now_us: int) -> None:
        if self.leased and seqs:
            async with self.db.write() as conn:
                await conn.execute(
                    _RENEW, {"seqs": seqs, "me": self.owner, "until": now_us + self.lease_us}
                )

    async def states(self, seqs: list[int]) -> dict[int, str]:
        stmt = text("SELECT seq, state FROM deliveries WHERE seq IN :s").bindparams(
            bindparam("s", expanding=True)
        )
        async with self.db.read() as conn:
            return {int(r[0]): str(r[1]) for r in await conn.execute(stmt, {"s": seqs})}

    async def record(self, records: list[AttemptRecord]) -> None:
        async with self.db.write() as conn:
            if self.leased:
                kept = {
                    r[0]
                    for r in await conn.execute(
                        _RECORD_LEASED,
                        {
                            "me": self.owner,
                            "seqs": [r.delivery.seq for r in records],
                            "states": [r.state.value for r in records],
                            "attempts": [r.attempt for r in records],
                            "nexts": [r.next_attempt_us for r in records],
                            "starteds": [r.started_us for r in records],
                            "statuses": [r.outcome.status for r in records],
                            "errors": [r.outcome.error for r in records],
                            "delivereds": [r.started_us if r.outcome.ok else None for r in records],
                        },
                    )
                }
                if len(kept) < len(records):
                    self.lost_leases += len(records) - len(kept)
                    log.warning(
                        "%d delivery outcomes discarded: their lease passed to another worker",
                        len(records) - len(kept),
                    )
                    records = [r for r in records if r.delivery.seq in kept]
                if records:
                    await conn.execute(_INSERT_ATTEMPTS, [_attempt_row(r) for r in records])
                return
            await conn.execute(_INSERT_ATTEMPTS, [_attempt_row(r) for r in records])
            await conn.execute(
                text(
                    "UPDATE deliveries SET state = :state, attempts = :attempt,"
                    " next_attempt_us = :next, first_attempt_us = COALESCE(first_attempt_us,"
                    " :started), updated_us = :started, last_status = :status,"
                    " last_error = :error, delivered_us = :delivered WHERE seq = :seq"
                ),
                [
                    {
                        "seq": r.delivery.seq,
                        "state": r.state.value,
                        "attempt": r.attempt,
                        "next": r.next_attempt_us,
                        "started": r.started_us,
                        "status": r.outcome.status,
                        "error": r.outcome.error,
                        "delivered": r.started_us if r.outcome.ok else None,
                    }
                    for r in records
                ],
            )

    # ---- operator view ----------------------------------------------------------------
    async def replay(self, seq: int, now_us: int) -> str:
        """Send a delivery again (same webhook-id, so the receiver can dedupe)."""
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    text("SELECT state, destination_id FROM deliveries WHERE seq = :s"), {"s": seq}
                )
            ).first()
            if row is None:
                raise DeliveryNotFound(public_id(seq))
            if row[0] == DeliveryState.PENDING:
                raise DeliveryNotReplayable(f"{public_id(seq)} is already pending")
            await conn.execute(
                text(
                    "UPDATE deliveries SET state = 'pending', next_attempt_us = :now,"
                    " first_attempt_us = NULL, updated_us = :now WHERE seq = :s"
                ),
                {"s": seq, "now": now_us},
            )
            return str(row[1])

    async def replay_dead(self, destination_id: str | None, now_us: int) -> tuple[int, set[str]]:
        where = "state = 'dead'" + (" AND destination_id = :d" if destination_id else "")
        async with self.db.write() as conn:
            dests = {
                r[0]
                for r in await conn.execute(
                    text(f"SELECT DISTINCT destination_id FROM deliveries WHERE {where}"),  # noqa: S608 - fixed SQL
                    {"d": destination_id},
                )
            }
            result = await conn.execute(
                text(
                    f"UPDATE deliveries SET state = 'pending', next_attempt_us = :now,"  # noqa: S608
                    f" first_attempt_us = NULL, updated_us = :now WHERE {where}"
                ),
                {"d": destination_id, "now": now_us},
            )
            return int(result.rowcount or 0), dests

    async def find(
        self,
        *,
        order_id: str | None = None,
        destination_id: str | None = None,
        state: str | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        clauses: list[str] = ["1 = 1"]
        params: dict[str, Any] = {"limit": limit}
        for col, val in (
            ("d.order_id", order_id),
            ("d.destination_id", destination_id),
            ("d.state", state),
        ):
            if val is not None:
                name = col.split(".")[1]
                clauses.append(f"{col} = :{name}")
                params[name] = val
        if after is not None:
            clauses.append("d.seq > :after")
            params["after"] = after
        # Only fixed clauses with placeholders are joined in; values travel as parameters.
        sql = _LIST.format(where=" AND ".join(clauses))
        async with self.db.read() as conn:
            rows = (await conn.execute(text(sql), params)).all()
        return [
            {
                "id": public_id(r[0]),
                "destination_id": r[1],
                "order_id": r[2],
                "state": r[3],
                "attempts": r[4],
                "next_attempt_at": fmt_time(from_us(r[5])) if r[3] == "pending" else None,
                "created_at": fmt_time(from_us(r[6])),
                "updated_at": fmt_time(from_us(r[7])),
                "delivered_at": fmt_time(from_us(r[8])) if r[8] else None,
                "last_status": r[9],
                "last_error": r[10],
                "event_id": r[11],
                "event_type": r[12],
                "order_version": r[13],
                "cursor": r[0],
            }
            for r in rows
        ]

    async def attempts(self, seq: int) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT attempt, started_us, duration_ms, status, outcome, error"
                    " FROM delivery_attempts WHERE delivery_seq = :s ORDER BY seq"
                ),
                {"s": seq},
            )
            return [
                {
                    "attempt": r[0],
                    "started_at": fmt_time(from_us(r[1])),
                    "duration_ms": round(r[2], 3),
                    "status": r[3],
                    "outcome": r[4],
                    "error": r[5],
                }
                for r in rows
            ]

    async def summary(self) -> dict[str, dict[str, int]]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT destination_id, state, COUNT(*) FROM deliveries"
                    " GROUP BY destination_id, state"
                )
            )
            out: dict[str, dict[str, int]] = {}
            for dest, state, n in rows:
                out.setdefault(dest, {s.value: 0 for s in DeliveryState})[state] = int(n)
            return out

    async def retried_count(self) -> int:
        async with self.db.read() as conn:
            row = (
                await conn.execute(text("SELECT COUNT(*) FROM deliveries WHERE attempts > 1"))
            ).first()
            return int(row[0]) if row else 0
