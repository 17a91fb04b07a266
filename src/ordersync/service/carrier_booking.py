"""Which carrier books a waybill, trying the fallbacks in turn, and cancelling the old one.

`CarrierRules` holds the configured choice rules (domain/carrier_choice.py) and the
runtime overrides (`PUT /v1/carrier-rules/{id}`, stored in the database so every process
and every restart sees them). `book_first` sends the booking to each candidate in turn
until one accepts: a refusal, a 5xx, a timeout or an unreachable carrier moves on to the
next, and nothing is stored for a failed attempt. `cancel_waybill` asks the carrier to
cancel a waybill the hub no longer uses (after a re-booking elsewhere), where the
connector can.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Any, Protocol

from ordersync.adapters.carriers.base import (
    Booking,
    BookingResult,
    CancellingConnector,
    CarrierError,
    CarrierRequest,
    CarrierResponse,
    Waybill,
)
from ordersync.domain.carrier_choice import (
    CarrierChoice,
    CarrierRule,
    NoCarrierMatched,
    ParcelFacts,
    choose,
    ranked,
)
from ordersync.domain.codec import fmt_time
from ordersync.domain.orders import Order
from ordersync.domain.shipments import ParcelLine, covers, line_key

if TYPE_CHECKING:
    from ordersync.service.shipments import Carrier

log = logging.getLogger(__name__)

Send = Callable[[CarrierRequest], Awaitable[CarrierResponse]]


class CarrierCallObserver(Protocol):
    """Metrics: each call to a carrier, by operation (`book`, `cancel`, `poll`) and
    outcome (`ok`, `error`)."""

    def called(self, carrier_id: str, operation: str, outcome: str) -> None: ...


def _observe(observer: CarrierCallObserver | None, carrier_id: str, op: str, ok: bool) -> None:
    if observer is not None:
        observer.called(carrier_id, op, "ok" if ok else "error")


class OverrideStore(Protocol):
    async def overrides(self) -> dict[str, tuple[str, str, datetime]]:
        """rule id -> (carrier id, set by, set at)."""
        ...

    async def set_override(self, rule_id: str, carrier_id: str, by: str, now: datetime) -> None: ...

    async def clear_override(self, rule_id: str) -> None: ...


class RuleError(Exception):
    """A carrier-rule request that cannot be served: `status` and `code` for the API."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def facts_of(
    order: Order, lines: Sequence[ParcelLine], weight_kg: Decimal | None, service: str
) -> ParcelFacts:
    """What the rules see of a parcel carrying `lines` of the order: its destination and
    channel, and what it is worth (`parcel_value`). Order lines carry no weights yet: the
    weight is the one given with the booking (None: unknown, so weight rules do not match)."""
    a = order.shipping_address
    return ParcelFacts(
        order_id=order.id,
        channel_id=order.channel_id,
        country=((a.country_code if a else None) or "").upper(),
        region=(a.region if a else None) or "",
        total=parcel_value(order, lines),
        currency=order.currency,
        weight_kg=weight_kg,
        service=service,
    )


_CENT = Decimal("0.01")


def parcel_value(order: Order, lines: Sequence[ParcelLine]) -> Decimal:
    """What a parcel carrying `lines` is worth, in the order's currency.

    A parcel with every unit of the order: the order's total as the channel states it
    (shipping and tax included). A part of the order: the goods value of its units, each
    line's total (after the line's discount) prorated by the units in the parcel, to the
    cent. Lines sharing a key (domain/shipments.py `line_key`) share their units, so they
    are prorated together; units beyond what the order holds (it changed since) count once.
    """
    if covers(order.lines, [lines]):
        return order.totals.total
    units: dict[str, int] = {}
    worth: dict[str, Decimal] = {}
    for i, line in enumerate(order.lines):
        if line.quantity > 0:
            key = line_key(line.external_id, line.sku, i)
            units[key] = units.get(key, 0) + line.quantity
            worth[key] = worth.get(key, Decimal(0)) + line.total
    held: dict[str, int] = {}
    for p in lines:
        held[p.key] = held.get(p.key, 0) + p.quantity
    value = sum(
        (worth[k] * min(n, units[k]) / units[k] for k, n in held.items() if k in units),
        Decimal(0),
    )
    return value.quantize(_CENT, ROUND_HALF_EVEN)


