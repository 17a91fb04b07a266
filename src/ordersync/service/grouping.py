"""Shipment grouping (issue 5): merge orders into one shipment, split one into several.

The rules live in `domain/merge_split.py`; this service loads, locks, checks and stores.
Every step is ONE transaction (`GroupingTx`, riding on the SQL unit of work): the group
rows, the membership rows, a new version and history entry for every order touched
(cause `group:merge`, `group:unmerge`, `group:split`, `group:join`) and one outbox event
per order (`order.merged`, `order.unmerged`, `order.split`, `order.joined`) commit
together or not at all.

Concurrency: every step locks ALL the orders it touches (sorted by id, so two steps never
deadlock) before it reads their groups, and re-checks what it read before locking. Two
merges of one order therefore serialize, and the second finds the order already grouped.

Groups follow their orders (`follow_groups`, `follow_changes`), in the transaction of the
order's own change: a cancelled or refunded member leaves its merged group (one order left:
the group dissolves), and a member shipped or delivered takes every other member of its
merged group along (cause `group:ship`). The status change has locked its own order first,
so the other members are locked after it: on PostgreSQL two members of one group changing
at once can deadlock, which the database breaks by failing one transaction (the message
bus retries it alone; a carrier callback stays `received` for the next pass).

Auto-merge (`merge.auto`) runs in one process, under the `auto-merge` lease: a sweep every
`auto_interval`, and, in between, a pass over the orders this process has just created
(`ARRIVALS`, signalled by the ingest handlers before their commit: an order not visible yet
is looked at again shortly after). Orders created by other processes wait for the sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import orjson

from ordersync.clock import utcnow
from ordersync.domain.codec import fmt_time, order_to_dict
from ordersync.domain.errors import DomainError, InvalidTransition
from ordersync.domain.holds import address_key
from ordersync.domain.merge_split import (
    GroupingEntry,
    GroupingResult,
    MergePolicy,
    Origin,
    ShipmentGroup,
    buyer_key,
    join,
    leave,
    merge,
    mergeable,
    order_group,
    split_by_allocation,
    split_by_availability,
    unmerge,
)
from ordersync.domain.order_status import OrderStatus, PaymentStatus, check_transition, is_behind
from ordersync.domain.orders import Order
from ordersync.ids import new_id
from ordersync.service.outbox import EventRouter, OutboxEntry
from ordersync.service.singleton import cancel_and_wait, wait_event
from ordersync.service.unit_of_work import (
    BufferedOrderRepository,
    IdempotencyStore,
    OrderRepository,
    StockRepository,
    StoredResponse,
    UnitOfWork,
)

log = logging.getLogger(__name__)

SHIPPED = frozenset({OrderStatus.SHIPPED, OrderStatus.DELIVERED, OrderStatus.COMPLETED})


class GroupingProblem(Exception):
    """A grouping request that cannot be served: `status` and `code` for the API."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class SplitBy(StrEnum):
    LOCATION = "location"
    AVAILABILITY = "availability"


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A request's `Idempotency-Key` (Stripe semantics), with what identifies the request."""

    principal: str
    key: str
    fingerprint: str  # the same key with another fingerprint is a 422


@dataclass(frozen=True, slots=True)
class StoredGroup:
    group: ShipmentGroup
    active: bool


class GroupingTx(Protocol):
    @property
    def orders(self) -> OrderRepository: ...

    @property
    def stock(self) -> StockRepository | None: ...

    @property
    def idempotency(self) -> IdempotencyStore: ...

    async def active_groups(self, order_ids: Iterable[str]) -> dict[str, list[ShipmentGroup]]:
        """The active groups each order is in (orders in none are absent)."""

    async def group(self, group_id: str) -> StoredGroup | None: ...

    async def retire(self, groups: Sequence[ShipmentGroup], now: datetime) -> None: ...

    async def activate(self, groups: Sequence[ShipmentGroup], now: datetime) -> None: ...

    def emit(self, entry: OutboxEntry) -> None: ...

    async def commit(self) -> None: ...


class GroupingStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[GroupingTx]: ...

    async def group(self, group_id: str) -> StoredGroup | None:
        """Read side, no lock."""

    async def order(self, order_id: str) -> Order | None: ...

    async def groups_of_order(self, order_id: str) -> list[StoredGroup]: ...

    async def open_orders(
        self,
        statuses: Iterable[OrderStatus],
        since: datetime,
        limit: int,
        *,
        newest_first: bool = False,
    ) -> list[Order]: ...

    async def orders(self, order_ids: Iterable[str]) -> list[Order]:
        """The committed orders among these (read side, no lock)."""

    async def grouped(self, order_ids: Iterable[str]) -> set[str]:
        """Of these orders, the ones in a merged or split group."""


def group_view(g: ShipmentGroup, active: bool = True) -> dict[str, Any]:
    """The public JSON of a group (API responses and event bodies)."""
    return {
        "id": g.id,
        "kind": g.kind.value,
        "state": "active" if active else "retired",
        "location_id": g.location_id,
        "order_ids": list(g.order_ids),
        "items": [{"order_id": i.order_id, "sku": i.sku, "quantity": i.quantity} for i in g.items],
        "made_from": [o.id for o in g.origin],
    }


def _views(result: GroupingResult) -> dict[str, Any]:
    return {"data": [group_view(g) for g in result.groups]}


def _own(order: Order, groups: Sequence[ShipmentGroup]) -> ShipmentGroup | None:
    """The order's group if it ships on its own, as placed (stored or implicit)."""
    if not groups:
        return order_group(order)
    if len(groups) == 1 and groups[0].kind is Origin.ORDER and groups[0].order_ids == (order.id,):
        return groups[0]
    return None


