"""Stock and timers follow the parcels: an order shipped by carrier callbacks commits its
reservations in the callback's own transaction (as a status change through the API does),
and a return received by hand closes its reverse pickup so no no-pickup alert is raised for
a parcel nobody will hand over. On a real database, with the carrier simulator signing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from ordersync.simulators.carriers import SAMPLE_JOURNEYS

from . import test_returns_api
from .test_returns_api import (
    BOOKED,
    WAREHOUSE,
    World,
    ask_return,
    new_order,
    order_of,
    shipped_order,
)
from .test_shipments_api import CARRIER_IDS

world = test_returns_api.world  # the fixture: a hub with carriers, locations and stock

KDN = CARRIER_IDS["kdniao"]


async def stock(w: World, sku: str) -> tuple[int, int]:
    """(on hand, reserved) over every location."""
    response = await w.api.get(f"/v1/inventory/{sku}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body["on_hand"], body["reserved"]


async def push_step(w: World, number: str, step: int) -> httpx.Response:
    """The kdniao sample journey up to `step` (0: picked up, 3: delivered), signed."""
    hours, code, wording, place = SAMPLE_JOURNEYS["kdniao"][step]
    w.sim.add_trace(number, code, wording, BOOKED + timedelta(hours=hours), place)
    body, headers = w.sim.push_body(number)
    response = await w.carrier.post(f"/v1/carriers/{KDN}/callbacks", content=body, headers=headers)
    assert response.status_code == 200, response.text
    return response


async def test_an_order_shipped_by_carrier_callbacks_commits_its_reservations(
    world: World,
) -> None:
    """Paid, so 3 whisks and a teapot are held at the warehouse; the carrier's pickup scan
    ships the order and the units leave: on hand and reserved both go down, the ledger says
    `shipment`, and the reservations are committed. Delivery moves nothing more."""
    w = world
    order_id = await new_order(w, "SHIP-STOCK-1")
    whisks, teapots = await stock(w, "MATCHA-WHISK"), await stock(w, "BLUE-TEAPOT")
    assert (whisks[1], teapots[1]) == (3, 1)  # held for the order
    booked = await w.api.post(f"/v1/orders/{order_id}/shipments", json={"carrier_id": KDN})
    assert booked.status_code == 201, booked.text
    number = booked.json()["tracking_number"]

    await push_step(w, number, 0)  # picked up

    assert (await order_of(w, order_id))["status"] == "shipped"
    assert await stock(w, "MATCHA-WHISK") == (whisks[0] - 3, 0)
    assert await stock(w, "BLUE-TEAPOT") == (teapots[0] - 1, 0)
    ledger = await w.query(
        w.hub,
        "SELECT sku, location_id, on_hand_delta, reserved_delta FROM stock_ledger"
        " WHERE cause = 'shipment' ORDER BY sku",
    )
    assert ledger == [("BLUE-TEAPOT", WAREHOUSE, -1, -1), ("MATCHA-WHISK", WAREHOUSE, -3, -3)]
    states = await w.query(
        w.hub, "SELECT DISTINCT state FROM reservations WHERE order_id = :o", o=order_id
    )
    assert states == [("committed",)]

    await push_step(w, number, 3)  # delivered: the goods left already

    assert (await order_of(w, order_id))["status"] == "delivered"
    assert await stock(w, "MATCHA-WHISK") == (whisks[0] - 3, 0)
    assert await w.query(w.hub, "SELECT count(*) FROM stock_ledger WHERE cause = 'shipment'") == [
        (2,)
    ]


async def test_a_return_received_by_hand_closes_its_reverse_pickup_and_its_timer(
    world: World,
) -> None:
    """The goods came back over the counter before the carrier's pickup: the reverse
    shipment is deactivated in the receipt's transaction, its timer cleared, and a sweep
    long after the no-pickup threshold raises nothing for it."""
    w = world
    assert w.hub.shipments is not None
    order_id = await shipped_order(w, "RET-BY-HAND-1")
    asked = await ask_return(w, order_id, [("BLUE-TEAPOT", 1)])
    assert asked.status_code == 201, asked.text
    ret = asked.json()
    due = await w.query(w.hub, "SELECT due_us FROM shipments WHERE id = :s", s=ret["shipment_id"])
    assert due[0][0] is not None  # the no-pickup timer runs

    received = await w.api.post(f"/v1/returns/{ret['id']}/receive", json={})

    assert received.status_code == 200, received.text
    rows = await w.query(
        w.hub, "SELECT active, due_us FROM shipments WHERE id = :s", s=ret["shipment_id"]
    )
    assert [(bool(a), d) for a, d in rows] == [(False, None)]
    shipments = (await w.api.get(f"/v1/orders/{order_id}/shipments")).json()["data"]
    [reverse] = [s for s in shipments if s["id"] == ret["shipment_id"]]
    assert (reverse["active"], reverse["direction"]) == (False, "return")
    w.hub.shipments.clock = lambda: BOOKED + timedelta(days=10)
    assert await w.hub.shipments.sweep() == []
    alerts = await w.query(
        w.hub, "SELECT rule FROM alerts WHERE shipment_id = :s", s=ret["shipment_id"]
    )
    assert alerts == []


async def test_a_parcel_with_part_of_the_order_commits_nothing_until_the_order_ships(
    world: World,
) -> None:
    """The teapot leaves first in its own parcel: picked up, the order is only partially
    shipped and every unit stays reserved. The whisks' parcel picked up ships the order,
    and then all its reservations are committed, once."""
    w = world
    order_id = await new_order(w, "SHIP-STOCK-PARCELS")
    whisks, teapots = await stock(w, "MATCHA-WHISK"), await stock(w, "BLUE-TEAPOT")
    url = f"/v1/orders/{order_id}/shipments"
    first = await w.api.post(
        url, json={"carrier_id": KDN, "lines": [{"sku": "BLUE-TEAPOT", "quantity": 1}]}
    )
    assert first.status_code == 201, first.text

    await push_step(w, first.json()["tracking_number"], 0)  # the teapot picked up

    assert (await order_of(w, order_id))["status"] == "paid"
    assert await stock(w, "BLUE-TEAPOT") == teapots
    assert await stock(w, "MATCHA-WHISK") == whisks
    held = await w.query(
        w.hub, "SELECT DISTINCT state FROM reservations WHERE order_id = :o", o=order_id
    )
    assert held == [("held",)]

    rest = await w.api.post(url, json={"carrier_id": KDN})
    assert rest.status_code == 201, rest.text
    assert rest.json()["lines"] == [{"external_id": None, "sku": "MATCHA-WHISK", "quantity": 3}]
    await push_step(w, rest.json()["tracking_number"], 0)  # the whisks picked up

    assert (await order_of(w, order_id))["status"] == "shipped"
    assert await stock(w, "MATCHA-WHISK") == (whisks[0] - 3, 0)
    assert await stock(w, "BLUE-TEAPOT") == (teapots[0] - 1, 0)
    states = await w.query(
        w.hub, "SELECT DISTINCT state FROM reservations WHERE order_id = :o", o=order_id
    )
    assert states == [("committed",)]
    assert await w.query(w.hub, "SELECT count(*) FROM stock_ledger WHERE cause = 'shipment'") == [
        (2,)
    ]
