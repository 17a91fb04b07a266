"""The dispatcher over the shipped FakeDeliveryStore and FakeSender, on a real event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from ordersync.domain.delivery import BreakerState, DeliveryState, RetryPolicy
from ordersync.service.delivery_ports import AttemptOutcome
from ordersync.service.dispatcher import Destination, Dispatcher
from ordersync.testing import (
    FakeDeliveryStore,
    FakeSender,
    SentRequest,
    delivered,
    failed,
    wait_until,
)

ERP = "warehouse-erp"
QUICK = RetryPolicy(schedule=(0.01, 0.01, 0.01), backoff=None)


def erp(
    policy: RetryPolicy = QUICK,
    *,
    max_in_flight: int = 8,
    breaker_threshold: int = 20,
    breaker_cooldown: float = 30.0,
) -> Destination:
    return Destination(
        id=ERP,
        url="https://erp.example.test/hooks/orders",
        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        policy=policy,
        timeout=1.0,
        max_in_flight=max_in_flight,
        breaker_threshold=breaker_threshold,
        breaker_cooldown=breaker_cooldown,
    )


@contextlib.asynccontextmanager
async def dispatching(
    destination: Destination, store: FakeDeliveryStore, sender: FakeSender
) -> AsyncIterator[Dispatcher]:
    dispatcher = Dispatcher([destination], store, sender)
    dispatcher.start()
    try:
        yield dispatcher
    finally:
        await dispatcher.stop()


async def settle(dispatcher: Dispatcher, store: FakeDeliveryStore, timeout: float = 5.0) -> None:
    """Wait until nothing is pending, waking the dispatcher as new commits would."""
    await wait_until(store.all_settled, poke=dispatcher.wake, timeout=timeout)


async def test_one_order_s_events_are_sent_in_order_even_when_the_first_fails_twice() -> None:
    """order.created fails twice; order.paid and order.shipped wait for it, then follow."""
    store = FakeDeliveryStore()
    for event in ("evt_teapot_created", "evt_teapot_paid", "evt_teapot_shipped"):
        store.add(ERP, "ord_TEAPOT", event)
    sender = FakeSender({"evt_teapot_created": [failed(503), failed(None, "timeout")]})

    async with dispatching(erp(), store, sender) as dispatcher:
        await settle(dispatcher, store)

    assert sender.sent_event_ids() == [
        "evt_teapot_created",
        "evt_teapot_created",
        "evt_teapot_created",
        "evt_teapot_paid",
        "evt_teapot_shipped",
    ]
    created = store.by_event("evt_teapot_created")
    assert (created.state, created.attempts, created.last_status) == (
        DeliveryState.SUCCEEDED,
        3,
        200,
    )
    assert [r.outcome.ok for r in store.attempts if r.delivery.seq == created.seq] == [
        False,
        False,
        True,
    ]


async def test_different_orders_are_sent_in_parallel() -> None:
    """While the teapot's event hangs at the ERP, the kettle's event still goes out."""
    store = FakeDeliveryStore()
    store.add(ERP, "ord_TEAPOT", "evt_teapot")
    store.add(ERP, "ord_KETTLE", "evt_kettle")
    kettle_sent = asyncio.Event()

    async def respond(request: SentRequest) -> AttemptOutcome:
        if request.event_id == "evt_kettle":
            kettle_sent.set()
            return delivered()
        try:
            await asyncio.wait_for(kettle_sent.wait(), 2.0)
        except TimeoutError:
            return failed(None, "the kettle never overtook the teapot")
        return delivered()

    sender = FakeSender(respond=respond)

    async with dispatching(erp(), store, sender) as dispatcher:
        await settle(dispatcher, store)

    teapot = store.by_event("evt_teapot")
    assert (teapot.state, teapot.attempts) == (DeliveryState.SUCCEEDED, 1)
    assert sender.sent_event_ids() == ["evt_teapot", "evt_kettle"]


async def test_a_delivery_whose_retries_are_exhausted_becomes_dead() -> None:
    """Three failed attempts with schedule (0.01, 0.01) and no backoff: dead-lettered."""
    store = FakeDeliveryStore()
    store.add(ERP, "ord_TEAPOT", "evt_teapot_created")
    store.add(ERP, "ord_TEAPOT", "evt_teapot_paid")
    sender = FakeSender({"evt_teapot_created": [failed(500)] * 10})
    policy = RetryPolicy(schedule=(0.01, 0.01), backoff=None)

    async with dispatching(erp(policy), store, sender) as dispatcher:
        await settle(dispatcher, store)

    dead = store.by_event("evt_teapot_created")
    assert (dead.state, dead.attempts, dead.last_status) == (DeliveryState.DEAD, 3, 500)
    assert dead.last_error == "HTTP 500"
    # The dead event no longer blocks its order's lane.
    assert store.by_event("evt_teapot_paid").state is DeliveryState.SUCCEEDED
    assert sender.sent_event_ids()[-1] == "evt_teapot_paid"


async def test_the_breaker_opens_after_consecutive_failures_and_stops_sending() -> None:
    """The ERP is down: after 3 failures nothing more is sent, and no attempt is spent."""
    store = FakeDeliveryStore()
    for n in range(6):
        store.add(ERP, f"ord_TEAPOT_{n}", f"evt_teapot_{n}")
    sender = FakeSender(default=failed(503))
    policy = RetryPolicy(schedule=(0.01,) * 10, backoff=None)
    destination = erp(policy, max_in_flight=1, breaker_threshold=3, breaker_cooldown=60.0)

    async with dispatching(destination, store, sender) as dispatcher:
        await wait_until(lambda: len(store.attempts) >= 3, poke=dispatcher.wake)
        for _ in range(20):  # give it every chance to send more
            dispatcher.wake()
            await asyncio.sleep(0.005)
        breaker = dispatcher.workers[ERP].breaker

    assert len(sender.calls) == 3
    assert breaker.state is BreakerState.OPEN
    assert all(d.state is DeliveryState.PENDING for d in store.deliveries.values())
    assert sum(d.attempts for d in store.deliveries.values()) == 3


async def test_after_the_cooldown_one_probe_goes_and_its_success_resumes_sending() -> None:
    """The ERP recovers: the half-open probe succeeds and everything pending follows."""
    store = FakeDeliveryStore()
    for n in range(5):
        store.add(ERP, f"ord_TEAPOT_{n}", f"evt_teapot_{n}")
    sender = FakeSender({"evt_teapot_0": [failed(503)], "evt_teapot_1": [failed(503)]})
    destination = erp(max_in_flight=1, breaker_threshold=2, breaker_cooldown=0.05)

    async with dispatching(destination, store, sender) as dispatcher:
        await settle(dispatcher, store)
        breaker = dispatcher.workers[ERP].breaker

    assert breaker.state is BreakerState.CLOSED
    assert all(d.state is DeliveryState.SUCCEEDED for d in store.deliveries.values())
    assert len(sender.calls) == 7


async def test_a_sender_that_raises_counts_as_a_failed_attempt_and_is_retried() -> None:
    """A bug in the sender never loses the delivery: it is recorded and tried again."""
    store = FakeDeliveryStore()
    store.add(ERP, "ord_TEAPOT", "evt_teapot")
    calls = 0

    async def respond(request: SentRequest) -> AttemptOutcome:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("malformed header")
        return delivered()

    sender = FakeSender(respond=respond)

    async with dispatching(erp(), store, sender) as dispatcher:
        await settle(dispatcher, store)

    delivery = store.by_event("evt_teapot")
    assert (delivery.state, delivery.attempts) == (DeliveryState.SUCCEEDED, 2)
    assert store.attempts[0].outcome.error == "internal error: ValueError"


async def test_an_attempt_recorded_while_a_fetch_runs_is_never_sent_twice() -> None:
    """Slow fetches racing quick sends: every event goes exactly once, in order per order."""
    store = FakeDeliveryStore(fetch_latency=0.01)
    events = {
        f"ord_TEAPOT_{o}": [f"evt_{o}_{e}" for e in ("created", "paid", "shipped")]
        for o in range(5)
    }
    for order_id, event_ids in events.items():
        for event_id in event_ids:
            store.add(ERP, order_id, event_id)

    async def respond(request: SentRequest) -> AttemptOutcome:
        await asyncio.sleep(0.003)
        return delivered()

    sender = FakeSender(respond=respond)

    async with dispatching(erp(max_in_flight=4), store, sender) as dispatcher:
        await settle(dispatcher, store)

    sent = sender.sent_event_ids()
    assert sorted(sent) == sorted(e for ids in events.values() for e in ids)
    for event_ids in events.values():
        assert [e for e in sent if e in event_ids] == event_ids


async def test_a_failed_write_of_results_keeps_the_claim_until_it_is_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database refusing the first result write neither loses nor resends the event."""
    store = FakeDeliveryStore()
    store.add(ERP, "ord_TEAPOT", "evt_teapot")
    store.fail_records = 1
    sender = FakeSender()

    with caplog.at_level(logging.CRITICAL):
        async with dispatching(erp(), store, sender) as dispatcher:
            await settle(dispatcher, store)

    assert sender.sent_event_ids() == ["evt_teapot"]
    assert store.by_event("evt_teapot").state is DeliveryState.SUCCEEDED


async def test_a_failed_fetch_during_the_half_open_probe_does_not_wedge_the_destination(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database blip just as the breaker half-opens must not stop deliveries for good."""
    store = FakeDeliveryStore()
    store.add(ERP, "ord_TEAPOT", "evt_teapot")
    outage = iter([True])

    async def respond(request: SentRequest) -> AttemptOutcome:
        if next(outage, False):
            store.fail_fetches = 1  # the next fetch, the half-open probe's, fails
            return failed(503)
        return delivered()

    sender = FakeSender(respond=respond)
    destination = erp(max_in_flight=1, breaker_threshold=1, breaker_cooldown=0.02)

    with caplog.at_level(logging.CRITICAL):
        async with dispatching(destination, store, sender) as dispatcher:
            await settle(dispatcher, store, timeout=1.5)

    assert store.by_event("evt_teapot").state is DeliveryState.SUCCEEDED
