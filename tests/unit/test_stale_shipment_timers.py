"""Anomaly rules and durable timers, with a clock moved by hand: each alert is raised once,
at its due time, never before, and a restart from persisted state neither loses a timer nor
repeats an alert."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from ordersync.domain.alerts import (
    AlertKind,
    DeliveryOverdue,
    NoPickup,
    NoUpdate,
    PickupPointWait,
    TimerIndex,
    TrackingCorrected,
    default_rules,
    evaluate,
)
from ordersync.domain.shipments import Correction, Shipment, ShipmentStatus, TrackingEvent

S = ShipmentStatus
BOOKED = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
H = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


class Clock:
    """A controllable clock: time moves only when the test says so."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def advance(self, by: timedelta) -> datetime:
        self.now += by
        return self.now


def booked(sid: str = "shp-1", **kw: object) -> Shipment:
    return Shipment(sid, "kdniao-main", f"SF{sid}", booked_at=BOOKED, **kw)  # type: ignore[arg-type]


def scan(hours: float, code: str, status: S, text: str = "scan") -> TrackingEvent:
    return TrackingEvent(BOOKED + hours * H, code, text, status)


class Store(dict[str, Shipment]):
    def add(self, *shipments: Shipment) -> Store:
        for s in shipments:
            self[s.shipment_id] = s
        return self


def test_an_unpicked_shipment_raises_exactly_one_alert_at_48_hours_and_none_before() -> None:
    """Sweeps every 10 minutes for four days: one no-pickup alert, raised at 48 h."""
    store = Store().add(booked())
    index = TimerIndex()
    index.track(store["shp-1"])
    clock = Clock(BOOKED)
    raised = []
    while clock.now < BOOKED + 96 * H:
        clock.advance(10 * MINUTE)
        for alert in index.sweep(clock.now, store.get):
            raised.append((clock.now, alert))
    assert len(raised) == 1
    when, alert = raised[0]
    assert when == BOOKED + 48 * H
    assert alert.kind is AlertKind.NO_PICKUP
    assert alert.marks_exception


def test_no_alert_one_microsecond_before_48_hours_and_one_exactly_at_48_hours() -> None:
    """The boundary: due at booking + 48 h, inclusive."""
    store = Store().add(booked())
    index = TimerIndex()
    index.track(store["shp-1"])
    assert index.sweep(BOOKED + 48 * H - timedelta(microseconds=1), store.get) == []
    assert [a.kind for a in index.sweep(BOOKED + 48 * H, store.get)] == [AlertKind.NO_PICKUP]


def test_a_shipment_picked_up_in_time_raises_no_pickup_alert() -> None:
    """A pickup scan at 47 h cancels the 48 h timer."""
    store = Store().add(booked())
    index = TimerIndex([NoPickup()])
    index.track(store["shp-1"])
    store["shp-1"].merge([scan(47, "1", S.PICKED_UP)])
    index.track(store["shp-1"])
    assert index.sweep(BOOKED + 200 * H, store.get) == []
    assert len(index) == 0


def test_a_pickup_after_the_alert_does_not_raise_it_again() -> None:
    """Raised once per (shipment, rule), even if the cause clears and the timer is re-armed."""
    store = Store().add(booked())
    index = TimerIndex([NoPickup()])
    index.track(store["shp-1"])
    assert len(index.sweep(BOOKED + 49 * H, store.get)) == 1
    index.track(store["shp-1"])
    assert index.sweep(BOOKED + 100 * H, store.get) == []


def test_the_pickup_window_is_configurable() -> None:
    """A 24 h rule fires at 24 h."""
    store = Store().add(booked())
    index = TimerIndex(default_rules(pickup_within=24 * H))
    index.track(store["shp-1"])
    assert index.sweep(BOOKED + 23 * H, store.get) == []
    assert [a.kind for a in index.sweep(BOOKED + 24 * H, store.get)] == [AlertKind.NO_PICKUP]


def test_no_tracking_update_for_n_hours_raises_once() -> None:
    """Silent for 72 h after the last scan: one no-update alert."""
    s = booked()
    s.merge([scan(2, "1", S.PICKED_UP), scan(10, "2", S.IN_TRANSIT)])
    rule = NoUpdate(silent_for=72 * H)
    assert rule.check(s, BOOKED + 81 * H) is None
    alert = rule.check(s, BOOKED + 82 * H)
    assert alert is not None
    assert alert.kind is AlertKind.NO_UPDATE


def test_a_new_scan_pushes_the_no_update_timer_back() -> None:
    """The index re-arms a shipment after a merge: due time follows the latest scan."""
    store = Store().add(booked())
    s = store["shp-1"]
    s.merge([scan(2, "1", S.PICKED_UP)])
    index = TimerIndex([NoUpdate(silent_for=24 * H)])
    index.track(s)
    assert index.next_due("shp-1") == BOOKED + 26 * H
    s.merge([scan(20, "2", S.IN_TRANSIT)])
    index.track(s)
    assert index.sweep(BOOKED + 30 * H, store.get) == []
    assert [a.kind for a in index.sweep(BOOKED + 44 * H, store.get)] == [AlertKind.NO_UPDATE]
    assert index.last_stats.popped == 1


def test_delivery_overdue_against_the_promised_date() -> None:
    """Promised for day 3, not delivered: overdue at day 3; delivered in time: no alert."""
    late = booked("late", promised_by=BOOKED + 72 * H)
    late.merge([scan(2, "1", S.PICKED_UP)])
    on_time = booked("on-time", promised_by=BOOKED + 72 * H)
    on_time.merge([scan(2, "1", S.PICKED_UP), scan(50, "3", S.DELIVERED)])
    rule = DeliveryOverdue()
    assert rule.check(late, BOOKED + 71 * H) is None
    assert rule.check(late, BOOKED + 72 * H) is not None
    assert rule.check(on_time, BOOKED + 200 * H) is None


