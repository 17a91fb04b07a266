"""Logistics through the hub on a real database: book waybills with the carrier simulator
over loopback HTTP, receive signed callbacks in each carrier's format, list shipments with
raw and canonical codes, and raise stale-shipment alerts with a controllable clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from ordersync.bootstrap import Hub, build_hub
from ordersync.config import CarrierConfig
from ordersync.simulators.carriers import SAMPLE_JOURNEYS, CarrierSimulator, KdniaoAccount, SimTrace

from .conftest import OPS_KEY, ClientFactory, Query, SettingsFactory
from .test_orders_api import create, matcha_order, problem_of

BOOKED = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
H = timedelta(hours=1)
KINDS = ["kdniao", "kuaidi100", "generic"]
CARRIER_IDS = {"kdniao": "kdn-sf", "kuaidi100": "kd100-yt", "generic": "ezp-post"}
CARRIER_CODES = {"kdniao": "SF", "kuaidi100": "yuantong", "generic": "PostCH"}
JOURNEYS = SAMPLE_JOURNEYS


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def carrier_configs(sim: CarrierSimulator) -> list[CarrierConfig]:
    return [
        CarrierConfig(
            id=CARRIER_IDS["kdniao"],
            kind="kdniao",
            endpoint=sim.endpoint("kdniao"),
            credentials={
                "ebusiness_id": sim.kdniao.ebusiness_id,
                "app_key": sim.kdniao.app_key,
            },
            carrier_code=CARRIER_CODES["kdniao"],
        ),
        CarrierConfig(
            id=CARRIER_IDS["kuaidi100"],
            kind="kuaidi100",
            endpoint=sim.endpoint("kuaidi100"),
            credentials={
                "key": sim.kuaidi100.key,
                "secret": sim.kuaidi100.secret,
                "salt": "our-salt-77",
            },
            carrier_code=CARRIER_CODES["kuaidi100"],
        ),
        CarrierConfig(
            id=CARRIER_IDS["generic"],
            kind="generic",
            endpoint=sim.endpoint("generic"),
            credentials={
                "api_key": sim.generic.api_key,
                "webhook_secret": sim.generic.webhook_secret,
            },
            carrier_code=CARRIER_CODES["generic"],
        ),
    ]


@pytest.fixture
async def carriers() -> AsyncIterator[CarrierSimulator]:
    """The three carriers on one loopback HTTP server."""
    sim = CarrierSimulator(clock=lambda: BOOKED)
    await sim.start()
    yield sim
    await sim.stop()


@dataclass
class World:
    hub: Hub
    api: httpx.AsyncClient
    carrier: httpx.AsyncClient  # no API key: carriers authenticate by signature
    sim: CarrierSimulator
    clock: Clock


StartWorld = Callable[[], Awaitable[World]]


@pytest.fixture
async def start_world(
    make_settings: SettingsFactory, client_for: ClientFactory, carriers: CarrierSimulator
) -> AsyncIterator[StartWorld]:
    """Start a hub (again, on the same database) with the three carriers configured and
    one hand-moved clock shared by every hub it starts, its timer sweep included."""
    clock = Clock(BOOKED)
    settings = make_settings().model_copy(
        update={"carriers": carrier_configs(carriers), "public_url": "http://hub"}
    )
    started: list[Hub] = []

    async def start() -> World:
        hub = build_hub(settings)
        assert hub.shipments is not None
        hub.shipments.clock = clock
        # These tests read the effect right after the ack: apply callbacks before answering
        # (the asynchronous default is covered in test_tracking_async.py).
        hub.shipments.inline_callbacks = True
        await hub.start()
        started.append(hub)
        return World(hub, client_for(hub, OPS_KEY), client_for(hub), carriers, clock)

    yield start
    for hub in reversed(started):
        if hub.running:
            await hub.stop()


@pytest.fixture
async def world(start_world: StartWorld) -> World:
    return await start_world()


async def book(w: World, order_id: str, carrier_id: str | None = None) -> dict[str, Any]:
    body = {} if carrier_id is None else {"carrier_id": carrier_id}
    response = await w.api.post(f"/v1/orders/{order_id}/shipments", json=body)
    assert response.status_code == 201, response.text
    booked: dict[str, Any] = response.json()
    return booked


async def new_order(w: World, external_id: str = "POS-BERLIN-0001") -> str:
    order_id: str = (await create(w.api, matcha_order(external_id)))["id"]
    return order_id


async def push(
    w: World, kind: str, number: str, traces: list[SimTrace] | None = None
) -> httpx.Response:
    body, headers = w.sim.push_body(number, traces)
    return await w.carrier.post(
        f"/v1/carriers/{CARRIER_IDS[kind]}/callbacks", content=body, headers=headers
    )


async def shipments_of(w: World, order_id: str) -> list[dict[str, Any]]:
    response = await w.api.get(f"/v1/orders/{order_id}/shipments")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def order_status(w: World, order_id: str) -> str:
    status: str = (await w.api.get(f"/v1/orders/{order_id}")).json()["status"]
    return status


async def event_types(query: Query, hub: Hub, order_id: str) -> list[str]:
    rows = await query(hub, "SELECT type FROM events WHERE order_id = :o ORDER BY seq", o=order_id)
    return [r[0] for r in rows]


def assert_acked(kind: str, response: httpx.Response, sim: CarrierSimulator) -> None:
    assert response.status_code == 200, response.text
    if kind == "kdniao":
        assert response.json()["Success"] is True
        assert response.json()["EBusinessID"] == sim.kdniao.ebusiness_id
    elif kind == "kuaidi100":
        assert response.json() == {"result": True, "returnCode": "200", "message": "成功"}
    else:
        assert response.json() == {"received": True}


@pytest.mark.parametrize("kind", KINDS)
async def test_each_carrier_books_and_tracks_an_order_to_delivered(
    kind: str, world: World, query: Query
) -> None:
    """Booking over HTTP stores the tracking number; signed snapshots drive the order."""
    w = world
    order_id = await new_order(w)
    booked = await book(w, order_id, CARRIER_IDS[kind])
    number = booked["tracking_number"]
    assert w.sim.parcels[number].subscribed
    assert (booked["carrier_id"], booked["status"]) == (CARRIER_IDS[kind], "pending")

    for hours, code, text, place in JOURNEYS[kind]:
        w.sim.add_trace(number, code, text, BOOKED + hours * H, place)
        assert_acked(kind, await push(w, kind, number), w.sim)

    [shipment] = await shipments_of(w, order_id)
    assert (shipment["tracking_number"], shipment["status"]) == (number, "delivered")
    assert [(e["raw_code"], e["raw_text"]) for e in shipment["events"]] == [
        (code, text) for _, code, text, _ in JOURNEYS[kind]
    ]
    assert shipment["events"][-1]["status"] == "delivered"
    assert shipment["events"][0]["carrier_time"] == "2026-11-20T03:00:00Z"
    assert await order_status(w, order_id) == "delivered"
    types = await event_types(query, w.hub, order_id)
    assert types[:2] == ["order.created", "shipment.created"]
    assert types.count("shipment.updated") == len(JOURNEYS[kind])
    assert types.index("order.shipped") < types.index("order.delivered")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_forged_callback_is_refused_in_the_carrier_format_and_changes_nothing(
    kind: str, world: World, query: Query
) -> None:
    """A push signed without our secret gets a 401 in the carrier's ack format."""
    w = world
    order_id = await new_order(w)
    number = (await book(w, order_id, CARRIER_IDS[kind]))["tracking_number"]
    w.sim.add_trace(number, JOURNEYS[kind][-1][1], "forged delivery", BOOKED + 3 * H)
    if kind == "kdniao":
        w.sim.kdniao = KdniaoAccount(w.sim.kdniao.ebusiness_id, "stolen-guess")
    elif kind == "kuaidi100":
        w.sim.parcels[number].salt = "guess"
    else:
        w.sim.generic = type(w.sim.generic)(w.sim.generic.api_key, "guess")

    refused = await push(w, kind, number)

    assert refused.status_code == 401
    if kind == "kdniao":
        assert refused.json()["Success"] is False
    elif kind == "kuaidi100":
        assert refused.json()["result"] is False
    else:
        assert "error" in refused.json()
    [shipment] = await shipments_of(w, order_id)
    assert (shipment["status"], shipment["events"]) == ("pending", [])
    assert await order_status(w, order_id) == "pending"
    assert await query(w.hub, "SELECT count(*) FROM carrier_inbox") == [(0,)]


