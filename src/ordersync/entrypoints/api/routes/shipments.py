"""Shipments API (issue 6): carrier callbacks, booking, an order's shipments, alerts.

A carrier callback is answered in the carrier's format once it is verified and durably
recorded; it is applied right after (service/shipments.py). Alerts are listed by state and
moved along by operators: open -> acknowledged -> resolved.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.responses import Response

from ordersync.config import Scope
from ordersync.entrypoints.api.auth import require
from ordersync.entrypoints.api.deps import hub, json_response
from ordersync.entrypoints.api.errors import ApiProblem
from ordersync.entrypoints.api.schemas import ParcelLineIn
from ordersync.service.shipments import (
    ALERT_STATES,
    REPLAY_PARKED_DEFAULT,
    REPLAY_PARKED_MAX,
    ShipmentError,
    ShipmentService,
)

router = APIRouter(tags=["shipments"])

Reader = Annotated[str, Depends(require(Scope.ORDERS_READ))]
Writer = Annotated[str, Depends(require(Scope.ORDERS_WRITE))]
MAX_CALLBACK = 1024 * 1024


class BookingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    carrier_id: str | None = Field(default=None, max_length=64)  # None: the carrier rules
    carrier_code: str | None = Field(default=None, max_length=64)  # the real carrier's code
    weight_kg: Decimal | None = Field(default=None, gt=0)
    service: str = Field(default="", max_length=64)
    # The delivery date promised to the buyer: `delivery_overdue` alerts count from it.
    promised_by: AwareDatetime | None = None
    # What this parcel carries (None: every unit not yet in an active parcel).
    lines: list[ParcelLineIn] | None = Field(default=None, min_length=1, max_length=500)
    # The shipment this booking re-books (cancelled once the new one is stored).
    replaces: str | None = Field(default=None, min_length=1, max_length=64)


class ParkedReplayIn(BaseModel):
    """Which parked callbacks a bulk replay puts back (every filter optional)."""

    model_config = ConfigDict(extra="forbid")

    carrier: str | None = Field(default=None, min_length=1, max_length=64)  # a carrier id
    parked_before: AwareDatetime | None = None  # parked strictly before this time
    parked_after: AwareDatetime | None = None  # parked at or after this time
    error_contains: str | None = Field(default=None, min_length=1, max_length=300)
    limit: int = Field(default=REPLAY_PARKED_DEFAULT, ge=1, le=REPLAY_PARKED_MAX)


def _service(request: Request) -> ShipmentService:
    service = hub(request).shipments
    if service is None:
        raise ApiProblem(404, "carriers_not_configured", "no carrier is configured")
    return service


def _problem(e: ShipmentError) -> ApiProblem:
    return ApiProblem(e.status, e.code, e.detail, **e.extra)


@router.post(
    "/v1/carriers/{carrier_id}/callbacks",
    summary="Receive a carrier's tracking push (in the carrier's own format)",
)
async def carrier_callback(carrier_id: str, request: Request) -> Response:
    service = _service(request)
    body = await request.body()
    if len(body) > MAX_CALLBACK:
        raise ApiProblem(413, "body_too_large", f"limit is {MAX_CALLBACK} bytes")
    try:
        ack = await service.handle_callback(carrier_id, body, request.headers)
    except ShipmentError as e:
        raise _problem(e) from None
    return Response(ack.body, status_code=ack.status, media_type=ack.content_type)


@router.post(
    "/v1/orders/{order_id}/shipments",
    status_code=201,
    summary="Book a waybill for a parcel (all units not yet in a parcel, or the given lines)",
)
async def book_shipment(
    order_id: str, booking: BookingIn, request: Request, principal: Writer
) -> Response:
    service = _service(request)
    try:
        record = await service.book(
            order_id,
            carrier_id=booking.carrier_id,
            carrier_code=booking.carrier_code,
            weight_kg=booking.weight_kg,
            service=booking.service,
            lines=None if booking.lines is None else [x.as_tuple() for x in booking.lines],
            replaces=booking.replaces,
        )
        if booking.promised_by is not None:
            record = await service.promise(record.shipment.shipment_id, booking.promised_by)
    except ShipmentError as e:
        raise _problem(e) from None
    return json_response(record.view(), status=201)


@router.get("/v1/orders/{order_id}/shipments", summary="An order's shipments and their tracking")
async def list_shipments(order_id: str, request: Request, principal: Reader) -> Response:
    service = _service(request)
    shipments = await service.list_for_order(order_id)
    fulfillment = await service.fulfillment(order_id)
    return json_response({"data": shipments, "fulfillment_status": str(fulfillment)})


@router.get("/v1/alerts", summary="Shipment alerts (unresolved by default)")
async def list_alerts(
    request: Request,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    state: Annotated[list[str] | None, Query(max_length=3)] = None,
) -> Response:
    states = state or ["open", "acknowledged"]
    unknown = sorted(set(states) - set(ALERT_STATES))
    if unknown:
        raise ApiProblem(
            422, "invalid_state", f"unknown alert state {unknown[0]!r}; one of {ALERT_STATES}"
        )
    return json_response({"data": await _service(request).alerts(states, limit)})


@router.post("/v1/alerts/{alert_id}/acknowledge", summary="Acknowledge an alert")
async def acknowledge_alert(alert_id: str, request: Request, principal: Writer) -> Response:
    return await _alert_action(request, alert_id, "acknowledge", principal)


@router.post("/v1/alerts/{alert_id}/resolve", summary="Resolve an alert")
async def resolve_alert(alert_id: str, request: Request, principal: Writer) -> Response:
    return await _alert_action(request, alert_id, "resolve", principal)


async def _alert_action(request: Request, alert_id: str, action: str, principal: str) -> Response:
    try:
        alert = await _service(request).set_alert_state(alert_id, action, principal)
    except ShipmentError as e:
        raise _problem(e) from None
    return json_response(alert)


@router.get(
    "/v1/carrier-callbacks/parked",
    summary="Carrier callbacks parked after failing to apply too many times",
)
async def list_parked_callbacks(
    request: Request, principal: Reader, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> Response:
    return json_response({"data": await _service(request).parked_callbacks(limit)})


@router.post(
    "/v1/carrier-callbacks/parked/replay",
    summary="Put back every parked carrier callback matching the filters (oldest first)",
)
async def replay_parked_callbacks(
    filters: ParkedReplayIn, request: Request, principal: Writer
) -> Response:
    """One transaction: the matching parked callbacks (the oldest `limit`) go back to
    `received` with their attempts reset, and are applied as usual right after."""
    try:
        result = await _service(request).replay_parked(
            carrier_id=filters.carrier,
            parked_before=filters.parked_before,
            parked_after=filters.parked_after,
            error_contains=filters.error_contains,
            limit=filters.limit,
            by=principal,
        )
    except ShipmentError as e:
        raise _problem(e) from None
    return json_response(result)


@router.post(
    "/v1/carrier-callbacks/{carrier_id}/{callback_id}/replay",
    summary="Apply a parked carrier callback again (once)",
)
async def replay_parked_callback(
    carrier_id: str, callback_id: str, request: Request, principal: Writer
) -> Response:
    try:
        result = await _service(request).replay_callback(carrier_id, callback_id)
    except ShipmentError as e:
        raise _problem(e) from None
    return json_response(result)
