"""Stock per (SKU, location), its ledger, and the reservations held against it.

`available = on_hand - reserved` and it never goes below zero: every change validates the
new numbers before touching anything, and every change is a `LedgerEntry` with its cause,
so replaying the ledger rebuilds the stock exactly. Reservations move through a small
state machine (held -> committed | released | expired). A change returns nothing the
caller must remember: the `Inventory` collects ledger entries and events until they are
taken at commit, like `Order` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

from ordersync.domain.errors import DomainError, InvalidTransition

if TYPE_CHECKING:  # routing builds on this module's Location
    from ordersync.domain.routing import RoutingSetup


class LocationKind(StrEnum):
    WAREHOUSE = "warehouse"
    STORE = "store"
    FACTORY = "factory"


@dataclass(frozen=True, slots=True)
class Location:
    id: str
    kind: LocationKind
    region: str
    priority: int  # lower is preferred
    capacity: int | None = None  # orders per day it can fulfil; None: unlimited


class MovementCause(StrEnum):
    ORDER = "order"  # an order reserved stock
    CANCELLATION = "cancellation"  # a cancelled or refunded order released it
    EXPIRY = "expiry"  # an unpaid order's reservation lapsed
    SHIPMENT = "shipment"  # reserved stock left the building
    ADJUSTMENT = "adjustment"  # a delta from a WMS/ERP feed or an operator
    SNAPSHOT = "snapshot"  # a WMS/ERP count replaced on_hand
    RETURN = "return"  # goods came back


class ReservationState(StrEnum):
    HELD = "held"
    COMMITTED = "committed"  # shipped: on_hand and reserved both went down
    RELEASED = "released"
    EXPIRED = "expired"


R = ReservationState
RESERVATION_TRANSITIONS: dict[ReservationState, frozenset[ReservationState]] = {
    R.HELD: frozenset({R.COMMITTED, R.RELEASED, R.EXPIRED}),
    R.COMMITTED: frozenset(),
    R.RELEASED: frozenset(),
    R.EXPIRED: frozenset(),
}


class StockEventType(StrEnum):
    STOCK_RESERVED = "stock.reserved"
    STOCK_SHORTAGE = "stock.shortage"
    STOCK_RELEASED = "stock.released"
    STOCK_COMMITTED = "stock.committed"
    INVENTORY_LOW = "inventory.low"


class InsufficientStock(DomainError):
    code = "insufficient_stock"


class StockConflict(DomainError):
    """A change would make on_hand negative or smaller than what is reserved."""

    code = "stock_conflict"


class UnknownLocation(DomainError):
    code = "unknown_location"


# LedgerEntry and StockEvent are made once per reservation on the flash-sale path: named
# tuples (immutable, built in C) cost a fifth of a frozen dataclass, whose __init__ sets
# each field through object.__setattr__.
class LedgerEntry(NamedTuple):
    sku: str
    location_id: str
    cause: MovementCause
    on_hand_delta: int
    reserved_delta: int
    at: datetime
    reference: str | None = None  # order id or feed message id
    reservation_id: str | None = None


class StockEvent(NamedTuple):
    type: StockEventType
    sku: str
    location_id: str | None  # None for a shortage: no location could serve it
    quantity: int
    available: int  # after the change (a shortage: what all locations had together)
    at: datetime
    order_id: str | None = None
    cause: MovementCause | None = None


@dataclass(slots=True)
class StockLevel:
    sku: str
    location_id: str
    on_hand: int = 0
    reserved: int = 0
    safety_stock: int = 0
    version: int = 0

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def apply(
        self,
        cause: MovementCause,
        on_hand_delta: int,
        reserved_delta: int,
        at: datetime,
        reference: str | None = None,
        reservation_id: str | None = None,
    ) -> LedgerEntry:
        """The one way stock changes: validated first, then applied and recorded."""
        on_hand, reserved = self.on_hand + on_hand_delta, self.reserved + reserved_delta
        if on_hand < 0 or reserved < 0 or on_hand < reserved:
            raise StockConflict(
                f"{self.sku} at {self.location_id}: on_hand {on_hand} with {reserved} reserved"
                " is not possible"
            )
        self.on_hand, self.reserved = on_hand, reserved
        self.version += 1
        return LedgerEntry(
            self.sku,
            self.location_id,
            cause,
            on_hand_delta,
            reserved_delta,
            at,
            reference,
            reservation_id,
        )


@dataclass(slots=True)
class Reservation:
    id: str
    order_id: str
    sku: str
    location_id: str
    quantity: int
    created_at: datetime
    expires_at: datetime | None = None  # None: held until shipped or cancelled
    state: ReservationState = ReservationState.HELD

    def is_due(self, now: datetime) -> bool:
        return self.state is R.HELD and self.expires_at is not None and self.expires_at <= now

    def move_to(self, target: ReservationState) -> None:
        if target not in RESERVATION_TRANSITIONS[self.state]:
            raise InvalidTransition(self.state.value, target.value, what="reservation")
        self.state = target


def _ranked(levels: Iterable[StockLevel], locations: Mapping[str, Location]) -> list[StockLevel]:
    """Preferred location first: priority, then most available, then id (deterministic)."""

    def key(lv: StockLevel) -> tuple[int, int, str]:
        loc = locations.get(lv.location_id)
        return (loc.priority if loc else 1 << 30, -lv.available, lv.location_id)

    return sorted(levels, key=key)


@dataclass
class Inventory:
    """The stock levels and reservations one unit of work has loaded, and what changed."""

    locations: Mapping[str, Location]
    levels: dict[tuple[str, str], StockLevel] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    # Collected for the unit of work: written at commit.
    new_ledger: list[LedgerEntry] = field(default_factory=list)
    new_events: list[StockEvent] = field(default_factory=list)
    new_levels: set[tuple[str, str]] = field(default_factory=set)
    dirty_levels: set[tuple[str, str]] = field(default_factory=set)
    new_reservations: set[str] = field(default_factory=set)
    dirty_reservations: set[str] = field(default_factory=set)
    # Routing: the decisions made (stored with their order) and the shipments each
    # location was given per UTC day (its capacity use), both written at commit.
    new_decisions: dict[str, RoutingRecord] = field(default_factory=dict)
    assigned: dict[tuple[str, str], int] = field(default_factory=dict)  # (loc, day) -> n
    new_assigned: dict[tuple[str, str], int] = field(default_factory=dict)
    _by_sku: dict[str, list[StockLevel]] = field(default_factory=dict, repr=False)
    # order id -> its reservations (any state): `held_for` is asked once per order of a
    # batch, and scanning every reservation of the batch each time was quadratic.
    _by_order: dict[str, list[Reservation]] = field(default_factory=dict, repr=False)
    _indexed: int = field(default=0, repr=False)  # len(reservations) the index covers

    def __post_init__(self) -> None:
        for level in self.levels.values():
            self._by_sku.setdefault(level.sku, []).append(level)
        self._reindex()

    def _reindex(self) -> None:
        self._by_order = {}
        for res in self.reservations.values():
            self._by_order.setdefault(res.order_id, []).append(res)
        self._indexed = len(self.reservations)

    def add_reservation(self, res: Reservation) -> Reservation:
        """A reservation loaded from storage (the one already known wins)."""
        known = self.reservations.get(res.id)
        if known is not None:
            return known
        if self._indexed != len(self.reservations):
            self._reindex()
        self.reservations[res.id] = res
        self._by_order.setdefault(res.order_id, []).append(res)
        self._indexed += 1
        return res

    def add_level(self, level: StockLevel) -> StockLevel:
        """A level loaded from storage (the one already known wins)."""
        known = self.levels.get((level.sku, level.location_id))
        if known is not None:
            return known
        self.levels[(level.sku, level.location_id)] = level
        self._by_sku.setdefault(level.sku, []).append(level)
        return level

    # ---- queries ------------------------------------------------------------------------
    def levels_of(self, sku: str) -> list[StockLevel]:
        return self._by_sku.get(sku, [])

    def held_for(self, order_id: str) -> list[Reservation]:
        if self._indexed != len(self.reservations):  # someone filled the dict directly
            self._reindex()
        return [r for r in self._by_order.get(order_id, ()) if r.state is R.HELD]

    # ---- reservations -------------------------------------------------------------------
    def reserve(
        self,
        order_id: str,
        lines: Mapping[str, int],
        *,
        at: datetime,
        expires_at: datetime | None,
        new_id: Callable[[], str],
    ) -> list[Reservation] | None:
        """All or nothing: each SKU from the preferred location that can serve it whole.

        Returns the reservations, or None after recording a shortage (nothing reserved).
        """
        picks: list[tuple[StockLevel, int]] = []
        short: list[tuple[str, int, int]] = []
        by_sku = self._by_sku
        for sku, qty in sorted(lines.items()) if len(lines) > 1 else lines.items():
            if qty <= 0:
                raise InsufficientStock(f"{sku}: quantity must be positive, got {qty}")
            candidates = [lv for lv in by_sku.get(sku, ()) if lv.on_hand - lv.reserved >= qty]
            if len(candidates) == 1:  # one SKU at one location: nothing to rank
                picks.append((candidates[0], qty))
            elif candidates:
                picks.append((_ranked(candidates, self.locations)[0], qty))
            else:
                short.append((sku, qty, sum(max(lv.available, 0) for lv in self.levels_of(sku))))
        if short:
            for sku, qty, available in short:
                self.new_events.append(
                    StockEvent(
                        StockEventType.STOCK_SHORTAGE, sku, None, qty, available, at, order_id
                    )
                )
            return None
        return [self._hold(order_id, level, qty, at, expires_at, new_id) for level, qty in picks]

    def reserve_allocations(
        self,
        order_id: str,
        allocations: Iterable[tuple[str, str, int]],
        *,
        at: datetime,
        expires_at: datetime | None,
        new_id: Callable[[], str],
    ) -> list[Reservation]:
        """Reserve exactly these (sku, location, quantity): all or nothing.

        A routing decision made from this inventory always fits; anything that does not
        (a stale decision, a bug) raises `InsufficientStock` before any stock changes.
        """
        wanted: dict[tuple[str, str], int] = {}
        for sku, loc, qty in allocations:
            if qty <= 0:
                raise InsufficientStock(f"{sku} at {loc}: quantity must be positive, got {qty}")
            wanted[(sku, loc)] = wanted.get((sku, loc), 0) + qty
        picks: list[tuple[StockLevel, int]] = []
        for (sku, loc), qty in sorted(wanted.items()):
            level = self._level(sku, loc)  # unknown location or no stock row: refused
            if level.available < qty:
                raise InsufficientStock(
                    f"{sku} at {loc}: {qty} wanted, {level.available} available"
                )
            picks.append((level, qty))
        return [self._hold(order_id, level, qty, at, expires_at, new_id) for level, qty in picks]

    def record_shortage(self, order_id: str, short: Mapping[str, int], *, at: datetime) -> None:
        """No location can serve the order: one `stock.shortage` per SKU short, nothing held."""
        for sku, qty in sorted(short.items()):
            available = sum(max(lv.available, 0) for lv in self.levels_of(sku))
            self.new_events.append(
                StockEvent(StockEventType.STOCK_SHORTAGE, sku, None, qty, available, at, order_id)
            )

    def record_decision(self, record: RoutingRecord) -> None:
        """Keep a routing decision for the order (the last one per order is stored)."""
        self.new_decisions[record.order_id] = record
        for loc in record.locations:
            # Counted only where a capacity is set: a counter row every order updates
            # would serialise orders of different SKUs that share a location.
            location = self.locations.get(loc)
            if location is None or location.capacity is None:
                continue
            key = (loc, record.day)
            self.assigned[key] = self.assigned.get(key, 0) + 1
            self.new_assigned[key] = self.new_assigned.get(key, 0) + 1

    def take_decisions(self) -> tuple[list[RoutingRecord], dict[tuple[str, str], int]]:
        decisions, assigned = list(self.new_decisions.values()), self.new_assigned
        self.new_decisions, self.new_assigned = {}, {}
        return decisions, assigned

    def _hold(
        self,
        order_id: str,
        level: StockLevel,
        qty: int,
        at: datetime,
        expires_at: datetime | None,
        new_id: Callable[[], str],
    ) -> Reservation:
        res = Reservation(new_id(), order_id, level.sku, level.location_id, qty, at, expires_at)
        self._change(level, MovementCause.ORDER, 0, qty, at, order_id, res.id)
        if self._indexed == len(self.reservations) and res.id not in self.reservations:
            self.reservations[res.id] = res  # add_reservation, inlined: once per buyer
            self._by_order.setdefault(order_id, []).append(res)
            self._indexed += 1
        else:
            self.add_reservation(res)
        self.new_reservations.add(res.id)
        self.new_events.append(
            StockEvent(
                StockEventType.STOCK_RESERVED,
                level.sku,
                level.location_id,
                qty,
                level.available,
                at,
                order_id,
                MovementCause.ORDER,
            )
        )
        return res

    def release(self, res: Reservation, cause: MovementCause, *, at: datetime) -> None:
        """Give a held reservation back: cancellation, refund or expiry."""
        target = R.EXPIRED if cause is MovementCause.EXPIRY else R.RELEASED
        level = self._level(res.sku, res.location_id)
        res.move_to(target)  # validates before the stock changes
        self._change(level, cause, 0, -res.quantity, at, res.order_id, res.id)
        self._touch(res)
        self.new_events.append(
            StockEvent(
                StockEventType.STOCK_RELEASED,
                res.sku,
                res.location_id,
                res.quantity,
                level.available,
                at,
                res.order_id,
                cause,
            )
        )

    def commit(self, res: Reservation, *, at: datetime) -> None:
        """The reserved goods shipped: they leave on_hand and reserved together."""
        level = self._level(res.sku, res.location_id)
        res.move_to(R.COMMITTED)
        self._change(
            level, MovementCause.SHIPMENT, -res.quantity, -res.quantity, at, res.order_id, res.id
        )
        self._touch(res)
        self.new_events.append(
            StockEvent(
                StockEventType.STOCK_COMMITTED,
                res.sku,
                res.location_id,
                res.quantity,
                level.available,
                at,
                res.order_id,
                MovementCause.SHIPMENT,
            )
        )

    def confirm(self, res: Reservation) -> None:
        """The order is paid: its reservation no longer expires."""
        if res.state is R.HELD and res.expires_at is not None:
            res.expires_at = None
            self._touch(res)

    # ---- stock feeds --------------------------------------------------------------------
    def set_on_hand(
        self,
        sku: str,
        location_id: str,
        on_hand: int,
        *,
        at: datetime,
        reference: str | None = None,
        safety_stock: int | None = None,
    ) -> StockLevel:
        """A count from the WMS/ERP replaces on_hand (refused below what is reserved)."""
        level = self._level(sku, location_id, create=True)
        if safety_stock is not None:
            if safety_stock < 0:
                raise StockConflict("safety_stock must not be negative")
            if safety_stock != level.safety_stock:
                level.safety_stock = safety_stock
                self._mark(level)
        if on_hand != level.on_hand:
            delta = on_hand - level.on_hand
            self._change(level, MovementCause.SNAPSHOT, delta, 0, at, reference)
        return level

    def adjust(
        self,
        sku: str,
        location_id: str,
        delta: int,
        *,
        at: datetime,
        cause: MovementCause = MovementCause.ADJUSTMENT,
        reference: str | None = None,
    ) -> StockLevel:
        if cause not in (MovementCause.ADJUSTMENT, MovementCause.RETURN):
            raise StockConflict(f"an adjustment cannot have cause {cause.value!r}")
        if cause is MovementCause.RETURN and delta <= 0:
            raise StockConflict("a return adds stock: delta must be positive")
        level = self._level(sku, location_id, create=True)
        if delta:
            self._change(level, cause, delta, 0, at, reference)
        return level

    # ---- internals ----------------------------------------------------------------------
    def _level(self, sku: str, location_id: str, *, create: bool = False) -> StockLevel:
        if location_id not in self.locations:
            raise UnknownLocation(f"no location {location_id!r}")
        level = self.levels.get((sku, location_id))
        if level is None:
            if not create:
                raise StockConflict(f"no stock of {sku} at {location_id}")
            level = self.add_level(StockLevel(sku, location_id))
            self.new_levels.add((sku, location_id))
        return level

    def _change(
        self,
        level: StockLevel,
        cause: MovementCause,
        on_hand_delta: int,
        reserved_delta: int,
        at: datetime,
        reference: str | None,
        reservation_id: str | None = None,
    ) -> None:
        was_low = level.on_hand - level.reserved <= level.safety_stock
        entry = level.apply(cause, on_hand_delta, reserved_delta, at, reference, reservation_id)
        self.new_ledger.append(entry)
        key = (level.sku, level.location_id)
        if key not in self.new_levels:  # _mark, inlined
            self.dirty_levels.add(key)
        if not was_low and level.on_hand - level.reserved <= level.safety_stock:
            self.new_events.append(
                StockEvent(
                    StockEventType.INVENTORY_LOW,
                    level.sku,
                    level.location_id,
                    level.safety_stock,
                    level.available,
                    at,
                    None,
                    cause,
                )
            )

    def _mark(self, level: StockLevel) -> None:
        key = (level.sku, level.location_id)
        if key not in self.new_levels:
            self.dirty_levels.add(key)

    def _touch(self, res: Reservation) -> None:
        if res.id not in self.new_reservations:
            self.dirty_reservations.add(res.id)

    def take_changes(self) -> tuple[list[LedgerEntry], list[StockEvent]]:
        ledger, events = self.new_ledger, self.new_events
        self.new_ledger, self.new_events = [], []
        return ledger, events


@dataclass(frozen=True, slots=True)
class RoutingRecord:
    """A routing decision as stored with its order: why these locations, what waits."""

    order_id: str
    outcome: str  # routed | backordered | unroutable (domain/routing.py RoutingOutcome)
    locations: tuple[str, ...]
    backordered: Mapping[str, int]  # sku -> units waiting for stock (backorder/preorder)
    explanation: Mapping[str, object]  # RoutingDecision.as_dict() plus its text
    decided_at: datetime
    # Unroutable only: sku -> units of each line no location could serve (retried when
    # stock of that SKU arrives).
    short: Mapping[str, int] = field(default_factory=dict)

    @property
    def day(self) -> str:
        """The UTC day whose capacity the decision uses (capacity is orders per day)."""
        return self.decided_at.astimezone(UTC).date().isoformat()


def replay(entries: Iterable[LedgerEntry]) -> dict[tuple[str, str], tuple[int, int]]:
    """(on_hand, reserved) per (SKU, location), rebuilt from the ledger alone."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for e in entries:
        on_hand, reserved = out.get((e.sku, e.location_id), (0, 0))
        out[(e.sku, e.location_id)] = (on_hand + e.on_hand_delta, reserved + e.reserved_delta)
    return out


class ReserveOn(StrEnum):
    """When a channel's orders take stock: as soon as accepted, or only once paid."""

    ACCEPTED = "accepted"
    PAID = "paid"


@dataclass(frozen=True, slots=True)
class InventoryPolicy:
    locations: Mapping[str, Location]
    reserve_on: Mapping[str, ReserveOn] = field(default_factory=dict)  # per channel id
    default_reserve_on: ReserveOn = ReserveOn.ACCEPTED
    unpaid_ttl: timedelta | None = timedelta(minutes=30)  # None: unpaid holds never lapse
    routing: RoutingSetup | None = None  # None: the default rules over `locations`

    def reserves_on(self, channel_id: str) -> ReserveOn:
        return self.reserve_on.get(channel_id, self.default_reserve_on)