class OrderArrivals:
    """An in-process signal: an order was just created (the ingest handlers call `created`,
    before their commit). The auto-merge loop listens while it runs; with no listener (no
    `merge.auto`, or the lease is elsewhere) a signal costs one test."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[str], None]] = []

    def created(self, order: Order) -> None:
        if not self._listeners:
            return
        for listener in list(self._listeners):
            listener(order.id)

    def listen(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def unlisten(self, listener: Callable[[str], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)


ARRIVALS = OrderArrivals()


@dataclass
class GroupingService:
    store: GroupingStore
    router: EventRouter
    policy: MergePolicy = field(default_factory=MergePolicy)
    clock: Callable[[], datetime] = utcnow
    auto_interval: float = 30.0  # seconds between auto-merge sweeps (`merge.auto`)
    arrivals: OrderArrivals = field(default_factory=lambda: ARRIVALS)
    # An arrival not committed yet is looked at again after 0.02, 0.04, ... seconds, this
    # many times; then the sweep has it.
    arrival_retries: int = 8
    # A pass over new orders starts `arrival_gap` seconds after the first signal: in a rush,
    # one pass takes every order created meanwhile (one read of recent open orders each).
    arrival_gap: float = 0.1
    arrival_scan: int = 1000  # newest open orders read per pass
    _auto: asyncio.Task[None] | None = field(default=None, repr=False)
    _arrived: dict[str, int] = field(default_factory=dict, repr=False)  # id -> tries
    _wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    # ---- auto-merge -------------------------------------------------------------------

    def start(self) -> None:
        """Merge every candidate set every `auto_interval` seconds, and the candidates of
        each order this process creates as soon as it is committed (`merge.auto: true`)."""
        if self._auto is None:
            self.arrivals.listen(self._order_created)
            self._auto = asyncio.create_task(self._auto_forever(), name="auto-merge")

    async def stop(self) -> None:
        self.arrivals.unlisten(self._order_created)
        if self._auto is not None:
            await cancel_and_wait(self._auto)
            self._auto = None
        self._arrived.clear()

    def _order_created(self, order_id: str) -> None:
        self._arrived.setdefault(order_id, 0)
        self._wake.set()

    async def _auto_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while True:
            if loop.time() >= next_sweep:
                try:
                    await self.auto_merge()
                except Exception:  # the sweep must survive a database restart
                    log.warning("auto-merge sweep failed", exc_info=True)
                next_sweep = loop.time() + self.auto_interval
            if self._arrived:
                # The signal came before its commit: give it (and whatever arrives with
                # it) a moment, then take them all in one pass.
                await asyncio.sleep(self.arrival_gap)
                try:
                    await self.merge_arrivals()
                except Exception:  # left for the sweep
                    log.warning("auto-merge of new orders failed", exc_info=True)
            wait = next_sweep - loop.time()
            if self._arrived:  # some not committed yet: look again shortly
                tries = min(self._arrived.values())
                wait = min(wait, 0.02 * 2 ** max(tries - 1, 0))
            await wait_event(self._wake, max(wait, 0.0))
            self._wake.clear()

    async def auto_merge(self) -> list[str]:
        """Merge each candidate set among orders created within two windows; the ids of
        the groups made. A set that no longer qualifies (say, merged by hand meanwhile) is
        skipped: `merge` checks everything again under the orders' locks."""
        since = self.clock() - 2 * self.policy.window
        return await self._merge_sets(await self.candidates(since=since))

    async def merge_arrivals(self) -> list[str]:
        """Merge the candidate sets of the orders signalled as created (the ids of the
        groups made). One not visible yet (its transaction is still committing) stays
        signalled for another look, `arrival_retries` times at most."""
        arrived, self._arrived = self._arrived, {}
        found = {o.id: o for o in await self.store.orders(arrived)}
        for order_id, tries in arrived.items():
            if order_id not in found and tries < self.arrival_retries:
                self._arrived[order_id] = self._arrived.get(order_id, tries + 1)
        fresh = [
            o
            for o in found.values()
            if o.status in self.policy.statuses and buyer_key(o) is not None
        ]
        if not fresh:
            return []
        buyers = {buyer_key(o) for o in fresh}
        since = min(o.created_at for o in fresh) - 2 * self.policy.window
        # Newest first: the orders just made are in the answer whatever the backlog.
        near = await self.store.open_orders(
            self.policy.statuses, since, self.arrival_scan, newest_first=True
        )
        mine = [o for o in near if buyer_key(o) in buyers]
        grouped = await self.store.grouped(o.id for o in mine)
        sets = mergeable([o for o in mine if o.id not in grouped], self.policy)
        wanted = {o.id for o in fresh}
        return await self._merge_sets([s for s in sets if any(o.id in wanted for o in s)])

    async def _merge_sets(self, sets: Iterable[Sequence[Order]]) -> list[str]:
        made = []
        for orders in sets:
            try:
                response = await self.merge([o.id for o in orders])
            except GroupingProblem as e:
                log.info("auto-merge of %s skipped: %s", [o.id for o in orders], e.detail)
                continue
            made.append(str(orjson.loads(response.body)["id"]))
        return made

    # ---- merge ------------------------------------------------------------------------

    async def merge(
        self, order_ids: Sequence[str], idem: IdempotencyKey | None = None
    ) -> StoredResponse:
        """201 with the merged group."""
        ids = sorted(set(order_ids))
        if len(ids) < 2:
            raise GroupingProblem(422, "merge_needs_two_orders", "name at least two orders")
        now = self.clock()
        async with self.store.transaction() as tx:
            orders = await self._lock(tx, ids)
            if replay := await self._replay(tx, idem):
                return replay
            self._check_mergeable(list(orders.values()))
            current = await tx.active_groups(ids)
            inputs = []
            for oid in ids:
                own = _own(orders[oid], current.get(oid, []))
                if own is None:
                    raise GroupingProblem(
                        409,
                        "order_already_grouped",
                        f"order {oid} is already in a merged or split shipment; undo that first",
                    )
                inputs.append(own)
            result = self._domain(lambda: merge(inputs, new_id("grp"), at=now))
            return await self._store(
                tx, orders, inputs, result, now, idem, 201, group_view(result.groups[0])
            )

    def _check_mergeable(self, orders: list[Order]) -> None:
        p = self.policy
        for o in orders:
            if o.status not in p.statuses:
                raise GroupingProblem(
                    409, "order_not_open", f"order {o.id} is {o.status.value}: it cannot be merged"
                )
        checks: list[tuple[str, str, Callable[[Order], str | None]]] = [
            ("buyer", "buyer_mismatch", buyer_key),
            ("address", "address_mismatch", lambda o: address_key(o.shipping_address)),
        ]
        if p.same_channel:
            checks.append(("channel", "channel_mismatch", lambda o: o.channel_id))
        for what, code, key in checks:
            keys = {o.id: key(o) for o in orders}
            unknown = sorted(oid for oid, k in keys.items() if k is None)
            if unknown:
                raise GroupingProblem(
                    422, f"{what}_unknown", f"the {what} of {', '.join(unknown)} is not known"
                )
            if len(set(keys.values())) > 1:
                raise GroupingProblem(
                    422, code, f"the orders do not share one {what}: they cannot be merged"
                )
        times = [o.placed_at or o.created_at for o in orders]
        if max(times) - min(times) > p.window:
            raise GroupingProblem(
                422,
                "outside_merge_window",
                f"the orders were placed {max(times) - min(times)} apart; the merge window"
                f" is {p.window}",
            )

    async def unmerge(self, group_id: str, idem: IdempotencyKey | None = None) -> StoredResponse:
        """200 with the groups given back."""
        seen = await self._known(group_id)
        now = self.clock()
        async with self.store.transaction() as tx:
            orders = await self._lock(tx, seen.group.order_ids)
            if replay := await self._replay(tx, idem):
                return replay
            stored = await self._active(tx, group_id)
            if stored.kind is not Origin.MERGE:
                raise GroupingProblem(409, "not_a_merged_group", f"{group_id} is not a merge")
            self._check_not_shipped(orders.values())
            result = self._domain(lambda: unmerge(stored, at=now))
            return await self._store(tx, orders, [stored], result, now, idem, 200, _views(result))

    async def candidates(
        self, *, since: datetime | None = None, limit: int = 1000
    ) -> list[list[Order]]:
        """Sets of orders the policy would merge, among open orders shipping on their own."""
        since = since or self.clock() - max(self.policy.window, timedelta(days=7))
        orders = await self.store.open_orders(self.policy.statuses, since, limit)
        grouped = await self.store.grouped(o.id for o in orders)
        return mergeable([o for o in orders if o.id not in grouped], self.policy)

    # ---- split ------------------------------------------------------------------------

    async def split(
        self, order_id: str, by: SplitBy, idem: IdempotencyKey | None = None
    ) -> StoredResponse:
        """200 with the parts."""
        order = await self.store.order(order_id)
        if order is None:
            raise GroupingProblem(404, "order_not_found", f"no order {order_id!r}")
        seen = await self.store.groups_of_order(order_id)
        members = {order_id, *(o for s in seen for o in s.group.order_ids)}
        now = self.clock()
        async with self.store.transaction() as tx:
            orders = await self._lock(tx, members)
            if replay := await self._replay(tx, idem):
                return replay
            current = (await tx.active_groups([order_id])).get(order_id, [])
            if [g.id for g in current] != [s.group.id for s in seen]:
                raise GroupingProblem(
                    409, "group_changed", "the order's shipments changed meanwhile; try again"
                )
            if len(current) > 1:
                raise GroupingProblem(
                    409,
                    "already_split",
                    f"order {order_id} already ships in {len(current)} parts; join them first",
                )
            group = current[0] if current else order_group(orders[order_id])
            for o in orders.values():
                # A hold (say, for stock) does not stop a split: splitting is how part of it
                # can leave now.
                status = o.held_from if o.status is OrderStatus.ON_HOLD else o.status
                if status not in self.policy.statuses:
                    raise GroupingProblem(
                        409,
                        "order_not_open",
                        f"order {o.id} is {o.status.value}: it cannot be split",
                    )
            stock = tx.stock
            if stock is None:
                raise GroupingProblem(
                    409, "inventory_not_configured", "splitting needs locations and stock"
                )
            held: dict[tuple[str, str], dict[str, int]] = {}
            for oid in sorted(orders):
                for r in await stock.held_for_order(oid):
                    per_loc = held.setdefault((oid, r.sku), {})
                    per_loc[r.location_id] = per_loc.get(r.location_id, 0) + r.quantity
            if by is SplitBy.LOCATION:
                if not held:
                    raise GroupingProblem(
                        409, "no_allocations", f"no stock is held for order {order_id} anywhere"
                    )
                result = self._domain(lambda: split_by_allocation(group, held, at=now))
            else:
                inventory = await stock.load(sorted({i.sku for i in group.items}))
                available: dict[str, int] = {}
                for (_, sku), per_loc in held.items():
                    available[sku] = available.get(sku, 0) + sum(per_loc.values())
                for sku in {i.sku for i in group.items}:
                    free = sum(max(lv.available, 0) for lv in inventory.levels_of(sku))
                    available[sku] = available.get(sku, 0) + free
                result = self._domain(lambda: split_by_availability(group, available, at=now))
            if not result.history:
                raise GroupingProblem(
                    409, "nothing_to_split", f"the shipment of {order_id} cannot be cut {by.value}"
                )
            return await self._store(tx, orders, [group], result, now, idem, 200, _views(result))

    async def join(self, group_id: str, idem: IdempotencyKey | None = None) -> StoredResponse:
        """200 with the group the parts were cut from."""
        seen = await self._known(group_id)
        if seen.group.kind is not Origin.SPLIT or not seen.group.origin:
            raise GroupingProblem(409, "not_a_split_part", f"{group_id} is not part of a split")
        whole_id = seen.group.origin[0].id
        now = self.clock()
        async with self.store.transaction() as tx:
            orders = await self._lock(tx, seen.group.origin[0].order_ids)
            if replay := await self._replay(tx, idem):
                return replay
            await self._active(tx, group_id)
            current = await tx.active_groups(orders)
            parts = {
                g.id: g
                for gs in current.values()
                for g in gs
                if g.kind is Origin.SPLIT and g.origin and g.origin[0].id == whole_id
            }
            self._check_not_shipped(orders.values())
            result = self._domain(lambda: join(sorted(parts.values(), key=lambda g: g.id), at=now))
            whole = group_view(result.groups[0])
            return await self._store(
                tx, orders, list(parts.values()), result, now, idem, 200, whole
            )

    # ---- reads ------------------------------------------------------------------------

    async def groups_of_order(self, order_id: str) -> list[dict[str, Any]]:
        order = await self.store.order(order_id)
        if order is None:
            raise GroupingProblem(404, "order_not_found", f"no order {order_id!r}")
        stored = await self.store.groups_of_order(order_id)
        if not stored:
            return [group_view(order_group(order))]
        return [group_view(s.group, s.active) for s in stored]

    async def get(self, group_id: str) -> dict[str, Any]:
        s = await self._known(group_id)
        return group_view(s.group, s.active)

    # ---- internals --------------------------------------------------------------------

    async def _known(self, group_id: str) -> StoredGroup:
        stored = await self.store.group(group_id)
        if stored is None:
            raise GroupingProblem(404, "group_not_found", f"no shipment group {group_id!r}")
        return stored

    async def _active(self, tx: GroupingTx, group_id: str) -> ShipmentGroup:
        stored = await tx.group(group_id)
        if stored is None or not stored.active:
            raise GroupingProblem(
                409, "group_not_active", f"shipment group {group_id} was merged, split or undone"
            )
        return stored.group

    @staticmethod
    async def _lock(tx: GroupingTx, order_ids: Iterable[str]) -> dict[str, Order]:
        """Every order, locked in id order (a fixed order: concurrent steps never deadlock)."""
        orders: dict[str, Order] = {}
        for oid in sorted(set(order_ids)):
            order = await tx.orders.get(oid)
            if order is None:
                raise GroupingProblem(404, "order_not_found", f"no order {oid!r}")
            orders[oid] = order
        return orders

    @staticmethod
    def _check_not_shipped(orders: Iterable[Order]) -> None:
        for o in orders:
            if o.status in SHIPPED:
                raise GroupingProblem(
                    409, "order_shipped", f"order {o.id} has shipped: its shipment is final"
                )

    @staticmethod
    def _domain(step: Callable[[], GroupingResult]) -> GroupingResult:
        try:
            return step()
        except DomainError as e:
            raise GroupingProblem(409, e.code, str(e)) from None

    async def _store(
        self,
        tx: GroupingTx,
        orders: Mapping[str, Order],
        before: Sequence[ShipmentGroup],
        result: GroupingResult,
        now: datetime,
        idem: IdempotencyKey | None,
        status: int,
        data: Any,
    ) -> StoredResponse:
        """Retire what was, activate what is, tell every order touched (history + event),
        keep the response under the request's Idempotency-Key, and commit."""
        await tx.retire(before, now)
        await tx.activate(result.groups, now)
        _tell(tx, self.router, orders, result, now)
        response = StoredResponse(idem.fingerprint if idem else "", status, orjson.dumps(data))
        if idem is not None:
            tx.idempotency.put(idem.principal, idem.key, response)
        await tx.commit()
        return response

    @staticmethod
    async def _replay(tx: GroupingTx, idem: IdempotencyKey | None) -> StoredResponse | None:
        """The stored response of a repeated request (read under the orders' locks, so a
        repeat racing the original waits for it and then replays it)."""
        if idem is None:
            return None
        stored = await tx.idempotency.get(idem.principal, idem.key)
        if stored is None:
            return None
        if stored.fingerprint != idem.fingerprint:
            raise GroupingProblem(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            )
        return StoredResponse(stored.fingerprint, stored.status, stored.body, replayed=True)


