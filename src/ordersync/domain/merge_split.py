"""Shipment groups: orders merged into one parcel, or one order split into several.

A `ShipmentGroup` is what leaves one location as one shipment: items (order, SKU,
quantity). Every order starts as its own group. Merging joins the groups of one buyer to
one address placed within a window; splitting cuts a group by routed location or by what
is available now. Both are reversible: a merged or split group remembers what it was made
from (`origin`), and `unmerge` / `join` give exactly that back. Each step returns history
entries, one per order touched, for the order's history and the outbox.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from ordersync.domain.errors import DomainError
from ordersync.domain.holds import address_key
from ordersync.domain.order_status import OrderStatus
from ordersync.domain.orders import Order
from ordersync.domain.routing import RoutingDecision


class GroupingError(DomainError):
    code = "grouping_error"


@dataclass(frozen=True, slots=True)
class GroupItem:
    order_id: str
    sku: str
    quantity: int


class Origin(StrEnum):
    ORDER = "order"  # one order, as placed
    MERGE = "merge"
    SPLIT = "split"


@dataclass(frozen=True, slots=True)
class ShipmentGroup:
    id: str
    items: tuple[GroupItem, ...]
    address_key: str | None
    location_id: str | None = None  # None: not routed, or waiting for stock
    kind: Origin = Origin.ORDER
    origin: tuple[ShipmentGroup, ...] = field(default=(), compare=False)

    @property
    def order_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i.order_id for i in self.items))

    def quantities(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for i in self.items:
            out[(i.order_id, i.sku)] = out.get((i.order_id, i.sku), 0) + i.quantity
        return out


class GroupingEventType(StrEnum):
    MERGED = "shipment_group.merged"
    UNMERGED = "shipment_group.unmerged"
    SPLIT = "shipment_group.split"
    JOINED = "shipment_group.joined"


@dataclass(frozen=True, slots=True)
class GroupingEntry:
    """One line of an order's history (and an outbox event) about its shipment groups."""

    type: GroupingEventType
    order_id: str
    group_ids: tuple[str, ...]  # the groups the order is in afterwards
    description: str
    at: datetime


@dataclass(frozen=True, slots=True)
class GroupingResult:
    groups: tuple[ShipmentGroup, ...]
    history: tuple[GroupingEntry, ...]


def order_group(order: Order, group_id: str | None = None) -> ShipmentGroup:
    """An order as placed: one group with all its lines (lines without a SKU are skipped)."""
    items = tuple(
        GroupItem(order.id, line.sku, line.quantity)
        for line in order.lines
        if line.sku and line.quantity > 0
    )
    return ShipmentGroup(group_id or f"grp_{order.id}", items, address_key(order.shipping_address))


# ---- merge ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MergePolicy:
    window: timedelta = timedelta(hours=2)
    same_channel: bool = True
    statuses: frozenset[OrderStatus] = frozenset(
        {OrderStatus.PENDING, OrderStatus.PAID, OrderStatus.ALLOCATED}
    )


def buyer_key(order: Order) -> str | None:
    c = order.customer
    if c is None:
        return None
    if c.external_id:
        return f"id:{c.external_id}"
    if c.email:
        return f"email:{c.email.strip().lower()}"
    return None


def mergeable(orders: Sequence[Order], policy: MergePolicy = MergePolicy()) -> list[list[Order]]:
    """Sets of two or more orders of one buyer to one address, each within the window.

    A set starts at its earliest order and takes every later order placed no more than
    `window` after it; the next order starts a new set. Deterministic: by time, then id.
    """
    buckets: dict[tuple[str, str, str], list[Order]] = {}
    for o in orders:
        buyer, addr = buyer_key(o), address_key(o.shipping_address)
        if buyer is None or addr is None or o.status not in policy.statuses:
            continue
        channel = o.channel_id if policy.same_channel else "*"
        buckets.setdefault((channel, buyer, addr), []).append(o)
    sets: list[list[Order]] = []
    for key in sorted(buckets):
        run: list[Order] = []
        for o in sorted(buckets[key], key=lambda o: (o.placed_at or o.created_at, o.id)):
            placed = o.placed_at or o.created_at
            if run and placed - (run[0].placed_at or run[0].created_at) > policy.window:
                if len(run) > 1:
                    sets.append(run)
                run = []
            run.append(o)
        if len(run) > 1:
            sets.append(run)
    return sets


def merge(groups: Sequence[ShipmentGroup], group_id: str, *, at: datetime) -> GroupingResult:
    """One shipment for all of them (same address, none already shipping from elsewhere)."""
    if len(groups) < 2:
        raise GroupingError("merging needs at least two shipment groups")
    addresses = {g.address_key for g in groups}
    if len(addresses) != 1 or None in addresses:
        raise GroupingError("only groups going to one known address can be merged")
    locations = {g.location_id for g in groups if g.location_id is not None}
    if len(locations) > 1:
        raise GroupingError(f"groups ship from different locations: {sorted(locations)}")
    merged = ShipmentGroup(
        group_id,
        tuple(i for g in groups for i in g.items),
        groups[0].address_key,
        next(iter(locations), None),
        Origin.MERGE,
        tuple(groups),
    )
    orders = merged.order_ids
    text = f"merged orders {', '.join(orders)} into one shipment ({group_id})"
    return GroupingResult(
        (merged,),
        tuple(GroupingEntry(GroupingEventType.MERGED, o, (group_id,), text, at) for o in orders),
    )


