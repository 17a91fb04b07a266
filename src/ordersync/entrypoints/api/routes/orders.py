"""Native order API: create (with Idempotency-Key), read, list, history, status changes."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import Response

from ordersync.adapters.db import queries
from ordersync.adapters.db import routing as routing_store
from ordersync.clock import utcnow
from ordersync.config import Scope
from ordersync.domain.codec import order_to_dict, with_fulfilment
from ordersync.domain.commands import ChangeOrderStatus, CreateOrder
from ordersync.domain.order_status import OrderStatus
from ordersync.domain.orders import Order
from ordersync.entrypoints.api.auth import require
from ordersync.entrypoints.api.deps import decode_cursor, encode_cursor, hub, json_response
from ordersync.entrypoints.api.errors import ApiProblem
from ordersync.entrypoints.api.schemas import (
    HistoryOut,
    OrderAllocatedEvent,
    OrderIn,
    OrderOut,
    OrderPage,
    StatusChangeIn,
)

router = APIRouter(prefix="/v1/orders", tags=["orders"])
# Outbound order events, for the OpenAPI `webhooks` section (`app.webhooks.include_router`):
# documentation only, nothing is served here.
events = APIRouter(tags=["events"])

Reader = Annotated[str, Depends(require(Scope.ORDERS_READ))]
Writer = Annotated[str, Depends(require(Scope.ORDERS_WRITE))]


@router.post("", status_code=201, response_model=OrderOut, summary="Create an order")
async def create_order(
    order: OrderIn,
    request: Request,
    principal: Writer,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Stripe semantics for `Idempotency-Key`: the same key with the same body returns the
    stored response (header `Idempotent-Replayed: true`); with another body, 422."""
    body = await request.body()
    result = await hub(request).handle(
        CreateOrder(
            snapshot=order.to_snapshot(),
            received_at=utcnow(),
            principal=principal,
            idempotency_key=idempotency_key,
            fingerprint=hashlib.sha256(body).hexdigest() if idempotency_key else None,
        )
    )
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return Response(
        result.body, status_code=result.status, media_type="application/json", headers=headers
    )


@router.get("", response_model=OrderPage, summary="List orders (cursor pagination)")
async def list_orders(
    request: Request,
    _: Reader,
    channel_id: str | None = None,
    external_id: str | None = None,
    status: OrderStatus | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """With inventory configured (`locations`), each line shows its `allocations` as on
    `GET /v1/orders/{id}`, and `routing` is the decision's summary (no `explanation`)."""
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after, str):
        raise ApiProblem(400, "invalid_cursor", "the cursor is not one this API returned")
    rows = await queries.list_orders(
        hub(request).db,
        channel_id=channel_id,
        external_id=external_id,
        status=status.value if status else None,
        after_id=after,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    h = hub(request)
    if h.inventory is not None and rows:  # one query for the page's allocations and routing
        found = await routing_store.fulfilment_of_orders(h.db, [doc["id"] for doc in rows])
        rows = [with_fulfilment(doc, *found.get(doc["id"], ((), None))) for doc in rows]
    return json_response(
        {"data": rows, "next_cursor": encode_cursor(rows[-1]["id"]) if more else None}
    )


@router.get("/{order_id}", response_model=OrderOut, summary="Get one order")
async def get_order(order_id: str, request: Request, _: Reader) -> Response:
    """With inventory configured (`locations`), each line shows its `allocations`
    (location, units held or shipped from there) and `routing` is the last routing
    decision: outcome, locations, backordered units per SKU and the explanation (why these
    locations), or null when the order was never routed."""
    doc = await queries.get_order(hub(request).db, order_id)
    if doc is None:
        raise ApiProblem(404, "order_not_found", f"no order {order_id!r}")
    return await _with_fulfilment(request, doc, order_id)


@router.get("/{order_id}/history", response_model=list[HistoryOut], summary="An order's history")
async def get_history(order_id: str, request: Request, _: Reader) -> Response:
    h = hub(request)
    if await queries.get_order(h.db, order_id) is None:
        raise ApiProblem(404, "order_not_found", f"no order {order_id!r}")
    return json_response(await queries.order_history(h.db, order_id))


@router.post(
    "/{order_id}/status",
    response_model=OrderOut,
    summary="Change an order's status",
    responses={409: {"description": "The state machine does not allow this transition"}},
)
async def change_status(
    order_id: str, change: StatusChangeIn, request: Request, principal: Writer
) -> Response:
    order = await hub(request).handle(
        ChangeOrderStatus(
            order_id=order_id,
            target=change.status,
            received_at=utcnow(),
            principal=principal,
            hold_reasons=tuple(change.hold_reasons),
        )
    )
    return await _order_response(request, order)


@router.post("/{order_id}/release", response_model=OrderOut, summary="Release an order's hold")
async def release_hold(order_id: str, request: Request, principal: Writer) -> Response:
    order = await hub(request).handle(
        ChangeOrderStatus(order_id=order_id, target=None, received_at=utcnow(), principal=principal)
    )
    return await _order_response(request, order)


async def _order_response(request: Request, order: Order) -> Response:
    """The changed order as GET shows it."""
    return await _with_fulfilment(request, order_to_dict(order), order.id)


async def _with_fulfilment(request: Request, doc: dict[str, Any], order_id: str) -> Response:
    h = hub(request)
    if h.inventory is None:  # no locations: nothing is allocated or routed
        return json_response(doc)
    allocations, routing = await routing_store.fulfilment_of(h.db, order_id)
    return json_response(with_fulfilment(doc, allocations, routing))


@events.post(
    "order.allocated",
    summary="order.allocated: stock reserved, which location picks what",
    operation_id="order.allocated",
    status_code=200,
    responses={200: {"description": "Any 2xx acknowledges the event"}},
)
async def order_allocated(event: OrderAllocatedEvent) -> None:
    """Sent to destinations subscribed to `order.allocated` (or `order.*`) when routing
    reserves stock for an order, in the same transaction. Standard Webhooks: headers
    `webhook-id` (stable across retries: dedupe on it), `webhook-timestamp` and
    `webhook-signature`. Any 2xx acknowledges it; anything else is retried.

    `data` is the order as in `order.*` events plus, per line, `allocations`
    (location_id, quantity) and the `routing` summary. The units of a line across its
    allocations add up to its quantity unless part is backordered (`routing.backordered`).
    Examples in this document leave out fields whose value is null; bodies carry them.
    """