def _tell(
    tx: GroupingTx | GroupMembership,
    router: EventRouter,
    orders: Mapping[str, Order],
    result: GroupingResult,
    now: datetime,
) -> None:
    """A new version, a history entry and an event for every order the step touched."""
    by_id = {g.id: g for g in result.groups}
    for entry in result.history:
        order = orders[entry.order_id]
        order.annotate(entry.cause, at=now, changed=("shipment_groups",))
        tx.orders.save(order)
        tx.emit(_event(order, entry, by_id, router, now))


def _event(
    order: Order,
    entry: GroupingEntry,
    by_id: Mapping[str, ShipmentGroup],
    router: EventRouter,
    now: datetime,
) -> OutboxEntry:
    data = {
        **order_to_dict(order),
        "shipment_groups": [group_view(by_id[g]) for g in entry.group_ids if g in by_id],
        "grouping_change": entry.description,
    }
    return OutboxEntry(
        event_id=new_id("evt"),
        type=entry.type.value,
        order_id=order.id,
        version=order.version,
        body=orjson.dumps({"type": entry.type.value, "timestamp": fmt_time(now), "data": data}),
        destinations=router.destinations_for(entry.type.value),
    )


# ---- groups follow their orders ---------------------------------------------------------

OrderState = tuple[OrderStatus, PaymentStatus]
SHIP_CAUSE = "group:ship"


