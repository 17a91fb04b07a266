"""Returns API (issue 6): ask for a return (books the reverse pickup), list, receive."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ordersync.config import Scope
from ordersync.domain.returns import ReturnNotFound, ReturnRefused
from ordersync.entrypoints.api.auth import require
from ordersync.entrypoints.api.deps import hub, json_response
from ordersync.entrypoints.api.errors import ApiProblem
from ordersync.service.returns import Idempotency, ReturnService, return_view
from ordersync.service.shipments import ShipmentError

router = APIRouter(tags=["returns"])

Reader = Annotated[str, Depends(require(Scope.ORDERS_READ))]
Writer = Annotated[str, Depends(require(Scope.ORDERS_WRITE))]
SKU = Field(min_length=1, max_length=128)


class ReturnLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = SKU
    quantity: int = Field(gt=0, le=1_000_000)


class ReturnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lines: list[ReturnLineIn] = Field(min_length=1, max_length=500)
    reason: str = Field(default="", max_length=500)
    carrier_id: str | None = Field(default=None, max_length=64)  # None: the first configured


class ReceiveLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = SKU
    restock: bool  # False: written off (damaged, not resellable)


class ReceiveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # SKUs not listed are restocked.
    lines: list[ReceiveLineIn] = Field(default_factory=list, max_length=500)


def _service(request: Request) -> ReturnService:
    service = hub(request).returns
    if service is None:
        raise ApiProblem(404, "carriers_not_configured", "no carrier is configured")
    return service


def _problem(e: ReturnRefused | ShipmentError) -> ApiProblem:
    return ApiProblem(e.status, e.code, e.detail)


@router.post(
    "/v1/orders/{order_id}/returns",
    status_code=201,
    summary="Return goods of a shipped order: books the carrier's reverse pickup",
)
async def create_return(
    order_id: str,
    body: ReturnIn,
    request: Request,
    principal: Writer,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """`Idempotency-Key`: the same key and body return the stored response (header
    `Idempotent-Replayed: true`) without booking again; another body with it is a 422."""
    service = _service(request)
    idempotency = None
    if idempotency_key is not None:
        fingerprint = hashlib.sha256(f"{order_id}\n".encode() + await request.body()).hexdigest()
        idempotency = Idempotency(principal, idempotency_key, fingerprint)
    try:
        result = await service.create(
            order_id,
            [(line.sku, line.quantity) for line in body.lines],
            reason=body.reason,
            carrier_id=body.carrier_id,
            idempotency=idempotency,
        )
    except (ReturnRefused, ShipmentError) as e:
        raise _problem(e) from None
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return Response(
        result.body, status_code=result.status, media_type="application/json", headers=headers
    )


@router.get("/v1/orders/{order_id}/returns", summary="An order's returns")
async def list_returns(order_id: str, request: Request, principal: Reader) -> Response:
    return json_response({"data": await _service(request).list_for_order(order_id)})


@router.get("/v1/returns/{return_id}", summary="One return")
async def get_return(return_id: str, request: Request, principal: Reader) -> Response:
    try:
        return json_response(await _service(request).get(return_id))
    except ReturnNotFound as e:
        raise ApiProblem(404, e.code, str(e)) from None


@router.post(
    "/v1/returns/{return_id}/receive",
    summary="Record the goods' receipt: restock or write off per SKU, and refund",
)
async def receive_return(
    return_id: str, body: ReceiveIn, request: Request, principal: Writer
) -> Response:
    service = _service(request)
    restock: dict[str, bool] = {}
    for line in body.lines:
        if line.sku in restock:
            raise ApiProblem(422, "duplicate_sku", f"{line.sku} is listed twice")
        restock[line.sku] = line.restock
    try:
        ret = await service.receive(return_id, restock)
    except ReturnNotFound as e:
        raise ApiProblem(404, e.code, str(e)) from None
    except ReturnRefused as e:
        raise _problem(e) from None
    return json_response(return_view(ret))
