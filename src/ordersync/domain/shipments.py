"""Shipments: the canonical status set, tracking events, merging and carrier mapping tables.

Pure Python. A carrier tells us about a parcel in pieces that arrive late, twice, out of
order, or as full snapshots of everything it knows. A `Shipment` keeps the *set* of tracking
events it has seen, deduplicated, and derives its current status from that set alone, so
the result does not depend on the order in which callbacks arrived (merging is a join:
commutative, associative, idempotent).

Rules:

- an event is identified by (carrier time, raw text, raw code); the same trace seen again
  (a replayed push, the next full snapshot) adds nothing;
- the current status is the status of the latest event by carrier time that has one;
- once a terminal status (delivered, returned, cancelled, expired) is known, only a later
  terminal event replaces it: a late scan saying "in transit" does not roll a delivered
  parcel back (it is still recorded, with its raw code and text, for audit);
- events whose raw code has no mapping keep their raw code and text, with no status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol


class ShipmentStatus(StrEnum):
    PENDING = "pending"  # booked, the carrier has told us nothing yet
    INFO_RECEIVED = "info_received"  # the carrier knows the parcel, not picked up
    PICKED_UP = "picked_up"
    IN_TRANSIT = "in_transit"
    OUT_FOR_DELIVERY = "out_for_delivery"
    AVAILABLE_FOR_PICKUP = "available_for_pickup"  # locker or pickup point
    DELIVERY_FAILED = "delivery_failed"  # an attempt failed, another may follow
    EXCEPTION = "exception"
    RETURNING = "returning"
    RETURNED = "returned"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


TERMINAL: frozenset[ShipmentStatus] = frozenset(
    {
        ShipmentStatus.DELIVERED,
        ShipmentStatus.RETURNED,
        ShipmentStatus.CANCELLED,
        ShipmentStatus.EXPIRED,
    }
)
# Statuses that prove the carrier has the parcel in hand.
PICKED_UP_OR_LATER: frozenset[ShipmentStatus] = frozenset(
    set(ShipmentStatus)
    - {ShipmentStatus.PENDING, ShipmentStatus.INFO_RECEIVED, ShipmentStatus.CANCELLED}
)


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError(f"carrier time {t!r} has no time zone")
    return t.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class TrackingEvent:
    """One line of a carrier's tracking history, mapped, with what the carrier said."""

    carrier_time: datetime  # when it happened, per the carrier (aware, UTC)
    raw_code: str  # the carrier's own code ("" when the carrier sent none)
    raw_text: str  # the carrier's own description, verbatim
    status: ShipmentStatus | None  # None: the raw code has no mapping (kept for audit)
    location: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "carrier_time", _utc(self.carrier_time))

    @property
    def key(self) -> tuple[datetime, str, str]:
        """Identity for dedupe: the same trace in another push is the same event."""
        return (self.carrier_time, self.raw_text.strip(), self.raw_code)

    def _rank(self) -> tuple[bool, str, str]:
        # Total order among events that share a key: the richer one wins, deterministically.
        return (self.status is not None, self.status or "", self.location)

    def to_dict(self) -> dict[str, Any]:
        return {
            "carrier_time": self.carrier_time.isoformat(),
            "raw_code": self.raw_code,
            "raw_text": self.raw_text,
            "status": None if self.status is None else str(self.status),
            "location": self.location,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrackingEvent:
        status = d.get("status")
        return cls(
            carrier_time=datetime.fromisoformat(d["carrier_time"]),
            raw_code=d["raw_code"],
            raw_text=d["raw_text"],
            status=None if status is None else ShipmentStatus(status),
            location=d.get("location", ""),
        )


def _order_key(e: TrackingEvent) -> tuple[datetime, bool, str, str, str]:
    """Chronological order; ties broken by content so the order is total and stable."""
    return (e.carrier_time, e.status in TERMINAL, e.status or "", e.raw_code, e.raw_text)


@dataclass(frozen=True, slots=True)
class Correction:
    """The carrier (or aggregator) corrected the carrier code or the tracking number."""

    field: str  # "carrier_code" or "tracking_number"
    old: str
    new: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "old": self.old, "new": self.new}


