"""Choosing the carrier through the hub: configured rules with explanations, fallbacks when
a carrier fails (nothing stored for a failed attempt), a rule switched in one call and kept
across restarts, the old waybill cancelled with its carrier on a switch, and the
`shipment.created` event a warehouse receives with the label reference."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ordersync.bootstrap import Hub, build_hub
from ordersync.config import CarrierRuleConfig
from ordersync.simulators.carriers import CarrierSimulator

from .conftest import (
    DASHBOARD_KEY,
    OPS_KEY,
    ClientFactory,
    Eventually,
    Query,
    SettingsFactory,
    Sinks,
)
from .test_orders_api import create, matcha_order, problem_of
from .test_shipments_api import BOOKED, CARRIER_IDS, Clock, carrier_configs

SF, YTO, POST = CARRIER_IDS["kdniao"], CARRIER_IDS["kuaidi100"], CARRIER_IDS["generic"]
RULES = [
    CarrierRuleConfig(id="abroad", carrier=POST, countries=["CH", "DE"]),
    CarrierRuleConfig(id="china", carrier=SF, fallback=[YTO], countries=["CN"]),
]
HANGZHOU = {
    "name": "王小明",
    "line1": "西湖区文三路 90 号",
    "city": "杭州市",
    "region": "Zhejiang",
    "country_code": "CN",
    "phone": "13800000000",
}
BERLIN = {"name": "Jürgen Müller", "line1": "Torstraße 1", "city": "Berlin", "country_code": "DE"}
BOSTON = {"name": "Ada", "line1": "1 Main St", "city": "Boston", "country_code": "US"}


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
    dashboard: httpx.AsyncClient  # read-only key
    sim: CarrierSimulator


StartWorld = Callable[[], Awaitable[World]]


@pytest.fixture
async def start_world(
    make_settings: SettingsFactory, client_for: ClientFactory, carriers: CarrierSimulator
) -> AsyncIterator[StartWorld]:
    """Hubs (again, on one database) with three carriers, the rules above, and `erp`
    subscribed to `shipment.created` as a warehouse would be."""
    settings = make_settings(events=["order.*", "shipment.created"]).model_copy(
        update={"carriers": carrier_configs(carriers), "carrier_rules": RULES}
    )
    started: list[Hub] = []

    async def start() -> World:
        hub = build_hub(settings)
        assert hub.shipments is not None
        hub.shipments.clock = Clock(BOOKED)
        await hub.start()
        started.append(hub)
        return World(hub, client_for(hub, OPS_KEY), client_for(hub, DASHBOARD_KEY), carriers)

    yield start
    for hub in reversed(started):
        if hub.running:
            await hub.stop()


@pytest.fixture
async def world(start_world: StartWorld) -> World:
    return await start_world()


async def new_order(w: World, address: dict[str, str], external_id: str = "TEA-0001") -> str:
    order_id: str = (await create(w.api, matcha_order(external_id, shipping_address=address)))["id"]
    return order_id


async def book(w: World, order_id: str, **body: Any) -> httpx.Response:
    return await w.api.post(f"/v1/orders/{order_id}/shipments", json=body)


async def shipments_of(w: World, order_id: str) -> list[dict[str, Any]]:
    response = await w.api.get(f"/v1/orders/{order_id}/shipments")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def event_types(query: Query, hub: Hub, order_id: str) -> list[str]:
    rows = await query(hub, "SELECT type FROM events WHERE order_id = :o ORDER BY seq", o=order_id)
    return [r[0] for r in rows]


def carrier_calls(w: World, carrier: str, operation: str, outcome: str) -> float | None:
    labels = {"carrier": carrier, "operation": operation, "outcome": outcome}
    return w.hub.metrics.registry.get_sample_value("ordersync_carrier_calls_total", labels)


def booked_calls(sim: CarrierSimulator) -> list[str]:
    return [kind for kind, api, _ in sim.calls if api == "book"]


async def test_booking_without_a_carrier_follows_the_rules_and_says_why(world: World) -> None:
    """A Hangzhou order goes with SF (the china rule), a Berlin order with the post."""
    w = world
    china = await book(w, await new_order(w, HANGZHOU, "TEA-HZ"))
    germany = await book(w, await new_order(w, BERLIN, "TEA-BER"))

    assert china.status_code == 201, china.text
    assert germany.status_code == 201, germany.text
    assert china.json()["carrier_id"] == SF
    choice = china.json()["choice"]
    assert (choice["rule_id"], choice["booked_with"], choice["candidates"]) == (
        "china",
        SF,
        [SF, YTO],
    )
    assert choice["explanation"][0] == "rule abroad: country CN not in ['ch', 'de']"
    assert choice["failed_attempts"] == []
    assert germany.json()["carrier_id"] == POST
    assert germany.json()["choice"]["rule_id"] == "abroad"
    assert germany.json()["label_url"].endswith(f"/labels/{germany.json()['tracking_number']}.png")


@pytest.mark.parametrize("refuse", [False, True], ids=["http-503", "refusal"])
async def test_a_failing_carrier_falls_back_to_the_next_and_nothing_is_stored_for_it(
    refuse: bool, world: World, query: Query
) -> None:
    """SF is down (or refuses): YTO books; only YTO's shipment and one event are stored."""
    w = world
    order_id = await new_order(w, HANGZHOU)
    w.sim.fail("kdniao", status=503, refuse=refuse)

    response = await book(w, order_id)

    assert response.status_code == 201, response.text
    booked = response.json()
    assert booked["carrier_id"] == YTO
    [attempt] = booked["choice"]["failed_attempts"]
    assert attempt["carrier_id"] == SF
    assert booked_calls(w.sim) == ["kuaidi100"]
    assert [s["carrier_id"] for s in await shipments_of(w, order_id)] == [YTO]
    assert carrier_calls(w, SF, "book", "error") == 1
    assert carrier_calls(w, YTO, "book", "ok") == 1
    assert await event_types(query, w.hub, order_id) == ["order.created", "shipment.created"]


