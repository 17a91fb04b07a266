"""Routing: which location(s) fulfil an order, and why.

A decision is made in two passes over the configured locations: *filters* exclude a
location for this order (channel restriction, capacity, no stock of anything ordered),
then *scorers* rank the rest (priority, distance or region, cost); lower is better. The
allocation then prefers one location serving the whole order, splits only when the policy
allows it (and never into more than `max_shipments`), and backorders what is left only
when backorders are allowed or the SKU is a preorder. Everything is recorded in an
`Explanation` ("why this warehouse"), and the same inputs always give the same decision.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

from ordersync.domain.errors import DomainError
from ordersync.domain.inventory import Location, RoutingRecord


class RoutingError(DomainError):
    code = "routing_error"


@dataclass(frozen=True, slots=True)
class Coordinates:
    lat: float
    lon: float

    def km_to(self, other: Coordinates) -> float:
        """Great-circle distance (haversine), in kilometres."""
        p1, p2 = math.radians(self.lat), math.radians(other.lat)
        dp, dl = p2 - p1, math.radians(other.lon - self.lon)
        a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True, slots=True)
class Site:
    """A location as routing sees it: the inventory `Location` plus where it is and its cost."""

    location: Location
    coordinates: Coordinates | None = None
    cost_per_unit: Decimal = Decimal(0)
    cost_per_shipment: Decimal = Decimal(0)

    @property
    def id(self) -> str:
        return self.location.id


@dataclass(frozen=True, slots=True)
class RoutingLine:
    sku: str
    quantity: int

    def __post_init__(self) -> None:
        if self.quantity <= 0:
            raise RoutingError(f"{self.sku}: quantity must be positive, got {self.quantity}")


@dataclass(frozen=True, slots=True)
class Destination:
    region: str | None = None
    coordinates: Coordinates | None = None


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    order_id: str
    channel_id: str
    lines: tuple[RoutingLine, ...]
    destination: Destination = Destination()


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    allow_split: bool = True
    max_shipments: int = 3
    prefer_single_location: bool = True
    backorder_allowed: bool = False
    preorder_skus: frozenset[str] = frozenset()
    # channel id -> the locations allowed to fulfil its orders; a channel absent: all.
    channel_locations: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_shipments < 1:
            raise RoutingError("max_shipments must be at least 1")


# (sku, location id) -> units available to promise.
Availability = Mapping[tuple[str, str], int]


@dataclass(frozen=True, slots=True)
class RoutingContext:
    """What filters and scorers may look at for one order."""

    request: RoutingRequest
    policy: RoutingPolicy
    stock: Availability
    load: Mapping[str, int]  # shipments already assigned to each location (capacity use)

    @property
    def units(self) -> int:
        return sum(line.quantity for line in self.request.lines)


class Filter(Protocol):
    @property
    def name(self) -> str: ...

    def excludes(self, site: Site, ctx: RoutingContext) -> str | None:
        """Why this site cannot take the order, or None when it may."""


class Scorer(Protocol):
    @property
    def name(self) -> str: ...

    def score(self, site: Site, ctx: RoutingContext) -> float:
        """This site's penalty for the order: lower is better."""


@dataclass(frozen=True, slots=True)
class ChannelRestriction:
    name: str = "channel_restriction"

    def excludes(self, site: Site, ctx: RoutingContext) -> str | None:
        allowed = ctx.policy.channel_locations.get(ctx.request.channel_id)
        if allowed is not None and site.id not in allowed:
            return f"channel {ctx.request.channel_id} may not ship from {site.id}"
        return None


@dataclass(frozen=True, slots=True)
class CapacityLimit:
    name: str = "capacity"

    def excludes(self, site: Site, ctx: RoutingContext) -> str | None:
        cap = site.location.capacity
        used = ctx.load.get(site.id, 0)
        if cap is not None and used >= cap:
            return f"at capacity ({used} of {cap} shipments)"
        return None


@dataclass(frozen=True, slots=True)
class HasStock:
    name: str = "availability"

    def excludes(self, site: Site, ctx: RoutingContext) -> str | None:
        if any(ctx.stock.get((ln.sku, site.id), 0) > 0 for ln in ctx.request.lines):
            return None
        return "no stock of any ordered SKU"


@dataclass(frozen=True, slots=True)
class PriorityScore:
    weight: float = 10.0
    name: str = "priority"

    def score(self, site: Site, ctx: RoutingContext) -> float:
        return self.weight * site.location.priority