def test_waiting_too_long_at_a_pickup_point() -> None:
    """In a locker since 30 h; a 48 h wait limit fires at 78 h, not after collection."""
    s = booked()
    s.merge([scan(2, "1", S.PICKED_UP), scan(30, "211", S.AVAILABLE_FOR_PICKUP, "已放入丰巢柜")])
    rule = PickupPointWait(longer_than=48 * H)
    assert rule.check(s, BOOKED + 77 * H) is None
    assert rule.check(s, BOOKED + 78 * H) is not None
    s.merge([scan(79, "311", S.DELIVERED, "已从丰巢柜取出")])
    assert rule.check(s, BOOKED + 80 * H) is None


def test_a_carrier_corrected_tracking_number_raises_at_the_next_sweep() -> None:
    """A correction seen in a callback is reported once, on the next sweep."""
    store = Store().add(booked())
    s = store["shp-1"]
    s.merge([scan(2, "1", S.PICKED_UP)])
    index = TimerIndex([TrackingCorrected()])
    index.track(s)
    assert index.sweep(BOOKED + 3 * H, store.get) == []
    s.corrections = (Correction("carrier_code", "SF", "yuantong"),)
    index.track(s)
    alerts = index.sweep(BOOKED + 3 * H + MINUTE, store.get)
    assert [a.kind for a in alerts] == [AlertKind.TRACKING_CORRECTED]
    assert "SF -> yuantong" in alerts[0].detail
    index.track(s)
    assert index.sweep(BOOKED + 9 * H, store.get) == []


def test_evaluate_is_pure_and_reports_every_firing_rule() -> None:
    """The plain function over (shipment, now) has no memory: it reports each firing rule."""
    s = booked(promised_by=BOOKED + 24 * H)
    kinds = {a.kind for a in evaluate(s, BOOKED + 50 * H, default_rules())}
    assert kinds == {AlertKind.NO_PICKUP, AlertKind.DELIVERY_OVERDUE}
    assert {a.kind for a in evaluate(s, BOOKED + 50 * H, default_rules())} == kinds


def test_a_sweep_looks_only_at_due_shipments() -> None:
    """1,000 shipments booked an hour apart: a sweep at 50 h evaluates only the due ones."""
    store = Store()
    index = TimerIndex([NoPickup()])
    for i in range(1000):
        s = Shipment(f"s{i}", "c", f"T{i}", booked_at=BOOKED + i * H)
        store.add(s)
        index.track(s)
    alerts = index.sweep(BOOKED + 50 * H, store.get)
    assert len(alerts) == 3  # booked at 0, 1 and 2 h
    assert index.last_stats.evaluated == 3
    assert len(index) == 997


def test_closed_and_vanished_shipments_drop_out_of_the_index() -> None:
    """forget() and a lookup returning None both retire the timer quietly."""
    store = Store().add(booked("a"), booked("b"))
    index = TimerIndex()
    index.track(store["a"])
    index.track(store["b"])
    index.forget("a")
    del store["b"]
    assert index.sweep(BOOKED + 100 * H, store.get) == []
    assert len(index) == 0


def test_restart_from_persisted_state_neither_loses_nor_repeats_alerts() -> None:
    """Raise for one shipment, persist, "crash", restore: the raised alert is not repeated,
    the timer that fell due while the process was down fires at the first sweep."""
    store = Store().add(booked("early"), Shipment("later", "c", "T2", booked_at=BOOKED + 10 * H))
    index = TimerIndex()
    for s in store.values():
        index.track(s)
    first = index.sweep(BOOKED + 49 * H, store.get)
    assert [(a.shipment_id, a.kind) for a in first] == [("early", AlertKind.NO_PICKUP)]

    saved = json.dumps(index.to_state())  # what the hub writes to its database
    del index  # the process dies

    restarted = TimerIndex.from_state(json.loads(saved))
    assert restarted.raised("early") == frozenset({AlertKind.NO_PICKUP})
    # Down for a day: "later" fell due at 58 h while nobody was sweeping.
    after = restarted.sweep(BOOKED + 73 * H, store.get)
    assert [(a.shipment_id, a.kind) for a in after] == [("later", AlertKind.NO_PICKUP)]
    for s in store.values():  # the hub re-arms shipments as callbacks come in
        restarted.track(s)
    assert restarted.sweep(BOOKED + 200 * H, store.get) == []


def test_restart_twice_in_a_row_keeps_exactly_one_alert_per_shipment_and_rule() -> None:
    """Persist after every sweep and restart every time: still one alert per pair."""
    store = Store().add(
        *(Shipment(f"s{i}", "c", f"T{i}", booked_at=BOOKED + i * H) for i in range(20))
    )
    state = TimerIndex()
    for s in store.values():
        state.track(s)
    persisted = state.to_state()
    seen: list[tuple[str, AlertKind]] = []
    now = BOOKED
    while now < BOOKED + 100 * H:
        now += 7 * H
        index = TimerIndex.from_state(json.loads(json.dumps(persisted)))
        seen += [a.key for a in index.sweep(now, store.get)]
        persisted = index.to_state()
    assert sorted(seen) == sorted((f"s{i}", AlertKind.NO_PICKUP) for i in range(20))
