"""The outbox relay in this process, on the real PostgreSQL and RabbitMQ: exact lag and throughput.

This runs the relay the workers run (`OutboxRelay` + `SqlRelayStore` + `RabbitBus`, default
settings: batch 1000, 8 quorum lanes, 100 events per broker message, LISTEN/NOTIFY wake-up)
against a fresh, migrated database and its own RabbitMQ namespace. Because committer, relay
and consumer share one process and one monotonic clock, every interval is exact:

- idle lag: one event (1 event row + 3 delivery rows + NOTIFY, as the API commits it) every
  `spacing` seconds; for each, commit returned -> broker confirm of its publication, and
  commit returned -> a consumer on the lane queues received it;
- throughput: `events` unpublished events (3 deliveries each) inserted directly, then one
  relay started; time from start until the last one is marked published. Afterwards the
  lane queues are drained to check every event reached the broker.

The relay's own database and broker calls are timed too (where a batch's time goes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench.common import PG_ADMIN_URL, create_pg_database, drop_pg_database, percentile
from ordersync.adapters.bus.rabbitmq import RabbitBus
from ordersync.adapters.db import migrate
from ordersync.adapters.db.database import Database
from ordersync.adapters.db.relay import SqlRelayStore
from ordersync.adapters.db.unit_of_work import OUTBOX_CHANNEL
from ordersync.clock import to_us, utcnow
from ordersync.service.bus import EventMessage
from ordersync.service.relay import OutboxRelay

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
DESTINATIONS = ("erp", "wms", "payment")
# A stand-in event body (~2 KB JSON); the relay never reads bodies, it only carries ids.
BODY = b'{"type":"order.created","data":{' + b'"note":"' + b"x" * 1950 + b'"}}'


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def summary_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "n": len(values),
        "p50": ms(percentile(values, 50)),
        "p90": ms(percentile(values, 90)),
        "p99": ms(percentile(values, 99)),
        "max": ms(max(values)),
        "min": ms(min(values)),
        "mean": ms(sum(values) / len(values)),
    }


@dataclass
class Timings:
    """Wall time of the relay's calls (sum, count) and when each event was confirmed."""

    calls: dict[str, list[float]] = field(default_factory=dict)
    confirmed_at: dict[int, float] = field(default_factory=dict)
    metric_lags: list[float] = field(default_factory=list)

    def add(self, name: str, seconds: float) -> None:
        self.calls.setdefault(name, []).append(seconds)

    def report(self) -> dict[str, Any]:
        return {
            name: {
                "calls": len(v),
                "total_s": round(sum(v), 3),
                "mean_ms": ms(sum(v) / len(v)),
                "max_ms": ms(max(v)),
            }
            for name, v in self.calls.items()
        }


class TimedStore:
    """SqlRelayStore with its calls timed."""

    def __init__(self, inner: SqlRelayStore, t: Timings) -> None:
        self.inner = inner
        self.t = t

    async def acquire(self, owner: str, now_us: int, ttl_us: int) -> int | None:
        return await self.inner.acquire(owner, now_us, ttl_us)

    async def release(self, owner: str) -> None:
        await self.inner.release(owner)

    async def unpublished(self, limit: int) -> list[EventMessage]:
        t0 = time.monotonic()
        out = await self.inner.unpublished(limit)
        self.t.add("select_unpublished", time.monotonic() - t0)
        return out

    async def mark_published(self, seqs: list[int], owner: str, epoch: int, now_us: int) -> bool:
        t0 = time.monotonic()
        ok = await self.inner.mark_published(seqs, owner, epoch, now_us)
        self.t.add("mark_published", time.monotonic() - t0)
        return ok

    async def listen(self, wake: Callable[[], None], lost: Callable[[], None]) -> Any:
        return await self.inner.listen(wake, lost)


