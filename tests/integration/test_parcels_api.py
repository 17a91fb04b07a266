"""Several parcels per order, through the booking API on a real database: a booking names
its lines (or takes every unit not yet in a parcel), parcels never hold more than the order,
re-booking one parcel replaces only that one, and the order is partially shipped until
every unit is in a parcel the carrier has picked up. The carrier simulator books, cancels
and signs the callbacks over loopback HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from . import test_shipments_api
from .conftest import Query
from .test_orders_api import create, matcha_order, problem_of
from .test_shipments_api import (
    BOOKED,
    CARRIER_IDS,
    H,
    World,
    assert_acked,
    event_types,
    order_status,
    push,
    shipments_of,
)

KDN, K100, GENERIC = CARRIER_IDS["kdniao"], CARRIER_IDS["kuaidi100"], CARRIER_IDS["generic"]
TEAPOT = {"external_id": "LI-7001", "sku": "BLUE-TEAPOT", "quantity": 1}
WHISKS = {"external_id": "LI-7002", "sku": "MATCHA-WHISK", "quantity": 2}

# The fixtures: the three carriers on loopback, and a hub with callbacks applied inline.
carriers, start_world, world = (
    test_shipments_api.carriers,
    test_shipments_api.start_world,
    test_shipments_api.world,
)


async def tea_order(w: World, external_id: str = "POS-BERLIN-PARCELS") -> str:
    """A blue teapot and two matcha whisks, each line with its id on the platform."""
    lines = [
        {"name": "Blue teapot", "unit_price": "45.00", **TEAPOT},
        {"name": "Matcha whisk", "unit_price": "12.00", **WHISKS},
    ]
    body = matcha_order(external_id, lines=lines)
    body["totals"] = {"subtotal": "69.00", "total": "69.00"}
    order_id: str = (await create(w.api, body))["id"]
    return order_id


async def post_booking(w: World, order_id: str, **body: Any) -> httpx.Response:
    return await w.api.post(f"/v1/orders/{order_id}/shipments", json=body)


async def booked(w: World, order_id: str, **body: Any) -> dict[str, Any]:
    response = await post_booking(w, order_id, **body)
    assert response.status_code == 201, response.text
    shipment: dict[str, Any] = response.json()
    return shipment


async def created_events(query: Query, w: World, order_id: str) -> list[dict[str, Any]]:
    rows = await query(
        w.hub,
        "SELECT body FROM events WHERE order_id = :o AND type = 'shipment.created' ORDER BY seq",
        o=order_id,
    )
    return [orjson.loads(bytes(r[0]) if not isinstance(r[0], str) else r[0])["data"] for r in rows]


def bookings_made(w: World) -> int:
    return sum(1 for _, api, _ in w.sim.calls if api == "book")


async def fulfillment(w: World, order_id: str) -> str:
    response = await w.api.get(f"/v1/orders/{order_id}/shipments")
    assert response.status_code == 200, response.text
    status: str = response.json()["fulfillment_status"]
    return status


async def test_an_order_ships_in_two_parcels_each_carrying_its_lines(
    world: World, query: Query
) -> None:
    """The teapot by SKU first (part of the order), then a booking without lines takes the
    two whisks that are left and completes the order; both parcels stay active."""
    w = world
    order_id = await tea_order(w)

    first = await booked(w, order_id, carrier_id=KDN, lines=[{"sku": "BLUE-TEAPOT", "quantity": 1}])
    second = await booked(w, order_id, carrier_id=K100)

    assert (first["lines"], first["completes_order"], first["replaces"]) == ([TEAPOT], False, [])
    assert (second["lines"], second["completes_order"], second["replaces"]) == ([WHISKS], True, [])
    shipments = await shipments_of(w, order_id)
    assert [(s["id"], s["active"]) for s in shipments] == [
        (first["id"], True),
        (second["id"], True),
    ]
    events = await created_events(query, w, order_id)
    assert [(e["tracking_number"], e["lines"], e["completes_order"]) for e in events] == [
        (first["tracking_number"], [TEAPOT], False),
        (second["tracking_number"], [WHISKS], True),
    ]


async def test_a_parcel_of_the_whole_order_lists_no_lines(world: World, query: Query) -> None:
    """One booking, every unit: not a partial parcel, so the event names no lines."""
    w = world
    order_id = await tea_order(w)

    shipment = await booked(w, order_id, carrier_id=KDN)

    assert (shipment["lines"], shipment["completes_order"]) == ([], True)
    [event] = await created_events(query, w, order_id)
    assert (event["lines"], event["completes_order"], event["replaces"]) == ([], True, [])


async def test_a_parcel_the_order_cannot_hold_is_refused_before_any_carrier_is_asked(
    world: World, query: Query
) -> None:
    """Beyond the units left, an unknown line or SKU, a line naming neither, a zero
    quantity: problem+json, no waybill booked, nothing stored, no event."""
    w = world
    order_id = await tea_order(w)
    await booked(w, order_id, carrier_id=KDN, lines=[{"external_id": "LI-7001", "quantity": 1}])
    calls, types = bookings_made(w), await event_types(query, w.hub, order_id)

    again = await post_booking(w, order_id, lines=[{"sku": "BLUE-TEAPOT", "quantity": 1}])
    too_many = await post_booking(w, order_id, lines=[{"external_id": "LI-7002", "quantity": 3}])
    unknown = await post_booking(w, order_id, lines=[{"sku": "GREEN-KETTLE", "quantity": 1}])
    mismatch = await post_booking(
        w, order_id, lines=[{"external_id": "LI-7002", "sku": "BLUE-TEAPOT", "quantity": 1}]
    )
    unnamed = await post_booking(w, order_id, lines=[{"quantity": 1}])
    zero = await post_booking(w, order_id, lines=[{"sku": "MATCHA-WHISK", "quantity": 0}])

    assert "only 0 of its units" in problem_of(again, 409, "parcel_exceeds_order")["detail"]
    assert "only 2 of its units" in problem_of(too_many, 409, "parcel_exceeds_order")["detail"]
    problem_of(unknown, 422, "line_not_in_order")
    problem_of(mismatch, 422, "line_mismatch")
    problem_of(unnamed, 422, "validation_error")
    problem_of(zero, 422, "validation_error")
    assert bookings_made(w) == calls
    assert len(await shipments_of(w, order_id)) == 1
    assert await event_types(query, w.hub, order_id) == types


async def test_once_every_unit_is_in_a_parcel_a_booking_must_say_which_it_replaces(
    world: World,
) -> None:
    """Two parcels hold the order: a booking without lines is refused, with or without a
    carrier (which of the two would it re-book?), and no carrier is asked."""
    w = world
    order_id = await tea_order(w)
    await booked(w, order_id, carrier_id=KDN, lines=[TEAPOT])
    await booked(w, order_id, carrier_id=KDN, lines=[WHISKS])
    calls = bookings_made(w)

    plain = await post_booking(w, order_id)
    elsewhere = await post_booking(w, order_id, carrier_id=GENERIC)

    assert (
        "name the one to re-book in `replaces`"
        in problem_of(plain, 409, "shipment_exists")["detail"]
    )
    problem_of(elsewhere, 409, "shipment_exists")
    assert bookings_made(w) == calls


async def test_re_booking_one_parcel_replaces_only_that_parcel(world: World, query: Query) -> None:
    """The whisks' parcel re-booked with another carrier: it is cancelled (here and with its
    carrier), the new one carries its lines and names it in `replaces`; the teapot's
    parcel is untouched."""
    w = world
    order_id = await tea_order(w)
    teapot = await booked(w, order_id, carrier_id=KDN, lines=[TEAPOT])
    whisks = await booked(w, order_id, carrier_id=KDN, lines=[WHISKS])

    again = await booked(w, order_id, carrier_id=GENERIC, replaces=whisks["id"])

    replaced = {
        "id": whisks["id"],
        "carrier_id": KDN,
        "carrier_code": whisks["carrier_code"],
        "tracking_number": whisks["tracking_number"],
    }
    assert (again["lines"], again["completes_order"], again["replaces"]) == (
        [WHISKS],
        True,
        [replaced],
    )
    shipments = {s["id"]: s for s in await shipments_of(w, order_id)}
    assert (shipments[teapot["id"]]["status"], shipments[teapot["id"]]["active"]) == (
        "pending",
        True,
    )
    assert (shipments[whisks["id"]]["status"], shipments[whisks["id"]]["active"]) == (
        "cancelled",
        False,
    )
    assert shipments[whisks["id"]]["carrier_cancel"]["state"] == "cancelled"
    cancelled = [n for kind, api, n in w.sim.calls if api == "cancel"]
    assert cancelled == [whisks["tracking_number"]]
    events = await created_events(query, w, order_id)
    assert events[-1]["replaces"] == [replaced]
    assert events[-1]["tracking_number"] == again["tracking_number"]
    replay = await post_booking(w, order_id, carrier_id=GENERIC, replaces=whisks["id"])
    problem_of(replay, 409, "shipment_not_active")
    problem_of(await post_booking(w, order_id, replaces="shp_nope"), 404, "shipment_not_found")


async def test_switching_the_carrier_of_a_whole_order_names_the_shipment_it_replaced(
    world: World, query: Query
) -> None:
    """One parcel of the whole order, re-booked by naming another carrier: the new
    shipment's `replaces` (and its `shipment.created`) names the old one."""
    w = world
    order_id = await tea_order(w)
    first = await booked(w, order_id, carrier_id=KDN)

    second = await booked(w, order_id, carrier_id=GENERIC)

    replaced = {
        "id": first["id"],
        "carrier_id": KDN,
        "carrier_code": first["carrier_code"],
        "tracking_number": first["tracking_number"],
    }
    assert (second["replaces"], second["lines"], second["completes_order"]) == (
        [replaced],
        [],
        True,
    )
    events = await created_events(query, w, order_id)
    assert [e["replaces"] for e in events] == [[], [replaced]]