@dataclass(frozen=True, slots=True)
class DistanceScore:
    """Kilometres when both ends have coordinates, otherwise a penalty for another region."""

    per_km: float = 0.01
    other_region: float = 25.0
    name: str = "distance"

    def score(self, site: Site, ctx: RoutingContext) -> float:
        dest = ctx.request.destination
        if dest.coordinates is not None and site.coordinates is not None:
            return self.per_km * site.coordinates.km_to(dest.coordinates)
        if dest.region is None or dest.region == site.location.region:
            return 0.0
        return self.other_region


@dataclass(frozen=True, slots=True)
class CostScore:
    """Shipping the whole order from here: per-shipment cost plus per-unit cost."""

    weight: float = 1.0
    name: str = "cost"

    def score(self, site: Site, ctx: RoutingContext) -> float:
        cost = site.cost_per_shipment + site.cost_per_unit * ctx.units
        return self.weight * float(cost)


DEFAULT_FILTERS: tuple[Filter, ...] = (ChannelRestriction(), CapacityLimit(), HasStock())
DEFAULT_SCORERS: tuple[Scorer, ...] = (PriorityScore(), DistanceScore(), CostScore())


# ---- the decision -----------------------------------------------------------------------


class RoutingOutcome(StrEnum):
    ROUTED = "routed"  # every unit allocated
    BACKORDERED = "backordered"  # some units wait for stock (backorder or preorder)
    UNROUTABLE = "unroutable"  # a shortage and backorders are not allowed: nothing allocated


@dataclass(frozen=True, slots=True)
class Allocation:
    location_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class LineDecision:
    sku: str
    quantity: int
    allocations: tuple[Allocation, ...]
    backordered: int = 0
    preorder: bool = False
    short: int = 0  # units no location could serve (only when UNROUTABLE)

    @property
    def allocated(self) -> int:
        return sum(a.quantity for a in self.allocations)


@dataclass(frozen=True, slots=True)
class Candidate:
    location_id: str
    excluded_by: tuple[str, ...]  # "rule: reason", empty when the location stayed in
    scores: tuple[tuple[str, float], ...] = ()
    covers_whole_order: bool = False
    chosen: bool = False

    @property
    def total(self) -> float:
        return sum(v for _, v in self.scores)


@dataclass(frozen=True, slots=True)
class Explanation:
    candidates: tuple[Candidate, ...]
    steps: tuple[str, ...]

    def text(self) -> str:
        """Why these locations, for people: candidates, exclusions, scores, then the steps."""
        out = []
        for c in self.candidates:
            if c.excluded_by:
                out.append(f"{c.location_id}: excluded ({'; '.join(c.excluded_by)})")
                continue
            parts = " + ".join(f"{n} {v:g}" for n, v in c.scores)
            mark = "chosen" if c.chosen else "not chosen"
            whole = ", can serve the whole order" if c.covers_whole_order else ""
            out.append(f"{c.location_id}: score {c.total:g} ({parts}){whole}; {mark}")
        return "\n".join([*out, *self.steps])


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    order_id: str
    outcome: RoutingOutcome
    lines: tuple[LineDecision, ...]
    explanation: Explanation

    @property
    def locations(self) -> tuple[str, ...]:
        """The locations shipping something, in the order they were chosen."""
        seen: dict[str, None] = {}
        for line in self.lines:
            for a in line.allocations:
                seen.setdefault(a.location_id, None)
        return tuple(seen)

    @property
    def shipments(self) -> int:
        return len(self.locations)

    @property
    def backordered(self) -> dict[str, int]:
        return {ln.sku: ln.backordered for ln in self.lines if ln.backordered}

    def as_dict(self) -> dict[str, Any]:
        """Plain data to store with the order (the 'why this warehouse' record)."""
        return {
            "order_id": self.order_id,
            "outcome": self.outcome.value,
            "lines": [
                {
                    "sku": ln.sku,
                    "quantity": ln.quantity,
                    "allocations": [
                        {"location_id": a.location_id, "quantity": a.quantity}
                        for a in ln.allocations
                    ],
                    "backordered": ln.backordered,
                    "preorder": ln.preorder,
                    "short": ln.short,
                }
                for ln in self.lines
            ],
            "candidates": [
                {
                    "location_id": c.location_id,
                    "excluded_by": list(c.excluded_by),
                    "scores": dict(c.scores),
                    "total": c.total,
                    "covers_whole_order": c.covers_whole_order,
                    "chosen": c.chosen,
                }
                for c in self.explanation.candidates
            ],
            "steps": list(self.explanation.steps),
        }


