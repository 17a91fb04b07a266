"""Tracking on a real database: carrier callbacks answered as soon as they are recorded and
applied afterwards (exactly once, also after a crash or with two processors), orders driven
by several shipments, review requests after delivery, and the alert workflow with its
metrics. The carrier simulator pushes signed callbacks over loopback HTTP; the clock is
moved by hand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from ordersync.bootstrap import Hub, build_hub
from ordersync.config import AlertsConfig, ReviewReminderConfig
from ordersync.simulators.carriers import CarrierSimulator

from .conftest import OPS_KEY, ClientFactory, Query, SettingsFactory
from .test_orders_api import problem_of
from .test_shipments_api import (
    BOOKED,
    CARRIER_IDS,
    Clock,
    World,
    assert_acked,
    book,
    carrier_configs,
    event_types,
    new_order,
    order_status,
    push,
    shipments_of,
)

H = timedelta(hours=1)
K100 = CARRIER_IDS["kuaidi100"]

Start = Callable[..., Awaitable[World]]


@pytest.fixture
async def sim() -> AsyncIterator[CarrierSimulator]:
    """The three carriers on one loopback HTTP server."""
    carriers = CarrierSimulator(clock=lambda: BOOKED)
    await carriers.start()
    yield carriers
    await carriers.stop()


@pytest.fixture
async def start(
    make_settings: SettingsFactory, client_for: ClientFactory, sim: CarrierSimulator
) -> AsyncIterator[Start]:
    """Start a hub (again, on the same database) with the carriers configured, the default
    asynchronous callbacks, and one hand-moved clock; `update` changes the settings."""
    clock = Clock(BOOKED)
    started: list[Hub] = []

    async def run(**update: Any) -> World:
        settings = make_settings().model_copy(
            update={"carriers": carrier_configs(sim), "public_url": "http://hub", **update}
        )
        hub = build_hub(settings)
        assert hub.shipments is not None
        hub.shipments.clock = clock
        await hub.start()
        started.append(hub)
        return World(hub, client_for(hub, OPS_KEY), client_for(hub), sim, clock)

    yield run
    for hub in reversed(started):
        if hub.running:
            await hub.stop()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for background work to show (no timing is asserted, only the outcome)."""
    for _ in range(400):
        if await check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never happened: {what}")


async def inbox(query: Query, hub: Hub, number: str) -> list[str]:
    rows = await query(
        hub,
        "SELECT outcome FROM carrier_inbox WHERE tracking_number = :n ORDER BY seq",
        n=number,
    )
    return [r[0] for r in rows]


def journey(w: World, number: str, upto: int = 4) -> None:
    for hours, code, wording, place in [
        (2, "103", "【上海市】圆通速递 已揽收", "上海市"),
        (9, "1002", "快件离开 上海转运中心 已发往 北京", "上海市"),
        (30, "501", "快件已由 北京朝阳区菜鸟驿站 代收", "北京市"),
        (33, "304", "已从驿站取出，签收人：菜鸟驿站", "北京市"),
    ][:upto]:
        w.sim.add_trace(number, code, wording, BOOKED + hours * H, place)


async def hold(w: World) -> None:
    """Stop this hub applying callbacks: the processor, and the sweep (with its lease)."""
    for singleton in w.hub.singletons:
        await singleton.stop()
    await svc(w).stop()


def svc(w: World) -> Any:
    assert w.hub.shipments is not None
    return w.hub.shipments


# ---- asynchronous callbacks -------------------------------------------------------------


async def test_a_callback_is_acknowledged_once_recorded_and_applied_afterwards(
    start: Start, query: Query
) -> None:
    """With the processor held, the ack comes back, the row waits `received` and nothing
    changed; processing then applies it exactly once."""
    w = await start()
    await hold(w)
    order_id = await new_order(w)
    number = (await book(w, order_id, K100))["tracking_number"]
    journey(w, number)

    assert_acked("kuaidi100", await push(w, "kuaidi100", number), w.sim)

    assert await inbox(query, w.hub, number) == ["received"]
    [shipment] = await shipments_of(w, order_id)
    assert (shipment["status"], shipment["events"]) == ("pending", [])
    assert await order_status(w, order_id) == "pending"

    assert await svc(w).process_received() == 1
    assert await svc(w).process_received() == 0

    assert await inbox(query, w.hub, number) == ["applied"]
    assert await order_status(w, order_id) == "delivered"
    types = await event_types(query, w.hub, order_id)
    assert types.count("shipment.updated") == 1
    assert types.count("order.delivered") == 1