class TimedPublisher:
    """RabbitBus.publish with the confirm time of every event noted."""

    def __init__(self, inner: RabbitBus, t: Timings) -> None:
        self.inner = inner
        self.t = t

    async def publish(self, messages: list[EventMessage]) -> None:
        t0 = time.monotonic()
        await self.inner.publish(messages)
        t1 = time.monotonic()
        self.t.add("publish_and_confirm", t1 - t0)
        for m in messages:
            self.t.confirmed_at.setdefault(m.event_seq, t1)


class Observer:
    def __init__(self, t: Timings) -> None:
        self.t = t

    def published(self, lags_seconds: list[float]) -> None:
        self.t.metric_lags.extend(lags_seconds)  # what ordersync_relay_lag_seconds observes

    def leader(self, is_leader: bool) -> None:
        pass


class Fixture:
    """A fresh migrated database, a RabbitMQ namespace, and a relay on them."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.db_name = ""
        self.db_url = ""
        self.db: Database | None = None
        self.bus: RabbitBus | None = None
        self.consumer_bus: RabbitBus | None = None
        self.namespace = f"osbench-{tag}-{uuid.uuid4().hex[:8]}"
        self.timings = Timings()
        self.relay: OutboxRelay | None = None

    async def __aenter__(self) -> Fixture:
        self.db_name, self.db_url = create_pg_database(self.tag)
        self.db = Database(self.db_url)
        await migrate.upgrade(self.db)
        self.bus = RabbitBus(BROKER_URL, namespace=self.namespace, name="bench-relay")
        await self.bus.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.relay is not None:
            await self.relay.stop()
        if self.consumer_bus is not None:
            await self.consumer_bus.unsubscribe()
            await self.consumer_bus.close()
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.delete_topology()
            await self.bus.close()
        if self.db is not None:
            await self.db.dispose()
        if self.db_name:
            drop_pg_database(self.db_name)

    def start_relay(self) -> OutboxRelay:
        assert self.db is not None
        assert self.bus is not None
        self.relay = OutboxRelay(
            TimedStore(SqlRelayStore(self.db), self.timings),
            TimedPublisher(self.bus, self.timings),
            observer=Observer(self.timings),
        )
        self.relay.start()
        return self.relay

    async def consume(self, on_event: Callable[[EventMessage], None]) -> None:
        """Consume the lane queues (a second connection, as a worker would)."""
        self.consumer_bus = RabbitBus(BROKER_URL, namespace=self.namespace, name="bench-consumer")
        await self.consumer_bus.connect()

        async def handler(m: EventMessage) -> None:
            on_event(m)

        await self.consumer_bus.subscribe(handler)

    async def pg(self) -> asyncpg.Connection:
        return await asyncpg.connect(f"{PG_ADMIN_URL}/{self.db_name}")


async def _until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


async def _wait_leader(relay: OutboxRelay, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while relay.epoch is None:
        if time.monotonic() > deadline:
            raise TimeoutError("the relay did not take its lease")
        await asyncio.sleep(0.01)


async def measure_idle_lag(seconds: float = 10.0, spacing: float = 0.05) -> dict[str, Any]:
    """One committed event every `spacing` s; commit -> confirmed and -> consumed, exactly."""
    committed: dict[int, float] = {}
    received: dict[int, float] = {}

    def on_event(m: EventMessage) -> None:
        received.setdefault(m.event_seq, time.monotonic())

    async with Fixture("lag") as fx:
        await fx.consume(on_event)
        relay = fx.start_relay()
        await _wait_leader(relay)
        conn = await fx.pg()
        try:
            await asyncio.sleep(0.5)  # the relay's LISTEN is up (it starts after the lease)
            started = time.monotonic()
            i = 0
            while time.monotonic() - started < seconds:
                due = started + i * spacing
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                now_us = to_us(utcnow())
                async with conn.transaction():
                    seq = await conn.fetchval(
                        "INSERT INTO events (id, type, order_id, order_version, created_us, body,"
                        " published_us) VALUES ($1, 'order.created', $2, 1, $3, $4, NULL)"
                        " RETURNING seq",
                        f"evt_lag_{i}",
                        f"ord_lag_{i}",
                        now_us,
                        BODY,
                    )
                    await conn.executemany(
                        "INSERT INTO deliveries (event_seq, destination_id, order_id, state,"
                        " attempts, next_attempt_us, created_us, updated_us)"
                        " VALUES ($1, $2, $3, 'pending', 0, $4, $4, $4)",
                        [(seq, d, f"ord_lag_{i}", now_us) for d in DESTINATIONS],
                    )
                    await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
                committed[seq] = time.monotonic()
                i += 1
            await _until(lambda: len(received) >= len(committed), 10)
        finally:
            await conn.close()
        t = fx.timings
        to_confirm = [t.confirmed_at[s] - c for s, c in committed.items() if s in t.confirmed_at]
        to_consumer = [received[s] - c for s, c in committed.items() if s in received]
        return {
            "events": len(committed),
            "spacing_s": spacing,
            "seconds": seconds,
            "commit_to_confirm_ms": summary_ms(to_confirm),
            "commit_to_consumer_ms": summary_ms(to_consumer),
            # created_us (stamped before the INSERTs) -> confirm: what the metric observes.
            "metric_lag_ms": summary_ms(t.metric_lags),
            "not_confirmed": len(committed) - len(to_confirm),
            "not_received": len(committed) - len(to_consumer),
            "relay_calls": t.report(),
        }


async def prefill(conn: asyncpg.Connection, events: int) -> None:
    """`events` unpublished events (one order each) with 3 pending deliveries each."""
    now_us = to_us(utcnow())
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO events (id, type, order_id, order_version, created_us, body,"
            " published_us) SELECT 'evt_fill_' || g, 'order.created', 'ord_fill_' || g, 1, $1,"
            " $2, NULL FROM generate_series(1, $3) g",
            now_us,
            BODY,
            events,
        )
        await conn.execute(
            "INSERT INTO deliveries (event_seq, destination_id, order_id, state, attempts,"
            " next_attempt_us, created_us, updated_us) SELECT e.seq, d, e.order_id, 'pending',"
            " 0, $1, $1, $1 FROM events e CROSS JOIN unnest($2::text[]) d ORDER BY e.seq, d",
            now_us,
            list(DESTINATIONS),
        )
    await conn.execute("ANALYZE events")
    await conn.execute("ANALYZE deliveries")


async def measure_throughput(events: int = 50_000) -> dict[str, Any]:
    """Pre-filled backlog, one relay: events/s until all are marked published."""
    async with Fixture("thru") as fx:
        conn = await fx.pg()
        try:
            t0 = time.monotonic()
            await prefill(conn, events)
            fill_s = time.monotonic() - t0
            relay = fx.start_relay()
            started = time.monotonic()
            while relay.published_total < events:
                await asyncio.sleep(0.005)
                if time.monotonic() - started > 600:
                    break
            elapsed = time.monotonic() - started
            published = relay.published_total
            await relay.stop()
            fx.relay = None
            left = await conn.fetchval("SELECT count(*) FROM events WHERE published_us IS NULL")
        finally:
            await conn.close()
        # Every event reached the broker: drain the lanes and count distinct event seqs.
        assert fx.bus is not None
        depths = await fx.bus.queue_depths()
        seen: set[int] = set()
        copies = 0

        def on_event(m: EventMessage) -> None:
            nonlocal copies
            copies += 1
            seen.add(m.event_seq)

        await fx.consume(on_event)
        await _until(lambda: len(seen) >= events, 60)
        t = fx.timings
        batches = len(t.calls.get("publish_and_confirm", []))
        return {
            "events": events,
            "deliveries": events * len(DESTINATIONS),
            "prefill_s": round(fill_s, 2),
            "seconds": round(elapsed, 3),
            "events_per_s": round(published / elapsed, 1) if elapsed else 0.0,
            "published": published,
            "left_unpublished": int(left),
            "broker_messages": sum(v for k, v in depths.items() if ".lane." in k),
            "batches": batches,
            "drained_distinct_events": len(seen),
            "drained_copies": copies,
            "relay_calls": t.report(),
        }