async def test_two_bookings_racing_for_the_same_units_store_one_parcel(
    world: World, query: Query
) -> None:
    """Both asked the carrier before either committed: one parcel is stored, the other
    booking is refused and its unused waybill cancelled with the carrier."""
    w = world
    order_id = await tea_order(w)

    answers = await asyncio.gather(
        post_booking(w, order_id, carrier_id=KDN, lines=[WHISKS]),
        post_booking(w, order_id, carrier_id=KDN, lines=[WHISKS]),
    )

    [won] = [a.json() for a in answers if a.status_code == 201]
    [lost] = [a for a in answers if a.status_code != 201]
    [stored] = await shipments_of(w, order_id)
    assert lost.status_code == 409
    assert lost.json()["type"].rsplit("/", 1)[1] in ("parcels_changed", "parcel_exceeds_order")
    assert (stored["id"], stored["lines"], stored["active"]) == (won["id"], [WHISKS], True)
    # A waybill booked for the refused one (if it got that far) is cancelled, ours is not.
    cancelled = [n for _, api, n in w.sim.calls if api == "cancel"]
    assert stored["tracking_number"] not in cancelled
    assert bookings_made(w) - len(cancelled) == 1
    assert (await event_types(query, w.hub, order_id)).count("shipment.created") == 1