async def test_when_every_carrier_fails_the_booking_is_a_502_listing_each_attempt(
    world: World, query: Query
) -> None:
    """SF and YTO both fail: 502 with both attempts, no shipment, no event."""
    w = world
    order_id = await new_order(w, HANGZHOU)
    w.sim.fail("kdniao", status=502)
    w.sim.fail("kuaidi100", status=500)

    response = await book(w, order_id)

    problem = problem_of(response, 502, "carrier_error")
    assert [a["carrier_id"] for a in problem["attempts"]] == [SF, YTO]
    assert all(a["error"] for a in problem["attempts"])
    assert problem["choice"]["rule_id"] == "china"
    assert await shipments_of(w, order_id) == []
    assert await event_types(query, w.hub, order_id) == ["order.created"]
    assert w.sim.parcels == {}


async def test_an_order_no_rule_covers_is_refused_with_the_reasons(world: World) -> None:
    """A Boston order matches neither rule: 422 with why each did not apply."""
    w = world
    order_id = await new_order(w, BOSTON)

    problem = problem_of(await book(w, order_id), 422, "no_carrier_rule_matched")

    assert problem["explanation"] == [
        "rule abroad: country US not in ['ch', 'de']",
        "rule china: country US not in ['cn']",
    ]
    assert await shipments_of(w, order_id) == []


async def test_an_order_already_booked_needs_a_named_carrier_to_switch(world: World) -> None:
    """Booking again without a carrier is a 409: switching is explicit."""
    w = world
    order_id = await new_order(w, HANGZHOU)
    assert (await book(w, order_id)).status_code == 201

    problem_of(await book(w, order_id), 409, "shipment_exists")

    assert len(await shipments_of(w, order_id)) == 1


async def test_switching_a_rule_in_one_call_changes_the_next_booking_and_survives_a_restart(
    start_world: StartWorld,
) -> None:
    """PUT the china rule to the post: the next Chinese order books there, after a restart
    too; PUT null goes back to the configured carrier."""
    w = await start_world()
    switched = await w.api.put("/v1/carrier-rules/china", json={"carrier_id": POST})
    first = await book(w, await new_order(w, HANGZHOU, "TEA-1"))
    await w.hub.stop()

    w = await start_world()
    listed = (await w.dashboard.get("/v1/carrier-rules")).json()["data"]
    second = await book(w, await new_order(w, HANGZHOU, "TEA-2"))
    reset = await w.api.put("/v1/carrier-rules/china", json={"carrier_id": None})
    third = await book(w, await new_order(w, HANGZHOU, "TEA-3"))

    assert switched.status_code == 200, switched.text
    assert switched.json()["carrier_id"] == POST
    assert switched.json()["override"]["by"] == "ops"
    assert first.json()["carrier_id"] == POST
    assert first.json()["choice"]["overridden"] is True
    assert [(r["id"], r["carrier_id"], r["configured_carrier_id"]) for r in listed] == [
        ("abroad", POST, POST),
        ("china", POST, SF),
    ]
    assert second.json()["carrier_id"] == POST
    assert (reset.json()["carrier_id"], reset.json()["override"]) == (SF, None)
    assert third.json()["carrier_id"] == SF