class GroupMembership(Protocol):
    """The shipment groups, inside the transaction of an order's own change (its unit of
    work): what a group needs to follow that change."""

    @property
    def orders(self) -> OrderRepository: ...

    @property
    def router(self) -> EventRouter: ...

    async def active_groups(self, order_ids: Iterable[str]) -> dict[str, list[ShipmentGroup]]:
        """The active groups each order is in (orders in none are absent)."""

    async def retire(self, groups: Sequence[ShipmentGroup], now: datetime) -> None: ...

    async def activate(self, groups: Sequence[ShipmentGroup], now: datetime) -> None: ...

    def emit(self, entry: OutboxEntry) -> None: ...


MembershipOf = Callable[[UnitOfWork], "GroupMembership | None"]
_MEMBERSHIP: list[MembershipOf] = []


def register_membership(of: MembershipOf) -> None:
    """A storage adapter says how its unit of work reaches the shipment groups (the SQL one
    registers itself when imported). A unit of work no adapter knows follows nothing."""
    if of not in _MEMBERSHIP:
        _MEMBERSHIP.append(of)


def membership_of(uow: UnitOfWork) -> GroupMembership | None:
    for of in _MEMBERSHIP:
        found = of(uow)
        if found is not None:
            return found
    return None


def _leaves(order: Order, was: OrderState) -> str | None:
    """Why the order leaves its merged group, if this change makes it (None: it stays)."""
    if order.status in SHIPPED:
        return None  # its parcel has left: what shipped together stays on record
    if order.status is OrderStatus.CANCELLED and was[0] is not OrderStatus.CANCELLED:
        return "cancelled"
    if order.payment_status is PaymentStatus.REFUNDED and was[1] is not PaymentStatus.REFUNDED:
        return "refunded"
    return None


