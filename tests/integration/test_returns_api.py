"""Returns through the hub on a real database: ask for a return over the API, the carrier
simulator books the reverse pickup and pushes its signed tracking, and the goods come
back into stock (or are written off) with the refund computed exactly in Decimal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from ordersync.bootstrap import Hub, build_hub
from ordersync.config import ApiKeyConfig, LocationConfig, Scope
from ordersync.simulators.carriers import SAMPLE_JOURNEYS, CarrierSimulator

from .conftest import OPS_KEY, ClientFactory, Query, SettingsFactory
from .test_orders_api import problem_of
from .test_shipments_api import CARRIER_IDS, Clock, carrier_configs

BOOKED = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)
WAREHOUSE, STORE = "berlin-dc", "leipzig-store"


@dataclass
class World:
    hub: Hub
    api: httpx.AsyncClient
    carrier: httpx.AsyncClient  # no API key: carriers authenticate by signature
    sim: CarrierSimulator
    query: Query


@pytest.fixture
async def world(
    make_settings: SettingsFactory, client_for: ClientFactory, query: Query
) -> AsyncIterator[World]:
    """A hub with the three carriers, a warehouse and a store, and stock of both SKUs."""
    sim = CarrierSimulator(clock=lambda: BOOKED)
    await sim.start()
    settings = make_settings().model_copy(
        update={
            "carriers": carrier_configs(sim),
            "public_url": "http://hub",
            "api_keys": [ApiKeyConfig(id="ops", key=OPS_KEY, scopes=list(Scope))],
            "locations": [
                LocationConfig(id=WAREHOUSE, kind="warehouse", region="DE-BE", priority=10),
                LocationConfig(id=STORE, kind="store", region="DE-SN", priority=50),
            ],
        }
    )
    hub = build_hub(settings)
    assert hub.shipments is not None
    hub.shipments.clock = Clock(BOOKED)
    hub.shipments.inline_callbacks = True  # applied before answered: no waiting
    await hub.start()
    w = World(hub, client_for(hub, OPS_KEY), client_for(hub), sim, query)
    for sku, location, on_hand in (
        ("MATCHA-WHISK", WAREHOUSE, 10),
        ("MATCHA-WHISK", STORE, 4),
        ("BLUE-TEAPOT", WAREHOUSE, 6),
    ):
        response = await w.api.put(
            f"/v1/inventory/{sku}", json={"location_id": location, "on_hand": on_hand}
        )
        assert response.status_code == 200, response.text
    yield w
    await hub.stop()
    await sim.stop()


def tea_order(external_id: str, **changes: Any) -> dict[str, Any]:
    """Three whisks (a 2-cent discount makes 29.98) and a blue teapot, paid."""
    order: dict[str, Any] = {
        "channel_id": "pos-berlin",
        "external_id": external_id,
        "name": "Berlin till #7",
        "status": "paid",
        "payment_status": "paid",
        "currency": "EUR",
        "totals": {"subtotal": "74.98", "shipping": "4.90", "tax": "0", "total": "79.88"},
        "lines": [
            {
                "sku": "MATCHA-WHISK",
                "name": "Matcha whisk",
                "quantity": 3,
                "unit_price": "10.00",
                "discount": "0.02",
            },
            {"sku": "BLUE-TEAPOT", "name": "Blue teapot", "quantity": 1, "unit_price": "45.00"},
        ],
        "customer": {"email": "juergen.mueller@example.com", "name": "Jürgen Müller"},
        "shipping_address": {
            "name": "Jürgen Müller",
            "line1": "Kastanienallee 12",
            "city": "Berlin",
            "postal_code": "10435",
            "country_code": "DE",
        },
    }
    order.update(changes)
    return order


async def new_order(w: World, external_id: str, **changes: Any) -> str:
    response = await w.api.post("/v1/orders", json=tea_order(external_id, **changes))
    assert response.status_code == 201, response.text
    order_id: str = response.json()["id"]
    return order_id


async def ship(w: World, order_id: str) -> None:
    response = await w.api.post(f"/v1/orders/{order_id}/status", json={"status": "shipped"})
    assert response.status_code == 200, response.text


async def shipped_order(w: World, external_id: str, **changes: Any) -> str:
    order_id = await new_order(w, external_id, **changes)
    await ship(w, order_id)
    return order_id


async def ask_return(
    w: World, order_id: str, lines: list[tuple[str, int]], carrier: str = "kdniao"
) -> httpx.Response:
    return await w.api.post(
        f"/v1/orders/{order_id}/returns",
        json={
            "lines": [{"sku": s, "quantity": q} for s, q in lines],
            "reason": "changed my mind",
            "carrier_id": CARRIER_IDS[carrier],
        },
    )


async def on_hand(w: World, sku: str) -> dict[str, int]:
    response = await w.api.get(f"/v1/inventory/{sku}")
    assert response.status_code == 200, response.text
    return {lv["location_id"]: lv["on_hand"] for lv in response.json()["locations"]}


async def order_of(w: World, order_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await w.api.get(f"/v1/orders/{order_id}")).json()
    return body


async def events(w: World, order_id: str) -> list[tuple[str, dict[str, Any]]]:
    rows = await w.query(
        w.hub, "SELECT type, body FROM events WHERE order_id = :o ORDER BY seq", o=order_id
    )
    return [(t, orjson.loads(b)["data"]) for t, b in rows]


async def snapshot(w: World, order_id: str) -> tuple[Any, ...]:
    """Everything a refused request must leave alone."""
    return (
        await order_of(w, order_id),
        await w.query(w.hub, "SELECT id, doc FROM returns ORDER BY id"),
        await w.query(w.hub, "SELECT id, doc FROM shipments ORDER BY id"),
        await w.query(w.hub, "SELECT count(*) FROM events"),
        await w.query(w.hub, "SELECT count(*) FROM stock_ledger"),
        len(w.sim.parcels),
    )


@pytest.mark.parametrize("kind", ["kdniao", "kuaidi100"])
async def test_a_return_is_picked_up_tracked_and_received_back_into_stock_with_a_refund(
    kind: str, world: World
) -> None:
    """Reverse pickup booked with the carrier, signed callbacks to delivered: restocked at
    the warehouse (ledger cause return), 9.99 refunded, the order partially refunded."""
    w = world
    order_id = await shipped_order(w, f"RET-{kind}-1")
    before = await on_hand(w, "MATCHA-WHISK")

    asked = await ask_return(w, order_id, [("MATCHA-WHISK", 1)], kind)
    assert asked.status_code == 201, asked.text
    ret = asked.json()
    number = ret["tracking_number"]
    assert (ret["status"], ret["carrier_id"], ret["refund_amount"]) == (
        "pickup_booked",
        CARRIER_IDS[kind],
        None,
    )
    parcel = w.sim.parcels[number]
    assert parcel.subscribed
    shipments = (await w.api.get(f"/v1/orders/{order_id}/shipments")).json()["data"]
    [reverse] = [s for s in shipments if s["direction"] == "return"]
    assert (reverse["id"], reverse["status"]) == (ret["shipment_id"], "pending")

    url = f"/v1/carriers/{CARRIER_IDS[kind]}/callbacks"
    statuses = []
    for hours, code, text, place in SAMPLE_JOURNEYS[kind]:
        w.sim.add_trace(number, code, text, BOOKED + hours * H, place)
        body, headers = w.sim.push_body(number)
        response = await w.carrier.post(url, content=body, headers=headers)
        assert response.status_code == 200, response.text
        got = (await w.api.get(f"/v1/returns/{ret['id']}")).json()
        statuses.append(got["status"])

    assert statuses == ["in_transit", "in_transit", "in_transit", "received"]
    received = (await w.api.get(f"/v1/orders/{order_id}/returns")).json()["data"]
    assert [(r["id"], r["status"], r["received_by"]) for r in received] == [
        (ret["id"], "received", "carrier")
    ]
    assert received[0]["refund_amount"] == "9.99"
    assert received[0]["lines"] == [
        {
            "sku": "MATCHA-WHISK",
            "quantity": 1,
            "restock": True,
            "location_id": WAREHOUSE,
            "refund_amount": "9.99",
        }
    ]
    after = await on_hand(w, "MATCHA-WHISK")
    assert after == {**before, WAREHOUSE: before[WAREHOUSE] + 1}
    ledger = await w.query(
        w.hub,
        "SELECT cause, location_id, on_hand_delta, reference FROM stock_ledger"
        " WHERE sku = 'MATCHA-WHISK' ORDER BY seq DESC LIMIT 1",
    )
    assert ledger == [("return", WAREHOUSE, 1, ret["id"])]
    order = await order_of(w, order_id)
    assert (order["status"], order["payment_status"]) == ("shipped", "partially_refunded")
    types = [t for t, _ in await events(w, order_id)]
    assert types[-4:] == ["shipment.updated", "order.updated", "order.refunded", "return.received"]
    assert "return.created" in types
    assert "return.updated" in types
    assert "order.delivered" not in types  # a return's delivery is not the order's
    [refunded] = [d for t, d in await events(w, order_id) if t == "order.refunded"]
    assert refunded["payment_status"] == "partially_refunded"
    assert refunded["refund"] == {
        "return_id": ret["id"],
        "amount": "9.99",
        "currency": "EUR",
        "refunded_total": "9.99",
    }


async def test_manual_receipt_writes_off_what_is_not_restocked_and_refunds_the_rest_exactly(
    world: World,
) -> None:
    """After 1 of 3 whisks came back (9.99), the last two and the teapot arrive by hand:
    the whisks go back on the shelf, the chipped teapot is written off, and the refunds add
    up to the line totals to the cent (19.99 + 45.00): the order is refunded."""
    w = world
    order_id = await shipped_order(w, "RET-MANUAL-1")
    first = (await ask_return(w, order_id, [("MATCHA-WHISK", 1)])).json()
    assert (await w.api.post(f"/v1/returns/{first['id']}/receive", json={})).status_code == 200
    whisks, teapots = await on_hand(w, "MATCHA-WHISK"), await on_hand(w, "BLUE-TEAPOT")
    ledger_rows = await w.query(w.hub, "SELECT count(*) FROM stock_ledger")

    asked = await ask_return(w, order_id, [("MATCHA-WHISK", 2), ("BLUE-TEAPOT", 1)], "kuaidi100")
    assert asked.status_code == 201, asked.text
    second = asked.json()
    response = await w.api.post(
        f"/v1/returns/{second['id']}/receive",
        json={"lines": [{"sku": "BLUE-TEAPOT", "restock": False}]},
    )

    assert response.status_code == 200, response.text
    got = response.json()
    assert (got["status"], got["received_by"], got["refund_amount"]) == (
        "received",
        "manual",
        "64.99",
    )
    assert {line["sku"]: (line["restock"], line["location_id"]) for line in got["lines"]} == {
        "MATCHA-WHISK": (True, WAREHOUSE),
        "BLUE-TEAPOT": (False, None),
    }
    assert await on_hand(w, "BLUE-TEAPOT") == teapots
    assert await on_hand(w, "MATCHA-WHISK") == {**whisks, WAREHOUSE: whisks[WAREHOUSE] + 2}
    assert await w.query(w.hub, "SELECT count(*) FROM stock_ledger") == [(ledger_rows[0][0] + 1,)]
    order = await order_of(w, order_id)
    assert order["payment_status"] == "refunded"
    refunds = [d["refund"] for t, d in await events(w, order_id) if t == "order.refunded"]
    assert [r["amount"] for r in refunds] == ["9.99", "64.99"]
    assert sum(Decimal(r["amount"]) for r in refunds) == Decimal("74.98")
    assert refunds[-1]["refunded_total"] == "74.98"


async def test_receiving_a_return_twice_or_an_unknown_sku_is_refused_and_changes_nothing(
    world: World,
) -> None:
    """A second receipt is a 409; a SKU not in the return is a 422; an unknown return 404."""
    w = world
    order_id = await shipped_order(w, "RET-TWICE-1")
    ret = (await ask_return(w, order_id, [("BLUE-TEAPOT", 1)])).json()
    unknown_sku = await w.api.post(
        f"/v1/returns/{ret['id']}/receive",
        json={"lines": [{"sku": "MATCHA-WHISK", "restock": True}]},
    )
    problem_of(unknown_sku, 422, "sku_not_in_return")
    assert (await w.api.post(f"/v1/returns/{ret['id']}/receive", json={})).status_code == 200
    before = await snapshot(w, order_id)

    again = await w.api.post(f"/v1/returns/{ret['id']}/receive", json={})
    missing = await w.api.post("/v1/returns/ret_nope/receive", json={})

    problem_of(again, 409, "return_already_received")
    problem_of(missing, 404, "return_not_found")
    assert await snapshot(w, order_id) == before


async def pickup_of(w: World, order_id: str) -> dict[str, Any]:
    shipments = (await w.api.get(f"/v1/orders/{order_id}/shipments")).json()["data"]
    [pickup] = [s for s in shipments if s["direction"] == "return"]
    return pickup  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["kdniao", "kuaidi100", "generic"])
async def test_a_receipt_by_hand_cancels_the_pickup_waybill_with_the_carrier(
    world: World, kind: str
) -> None:
    """The goods came back over the counter: the pickup nobody will hand over is cancelled
    with its carrier (Kdniao 1147, Kuaidi100 cancel, the generic DELETE), and the outcome is
    kept with the pickup."""
    w = world
    order_id = await shipped_order(w, f"RET-COUNTER-{kind}")
    ret = (await ask_return(w, order_id, [("BLUE-TEAPOT", 1)], kind)).json()

    response = await w.api.post(f"/v1/returns/{ret['id']}/receive", json={})

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "received"
    number = ret["tracking_number"]
    assert (kind, "cancel", number) in w.sim.calls
    assert w.sim.parcels[number].cancelled
    pickup = await pickup_of(w, order_id)
    assert (pickup["active"], pickup["carrier_cancel"]["state"]) == (False, "cancelled")


async def test_a_carrier_refusing_to_cancel_the_pickup_does_not_undo_the_receipt(
    world: World,
) -> None:
    """Kdniao refuses the cancellation: the receipt still succeeds (restocked, refunded)
    and the refusal is recorded with the pickup."""
    w = world
    order_id = await shipped_order(w, "RET-COUNTER-REFUSED")
    ret = (await ask_return(w, order_id, [("BLUE-TEAPOT", 1)])).json()
    teapots = await on_hand(w, "BLUE-TEAPOT")
    w.sim.fail("kdniao", refuse=True)

    response = await w.api.post(f"/v1/returns/{ret['id']}/receive", json={})

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["refund_amount"]) == ("received", "45.00")
    assert await on_hand(w, "BLUE-TEAPOT") == {
        **teapots,
        WAREHOUSE: teapots[WAREHOUSE] + 1,
    }
    assert not w.sim.parcels[ret["tracking_number"]].cancelled
    pickup = await pickup_of(w, order_id)
    assert pickup["active"] is False
    assert pickup["carrier_cancel"]["state"] == "failed"
    types = [t for t, _ in await events(w, order_id)]
    assert (types.count("return.received"), types.count("order.refunded")) == (1, 1)


async def test_returning_more_than_was_shipped_is_refused_with_no_change(world: World) -> None:
    """Three whisks shipped, two already on their way back: asking for two more is a 422,
    nothing is booked with the carrier, stored or published."""
    w = world
    order_id = await shipped_order(w, "RET-OVER-1")
    assert (await ask_return(w, order_id, [("MATCHA-WHISK", 2)])).status_code == 201
    before = await snapshot(w, order_id)

    over = await ask_return(w, order_id, [("MATCHA-WHISK", 2)])
    foreign = await ask_return(w, order_id, [("GREEN-CUP", 1)])
    split = await ask_return(w, order_id, [("MATCHA-WHISK", 1), ("MATCHA-WHISK", 1)])

    problem = problem_of(over, 422, "return_quantity_exceeded")
    assert "1 left" in problem["detail"]
    problem_of(foreign, 422, "sku_not_in_order")
    problem_of(split, 422, "return_quantity_exceeded")
    assert await snapshot(w, order_id) == before


@pytest.mark.parametrize(
    ("setup", "code"),
    [("paid", "order_not_shipped"), ("cancelled", "order_cancelled")],
)
async def test_a_return_of_an_unshipped_or_cancelled_order_is_refused(
    setup: str, code: str, world: World
) -> None:
    """Goods that never left cannot come back: 409, and nothing changes."""
    w = world
    order_id = await new_order(w, f"RET-{setup}-1")
    if setup == "cancelled":
        response = await w.api.post(f"/v1/orders/{order_id}/status", json={"status": "cancelled"})
        assert response.status_code == 200, response.text
    before = await snapshot(w, order_id)

    refused = await ask_return(w, order_id, [("BLUE-TEAPOT", 1)])

    problem_of(refused, 409, code)
    assert await snapshot(w, order_id) == before
    listed = await w.api.get(f"/v1/orders/{order_id}/returns")
    assert listed.json() == {"data": []}


async def test_a_return_of_an_unknown_order_is_404(world: World) -> None:
    """The order must exist."""
    response = await world.api.post(
        "/v1/orders/ord_nope/returns", json={"lines": [{"sku": "BLUE-TEAPOT", "quantity": 1}]}
    )

    problem_of(response, 404, "order_not_found")


async def test_goods_go_back_to_the_location_they_were_shipped_from(world: World) -> None:
    """The warehouse (the preferred location) had no teapot, the Leipzig store shipped it:
    the returned teapot goes back on the store's shelf, not the warehouse's."""
    w = world
    for location, count in ((WAREHOUSE, 0), (STORE, 2)):
        response = await w.api.put(
            "/v1/inventory/BLUE-TEAPOT", json={"location_id": location, "on_hand": count}
        )
        assert response.status_code == 200, response.text
    order_id = await shipped_order(
        w,
        "RET-STORE-1",
        lines=[{"sku": "BLUE-TEAPOT", "name": "Blue teapot", "quantity": 1, "unit_price": "45.00"}],
        totals={"subtotal": "45.00", "shipping": "0", "tax": "0", "total": "45.00"},
    )
    assert await on_hand(w, "BLUE-TEAPOT") == {WAREHOUSE: 0, STORE: 1}
    ret = (await ask_return(w, order_id, [("BLUE-TEAPOT", 1)], "generic")).json()

    response = await w.api.post(f"/v1/returns/{ret['id']}/receive", json={})

    assert response.status_code == 200, response.text
    assert response.json()["lines"][0]["location_id"] == STORE
    assert await on_hand(w, "BLUE-TEAPOT") == {WAREHOUSE: 0, STORE: 2}
    order = await order_of(w, order_id)
    assert order["payment_status"] == "refunded"


async def test_a_repeated_idempotency_key_returns_the_same_return_without_booking_again(
    world: World,
) -> None:
    """A client retrying with its Idempotency-Key gets the stored 201; another body with the
    same key is a 422; exactly one return and one pickup exist."""
    w = world
    order_id = await shipped_order(w, "RET-IDEM-1")
    body = {"lines": [{"sku": "MATCHA-WHISK", "quantity": 1}], "reason": "too small"}
    key = {"Idempotency-Key": "return-jürgen-whisk-1".encode().hex()}

    first = await w.api.post(f"/v1/orders/{order_id}/returns", json=body, headers=key)
    parcels = len(w.sim.parcels)
    again = await w.api.post(f"/v1/orders/{order_id}/returns", json=body, headers=key)
    other = await w.api.post(
        f"/v1/orders/{order_id}/returns",
        json={**body, "lines": [{"sku": "MATCHA-WHISK", "quantity": 2}]},
        headers=key,
    )

    assert first.status_code == 201, first.text
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["Idempotent-Replayed"] == "true"
    problem_of(other, 422, "idempotency_key_reused")
    assert len(w.sim.parcels) == parcels
    listed = (await w.api.get(f"/v1/orders/{order_id}/returns")).json()["data"]
    assert [r["id"] for r in listed] == [first.json()["id"]]