async def test_the_running_processor_applies_a_callback_after_answering_it(
    start: Start, query: Query
) -> None:
    """The default: woken by the insert, the in-process processor applies it."""
    w = await start()
    order_id = await new_order(w)
    number = (await book(w, order_id, K100))["tracking_number"]
    journey(w, number, upto=1)

    assert_acked("kuaidi100", await push(w, "kuaidi100", number), w.sim)

    async def applied() -> bool:
        return await inbox(query, w.hub, number) == ["applied"]

    await eventually(applied, "the callback is applied")
    assert await order_status(w, order_id) == "shipped"


async def test_callbacks_recorded_before_a_crash_are_applied_once_after_the_restart(
    start: Start, query: Query
) -> None:
    """Recorded, never applied, process gone: the next hub's sweep applies each once."""
    w = await start()
    await hold(w)
    order_id = await new_order(w)
    number = (await book(w, order_id, K100))["tracking_number"]
    for hours, code in ((2, "103"), (9, "1002")):
        w.sim.add_trace(number, code, f"scan {code}", BOOKED + hours * H)
        assert_acked("kuaidi100", await push(w, "kuaidi100", number), w.sim)
    assert await inbox(query, w.hub, number) == ["received", "received"]
    await w.hub.stop()

    w = await start()  # its sweep runs at start-up

    async def applied() -> bool:
        return await inbox(query, w.hub, number) == ["applied", "applied"]

    await eventually(applied, "both callbacks are applied")
    assert await svc(w).process_received() == 0
    [shipment] = await shipments_of(w, order_id)
    assert [e["raw_code"] for e in shipment["events"]] == ["103", "1002"]
    types = await event_types(query, w.hub, order_id)
    assert types.count("shipment.updated") == 2
    assert types.count("order.shipped") == 1


async def test_two_processors_draining_the_same_inbox_apply_each_callback_once(
    start: Start, query: Query
) -> None:
    """Two hubs on one database process the same `received` rows at the same time."""
    first = await start()
    second = await start()
    for w in (first, second):
        await hold(w)
    order_id = await new_order(first)
    number = (await book(first, order_id, K100))["tracking_number"]
    for hours, code in ((2, "103"), (9, "1002"), (30, "501")):
        first.sim.add_trace(number, code, f"scan {code}", BOOKED + hours * H)
        assert_acked("kuaidi100", await push(first, "kuaidi100", number), first.sim)

    counts = await asyncio.gather(svc(first).process_received(), svc(second).process_received())

    assert sum(counts) == 3
    assert await inbox(query, first.hub, number) == ["applied"] * 3
    types = await event_types(query, first.hub, order_id)
    assert types.count("shipment.updated") == 3
    assert types.count("order.shipped") == 1


async def test_a_replayed_callback_is_acknowledged_and_has_no_second_effect(
    start: Start, query: Query
) -> None:
    """The same signed body twice: two acks, one inbox row, one effect."""
    w = await start()
    await hold(w)
    order_id = await new_order(w)
    number = (await book(w, order_id, K100))["tracking_number"]
    journey(w, number, upto=1)
    body, headers = w.sim.push_body(number)
    url = f"/v1/carriers/{K100}/callbacks"

    for _ in range(2):
        assert_acked("kuaidi100", await w.carrier.post(url, content=body, headers=headers), w.sim)
    await svc(w).process_received()
    assert_acked("kuaidi100", await w.carrier.post(url, content=body, headers=headers), w.sim)
    await svc(w).process_received()

    assert await inbox(query, w.hub, number) == ["applied"]
    assert (await event_types(query, w.hub, order_id)).count("shipment.updated") == 1


