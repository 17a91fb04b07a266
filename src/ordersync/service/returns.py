"""Returns (issue 6): book a reverse pickup, track it like any parcel, receive, refund.

A return is checked against the order (shipped or delivered; no more units than shipped
minus those earlier returns claim), then the carrier books a pickup: the outbound booking
with sender and recipient swapped. The pickup is a `shipments` row with direction
`return`, so the carrier's signed callbacks, the mapping tables and the anomaly timers
treat it like any parcel; `ShipmentService` hands its changes to `on_shipment_update`
inside the callback's own transaction. When the parcel is delivered (back at the
warehouse), or an operator records the receipt, each line is restocked to the location
the goods were shipped from (ledger cause `return`) or written off, and the refund is
published: the order's payment status moves, `order.refunded` carries the amount, and
`return.received` the whole return. All of it commits in one transaction, or none. A
receipt by hand closes the pickup and then cancels its waybill with the carrier (a
refusal is recorded with the pickup as `carrier_cancel`; the receipt stands).

Locks are taken order first, then the return (as for shipments).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import orjson

from ordersync.adapters.carriers.base import Booking, Item
from ordersync.domain.codec import fmt_time, order_to_dict
from ordersync.domain.errors import DomainError, IdempotencyKeyReused, OrderNotFound
from ordersync.domain.inventory import MovementCause
from ordersync.domain.orders import Order
from ordersync.domain.returns import (
    ReceivedBy,
    Return,
    ReturnLine,
    ReturnNotFound,
    ReturnRefused,
    check_request,
    payment_after_refund,
    record_refund,
    refund_amounts,
)
from ordersync.domain.shipments import Shipment, ShipmentStatus
from ordersync.ids import new_id
from ordersync.service.outbox import EventRouter, OutboxEntry
from ordersync.service.shipments import (
    RETURN_DIRECTION,
    SHIPMENT_UPDATED,
    ShipmentRecord,
    ShipmentService,
    ShipmentTx,
    _booking,
    next_due,
)
from ordersync.service.unit_of_work import (
    IdempotencyStore,
    OrderRepository,
    StockRepository,
    StoredResponse,
)

log = logging.getLogger(__name__)

RETURN_CREATED = "return.created"
RETURN_UPDATED = "return.updated"
RETURN_RECEIVED = "return.received"
ORDER_REFUNDED = "order.refunded"


class ReturnTx(Protocol):
    """One transaction over orders, shipments, returns, stock and the outbox."""

    @property
    def orders(self) -> OrderRepository: ...

    @property
    def shipments(self) -> ShipmentTx: ...

    @property
    def stock(self) -> StockRepository | None:
        """None: no locations configured, the hub tracks no stock."""
        ...

    @property
    def idempotency(self) -> IdempotencyStore: ...

    async def returns_of_order(self, order_id: str) -> list[Return]: ...

    async def get(self, return_id: str) -> Return | None:
        """Loaded under lock."""
        ...

    async def by_shipment(self, shipment_id: str) -> Return | None: ...

    async def origins(self, order_id: str, sku: str) -> list[str]:
        """Locations the order's units of `sku` were reserved at, shipped ones first."""
        ...

    async def insert(self, ret: Return, now: datetime) -> None: ...

    async def update(self, ret: Return, now: datetime) -> None: ...

    def emit(self, entry: OutboxEntry) -> None: ...

    async def commit(self) -> None: ...


class ReturnStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[ReturnTx]: ...

    def within(self, tx: ShipmentTx) -> ReturnTx:
        """The returns side of a shipment transaction already open (a carrier callback)."""
        ...

    async def load_order(self, order_id: str) -> Order | None: ...

    async def stored_response(self, principal: str, key: str) -> StoredResponse | None:
        """The response kept for an Idempotency-Key (read outside any transaction)."""
        ...

    async def get(self, return_id: str) -> Return | None: ...

    async def list_for_order(self, order_id: str) -> list[Return]: ...


