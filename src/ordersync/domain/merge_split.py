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
from typing import Any

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
    """Also the outbox event types: one event per order touched, on the order's own lane."""

    MERGED = "order.merged"
    UNMERGED = "order.unmerged"
    SPLIT = "order.split"
    JOINED = "order.joined"

    @property
    def cause(self) -> str:
        """The order-history cause: `group:merge`, `group:unmerge`, `group:split`, `group:join`."""
        return _CAUSES[self]


_CAUSES = {
    GroupingEventType.MERGED: "group:merge",
    GroupingEventType.UNMERGED: "group:unmerge",
    GroupingEventType.SPLIT: "group:split",
    GroupingEventType.JOINED: "group:join",
}


@dataclass(frozen=True, slots=True)
class GroupingEntry:
    """One line of an order's history (and an outbox event) about its shipment groups."""

    type: GroupingEventType
    order_id: str
    group_ids: tuple[str, ...]  # the groups the order is in afterwards
    description: str
    at: datetime
    reason: str | None = None  # why, when the step followed the order (cause `group:<reason>`)

    @property
    def cause(self) -> str:
        """The order-history cause: the event type's, or `group:<reason>` (e.g. `group:leave`)."""
        return self.type.cause if self.reason is None else f"group:{self.reason}"


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


def leave(group: ShipmentGroup, order_id: str, *, at: datetime, why: str) -> GroupingResult:
    """An order leaves a merged shipment (say, it was cancelled): its items come out.

    Two or more orders left: the group keeps its id and ships them (its `origin` loses the
    order's own group, so `unmerge` still gives back exactly what is in it). One left: the
    group dissolves and that order ships on its own again, as placed. Every order touched
    gets an entry with the reason `leave`: `order.unmerged` for the order that left and for
    one shipping on its own again, `order.merged` (the group as it is now) for the rest.
    """
    if group.kind is not Origin.MERGE:
        raise GroupingError(f"{group.id} is not a merged group")
    if order_id not in group.order_ids:
        raise GroupingError(f"order {order_id} is not in {group.id}")
    origin = tuple(g for g in group.origin if order_id not in g.order_ids)
    items = tuple(i for i in group.items if i.order_id != order_id)
    left = f"order {order_id} left merged shipment {group.id} ({why})"
    history = [GroupingEntry(GroupingEventType.UNMERGED, order_id, (), left, at, "leave")]
    rest = tuple(dict.fromkeys(i.order_id for i in items))
    if len(rest) >= 2:
        smaller = ShipmentGroup(
            group.id, items, group.address_key, group.location_id, Origin.MERGE, origin
        )
        now = f"{left}: it now ships orders {', '.join(rest)}"
        history += [
            GroupingEntry(GroupingEventType.MERGED, o, (group.id,), now, at, "leave") for o in rest
        ]
        return GroupingResult((smaller,), tuple(history))
    alone = f"{left}: shipment {group.id} dissolved, the order ships on its own again"
    history += [
        GroupingEntry(
            GroupingEventType.UNMERGED,
            o,
            tuple(g.id for g in origin if o in g.order_ids),
            alone,
            at,
            "leave",
        )
        for o in rest
    ]
    return GroupingResult(origin, tuple(history))


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
    located = [(loc, items) for (loc, _), items in zip(parts, cut, strict=True)]
    return _pieces(group, located, new_id, at, why)


def _pieces(
    group: ShipmentGroup,
    located: Sequence[tuple[str | None, Sequence[GroupItem]]],
    new_id: Callable[[int], str],
    at: datetime,
    why: str,
) -> GroupingResult:
    """The non-empty parts as groups cut from `group`; fewer than two parts: no split."""
    pieces = tuple(
        ShipmentGroup(new_id(n), tuple(items), group.address_key, loc, Origin.SPLIT, (group,))
        for n, (loc, items) in enumerate((loc, items) for loc, items in located if items)
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


def split_by_allocation(
    group: ShipmentGroup,
    held: Mapping[tuple[str, str], Mapping[str, int]],
    *,
    at: datetime,
) -> GroupingResult:
    """One group per location holding units for the orders (`held`: (order, SKU) -> units
    per location, e.g. their stock reservations); units held nowhere wait in a group of
    their own. Per order, so two merged orders of one SKU keep their own locations."""
    left = {key: dict(per_loc) for key, per_loc in held.items()}
    by_loc: dict[str | None, list[GroupItem]] = {}
    for item in group.items:
        want = item.quantity
        for loc in sorted(left.get((item.order_id, item.sku), {})):
            per_loc = left[(item.order_id, item.sku)]
            take = min(want, per_loc[loc])
            if take > 0:
                by_loc.setdefault(loc, []).append(GroupItem(item.order_id, item.sku, take))
                per_loc[loc] -= take
                want -= take
        if want:
            by_loc.setdefault(None, []).append(GroupItem(item.order_id, item.sku, want))
    located = sorted(by_loc.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))
    return _pieces(group, located, lambda n: f"{group.id}.{n + 1}", at, "by location")


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


# ---- storage form -----------------------------------------------------------------------


def group_to_dict(g: ShipmentGroup) -> dict[str, Any]:
    """Plain JSON, origin included (recursively): what `unmerge` and `join` give back."""
    return {
        "id": g.id,
        "kind": g.kind.value,
        "address_key": g.address_key,
        "location_id": g.location_id,
        "items": [{"order_id": i.order_id, "sku": i.sku, "quantity": i.quantity} for i in g.items],
        "origin": [group_to_dict(o) for o in g.origin],
    }


def group_from_dict(d: Mapping[str, Any]) -> ShipmentGroup:
    return ShipmentGroup(
        id=d["id"],
        items=tuple(GroupItem(i["order_id"], i["sku"], int(i["quantity"])) for i in d["items"]),
        address_key=d.get("address_key"),
        location_id=d.get("location_id"),
        kind=Origin(d["kind"]),
        origin=tuple(group_from_dict(o) for o in d.get("origin", ())),
    )
