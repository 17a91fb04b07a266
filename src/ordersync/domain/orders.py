"""The canonical order and its rules.

An `OrderSnapshot` is what a channel (or the native API) says an order looks like now;
an `Order` is the hub's record, which changes only through its methods. Each change bumps
`version`, appends a `HistoryEntry` and returns the events to publish.
"""

from __future__ import annotations

import dataclasses
import hashlib
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from ordersync.domain.errors import InvalidOrder
from ordersync.domain.events import EventType, OrderEvent
from ordersync.domain.order_status import (
    INITIAL_STATUSES,
    PAYMENT_SECURED,
    HoldReason,
    OrderStatus,
    PaymentStatus,
    check_channel_transition,
    check_payment_transition,
    check_transition,
    is_behind,
)


@dataclass(frozen=True, slots=True)
class Address:
    name: str | None = None
    company: str | None = None
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    region: str | None = None
    postal_code: str | None = None
    country_code: str | None = None
    phone: str | None = None


@dataclass(frozen=True, slots=True)
class Customer:
    external_id: str | None = None
    email: str | None = None
    name: str | None = None
    phone: str | None = None


@dataclass(frozen=True, slots=True)
class Totals:
    """Order-level amounts exactly as the channel states them (decimal, in `currency`)."""

    subtotal: Decimal | None
    shipping: Decimal | None
    tax: Decimal | None
    discount: Decimal | None
    total: Decimal


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str | None
    name: str | None
    quantity: int
    unit_price: Decimal
    discount: Decimal
    total: Decimal
    external_id: str | None = None
    product_id: str | None = None
    variant_id: str | None = None

    def __post_init__(self) -> None:
        if self.quantity < 0:
            raise InvalidOrder(f"line {self.sku or self.variant_id}: negative quantity")


@dataclass(frozen=True, slots=True)
class OrderSnapshot:
    """What the source says the order is now. Missing data stays None, never invented."""

    channel_id: str
    external_id: str | None
    currency: str
    totals: Totals
    lines: tuple[OrderLine, ...]
    status: OrderStatus
    payment_status: PaymentStatus
    customer: Customer | None = None
    shipping_address: Address | None = None
    billing_address: Address | None = None
    note: str | None = None
    placed_at: datetime | None = None
    channel_updated_at: datetime | None = None
    name: str | None = None  # the channel's human order number, e.g. Shopify "#1001"

    def __post_init__(self) -> None:
        if len(self.currency) != 3 or not self.currency.isalpha():
            raise InvalidOrder(f"currency must be an ISO 4217 code, got {self.currency!r}")


# Fields of the snapshot that are the order's content (as opposed to its state).
CONTENT_FIELDS = (
    "currency",
    "totals",
    "lines",
    "customer",
    "shipping_address",
    "billing_address",
    "note",
    "placed_at",
    "name",
)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    version: int
    from_status: OrderStatus | None
    to_status: OrderStatus
    from_payment_status: PaymentStatus | None
    to_payment_status: PaymentStatus
    cause: str  # e.g. "shopify:orders/paid", "api:status", "api:create"
    source_message_id: str | None
    at: datetime
    changed: tuple[str, ...] = ()  # content fields that changed


@dataclass(frozen=True, slots=True)
class HoldRelease:
    """A person released the order from a hold that had `reason` (the API: `release`, or a
    status change out of the hold). `fact` is what the reason's audit rule judged at that
    moment (`release_fact`): the audit does not hold the order for `reason` again while the
    fact stays the same. None: the reason's rule judges its facts' freshness itself
    (`suspected_fraud`) or no rule manages it (`manual`, `payment_review`); then this is the
    record of who released it and when, nothing more."""

    reason: HoldReason
    fact: str | None
    by: str  # the release's cause, e.g. "api:ops" (the API key's id)
    at: datetime