async def test_a_forged_callback_writes_nothing_in_asynchronous_mode(
    start: Start, query: Query
) -> None:
    """Refused in the carrier's format before anything is recorded."""
    w = await start()
    order_id = await new_order(w)
    number = (await book(w, order_id, K100))["tracking_number"]
    journey(w, number)
    w.sim.parcels[number].salt = "guess"

    refused = await push(w, "kuaidi100", number)
    await svc(w).process_received()

    assert refused.status_code == 401
    assert refused.json()["result"] is False
    assert await query(w.hub, "SELECT count(*) FROM carrier_inbox") == [(0,)]
    assert await order_status(w, order_id) == "pending"


# ---- several shipments drive the order ----------------------------------------------------


async def split_order(w: World) -> tuple[str, str, str]:
    """An order shipped in two parcels (Kuaidi100 and the generic carrier), both active.

    Booking a second carrier cancels the first, so the first is put back by hand: the
    split booking itself is not this test's subject."""
    order_id = await new_order(w, "POS-BERLIN-SPLIT")
    first = (await book(w, order_id, K100))["tracking_number"]
    second = (await book(w, order_id, CARRIER_IDS["generic"]))["tracking_number"]
    async with svc(w).store.transaction() as tx:
        await tx.orders.get(order_id)
        for record in await tx.shipments_of_order(order_id):
            if record.shipment.tracking_number == first:
                record.active, record.cancelled_at = True, None
                await tx.update_shipment(record, None, BOOKED)
        await tx.commit()
    return order_id, first, second


async def fulfillment(w: World, order_id: str) -> str:
    response = await w.api.get(f"/v1/orders/{order_id}/shipments")
    status: str = response.json()["fulfillment_status"]
    return status


async def test_an_order_is_partially_shipped_then_shipped_then_delivered_by_its_parcels(
    start: Start, query: Query
) -> None:
    """One of two parcels picked up: partially shipped (one event), status unchanged; both:
    shipped; both delivered: delivered, and one review request."""
    w = await start()
    svc(w).inline_callbacks = True
    order_id, k100, generic = await split_order(w)
    assert await fulfillment(w, order_id) == "unfulfilled"

    w.sim.add_trace(k100, "103", "已揽收", BOOKED + 2 * H)
    assert_acked("kuaidi100", await push(w, "kuaidi100", k100), w.sim)
    w.sim.add_trace(k100, "1002", "干线", BOOKED + 5 * H)
    assert_acked("kuaidi100", await push(w, "kuaidi100", k100), w.sim)
    partially = await event_types(query, w.hub, order_id)
    assert await fulfillment(w, order_id) == "partially_shipped"
    assert await order_status(w, order_id) == "pending"

    w.sim.add_trace(generic, "in_transit", "Sendung in Verarbeitung", BOOKED + 3 * H)
    assert_acked("generic", await push(w, "generic", generic), w.sim)
    assert await fulfillment(w, order_id) == "shipped"
    assert await order_status(w, order_id) == "shipped"

    w.sim.add_trace(k100, "304", "已签收", BOOKED + 30 * H)
    assert_acked("kuaidi100", await push(w, "kuaidi100", k100), w.sim)
    assert await order_status(w, order_id) == "shipped"
    w.sim.add_trace(generic, "delivered", "Zugestellt", BOOKED + 31 * H)
    assert_acked("generic", await push(w, "generic", generic), w.sim)

    assert partially.count("order.partially_shipped") == 1
    assert "order.shipped" not in partially
    assert await fulfillment(w, order_id) == "delivered"
    assert await order_status(w, order_id) == "delivered"
    types = await event_types(query, w.hub, order_id)
    assert types.count("order.partially_shipped") == 1
    assert types.count("order.shipped") == 1
    assert types.count("order.delivered") == 1
    assert types.count("order.review_requested") == 1
    assert types.index("order.delivered") < types.index("order.review_requested")