@pytest.mark.parametrize("kind", KINDS)
async def test_out_of_order_and_replayed_callbacks_converge_once(
    kind: str, world: World, query: Query
) -> None:
    """Newest first, a stale snapshot, then the same signed body twice: delivered, deduped."""
    w = world
    order_id = await new_order(w)
    number = (await book(w, order_id, CARRIER_IDS[kind]))["tracking_number"]
    traces = [w.sim.add_trace(number, c, t, BOOKED + h * H, p) for h, c, t, p in JOURNEYS[kind]]
    for trace in reversed(traces):
        assert_acked(kind, await push(w, kind, number, [trace]), w.sim)
    assert_acked(kind, await push(w, kind, number, traces[:2]), w.sim)  # a stale snapshot
    body, headers = w.sim.push_body(number)
    url = f"/v1/carriers/{CARRIER_IDS[kind]}/callbacks"
    for _ in range(2):
        assert_acked(kind, await w.carrier.post(url, content=body, headers=headers), w.sim)

    [shipment] = await shipments_of(w, order_id)
    assert shipment["status"] == "delivered"
    assert [e["raw_code"] for e in shipment["events"]] == [c for _, c, _, _ in JOURNEYS[kind]]
    assert await order_status(w, order_id) == "delivered"
    outcomes = await query(
        w.hub,
        "SELECT outcome FROM carrier_inbox WHERE tracking_number = :n ORDER BY received_us",
        n=number,
    )
    # One record per distinct callback: the replayed body was recorded (and applied) once.
    assert sorted(o for (o,) in outcomes) == ["applied"] * len(traces) + ["unchanged"] * 2
    types = await event_types(query, w.hub, order_id)
    assert types.count("order.shipped") == 1
    assert types.count("order.delivered") == 1


