"""The outbox relay and the bus consumer over the shipped fakes (FakeRelayStore, FakeBus,
FakeDeliveryStore, FakeSender): leases, fencing, ordering and dedupe without I/O."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from ordersync.domain.delivery import DeliveryState, RetryPolicy
from ordersync.service.bus import EventMessage, decode_batch, encode_batch, lane_of
from ordersync.service.bus_consumer import BusConsumer
from ordersync.service.dispatcher import Destination, Dispatcher
from ordersync.service.lanes import LaneAssigner
from ordersync.service.relay import OutboxRelay
from ordersync.testing import (
    FakeBus,
    FakeDeliveryStore,
    FakeLaneStore,
    FakeRelayStore,
    FakeSender,
    RecordingLaneConsumer,
    failed,
    wait_until,
)

ERP = "warehouse-erp"


def erp() -> Destination:
    return Destination(
        id=ERP,
        url="https://erp.example.test/hooks",
        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        policy=RetryPolicy(schedule=(0.01, 0.01), backoff=None),
        timeout=1.0,
        max_in_flight=16,
    )


def test_a_lane_batch_round_trips_and_an_order_always_hashes_to_the_same_lane() -> None:
    """Events of one order share a lane in every process; batches decode to what was sent."""
    msgs = [EventMessage(i, f"evt_{i}", "ord_BLUE-TEAPOT", 10 * i, ((i, ERP),)) for i in range(3)]

    assert decode_batch(encode_batch(msgs)) == msgs
    assert (
        lane_of("ord_BLUE-TEAPOT", 8)
        == lane_of("ord_BLUE-TEAPOT", 8)
        == 7 & lane_of("ord_BLUE-TEAPOT", 8)
    )
    assert {lane_of(f"ord_{i}", 8) for i in range(200)} == set(range(8))


async def test_the_relay_publishes_each_event_once_and_marks_it() -> None:
    """Everything unpublished goes out in commit order and is marked published."""
    store, bus = FakeRelayStore(), FakeBus()
    for i in range(25):
        store.add(f"ord_{i % 5}")
    relay = OutboxRelay(store, bus, batch=10, poll=0.01)

    relay.start()
    await wait_until(lambda: not any(e.published_us is None for e in store.events))
    await relay.stop()

    assert [m.event_seq for m in bus.published] == list(range(1, 26))
    assert relay.published_total == 25


async def test_a_refused_publish_marks_nothing_and_is_retried() -> None:
    """Nothing is marked unless the broker confirmed it: a refusal means a retry."""
    store, bus = FakeRelayStore(), FakeBus()
    store.add("ord_MATCHA")
    bus.fail_publishes = 2
    relay = OutboxRelay(store, bus, poll=0.01)

    relay.start()
    await wait_until(lambda: store.events[0].published_us is not None)
    await relay.stop()

    assert [m.event_id for m in bus.published] == ["evt_1"]


async def test_a_second_relay_stands_by_until_the_first_stops() -> None:
    """Only the lease holder publishes; stopping releases the lease to the stand-by."""
    store, bus = FakeRelayStore(), FakeBus()
    first = OutboxRelay(store, bus, owner="rly_first", poll=0.01, ttl=3.0)
    second = OutboxRelay(store, bus, owner="rly_second", poll=0.01, ttl=3.0)
    first.start()
    await wait_until(lambda: first.epoch is not None)
    second.start()
    store.add("ord_A")
    await wait_until(lambda: store.events[0].published_us is not None)

    await first.stop()
    store.add("ord_B")
    await wait_until(lambda: store.events[1].published_us is not None, timeout=5.0)
    await second.stop()

    assert first.published_total == 1
    assert second.published_total == 1
    assert store.owner == "rly_second"


async def test_a_relay_whose_lease_was_taken_marks_nothing() -> None:
    """Fencing: after a takeover the old holder's marks are refused."""
    store = FakeRelayStore()
    m = store.add("ord_A")
    old = await store.acquire("rly_old", 0, 1)
    new = await store.acquire("rly_new", 10, 1_000)

    assert old is not None
    assert new == old + 1
    assert await store.mark_published([m.event_seq], "rly_old", old, 20) is False
    assert store.events[0].published_us is None


def consumer_setup(
    sender: FakeSender,
) -> tuple[FakeDeliveryStore, Dispatcher, BusConsumer]:
    store = FakeDeliveryStore()
    dispatcher = Dispatcher([erp()], store, sender)
    return store, dispatcher, BusConsumer(dispatcher, store)


FRESH = 10**18  # created "now": the sweeper leaves first attempts to the consumer


def message_for(store: FakeDeliveryStore, seq: int) -> EventMessage:
    d = store.deliveries[seq]
    return EventMessage(seq, d.event_id, d.order_id, 0, ((seq, d.destination_id),))