# ---- the engine -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Router:
    filters: tuple[Filter, ...] = DEFAULT_FILTERS
    scorers: tuple[Scorer, ...] = DEFAULT_SCORERS

    def route(
        self,
        request: RoutingRequest,
        sites: Sequence[Site],
        stock: Availability,
        policy: RoutingPolicy = RoutingPolicy(),
        load: Mapping[str, int] | None = None,
    ) -> RoutingDecision:
        ctx = RoutingContext(request, policy, stock, load or {})
        lines = _merged_lines(request.lines)
        reports: dict[str, Candidate] = {}
        ranked: list[tuple[float, str, Site]] = []
        for site in sorted(sites, key=lambda s: s.id):
            excluded = tuple(
                f"{f.name}: {why}" for f in self.filters if (why := f.excludes(site, ctx))
            )
            if excluded:
                reports[site.id] = Candidate(site.id, excluded)
                continue
            scores = tuple((s.name, round(s.score(site, ctx), 6)) for s in self.scorers)
            covers = all(
                stock.get((sku, site.id), 0) >= q
                for sku, q in lines.items()
                if sku not in policy.preorder_skus
            )
            cand = Candidate(site.id, (), scores, covers)
            reports[site.id] = cand
            ranked.append((cand.total, site.id, site))
        ranked.sort(key=lambda t: (t[0], t[1]))
        order = [site.id for _, _, site in ranked]
        steps: list[str] = []

        # Units each line still needs from somewhere (preorder lines take stock if any).
        plan: dict[str, dict[str, int]] = {sku: {} for sku in lines}
        whole = [loc for loc in order if reports[loc].covers_whole_order]
        if whole and (policy.prefer_single_location or not policy.allow_split):
            chosen = [whole[0]]
            steps.append(
                f"{whole[0]} can serve the whole order and scores best of {len(whole)}"
                " such location(s): one shipment"
            )
            for sku, q in lines.items():
                plan[sku][whole[0]] = min(q, stock.get((sku, whole[0]), 0))
        elif policy.allow_split:
            if policy.prefer_single_location:
                chosen = _split(lines, order, stock, policy.max_shipments, plan)
            else:
                chosen = _per_line(lines, order, stock, policy.max_shipments, plan)
                steps.append("one location not preferred: each line from its best-scoring location")
            steps.append(
                f"split over {len(chosen)} location(s) (at most {policy.max_shipments}):"
                f" {', '.join(chosen) or 'none'}"
            )
        else:
            best = _best_partial(lines, order, stock)
            chosen = [best] if best else []
            if best:
                for sku, q in lines.items():
                    take = min(q, stock.get((sku, best), 0))
                    if take:
                        plan[sku][best] = take
            steps.append(
                "no single location can serve the whole order and splitting is not allowed"
                + (f"; {best} serves the most units" if best else "")
            )

        decided: list[LineDecision] = []
        missing = False
        for sku, q in lines.items():
            got = sum(plan[sku].values())
            rest = q - got
            pre = sku in policy.preorder_skus
            if rest and not (pre or policy.backorder_allowed):
                missing = True
            allocs = tuple(Allocation(loc, n) for loc, n in plan[sku].items() if n)
            decided.append(LineDecision(sku, q, allocs, rest, pre))
        if missing:
            short_skus = [d.sku for d in decided if d.backordered and not d.preorder]
            steps.append(
                f"short of {', '.join(short_skus)} and backorders are not allowed:"
                " nothing allocated (stock_shortage)"
            )
            decided = [
                LineDecision(
                    d.sku,
                    d.quantity,
                    (),
                    0,
                    d.preorder,
                    d.backordered if not d.preorder else 0,
                )
                for d in decided
            ]
            chosen = []
            outcome = RoutingOutcome.UNROUTABLE
        elif any(d.backordered for d in decided):
            for d in decided:
                if d.backordered:
                    kind = "preorder" if d.preorder else "backorder"
                    steps.append(f"{d.sku}: {d.backordered} unit(s) on {kind}")
            outcome = RoutingOutcome.BACKORDERED
        else:
            outcome = RoutingOutcome.ROUTED
        used = {a.location_id for d in decided for a in d.allocations}
        cands = tuple(
            Candidate(c.location_id, c.excluded_by, c.scores, c.covers_whole_order, True)
            if c.location_id in used
            else c
            for c in reports.values()
        )
        return RoutingDecision(
            request.order_id, outcome, tuple(decided), Explanation(cands, tuple(steps))
        )