async def test_rebooking_with_another_carrier_cancels_the_old_shipment(
    world: World, query: Query
) -> None:
    """The first configured carrier by default; re-booking elsewhere cancels it, and the
    new shipment names the one it replaced."""
    w = world
    order_id = await new_order(w)
    first = await book(w, order_id)
    second = await book(w, order_id, CARRIER_IDS["generic"])
    again = await w.api.post(
        f"/v1/orders/{order_id}/shipments", json={"carrier_id": CARRIER_IDS["generic"]}
    )

    assert first["carrier_id"] == CARRIER_IDS["kdniao"]
    assert second["replaces"] == [
        {
            "id": first["id"],
            "carrier_id": first["carrier_id"],
            "carrier_code": first["carrier_code"],
            "tracking_number": first["tracking_number"],
        }
    ]
    problem_of(again, 409, "shipment_exists")
    shipments = await shipments_of(w, order_id)
    assert [(s["id"], s["status"], s["active"]) for s in shipments] == [
        (first["id"], "cancelled", False),
        (second["id"], "pending", True),
    ]
    types = await event_types(query, w.hub, order_id)
    assert types == ["order.created", "shipment.created", "shipment.updated", "shipment.created"]


async def test_bad_requests_get_problem_json(world: World) -> None:
    """Unknown carrier, unknown order, missing scope: RFC 9457 problems."""
    w = world
    order_id = await new_order(w)
    unknown_carrier = await w.carrier.post("/v1/carriers/nope/callbacks", content=b"x=1")
    unknown_order = await w.api.post("/v1/orders/ord_missing/shipments", json={})
    bad_carrier = await w.api.post(f"/v1/orders/{order_id}/shipments", json={"carrier_id": "nope"})
    anonymous_list = await w.carrier.get(f"/v1/orders/{order_id}/shipments")

    problem_of(unknown_carrier, 404, "carrier_not_found")
    problem_of(unknown_order, 404, "order_not_found")
    problem_of(bad_carrier, 404, "carrier_not_found")
    problem_of(anonymous_list, 401, "unauthorized")