def release_fact(order: Order, reason: HoldReason) -> str | None:
    """What the audit rule of `reason` (domain/holds.py) looks at, as one comparable value;
    a change of it is material, anything else is not.

    `amount_above_threshold`: the total and its currency (`EUR 1250`: 1250.00 is the same).
    `buyer_note`: the note's text (a digest; case-sensitive, spacing does not count).
    `incomplete_address`: the shipping address, every field (a digest; case, width and
    spacing do not count). Other reasons: None (see `HoldRelease.fact`).
    """
    if reason is HoldReason.AMOUNT_ABOVE_THRESHOLD:
        return f"{order.currency} {order.totals.total.normalize():f}"
    if reason is HoldReason.BUYER_NOTE:
        return _digest(_spaced(order.note))
    if reason is HoldReason.INCOMPLETE_ADDRESS:
        addr = order.shipping_address
        if addr is None:
            return _digest("")
        return _digest(*(_spaced(getattr(addr, f)).casefold() for f in addr.__slots__))
    return None


def _spaced(text: str | None) -> str:
    return " ".join(unicodedata.normalize("NFKC", text or "").split())


def _digest(*parts: str) -> str:
    # Not the text itself: the note and the address are in the order already, and personal.
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


# Reasons a person's release is remembered for: all but `stock_shortage`, which routing
# clears and sets (stock arriving, a new routing decision), not a person's judgement.
_REMEMBERED = frozenset(HoldReason) - {HoldReason.STOCK_SHORTAGE}
# Statuses a release returns an order to that are still audited (not shipped or cancelled).
_STILL_AUDITED = frozenset({OrderStatus.PENDING, OrderStatus.PAID, OrderStatus.ALLOCATED})


