"""What a WMS reads to know what to pick where: the `order.allocated` body (built from a
real routing decision and the reservations it made) and its OpenAPI documentation."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
from fastapi import FastAPI

from ordersync.domain.codec import (
    allocated_event,
    event_data,
    fmt_time,
    order_to_dict,
    routing_doc,
    routing_summary,
)
from ordersync.domain.events import EventType, OrderEvent
from ordersync.domain.inventory import Inventory, Location, LocationKind, RoutingRecord
from ordersync.domain.orders import Order
from ordersync.domain.routing import (
    Destination,
    RoutingLine,
    RoutingPolicy,
    RoutingRequest,
    RoutingSetup,
)
from ordersync.entrypoints.api.routes import orders as order_routes
from ordersync.entrypoints.api.schemas import OrderAllocatedEvent
from ordersync.testing.factories import PLACED_AT, make_line, make_order

AT = PLACED_AT + timedelta(minutes=3)
LOCATIONS = {
    "amsterdam-dc": Location("amsterdam-dc", LocationKind.WAREHOUSE, "NL", priority=1),
    "lyon-store": Location("lyon-store", LocationKind.STORE, "FR", priority=2),
}

TEAPOT = make_line()  # two blue teapots
CUPS = make_line(
    sku="MATCHA-CUP",
    name="Matcha cup",
    quantity=4,
    unit_price=Decimal("7.00"),
    total=Decimal("28.00"),
    external_id="866550311766439021",
)
GIFT_CARD = make_line(sku=None, name="Gift card", quantity=1, external_id="866550311766439022")


def routed(
    order: Order, stock: Mapping[tuple[str, str], int], policy: RoutingPolicy | None = None
) -> tuple[list[tuple[str, str, int]], RoutingRecord]:
    """Route `order` over `stock` and reserve what the decision allocated, as the order
    hook does: the (sku, location, units) held, and the record stored with the order."""
    inv = Inventory(LOCATIONS)
    for (sku, loc), n in stock.items():
        inv.set_on_hand(sku, loc, n, at=PLACED_AT)
    wanted: dict[str, int] = {}
    for line in order.lines:
        if line.sku:
            wanted[line.sku] = wanted.get(line.sku, 0) + line.quantity
    request = RoutingRequest(
        order.id,
        order.channel_id,
        tuple(RoutingLine(sku, q) for sku, q in wanted.items()),
        Destination(),
    )
    decision, record = RoutingSetup(policy or RoutingPolicy()).decide(
        request, LOCATIONS, dict(stock), None, AT
    )
    inv.reserve_allocations(
        order.id,
        [(ln.sku, a.location_id, a.quantity) for ln in decision.lines for a in ln.allocations],
        at=AT,
        expires_at=None,
        new_id=iter(f"res_{i}" for i in range(100)).__next__,
    )
    return [(r.sku, r.location_id, r.quantity) for r in inv.held_for(order.id)], record


def body_of(order: Order, event: OrderEvent) -> dict[str, Any]:
    """The Standard Webhooks body as the outbox builds it, through JSON and back."""
    body = {
        "type": event.type.value,
        "timestamp": fmt_time(event.occurred_at),
        "data": event_data(order_to_dict(order), event),
    }
    loaded: dict[str, Any] = orjson.loads(orjson.dumps(body))
    return loaded


def picks(data: Mapping[str, Any]) -> list[list[tuple[str, int]]]:
    return [[(a["location_id"], a["quantity"]) for a in ln["allocations"]] for ln in data["lines"]]


def test_a_split_order_tells_each_line_which_location_picks_it() -> None:
    """Teapots only in Amsterdam, cups only in Lyon: each line names its one location."""
    order = make_order(lines=(TEAPOT, CUPS))
    held, record = routed(
        order, {("BLUE-TEAPOT", "amsterdam-dc"): 5, ("MATCHA-CUP", "lyon-store"): 9}
    )

    body = body_of(order, allocated_event(order, held, record, AT))

    assert body["type"] == "order.allocated"
    assert body["timestamp"] == "2024-11-22T09:33:00Z"
    assert picks(body["data"]) == [[("amsterdam-dc", 2)], [("lyon-store", 4)]]
    assert body["data"]["routing"] == {
        "outcome": "routed",
        "locations": list(record.locations),
        "backordered": {},
        "decided_at": "2024-11-22T09:33:00Z",
    }
    assert sorted(body["data"]["routing"]["locations"]) == ["amsterdam-dc", "lyon-store"]


def test_a_line_served_from_two_locations_lists_both_and_adds_up_to_its_quantity() -> None:
    """Four cups, three in Amsterdam and two in Lyon: one line, two allocations."""
    order = make_order(lines=(CUPS,))
    held, record = routed(
        order, {("MATCHA-CUP", "amsterdam-dc"): 3, ("MATCHA-CUP", "lyon-store"): 2}
    )

    data = body_of(order, allocated_event(order, held, record, AT))["data"]

    (line,) = data["lines"]
    assert sorted((a["location_id"], a["quantity"]) for a in line["allocations"]) in (
        [("amsterdam-dc", 3), ("lyon-store", 1)],
        [("amsterdam-dc", 2), ("lyon-store", 2)],
    )
    assert sum(a["quantity"] for a in line["allocations"]) == 4


def test_a_backordered_line_shows_what_is_held_and_the_routing_says_what_waits() -> None:
    """Five teapots wanted, three on the shelf: three allocated, two backordered."""
    order = make_order(lines=(make_line(quantity=5, total=Decimal("172.50")),))
    held, record = routed(
        order, {("BLUE-TEAPOT", "amsterdam-dc"): 3}, RoutingPolicy(backorder_allowed=True)
    )

    data = body_of(order, allocated_event(order, held, record, AT))["data"]

    assert picks(data) == [[("amsterdam-dc", 3)]]
    assert data["routing"]["outcome"] == "backordered"
    assert data["routing"]["backordered"] == {"BLUE-TEAPOT": 2}


def test_a_line_without_a_sku_has_no_allocations_but_keeps_its_place() -> None:
    """A gift card is not stock: its line is in the body, allocated nothing."""
    order = make_order(lines=(GIFT_CARD, TEAPOT))
    held, record = routed(order, {("BLUE-TEAPOT", "lyon-store"): 2})

    data = body_of(order, allocated_event(order, held, record, AT))["data"]

    assert [ln["name"] for ln in data["lines"]] == ["Gift card", "Blue teapot, 1.2 l"]
    assert picks(data) == [[], [("lyon-store", 2)]]


def test_the_allocated_body_is_the_order_json_with_fields_added_never_renamed() -> None:
    """Every key and value of the order JSON is there as before; only additions."""
    order = make_order(lines=(TEAPOT, CUPS))
    held, record = routed(
        order, {("BLUE-TEAPOT", "amsterdam-dc"): 2, ("MATCHA-CUP", "amsterdam-dc"): 4}
    )
    doc = orjson.loads(orjson.dumps(order_to_dict(order)))

    data = body_of(order, allocated_event(order, held, record, AT))["data"]

    assert set(data) == set(doc) | {"routing"}
    assert {k: v for k, v in data.items() if k not in ("lines", "routing")} == {
        k: v for k, v in doc.items() if k != "lines"
    }
    assert [{k: v for k, v in ln.items() if k != "allocations"} for ln in data["lines"]] == doc[
        "lines"
    ]
    assert data["totals"]["total"] == "73.90"  # money stays a decimal string


def test_the_event_describes_the_order_at_its_version() -> None:
    """Ordered per order like every order event: same order id, same version."""
    order = make_order(lines=(TEAPOT,))
    held, record = routed(order, {("BLUE-TEAPOT", "amsterdam-dc"): 2})

    event = allocated_event(order, held, record, AT)

    assert (event.type, event.order_id, event.version) == (
        EventType.ORDER_ALLOCATED,
        order.id,
        order.version,
    )
    assert event.occurred_at == AT


def test_other_order_events_keep_their_body_exactly() -> None:
    """An event without added fields carries the order JSON as it is (no routing key)."""
    order = make_order()
    doc = order_to_dict(order)

    data = event_data(doc, OrderEvent(EventType.ORDER_PAID, order.id, order.version, AT))

    assert data == doc
    assert "routing" not in data


def test_lists_and_events_carry_the_routing_summary_without_the_explanation() -> None:
    order = make_order(lines=(TEAPOT,))
    _, record = routed(order, {("BLUE-TEAPOT", "amsterdam-dc"): 2})
    full = routing_doc(record)

    summary = routing_summary(full)

    assert full["explanation"]  # there was one to leave out
    assert summary == {k: v for k, v in full.items() if k != "explanation"}
    assert routing_summary(None) is None


def test_a_real_body_validates_against_the_documented_event_schema() -> None:
    """The OpenAPI model is the payload the builder makes, not a separate wish."""
    order = make_order(lines=(GIFT_CARD, TEAPOT, CUPS))
    held, record = routed(
        order, {("BLUE-TEAPOT", "amsterdam-dc"): 2, ("MATCHA-CUP", "lyon-store"): 4}
    )
    body = body_of(order, allocated_event(order, held, record, AT))

    event = OrderAllocatedEvent.model_validate(body)

    assert [[(a.location_id, a.quantity) for a in ln.allocations] for ln in event.data.lines] == [
        [],
        [("amsterdam-dc", 2)],
        [("lyon-store", 4)],
    ]
    assert event.data.routing is not None
    assert event.data.routing.outcome == "routed"


def documented_example() -> Any:
    # The model's own example: the OpenAPI output drops every null value (FastAPI writes
    # the document with exclude_none), so that copy lacks keys the schema requires.
    return OrderAllocatedEvent.model_config["json_schema_extra"]["examples"][0]  # type: ignore[index]


def test_the_openapi_document_lists_order_allocated_with_a_valid_example() -> None:
    """Under `webhooks`, with allocations described, and an example that validates."""
    app = FastAPI()
    app.webhooks.include_router(order_routes.events)
    app.include_router(order_routes.router)
    spec = app.openapi()
    schemas = spec["components"]["schemas"]

    body = spec["webhooks"]["order.allocated"]["post"]["requestBody"]["content"]
    allocation = schemas["AllocationOut"]
    (example,) = schemas["OrderAllocatedEvent"]["examples"]
    page_item = schemas["OrderPage"]["properties"]["data"]["items"]["$ref"]

    assert body["application/json"]["schema"]["$ref"] == "#/components/schemas/OrderAllocatedEvent"
    assert set(allocation["required"]) == {"location_id", "quantity"}
    assert allocation["properties"]["location_id"]["description"]
    assert allocation["properties"]["quantity"]["examples"] == [2]
    assert schemas["LineOut"]["properties"]["allocations"]["description"]
    assert example["data"]["lines"][1]["allocations"] == [
        {"location_id": "paris-store", "quantity": 4}
    ]
    assert OrderAllocatedEvent.model_validate(documented_example()).data.routing is not None
    assert page_item == "#/components/schemas/OrderListItemOut"
    assert "explanation" not in schemas["RoutingSummaryOut"]["properties"]
    assert "explanation" in schemas["RoutingOut"]["properties"]
