"""Shipment groups API (issue 5): merge orders into one shipment, split one, undo either."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.responses import Response

from ordersync.config import Scope
from ordersync.domain.codec import fmt_time
from ordersync.entrypoints.api.auth import require
from ordersync.entrypoints.api.deps import hub, json_response
from ordersync.entrypoints.api.errors import ApiProblem
from ordersync.service.grouping import (
    GroupingProblem,
    GroupingService,
    IdempotencyKey,
    SplitBy,
)
from ordersync.service.unit_of_work import StoredResponse

router = APIRouter(tags=["shipment groups"])

Reader = Annotated[str, Depends(require(Scope.ORDERS_READ))]
Writer = Annotated[str, Depends(require(Scope.ORDERS_WRITE))]

OrderId = Annotated[str, Field(min_length=1, max_length=128)]
IdemHeader = Annotated[str | None, Header(max_length=255)]


class MergeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_ids: list[OrderId] = Field(min_length=2, max_length=50)


class SplitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: SplitBy


def _service(request: Request) -> GroupingService:
    service = hub(request).grouping
    if service is None:  # pragma: no cover - every hub built by build_hub has one
        raise ApiProblem(404, "grouping_not_configured", "shipment grouping is not available")
    return service


def _problem(e: GroupingProblem) -> ApiProblem:
    return ApiProblem(e.status, e.code, e.detail)


async def _idem(request: Request, principal: str, key: str | None) -> IdempotencyKey | None:
    """Stripe semantics; the fingerprint covers the path too, so one key cannot be reused
    for another step."""
    if key is None:
        return None
    body = await request.body()
    digest = hashlib.sha256(request.url.path.encode() + b"\n" + body).hexdigest()
    return IdempotencyKey(principal, key, digest)


def _respond(result: StoredResponse) -> Response:
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return Response(
        result.body, status_code=result.status, media_type="application/json", headers=headers
    )


@router.post("/v1/groups/merge", status_code=201, summary="Merge orders into one shipment")
async def merge_orders(
    body: MergeIn, request: Request, principal: Writer, idempotency_key: IdemHeader = None
) -> Response:
    """One buyer, one address, open orders placed within the merge window (`merge.window`)."""
    idem = await _idem(request, principal, idempotency_key)
    try:
        return _respond(await _service(request).merge(body.order_ids, idem))
    except GroupingProblem as e:
        raise _problem(e) from None


@router.get("/v1/groups/merge-candidates", summary="Orders the merge policy would merge")
async def merge_candidates(
    request: Request,
    _: Reader,
    since: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> Response:
    """Open orders created since `since` (default: the last 7 days) that ship on their own,
    in sets of one buyer to one address within the window."""
    sets = await _service(request).candidates(since=since, limit=limit)
    return json_response(
        {
            "data": [
                {
                    "order_ids": [o.id for o in s],
                    "channel_id": s[0].channel_id,
                    "first_placed_at": _iso(s[0].placed_at or s[0].created_at),
                    "last_placed_at": _iso(s[-1].placed_at or s[-1].created_at),
                }
                for s in sets
            ]
        }
    )


def _iso(t: datetime) -> str | None:
    return fmt_time(t)


@router.get("/v1/groups/{group_id}", summary="One shipment group")
async def get_group(group_id: str, request: Request, _: Reader) -> Response:
    try:
        return json_response(await _service(request).get(group_id))
    except GroupingProblem as e:
        raise _problem(e) from None


@router.post("/v1/groups/{group_id}/unmerge", summary="Undo a merge: the original shipments")
async def unmerge_group(
    group_id: str, request: Request, principal: Writer, idempotency_key: IdemHeader = None
) -> Response:
    idem = await _idem(request, principal, idempotency_key)
    try:
        return _respond(await _service(request).unmerge(group_id, idem))
    except GroupingProblem as e:
        raise _problem(e) from None


@router.post("/v1/groups/{group_id}/join", summary="Undo a split: the shipment it was cut from")
async def join_group(
    group_id: str, request: Request, principal: Writer, idempotency_key: IdemHeader = None
) -> Response:
    idem = await _idem(request, principal, idempotency_key)
    try:
        return _respond(await _service(request).join(group_id, idem))
    except GroupingProblem as e:
        raise _problem(e) from None


@router.post("/v1/orders/{order_id}/split", summary="Split an order's shipment")
async def split_order(
    order_id: str,
    body: SplitIn,
    request: Request,
    principal: Writer,
    idempotency_key: IdemHeader = None,
) -> Response:
    """`by: location`: one shipment per location holding stock for it (its reservations),
    plus one for units held nowhere; `by: availability`: what can ship now and what waits."""
    idem = await _idem(request, principal, idempotency_key)
    try:
        return _respond(await _service(request).split(order_id, body.by, idem))
    except GroupingProblem as e:
        raise _problem(e) from None


@router.get("/v1/orders/{order_id}/groups", summary="The shipment groups an order is in")
async def order_groups(order_id: str, request: Request, _: Reader) -> Response:
    try:
        return json_response({"data": await _service(request).groups_of_order(order_id)})
    except GroupingProblem as e:
        raise _problem(e) from None