async def test_an_unpicked_shipment_raises_exactly_one_alert_at_48_hours(
    world: World, query: Query
) -> None:
    """None at 47:59, one at 48:00, still one after later sweeps; a picked-up parcel none."""
    w = world
    assert w.hub.shipments is not None
    stale_order = await new_order(w, "POS-BERLIN-STALE")
    stale = await book(w, stale_order, CARRIER_IDS["kuaidi100"])
    moving_order = await new_order(w, "POS-BERLIN-MOVING")
    moving = (await book(w, moving_order, CARRIER_IDS["kuaidi100"]))["tracking_number"]
    w.sim.add_trace(moving, "103", "已揽收", BOOKED + 2 * H)
    assert (await push(w, "kuaidi100", moving)).status_code == 200

    w.clock.now = BOOKED + 48 * H - timedelta(minutes=1)
    await w.hub.shipments.sweep()
    assert (await w.api.get("/v1/alerts")).json()["data"] == []

    for minutes in (0, 1, 60):
        w.clock.now = BOOKED + 48 * H + timedelta(minutes=minutes)
        await w.hub.shipments.sweep()

    [alert] = (await w.api.get("/v1/alerts")).json()["data"]
    assert (alert["shipment_id"], alert["order_id"]) == (stale["id"], stale_order)
    assert (alert["rule"], alert["state"]) == ("shipment.no_pickup", "open")
    assert alert["due_at"] == "2026-11-22T01:00:00Z"
    assert (await event_types(query, w.hub, stale_order)).count("alert.raised") == 1
    assert "alert.raised" not in await event_types(query, w.hub, moving_order)


async def test_restarting_the_hub_neither_loses_nor_repeats_a_shipment_alert(
    start_world: StartWorld, query: Query
) -> None:
    """A timer that fell due while the hub was down fires after the restart, once."""
    w = await start_world()
    order_id = await new_order(w)
    await book(w, order_id)
    await w.hub.stop()

    w = await start_world()  # same database, a fresh process's worth of state
    assert w.hub.shipments is not None
    w.clock.now = BOOKED + 50 * H
    await w.hub.shipments.sweep()
    await w.hub.stop()

    w = await start_world()
    assert w.hub.shipments is not None
    w.clock.now = BOOKED + 60 * H
    await w.hub.shipments.sweep()

    alerts = (await w.api.get("/v1/alerts")).json()["data"]
    assert [a["rule"] for a in alerts] == ["shipment.no_pickup"]
    assert (await event_types(query, w.hub, order_id)).count("alert.raised") == 1


async def test_a_kuaidi100_carrier_correction_is_kept_and_raises_one_alert(
    world: World, query: Query
) -> None:
    """autoCheck comOld/comNew updates the carrier code and raises tracking_corrected once."""
    w = world
    assert w.hub.shipments is not None
    order_id = await new_order(w)
    number = (await book(w, order_id, CARRIER_IDS["kuaidi100"]))["tracking_number"]
    w.sim.add_trace(number, "103", "已揽收", BOOKED + 2 * H)
    body, headers = w.sim.push_body(number, correction=("yuantong", "yunda"))
    url = f"/v1/carriers/{CARRIER_IDS['kuaidi100']}/callbacks"
    assert_acked("kuaidi100", await w.carrier.post(url, content=body, headers=headers), w.sim)

    w.clock.now = BOOKED + 3 * H
    await w.hub.shipments.sweep()
    await w.hub.shipments.sweep()

    [shipment] = await shipments_of(w, order_id)
    assert shipment["carrier_code"] == "yunda"
    assert shipment["corrections"] == [{"field": "carrier_code", "old": "yuantong", "new": "yunda"}]
    alerts = (await w.api.get("/v1/alerts")).json()["data"]
    assert [a["rule"] for a in alerts] == ["shipment.tracking_corrected"]
    assert (await event_types(query, w.hub, order_id)).count("alert.raised") == 1