@dataclass(frozen=True, slots=True)
class Idempotency:
    """An `Idempotency-Key` with the request it came with (Stripe semantics)."""

    principal: str
    key: str
    fingerprint: str


def _replay(stored: StoredResponse | None, idem: Idempotency) -> StoredResponse | None:
    if stored is None:
        return None
    if stored.fingerprint != idem.fingerprint:
        raise IdempotencyKeyReused("this Idempotency-Key was used with a different request")
    return dataclasses.replace(stored, replayed=True)


def return_view(ret: Return) -> dict[str, Any]:
    """The public JSON (API responses and event bodies); money as decimal strings."""
    refund = ret.refund_amount
    return {
        "id": ret.id,
        "order_id": ret.order_id,
        "status": str(ret.status),
        "reason": ret.reason,
        "currency": ret.currency,
        "lines": [line.to_dict() for line in ret.lines],
        "refund_amount": None if refund is None else str(refund),
        "payment_status": None if ret.payment_status is None else str(ret.payment_status),
        "carrier_id": ret.carrier_id,
        "shipment_id": ret.shipment_id,
        "tracking_number": ret.tracking_number,
        "created_at": fmt_time(ret.created_at),
        "received_at": fmt_time(ret.received_at),
        "received_by": None if ret.received_by is None else str(ret.received_by),
    }


def reverse_booking(order: Order, return_id: str, lines: Mapping[str, int], code: str) -> Booking:
    """The outbound booking turned around: the buyer sends, the warehouse receives."""
    outbound = _booking(order, code, None, "")
    names = {line.sku: line.name for line in order.lines if line.sku}
    return dataclasses.replace(
        outbound,
        order_id=return_id,  # the carrier's order reference: one per pickup
        sender=outbound.recipient,
        recipient=outbound.sender,
        items=tuple(Item(names.get(sku) or sku, qty) for sku, qty in sorted(lines.items())),
        remark=f"return {return_id} of {order.name or order.id}",
    )


