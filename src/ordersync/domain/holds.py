"""Audit rules: which orders stop for a person to look at, and when they may go again.

Each rule looks at an order (and what the hub knows around it: recent orders, the routing
outcome) and answers with a `HoldReason` and a detail, or nothing. `evaluate` runs the
rules and compares with the reasons the order already carries: it returns the reasons to
add and the reasons to remove, so a hold is released automatically once every cause it
was put on for has cleared. Reasons no rule manages (`manual`, `payment_review`) are never
removed here; only a person (or the API) releases those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

from ordersync.domain.order_status import HoldReason, OrderStatus
from ordersync.domain.orders import Address, Order


@dataclass(frozen=True, slots=True)
class OrderFootprint:
    """What fraud heuristics remember of an earlier order."""

    order_id: str
    placed_at: datetime
    address_key: str | None
    phone: str | None


@dataclass(frozen=True, slots=True)
class AuditContext:
    now: datetime
    recent: Sequence[OrderFootprint] = ()  # other orders (this one may be among them)
    stock_short: bool = False  # routing found no way to serve the order (stock_shortage)


@dataclass(frozen=True, slots=True)
class Finding:
    reason: HoldReason
    detail: str


class AuditRule(Protocol):
    @property
    def reason(self) -> HoldReason: ...

    def check(self, order: Order, ctx: AuditContext) -> str | None:
        """A human-readable cause when the order must be held, else None."""


def address_key(address: Address | None) -> str | None:
    """The same street, postcode and country, however it was typed."""
    if address is None or not (address.line1 and address.country_code):
        return None
    parts = (address.line1, address.line2 or "", address.postal_code or "", address.country_code)
    return "|".join(" ".join(p.lower().replace(",", " ").split()) for p in parts)


def normalized_phone(phone: str | None) -> str | None:
    digits = "".join(ch for ch in phone or "" if ch.isdigit())
    return digits[-9:] if len(digits) >= 6 else None  # trailing digits: ignore +49 vs 0


def footprint(order: Order) -> OrderFootprint:
    phone = order.shipping_address.phone if order.shipping_address else None
    if not phone and order.customer is not None:
        phone = order.customer.phone
    return OrderFootprint(
        order.id,
        order.placed_at or order.created_at,
        address_key(order.shipping_address),
        normalized_phone(phone),
    )


@dataclass(frozen=True, slots=True)
class IncompleteAddress:
    required: tuple[str, ...] = ("name", "line1", "city", "postal_code", "country_code")
    # Countries without postal codes (Hong Kong, UAE, Ireland before Eircode ...).
    no_postal_code: frozenset[str] = frozenset({"HK", "AE", "QA", "MO"})
    reason: HoldReason = HoldReason.INCOMPLETE_ADDRESS

    def check(self, order: Order, ctx: AuditContext) -> str | None:
        addr = order.shipping_address
        if addr is None:
            return "no shipping address"
        missing = [
            f
            for f in self.required
            if not (getattr(addr, f) or "").strip()
            and not (f == "postal_code" and addr.country_code in self.no_postal_code)
        ]
        return f"shipping address lacks {', '.join(missing)}" if missing else None


@dataclass(frozen=True, slots=True)
class AmountAboveThreshold:
    thresholds: Mapping[str, Decimal]  # per currency; a currency absent is never held
    reason: HoldReason = HoldReason.AMOUNT_ABOVE_THRESHOLD

    def check(self, order: Order, ctx: AuditContext) -> str | None:
        limit = self.thresholds.get(order.currency)
        if limit is not None and order.totals.total > limit:
            return f"total {order.totals.total} {order.currency} is above {limit}"
        return None


@dataclass(frozen=True, slots=True)
class BuyerNotePresent:
    reason: HoldReason = HoldReason.BUYER_NOTE

    def check(self, order: Order, ctx: AuditContext) -> str | None:
        note = (order.note or "").strip()
        return f"buyer note: {note[:80]!r}" if note else None


@dataclass(frozen=True, slots=True)
class SuspectedFraud:
    """Simple heuristics: bursts from one address or phone, billing abroad."""

    window: timedelta = timedelta(hours=24)
    max_orders_per_address: int = 3
    max_orders_per_phone: int = 3
    country_mismatch: bool = True
    reason: HoldReason = HoldReason.SUSPECTED_FRAUD

    def check(self, order: Order, ctx: AuditContext) -> str | None:
        me = footprint(order)
        since = me.placed_at - self.window
        others = [
            f
            for f in ctx.recent
            if f.order_id != order.id and since <= f.placed_at <= me.placed_at + self.window
        ]
        causes = []
        if me.address_key is not None:
            n = 1 + sum(1 for f in others if f.address_key == me.address_key)
            if n > self.max_orders_per_address:
                causes.append(f"{n} orders to one address within {_span(self.window)}")
        if me.phone is not None:
            n = 1 + sum(1 for f in others if f.phone == me.phone)
            if n > self.max_orders_per_phone:
                causes.append(f"{n} orders from one phone within {_span(self.window)}")
        ship, bill = order.shipping_address, order.billing_address
        if (
            self.country_mismatch
            and ship is not None
            and bill is not None
            and ship.country_code
            and bill.country_code
            and ship.country_code != bill.country_code
        ):
            causes.append(f"billing country {bill.country_code}, shipping to {ship.country_code}")
        return "; ".join(causes) or None


@dataclass(frozen=True, slots=True)
class StockShortage:
    reason: HoldReason = HoldReason.STOCK_SHORTAGE

    def check(self, order: Order, ctx: AuditContext) -> str | None:
        return "no location can serve the order" if ctx.stock_short else None


def _span(window: timedelta) -> str:
    hours = window.total_seconds() / 3600
    return f"{hours:g} h"


def default_rules(
    thresholds: Mapping[str, Decimal] | None = None,
) -> tuple[AuditRule, ...]:
    return (
        IncompleteAddress(),
        AmountAboveThreshold(thresholds or {}),
        BuyerNotePresent(),
        SuspectedFraud(),
        StockShortage(),
    )


@dataclass(frozen=True, slots=True)
class HoldPolicy:
    """The configured audit: the rules an order is checked against on create and update."""

    rules: tuple[AuditRule, ...] = ()

    @property
    def manages_stock_shortage(self) -> bool:
        return any(r.reason is HoldReason.STOCK_SHORTAGE for r in self.rules)


class HoldAction(StrEnum):
    NONE = "none"  # nothing changes
    HOLD = "hold"  # the order goes on hold with `reasons`
    UPDATE = "update"  # stays on hold; the reasons change
    RELEASE = "release"  # every cause cleared: back to the status it was held from


# Statuses an audit still applies to (shipped or cancelled orders are past holding).
AUDITED = frozenset({OrderStatus.PENDING, OrderStatus.PAID, OrderStatus.ALLOCATED})


@dataclass(frozen=True, slots=True)
class AuditResult:
    findings: tuple[Finding, ...]
    add: frozenset[HoldReason]
    remove: frozenset[HoldReason]
    reasons: tuple[HoldReason, ...]  # what the order should carry afterwards, in order
    action: HoldAction
    details: Mapping[HoldReason, str] = field(default_factory=dict)


def evaluate(order: Order, rules: Sequence[AuditRule], ctx: AuditContext) -> AuditResult:
    """Run the rules; compare with the order's current reasons (re-evaluation is the same)."""
    held = order.status is OrderStatus.ON_HOLD
    if not held and order.status not in AUDITED:
        return AuditResult((), frozenset(), frozenset(), order.hold_reasons, HoldAction.NONE)
    findings = tuple(
        Finding(rule.reason, why) for rule in rules if (why := rule.check(order, ctx)) is not None
    )
    found = {f.reason for f in findings}
    managed = {rule.reason for rule in rules}
    current = set(order.hold_reasons)
    add = frozenset(found - current)
    remove = frozenset((current & managed) - found)
    reasons = tuple(r for r in order.hold_reasons if r not in remove) + tuple(
        f.reason for f in findings if f.reason in add
    )
    if not held:
        action = HoldAction.HOLD if reasons else HoldAction.NONE
    elif not reasons:
        action = HoldAction.RELEASE
    elif add or remove:
        action = HoldAction.UPDATE
    else:
        action = HoldAction.NONE
    return AuditResult(
        findings, add, remove, reasons, action, {f.reason: f.detail for f in findings}
    )


def apply(order: Order, result: AuditResult, *, at: datetime, cause: str = "audit") -> bool:
    """Put on hold or release through the order's own methods. True if the order changed.

    `UPDATE` is left to the caller: `Order` has no method yet to change the reasons of a
    hold in place with a history entry (see the report of this module's introduction).
    """
    if result.action is HoldAction.HOLD:
        order.transition_to(OrderStatus.ON_HOLD, cause=cause, at=at, hold_reasons=result.reasons)
        return True
    if result.action is HoldAction.RELEASE:
        order.release_hold(cause=cause, at=at)
        return True
    return False
