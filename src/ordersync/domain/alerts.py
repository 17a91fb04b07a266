"""Shipment anomaly rules and the timer index that evaluates them.

A rule is pure: `due_at(shipment)` says from when it could fire (None: it cannot, in the
shipment's current state) and `check(shipment, now)` returns the alert if it fires now. The
clock is always passed in, so tests move time by hand.

`TimerIndex` keeps ONE heap entry per open shipment, keyed by the earliest due time over
the rules that have not yet fired for it. A sweep pops only the entries that are due, so
its cost is O(due · log n), not O(open shipments). Entries are invalidated lazily: each
shipment has a generation, and a popped entry from an older generation is dropped. Each
alert is raised at most once per (shipment, rule); the set of raised pairs and the due
times are the durable state (`to_state` / `from_state`), so a restart neither loses a timer
that fell due while the process was down nor repeats an alert already raised.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from ordersync.domain.shipments import Shipment, ShipmentStatus

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _us(t: datetime) -> int:
    return (t - _EPOCH) // _US


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class AlertKind(StrEnum):
    NO_PICKUP = "shipment.no_pickup"
    NO_UPDATE = "shipment.no_update"
    DELIVERY_OVERDUE = "shipment.delivery_overdue"
    PICKUP_POINT_WAIT = "shipment.pickup_point_wait"
    TRACKING_CORRECTED = "shipment.tracking_corrected"
    # Raised by what happened, not by a timer rule (no `Rule` has these kinds):
    CALLBACK_PARKED = "shipment.callback_parked"  # its callbacks kept failing to apply
    TRACKING_EXPIRED = "shipment.tracking_expired"  # polled to `max_age`, never final


@dataclass(frozen=True, slots=True)
class Alert:
    shipment_id: str
    kind: AlertKind
    due_at: datetime  # when the rule fell due
    raised_at: datetime  # the `now` of the sweep that raised it
    detail: str
    marks_exception: bool = False  # the shipment counts as a logistics exception

    @property
    def key(self) -> tuple[str, AlertKind]:
        return (self.shipment_id, self.kind)


class Rule(Protocol):
    @property
    def kind(self) -> AlertKind: ...

    def due_at(self, shipment: Shipment) -> datetime | None: ...

    def check(self, shipment: Shipment, now: datetime) -> Alert | None: ...


class _Rule:
    kind: AlertKind
    marks_exception = False

    def due_at(self, shipment: Shipment) -> datetime | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def detail(self, shipment: Shipment) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, shipment: Shipment, now: datetime) -> Alert | None:
        due = self.due_at(shipment)
        if due is None or now < due:
            return None
        return Alert(
            shipment.shipment_id, self.kind, due, now, self.detail(shipment), self.marks_exception
        )


@dataclass(frozen=True)
class NoPickup(_Rule):
    """Booked, and the carrier has not picked the parcel up within `within` (default 48 h)."""

    within: timedelta = timedelta(hours=48)
    kind: AlertKind = AlertKind.NO_PICKUP
    marks_exception = True

    def due_at(self, shipment: Shipment) -> datetime | None:
        if shipment.is_terminal or shipment.picked_up_at is not None:
            return None
        return shipment.booked_at + self.within

    def detail(self, shipment: Shipment) -> str:
        return f"not picked up within {self.within} of booking"


@dataclass(frozen=True)
class NoUpdate(_Rule):
    """Picked up, not yet final, and no tracking event for `silent_for` (default 72 h)."""

    silent_for: timedelta = timedelta(hours=72)
    kind: AlertKind = AlertKind.NO_UPDATE

    def due_at(self, shipment: Shipment) -> datetime | None:
        last = shipment.last_event_at
        if shipment.is_terminal or shipment.picked_up_at is None or last is None:
            return None
        return last + self.silent_for

    def detail(self, shipment: Shipment) -> str:
        return f"no tracking update for {self.silent_for} (last {shipment.last_event_at})"


@dataclass(frozen=True)
class DeliveryOverdue(_Rule):
    """Not delivered by the promised date (plus `grace`).

    The promise is the shipment's own (`promised_by`, from the booking or the order); a
    shipment promised nothing is held to `default_transit` after booking, if one is set.
    """

    grace: timedelta = timedelta(0)
    default_transit: timedelta | None = None
    kind: AlertKind = AlertKind.DELIVERY_OVERDUE

    def promised(self, shipment: Shipment) -> datetime | None:
        if shipment.promised_by is not None:
            return shipment.promised_by
        if self.default_transit is not None:
            return shipment.booked_at + self.default_transit
        return None

    def due_at(self, shipment: Shipment) -> datetime | None:
        promised = self.promised(shipment)
        if promised is None or shipment.is_terminal:
            return None
        return promised + self.grace

    def detail(self, shipment: Shipment) -> str:
        return f"not delivered by the promised {self.promised(shipment)}"


@dataclass(frozen=True)
class PickupPointWait(_Rule):
    """Waiting at a locker or pickup point for longer than `longer_than` (default 72 h)."""

    longer_than: timedelta = timedelta(hours=72)
    kind: AlertKind = AlertKind.PICKUP_POINT_WAIT

    def due_at(self, shipment: Shipment) -> datetime | None:
        if shipment.status is not ShipmentStatus.AVAILABLE_FOR_PICKUP:
            return None
        since = shipment.status_since
        return None if since is None else since + self.longer_than

    def detail(self, shipment: Shipment) -> str:
        return f"waiting at a pickup point since {shipment.status_since}"


@dataclass(frozen=True)
class TrackingCorrected(_Rule):
    """The carrier corrected the carrier code or the tracking number: fires at once."""

    kind: AlertKind = AlertKind.TRACKING_CORRECTED

    def due_at(self, shipment: Shipment) -> datetime | None:
        # Due from booking: any sweep after the correction is seen raises it.
        return shipment.booked_at if shipment.corrections else None

    def detail(self, shipment: Shipment) -> str:
        return "; ".join(f"{c.field}: {c.old} -> {c.new}" for c in shipment.corrections)


def default_rules(
    *,
    pickup_within: timedelta = timedelta(hours=48),
    silent_for: timedelta = timedelta(hours=72),
    overdue_grace: timedelta = timedelta(0),
    pickup_point_wait: timedelta = timedelta(hours=72),
) -> tuple[Rule, ...]:
    return (
        NoPickup(pickup_within),
        NoUpdate(silent_for),
        DeliveryOverdue(overdue_grace),
        PickupPointWait(pickup_point_wait),
        TrackingCorrected(),
    )


def build_rules(
    *,
    no_pickup: timedelta | None = timedelta(hours=48),
    no_update: timedelta | None = timedelta(hours=72),
    overdue_grace: timedelta | None = timedelta(0),
    default_transit: timedelta | None = None,
    pickup_point_wait: timedelta | None = timedelta(hours=72),
    tracking_corrected: bool = True,
) -> tuple[Rule, ...]:
    """The configured rules; None (or False) leaves a rule out."""
    rules: list[Rule] = []
    if no_pickup is not None:
        rules.append(NoPickup(no_pickup))
    if no_update is not None:
        rules.append(NoUpdate(no_update))
    if overdue_grace is not None:
        rules.append(DeliveryOverdue(overdue_grace, default_transit))
    if pickup_point_wait is not None:
        rules.append(PickupPointWait(pickup_point_wait))
    if tracking_corrected:
        rules.append(TrackingCorrected())
    return tuple(rules)


def evaluate(shipment: Shipment, now: datetime, rules: Iterable[Rule]) -> list[Alert]:
    """Every rule that fires for this shipment now (no memory of earlier alerts)."""
    return [a for r in rules if (a := r.check(shipment, now)) is not None]


@dataclass(frozen=True, slots=True)
class SweepStats:
    popped: int  # heap entries taken (current and stale)
    evaluated: int  # shipments whose rules were run
    raised: int


class TimerIndex:
    """Durable timers for open shipments: only due shipments are looked at in a sweep."""

    def __init__(self, rules: Iterable[Rule] | None = None) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules) if rules is not None else default_rules()
        self._kinds = {r.kind for r in self.rules}
        self._heap: list[tuple[int, int, str]] = []  # (due_us, generation, shipment_id)
        self._due: dict[str, tuple[int, int]] = {}  # shipment_id -> (due_us, generation)
        self._raised: dict[str, set[AlertKind]] = {}
        self._generation = 0
        self.last_stats = SweepStats(0, 0, 0)

    def __len__(self) -> int:
        return len(self._due)

    def raised(self, shipment_id: str) -> frozenset[AlertKind]:
        return frozenset(self._raised.get(shipment_id, ()))

    def next_due(self, shipment_id: str) -> datetime | None:
        held = self._due.get(shipment_id)
        return None if held is None else _from_us(held[0])

    def _next_due_us(self, shipment: Shipment) -> int | None:
        done = self._raised.get(shipment.shipment_id, ())
        best: int | None = None
        for rule in self.rules:
            if rule.kind in done:
                continue
            due = rule.due_at(shipment)
            if due is not None:
                us = _us(due)
                if best is None or us < best:
                    best = us
        return best

    def _schedule(self, shipment_id: str, due_us: int | None) -> None:
        if due_us is None:
            self._due.pop(shipment_id, None)
            return
        held = self._due.get(shipment_id)
        if held is not None and held[0] == due_us:
            return
        self._generation += 1
        self._due[shipment_id] = (due_us, self._generation)
        heapq.heappush(self._heap, (due_us, self._generation, shipment_id))

    def track(self, shipment: Shipment) -> None:
        """(Re)schedule after a booking or a change; call it after every merge."""
        self._schedule(shipment.shipment_id, self._next_due_us(shipment))

    def forget(self, shipment_id: str) -> None:
        """A closed shipment: drop its timer and its raised set (its heap entry goes stale)."""
        self._due.pop(shipment_id, None)
        self._raised.pop(shipment_id, None)

    def sweep(self, now: datetime, lookup: Callable[[str], Shipment | None]) -> list[Alert]:
        """Raise every alert due at `now`, each at most once per (shipment, rule)."""
        now_us = _us(now)
        heap = self._heap
        alerts: list[Alert] = []
        popped = evaluated = 0
        while heap and heap[0][0] <= now_us:
            _, generation, shipment_id = heapq.heappop(heap)
            popped += 1
            held = self._due.get(shipment_id)
            if held is None or held[1] != generation:
                continue  # superseded or forgotten
            del self._due[shipment_id]
            shipment = lookup(shipment_id)
            if shipment is None:
                self._raised.pop(shipment_id, None)
                continue
            evaluated += 1
            done = self._raised.setdefault(shipment_id, set())
            for rule in self.rules:
                if rule.kind in done:
                    continue
                alert = rule.check(shipment, now)
                if alert is not None:
                    done.add(rule.kind)
                    alerts.append(alert)
            if not done:
                del self._raised[shipment_id]
            self._schedule(shipment_id, self._next_due_us(shipment))
        self.last_stats = SweepStats(popped, evaluated, len(alerts))
        return alerts

    # ---- durable state ----------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """JSON-able: due times of open timers and the (shipment, rule) pairs already raised."""
        return {
            "version": 1,
            "due": {sid: due_us for sid, (due_us, _) in self._due.items()},
            "raised": {sid: sorted(str(k) for k in kinds) for sid, kinds in self._raised.items()},
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], rules: Iterable[Rule] | None = None
    ) -> TimerIndex:
        index = cls(rules)
        if state.get("version") != 1:
            raise ValueError(f"unknown timer state version {state.get('version')!r}")
        for sid, kinds in state.get("raised", {}).items():
            index._raised[sid] = {AlertKind(k) for k in kinds}
        entries: list[tuple[int, int, str]] = []
        for sid, due_us in state.get("due", {}).items():
            index._generation += 1
            index._due[sid] = (int(due_us), index._generation)
            entries.append((int(due_us), index._generation, sid))
        heapq.heapify(entries)
        index._heap = entries
        return index
