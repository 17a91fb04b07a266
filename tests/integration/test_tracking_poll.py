"""Tracking by polling for carriers without push, on a real database with the carrier
simulator: answers go through the callback path (deduped, merged by carrier time), parcels
are polled oldest-polled first in batches, queries are rate limited, and trackers retire
when final or too old. Time is a hand-moved clock; waits are recorded, not slept."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from ordersync.adapters.db.carrier_rules import SqlPollStore
from ordersync.bootstrap import Hub, build_hub
from ordersync.config import CarrierConfig, CarrierPollConfig
from ordersync.service.tracking_poll import TrackingPoller, policies_from_config
from ordersync.simulators.carriers import SAMPLE_JOURNEYS, CarrierSimulator

from .conftest import OPS_KEY, ClientFactory, Eventually, Query, SettingsFactory
from .test_orders_api import create, matcha_order
from .test_shipments_api import BOOKED, CARRIER_IDS, Clock, carrier_configs

H = timedelta(hours=1)
INTERVAL = timedelta(minutes=30)


@dataclass
class FakeTime:
    """The token buckets' monotonic clock: it moves only when they wait."""

    now: float = 1000.0
    waits: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(round(seconds, 6))
        # A real clock always moves on; a float sum may not (1000.01 + 1e-14 == 1000.01).
        self.now += max(seconds, 1e-6)


def polling(
    configs: list[CarrierConfig], sim: CarrierSimulator, **poll: Any
) -> list[CarrierConfig]:
    """The carriers without push: each gets a `poll` block (and Kuaidi100 its customer id)."""
    block = CarrierPollConfig(
        **{"interval": INTERVAL.total_seconds(), "batch": 10, "rate": 100.0, **poll}
    )
    out = []
    for c in configs:
        update: dict[str, Any] = {"poll": block}
        if c.kind == "kuaidi100":
            update["credentials"] = {**c.credentials, "customer": SecretStr(sim.kuaidi100.customer)}
        out.append(c.model_copy(update=update))
    return out


@pytest.fixture
async def carriers() -> AsyncIterator[CarrierSimulator]:
    sim = CarrierSimulator(clock=lambda: BOOKED)
    await sim.start()
    yield sim
    await sim.stop()


@dataclass
class World:
    hub: Hub
    api: httpx.AsyncClient
    sim: CarrierSimulator
    clock: Clock
    poller: TrackingPoller
    time: FakeTime
    polls: SqlPollStore


StartWorld = Callable[..., Awaitable[World]]


@pytest.fixture
async def start_world(
    make_settings: SettingsFactory, client_for: ClientFactory, carriers: CarrierSimulator
) -> AsyncIterator[StartWorld]:
    """A hub whose carriers are polled (no public URL: nothing subscribes to pushes), with a
    poller on the hand-moved clock instead of the hub's own background loop."""
    started: list[Hub] = []

    async def start(**poll: Any) -> World:
        configs = polling(carrier_configs(carriers), carriers, **poll)
        settings = make_settings().model_copy(update={"carriers": configs})
        hub = build_hub(settings)
        assert hub.shipments is not None
        assert hub.tracking_poll is not None
        hub.tracking_poll = None  # driven by hand below
        clock = Clock(BOOKED)
        hub.shipments.clock = clock
        hub.shipments.inline_callbacks = True
        await hub.start()
        started.append(hub)
        fake = FakeTime()
        polls = SqlPollStore(hub.db)
        poller = TrackingPoller(
            hub.shipments,
            polls,
            policies_from_config(configs),
            clock=clock,
            monotonic=fake,
            sleep=fake.sleep,
        )
        return World(hub, client_for(hub, OPS_KEY), carriers, clock, poller, fake, polls)

    yield start
    for hub in reversed(started):
        if hub.running:
            await hub.stop()


async def booked(w: World, kind: str, external_id: str) -> dict[str, Any]:
    order_id = (await create(w.api, matcha_order(external_id)))["id"]
    response = await w.api.post(
        f"/v1/orders/{order_id}/shipments", json={"carrier_id": CARRIER_IDS[kind]}
    )
    assert response.status_code == 201, response.text
    shipment: dict[str, Any] = response.json()
    return shipment