async def test_the_consumer_sends_an_order_s_events_in_order_even_when_handled_at_once() -> None:
    """Three messages of one order handled concurrently still go out created, paid, shipped."""
    sender = FakeSender()
    store, dispatcher, consumer = consumer_setup(sender)
    for event in ("evt_created", "evt_paid", "evt_shipped"):
        store.add(ERP, "ord_TEAPOT", event).created_us = FRESH
    dispatcher.start(fresh_grace=60)

    await asyncio.gather(*(consumer.handle(message_for(store, s)) for s in (1, 2, 3)))
    await dispatcher.stop()

    assert sender.sent_event_ids() == ["evt_created", "evt_paid", "evt_shipped"]
    assert store.all_settled()


async def test_a_redelivered_message_sends_nothing_twice() -> None:
    """The deliveries row is the inbox: a message for a succeeded delivery is a no-op."""
    sender = FakeSender()
    store, dispatcher, consumer = consumer_setup(sender)
    store.add(ERP, "ord_SENCHA", "evt_created").created_us = FRESH
    dispatcher.start(fresh_grace=60)

    await consumer.handle(message_for(store, 1))
    await consumer.handle(message_for(store, 1))
    await dispatcher.stop()

    assert sender.sent_event_ids() == ["evt_created"]
    assert consumer.duplicates == 1


async def test_an_event_behind_a_retrying_one_is_left_to_the_sweeper() -> None:
    """The consumer never jumps the queue: behind a failed delivery it acks and steps back."""
    sender = FakeSender({"evt_created": [failed(503)]})
    store, dispatcher, consumer = consumer_setup(sender)
    store.add(ERP, "ord_HOJICHA", "evt_created").created_us = FRESH
    store.add(ERP, "ord_HOJICHA", "evt_paid")
    dispatcher.start(fresh_grace=60)

    await consumer.handle(message_for(store, 1))  # fails: pending with a retry time
    handled = asyncio.create_task(consumer.handle(message_for(store, 2)))
    await wait_until(store.all_settled, poke=dispatcher.wake)
    await handled
    await dispatcher.stop()

    assert sender.sent_event_ids() == ["evt_created", "evt_created", "evt_paid"]
    assert store.deliveries[2].state is DeliveryState.SUCCEEDED


async def test_a_consumer_never_takes_a_half_open_breaker_s_probe_from_the_sweeper() -> None:
    """Asking whether to hand over work must not use up the probe: the sweeper sends it."""
    sender = FakeSender({"evt_created": [failed(500)]})
    store = FakeDeliveryStore()
    dest = replace(erp(), breaker_threshold=1, breaker_cooldown=0.05)
    dispatcher = Dispatcher([dest], store, sender)
    consumer = BusConsumer(dispatcher, store)
    store.add(ERP, "ord_GENMAICHA", "evt_created").created_us = FRESH
    worker = dispatcher.workers[ERP]
    dispatcher.start(fresh_grace=60)
    await consumer.handle(message_for(store, 1))  # fails once: the breaker opens
    # The cooldown ends now, without waiting: the sweeper still sleeps until its own wake-up,
    # so the consumer asks first (a sleep made the two race for the probe).
    worker.breaker.opened_at -= worker.breaker.current_cooldown

    handed_over = worker.accepts_now()
    probe_taken = worker.breaker.probe_in_flight
    await wait_until(store.all_settled, poke=dispatcher.wake)  # the sweeper probes, succeeds
    closed_again = worker.accepts_now()
    await dispatcher.stop()

    assert (handed_over, probe_taken) == (False, False)
    assert sender.sent_event_ids() == ["evt_created", "evt_created"]
    assert closed_again


async def test_live_workers_share_the_lanes_evenly_and_take_over_a_stopped_one_s() -> None:
    """Two workers split 8 lanes 4/4 with no lane consumed twice; when one stops, the other
    consumes all 8."""
    store = FakeLaneStore(8)
    a_lanes, b_lanes = RecordingLaneConsumer(), RecordingLaneConsumer()
    a = LaneAssigner(store, a_lanes, lanes=8, owner="wrk_a", every=3600)
    b = LaneAssigner(store, b_lanes, lanes=8, owner="wrk_b", every=3600)

    await a.start()
    alone = set(a_lanes.consuming)
    await b.start()
    await a.rebalance()  # a sees two live workers and gives half away
    await b.rebalance()
    shared = (set(a_lanes.consuming), set(b_lanes.consuming))
    await a.stop()
    await b.rebalance()

    assert alone == set(range(8))
    assert len(shared[0]) == len(shared[1]) == 4
    assert not shared[0] & shared[1]
    assert b_lanes.consuming == set(range(8))
    assert set(store.owners().values()) == {"wrk_b"}