@dataclass(frozen=True, slots=True)
class TrackingUpdate:
    """What one carrier callback says about one parcel, already mapped to canonical codes.

    `snapshot` is True when `events` is the carrier's full history (Kdniao and Kuaidi100
    pushes); merging treats both kinds alike, the flag is kept for audit and metrics.
    """

    carrier_kind: str
    tracking_number: str
    carrier_code: str  # the aggregator's code of the real carrier ("SF", "yuantong", "USPS")
    events: tuple[TrackingEvent, ...]
    snapshot: bool = False
    raw_state: str = ""  # the callback's shipment-level code (Kdniao StateEx, Kuaidi100 state)
    state: ShipmentStatus | None = None  # raw_state mapped
    corrections: tuple[Correction, ...] = ()
    source_id: str = ""  # stable id of the callback (the inbox key)


@dataclass(frozen=True, slots=True)
class MergeResult:
    added: tuple[TrackingEvent, ...]
    previous: ShipmentStatus
    current: ShipmentStatus

    @property
    def changed(self) -> bool:
        return self.previous is not self.current


@dataclass(slots=True)
class Shipment:
    """A parcel booked with a carrier, and everything its carrier has told us about it."""

    shipment_id: str
    carrier_id: str
    tracking_number: str
    booked_at: datetime
    carrier_code: str = ""
    promised_by: datetime | None = None  # promised delivery date, if the order has one
    corrections: tuple[Correction, ...] = ()
    _events: dict[tuple[datetime, str, str], TrackingEvent] = field(default_factory=dict)
    _timeline: tuple[TrackingEvent, ...] | None = None

    def __post_init__(self) -> None:
        self.booked_at = _utc(self.booked_at)
        if self.promised_by is not None:
            self.promised_by = _utc(self.promised_by)

    # ---- reading ----------------------------------------------------------------------

    @property
    def events(self) -> tuple[TrackingEvent, ...]:
        """Every distinct event, oldest first by carrier time."""
        if self._timeline is None:
            self._timeline = tuple(sorted(self._events.values(), key=_order_key))
        return self._timeline

    @property
    def status_event(self) -> TrackingEvent | None:
        """The event the current status comes from (None while still pending)."""
        latest: TrackingEvent | None = None
        latest_terminal: TrackingEvent | None = None
        for e in self.events:
            if e.status is None:
                continue
            latest = e
            if e.status in TERMINAL:
                latest_terminal = e
        return latest_terminal or latest

    @property
    def status(self) -> ShipmentStatus:
        e = self.status_event
        return ShipmentStatus.PENDING if e is None else e.status or ShipmentStatus.PENDING

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def picked_up_at(self) -> datetime | None:
        """Carrier time of the first event proving the carrier has the parcel."""
        for e in self.events:
            if e.status in PICKED_UP_OR_LATER:
                return e.carrier_time
        return None

    @property
    def last_event_at(self) -> datetime | None:
        events = self.events
        return events[-1].carrier_time if events else None

    @property
    def status_since(self) -> datetime | None:
        """Start of the trailing run of events with the current status (e.g. at a locker)."""
        current = self.status
        since: datetime | None = None
        for e in reversed(self.events):
            if e.status is None:
                continue
            if e.status is not current:
                break
            since = e.carrier_time
        return since

    # ---- merging ----------------------------------------------------------------------

    def merge(self, events: Iterable[TrackingEvent]) -> MergeResult:
        """Add events (a snapshot, a delta, a replay: all the same), deduplicated."""
        before = self.status
        added: list[TrackingEvent] = []
        for e in events:
            held = self._events.get(e.key)
            if held is None or e._rank() > held._rank():
                self._events[e.key] = e
                added.append(e)
        if added:
            self._timeline = None
        return MergeResult(tuple(added), before, self.status)

    def apply(self, update: TrackingUpdate) -> MergeResult:
        """Merge a carrier callback: its events, and any carrier/tracking-number correction."""
        for c in update.corrections:
            if c not in self.corrections:
                self.corrections = (*self.corrections, c)
                if c.field == "carrier_code":
                    self.carrier_code = c.new
                elif c.field == "tracking_number":
                    self.tracking_number = c.new
        if update.carrier_code and not self.carrier_code:
            self.carrier_code = update.carrier_code
        return self.merge(update.events)

    # ---- persistence ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "shipment_id": self.shipment_id,
            "carrier_id": self.carrier_id,
            "tracking_number": self.tracking_number,
            "carrier_code": self.carrier_code,
            "booked_at": self.booked_at.isoformat(),
            "promised_by": None if self.promised_by is None else self.promised_by.isoformat(),
            "corrections": [c.to_dict() for c in self.corrections],
            "status": str(self.status),
            "events": [e.to_dict() for e in self.events],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Shipment:
        s = cls(
            shipment_id=d["shipment_id"],
            carrier_id=d["carrier_id"],
            tracking_number=d["tracking_number"],
            carrier_code=d.get("carrier_code", ""),
            booked_at=datetime.fromisoformat(d["booked_at"]),
            promised_by=(
                None if d.get("promised_by") is None else datetime.fromisoformat(d["promised_by"])
            ),
            corrections=tuple(Correction(**c) for c in d.get("corrections", ())),
        )
        s.merge(TrackingEvent.from_dict(e) for e in d.get("events", ()))
        return s


