"""Deliveries: what was sent where, every attempt, dead letters and replay."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from ordersync.adapters.db.deliveries import parse_public_id
from ordersync.clock import to_us, utcnow
from ordersync.config import Scope
from ordersync.domain.delivery import DeliveryState
from ordersync.entrypoints.api.auth import require
from ordersync.entrypoints.api.deps import decode_cursor, encode_cursor, hub, json_response
from ordersync.entrypoints.api.errors import ApiProblem
from ordersync.entrypoints.api.schemas import DeliveryPage

router = APIRouter(prefix="/v1/deliveries", tags=["deliveries"])

Reader = Annotated[str, Depends(require(Scope.DELIVERIES_READ))]
Writer = Annotated[str, Depends(require(Scope.DELIVERIES_WRITE))]


@router.get("", response_model=DeliveryPage, summary="List deliveries")
async def list_deliveries(
    request: Request,
    _: Reader,
    order_id: str | None = None,
    destination_id: str | None = None,
    state: DeliveryState | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after, int):
        raise ApiProblem(400, "invalid_cursor", "the cursor is not one this API returned")
    rows = await hub(request).deliveries.find(
        order_id=order_id,
        destination_id=destination_id,
        state=state.value if state else None,
        after=after,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["cursor"]) if more else None
    for r in rows:
        del r["cursor"]
    return json_response({"data": rows, "next_cursor": next_cursor})


@router.get("/summary", summary="Delivery counts by destination and state")
async def summary(request: Request, _: Reader) -> Response:
    return json_response(await hub(request).deliveries.summary())


@router.get("/{delivery_id}", summary="One delivery with its attempts")
async def get_delivery(delivery_id: str, request: Request, _: Reader) -> Response:
    seq = parse_public_id(delivery_id)
    store = hub(request).deliveries
    rows = await store.find(after=seq - 1, limit=1)
    if not rows or rows[0]["id"] != delivery_id:
        raise ApiProblem(404, "delivery_not_found", f"no delivery {delivery_id!r}")
    row = rows[0]
    del row["cursor"]
    row["attempt_log"] = await store.attempts(seq)
    return json_response(row)


@router.post("/{delivery_id}/replay", status_code=202, summary="Send a delivery again")
async def replay(delivery_id: str, request: Request, _: Writer) -> Response:
    """Queues the delivery again with the same `webhook-id`, so a receiver that already
    applied it can recognise the repeat. Dead-lettered and succeeded deliveries qualify."""
    h = hub(request)
    destination = await h.deliveries.replay(parse_public_id(delivery_id), to_us(utcnow()))
    h.dispatcher.wake({destination})
    return json_response({"id": delivery_id, "state": "pending"}, status=202)
