"""Carrier choice: which carrier books an order's waybill, which ones stand in, and why.

Rules are configured in order (`carrier_rules:`). Each names the conditions it matches on
(destination country and region, parcel weight, parcel value, channel, service level; an
empty condition matches anything) and a carrier with a fallback list. Of the rules that
match, the one with the lowest `priority` wins; a rule's priority is its position unless
given, so by default the first matching rule wins. Rules given the same priority are
ordered by `cost` (cheapest first, a rule without a cost last), then by position: that is
how a cost breaks a tie.

A runtime override (`PUT /v1/carrier-rules/{id}`) replaces a rule's carrier without a
restart; its fallback list stays. Carriers that are not configured are left out of the
candidates (and said so in the explanation). Pure: the same inputs give the same choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ordersync.domain.errors import DomainError


class NoCarrierMatched(DomainError):
    """No rule matches the order: `explanation` says why each one did not."""

    code = "no_carrier_rule_matched"

    def __init__(self, message: str, explanation: Sequence[str]) -> None:
        super().__init__(message)
        self.explanation = tuple(explanation)


@dataclass(frozen=True, slots=True)
class ParcelFacts:
    """What the rules look at, taken from the order and the booking request (the parcel's
    lines among them)."""

    order_id: str
    channel_id: str
    country: str  # ISO 3166-1 alpha-2, upper case ("" when unknown)
    region: str  # province / state as the order gives it
    # What the parcel is worth (min_total / max_total): the order's total when it carries
    # every unit, else the prorated goods value of its units (carrier_booking.parcel_value).
    total: Decimal
    currency: str
    weight_kg: Decimal | None = None  # None: unknown
    service: str = ""  # service level asked for ("standard", "express", ...)


def _norm(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.strip().casefold() for v in values if v.strip())


@dataclass(frozen=True, slots=True)
class CarrierRule:
    id: str
    carrier_id: str
    fallback: tuple[str, ...] = ()
    countries: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    services: frozenset[str] = frozenset()
    min_weight_kg: Decimal | None = None  # inclusive
    max_weight_kg: Decimal | None = None  # inclusive
    min_total: Decimal | None = None  # inclusive
    max_total: Decimal | None = None  # exclusive
    currency: str | None = None  # the currency of min_total / max_total
    cost: Decimal | None = None  # a tie-break between rules of equal priority
    priority: int | None = None  # None: the rule's position

    @classmethod
    def build(
        cls,
        id: str,
        carrier_id: str,
        *,
        fallback: Sequence[str] = (),
        countries: Iterable[str] = (),
        regions: Iterable[str] = (),
        channels: Iterable[str] = (),
        services: Iterable[str] = (),
        **limits: Any,
    ) -> CarrierRule:
        return cls(
            id,
            carrier_id,
            tuple(fallback),
            _norm(countries),
            _norm(regions),
            frozenset(channels),
            _norm(services),
            **limits,
        )

    def mismatches(self, f: ParcelFacts) -> list[str]:
        """Why this rule does not apply to the parcel (empty: it applies)."""
        out: list[str] = []
        if self.countries and f.country.casefold() not in self.countries:
            out.append(f"country {f.country or '(unknown)'} not in {sorted(self.countries)}")
        if self.regions and f.region.strip().casefold() not in self.regions:
            out.append(f"region {f.region or '(unknown)'} not in {sorted(self.regions)}")
        if self.channels and f.channel_id not in self.channels:
            out.append(f"channel {f.channel_id} not in {sorted(self.channels)}")
        if self.services and f.service.casefold() not in self.services:
            out.append(f"service {f.service or '(none)'} not in {sorted(self.services)}")
        if self.min_weight_kg is not None or self.max_weight_kg is not None:
            w = f.weight_kg
            if w is None:
                out.append("weight unknown (give weight_kg)")
            elif self.min_weight_kg is not None and w < self.min_weight_kg:
                out.append(f"weight {w} kg < {self.min_weight_kg} kg")
            elif self.max_weight_kg is not None and w > self.max_weight_kg:
                out.append(f"weight {w} kg > {self.max_weight_kg} kg")
        if self.min_total is not None or self.max_total is not None:
            if self.currency is not None and self.currency != f.currency:
                out.append(f"currency {f.currency} is not {self.currency}")
            elif self.min_total is not None and f.total < self.min_total:
                out.append(f"parcel value {f.total} < {self.min_total}")
            elif self.max_total is not None and f.total >= self.max_total:
                out.append(f"parcel value {f.total} >= {self.max_total}")
        return out

    def conditions(self) -> str:
        parts: list[str] = []
        for name, values in (
            ("country", self.countries),
            ("region", self.regions),
            ("channel", self.channels),
            ("service", self.services),
        ):
            if values:
                parts.append(f"{name} in {sorted(values)}")
        if self.min_weight_kg is not None:
            parts.append(f"weight >= {self.min_weight_kg} kg")
        if self.max_weight_kg is not None:
            parts.append(f"weight <= {self.max_weight_kg} kg")
        cur = f" {self.currency}" if self.currency else ""
        if self.min_total is not None:
            parts.append(f"parcel value >= {self.min_total}{cur}")
        if self.max_total is not None:
            parts.append(f"parcel value < {self.max_total}{cur}")
        return ", ".join(parts) or "any order"


@dataclass(frozen=True, slots=True)
class CarrierChoice:
    """The carriers to try, in order, and the reasons."""

    carriers: tuple[str, ...]
    rule_id: str | None  # None: chosen by the caller, or no rules configured
    explanation: tuple[str, ...] = field(default=())
    overridden: bool = False

    def to_dict(self, booked_with: str | None = None) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "candidates": list(self.carriers),
            "overridden": self.overridden,
            "booked_with": booked_with,
            "explanation": list(self.explanation),
        }


def explicit(carrier_id: str) -> CarrierChoice:
    return CarrierChoice((carrier_id,), None, (f"carrier {carrier_id} named in the request",))


def ranked(rules: Sequence[CarrierRule]) -> list[tuple[int, CarrierRule]]:
    """The rules in the order they are considered: (priority, cost, position)."""
    keyed = [
        (
            (
                r.priority if r.priority is not None else i,
                0 if r.cost is not None else 1,
                r.cost or Decimal(0),
                i,
            ),
            r,
        )
        for i, r in enumerate(rules)
    ]
    return [(k[0], r) for k, r in sorted(keyed, key=lambda kr: kr[0])]


def choose(
    rules: Sequence[CarrierRule],
    facts: ParcelFacts,
    *,
    available: Iterable[str],
    overrides: Mapping[str, str] | None = None,
) -> CarrierChoice:
    """The carriers to try for this parcel; raises `NoCarrierMatched` if none applies."""
    overrides = overrides or {}
    known = list(available)
    if not rules:
        if not known:
            raise NoCarrierMatched("no carrier is configured", ())
        return CarrierChoice(
            (known[0],), None, (f"no carrier rules configured: first carrier {known[0]}",)
        )
    why_not: list[str] = []
    for _, rule in ranked(rules):
        misses = rule.mismatches(facts)
        if misses:
            why_not.append(f"rule {rule.id}: " + "; ".join(misses))
            continue
        primary = overrides.get(rule.id, rule.carrier_id)
        said = [*why_not, f"rule {rule.id} matches ({rule.conditions()})"]
        if primary != rule.carrier_id:
            said.append(f"carrier overridden at run time: {rule.carrier_id} -> {primary}")
        if rule.cost is not None:
            said.append(f"rule cost {rule.cost}")
        order: list[str] = []
        for c in (primary, *rule.fallback):
            if c in order:
                continue
            if c not in known:
                said.append(f"carrier {c} is not configured: skipped")
                continue
            order.append(c)
        if not order:
            raise NoCarrierMatched(f"rule {rule.id} names no configured carrier", said)
        said.append(f"try {' then '.join(order)}")
        return CarrierChoice(tuple(order), rule.id, tuple(said), primary != rule.carrier_id)
    raise NoCarrierMatched(
        f"no carrier rule matches order {facts.order_id}: " + " | ".join(why_not), why_not
    )