async def test_an_order_is_partially_shipped_until_every_unit_is_in_a_picked_up_parcel(
    world: World, query: Query
) -> None:
    """The teapot's parcel picked up while the whisks are in no parcel: partially shipped
    (one event), the order not shipped. The whisks' parcel booked and picked up: shipped.
    Both delivered: delivered."""
    w = world
    order_id = await tea_order(w)
    teapot = (await booked(w, order_id, carrier_id=K100, lines=[TEAPOT]))["tracking_number"]

    w.sim.add_trace(teapot, "103", "已揽收", BOOKED + 2 * H)
    assert_acked("kuaidi100", await push(w, "kuaidi100", teapot), w.sim)
    assert await fulfillment(w, order_id) == "partially_shipped"
    assert await order_status(w, order_id) == "pending"
    w.sim.add_trace(teapot, "304", "已签收", BOOKED + 20 * H)
    assert_acked("kuaidi100", await push(w, "kuaidi100", teapot), w.sim)
    assert await fulfillment(w, order_id) == "partially_shipped"  # a delivered part only
    assert await order_status(w, order_id) == "pending"

    whisks = (await booked(w, order_id, carrier_id=GENERIC))["tracking_number"]
    w.sim.add_trace(whisks, "in_transit", "Sendung in Verarbeitung", BOOKED + 21 * H)
    assert_acked("generic", await push(w, "generic", whisks), w.sim)
    assert await fulfillment(w, order_id) == "shipped"
    assert await order_status(w, order_id) == "shipped"
    w.sim.add_trace(whisks, "delivered", "Zugestellt", BOOKED + 30 * H)
    assert_acked("generic", await push(w, "generic", whisks), w.sim)

    assert await fulfillment(w, order_id) == "delivered"
    assert await order_status(w, order_id) == "delivered"
    types = await event_types(query, w.hub, order_id)
    assert types.count("order.partially_shipped") == 1
    assert types.count("order.shipped") == 1
    assert types.count("order.delivered") == 1
    assert types.index("order.partially_shipped") < types.index("order.shipped")