async def shipment_of(w: World, order_id: str) -> dict[str, Any]:
    shipments: list[dict[str, Any]] = (await w.api.get(f"/v1/orders/{order_id}/shipments")).json()[
        "data"
    ]
    [shipment] = shipments
    return shipment


def queried(sim: CarrierSimulator, kind: str) -> list[str]:
    return [number for k, api, number in sim.calls if (k, api) == (kind, "query")]


async def event_types(query: Query, hub: Hub, order_id: str) -> list[str]:
    rows = await query(hub, "SELECT type FROM events WHERE order_id = :o ORDER BY seq", o=order_id)
    return [r[0] for r in rows]


def test_carriers_with_a_poll_block_get_a_poller(make_settings: SettingsFactory) -> None:
    """Bootstrap wires a poller for exactly the carriers that have `poll`."""
    sim = CarrierSimulator()
    sim.base_url = "http://127.0.0.1:9"
    configs = carrier_configs(sim)
    configs[1] = polling([configs[1]], sim, batch=7)[0]
    hub = build_hub(make_settings().model_copy(update={"carriers": configs}))

    assert hub.tracking_poll is not None
    assert list(hub.tracking_poll.policies) == [CARRIER_IDS["kuaidi100"]]
    assert hub.tracking_poll.policies[CARRIER_IDS["kuaidi100"]].batch == 7


@pytest.mark.parametrize("kind", ["kdniao", "kuaidi100", "generic"])
async def test_polling_tracks_a_parcel_to_delivered_and_then_stops(
    kind: str, start_world: StartWorld, query: Query
) -> None:
    """Two polls bring the journey; a repeated answer changes nothing; final retires it."""
    w = await start_world()
    shipment = await booked(w, kind, "POLL-1")
    number, order_id = shipment["tracking_number"], shipment["order_id"]
    journey = SAMPLE_JOURNEYS[kind]
    for hours, code, text, place in journey[:2]:
        w.sim.add_trace(number, code, text, BOOKED + hours * H, place)

    w.clock.now = BOOKED + 10 * H
    first = await w.poller.poll_carrier(CARRIER_IDS[kind])
    w.clock.now += INTERVAL
    again = await w.poller.poll_carrier(CARRIER_IDS[kind])
    in_transit = await shipment_of(w, order_id)
    for hours, code, text, place in journey[2:]:
        w.sim.add_trace(number, code, text, BOOKED + hours * H, place)
    w.clock.now += INTERVAL
    last = await w.poller.poll_carrier(CARRIER_IDS[kind])
    w.clock.now += 10 * INTERVAL
    after = await w.poller.poll_carrier(CARRIER_IDS[kind])

    assert (first.applied, again.unchanged, last.applied, last.final) == (1, 1, 1, 1)
    assert after.queried == 0
    assert len(queried(w.sim, kind)) == 3
    assert [e["raw_code"] for e in in_transit["events"]] == [c for _, c, _, _ in journey[:2]]
    delivered = await shipment_of(w, order_id)
    assert delivered["status"] == "delivered"
    assert [e["raw_code"] for e in delivered["events"]] == [c for _, c, _, _ in journey]
    types = await event_types(query, w.hub, order_id)
    assert types.count("shipment.updated") == 2  # the unchanged answer emitted nothing
    assert types.count("order.delivered") == 1
    inbox = await query(
        w.hub, "SELECT outcome FROM carrier_inbox WHERE tracking_number = :n", n=number
    )
    assert sorted(o for (o,) in inbox) == ["applied", "applied"]  # the repeat was deduped
    assert (await w.polls.poll_state(shipment["id"]))[0] == "final"


