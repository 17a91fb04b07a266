"""Returns: goods of a shipped order coming back, what may come back, and what is refunded.

Pure Python. A return is asked for per SKU; it may take back at most what the order
shipped minus what earlier returns of the order already claim (received or still on
their way). Once the goods are received, each line is restocked or written off and the
money for it is refunded, computed in `Decimal` from the order's line totals:

- a SKU's units share its line totals evenly, rounded half-even to the totals' own
  precision (cents for "24.00", whole units for "2400");
- the return that brings back a SKU's last unit gets what is left of that SKU's total,
  so the refunds of a fully returned SKU add up to its total exactly, never a cent more;
- the order is `refunded` once everything refundable came back, `partially_refunded`
  before that (shipping and order-level amounts are not refunded by a return).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Any

from ordersync.domain.errors import DomainError
from ordersync.domain.events import EventType
from ordersync.domain.order_status import OrderStatus, PaymentStatus, check_payment_transition
from ordersync.domain.orders import Order


class ReturnStatus(StrEnum):
    PICKUP_BOOKED = "pickup_booked"  # the carrier is to collect the goods from the buyer
    IN_TRANSIT = "in_transit"  # the carrier has them
    RECEIVED = "received"  # back at the warehouse: restocked or written off, refunded


class ReceivedBy(StrEnum):
    CARRIER = "carrier"  # the reverse shipment was delivered to the warehouse
    MANUAL = "manual"  # an operator recorded the receipt


# Orders whose goods have left: only these can be returned.
RETURNABLE: frozenset[OrderStatus] = frozenset(
    {OrderStatus.SHIPPED, OrderStatus.DELIVERED, OrderStatus.COMPLETED}
)
# Payment states a refund can follow from.
REFUNDABLE: frozenset[PaymentStatus] = frozenset(
    {PaymentStatus.PAID, PaymentStatus.PARTIALLY_PAID, PaymentStatus.PARTIALLY_REFUNDED}
)


class ReturnRefused(DomainError):
    """A return request or receipt that cannot be served: `status` and `code` for the API."""

    code = "return_refused"

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class ReturnNotFound(DomainError):
    code = "return_not_found"


@dataclass(frozen=True, slots=True)
class ReturnLine:
    sku: str
    quantity: int
    restock: bool | None = None  # decided at receipt (None before)
    location_id: str | None = None  # where it was restocked (None: written off / untracked)
    refund_amount: Decimal | None = None  # decided at receipt

    def to_dict(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "quantity": self.quantity,
            "restock": self.restock,
            "location_id": self.location_id,
            "refund_amount": None if self.refund_amount is None else str(self.refund_amount),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReturnLine:
        amount = d.get("refund_amount")
        return cls(
            d["sku"],
            int(d["quantity"]),
            d.get("restock"),
            d.get("location_id"),
            None if amount is None else Decimal(amount),
        )


@dataclass(slots=True)
class Return:
    id: str
    order_id: str
    reason: str
    currency: str
    lines: tuple[ReturnLine, ...]
    created_at: datetime
    status: ReturnStatus = ReturnStatus.PICKUP_BOOKED
    carrier_id: str | None = None
    shipment_id: str | None = None  # the reverse pickup
    tracking_number: str | None = None
    received_at: datetime | None = None
    received_by: ReceivedBy | None = None
    payment_status: PaymentStatus | None = None  # the order's, after this refund (None: none)

    @property
    def is_received(self) -> bool:
        return self.status is ReturnStatus.RECEIVED

    @property
    def refund_amount(self) -> Decimal | None:
        if not self.is_received:
            return None
        return sum((line.refund_amount or Decimal(0) for line in self.lines), Decimal(0))

    def quantities(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.lines:
            out[line.sku] = out.get(line.sku, 0) + line.quantity
        return out

    def picked_up(self) -> bool:
        """The carrier has the goods; True if that changed the return."""
        if self.status is not ReturnStatus.PICKUP_BOOKED:
            return False
        self.status = ReturnStatus.IN_TRANSIT
        return True

    def receive(self, lines: Sequence[ReturnLine], *, by: ReceivedBy, at: datetime) -> None:
        if self.is_received:
            raise ReturnRefused(409, "return_already_received", f"return {self.id} is received")
        self.lines = tuple(lines)
        self.status = ReturnStatus.RECEIVED
        self.received_at, self.received_by = at, by

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "order_id": self.order_id,
            "reason": self.reason,
            "currency": self.currency,
            "lines": [line.to_dict() for line in self.lines],
            "created_at": self.created_at.isoformat(),
            "status": str(self.status),
            "carrier_id": self.carrier_id,
            "shipment_id": self.shipment_id,
            "tracking_number": self.tracking_number,
            "received_at": None if self.received_at is None else self.received_at.isoformat(),
            "received_by": None if self.received_by is None else str(self.received_by),
            "payment_status": None if self.payment_status is None else str(self.payment_status),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Return:
        received = d.get("received_at")
        by, payment = d.get("received_by"), d.get("payment_status")
        return cls(
            id=d["id"],
            order_id=d["order_id"],
            reason=d["reason"],
            currency=d["currency"],
            lines=tuple(ReturnLine.from_dict(x) for x in d["lines"]),
            created_at=datetime.fromisoformat(d["created_at"]),
            status=ReturnStatus(d["status"]),
            carrier_id=d.get("carrier_id"),
            shipment_id=d.get("shipment_id"),
            tracking_number=d.get("tracking_number"),
            received_at=None if received is None else datetime.fromisoformat(received),
            received_by=None if by is None else ReceivedBy(by),
            payment_status=None if payment is None else PaymentStatus(payment),
        )


# ---- what may come back -------------------------------------------------------------------


def shipped_quantities(order: Order) -> dict[str, int]:
    """Units per SKU the order shipped (lines without a SKU cannot be returned)."""
    out: dict[str, int] = {}
    for line in order.lines:
        if line.sku and line.quantity > 0:
            out[line.sku] = out.get(line.sku, 0) + line.quantity
    return out


def claimed_quantities(returns: Iterable[Return]) -> dict[str, int]:
    """Units per SKU earlier returns claim, received or still on their way."""
    out: dict[str, int] = {}
    for ret in returns:
        for sku, qty in ret.quantities().items():
            out[sku] = out.get(sku, 0) + qty
    return out


def check_request(
    order: Order, requested: Sequence[tuple[str, int]], earlier: Iterable[Return]
) -> dict[str, int]:
    """The requested units per SKU, or `ReturnRefused` (409 for the order's state, 422 for
    the lines). Checks everything before anything is booked or stored."""
    if order.status is OrderStatus.CANCELLED:
        raise ReturnRefused(409, "order_cancelled", f"order {order.id} is cancelled")
    if order.status not in RETURNABLE:
        raise ReturnRefused(
            409,
            "order_not_shipped",
            f"order {order.id} is {order.status.value}: only shipped or delivered goods"
            " can be returned",
        )
    if not requested:
        raise ReturnRefused(422, "return_lines_empty", "a return needs at least one line")
    wanted: dict[str, int] = {}
    for sku, qty in requested:
        if qty <= 0:
            raise ReturnRefused(422, "invalid_quantity", f"{sku}: quantity must be positive")
        wanted[sku] = wanted.get(sku, 0) + qty
    shipped, claimed = shipped_quantities(order), claimed_quantities(earlier)
    for sku, qty in sorted(wanted.items()):
        if sku not in shipped:
            raise ReturnRefused(422, "sku_not_in_order", f"order {order.id} has no {sku!r}")
        left = shipped[sku] - claimed.get(sku, 0)
        if qty > left:
            raise ReturnRefused(
                422,
                "return_quantity_exceeded",
                f"{sku}: {qty} asked back, but {shipped[sku]} shipped and"
                f" {claimed.get(sku, 0)} already returned ({left} left)",
            )
    return wanted


# ---- what is refunded ---------------------------------------------------------------------


def _quantum(amount: Decimal) -> Decimal:
    exponent = amount.as_tuple().exponent
    return Decimal(1).scaleb(exponent if isinstance(exponent, int) else -2)


def refund_amounts(
    order: Order, returning: Mapping[str, int], earlier: Iterable[Return]
) -> dict[str, Decimal]:
    """The refund per SKU for `returning` units, given the earlier RECEIVED returns."""
    totals: dict[str, Decimal] = {}
    for line in order.lines:
        if line.sku and line.quantity > 0:
            totals[line.sku] = totals.get(line.sku, Decimal(0)) + line.total
    shipped = shipped_quantities(order)
    units: dict[str, int] = {}
    refunded: dict[str, Decimal] = {}
    for ret in earlier:
        if not ret.is_received:
            continue
        for back in ret.lines:
            units[back.sku] = units.get(back.sku, 0) + back.quantity
            refunded[back.sku] = refunded.get(back.sku, Decimal(0)) + (
                back.refund_amount or Decimal(0)
            )
    out: dict[str, Decimal] = {}
    for sku, qty in returning.items():
        total = totals[sku]
        if units.get(sku, 0) + qty >= shipped[sku]:  # the last units: what is left, exactly
            out[sku] = total - refunded.get(sku, Decimal(0))
        else:
            out[sku] = (total * qty / shipped[sku]).quantize(_quantum(total), ROUND_HALF_EVEN)
    return out


def payment_after_refund(order: Order, refunded_total: Decimal) -> PaymentStatus | None:
    """The order's payment status once `refunded_total` (all returns) went back; None when
    the order was never paid (cash on delivery not collected, an authorization only)."""
    if order.payment_status not in REFUNDABLE:
        return None
    refundable = sum((line.total for line in order.lines if line.sku), Decimal(0))
    if refundable > 0 and refunded_total >= refundable:
        return PaymentStatus.REFUNDED
    return PaymentStatus.PARTIALLY_REFUNDED


def record_refund(order: Order, payment: PaymentStatus, *, cause: str, at: datetime) -> None:
    """Record a refund on the order: a new version with its history entry, the payment
    status moved if it changes. Every refund is its own version, a second partial refund
    included, so receivers that apply changes once per (order, version) see each one. The
    order's own `order.refunded` event is left out: the caller publishes one that carries
    the refund's amount."""
    if payment == order.payment_status:
        # Same status (partially refunded again): the money changed all the same.
        order._record(order.status, payment, cause, None, at, ())
    else:
        check_payment_transition(order.payment_status, payment)
        order.sync(
            dataclasses.replace(order.snapshot(), payment_status=payment),
            cause=cause,
            message_id=None,
            at=at,
        )
    order.new_events = [e for e in order.new_events if e.type is not EventType.ORDER_REFUNDED]