def _ships(order: Order, was: OrderState) -> tuple[OrderStatus, ...]:
    """Where the order's merged group goes with it: shipped, or shipped then delivered."""
    if order.status == was[0]:
        return ()
    if order.status is OrderStatus.SHIPPED:
        return (OrderStatus.SHIPPED,)
    if order.status is OrderStatus.DELIVERED:
        return (OrderStatus.SHIPPED, OrderStatus.DELIVERED)
    return ()


def follows(order: Order, was: OrderState) -> bool:
    """Does this change of the order move its merged group? (Pure: no I/O.)"""
    return _leaves(order, was) is not None or bool(_ships(order, was))


async def follow_groups(order: Order, was: OrderState, uow: UnitOfWork) -> None:
    """Call after a handler changed (and saved) `order`, which was `was` before, in `uow`:
    its merged group follows in the same transaction. A change that cannot move a group
    costs nothing; one that can costs one query when the order is in no group."""
    if not follows(order, was):
        return
    membership = membership_of(uow)
    if membership is not None:
        await follow_orders(uow, membership, [(order, was)])


async def follow_changes(uow: UnitOfWork, membership: GroupMembership) -> None:
    """Before `uow` commits: the groups of every order it changed follow the change (what
    the order was is read from its first new history entry)."""
    repo = uow.orders
    if not isinstance(repo, BufferedOrderRepository):
        return
    first: dict[str, OrderState] = {}
    for order_id, h in repo.history:
        if order_id not in first and h.from_status is not None:
            first[order_id] = (h.from_status, h.from_payment_status or h.to_payment_status)
    changes = []
    for order_id, was in first.items():
        order = repo.dirty.get(order_id)
        if order is not None and follows(order, was):
            changes.append((order, was))
    if changes:
        await follow_orders(uow, membership, changes)