async def test_a_delayed_review_request_fires_once_at_its_time_even_across_a_restart(
    start: Start, query: Query
) -> None:
    """Delay 24 h after delivery: none at 23:59, one at 24:00, none more after a restart."""
    delayed = {"review_reminder": ReviewReminderConfig(delay_hours=24)}
    w = await start(**delayed)
    svc(w).inline_callbacks = True
    order_id = await new_order(w)
    number = (await book(w, order_id, K100))["tracking_number"]
    journey(w, number)  # delivered at BOOKED + 33 h, heard of an hour later
    delivered = BOOKED + 33 * H
    w.clock.now = delivered + H
    assert_acked("kuaidi100", await push(w, "kuaidi100", number), w.sim)

    w.clock.now = delivered + 24 * H - timedelta(minutes=1)
    await svc(w).sweep()
    assert "order.review_requested" not in await event_types(query, w.hub, order_id)
    w.clock.now = delivered + 24 * H
    await svc(w).sweep()
    await svc(w).sweep()
    await w.hub.stop()

    w = await start(**delayed)
    w.clock.now = delivered + 48 * H
    await svc(w).sweep()

    types = await event_types(query, w.hub, order_id)
    assert types.count("order.review_requested") == 1
    assert types.count("order.delivered") == 1


async def test_no_review_request_when_the_reminder_is_disabled(start: Start, query: Query) -> None:
    """`review_reminder.enabled: false`: delivered, and nothing asked of the customer."""
    w = await start(review_reminder=ReviewReminderConfig(enabled=False))
    svc(w).inline_callbacks = True
    order_id = await new_order(w)
    number = (await book(w, order_id, K100))["tracking_number"]
    journey(w, number)
    assert_acked("kuaidi100", await push(w, "kuaidi100", number), w.sim)
    w.clock.now = BOOKED + 100 * H
    await svc(w).sweep()

    assert await order_status(w, order_id) == "delivered"
    assert "order.review_requested" not in await event_types(query, w.hub, order_id)


# ---- anomaly rules, the alert workflow and metrics ---------------------------------------


def raised_total(w: World, rule: str) -> float:
    value = w.hub.metrics.registry.get_sample_value("ordersync_alerts_raised_total", {"rule": rule})
    return value or 0.0


def open_gauge(w: World, rule: str) -> float | None:
    return w.hub.metrics.registry.get_sample_value("ordersync_alerts_open", {"rule": rule})


async def sweep_at(w: World, hours: float) -> list[str]:
    w.clock.now = BOOKED + hours * H
    return [str(a.kind) for a in await svc(w).sweep()]


async def test_no_update_fires_once_at_its_threshold_and_not_before(
    start: Start, query: Query
) -> None:
    """Picked up at 2 h, silent since: nothing at 2 h + 10 h - 1 min, one alert at 12 h."""
    w = await start(alerts=AlertsConfig.model_validate({"no_update": {"hours": 10}}))
    svc(w).inline_callbacks = True
    order_id = await new_order(w)
    number = (await book(w, order_id, K100))["tracking_number"]
    journey(w, number, upto=1)
    assert_acked("kuaidi100", await push(w, "kuaidi100", number), w.sim)

    assert await sweep_at(w, 12 - 1 / 60) == []
    assert await sweep_at(w, 12) == ["shipment.no_update"]
    assert await sweep_at(w, 13) == []

    [alert] = (await w.api.get("/v1/alerts")).json()["data"]
    assert (alert["rule"], alert["due_at"]) == ("shipment.no_update", "2026-11-20T13:00:00Z")
    assert (await event_types(query, w.hub, order_id)).count("alert.raised") == 1
    assert raised_total(w, "shipment.no_update") == 1
    assert open_gauge(w, "shipment.no_update") == 1


async def test_delivery_overdue_against_the_default_transit_time(
    start: Start, query: Query
) -> None:
    """Promised nothing, held to 30 h after booking plus 2 h grace: due at 32 h, once."""
    alerts = AlertsConfig.model_validate(
        {"delivery_overdue": {"hours": 2, "default_transit_hours": 30}}
    )
    w = await start(alerts=alerts)
    order_id = await new_order(w)
    await book(w, order_id, K100)

    assert "shipment.delivery_overdue" not in await sweep_at(w, 32 - 1 / 60)
    assert "shipment.delivery_overdue" in await sweep_at(w, 32)
    assert "shipment.delivery_overdue" not in await sweep_at(w, 40)

    rules = [a["rule"] for a in (await w.api.get("/v1/alerts")).json()["data"]]
    assert rules.count("shipment.delivery_overdue") == 1
    assert raised_total(w, "shipment.delivery_overdue") == 1