async def test_parcels_are_polled_oldest_polled_first_in_batches(start_world: StartWorld) -> None:
    """Batch 2 of 3 parcels: A and B, then C, then A and B again once due."""
    w = await start_world(batch=2)
    numbers = []
    for name in ("A", "B", "C"):
        numbers.append((await booked(w, "kuaidi100", f"POLL-{name}"))["tracking_number"])
        w.sim.add_trace(numbers[-1], "103", "已揽收", BOOKED + H)
        w.clock.now += timedelta(minutes=1)
    a, b, c = numbers

    start = w.clock.now
    await w.poller.poll_once()
    round_1 = queried(w.sim, "kuaidi100")
    w.clock.now = start + timedelta(minutes=1)
    await w.poller.poll_once()
    round_2 = queried(w.sim, "kuaidi100")[len(round_1) :]
    w.clock.now = start + INTERVAL
    await w.poller.poll_once()
    round_3 = queried(w.sim, "kuaidi100")[len(round_1) + len(round_2) :]

    assert (round_1, round_2, round_3) == ([a, b], [c], [a, b])


async def test_queries_are_rate_limited_per_carrier(start_world: StartWorld) -> None:
    """0.5 queries a second, bursts of one: three one-parcel queries wait 2 s twice."""
    w = await start_world(rate=0.5, burst=1)
    for name in ("A", "B", "C"):
        number = (await booked(w, "kdniao", f"POLL-{name}"))["tracking_number"]
        w.sim.add_trace(number, "1", "已收取快件", BOOKED + H)

    [report] = [r for r in await w.poller.poll_once() if r.carrier_id == CARRIER_IDS["kdniao"]]

    assert (report.queries, report.applied) == (3, 3)
    assert w.time.waits == [2.0, 2.0]


async def test_the_generic_carrier_is_asked_about_many_parcels_in_one_query(
    start_world: StartWorld,
) -> None:
    """Three parcels, one tracker list request."""
    w = await start_world()
    numbers = [(await booked(w, "generic", f"POLL-{n}"))["tracking_number"] for n in "ABC"]
    for number in numbers:
        w.sim.add_trace(number, "in_transit", "Sendung unterwegs", BOOKED + H, "Bern")

    reports = {r.carrier_id: r for r in await w.poller.poll_once()}

    assert queried(w.sim, "generic") == [",".join(numbers)]
    assert (reports[CARRIER_IDS["generic"]].queries, reports[CARRIER_IDS["generic"]].applied) == (
        1,
        3,
    )


async def test_a_parcel_older_than_max_age_expires_without_a_query(
    start_world: StartWorld,
) -> None:
    """Booked 3 days ago with a 2-day max age: retired as expired, never asked about."""
    w = await start_world(max_age=2 * 86400)
    shipment = await booked(w, "kuaidi100", "POLL-OLD")

    w.clock.now = BOOKED + 72 * H
    reports = {r.carrier_id: r for r in await w.poller.poll_once()}
    w.clock.now += 2 * INTERVAL
    await w.poller.poll_once()

    assert reports[CARRIER_IDS["kuaidi100"]].expired == 1
    assert queried(w.sim, "kuaidi100") == []
    state, polled_at = await w.polls.poll_state(shipment["id"])
    assert (state, polled_at) == ("expired", BOOKED + 72 * H)


