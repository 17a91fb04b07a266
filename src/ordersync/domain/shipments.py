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
from typing import Any


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
    PARTIALLY_SHIPPED = "partially_shipped"  # some shipments picked up, not all
    SHIPPED = "shipped"  # every shipment picked up (or further)
    DELIVERED = "delivered"  # every shipment delivered


def fulfillment_of(shipments: Iterable[Shipment]) -> FulfillmentStatus:
    """Pass the order's active shipments (a cancelled one ships nothing)."""
    held = list(shipments)
    if not held:
        return FulfillmentStatus.UNFULFILLED
    if all(s.status is ShipmentStatus.DELIVERED for s in held):
        return FulfillmentStatus.DELIVERED
    picked = [s.picked_up_at is not None or s.status is ShipmentStatus.DELIVERED for s in held]
    if all(picked):
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
