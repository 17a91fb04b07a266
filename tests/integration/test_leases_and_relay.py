"""Production-mode building blocks on the real PostgreSQL (and RabbitMQ): delivery leases
with fencing, the relay's lease and epochs, and the relay publishing through RabbitMQ."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from sqlalchemy import text

from ordersync.adapters.bus.rabbitmq import RabbitBus
from ordersync.adapters.db import migrate
from ordersync.adapters.db.database import Database
from ordersync.adapters.db.deliveries import SqlDeliveryStore
from ordersync.adapters.db.relay import SqlRelayStore
from ordersync.domain.delivery import DeliveryState
from ordersync.service.bus import EventMessage
from ordersync.service.delivery_ports import AttemptOutcome, AttemptRecord, DueDelivery
from ordersync.service.relay import OutboxRelay

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]

BROKER_URL = os.environ.get("ORDERSYNC_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
T0 = 1_900_000_000_000_000  # a fixed "now" in microseconds


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await migrate.upgrade(database)
    yield database
    await database.dispose()


async def seed(db: Database, orders: list[str], events_per_order: int, dests: list[str]) -> None:
    """Unpublished events with one pending delivery per destination, in order per order."""
    async with db.write() as conn:
        for v in range(1, events_per_order + 1):
            for order_id in orders:
                seq = (
                    await conn.execute(
                        text(
                            "INSERT INTO events (id, type, order_id, order_version, created_us,"
                            " body, published_us) VALUES (:id, 'order.updated', :o, :v, :t,"
                            " :b, NULL) RETURNING seq"
                        ),
                        {
                            "id": f"evt_{order_id}_{v}",
                            "o": order_id,
                            "v": v,
                            "t": T0,
                            "b": b'{"type":"order.updated"}',
                        },
                    )
                ).scalar_one()
                for dest in dests:
                    await conn.execute(
                        text(
                            "INSERT INTO deliveries (event_seq, destination_id, order_id, state,"
                            " attempts, next_attempt_us, created_us, updated_us)"
                            " VALUES (:e, :d, :o, 'pending', 0, :t, :t, :t)"
                        ),
                        {"e": seq, "d": dest, "o": order_id, "t": T0},
                    )


def ok(d: DueDelivery, at: int = T0) -> AttemptRecord:
    return AttemptRecord(
        d, d.attempts + 1, at, AttemptOutcome(True, 200, None, 1.0), DeliveryState.SUCCEEDED, at
    )


async def test_two_workers_never_claim_the_same_delivery(db: Database) -> None:
    """Concurrent claims by two workers split the due lane heads; no delivery goes to both."""
    await seed(db, [f"ord_{i}" for i in range(200)], 1, ["erp"])
    a, b = SqlDeliveryStore(db, owner="wrk_a"), SqlDeliveryStore(db, owner="wrk_b")

    got_a, got_b = await asyncio.gather(a.fetch_due("erp", T0, 150), b.fetch_due("erp", T0, 150))

    seqs_a, seqs_b = {d.seq for d in got_a}, {d.seq for d in got_b}
    assert not seqs_a & seqs_b
    assert len(seqs_a | seqs_b) == 200


async def test_a_delivery_behind_a_pending_one_of_its_order_cannot_be_claimed(
    db: Database,
) -> None:
    """Per-order ordering across workers: version 2 waits until version 1 is recorded."""
    await seed(db, ["ord_BLUE-TEAPOT"], 2, ["erp"])
    a, b = SqlDeliveryStore(db, owner="wrk_a"), SqlDeliveryStore(db, owner="wrk_b")
    (first,) = await a.fetch_due("erp", T0, 10)
    second_seq = first.seq + 1

    blocked = await b.claim([second_seq], T0)
    await a.record([ok(first)])
    unblocked = await b.claim([second_seq], T0)

    assert first.event_id == "evt_ord_BLUE-TEAPOT_1"
    assert blocked == []
    assert [d.event_id for d in unblocked] == ["evt_ord_BLUE-TEAPOT_2"]


async def test_an_expired_lease_is_taken_over_and_the_late_worker_records_nothing(
    db: Database,
) -> None:
    """Fencing: a worker that stalled past its lease cannot overwrite the new holder's work."""
    await seed(db, ["ord_MATCHA"], 1, ["erp"])
    slow = SqlDeliveryStore(db, owner="wrk_slow", lease_seconds=4)
    fresh = SqlDeliveryStore(db, owner="wrk_fresh", lease_seconds=4)
    (d,) = await slow.fetch_due("erp", T0, 10)

    while_held = await fresh.fetch_due("erp", T0 + 3_000_000, 10)
    after_expiry = await fresh.fetch_due("erp", T0 + 5_000_000, 10)
    await slow.record([ok(d, T0 + 6_000_000)])

    assert while_held == []
    assert [x.seq for x in after_expiry] == [d.seq]
    assert slow.lost_leases == 1
    assert await fresh.states([d.seq]) == {d.seq: "pending"}
    await fresh.record([ok(after_expiry[0], T0 + 6_000_000)])
    assert await fresh.states([d.seq]) == {d.seq: "succeeded"}