# ---- carrier mapping tables -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodeMapping:
    """One raw carrier code, the canonical status it means, and the carrier's wording."""

    raw_code: str
    status: ShipmentStatus
    description: str = ""


class MappingConflictError(ValueError):
    def __init__(self, kind: str, conflicts: Mapping[str, frozenset[ShipmentStatus]]) -> None:
        self.conflicts = dict(conflicts)
        detail = "; ".join(
            f"{code!r} -> {sorted(str(s) for s in statuses)}"
            for code, statuses in sorted(conflicts.items())
        )
        super().__init__(f"{kind}: raw codes mapped to two statuses: {detail}")


def find_conflicts(rows: Iterable[CodeMapping]) -> dict[str, frozenset[ShipmentStatus]]:
    """Every raw code mapped to more than one status (empty when the table is sound)."""
    seen: dict[str, set[ShipmentStatus]] = {}
    for row in rows:
        seen.setdefault(row.raw_code, set()).add(row.status)
    return {code: frozenset(s) for code, s in seen.items() if len(s) > 1}


@dataclass(frozen=True)
class MappingTable:
    """A carrier's raw code -> canonical status table. Build it with `from_rows`."""

    kind: str
    rows: tuple[CodeMapping, ...]
    _by_code: Mapping[str, ShipmentStatus] = field(repr=False, compare=False)

    @classmethod
    def from_rows(cls, kind: str, rows: Sequence[CodeMapping]) -> MappingTable:
        conflicts = find_conflicts(rows)
        if conflicts:
            raise MappingConflictError(kind, conflicts)
        return cls(kind, tuple(rows), {r.raw_code: r.status for r in rows})

    def with_overrides(self, overrides: Mapping[str, ShipmentStatus | str]) -> MappingTable:
        """A per-carrier configuration on top of the defaults (an override replaces a row)."""
        rows = {r.raw_code: r for r in self.rows}
        for code, status in overrides.items():
            old = rows.get(code)
            rows[code] = CodeMapping(code, ShipmentStatus(status), old.description if old else "")
        return MappingTable.from_rows(self.kind, list(rows.values()))

    def lookup(self, raw_code: str) -> ShipmentStatus | None:
        return self._by_code.get(raw_code)

    def __contains__(self, raw_code: object) -> bool:
        return raw_code in self._by_code

    def event(
        self, carrier_time: datetime, raw_code: str, raw_text: str, location: str = ""
    ) -> TrackingEvent:
        """A tracking event with its raw code and text kept and its status mapped."""
        return TrackingEvent(carrier_time, raw_code, raw_text, self.lookup(raw_code), location)


# ---- serialising a callback for the inbox ----------------------------------------------


def update_to_dict(update: TrackingUpdate) -> dict[str, Any]:
    """A verified, mapped callback as stored in the carrier inbox (applied later)."""
    return {
        "carrier_kind": update.carrier_kind,
        "tracking_number": update.tracking_number,
        "carrier_code": update.carrier_code,
        "events": [e.to_dict() for e in update.events],
        "snapshot": update.snapshot,
        "raw_state": update.raw_state,
        "state": None if update.state is None else str(update.state),
        "corrections": [c.to_dict() for c in update.corrections],
        "source_id": update.source_id,
    }


def update_from_dict(d: Mapping[str, Any]) -> TrackingUpdate:
    state = d.get("state")
    return TrackingUpdate(
        carrier_kind=d["carrier_kind"],
        tracking_number=d["tracking_number"],
        carrier_code=d.get("carrier_code", ""),
        events=tuple(TrackingEvent.from_dict(e) for e in d.get("events", ())),
        snapshot=bool(d.get("snapshot", False)),
        raw_state=d.get("raw_state", ""),
        state=None if state is None else ShipmentStatus(state),
        corrections=tuple(Correction(**c) for c in d.get("corrections", ())),
        source_id=d.get("source_id", ""),
    )