async def test_bad_rule_switches_are_refused_and_change_nothing(world: World) -> None:
    """Unknown rule 404, unknown carrier 422, read-only key 403, missing field 422."""
    w = world
    unknown_rule = await w.api.put("/v1/carrier-rules/nope", json={"carrier_id": POST})
    unknown_carrier = await w.api.put("/v1/carrier-rules/china", json={"carrier_id": "dhl"})
    read_only = await w.dashboard.put("/v1/carrier-rules/china", json={"carrier_id": POST})
    missing = await w.api.put("/v1/carrier-rules/china", json={})

    problem_of(unknown_rule, 404, "carrier_rule_not_found")
    problem_of(unknown_carrier, 422, "carrier_not_found")
    problem_of(read_only, 403, "forbidden")
    assert missing.status_code == 422
    rules = (await w.api.get("/v1/carrier-rules")).json()["data"]
    assert [(r["carrier_id"], r["override"]) for r in rules] == [(POST, None), (SF, None)]


@pytest.mark.parametrize("kind", ["kdniao", "kuaidi100", "generic"])
async def test_rebooking_elsewhere_cancels_the_old_waybill_with_its_carrier(
    kind: str, world: World
) -> None:
    """Each aggregator's cancel call is made for the replaced waybill, and recorded."""
    w = world
    order_id = await new_order(w, HANGZHOU)
    old = (await book(w, order_id, carrier_id=CARRIER_IDS[kind])).json()
    other = YTO if kind != "kuaidi100" else SF

    new = await book(w, order_id, carrier_id=other)

    assert new.status_code == 201, new.text
    assert w.sim.parcels[old["tracking_number"]].cancelled
    assert (kind, "cancel", old["tracking_number"]) in w.sim.calls
    assert not w.sim.parcels[new.json()["tracking_number"]].cancelled
    replaced, current = await shipments_of(w, order_id)
    assert (replaced["status"], replaced["carrier_cancel"]["state"]) == ("cancelled", "cancelled")
    assert (current["status"], current["carrier_cancel"]) == ("pending", None)


async def test_a_failed_carrier_cancel_is_recorded_and_the_switch_still_happens(
    world: World,
) -> None:
    """SF is down when the order moves to YTO: the switch stands, the failure is kept."""
    w = world
    order_id = await new_order(w, HANGZHOU)
    old = (await book(w, order_id, carrier_id=SF)).json()
    w.sim.fail("kdniao")

    new = await book(w, order_id, carrier_id=YTO)

    assert new.status_code == 201, new.text
    assert not w.sim.parcels[old["tracking_number"]].cancelled
    replaced, current = await shipments_of(w, order_id)
    assert replaced["carrier_cancel"]["state"] == "failed"
    assert carrier_calls(w, SF, "cancel", "error") == 1
    assert (replaced["active"], current["active"]) == (False, True)


async def test_a_warehouse_subscribed_to_shipment_created_gets_the_waybill_and_label(
    world: World, sinks: Sinks, eventually: Eventually
) -> None:
    """The event carries tracking number, carrier, carrier code and the label reference."""
    w = world
    order_id = await new_order(w, BERLIN)
    booked = (await book(w, order_id)).json()

    def created() -> list[dict[str, Any]]:
        return [e.data for e in sinks.erp.ledger if e.type == "shipment.created"]

    await eventually(lambda: bool(created()), "shipment.created at the warehouse")

    [data] = created()
    assert data["order_id"] == order_id
    assert data["tracking_number"] == booked["tracking_number"]
    assert (data["carrier_id"], data["carrier_code"]) == (POST, "PostCH")
    assert data["label_url"] == booked["label_url"]
    assert data["carrier_ref"].startswith("shp_")
    assert data["choice"]["rule_id"] == "abroad"
    assert data["channel_id"] == "pos-berlin"
    assert "shipment.created" not in [e.type for e in sinks.wms.ledger]
