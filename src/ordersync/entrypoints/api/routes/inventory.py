"""Inventory API: stock snapshots and deltas from a WMS/ERP, stock per location, its
ledger (every movement), and reservations held directly (carts, flash sales) through the
SKU-sharded writers."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ordersync.adapters.db import stock_audit
from ordersync.adapters.db.inventory import SqlInventoryStore
from ordersync.clock import utcnow
from ordersync.config import Scope
from ordersync.domain import stock_commands as sc
from ordersync.domain.codec import fmt_time
from ordersync.domain.inventory import InsufficientStock, MovementCause, StockConflict
from ordersync.domain.stock_feeds import FeedMode, ImportStockFeed, InvalidFeed, parse_csv
from ordersync.entrypoints.api.auth import require
from ordersync.entrypoints.api.deps import hub, json_response
from ordersync.entrypoints.api.errors import ApiProblem
from ordersync.service.handlers.inventory import ReservationResult
from ordersync.service.inventory import InventoryService
from ordersync.service.unit_of_work import StoredResponse

router = APIRouter(prefix="/v1/inventory", tags=["inventory"])

Reader = Annotated[str, Depends(require(Scope.INVENTORY_READ))]
Writer = Annotated[str, Depends(require(Scope.INVENTORY_WRITE))]
IdempotencyKey = Annotated[str | None, Header(max_length=255)]
Sku = Annotated[str, Field(min_length=1, max_length=128)]
LocationId = Annotated[str, Field(min_length=1, max_length=64)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SnapshotIn(_In):
    location_id: LocationId
    on_hand: int = Field(ge=0)
    safety_stock: int | None = Field(default=None, ge=0)


class DeltaIn(_In):
    sku: Sku
    location_id: LocationId
    delta: int
    cause: MovementCause = MovementCause.ADJUSTMENT


class AdjustmentsIn(_In):
    deltas: list[DeltaIn] = Field(min_length=1, max_length=1000)
    reference: str | None = Field(default=None, max_length=255)


class LineIn(_In):
    sku: Sku
    quantity: int = Field(gt=0, le=1_000_000)


class ReservationIn(_In):
    order_id: str = Field(min_length=1, max_length=255, description="an order or cart id")
    lines: list[LineIn] = Field(min_length=1, max_length=100)
    ttl_seconds: float | None = Field(default=None, gt=0, description="None: until released")


def _inventory(request: Request) -> InventoryService:
    service = hub(request).inventory
    if service is None:
        raise ApiProblem(409, "inventory_disabled", "no locations are configured")
    return service


async def _handle(service: InventoryService, cmd: Any) -> Any:
    try:
        return await service.handle(cmd)
    except StockConflict as e:
        raise ApiProblem(409, e.code, str(e)) from None


def _stored(result: StoredResponse) -> Response:
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return Response(
        result.body, status_code=result.status, media_type="application/json", headers=headers
    )


def _fingerprint(body: bytes, key: str | None) -> str | None:
    return hashlib.sha256(body).hexdigest() if key else None


@router.put("/{sku}", summary="Set on_hand at one location (a WMS/ERP count)")
async def put_stock(
    sku: Sku,
    snapshot: SnapshotIn,
    request: Request,
    principal: Writer,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """`Idempotency-Key` (the feed's message id): the same key and body return the stored
    response; another body with that key is a 422. A count below what is reserved is 409."""
    service = _inventory(request)
    result = await _handle(
        service,
        sc.SetStock(
            sku=sku,
            location_id=snapshot.location_id,
            on_hand=snapshot.on_hand,
            safety_stock=snapshot.safety_stock,
            received_at=utcnow(),
            principal=principal,
            message_id=idempotency_key,
            fingerprint=_fingerprint(await request.body(), idempotency_key),
        ),
    )
    return _stored(result)


MAX_FEED_BYTES = 16 * 1024 * 1024
_CSV_TYPES = ("text/csv", "application/csv")


@router.post(
    "/feeds",
    summary="Apply a CSV stock feed from a WMS/ERP (snapshot or delta), all rows or none",
    responses={
        413: {"description": "The file is larger than 16 MiB"},
        415: {"description": "Not sent as text/csv"},
        422: {"description": "Bad rows (`errors`: line, column, code); nothing was applied"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
async def post_feed(
    request: Request,
    principal: Writer,
    mode: FeedMode = FeedMode.SNAPSHOT,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Columns `sku,location_id,on_hand[,safety_stock]` (delta mode: `delta`, or `on_hand`
    as its alias). `Idempotency-Key` is the feed's message id: the same key and file
    return the stored response; a feed with a bad row stores nothing."""
    service = _inventory(request)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in _CSV_TYPES:
        raise ApiProblem(415, "unsupported_media_type", "send the feed as text/csv")
    body = await request.body()
    if len(body) > MAX_FEED_BYTES:
        raise ApiProblem(413, "feed_too_large", f"a feed is at most {MAX_FEED_BYTES} bytes")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiProblem(422, "invalid_encoding", "the feed must be UTF-8 text") from None
    try:
        rows = parse_csv(text, mode, frozenset(service.policy.locations))
        result = await _handle(
            service,
            ImportStockFeed(
                tuple(rows),
                mode,
                utcnow(),
                principal,
                idempotency_key,
                _fingerprint(mode.value.encode() + b"\n" + body, idempotency_key),
            ),
        )
    except InvalidFeed as e:
        errors = [x.as_dict() for x in e.errors]
        raise ApiProblem(422, e.code, str(e), errors=errors) from None
    return _stored(result)


@router.post("/adjustments", summary="Apply stock deltas, all or none")
async def post_adjustments(
    body: AdjustmentsIn,
    request: Request,
    principal: Writer,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    service = _inventory(request)
    result = await _handle(
        service,
        sc.AdjustStock(
            deltas=tuple(
                sc.StockDelta(d.sku, d.location_id, d.delta, d.cause) for d in body.deltas
            ),
            received_at=utcnow(),
            principal=principal,
            reference=body.reference,
            message_id=idempotency_key,
            fingerprint=_fingerprint(await request.body(), idempotency_key),
        ),
    )
    return _stored(result)


@router.post(
    "/reservations",
    status_code=201,
    summary="Hold stock for an order or cart (all lines or none)",
    responses={409: {"description": "Not enough stock: nothing was reserved"}},
)
async def post_reservation(body: ReservationIn, request: Request, _: Writer) -> Response:
    service = _inventory(request)
    now = utcnow()
    lines = tuple((line.sku, line.quantity) for line in body.lines)
    expires = now + timedelta(seconds=body.ttl_seconds) if body.ttl_seconds else None
    result: ReservationResult = await _handle(
        service, sc.ReserveStock(body.order_id, lines, now, expires)
    )
    if not result.reserved:
        raise InsufficientStockProblem(body.order_id)
    return json_response(
        {
            "order_id": result.order_id,
            "reservations": [
                {
                    "id": r.id,
                    "sku": r.sku,
                    "location_id": r.location_id,
                    "quantity": r.quantity,
                    "expires_at": fmt_time(r.expires_at) if r.expires_at else None,
                }
                for r in result.reservations
            ],
        },
        status=201,
    )


class InsufficientStockProblem(ApiProblem):
    def __init__(self, order_id: str) -> None:
        super().__init__(
            409, InsufficientStock.code, "not enough stock: nothing was reserved", order_id=order_id
        )


@router.delete("/reservations/{order_id}", summary="Release what an order or cart holds")
async def delete_reservations(order_id: str, sku: str, request: Request, _: Writer) -> Response:
    """`sku`: any SKU the order holds (it picks the writer, so the release queues behind
    that SKU's pending reservations)."""
    service = _inventory(request)
    released = await _handle(service, sc.ReleaseReservations(order_id, sku, utcnow()))
    return json_response({"order_id": order_id, "released": released})


@router.get("/reservations/{order_id}", summary="An order's reservations (its allocations)")
async def get_reservations(order_id: str, request: Request, _: Reader) -> Response:
    _inventory(request)
    rows = await SqlInventoryStore(hub(request).db).reservations_of(order_id)
    return json_response({"order_id": order_id, "data": rows})


@router.get("/{sku}", summary="Stock of one SKU, per location")
async def get_stock(sku: Sku, request: Request, _: Reader) -> Response:
    _inventory(request)
    rows = await SqlInventoryStore(hub(request).db).stock_of(sku)
    if not rows:
        raise ApiProblem(404, "sku_not_found", f"no stock recorded for {sku!r}")
    return json_response(
        {
            "sku": sku,
            "on_hand": sum(r["on_hand"] for r in rows),
            "reserved": sum(r["reserved"] for r in rows),
            "available": sum(r["available"] for r in rows),
            "locations": rows,
        }
    )


class LedgerEntryOut(BaseModel):
    seq: int = Field(description="position in the ledger; pages are keyed by it")
    location_id: str
    cause: MovementCause
    on_hand_delta: int
    reserved_delta: int
    reference: str | None = Field(description="what caused it: an order id, a feed id, ...")
    reservation_id: str | None
    at: str = Field(description="when it was recorded, RFC 3339 UTC")


class LedgerPageOut(BaseModel):
    sku: str
    data: list[LedgerEntryOut]
    next: int | None = Field(
        description="more entries follow: pass it as `after` for the next page; null on"
        " the last page"
    )


@router.get(
    "/{sku}/ledger",
    response_model=LedgerPageOut,
    summary="The stock ledger of one SKU: every movement, oldest first",
    responses={404: {"description": "No stock recorded for the SKU"}},
)
async def get_ledger(
    sku: Sku,
    request: Request,
    _: Reader,
    after: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="return entries with a larger `seq`")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    location_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    cause: MovementCause | None = None,
    reference: Annotated[
        str | None, Query(min_length=1, max_length=255, description="e.g. an order id")
    ] = None,
) -> Response:
    """Each stock movement of the SKU with its cause; summed per location they give
    `on_hand` and `reserved` of `GET /v1/inventory/{sku}`. Keyset pages by `seq`: follow
    `next` with `?after=`. A SKU with no stock recorded is a 404, as on
    `GET /v1/inventory/{sku}`."""
    _inventory(request)
    db = hub(request).db
    locations = await stock_audit.sku_locations(db, sku)
    if not locations:
        raise ApiProblem(404, "sku_not_found", f"no stock recorded for {sku!r}")
    page = await stock_audit.ledger_page(
        db,
        sku,
        [location_id] if location_id is not None else locations,
        after=after,
        limit=limit,
        cause=cause.value if cause is not None else None,
        reference=reference,
    )
    return json_response(
        {
            "sku": sku,
            "data": [
                {
                    "seq": e.seq,
                    "location_id": e.location_id,
                    "cause": e.cause,
                    "on_hand_delta": e.on_hand_delta,
                    "reserved_delta": e.reserved_delta,
                    "reference": e.reference,
                    "reservation_id": e.reservation_id,
                    "at": fmt_time(e.at),
                }
                for e in page.entries
            ],
            "next": page.entries[-1].seq if page.more else None,
        }
    )