# ---- an order's fulfilment, derived from its shipments -----------------------------------


class FulfillmentStatus(StrEnum):
    """How far an order's goods have gone, from its active shipments alone."""

    UNFULFILLED = "unfulfilled"  # no shipment, or none picked up yet
    PARTIALLY_SHIPPED = "partially_shipped"  # some picked up; not all, or units in none
    SHIPPED = "shipped"  # every unit in a parcel, every parcel picked up (or further)
    DELIVERED = "delivered"  # every unit in a parcel, every parcel delivered


def fulfillment_of(shipments: Iterable[Shipment], *, complete: bool = True) -> FulfillmentStatus:
    """Pass the order's active shipments (a cancelled one ships nothing), and whether they
    hold every unit of the order (`covers`): while some are in no parcel, the order is at
    most partially shipped."""
    held = list(shipments)
    if not held:
        return FulfillmentStatus.UNFULFILLED
    if complete and all(s.status is ShipmentStatus.DELIVERED for s in held):
        return FulfillmentStatus.DELIVERED
    picked = [s.picked_up_at is not None or s.status is ShipmentStatus.DELIVERED for s in held]
    if complete and all(picked):
        return FulfillmentStatus.SHIPPED
    return FulfillmentStatus.PARTIALLY_SHIPPED if any(picked) else FulfillmentStatus.UNFULFILLED


def delivered_at(shipments: Iterable[Shipment]) -> datetime | None:
    """Carrier time of the last delivery among delivered shipments (None: none delivered)."""
    times = [
        e.carrier_time
        for s in shipments
        if s.status is ShipmentStatus.DELIVERED and (e := s.status_event) is not None
    ]
    return max(times, default=None)


@dataclass(frozen=True, slots=True)
class CallbackRetry:
    """When a shipment's recorded callbacks that failed to apply are tried again: after
    `base`, doubling per failure up to `cap`; after `max_attempts` failures they are parked
    (left for an operator to look at and replay) instead of being retried forever."""

    max_attempts: int = 10
    base: timedelta = timedelta(seconds=5)
    cap: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def next_try(self, attempts: int, now: datetime) -> datetime | None:
        """After the `attempts`-th failure: when to try again (None: park it)."""
        if attempts >= self.max_attempts:
            return None
        return now + min(self.base * (1 << min(max(attempts - 1, 0), 30)), self.cap)


# ---- parcels: which of an order's lines a shipment carries --------------------------------
#
# An order may leave in several parcels; each outbound shipment records the units of the
# order's lines it carries. A line is known by its id on the platform where it has one (the
# write-back needs it), else by its SKU, else by its position: lines sharing a key share
# their units. A shipment stored before parcels existed carries the whole order.


def line_key(external_id: str | None, sku: str | None, index: int) -> str:
    if external_id:
        return f"id:{external_id}"
    if sku:
        return f"sku:{sku}"
    return f"line:{index}"


@dataclass(frozen=True, slots=True)
class ParcelLine:
    """Units of one order line in a parcel (`line`: the line's position when booked)."""

    external_id: str | None
    sku: str | None
    quantity: int
    line: int = 0

    @property
    def key(self) -> str:
        return line_key(self.external_id, self.sku, self.line)

    def public(self) -> dict[str, Any]:
        """As the write-back reads it: the platform's line id, the SKU, how many."""
        return {"external_id": self.external_id, "sku": self.sku, "quantity": self.quantity}

    def to_dict(self) -> dict[str, Any]:
        return {**self.public(), "line": self.line}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParcelLine:
        return cls(d.get("external_id"), d.get("sku"), int(d["quantity"]), int(d.get("line", 0)))


class OrderedLine(Protocol):
    """What parcels need of an order line (domain/orders.py `OrderLine` fits)."""

    @property
    def external_id(self) -> str | None: ...

    @property
    def sku(self) -> str | None: ...

    @property
    def quantity(self) -> int: ...


class ParcelRefused(ValueError):
    """A parcel the order cannot hold: `status` (409 for the order's state, 422 for the
    request) and `code` for the API."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def units_of(lines: Sequence[OrderedLine]) -> dict[str, int]:
    """The order's units per line key (lines without units ship nothing)."""
    units: dict[str, int] = {}
    for i, line in enumerate(lines):
        if line.quantity > 0:
            key = line_key(line.external_id, line.sku, i)
            units[key] = units.get(key, 0) + line.quantity
    return units


