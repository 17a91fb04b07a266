"""What each sales channel is told it can sell: available-to-sell (ATS) per channel and SKU.

A `PublishingRule` turns the sellable stock of a pool of locations into one channel's ATS:

    sellable = sum over the pool's fresh locations of max(0, available - safety_stock)
    base     = max(0, sellable - rule.safety_stock)
    raw      = base x ratio + fixed            (fixed may be negative)
    ATS      = round down, then max(floor), then min(cap), never below 0, never above base

Units are integers and fractions are always rounded down, never up: publishing 7 when 7.9
could be sold is safe, publishing 8 is an oversell. Ratios are `Fraction`s so 0.3 x 10 is
exactly 3.

**Exclusive and shared promises.** A rule is either `EXCLUSIVE` or `SHARED`:

* Exclusive channels partition the pool: their ratios must sum to at most 1 (checked when the
  `StockPool` is built), and whatever a fixed amount or a floor adds, the sum of their ATS
  never exceeds `sellable`. Exclusive channels are served in (`priority`, channel id) order,
  each capped at what the earlier ones left (`Publication.clipped` says so).
* Shared channels all draw on what the exclusive channels left over. Their ratios may sum
  above 1: several channels then advertise the same units and the first orders win; the
  reservation layer (ADR 6) refuses the rest as `stock.shortage`. That is an accepted
  over-promise of *the shared remainder only*: an exclusive channel's units are never shown
  to a shared one.

**Stale feeds.** A location whose last stock feed for the SKU is older than
`StockPool.max_feed_age` (or never came) counts as 0: if every location is stale, every
channel is published 0 for that SKU.

**Low stock.** `LowStockMonitor` emits one alert when a channel's ATS falls below the rule's
`low_stock_below`, and stays quiet until the ATS rises above the threshold again (strictly
above: equal to the threshold neither alerts nor re-arms, a one-unit hysteresis band).

Stdlib only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from fractions import Fraction

from ordersync.domain.inventory import Location, StockLevel


class PromiseKind(StrEnum):
    EXCLUSIVE = "exclusive"  # units set aside for this channel alone
    SHARED = "shared"  # units every shared channel may advertise at once


@dataclass(frozen=True, slots=True)
class PublishingRule:
    channel_id: str
    ratio: Fraction = Fraction(1)  # share of the base, 0..1
    fixed: int = 0  # added after the ratio; negative holds units back
    floor: int = 0  # publish at least this (but never more than the base)
    cap: int | None = None  # publish at most this
    safety_stock: int = 0  # channel-level buffer on top of each location's safety stock
    kind: PromiseKind = PromiseKind.SHARED
    priority: int = 0  # exclusive channels with lower priority are served first
    low_stock_below: int | None = None  # alert threshold; None: no alert

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"{self.channel_id}: ratio {self.ratio} is not within 0..1")
        if self.floor < 0 or self.safety_stock < 0:
            raise ValueError(f"{self.channel_id}: floor and safety_stock cannot be negative")
        if self.cap is not None and self.cap < self.floor:
            raise ValueError(f"{self.channel_id}: cap {self.cap} is below floor {self.floor}")

    def quantity(self, sellable: int) -> int:
        """This rule's ATS from `sellable` units, before any exclusive clipping."""
        base = max(0, sellable - self.safety_stock)
        raw = math.floor(base * self.ratio) + self.fixed
        raw = max(raw, self.floor)
        if self.cap is not None:
            raw = min(raw, self.cap)
        return max(0, min(raw, base))


