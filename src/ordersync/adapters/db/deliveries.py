"""Delivery records: the dispatcher's queue (db-queue backend) and the operator's view."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from ordersync.adapters.db.database import Database
from ordersync.clock import from_us
from ordersync.domain.codec import fmt_time
from ordersync.domain.delivery import DeliveryState
from ordersync.domain.errors import DeliveryNotFound, DeliveryNotReplayable
from ordersync.service.delivery_ports import AttemptRecord, DueDelivery

# A delivery is due when it is pending, its time has come, and no earlier event of the
# same order is still pending for the same destination: that is per-order ordering.
_FETCH_DUE = text(
    """
    SELECT d.seq, d.order_id, d.attempts, d.first_attempt_us, e.id, e.type, e.body
    FROM deliveries d JOIN events e ON e.seq = d.event_seq
    WHERE d.destination_id = :dest AND d.state = 'pending' AND d.next_attempt_us <= :now
      AND NOT EXISTS (
        SELECT 1 FROM deliveries p
        WHERE p.destination_id = d.destination_id AND p.order_id = d.order_id
          AND p.state = 'pending' AND p.seq < d.seq)
    ORDER BY d.seq
    LIMIT :limit
    """
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


class SqlDeliveryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def fetch_due(self, destination_id: str, now_us: int, limit: int) -> list[DueDelivery]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                _FETCH_DUE, {"dest": destination_id, "now": now_us, "limit": limit}
            )
            return [
                DueDelivery(
                    seq=r[0],
                    destination_id=destination_id,
                    order_id=r[1],
                    attempts=r[2],
                    first_attempt_us=r[3],
                    event_id=r[4],
                    event_type=r[5],
                    body=bytes(r[6]),
                )
                for r in rows
            ]

    async def record(self, records: list[AttemptRecord]) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO delivery_attempts (delivery_seq, attempt, started_us, duration_ms,"
                    " status, outcome, error) VALUES (:seq, :attempt, :started, :ms, :status,"
                    " :outcome, :error)"
                ),
                [
                    {
                        "seq": r.delivery.seq,
                        "attempt": r.attempt,
                        "started": r.started_us,
                        "ms": r.outcome.duration_ms,
                        "status": r.outcome.status,
                        "outcome": "ok" if r.outcome.ok else "failed",
                        "error": r.outcome.error,
                    }
                    for r in records
                ],
            )
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