async def test_an_expired_parcel_is_told_once_by_an_event_and_an_alert(
    start_world: StartWorld, query: Query
) -> None:
    """Retired at max age: one `shipment.tracking_expired` event and one alert of that
    kind (counted in the metrics); a round that finds it again (a crash before it was
    retired) retires it without telling twice."""
    w = await start_world(max_age=2 * 86400)
    shipment = await booked(w, "kuaidi100", "POLL-LOST")
    order_id = shipment["order_id"]
    w.clock.now = BOOKED + 72 * H

    await w.poller.poll_once()
    await execute(w.hub, "UPDATE shipments SET poll_state = NULL, polled_us = NULL")
    w.clock.now += 2 * INTERVAL
    reports = {r.carrier_id: r for r in await w.poller.poll_once()}

    types = await event_types(query, w.hub, order_id)
    assert types.count("shipment.tracking_expired") == 1
    # Only this rule's alert counts: the shipments sweep may also raise `no_pickup` for a
    # parcel 72 h past booking, depending on whether it ran during the test.
    raised = [
        orjson.loads(b)["data"]["rule"]
        for (b,) in await query(
            w.hub,
            "SELECT body FROM events WHERE order_id = :o AND type = 'alert.raised'",
            o=order_id,
        )
    ]
    assert raised.count("shipment.tracking_expired") == 1
    [(body,)] = await query(
        w.hub,
        "SELECT body FROM events WHERE order_id = :o AND type = 'shipment.tracking_expired'",
        o=order_id,
    )
    data = orjson.loads(body)["data"]
    assert (data["id"], data["status"], data["max_age_seconds"]) == (
        shipment["id"],
        "pending",
        2 * 86400,
    )
    alerts = (await w.api.get("/v1/alerts")).json()["data"]
    [alert] = [a for a in alerts if a["rule"] == "shipment.tracking_expired"]
    assert alert["shipment_id"] == shipment["id"]
    metric = w.hub.metrics.registry.get_sample_value(
        "ordersync_alerts_raised_total", {"rule": "shipment.tracking_expired"}
    )
    assert metric == 1
    assert reports[CARRIER_IDS["kuaidi100"]].expired == 1
    assert (await w.polls.poll_state(shipment["id"]))[0] == "expired"


async def execute(hub: Hub, sql: str, **params: Any) -> None:
    async with hub.db.write() as conn:
        await conn.execute(sa.text(sql), params)


async def test_a_carrier_that_is_down_is_asked_again_after_the_interval(
    start_world: StartWorld,
) -> None:
    """Failed queries change nothing but count as polled: the next try waits its turn."""
    w = await start_world()
    shipment = await booked(w, "kuaidi100", "POLL-DOWN")
    w.sim.add_trace(shipment["tracking_number"], "103", "已揽收", BOOKED + H)
    w.sim.fail("kuaidi100")

    failed = {r.carrier_id: r for r in await w.poller.poll_once()}[CARRIER_IDS["kuaidi100"]]
    w.sim.heal("kuaidi100")
    w.clock.now += timedelta(minutes=5)
    early = {r.carrier_id: r for r in await w.poller.poll_once()}[CARRIER_IDS["kuaidi100"]]
    w.clock.now += INTERVAL
    later = {r.carrier_id: r for r in await w.poller.poll_once()}[CARRIER_IDS["kuaidi100"]]

    assert (failed.failed, early.queried, later.applied) == (1, 0, 1)
    assert (await shipment_of(w, shipment["order_id"]))["status"] == "picked_up"


async def test_the_hub_runs_its_poller_in_the_background(
    make_settings: SettingsFactory,
    client_for: ClientFactory,
    carriers: CarrierSimulator,
    eventually: Eventually,
) -> None:
    """Started with the hub (under the "tracking-poll" lease on PostgreSQL): a pickup
    reported only to a query reaches the shipment without anyone pushing it."""
    configs = polling(carrier_configs(carriers), carriers, interval=0.01)
    hub = build_hub(make_settings().model_copy(update={"carriers": configs}))
    assert hub.tracking_poll is not None
    hub.tracking_poll.tick = 0.01
    await hub.start()
    try:
        w = World(
            hub,
            client_for(hub, OPS_KEY),
            carriers,
            Clock(BOOKED),
            hub.tracking_poll,
            FakeTime(),
            SqlPollStore(hub.db),
        )
        shipment = await booked(w, "kuaidi100", "POLL-BG")
        carriers.add_trace(shipment["tracking_number"], "103", "已揽收", BOOKED + H)
        asked = len(queried(carriers, "kuaidi100"))
        # The query after the next one starts only once the next one's answer is applied.
        await eventually(lambda: len(queried(carriers, "kuaidi100")) >= asked + 2, "two polls")
        polled = await shipment_of(w, shipment["order_id"])
    finally:
        await hub.stop()

    assert polled["status"] == "picked_up"