async def test_waiting_at_a_pickup_point_fires_once_after_the_configured_wait(
    start: Start, query: Query
) -> None:
    """At a locker since 30 h, wait limit 24 h: due at 54 h, exactly once."""
    alerts = AlertsConfig.model_validate(
        {"pickup_point_wait": {"hours": 24}, "no_update": {"enabled": False, "hours": 1}}
    )
    w = await start(alerts=alerts)
    svc(w).inline_callbacks = True
    order_id = await new_order(w)
    number = (await book(w, order_id, K100))["tracking_number"]
    journey(w, number, upto=3)
    assert_acked("kuaidi100", await push(w, "kuaidi100", number), w.sim)

    assert await sweep_at(w, 54 - 1 / 60) == []
    assert await sweep_at(w, 54) == ["shipment.pickup_point_wait"]
    assert await sweep_at(w, 80) == []

    assert (await event_types(query, w.hub, order_id)).count("alert.raised") == 1


async def test_a_disabled_rule_never_fires(start: Start, query: Query) -> None:
    """`no_pickup.enabled: false`: an unpicked parcel raises nothing, however long."""
    alerts = AlertsConfig.model_validate({"no_pickup": {"enabled": False, "hours": 48}})
    w = await start(alerts=alerts)
    order_id = await new_order(w)
    await book(w, order_id, K100)

    assert await sweep_at(w, 500) == []
    assert "alert.raised" not in await event_types(query, w.hub, order_id)


async def test_a_corrected_carrier_code_raises_its_alert_when_applied_without_a_sweep(
    start: Start, query: Query
) -> None:
    """Kuaidi100 autoCheck: the carrier code is updated and the alert is raised at once."""
    w = await start()
    await hold(w)
    order_id = await new_order(w)
    number = (await book(w, order_id, K100))["tracking_number"]
    w.sim.add_trace(number, "103", "已揽收", BOOKED + 2 * H)
    body, headers = w.sim.push_body(number, correction=("yuantong", "yunda"))
    url = f"/v1/carriers/{K100}/callbacks"
    assert_acked("kuaidi100", await w.carrier.post(url, content=body, headers=headers), w.sim)

    await svc(w).process_received()

    [shipment] = await shipments_of(w, order_id)
    assert shipment["carrier_code"] == "yunda"
    alerts = (await w.api.get("/v1/alerts")).json()["data"]
    assert [a["rule"] for a in alerts] == ["shipment.tracking_corrected"]
    assert raised_total(w, "shipment.tracking_corrected") == 1
    assert open_gauge(w, "shipment.tracking_corrected") == 1
    await sweep_at(w, 3)
    assert (await event_types(query, w.hub, order_id)).count("alert.raised") == 1


async def test_an_alert_is_acknowledged_then_resolved_and_leaves_the_open_list(
    start: Start, query: Query
) -> None:
    """Acknowledge keeps it listed, resolve removes it; repeats change nothing; the open
    gauge follows; each step is an event."""
    w = await start()
    order_id = await new_order(w)
    await book(w, order_id, K100)
    await sweep_at(w, 48)
    [alert] = (await w.api.get("/v1/alerts")).json()["data"]
    assert open_gauge(w, "shipment.no_pickup") == 1

    acked = await w.api.post(f"/v1/alerts/{alert['id']}/acknowledge")
    assert acked.status_code == 200, acked.text
    assert acked.json()["state"] == "acknowledged"
    assert [a["id"] for a in (await w.api.get("/v1/alerts")).json()["data"]] == [alert["id"]]
    resolved = await w.api.post(f"/v1/alerts/{alert['id']}/resolve")
    again = await w.api.post(f"/v1/alerts/{alert['id']}/resolve")
    late_ack = await w.api.post(f"/v1/alerts/{alert['id']}/acknowledge")

    assert resolved.status_code == again.status_code == late_ack.status_code == 200
    assert resolved.json()["state"] == "resolved"
    assert resolved.json()["resolved_by"] == "ops"
    assert again.json() == resolved.json() == late_ack.json()
    assert (await w.api.get("/v1/alerts")).json()["data"] == []
    listed = (await w.api.get("/v1/alerts", params={"state": "resolved"})).json()["data"]
    assert [a["id"] for a in listed] == [alert["id"]]
    assert open_gauge(w, "shipment.no_pickup") == 0
    assert raised_total(w, "shipment.no_pickup") == 1
    types = await event_types(query, w.hub, order_id)
    assert (types.count("alert.acknowledged"), types.count("alert.resolved")) == (1, 1)
    await sweep_at(w, 100)
    assert types.count("alert.raised") == 1  # resolved is not raised again
    assert (await event_types(query, w.hub, order_id)).count("alert.raised") == 1


