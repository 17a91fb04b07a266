"""Audit rules: which orders stop for a person to look at, and when they may go again.

Each rule looks at an order (and what the hub knows around it: how many other orders went
to the buyer's address or phone lately, the routing outcome) and answers with a
`HoldReason` and a detail, or nothing. `evaluate` runs the rules and compares with the
reasons the order already carries: it returns the reasons to add and the reasons to
remove, so a hold is released automatically once every cause it was put on for has
cleared. Reasons no rule manages (`manual`, `payment_review`) and reasons of rules that do
not release themselves (`suspected_fraud`: a burst of orders does not un-happen, and a
fraudster must not clear a suspicion by editing the order) are never removed here; only a
person (or the API) releases those.

A person's release stands: the order remembers each reason a person released with the fact
its rule judged then (`Order.released_holds`, `orders.release_fact`: the total for
`amount_above_threshold`, the note's text for `buyer_note`, the shipping address for
`incomplete_address`), and `evaluate` does not hold the order for that reason again while
that fact is the same (the channel's next update still carries the amount or the note the
person read). A material change (another total still above the threshold, another note,
another address) holds it again, and that release is spent. `suspected_fraud` judges its
facts once, when they are new (see `AuditContext`), so it needs no such memory.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

from ordersync.domain.order_status import HoldReason, OrderStatus
from ordersync.domain.orders import Address, Order


@dataclass(frozen=True, slots=True)
class BuyerFingerprint:
    """How fraud heuristics recognise one buyer across orders: the shipping address and
    the phone, normalized so that the same one typed differently is the same value.
    Personal data: stored only as keyed hashes (adapters/db/buyer_fingerprints.py)."""

    address: str | None
    phone: str | None


@dataclass(frozen=True, slots=True)
class BuyerActivity:
    """The buyer's other orders placed within the fraud window before this one, per
    fingerprint. None: not counted (the order has no such fingerprint, or it is the one
    already counted when it was recorded: a burst is judged once, when it happens)."""

    other_orders_to_address: int | None = None
    other_orders_from_phone: int | None = None


@dataclass(frozen=True, slots=True)
class AuditContext:
    now: datetime
    buyer: BuyerActivity | None = None  # None: not counted (no burst rule configured)
    stock_short: bool = False  # routing found no way to serve the order (stock_shortage)
    # The order is new or its addresses changed in this change. False: its addresses were
    # judged before, so a person's release of a suspicion about them stands.
    addresses_new: bool = True


@dataclass(frozen=True, slots=True)
class Finding:
    reason: HoldReason
    detail: str


class AuditRule(Protocol):
    @property
    def reason(self) -> HoldReason: ...

    @property
    def releases_itself(self) -> bool:
        """False: once it held an order, only a person (the API) removes its reason."""

    def check(self, order: Order, ctx: AuditContext) -> str | None:
        """A human-readable cause when the order must be held, else None."""


def address_key(address: Address | None) -> str | None:
    """The same street, postcode and country, however it was typed."""
    if address is None or not (address.line1 and address.country_code):
        return None
    parts = (address.line1, address.line2 or "", address.postal_code or "", address.country_code)
    return "|".join(" ".join(p.lower().replace(",", " ").split()) for p in parts)


# ITU calling codes of the countries orders commonly ship to (ISO 3166-1 alpha-2).
CALLING_CODES: Mapping[str, str] = {
    "CN": "86", "HK": "852", "MO": "853", "TW": "886", "JP": "81", "KR": "82", "SG": "65",
    "MY": "60", "TH": "66", "VN": "84", "ID": "62", "PH": "63", "IN": "91", "AU": "61",
    "NZ": "64", "US": "1", "CA": "1", "MX": "52", "BR": "55", "AR": "54", "CL": "56",
    "GB": "44", "IE": "353", "DE": "49", "FR": "33", "NL": "31", "BE": "32", "LU": "352",
    "CH": "41", "AT": "43", "IT": "39", "ES": "34", "PT": "351", "SE": "46", "NO": "47",
    "DK": "45", "FI": "358", "PL": "48", "CZ": "420", "HU": "36", "GR": "30", "RO": "40",
    "RU": "7", "UA": "380", "TR": "90", "AE": "971", "SA": "966", "QA": "974", "IL": "972",
    "EG": "20", "ZA": "27", "NG": "234",
}  # fmt: skip
_KNOWN_CODES = frozenset(CALLING_CODES.values())
# Where the leading 0 is part of the number itself rather than a trunk prefix (Italy).
_ZERO_KEPT = frozenset({"39"})


def _decimal_digits(text: str) -> str:
    """Every decimal digit of any script (full-width, Arabic-Indic ...) as ASCII."""
    return "".join(str(unicodedata.decimal(ch)) for ch in text if ch.isdecimal())


def normalized_phone(phone: str | None, country_code: str | None = None) -> str | None:
    """One phone, however it was written: `+<calling code><national number>`.

    `+86 138-0013-8000`, `0086 13800138000`, `8613800138000` and, for a Chinese address,
    `138 0013 8000` are all `+8613800138000`; `+44 (0)20 7946 0958` and `020 7946 0958`
    from a British address are `+442079460958`. A national number whose country is unknown
    keeps its digits without the `+` (it can only match the same number written alike).
    """
    text = unicodedata.normalize("NFKC", phone or "").strip()
    digits = _decimal_digits(text)
    country = (country_code or "").upper()
    own = CALLING_CODES.get(country)
    first_digit = next((i for i, ch in enumerate(text) if ch.isdecimal()), len(text))
    international = "+" in text[:first_digit]  # +86 ..., (+86) ...
    if not international and digits.startswith("00"):  # most of the world's exit prefix
        digits, international = digits[2:], True
    elif not international and own == "1" and digits.startswith("011"):  # North America's
        digits, international = digits[3:], True
    code: str | None
    if international:
        code = _leading_code(digits)
        if code is None:  # a country this table does not know: keep the number whole
            return f"+{digits}" if len(digits) >= 7 else None
        national = digits[len(code) :]
    elif (own == "86" and len(digits) == 13 and digits.startswith("861")) or (
        own == "1" and len(digits) == 11 and digits.startswith("1")
    ):
        # The country code written without a +: 8613800138000, 1-415-555-0100.
        code, national = own, digits[len(own) :]
    else:
        code, national = own, digits
    if code not in _ZERO_KEPT and national.startswith("0"):
        national = national[1:]  # the trunk prefix: +44 (0)20 ..., 010-6552 9988
    if len(national) < 6:  # an extension or a typo, not a phone to recognise
        return None
    return f"+{code}{national}" if code is not None else national


def _leading_code(digits: str) -> str | None:
    # Calling codes are a prefix code: no code is the start of another, so one match.
    return next((digits[:n] for n in (1, 2, 3) if digits[:n] in _KNOWN_CODES), None)


def normalized_address(address: Address | None) -> str | None:
    """The same street, postcode and country however it was typed: case, width,
    whitespace and punctuation do not count (`Teestraße 12` is `TEESTRASSE 12.`). The
    recipient's name is left out on purpose: a burst to one door under many names is the
    pattern to catch."""
    if address is None or not (address.line1 and address.country_code):
        return None
    parts = (address.country_code, address.postal_code or "", address.line1, address.line2 or "")
    return "|".join(_letters_and_digits(p) for p in parts)


def _letters_and_digits(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] in "LN")


def buyer_fingerprint(order: Order) -> BuyerFingerprint:
    ship, bill = order.shipping_address, order.billing_address
    phone = ship.phone if ship is not None else None
    if not phone and order.customer is not None:
        phone = order.customer.phone
    country = (ship.country_code if ship is not None else None) or (
        bill.country_code if bill is not None else None
    )
    return BuyerFingerprint(normalized_address(ship), normalized_phone(phone, country))


@dataclass(frozen=True, slots=True)
class IncompleteAddress:
    required: tuple[str, ...] = ("name", "line1", "city", "postal_code", "country_code")
    # Countries without postal codes (Hong Kong, UAE, Ireland before Eircode ...).
    no_postal_code: frozenset[str] = frozenset({"HK", "AE", "QA", "MO"})
    reason: HoldReason = HoldReason.INCOMPLETE_ADDRESS
    releases_itself: bool = True

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
    releases_itself: bool = True

    def check(self, order: Order, ctx: AuditContext) -> str | None:
        limit = self.thresholds.get(order.currency)
        if limit is not None and order.totals.total > limit:
            return f"total {order.totals.total} {order.currency} is above {limit}"
        return None


@dataclass(frozen=True, slots=True)
class BuyerNotePresent:
    reason: HoldReason = HoldReason.BUYER_NOTE
    releases_itself: bool = True

    def check(self, order: Order, ctx: AuditContext) -> str | None:
        note = (order.note or "").strip()
        return f"buyer note: {note[:80]!r}" if note else None


@dataclass(frozen=True, slots=True)
class SuspectedFraud:
    """Simple heuristics: bursts of orders to one address or from one phone (this order
    and those placed within `window` before it, over the limit), billing abroad.

    Does not release itself: a burst stays a fact, and a suspicion must not clear because
    the buyer edited the order; a person releases it (`POST /v1/orders/{id}/release`).
    A limit of None is not checked (with both None no orders are counted at all)."""

    window: timedelta = timedelta(hours=24)
    max_orders_per_address: int | None = 3
    max_orders_per_phone: int | None = 3
    country_mismatch: bool = True
    reason: HoldReason = HoldReason.SUSPECTED_FRAUD
    releases_itself: bool = False

    @property
    def counts_bursts(self) -> bool:
        return self.max_orders_per_address is not None or self.max_orders_per_phone is not None

    def check(self, order: Order, ctx: AuditContext) -> str | None:
        causes = []
        buyer = ctx.buyer or BuyerActivity()
        for others, limit, what in (
            (buyer.other_orders_to_address, self.max_orders_per_address, "to one address"),
            (buyer.other_orders_from_phone, self.max_orders_per_phone, "from one phone"),
        ):
            if others is not None and limit is not None and others + 1 > limit:
                causes.append(
                    f"{others + 1} orders {what} within {_span(self.window)} (limit {limit})"
                )
        ship, bill = order.shipping_address, order.billing_address
        if (
            self.country_mismatch
            and ctx.addresses_new
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
    releases_itself: bool = True

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

    @property
    def burst_window(self) -> timedelta | None:
        """How far back the buyer's orders are counted; None: no rule counts them (then
        no fingerprint is recorded or looked up, so an unconfigured rule costs nothing)."""
        for rule in self.rules:
            if isinstance(rule, SuspectedFraud) and rule.counts_bursts:
                return rule.window
        return None


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
    # Found, but a person released the order for it and its fact has not changed since.
    released: frozenset[HoldReason] = frozenset()


def evaluate(order: Order, rules: Sequence[AuditRule], ctx: AuditContext) -> AuditResult:
    """Run the rules; compare with the order's current reasons (re-evaluation is the same)."""
    held = order.status is OrderStatus.ON_HOLD
    if not held and order.status not in AUDITED:
        return AuditResult((), frozenset(), frozenset(), order.hold_reasons, HoldAction.NONE)
    findings = tuple(
        Finding(rule.reason, why) for rule in rules if (why := rule.check(order, ctx)) is not None
    )
    found = {f.reason for f in findings}
    managed = {rule.reason for rule in rules if rule.releases_itself}
    current = set(order.hold_reasons)
    released = frozenset(r for r in found - current if still_released(order, r))
    add = frozenset(found - current - released)
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
        findings, add, remove, reasons, action, {f.reason: f.detail for f in findings}, released
    )


def still_released(order: Order, reason: HoldReason) -> bool:
    """A person released the order from `reason`, and what its rule judges is as it was
    then (`orders.release_fact`): the release stands."""
    fact = order.released_fact(reason)
    return fact is not None and fact == order.release_fact(reason)


def apply(order: Order, result: AuditResult, *, at: datetime, cause: str = "audit") -> bool:
    """Put on hold or release through the order's own methods. True if the order changed.

    `UPDATE` is left to the caller: `Order` has no method yet to change the reasons of a
    hold in place with a history entry (see the report of this module's introduction).
    """
    if result.action is HoldAction.HOLD:
        order.transition_to(OrderStatus.ON_HOLD, cause=cause, at=at, hold_reasons=result.reasons)
        return True
    if result.action is HoldAction.RELEASE:
        order.release_hold(cause=cause, at=at, by_rules=True)  # causes cleared: not a person's
        return True
    return False