@dataclass
class CarrierRules:
    rules: Sequence[CarrierRule] = ()
    store: OverrideStore | None = None
    observer: CarrierCallObserver | None = None  # carrier calls made while booking

    def rule(self, rule_id: str) -> CarrierRule:
        found = next((r for r in self.rules if r.id == rule_id), None)
        if found is None:
            raise RuleError(404, "carrier_rule_not_found", f"no carrier rule {rule_id!r}")
        return found

    async def _overrides(self) -> dict[str, tuple[str, str, datetime]]:
        return {} if self.store is None else await self.store.overrides()

    async def choose(self, facts: ParcelFacts, available: Sequence[str]) -> CarrierChoice:
        held = await self._overrides()
        # An override naming a carrier since removed from the config is ignored.
        overrides = {r: c for r, (c, _, _) in held.items() if c in available}
        return choose(self.rules, facts, available=available, overrides=overrides)

    async def views(self) -> list[dict[str, Any]]:
        held = await self._overrides()
        out = []
        for priority, rule in ranked(self.rules):
            override = held.get(rule.id)
            by = None
            if override is not None:
                by = {"carrier_id": override[0], "by": override[1], "at": fmt_time(override[2])}
            out.append(
                {
                    "id": rule.id,
                    "carrier_id": override[0] if override else rule.carrier_id,
                    "configured_carrier_id": rule.carrier_id,
                    "fallback": list(rule.fallback),
                    "conditions": rule.conditions(),
                    "priority": priority,
                    "cost": None if rule.cost is None else str(rule.cost),
                    "override": by,
                }
            )
        return out

    async def switch(
        self, rule_id: str, carrier_id: str | None, by: str, now: datetime, available: Sequence[str]
    ) -> dict[str, Any]:
        """Point a rule at another carrier (None, or its configured one: back to config)."""
        rule = self.rule(rule_id)
        if carrier_id is not None and carrier_id not in available:
            raise RuleError(
                422,
                "carrier_not_found",
                f"no carrier {carrier_id!r} (configured: {', '.join(available)})",
            )
        if self.store is None:  # pragma: no cover - the hub always has one
            raise RuleError(409, "overrides_unavailable", "rule overrides are not stored")
        if carrier_id is None or carrier_id == rule.carrier_id:
            await self.store.clear_override(rule_id)
        else:
            await self.store.set_override(rule_id, carrier_id, by, now)
        return next(v for v in await self.views() if v["id"] == rule_id)


@dataclass
class Attempt:
    carrier_id: str
    error: str

    def to_dict(self) -> dict[str, str]:
        return {"carrier_id": self.carrier_id, "error": self.error}


@dataclass
class Booked:
    carrier: Carrier
    result: BookingResult
    attempts: list[Attempt] = field(default_factory=list)  # the failed ones before it


class AllCarriersFailed(Exception):
    def __init__(self, attempts: list[Attempt]) -> None:
        super().__init__("; ".join(f"{a.carrier_id}: {a.error}" for a in attempts))
        self.attempts = attempts


async def book_first(
    candidates: Sequence[Carrier],
    booking_for: Callable[[Carrier], Booking],
    send: Send,
    observer: CarrierCallObserver | None = None,
) -> Booked:
    """Book with the first candidate that accepts; raise `AllCarriersFailed` otherwise."""
    attempts: list[Attempt] = []
    for carrier in candidates:
        booking = booking_for(carrier)
        connector, account = carrier.connector, carrier.account
        try:
            response = await send(connector.build_booking_request(account, booking))
            result = connector.parse_booking_response(booking, response)
        except (CarrierError, OSError, TimeoutError) as e:
            log.warning("booking %s with %s failed: %s", booking.order_id, account.carrier_id, e)
            attempts.append(Attempt(account.carrier_id, str(e) or type(e).__name__))
            _observe(observer, account.carrier_id, "book", False)
            continue
        _observe(observer, account.carrier_id, "book", True)
        return Booked(carrier, result, attempts)
    raise AllCarriersFailed(attempts)


async def cancel_waybill(
    carrier: Carrier,
    waybill: Waybill,
    send: Send,
    observer: CarrierCallObserver | None = None,
) -> dict[str, str]:
    """Ask the carrier to cancel; the outcome as stored with the old shipment."""
    connector = carrier.connector
    if not isinstance(connector, CancellingConnector):
        return {"state": "unsupported", "detail": f"{connector.kind} cannot cancel waybills"}
    try:
        connector.parse_cancel_response(
            waybill, await send(connector.build_cancel_request(carrier.account, waybill))
        )
    except (CarrierError, OSError, TimeoutError) as e:
        log.warning(
            "cancelling %s with %s failed: %s",
            waybill.tracking_number,
            carrier.account.carrier_id,
            e,
        )
        _observe(observer, carrier.account.carrier_id, "cancel", False)
        return {"state": "failed", "detail": str(e) or type(e).__name__}
    _observe(observer, carrier.account.carrier_id, "cancel", True)
    return {"state": "cancelled", "detail": ""}


def rules_from_config(configs: Sequence[Any]) -> list[CarrierRule]:
    """`CarrierRuleConfig`s (config.py) as domain rules."""
    return [
        CarrierRule.build(
            c.id,
            c.carrier,
            fallback=c.fallback,
            countries=c.countries,
            regions=c.regions,
            channels=c.channels,
            services=c.services,
            min_weight_kg=c.min_weight_kg,
            max_weight_kg=c.max_weight_kg,
            min_total=c.min_total,
            max_total=c.max_total,
            currency=c.currency,
            cost=c.cost,
            priority=c.priority,
        )
        for c in configs
    ]


def no_match_problem(e: NoCarrierMatched) -> tuple[int, str, str, Mapping[str, Any]]:
    return 422, e.code, str(e), {"explanation": list(e.explanation)}