def _merged_lines(lines: Iterable[RoutingLine]) -> dict[str, int]:
    """Quantity per SKU, in SKU order (two lines of one SKU route as one)."""
    out: dict[str, int] = {}
    for line in lines:
        out[line.sku] = out.get(line.sku, 0) + line.quantity
    return dict(sorted(out.items()))


def _coverable(
    lines: Mapping[str, int], need: Mapping[str, int], loc: str, stock: Availability
) -> int:
    return sum(min(need[sku], stock.get((sku, loc), 0)) for sku in lines)


def _split(
    lines: Mapping[str, int],
    order: Sequence[str],
    stock: Availability,
    max_shipments: int,
    plan: dict[str, dict[str, int]],
) -> list[str]:
    """Greedy: open the location covering most remaining units (best score on a tie)."""
    need = dict(lines)
    chosen: list[str] = []
    rank = {loc: i for i, loc in enumerate(order)}
    while any(need.values()) and len(chosen) < max_shipments:
        best = max(
            (loc for loc in order if loc not in chosen),
            key=lambda loc: (_coverable(lines, need, loc, stock), -rank[loc]),
            default=None,
        )
        if best is None or _coverable(lines, need, best, stock) == 0:
            break
        chosen.append(best)
        for sku in lines:
            take = min(need[sku], stock.get((sku, best), 0))
            if take:
                plan[sku][best] = take
                need[sku] -= take
    return chosen


def _per_line(
    lines: Mapping[str, int],
    order: Sequence[str],
    stock: Availability,
    max_shipments: int,
    plan: dict[str, dict[str, int]],
) -> list[str]:
    """Each line from the best-scoring locations that have it, within `max_shipments`."""
    chosen: list[str] = []
    for sku, q in lines.items():
        need = q
        for loc in order:
            if need == 0:
                break
            have = stock.get((sku, loc), 0)
            if have <= 0 or (loc not in chosen and len(chosen) >= max_shipments):
                continue
            take = min(need, have)
            plan[sku][loc] = take
            need -= take
            if loc not in chosen:
                chosen.append(loc)
    return chosen


def _best_partial(
    lines: Mapping[str, int], order: Sequence[str], stock: Availability
) -> str | None:
    best, most = None, 0
    for loc in order:  # best score first, so a tie keeps the better-scored location
        n = _coverable(lines, lines, loc, stock)
        if n > most:
            best, most = loc, n
    return best


def route(
    request: RoutingRequest,
    sites: Sequence[Site],
    stock: Availability,
    policy: RoutingPolicy = RoutingPolicy(),
    load: Mapping[str, int] | None = None,
) -> RoutingDecision:
    """Route with the default rules (see `Router` to compose others)."""
    return Router().route(request, sites, stock, policy, load)


# ---- wiring: what the hub configures, and what it stores ----------------------------------