async def test_a_renewed_lease_is_not_taken_over(db: Database) -> None:
    """A long send keeps its claim as long as the worker renews it."""
    await seed(db, ["ord_SENCHA"], 1, ["erp"])
    holder = SqlDeliveryStore(db, owner="wrk_holder", lease_seconds=4)
    other = SqlDeliveryStore(db, owner="wrk_other", lease_seconds=4)
    (d,) = await holder.fetch_due("erp", T0, 10)

    await holder.renew([d.seq], T0 + 3_000_000)

    assert await other.fetch_due("erp", T0 + 5_000_000, 10) == []
    assert [x.seq for x in await other.fetch_due("erp", T0 + 7_100_000, 10)] == [d.seq]


async def test_the_sweeper_leaves_fresh_first_attempts_to_the_broker(db: Database) -> None:
    """In broker mode first attempts younger than the grace are not swept."""
    await seed(db, ["ord_HOJICHA"], 1, ["erp"])
    store = SqlDeliveryStore(db, owner="wrk_a")

    too_fresh = await store.fetch_due("erp", T0 + 1_000_000, 10, fresh_before_us=T0 - 1)
    old_enough = await store.fetch_due("erp", T0 + 3_000_000, 10, fresh_before_us=T0)

    assert too_fresh == []
    assert len(old_enough) == 1


async def test_one_relay_holds_the_lease_and_a_takeover_bumps_the_epoch(db: Database) -> None:
    """The relay lease: exclusive while fresh, taken over when expired, with a new epoch."""
    relays = SqlRelayStore(db)

    first = await relays.acquire("rly_a", T0, 3_000_000)
    renewed = await relays.acquire("rly_a", T0 + 1_000_000, 3_000_000)
    refused = await relays.acquire("rly_b", T0 + 2_000_000, 3_000_000)
    taken = await relays.acquire("rly_b", T0 + 5_000_000, 3_000_000)

    assert first is not None
    assert renewed == first
    assert refused is None
    assert taken == first + 1


async def test_a_relay_that_lost_its_lease_cannot_mark_events_published(db: Database) -> None:
    """Fencing for the relay: marks under an old epoch are refused."""
    await seed(db, ["ord_A", "ord_B"], 1, ["erp"])
    relays = SqlRelayStore(db)
    old = await relays.acquire("rly_a", T0, 3_000_000)
    assert old is not None
    new = await relays.acquire("rly_b", T0 + 4_000_000, 3_000_000)
    assert new is not None
    pending = await relays.unpublished(100)

    stale_mark = await relays.mark_published([m.event_seq for m in pending], "rly_a", old, T0)
    fresh_mark = await relays.mark_published([m.event_seq for m in pending], "rly_b", new, T0)

    assert stale_mark is False
    assert fresh_mark is True
    assert await relays.unpublished(100) == []


async def test_unpublished_events_come_in_commit_order_with_their_deliveries(
    db: Database,
) -> None:
    """What the relay publishes: each event once, with every destination's delivery."""
    await seed(db, ["ord_A", "ord_B"], 2, ["erp", "wms"])

    msgs = await SqlRelayStore(db).unpublished(100)

    assert [m.event_id for m in msgs] == [
        "evt_ord_A_1",
        "evt_ord_B_1",
        "evt_ord_A_2",
        "evt_ord_B_2",
    ]
    assert all([dest for _, dest in m.deliveries] == ["erp", "wms"] for m in msgs)


@pytest.fixture
async def rabbit() -> AsyncIterator[RabbitBus]:
    bus = RabbitBus(BROKER_URL, namespace=f"ostest-{uuid.uuid4().hex[:10]}", lanes=4)
    try:
        await bus.connect()
    except (OSError, aio_pika.exceptions.AMQPError) as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"RabbitMQ unreachable at {BROKER_URL}: {e} (CI=true: must run)")
        pytest.skip(f"RabbitMQ unreachable: {e}")
    yield bus
    await bus.delete_topology()
    await bus.close()


async def test_the_relay_publishes_every_event_once_in_order_per_order(
    db: Database, rabbit: RabbitBus
) -> None:
    """Relay -> RabbitMQ -> subscriber: every committed event arrives, each order in order."""
    await seed(db, [f"ord_{i}" for i in range(50)], 4, ["erp"])
    received: list[EventMessage] = []
    done = asyncio.Event()

    async def handler(m: EventMessage) -> None:
        received.append(m)
        if len(received) >= 200:
            done.set()

    await rabbit.subscribe(handler)
    relay = OutboxRelay(SqlRelayStore(db), rabbit, batch=64)
    relay.start()
    await asyncio.wait_for(done.wait(), 30)
    await relay.stop()
    await rabbit.unsubscribe()

    assert len({m.event_id for m in received}) == 200
    by_order: dict[str, list[str]] = {}
    for m in received:
        by_order.setdefault(m.order_id, []).append(m.event_id)
    assert all(ids == [f"evt_{o}_{v}" for v in range(1, 5)] for o, ids in by_order.items())
    assert await SqlRelayStore(db).unpublished(10) == []