@dataclass(frozen=True, slots=True)
class StockPool:
    """Locations whose stock a set of channels sells, and the rules for those channels."""

    id: str
    locations: tuple[Location, ...]
    rules: tuple[PublishingRule, ...]
    max_feed_age: timedelta = timedelta(minutes=15)

    def __post_init__(self) -> None:
        ids = [r.channel_id for r in self.rules]
        if len(ids) != len(set(ids)):
            raise ValueError(f"pool {self.id}: a channel has two rules")
        exclusive = sum(
            (r.ratio for r in self.rules if r.kind is PromiseKind.EXCLUSIVE), Fraction(0)
        )
        if exclusive > 1:
            raise ValueError(
                f"pool {self.id}: exclusive ratios sum to {exclusive}, above 1;"
                " only shared promises may overlap"
            )

    @property
    def location_ids(self) -> frozenset[str]:
        return frozenset(loc.id for loc in self.locations)


@dataclass(frozen=True, slots=True)
class Publication:
    channel_id: str
    sku: str
    quantity: int
    stale: bool = False  # every location's feed was too old (or missing): published 0
    clipped: bool = False  # an exclusive promise reduced to what earlier ones left


def is_stale(fed_at: datetime | None, now: datetime, max_age: timedelta) -> bool:
    return fed_at is None or now - fed_at > max_age


def sellable(
    pool: StockPool,
    levels: Iterable[StockLevel],
    fed_at: Mapping[str, datetime],
    now: datetime,
) -> tuple[int, bool]:
    """Sellable units of one SKU in the pool from fresh locations, and whether all were stale.

    `fed_at` maps a location id to when its stock feed for this SKU last arrived.
    """
    in_pool = pool.location_ids
    total, fresh = 0, 0
    for level in levels:
        if level.location_id not in in_pool:
            continue
        if is_stale(fed_at.get(level.location_id), now, pool.max_feed_age):
            continue
        fresh += 1
        total += max(0, level.available - level.safety_stock)
    return total, fresh == 0


def publish(
    pool: StockPool,
    sku: str,
    levels: Iterable[StockLevel],
    fed_at: Mapping[str, datetime],
    now: datetime,
) -> dict[str, Publication]:
    """Every channel's ATS for `sku` in this pool, keyed by channel id."""
    total, all_stale = sellable(pool, levels, fed_at, now)
    out: dict[str, Publication] = {}
    if all_stale:
        for rule in pool.rules:
            out[rule.channel_id] = Publication(rule.channel_id, sku, 0, stale=True)
        return out
    exclusive = sorted(
        (r for r in pool.rules if r.kind is PromiseKind.EXCLUSIVE),
        key=lambda r: (r.priority, r.channel_id),
    )
    remaining = total
    for rule in exclusive:
        wanted = rule.quantity(total)
        given = min(wanted, remaining)
        remaining -= given
        out[rule.channel_id] = Publication(rule.channel_id, sku, given, clipped=given < wanted)
    for rule in pool.rules:
        if rule.kind is PromiseKind.SHARED:
            out[rule.channel_id] = Publication(rule.channel_id, sku, rule.quantity(remaining))
    return out


# ---- low-stock alerts ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LowStockAlert:
    channel_id: str
    sku: str
    quantity: int
    threshold: int
    at: datetime


@dataclass
class LowStockMonitor:
    """One alert per downward crossing of a channel's threshold, re-armed above it."""

    _fired: set[tuple[str, str]] = field(default_factory=set)

    def observe(
        self, rule: PublishingRule, publication: Publication, at: datetime
    ) -> LowStockAlert | None:
        threshold = rule.low_stock_below
        if threshold is None:
            return None
        key = (publication.channel_id, publication.sku)
        qty = publication.quantity
        if qty < threshold:
            if key in self._fired:
                return None
            self._fired.add(key)
            return LowStockAlert(publication.channel_id, publication.sku, qty, threshold, at)
        if qty > threshold:
            self._fired.discard(key)
        return None

    def observe_all(
        self, pool: StockPool, publications: Mapping[str, Publication], at: datetime
    ) -> list[LowStockAlert]:
        alerts = []
        for rule in pool.rules:
            pub = publications.get(rule.channel_id)
            if pub is not None and (alert := self.observe(rule, pub, at)) is not None:
                alerts.append(alert)
        return alerts