@dataclass(slots=True)
class Order:
    id: str
    channel_id: str
    external_id: str | None
    status: OrderStatus
    payment_status: PaymentStatus
    currency: str
    totals: Totals
    lines: tuple[OrderLine, ...]
    customer: Customer | None
    shipping_address: Address | None
    billing_address: Address | None
    note: str | None
    placed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    channel_updated_at: datetime | None = None
    name: str | None = None
    version: int = 1
    hold_reasons: tuple[HoldReason, ...] = ()
    held_from: OrderStatus | None = None
    # Hold reasons a person released, one entry per reason (the latest release), kept until
    # the audit holds the order for that reason again. See `HoldRelease`.
    released_holds: tuple[HoldRelease, ...] = ()
    # Not persisted with the order: collected by the unit of work at commit.
    new_history: list[HistoryEntry] = field(default_factory=list, repr=False)
    new_events: list[OrderEvent] = field(default_factory=list, repr=False)

    # ---- creation -------------------------------------------------------------------
    @classmethod
    def create(
        cls, order_id: str, snap: OrderSnapshot, *, cause: str, message_id: str | None, at: datetime
    ) -> Order:
        if snap.status not in INITIAL_STATUSES:
            raise InvalidOrder(f"an order cannot start as {snap.status.value!r}")
        order = cls(
            id=order_id,
            channel_id=snap.channel_id,
            external_id=snap.external_id,
            status=snap.status,
            payment_status=snap.payment_status,
            created_at=at,
            updated_at=at,
            channel_updated_at=snap.channel_updated_at,
            **{f: getattr(snap, f) for f in CONTENT_FIELDS},
        )
        order.new_history.append(
            HistoryEntry(1, None, snap.status, None, snap.payment_status, cause, message_id, at)
        )
        order._emit(EventType.ORDER_CREATED, at)
        if snap.payment_status in PAYMENT_SECURED or snap.status is OrderStatus.PAID:
            order._emit(EventType.ORDER_PAID, at)
        # An order arriving shipped, delivered or completed announces where it arrived.
        if snap.status in _ARRIVAL_EVENTS:
            order._emit(_ARRIVAL_EVENTS[snap.status], at)
        return order

    # ---- queries ----------------------------------------------------------------------
    def is_stale(self, channel_updated_at: datetime | None) -> bool:
        """An update older than what we hold must never roll the order back."""
        if channel_updated_at is None or self.channel_updated_at is None:
            return False
        return channel_updated_at < self.channel_updated_at

    # ---- changes ----------------------------------------------------------------------
    def sync(
        self, snap: OrderSnapshot, *, cause: str, message_id: str | None, at: datetime
    ) -> bool:
        """Bring the order in line with what its channel reports. Returns True if it changed.

        Validates everything before touching anything, so a refused update leaves the
        order exactly as it was.
        """
        changed = tuple(f for f in CONTENT_FIELDS if getattr(snap, f) != getattr(self, f))
        status, held_from = self._status_after_channel_report(snap.status)
        payment = snap.payment_status
        if payment != self.payment_status:
            check_payment_transition(self.payment_status, payment)

        same_state = status == self.status and payment == self.payment_status
        if not changed and same_state and held_from == self.held_from:
            if snap.channel_updated_at and not self.is_stale(snap.channel_updated_at):
                self.channel_updated_at = snap.channel_updated_at
            return False
        for f in changed:
            setattr(self, f, getattr(snap, f))
        if snap.channel_updated_at is not None:
            self.channel_updated_at = snap.channel_updated_at
        self.held_from = held_from
        if status is not OrderStatus.ON_HOLD:
            self.hold_reasons = ()
        self._record(status, payment, cause, message_id, at, changed)
        return True

    def transition_to(
        self,
        target: OrderStatus,
        *,
        cause: str,
        message_id: str | None = None,
        at: datetime,
        hold_reasons: tuple[HoldReason, ...] = (),
        by_rules: bool = False,
    ) -> None:
        """An explicit status change (operator, API, a later workflow).

        Leaving a hold for a status that is still audited is a person's release, remembered
        per reason (`released_holds`) unless `by_rules`: the audit let the order go because
        its causes cleared, which is nothing to remember."""
        check_transition(self.status, target)
        if target is OrderStatus.ON_HOLD:
            if not hold_reasons:
                raise InvalidOrder("putting an order on hold needs at least one reason")
            self.held_from = self.status
            self._forget_releases(hold_reasons)
            self.hold_reasons = hold_reasons
        elif self.status is OrderStatus.ON_HOLD:
            if not by_rules and target in _STILL_AUDITED:
                self._remember_release(cause, at)
            self.held_from = None
            self.hold_reasons = ()
        self._record(target, self.payment_status, cause, message_id, at, ())

    def release_hold(self, *, cause: str, at: datetime, by_rules: bool = False) -> None:
        """Return a held order to the status it was held from. A person's release (the
        default) is remembered per reason; `by_rules`: the audit's own, as its causes cleared."""
        if self.status is not OrderStatus.ON_HOLD or self.held_from is None:
            raise InvalidOrder("order is not on hold")
        self.transition_to(self.held_from, cause=cause, at=at, by_rules=by_rules)

    def release_fact(self, reason: HoldReason) -> str | None:
        return release_fact(self, reason)

    def released_fact(self, reason: HoldReason) -> str | None:
        """The fact a person released `reason` at (None: not released, or no fact kept)."""
        return next((r.fact for r in self.released_holds if r.reason is reason), None)

    def change_hold_reasons(
        self, reasons: tuple[HoldReason, ...], *, cause: str, at: datetime
    ) -> bool:
        """Why a held order is held changed (a cause cleared, another found); it stays on
        hold. A new version and history entry; False if the reasons are the same."""
        if self.status is not OrderStatus.ON_HOLD:
            raise InvalidOrder("order is not on hold")
        if not reasons:
            raise InvalidOrder("an order on hold needs at least one reason")
        if reasons == self.hold_reasons:
            return False
        self._forget_releases(tuple(r for r in reasons if r not in self.hold_reasons))
        self.hold_reasons = reasons
        self._record(self.status, self.payment_status, cause, None, at, ("hold_reasons",))
        return True

    def annotate(
        self,
        cause: str,
        *,
        at: datetime,
        changed: tuple[str, ...] = (),
        message_id: str | None = None,
    ) -> None:
        """A change beside status and content (e.g. its shipment grouping): a new version and
        a history entry, status unchanged. The caller emits the event that describes it."""
        self.version += 1
        self.updated_at = at
        self.new_history.append(
            HistoryEntry(
                self.version,
                self.status,
                self.status,
                self.payment_status,
                self.payment_status,
                cause,
                message_id,
                at,
                changed,
            )
        )

    # ---- internals --------------------------------------------------------------------
    def _remember_release(self, cause: str, at: datetime) -> None:
        released = {r.reason: r for r in self.released_holds}
        for reason in self.hold_reasons:
            if reason in _REMEMBERED:
                released[reason] = HoldRelease(reason, release_fact(self, reason), cause, at)
        self.released_holds = tuple(released.values())

    def _forget_releases(self, reasons: tuple[HoldReason, ...]) -> None:
        """The order is held for `reasons` (again): an earlier release of them is spent."""
        if self.released_holds:
            self.released_holds = tuple(r for r in self.released_holds if r.reason not in reasons)

    def _status_after_channel_report(
        self, reported: OrderStatus
    ) -> tuple[OrderStatus, OrderStatus | None]:
        """(new status, new held_from) for a status the channel reports; may raise."""
        current = self.status
        if reported is OrderStatus.ON_HOLD:  # holds are the hub's decision, never a channel's
            return current, self.held_from
        if current is OrderStatus.ON_HOLD and reported in _HOLD_STAYS:
            # The hold stands; remember where the channel says the order now is.
            base = self.held_from or OrderStatus.PENDING
            if reported != base and not is_behind(reported, base):
                check_channel_transition(base, reported)
                return current, reported
            return current, self.held_from
        if reported == current or is_behind(reported, current):
            return current, self.held_from
        check_channel_transition(current, reported)
        return reported, None

    def _record(
        self,
        status: OrderStatus,
        payment: PaymentStatus,
        cause: str,
        message_id: str | None,
        at: datetime,
        changed: tuple[str, ...],
    ) -> None:
        before_status, before_payment = self.status, self.payment_status
        self.status, self.payment_status = status, payment
        self.version += 1
        self.updated_at = at
        self.new_history.append(
            HistoryEntry(
                self.version,
                before_status,
                status,
                before_payment,
                payment,
                cause,
                message_id,
                at,
                changed,
            )
        )
        emits = [EventType.ORDER_UPDATED]
        if status != before_status:
            if before_status is OrderStatus.ON_HOLD and status is not OrderStatus.CANCELLED:
                emits.append(EventType.ORDER_RELEASED)
            specific = _STATUS_EVENTS.get(status)
            # "paid" announces payment being secured, not a return to PAID from elsewhere.
            if specific is not None and (
                status is not OrderStatus.PAID or before_status is OrderStatus.PENDING
            ):
                emits.append(specific)
        if payment != before_payment:
            secured = payment in PAYMENT_SECURED and before_payment not in PAYMENT_SECURED
            if secured and EventType.ORDER_PAID not in emits:
                emits.append(EventType.ORDER_PAID)
            if payment in (PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED):
                emits.append(EventType.ORDER_REFUNDED)
        for type_ in emits:
            self._emit(type_, at)

    def _emit(self, type_: EventType, at: datetime) -> None:
        self.new_events.append(OrderEvent(type_, self.id, self.version, at))

    def take_changes(self) -> tuple[list[HistoryEntry], list[OrderEvent]]:
        history, events = self.new_history, self.new_events
        self.new_history, self.new_events = [], []
        return history, events

    def snapshot(self) -> OrderSnapshot:
        return OrderSnapshot(
            channel_id=self.channel_id,
            external_id=self.external_id,
            status=self.status,
            payment_status=self.payment_status,
            channel_updated_at=self.channel_updated_at,
            **{f: getattr(self, f) for f in CONTENT_FIELDS},
        )

    def copy(self) -> Order:
        return dataclasses.replace(self, new_history=[], new_events=[])


# Channel-reported statuses under which a hub hold stays in place (shipping or cancelling
# on the platform overrides the hold).
_HOLD_STAYS = frozenset({OrderStatus.PENDING, OrderStatus.PAID, OrderStatus.ALLOCATED})

_ARRIVAL_EVENTS: dict[OrderStatus, EventType] = {
    OrderStatus.CANCELLED: EventType.ORDER_CANCELLED,
    OrderStatus.SHIPPED: EventType.ORDER_SHIPPED,
    OrderStatus.DELIVERED: EventType.ORDER_DELIVERED,
    OrderStatus.COMPLETED: EventType.ORDER_COMPLETED,
}

_STATUS_EVENTS: dict[OrderStatus, EventType] = {
    OrderStatus.PAID: EventType.ORDER_PAID,
    OrderStatus.CANCELLED: EventType.ORDER_CANCELLED,
    OrderStatus.SHIPPED: EventType.ORDER_SHIPPED,
    OrderStatus.DELIVERED: EventType.ORDER_DELIVERED,
    OrderStatus.COMPLETED: EventType.ORDER_COMPLETED,
    OrderStatus.ON_HOLD: EventType.ORDER_HELD,
}