async def test_bad_alert_requests_get_problems_and_change_nothing(
    start: Start, query: Query
) -> None:
    """Unknown alert 404, no key 401, unknown state filter 422; the alert stays open."""
    w = await start()
    order_id = await new_order(w)
    await book(w, order_id, K100)
    await sweep_at(w, 48)
    [alert] = (await w.api.get("/v1/alerts")).json()["data"]

    unknown = await w.api.post("/v1/alerts/alr_missing/resolve")
    anonymous = await w.carrier.post(f"/v1/alerts/{alert['id']}/resolve")
    bad_state = await w.api.get("/v1/alerts", params={"state": "closed"})

    problem_of(unknown, 404, "alert_not_found")
    problem_of(anonymous, 401, "unauthorized")
    problem_of(bad_state, 422, "invalid_state")
    [still] = (await w.api.get("/v1/alerts")).json()["data"]
    assert still["state"] == "open"


async def test_delivery_overdue_counts_from_the_date_promised_at_booking(
    start: Start, query: Query
) -> None:
    """Promised for 20 h after booking: nothing at 19:59, one alert at 20:00, once."""
    w = await start()
    order_id = await new_order(w)
    booked = await w.api.post(
        f"/v1/orders/{order_id}/shipments",
        json={"carrier_id": K100, "promised_by": "2026-11-20T21:00:00+00:00"},
    )
    naive = await w.api.post(
        f"/v1/orders/{order_id}/shipments",
        json={"carrier_id": K100, "promised_by": "2026-11-20T21:00:00"},
    )

    assert booked.status_code == 201, booked.text
    assert booked.json()["promised_by"] == "2026-11-20T21:00:00Z"
    assert naive.status_code == 422
    assert "shipment.delivery_overdue" not in await sweep_at(w, 20 - 1 / 60)
    assert "shipment.delivery_overdue" in await sweep_at(w, 20)
    assert "shipment.delivery_overdue" not in await sweep_at(w, 30)
    rules = [a["rule"] for a in (await w.api.get("/v1/alerts")).json()["data"]]
    assert rules == ["shipment.delivery_overdue"]


async def execute(hub: Hub, sql: str, **params: Any) -> None:
    async with hub.db.write() as conn:
        await conn.execute(text(sql), params)


async def test_a_callback_that_outruns_its_booking_waits_for_the_shipment(
    start: Start, query: Query
) -> None:
    """Pushed before the booking is visible: kept `received` and applied once the shipment
    is there; after the grace an unknown number is recorded as such."""
    w = await start()
    await hold(w)
    order_id = await new_order(w)
    number = (await book(w, order_id, K100))["tracking_number"]
    hidden = f"{number}-not-yet"
    await execute(
        w.hub,
        "UPDATE shipments SET tracking_number = :h WHERE tracking_number = :n",
        h=hidden,
        n=number,
    )  # as if the booking had not committed yet
    journey(w, number, upto=1)
    assert_acked("kuaidi100", await push(w, "kuaidi100", number), w.sim)

    await svc(w).process_received()
    waiting = await inbox(query, w.hub, number)
    await execute(
        w.hub,
        "UPDATE shipments SET tracking_number = :n WHERE tracking_number = :h",
        h=hidden,
        n=number,
    )
    await svc(w).process_received()

    assert waiting == ["received"]
    assert await inbox(query, w.hub, number) == ["applied"]
    assert await order_status(w, order_id) == "shipped"

    await execute(
        w.hub,
        "UPDATE shipments SET tracking_number = :h WHERE tracking_number = :n",
        h=hidden,
        n=number,
    )
    w.sim.add_trace(number, "1002", "干线", BOOKED + 5 * H)
    assert_acked("kuaidi100", await push(w, "kuaidi100", number), w.sim)
    w.clock.now += timedelta(minutes=5)
    await svc(w).process_received()

    assert await inbox(query, w.hub, number) == ["applied", "unknown_tracking_number"]