def unmerge(group: ShipmentGroup, *, at: datetime) -> GroupingResult:
    """Exactly the groups that were merged, back again."""
    if group.kind is not Origin.MERGE:
        raise GroupingError(f"{group.id} is not a merged group")
    history = tuple(
        GroupingEntry(
            GroupingEventType.UNMERGED,
            o,
            tuple(g.id for g in group.origin if o in g.order_ids),
            f"unmerged shipment {group.id}: order {o} ships on its own again",
            at,
        )
        for o in group.order_ids
    )
    return GroupingResult(group.origin, history)


# ---- split ------------------------------------------------------------------------------


def _cut(
    group: ShipmentGroup,
    parts: Sequence[tuple[str | None, Mapping[str, int]]],
    new_id: Callable[[int], str],
    at: datetime,
    why: str,
) -> GroupingResult:
    """Hand out the group's items to parts (location, units per SKU), in item order."""
    need = [dict(p) for _, p in parts]
    cut: list[list[GroupItem]] = [[] for _ in parts]
    for item in group.items:
        left = item.quantity
        for i, wants in enumerate(need):
            take = min(left, wants.get(item.sku, 0))
            if take:
                cut[i].append(GroupItem(item.order_id, item.sku, take))
                wants[item.sku] -= take
                left -= take
        if left:
            raise GroupingError(f"{item.sku} of {item.order_id}: {left} unit(s) have no part")
    pieces = tuple(
        ShipmentGroup(new_id(n), tuple(items), group.address_key, loc, Origin.SPLIT, (group,))
        for n, ((loc, _), items) in enumerate((p, c) for p, c in zip(parts, cut, strict=True) if c)
    )
    if len(pieces) < 2:
        return GroupingResult((group,), ())
    ids = tuple(p.id for p in pieces)
    history = tuple(
        GroupingEntry(
            GroupingEventType.SPLIT,
            o,
            tuple(p.id for p in pieces if o in p.order_ids),
            f"split shipment {group.id} {why} into {', '.join(ids)}",
            at,
        )
        for o in group.order_ids
    )
    return GroupingResult(pieces, history)


def split_by_location(
    group: ShipmentGroup, decision: RoutingDecision, *, at: datetime
) -> GroupingResult:
    """One group per location routing chose; backordered units wait in a group of their own."""
    per_loc: dict[str | None, dict[str, int]] = {}
    for line in decision.lines:
        for a in line.allocations:
            per_loc.setdefault(a.location_id, {})[line.sku] = a.quantity
        waiting = line.backordered + line.short
        if waiting:
            per_loc.setdefault(None, {})[line.sku] = waiting
    parts: list[tuple[str | None, Mapping[str, int]]] = [
        (loc, per_loc[loc]) for loc in decision.locations
    ]
    if None in per_loc:
        parts.append((None, per_loc[None]))
    return _cut(group, parts, lambda n: f"{group.id}.{n + 1}", at, "by location")


def split_by_availability(
    group: ShipmentGroup, available: Mapping[str, int], *, at: datetime
) -> GroupingResult:
    """What can ship now (up to `available` per SKU) and what waits for stock."""
    now: dict[str, int] = {}
    later: dict[str, int] = {}
    left = dict(available)
    for item in group.items:
        take = min(item.quantity, max(left.get(item.sku, 0), 0))
        left[item.sku] = left.get(item.sku, 0) - take
        now[item.sku] = now.get(item.sku, 0) + take
        later[item.sku] = later.get(item.sku, 0) + item.quantity - take
    parts = [(group.location_id, now), (None, later)]
    return _cut(group, parts, lambda n: f"{group.id}.{n + 1}", at, "by availability")


def join(parts: Sequence[ShipmentGroup], *, at: datetime) -> GroupingResult:
    """Undo a split: every part of it, back into the group it was cut from."""
    origins = {p.origin[0] for p in parts if p.kind is Origin.SPLIT and p.origin}
    if len(origins) != 1 or len(parts) != len([p for p in parts if p.kind is Origin.SPLIT]):
        raise GroupingError("only the parts of one split can be joined")
    whole = parts[0].origin[0]
    total: dict[tuple[str, str], int] = {}
    for p in parts:
        for k, q in p.quantities().items():
            total[k] = total.get(k, 0) + q
    if total != whole.quantities():
        raise GroupingError(f"not every part of {whole.id} is here")
    history = tuple(
        GroupingEntry(
            GroupingEventType.JOINED,
            o,
            (whole.id,),
            f"joined {', '.join(p.id for p in parts)} back into shipment {whole.id}",
            at,
        )
        for o in whole.order_ids
    )
    return GroupingResult((whole,), history)
