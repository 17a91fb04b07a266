"""Inventory handlers: stock feeds and reservations, and the hook the order handlers call.

Every function here runs inside a unit of work whose `stock` repository is set (the hub
only wires inventory when locations are configured); the order hook returns at once when
it is not, so the order pipeline costs nothing extra without inventory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ordersync.domain import stock_commands as sc
from ordersync.domain.codec import allocated_event
from ordersync.domain.errors import DomainError, IdempotencyKeyReused, InvalidTransition
from ordersync.domain.inventory import (
    Inventory,
    MovementCause,
    Reservation,
    ReserveOn,
    StockLevel,
)
from ordersync.domain.order_status import (
    PAYMENT_SECURED,
    HoldReason,
    OrderStatus,
    PaymentStatus,
)
from ordersync.domain.orders import Order
from ordersync.domain.routing import (
    Destination,
    RoutingDecision,
    RoutingLine,
    RoutingOutcome,
    RoutingRequest,
    RoutingSetup,
)
from ordersync.domain.stock_feeds import ImportStockFeed
from ordersync.ids import new_id
from ordersync.service.handlers.stock_feeds import import_stock_feed
from ordersync.service.unit_of_work import StockRepository, StoredResponse, UnitOfWork

log = logging.getLogger(__name__)

S = OrderStatus
_OPEN = frozenset({S.PENDING, S.PAID, S.ALLOCATED})  # may hold stock
_GONE = frozenset({S.SHIPPED, S.DELIVERED, S.COMPLETED})  # the goods left
_GIVE_BACK = frozenset({PaymentStatus.REFUNDED, PaymentStatus.VOIDED})


def _paid(status: OrderStatus, payment: PaymentStatus) -> bool:
    """Payment secured, whether the channel reports it as a payment or as a status."""
    return payment in PAYMENT_SECURED or status in (S.PAID, S.ALLOCATED)


class InventoryDisabled(DomainError):
    code = "inventory_disabled"


def _stock(uow: UnitOfWork) -> StockRepository:
    if uow.stock is None:
        raise InventoryDisabled("no locations are configured: inventory is off")
    return uow.stock


def level_doc(level: StockLevel) -> dict[str, Any]:
    return {
        "sku": level.sku,
        "location_id": level.location_id,
        "on_hand": level.on_hand,
        "reserved": level.reserved,
        "available": level.available,
        "safety_stock": level.safety_stock,
    }


async def _replayed(
    stock: StockRepository, cmd: sc.SetStock | sc.AdjustStock
) -> StoredResponse | None:
    if cmd.message_id is None:
        return None
    stored = await stock.feed_get(cmd.principal, cmd.message_id)
    if stored is None:
        return None
    if stored.fingerprint != (cmd.fingerprint or ""):
        raise IdempotencyKeyReused("this Idempotency-Key was used with a different request")
    return dataclasses.replace(stored, replayed=True)


def _respond(
    stock: StockRepository, cmd: sc.SetStock | sc.AdjustStock, status: int, body: Any
) -> StoredResponse:
    response = StoredResponse(cmd.fingerprint or "", status, orjson.dumps(body))
    if cmd.message_id is not None:
        stock.feed_put(cmd.principal, cmd.message_id, response)
    return response


async def set_stock(cmd: sc.SetStock, uow: UnitOfWork) -> StoredResponse:
    stock = _stock(uow)
    if (stored := await _replayed(stock, cmd)) is not None:
        return stored
    inv = await stock.load([cmd.sku])
    known = inv.levels.get((cmd.sku, cmd.location_id))
    before = known.available if known is not None else 0
    level = inv.set_on_hand(
        cmd.sku,
        cmd.location_id,
        cmd.on_hand,
        at=cmd.received_at,
        reference=cmd.message_id,
        safety_stock=cmd.safety_stock,
    )
    stock.mark_fed(cmd.sku, cmd.location_id)  # even an unchanged count is a fresh feed
    response = _respond(stock, cmd, 200, level_doc(level))
    if level.available > before:
        await _retry_short_orders(uow, {cmd.sku}, cmd.received_at)
    return response


async def adjust_stock(cmd: sc.AdjustStock, uow: UnitOfWork) -> StoredResponse:
    stock = _stock(uow)
    if (stored := await _replayed(stock, cmd)) is not None:
        return stored
    inv = await stock.load(d.sku for d in cmd.deltas)
    # All or none: check every delta on copies before changing the real levels.
    trial = Inventory(inv.locations, {k: dataclasses.replace(v) for k, v in inv.levels.items()})
    for d in cmd.deltas:
        trial.adjust(d.sku, d.location_id, d.delta, at=cmd.received_at, cause=d.cause)
    levels = [
        inv.adjust(
            d.sku,
            d.location_id,
            d.delta,
            at=cmd.received_at,
            cause=d.cause,
            reference=cmd.reference or cmd.message_id,
        )
        for d in cmd.deltas
    ]
    seen = {(lv.sku, lv.location_id): level_doc(lv) for lv in levels}
    for sku, location_id in seen:
        stock.mark_fed(sku, location_id)
    response = _respond(stock, cmd, 200, {"data": list(seen.values())})
    if more := {d.sku for d in cmd.deltas if d.delta > 0}:
        await _retry_short_orders(uow, more, cmd.received_at)
    return response


# Orders retried per stock change: the oldest first; the next change retries more.
RETRY_BATCH = 50


async def _retry_short_orders(uow: UnitOfWork, skus: set[str], at: datetime) -> None:
    """Stock arrived: orders on hold for lack of it route again, oldest first, in this
    same transaction. One that can now be served reserves and loses its `stock_shortage`
    reason (released when it was the only one); one that still cannot stays as it is,
    with its routing explanation brought up to date (no second shortage event)."""
    stock = _stock(uow)
    for order_id in await stock.orders_short_of(skus, RETRY_BATCH):
        order = await uow.orders.get(order_id)  # locked like any order change
        if (
            order is None
            or order.status is not S.ON_HOLD
            or HoldReason.STOCK_SHORTAGE not in order.hold_reasons
            or await stock.held_for_order(order.id)
        ):
            continue
        secured = _paid(order.held_from or S.PENDING, order.payment_status)
        decision = await _reserve(order, stock, secured=secured, cause="stock", at=at, retry=True)
        if decision is None or decision.outcome is RoutingOutcome.UNROUTABLE:
            continue
        rest = tuple(r for r in order.hold_reasons if r is not HoldReason.STOCK_SHORTAGE)
        if rest:
            order.change_hold_reasons(rest, cause="inventory:stock arrived", at=at)
        else:
            order.release_hold(cause="inventory:stock arrived", at=at)
        uow.orders.save(order)


@dataclass(frozen=True, slots=True)
class ReservationResult:
    order_id: str
    reserved: bool
    reservations: tuple[Reservation, ...] = ()


async def reserve_stock(cmd: sc.ReserveStock, uow: UnitOfWork) -> ReservationResult:
    """Safe to send twice: while `order_id` holds stock, asking again returns that hold."""
    stock = _stock(uow)
    held = await stock.held_for_order(cmd.order_id)
    if held:
        return ReservationResult(cmd.order_id, True, tuple(held))
    lines: dict[str, int] = {}
    for sku, qty in cmd.lines:
        lines[sku] = lines.get(sku, 0) + qty
    inv = await stock.load(lines)
    made = inv.reserve(
        cmd.order_id, lines, at=cmd.received_at, expires_at=cmd.expires_at, new_id=_res_id
    )
    return ReservationResult(cmd.order_id, made is not None, tuple(made or ()))


async def release_reservations(cmd: sc.ReleaseReservations, uow: UnitOfWork) -> int:
    stock = _stock(uow)
    held = await stock.held_for_order(cmd.order_id)
    for res in held:
        stock.inventory.release(res, MovementCause.CANCELLATION, at=cmd.received_at)
    return len(held)


async def expire_reservation(cmd: sc.ExpireReservation, uow: UnitOfWork) -> bool:
    """The durable timer fired; a no-op if the hold was paid, shipped or released since."""
    stock = _stock(uow)
    res = await stock.get_reservation(cmd.reservation_id)
    if res is None or not res.is_due(cmd.now):
        return False
    stock.inventory.release(res, MovementCause.EXPIRY, at=cmd.now)
    return True


INVENTORY_HANDLERS: dict[type, Any] = {
    sc.SetStock: set_stock,
    sc.AdjustStock: adjust_stock,
    sc.ReserveStock: reserve_stock,
    sc.ReleaseReservations: release_reservations,
    sc.ExpireReservation: expire_reservation,
    ImportStockFeed: import_stock_feed,
}


async def preload_stock(batch: Iterable[Any], uow: UnitOfWork) -> None:
    """Lock and load every SKU a batch touches in one query (one writer per SKU, ADR 6)."""
    if uow.stock is None:
        return
    skus: set[str] = set()
    orders: list[str] = []
    for cmd in batch:
        if isinstance(cmd, sc.ReserveStock):
            skus.update(sku for sku, _ in cmd.lines)
            orders.append(cmd.order_id)
        elif isinstance(cmd, sc.AdjustStock):
            skus.update(d.sku for d in cmd.deltas)
        elif isinstance(cmd, sc.SetStock):
            skus.add(cmd.sku)
    await uow.stock.preload_orders(orders)
    await uow.stock.load(skus)


def _res_id() -> str:
    return new_id("res")


# ---- the order hook ----------------------------------------------------------------------


async def on_order_change(
    order: Order,
    before: tuple[OrderStatus, PaymentStatus] | None,
    uow: UnitOfWork,
    *,
    cause: str,
) -> RoutingDecision | None:
    """Keep the order's reservations in step with it. Call before `uow.orders.add/save`.

    `before`: (status, payment status) before this change; None for a new order.
    Accepted (or, per channel, paid) orders are routed and reserve what routing allocated;
    paying removes the expiry; cancel, refund or void releases; shipping commits. An order
    that cannot be served goes on hold with reason `stock_shortage`. Returns the routing
    decision when one was made by this change.

    The order's change stands even if its stock cannot follow (say a location was removed
    from the config while it held stock): that is logged, and a WMS count repairs it.
    """
    stock = uow.stock
    if stock is None or not order.lines:
        return None
    try:
        return await _follow(order, before, stock, cause)
    except DomainError as e:
        log.warning("order %s: stock could not follow its change: %s", order.id, e)
        return None


async def _follow(
    order: Order,
    before: tuple[OrderStatus, PaymentStatus] | None,
    stock: StockRepository,
    cause: str,
) -> RoutingDecision | None:
    status, payment = order.status, order.payment_status
    if before is None:
        secured = _paid(status, payment)
        wants = stock.policy.reserves_on(order.channel_id) is ReserveOn.ACCEPTED or secured
        if status in _OPEN and wants:
            return await _reserve(order, stock, secured=secured, cause=cause)
        return None
    was_status, was_payment = before
    cancelled = (status is S.CANCELLED and was_status is not S.CANCELLED) or (
        payment in _GIVE_BACK and was_payment not in _GIVE_BACK
    )
    shipped = status in _GONE and was_status not in _GONE
    newly_paid = _paid(status, payment) and not _paid(was_status, was_payment)
    released = was_status is S.ON_HOLD and status in _OPEN
    if not (cancelled or shipped or newly_paid or released):
        return None  # most updates (notes, addresses, tracking) leave stock alone: no query
    held = await stock.held_for_order(order.id)
    inv = stock.inventory
    at = order.updated_at
    if shipped:  # first: goods that left are gone, even if the payment went back
        for res in held:
            inv.commit(res, at=at)
    elif cancelled:
        for res in held:
            inv.release(res, MovementCause.CANCELLATION, at=at)
    elif held:
        if newly_paid:
            for res in held:
                inv.confirm(res)
    elif status in _OPEN:
        return await _reserve(order, stock, secured=_paid(status, payment), cause=cause)
    return None


_DEFAULT_ROUTING = RoutingSetup()


async def _reserve(
    order: Order,
    stock: StockRepository,
    *,
    secured: bool,
    cause: str,
    at: datetime | None = None,
    retry: bool = False,
) -> RoutingDecision | None:
    """Route the order, then reserve exactly what the decision allocated (all or nothing).

    `at`: when (default: the order's change). `retry`: an order already on hold for a
    shortage tries again; if it still cannot be served, only the decision is recorded.
    """
    wanted: dict[str, int] = {}
    for line in order.lines:
        if line.sku and line.quantity > 0:
            wanted[line.sku] = wanted.get(line.sku, 0) + line.quantity
    inv = await stock.load(wanted)
    # A SKU no location has ever stocked is not tracked by the hub: nothing to reserve.
    tracked = {sku: q for sku, q in wanted.items() if inv.levels_of(sku)}
    if not tracked:
        return None
    policy = stock.policy
    setup = policy.routing or _DEFAULT_ROUTING
    locations = policy.locations
    available = {
        (lv.sku, lv.location_id): lv.available
        for sku in tracked
        for lv in inv.levels_of(sku)
        if lv.location_id in locations
    }
    addr = order.shipping_address
    request = RoutingRequest(
        order.id,
        order.channel_id,
        tuple(RoutingLine(sku, q) for sku, q in tracked.items()),
        setup.destination(addr.country_code, addr.region) if addr else Destination(),
    )
    at = at or order.updated_at
    load = None
    if setup.uses_capacity(locations):
        load = await stock.capacity_use(at.astimezone(UTC).date().isoformat())
    decision, record = setup.decide(request, locations, available, load, at)
    if decision.outcome is RoutingOutcome.UNROUTABLE:
        if retry:
            inv.record_decision(record)
            return decision
        inv.record_shortage(
            order.id, {ln.sku: ln.quantity for ln in decision.lines if ln.short}, at=at
        )
        inv.record_decision(record)
        with contextlib.suppress(InvalidTransition):  # the shortage event tells regardless
            order.transition_to(
                S.ON_HOLD,
                cause=f"inventory:{cause}",
                at=at,
                hold_reasons=(HoldReason.STOCK_SHORTAGE,),
            )
        return decision
    ttl = policy.unpaid_ttl
    expires = at + ttl if ttl is not None and not secured else None
    made = inv.reserve_allocations(
        order.id,
        [(ln.sku, a.location_id, a.quantity) for ln in decision.lines for a in ln.allocations],
        at=at,
        expires_at=expires,
        new_id=_res_id,
    )
    inv.record_decision(record)
    # The event a WMS picks from: which location holds how many units of each line.
    order.new_events.append(
        allocated_event(order, [(r.sku, r.location_id, r.quantity) for r in made], record, at)
    )
    return decision
