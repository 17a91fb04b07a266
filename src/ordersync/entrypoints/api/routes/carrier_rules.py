"""Carrier rules (issue 6): list the rules with their current carriers, and switch a rule's
carrier in one call (stored, so every process and every restart sees it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ordersync.config import Scope
from ordersync.entrypoints.api.auth import require
from ordersync.entrypoints.api.deps import hub, json_response
from ordersync.entrypoints.api.errors import ApiProblem
from ordersync.service.carrier_booking import RuleError
from ordersync.service.shipments import ShipmentService

router = APIRouter(tags=["shipments"])

Reader = Annotated[str, Depends(require(Scope.ORDERS_READ))]
Writer = Annotated[str, Depends(require(Scope.ORDERS_WRITE))]


class RuleSwitchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The carrier this rule books with from now on; null (or the configured carrier)
    # removes the override.
    carrier_id: str | None = Field(min_length=1, max_length=64)


def _service(request: Request) -> ShipmentService:
    service = hub(request).shipments
    if service is None:
        raise ApiProblem(404, "carriers_not_configured", "no carrier is configured")
    return service


@router.get("/v1/carrier-rules", summary="Carrier choice rules, in the order they apply")
async def list_rules(request: Request, principal: Reader) -> Response:
    service = _service(request)
    return json_response({"data": await service.carrier_rules.views()})


@router.put(
    "/v1/carrier-rules/{rule_id}", summary="Switch the carrier a rule books with (one call)"
)
async def switch_rule(
    rule_id: str, switch: RuleSwitchIn, request: Request, principal: Writer
) -> Response:
    service = _service(request)
    try:
        view = await service.carrier_rules.switch(
            rule_id, switch.carrier_id, principal, service.clock(), list(service.carriers)
        )
    except RuleError as e:
        raise ApiProblem(e.status, e.code, e.detail) from None
    return json_response(view)
