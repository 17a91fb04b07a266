"""Carrier rules judge a parcel by what it carries, through the booking API on each database:
a `max_total` rule sends a cheap part of an expensive order with the cheap carrier (its
line discount counted), while a parcel of the whole order, shipping and tax included, goes
with the insured one; the stored choice explains it with the parcel's value."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from ordersync.bootstrap import Hub, build_hub
from ordersync.config import CarrierRuleConfig
from ordersync.simulators.carriers import CarrierSimulator

from .conftest import OPS_KEY, ClientFactory, SettingsFactory
from .test_orders_api import create, matcha_order
from .test_shipments_api import BOOKED, CARRIER_IDS, Clock, carrier_configs

CHEAP, INSURED = CARRIER_IDS["kuaidi100"], CARRIER_IDS["kdniao"]
RULES = [
    CarrierRuleConfig(id="cheap", carrier=CHEAP, max_total=Decimal("500"), currency="EUR"),
    CarrierRuleConfig(id="insured", carrier=INSURED),
]
# A teapot at 520.00 with 40.00 off its line (480.00: under 500 only with the discount),
# two whisks at 12.00; with shipping and tax the order is worth 609.66.
TEAPOT = {"external_id": "LI-9001", "sku": "BLUE-TEAPOT", "quantity": 1}
WHISKS = {"external_id": "LI-9002", "sku": "MATCHA-WHISK", "quantity": 2}


@pytest.fixture
async def carriers() -> AsyncIterator[CarrierSimulator]:
    sim = CarrierSimulator(clock=lambda: BOOKED)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def api(
    make_settings: SettingsFactory, client_for: ClientFactory, carriers: CarrierSimulator
) -> AsyncIterator[httpx.AsyncClient]:
    """A hub with the simulated carriers and the two rules above."""
    settings = make_settings().model_copy(
        update={"carriers": carrier_configs(carriers), "carrier_rules": RULES}
    )
    hub: Hub = build_hub(settings)
    assert hub.shipments is not None
    hub.shipments.clock = Clock(BOOKED)
    await hub.start()
    try:
        yield client_for(hub, OPS_KEY)
    finally:
        await hub.stop()


async def expensive_order(api: httpx.AsyncClient, external_id: str) -> str:
    lines = [
        {"name": "Blue teapot", "unit_price": "520.00", "discount": "40.00", **TEAPOT},
        {"name": "Matcha whisk", "unit_price": "12.00", **WHISKS},
    ]
    body = matcha_order(external_id, lines=lines)
    body["totals"] = {"subtotal": "504.00", "shipping": "9.90", "tax": "95.76", "total": "609.66"}
    order_id: str = (await create(api, body))["id"]
    return order_id


async def book(api: httpx.AsyncClient, order_id: str, **body: Any) -> dict[str, Any]:
    response = await api.post(f"/v1/orders/{order_id}/shipments", json=body)
    assert response.status_code == 201, response.text
    shipment: dict[str, Any] = response.json()
    return shipment


async def stored_choices(api: httpx.AsyncClient, order_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/orders/{order_id}/shipments")
    assert response.status_code == 200, response.text
    return [s["choice"] for s in response.json()["data"]]


async def test_a_cheap_parcel_of_an_expensive_order_goes_with_the_cheap_carrier(
    api: httpx.AsyncClient,
) -> None:
    """The teapot alone (480.00 after its discount) is under 500: the cheap carrier; the
    whisks left (24.00) too. The same order in one parcel (609.66) is insured."""
    split = await expensive_order(api, "POS-SPLIT")
    whole = await expensive_order(api, "POS-WHOLE")

    teapot = await book(api, split, lines=[{"external_id": "LI-9001", "quantity": 1}])
    whisks = await book(api, split)
    everything = await book(api, whole)

    assert (teapot["carrier_id"], teapot["lines"]) == (CHEAP, [TEAPOT])
    assert (whisks["carrier_id"], whisks["lines"], whisks["completes_order"]) == (
        CHEAP,
        [WHISKS],
        True,
    )
    assert (everything["carrier_id"], everything["lines"]) == (INSURED, [])
    assert (
        await stored_choices(api, split)
        == [
            {
                "rule_id": "cheap",
                "candidates": [CHEAP],
                "overridden": False,
                "booked_with": CHEAP,
                "explanation": ["rule cheap matches (parcel value < 500 EUR)", f"try {CHEAP}"],
                "failed_attempts": [],
            },
        ]
        * 2
    )
    [insured] = await stored_choices(api, whole)
    assert (insured["rule_id"], insured["booked_with"]) == ("insured", INSURED)
    assert insured["explanation"] == [
        "rule cheap: parcel value 609.66 >= 500",
        "rule insured matches (any order)",
        f"try {INSURED}",
    ]


async def test_naming_every_unit_line_by_line_is_a_parcel_of_the_whole_order(
    api: httpx.AsyncClient,
) -> None:
    """The teapot with one whisk (492.00) is cheap, and so is the whisk left; the teapot and
    both whisks named line by line are every unit: worth the order's total, insured."""
    order_id = await expensive_order(api, "POS-NAMED")

    most = await book(
        api,
        order_id,
        lines=[{"external_id": "LI-9001", "quantity": 1}, {"sku": "MATCHA-WHISK", "quantity": 1}],
    )
    rest = await book(api, order_id)
    named_whole = await book(
        api,
        await expensive_order(api, "POS-NAMED-ALL"),
        lines=[
            {"external_id": "LI-9001", "quantity": 1},
            {"external_id": "LI-9002", "quantity": 2},
        ],
    )

    assert (most["carrier_id"], rest["carrier_id"]) == (CHEAP, CHEAP)
    assert named_whole["carrier_id"] == INSURED
    assert named_whole["choice"]["explanation"][0] == "rule cheap: parcel value 609.66 >= 500"