@dataclass
class ReturnService:
    shipments: ShipmentService
    store: ReturnStore
    router: EventRouter
    clock: Callable[[], datetime] | None = None  # None: the shipment service's clock

    def now(self) -> datetime:
        return (self.clock or self.shipments.clock)()

    def attach(self) -> None:
        """Receive the return shipments' callbacks from the shipment service."""
        self.shipments.on_return_update = self.on_shipment_update

    def _entry(self, type_: str, order: Order, data: dict[str, Any], at: datetime) -> OutboxEntry:
        data = {"channel_id": order.channel_id, "external_id": order.external_id, **data}
        return OutboxEntry(
            event_id=new_id("evt"),
            type=type_,
            order_id=order.id,
            version=order.version,
            body=orjson.dumps({"type": type_, "timestamp": fmt_time(at), "data": data}),
            destinations=self.router.destinations_for(type_, order.channel_id),
        )

    # ---- asking for a return ---------------------------------------------------------------

    async def create(
        self,
        order_id: str,
        lines: Sequence[tuple[str, int]],
        *,
        reason: str = "",
        carrier_id: str | None = None,
        idempotency: Idempotency | None = None,
    ) -> StoredResponse:
        """Check, book the reverse pickup, then store the return and its shipment; the
        response (201 and the return) is kept for `idempotency`, and a repeat returns it
        without booking again."""
        idem = idempotency
        if idem is not None and (
            done := _replay(await self.store.stored_response(idem.principal, idem.key), idem)
        ):
            return done
        order = await self.store.load_order(order_id)
        if order is None:
            raise OrderNotFound(order_id)
        wanted = check_request(order, lines, await self.store.list_for_order(order_id))
        carrier = self.shipments.carrier(carrier_id)
        return_id = new_id("ret")
        booking = reverse_booking(order, return_id, wanted, carrier.carrier_code)
        result, subscribed = await self.shipments.request_waybill(carrier, booking)
        now = self.now()
        record = ShipmentRecord(
            Shipment(
                new_id("shp"),
                carrier.account.carrier_id,
                result.tracking_number,
                booked_at=now,
                carrier_code=result.carrier_code,
            ),
            order_id,
            subscribed=subscribed,
            direction=RETURN_DIRECTION,
            # What cancelling the pickup with the carrier needs (a receipt by hand).
            booking={
                "carrier_ref": result.carrier_ref,
                "label_url": result.label_url,
                "order_ref": booking.order_id,
            },
        )
        ret = Return(
            return_id,
            order_id,
            reason,
            order.currency,
            tuple(ReturnLine(sku, qty) for sku, qty in sorted(wanted.items())),
            now,
            carrier_id=carrier.account.carrier_id,
            shipment_id=record.shipment.shipment_id,
            tracking_number=result.tracking_number,
        )
        async with self.store.transaction() as tx:
            locked = await tx.orders.get(order_id)
            if locked is None:  # pragma: no cover - orders are never deleted
                raise OrderNotFound(order_id)
            if idem is not None and (
                done := _replay(await tx.idempotency.get(idem.principal, idem.key), idem)
            ):
                return done  # a concurrent repeat won (its pickup is the one kept)
            # Again under the order's lock: a concurrent return may have claimed the units
            # meanwhile (its pickup, booked above, is then left unused at the carrier).
            check_request(locked, lines, await tx.returns_of_order(order_id))
            due = next_due(record, self.shipments.rules, set())
            await tx.shipments.insert_shipment(record, due, now)
            await tx.insert(ret, now)
            data = {**return_view(ret), "shipment": record.view()}
            tx.emit(self._entry(RETURN_CREATED, locked, data, now))
            response = StoredResponse(
                "" if idem is None else idem.fingerprint, 201, orjson.dumps(return_view(ret))
            )
            if idem is not None:
                tx.idempotency.put(idem.principal, idem.key, response)
            await tx.commit()
        # Pushes the carrier sent before this commit are applied now, not at the sweep.
        self.shipments.shipment_committed(carrier.account.carrier_id, result.tracking_number)
        return response

    # ---- receiving -------------------------------------------------------------------------

    async def receive(self, return_id: str, restock: Mapping[str, bool] | None = None) -> Return:
        """An operator's receipt: `restock` per SKU (default True); False writes it off."""
        found = await self.store.get(return_id)
        if found is None:
            raise ReturnNotFound(f"no return {return_id!r}")
        decisions = dict(restock or {})
        unknown = sorted(set(decisions) - set(found.quantities()))
        if unknown:
            raise ReturnRefused(
                422, "sku_not_in_return", f"return {return_id} has no {', '.join(unknown)}"
            )
        now = self.now()
        async with self.store.transaction() as tx:
            order = await tx.orders.get(found.order_id)
            ret = await tx.get(return_id)
            if order is None or ret is None:  # pragma: no cover - never deleted
                raise ReturnNotFound(f"no return {return_id!r}")
            if ret.is_received:
                raise ReturnRefused(
                    409, "return_already_received", f"return {return_id} is already received"
                )
            await self._receive(tx, order, ret, decisions, ReceivedBy.MANUAL, now)
            closed = await self._close_pickup(tx, order, ret, now)
            await tx.commit()
        if closed is not None:
            # After the receipt has committed: a carrier that refuses or cannot be reached
            # is logged and recorded with the pickup (`carrier_cancel`); the receipt stands.
            await self.shipments.cancel_with_carrier(closed)
        return ret

    async def _close_pickup(
        self, tx: ReturnTx, order: Order, ret: Return, now: datetime
    ) -> ShipmentRecord | None:
        """The goods came back by hand: the reverse pickup is no longer awaited, so it is
        deactivated (no timer: no `no_pickup` alert for a parcel nobody will hand over).
        Returns it if it was closed here (its waybill is then cancelled with the carrier)."""
        if ret.shipment_id is None:
            return None
        record = await tx.shipments.shipment(ret.shipment_id)
        if record is None or not record.active:
            return None
        record.active, record.cancelled_at = False, now
        await tx.shipments.update_shipment(record, None, now)
        tx.emit(self._entry(SHIPMENT_UPDATED, order, record.view(), now))
        return record

    async def on_shipment_update(
        self, stx: ShipmentTx, order: Order, record: ShipmentRecord, now: datetime
    ) -> None:
        """A carrier callback changed a return shipment (inside its transaction)."""
        tx = self.store.within(stx)
        ret = await tx.by_shipment(record.shipment.shipment_id)
        if ret is None or ret.is_received:
            return
        if record.shipment.status is ShipmentStatus.DELIVERED:  # back at the warehouse
            await self._receive(tx, order, ret, {}, ReceivedBy.CARRIER, now)
        elif record.shipment.picked_up_at is not None and ret.picked_up():
            await tx.update(ret, now)
            tx.emit(self._entry(RETURN_UPDATED, order, return_view(ret), now))

    async def _receive(
        self,
        tx: ReturnTx,
        order: Order,
        ret: Return,
        restock: Mapping[str, bool],
        by: ReceivedBy,
        now: datetime,
    ) -> None:
        earlier = [r for r in await tx.returns_of_order(order.id) if r.id != ret.id]
        amounts = refund_amounts(order, ret.quantities(), earlier)
        lines = []
        for line in ret.lines:
            keep = restock.get(line.sku, True)
            location = await self._restock(tx, order.id, ret.id, line, now) if keep else None
            lines.append(ReturnLine(line.sku, line.quantity, keep, location, amounts[line.sku]))
        ret.receive(lines, by=by, at=now)
        refunded = sum((r.refund_amount or Decimal(0) for r in earlier), Decimal(0))
        refund = ret.refund_amount or Decimal(0)
        payment = payment_after_refund(order, refunded + refund)
        if payment is not None:
            record_refund(order, payment, cause=f"return:{ret.id}", at=now)
            ret.payment_status = payment
            tx.orders.save(order)
        await tx.update(ret, now)
        if payment is not None:
            data = {
                **order_to_dict(order),
                "refund": {
                    "return_id": ret.id,
                    "amount": str(refund),
                    "currency": order.currency,
                    "refunded_total": str(refunded + refund),
                },
            }
            tx.emit(self._entry(ORDER_REFUNDED, order, data, now))
        tx.emit(self._entry(RETURN_RECEIVED, order, return_view(ret), now))

    async def _restock(
        self, tx: ReturnTx, order_id: str, return_id: str, line: ReturnLine, now: datetime
    ) -> str | None:
        """Put the units back on hand where they were shipped from; the location, or None
        when the hub tracks no stock of this SKU (nothing to put back)."""
        stock = tx.stock
        if stock is None:
            return None
        inv = await stock.load([line.sku])
        levels = inv.levels_of(line.sku)
        if not levels:
            return None
        by_priority = sorted(
            (lv.location_id for lv in levels if lv.location_id in inv.locations),
            key=lambda loc: (inv.locations[loc].priority, loc),
        )
        for loc in [*await tx.origins(order_id, line.sku), *by_priority]:
            if loc not in inv.locations:  # a location since removed from the config
                continue
            try:
                inv.adjust(
                    line.sku,
                    loc,
                    line.quantity,
                    at=now,
                    cause=MovementCause.RETURN,
                    reference=return_id,
                )
            except DomainError as e:  # pragma: no cover - a return only adds stock
                log.warning("return %s: %s at %s not restocked: %s", return_id, line.sku, loc, e)
                continue
            return loc
        return None

    # ---- reading ---------------------------------------------------------------------------

    async def get(self, return_id: str) -> dict[str, Any]:
        found = await self.store.get(return_id)
        if found is None:
            raise ReturnNotFound(f"no return {return_id!r}")
        return return_view(found)

    async def list_for_order(self, order_id: str) -> list[dict[str, Any]]:
        if await self.store.load_order(order_id) is None:
            raise OrderNotFound(order_id)
        return [return_view(r) for r in await self.store.list_for_order(order_id)]