@dataclass(frozen=True, slots=True)
class RoutingSetup:
    """The configured routing: rules, where each location is, and how addresses map to
    regions (keys `"CC-REGION"` then `"CC"`; an address whose country is not mapped has its
    country code as region, so a location in region `"NL"` is local to Dutch addresses)."""

    policy: RoutingPolicy = RoutingPolicy()
    sites: Mapping[str, Site] = field(default_factory=dict)  # location id -> coordinates, costs
    regions: Mapping[str, str] = field(default_factory=dict)
    router: Router = Router()
    # Decisions by the shape of their inputs (see `decide`), so a flash sale of one SKU
    # routes once, not once per buyer. Bounded; emptied when full.
    _memo: dict[Any, tuple[RoutingDecision, Mapping[str, Any]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def decide(
        self,
        request: RoutingRequest,
        locations: Mapping[str, Location],
        stock: Availability,
        load: Mapping[str, int] | None,
        at: datetime,
    ) -> tuple[RoutingDecision, RoutingRecord]:
        """Route with these rules, and the record to store with the order.

        When every location has either none or all of each SKU the order wants, the
        decision depends only on which do (not on how much), so it is reused for every
        order of that shape: same inputs, same decision, explanation included.
        """
        key = _shape(request, locations, stock, load)
        hit = self._memo.get(key) if key is not None else None
        if hit is None:
            decision = self.router.route(
                request, self.sites_for(locations), stock, self.policy, load
            )
            hit = (decision, explanation_of(decision))
            if key is not None:
                if len(self._memo) >= _MEMO_SIZE:
                    self._memo.clear()
                self._memo[key] = hit
        else:
            decision = dataclasses.replace(hit[0], order_id=request.order_id)
        return decision, RoutingRecord(
            request.order_id,
            decision.outcome.value,
            decision.locations,
            decision.backordered,
            hit[1],
            at,
            _short(decision),
        )

    def sites_for(self, locations: Mapping[str, Location]) -> list[Site]:
        return [self.sites.get(i) or Site(loc) for i, loc in locations.items()]

    def destination(self, country_code: str | None, region: str | None) -> Destination:
        if not country_code:
            return Destination()
        cc = country_code.upper()
        if region and (mapped := self.regions.get(f"{cc}-{region.upper()}")) is not None:
            return Destination(mapped)
        return Destination(self.regions.get(cc, cc))

    def uses_capacity(self, locations: Mapping[str, Location]) -> bool:
        return any(loc.capacity is not None for loc in locations.values())


_MEMO_SIZE = 1024


def _shape(
    request: RoutingRequest,
    locations: Mapping[str, Location],
    stock: Availability,
    load: Mapping[str, int] | None,
) -> Any:
    """The inputs a decision depends on when no location holds part of a SKU's quantity,
    or None when one does (then how much it holds matters, and nothing is reused)."""
    need = _merged_lines(request.lines)
    held: list[bool] = []
    for loc in locations:
        for sku, q in need.items():
            have = stock.get((sku, loc), 0)
            if have < 0 or 0 < have < q:
                return None
            held.append(have > 0)
    used = tuple(sorted(load.items())) if load else ()
    return (
        tuple(locations.values()),
        request.channel_id,
        request.destination,
        tuple(need.items()),
        tuple(held),
        used,
    )


def explanation_of(decision: RoutingDecision) -> dict[str, Any]:
    """The explanation as stored (the order id is its key): decision, candidates, text."""
    explanation = decision.as_dict()
    del explanation["order_id"]
    explanation["text"] = decision.explanation.text()
    return explanation


def record_of(decision: RoutingDecision, at: datetime) -> RoutingRecord:
    """What is stored with the order: the decision, and its explanation as text too."""
    return RoutingRecord(
        decision.order_id,
        decision.outcome.value,
        decision.locations,
        decision.backordered,
        explanation_of(decision),
        at,
        _short(decision),
    )


def _short(decision: RoutingDecision) -> dict[str, int]:
    return {ln.sku: ln.quantity for ln in decision.lines if ln.short}


# ---- dry run ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DryRunSummary:
    orders: int
    single_location: int
    split: int
    backordered: int
    unroutable: int
    shipments_per_location: dict[str, int]
    units_per_location: dict[str, int]
    decisions: tuple[RoutingDecision, ...]

    @property
    def share_single_location(self) -> float:
        return self.single_location / self.orders if self.orders else 0.0


def dry_run(
    orders: Iterable[RoutingRequest],
    sites: Sequence[Site],
    stock: Availability,
    policy: RoutingPolicy = RoutingPolicy(),
    *,
    router: Router | None = None,
    load: Mapping[str, int] | None = None,
) -> DryRunSummary:
    """Route past orders in sequence (each consumes stock and capacity) and summarize.

    Nothing outside is changed: stock and load are copied first.
    """
    router = router or Router()
    left: dict[tuple[str, str], int] = dict(stock)
    used: dict[str, int] = dict(load or {})
    units: dict[str, int] = {}
    decisions = []
    single = split = back = unroutable = 0
    for req in orders:
        d = router.route(req, sites, left, policy, used)
        decisions.append(d)
        for line in d.lines:
            for a in line.allocations:
                left[(line.sku, a.location_id)] -= a.quantity
                units[a.location_id] = units.get(a.location_id, 0) + a.quantity
        for loc in d.locations:
            used[loc] = used.get(loc, 0) + 1
        if d.outcome is RoutingOutcome.UNROUTABLE:
            unroutable += 1
        elif d.shipments == 1:
            single += 1
        elif d.shipments > 1:
            split += 1
        if d.outcome is RoutingOutcome.BACKORDERED:
            back += 1
    base = load or {}
    shipments = {loc: n - base.get(loc, 0) for loc, n in sorted(used.items())}
    return DryRunSummary(
        len(decisions),
        single,
        split,
        back,
        unroutable,
        {loc: n for loc, n in shipments.items() if n},
        dict(sorted(units.items())),
        tuple(decisions),
    )