async def follow_orders(
    uow: UnitOfWork, membership: GroupMembership, changes: Sequence[tuple[Order, OrderState]]
) -> None:
    # One query tells whether any of them is merged at all (a batch of callbacks shipping
    # orders that ship as placed costs just that).
    found = await membership.active_groups(o.id for o, _ in changes)
    merged = {oid for oid, gs in found.items() if any(g.kind is Origin.MERGE for g in gs)}
    for order, was in changes:
        if order.id not in merged:
            continue
        why = _leaves(order, was)
        if why is not None:
            await _leave(membership, order, why)
        targets = _ships(order, was)
        if targets:
            await _ship_along(uow, membership, order, targets)


async def _merged_groups(membership: GroupMembership, order: Order) -> list[ShipmentGroup]:
    found = (await membership.active_groups([order.id])).get(order.id, [])
    return [g for g in found if g.kind is Origin.MERGE]


async def _lock_all(repo: OrderRepository, order_ids: Iterable[str]) -> dict[str, Order]:
    """The orders, locked in id order (the one already locked by the change is cached)."""
    orders: dict[str, Order] = {}
    for oid in sorted(set(order_ids)):
        found = await repo.get(oid)
        if found is not None:
            orders[oid] = found
    return orders


async def _leave(membership: GroupMembership, order: Order, why: str) -> None:
    now = order.updated_at
    for group in await _merged_groups(membership, order):
        orders = await _lock_all(membership.orders, group.order_ids)
        orders[order.id] = order
        result = leave(group, order.id, at=now, why=why)
        await membership.retire([group], now)
        await membership.activate(result.groups, now)
        _tell(membership, membership.router, orders, result, now)
        log.info("order %s left shipment group %s (%s)", order.id, group.id, why)


async def _ship_along(
    uow: UnitOfWork, membership: GroupMembership, order: Order, targets: Sequence[OrderStatus]
) -> None:
    # Imported here: the order handlers import this module.
    from ordersync.service.handlers.inventory import on_order_change

    now = order.updated_at
    for group in await _merged_groups(membership, order):
        others = await _lock_all(membership.orders, set(group.order_ids) - {order.id})
        for other in others.values():
            for target in targets:
                if other.status == target or is_behind(target, other.status):
                    continue
                try:
                    check_transition(other.status, target)
                except InvalidTransition:
                    log.info(
                        "order %s of shipment %s: %s -> %s not allowed",
                        other.id,
                        group.id,
                        other.status,
                        target,
                    )
                    continue
                before = (other.status, other.payment_status)
                other.transition_to(target, cause=SHIP_CAUSE, at=now)
                # Its stock follows, as for any status change: shipped commits its
                # reservations (the goods left in the group's parcel).
                await on_order_change(other, before, uow, cause=SHIP_CAUSE)
                membership.orders.save(other)