def whole_order(lines: Sequence[OrderedLine]) -> tuple[ParcelLine, ...]:
    """Every unit of the order, one parcel line per line key."""
    return _merge(
        ParcelLine(line.external_id, line.sku, line.quantity, i)
        for i, line in enumerate(lines)
        if line.quantity > 0
    )


def _merge(lines: Iterable[ParcelLine]) -> tuple[ParcelLine, ...]:
    merged: dict[str, ParcelLine] = {}
    for p in lines:
        held = merged.get(p.key)
        merged[p.key] = (
            p
            if held is None
            else ParcelLine(held.external_id, held.sku, held.quantity + p.quantity, held.line)
        )
    return tuple(merged.values())


def remaining(
    lines: Sequence[OrderedLine], parcels: Iterable[Sequence[ParcelLine] | None]
) -> dict[str, int]:
    """Units per line key not in any of `parcels` (None: a parcel of the whole order);
    negative where parcels hold more than the order (it was changed since)."""
    left = units_of(lines)
    for parcel in parcels:
        for p in whole_order(lines) if parcel is None else parcel:
            if p.key in left:
                left[p.key] -= p.quantity
    return left


def covers(lines: Sequence[OrderedLine], parcels: Iterable[Sequence[ParcelLine] | None]) -> bool:
    """Whether the parcels hold every unit of the order."""
    return all(n <= 0 for n in remaining(lines, parcels).values())


def is_whole(lines: Sequence[OrderedLine], parcel: Sequence[ParcelLine]) -> bool:
    """Whether one parcel carries the whole order (the write-back's "not partial")."""
    held: dict[str, int] = {}
    for p in parcel:
        held[p.key] = held.get(p.key, 0) + p.quantity
    return held == units_of(lines)


def pick_lines(
    lines: Sequence[OrderedLine],
    requested: Sequence[tuple[str | None, str | None, int]],
    left: Mapping[str, int],
) -> tuple[ParcelLine, ...]:
    """The parcel lines for `requested` (line id or SKU, quantity), out of the units `left`.

    A line id names one line; a SKU takes from the order's lines of that SKU in turn.
    Unknown lines are a 422; more units than the order has left outside other parcels, a
    409 (nothing is booked then)."""
    free = dict(left)
    picked: list[ParcelLine] = []
    for external_id, sku, quantity in requested:
        if quantity <= 0:
            raise ParcelRefused(422, "invalid_quantity", "a parcel line needs a positive quantity")
        if external_id:
            matches = [(i, x) for i, x in enumerate(lines) if x.external_id == external_id]
            named = f"line {external_id!r}"
        elif sku:
            matches = [(i, x) for i, x in enumerate(lines) if x.sku == sku]
            named = f"SKU {sku!r}"
        else:
            raise ParcelRefused(422, "line_unnamed", "a parcel line needs an external_id or a sku")
        if sku and external_id and any(x.sku != sku for _, x in matches):
            raise ParcelRefused(
                422, "line_mismatch", f"line {external_id!r} of the order is not SKU {sku!r}"
            )
        if not matches:
            raise ParcelRefused(422, "line_not_in_order", f"the order has no {named}")
        need = quantity
        for i, x in matches:
            key = line_key(x.external_id, x.sku, i)
            take = min(need, max(free.get(key, 0), 0))
            if take:
                free[key] -= take
                picked.append(ParcelLine(x.external_id, x.sku, take, i))
                need -= take
            if not need:
                break
        if need:
            have = quantity - need
            raise ParcelRefused(
                409,
                "parcel_exceeds_order",
                f"{named}: {quantity} asked for this parcel, but only {have} of its units"
                " are not in another active parcel",
            )
    return _merge(picked)


def rest_of(lines: Sequence[OrderedLine], left: Mapping[str, int]) -> tuple[ParcelLine, ...]:
    """The units `left` (per line key) as parcel lines: what a booking without lines takes."""
    free = dict(left)
    picked: list[ParcelLine] = []
    for i, line in enumerate(lines):
        key = line_key(line.external_id, line.sku, i)
        take = min(line.quantity, max(free.get(key, 0), 0))
        if take > 0:
            free[key] -= take
            picked.append(ParcelLine(line.external_id, line.sku, take, i))
    return _merge(picked)
