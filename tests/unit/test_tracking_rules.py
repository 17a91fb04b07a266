"""Tracking rules without I/O: an order's fulfilment derived from its shipments, the
configured anomaly rules (thresholds, enabled flags, the promised date), and a recorded
callback that reads back exactly as it was verified."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ordersync.bootstrap import alert_rules
from ordersync.config import ConfigError, settings_from_mapping
from ordersync.domain.alerts import AlertKind, DeliveryOverdue, build_rules, evaluate
from ordersync.domain.shipments import (
    Correction,
    FulfillmentStatus,
    Shipment,
    ShipmentStatus,
    TrackingEvent,
    TrackingUpdate,
    delivered_at,
    fulfillment_of,
    update_from_dict,
    update_to_dict,
)

S = ShipmentStatus
F = FulfillmentStatus
BOOKED = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
H = timedelta(hours=1)


def parcel(sid: str, *scans: tuple[float, S], promised_by: datetime | None = None) -> Shipment:
    s = Shipment(sid, "kd100-yt", f"YT{sid}", booked_at=BOOKED, promised_by=promised_by)
    s.merge(TrackingEvent(BOOKED + h * H, str(st), f"{st} scan", st) for h, st in scans)
    return s


def test_an_order_without_shipments_or_pickups_is_unfulfilled() -> None:
    """No parcel, or parcels the carrier has not picked up yet."""
    assert fulfillment_of([]) is F.UNFULFILLED
    assert fulfillment_of([parcel("a", (1, S.INFO_RECEIVED)), parcel("b")]) is F.UNFULFILLED


def test_one_of_two_parcels_picked_up_is_partially_shipped() -> None:
    """Only some shipments have left: partially shipped."""
    assert fulfillment_of([parcel("a", (2, S.PICKED_UP)), parcel("b")]) is F.PARTIALLY_SHIPPED


def test_every_parcel_picked_up_is_shipped_and_every_one_delivered_is_delivered() -> None:
    """Shipped needs all picked up; delivered needs all delivered."""
    moving = parcel("a", (2, S.PICKED_UP), (5, S.IN_TRANSIT))
    arrived = parcel("b", (2, S.PICKED_UP), (30, S.DELIVERED))
    also = parcel("c", (3, S.PICKED_UP), (31, S.DELIVERED))

    assert fulfillment_of([moving, arrived]) is F.SHIPPED
    assert fulfillment_of([arrived, also]) is F.DELIVERED
    assert delivered_at([moving, arrived, also]) == BOOKED + 31 * H


def test_a_disabled_rule_is_left_out_and_thresholds_come_from_the_arguments() -> None:
    """None turns a rule off; the hours given are the ones used."""
    rules = build_rules(no_pickup=10 * H, no_update=None, tracking_corrected=False)
    kinds = [r.kind for r in rules]

    assert AlertKind.NO_UPDATE not in kinds
    assert AlertKind.TRACKING_CORRECTED not in kinds
    idle = parcel("a")
    assert [a.kind for a in evaluate(idle, BOOKED + 10 * H - timedelta(seconds=1), rules)] == []
    assert [a.kind for a in evaluate(idle, BOOKED + 10 * H, rules)] == [AlertKind.NO_PICKUP]


def test_delivery_overdue_uses_the_promise_first_then_the_default_transit_time() -> None:
    """A promised date wins; without one, booking + default transit; without both, none."""
    rule = DeliveryOverdue(grace=2 * H, default_transit=30 * H)
    promised = parcel("a", promised_by=BOOKED + 20 * H)

    assert rule.due_at(promised) == BOOKED + 22 * H
    assert rule.due_at(parcel("b")) == BOOKED + 32 * H
    assert DeliveryOverdue().due_at(parcel("c")) is None
    assert rule.due_at(parcel("d", (2, S.PICKED_UP), (9, S.DELIVERED))) is None


def test_the_alerts_block_configures_every_rule() -> None:
    """Hours and enabled flags from the config become the hub's rules."""
    settings = settings_from_mapping(
        {
            "alerts": {
                "no_pickup": {"hours": 24},
                "no_update": {"enabled": False, "hours": 72},
                "delivery_overdue": {"hours": 6, "default_transit_hours": 96},
                "pickup_point_wait": {"hours": 48},
                "tracking_corrected": {"enabled": True},
            }
        },
        env={},
    )
    rules = {r.kind: r for r in alert_rules(settings)}

    assert set(rules) == {
        AlertKind.NO_PICKUP,
        AlertKind.DELIVERY_OVERDUE,
        AlertKind.PICKUP_POINT_WAIT,
        AlertKind.TRACKING_CORRECTED,
    }
    assert rules[AlertKind.NO_PICKUP].due_at(parcel("a")) == BOOKED + 24 * H
    assert rules[AlertKind.DELIVERY_OVERDUE].due_at(parcel("a")) == BOOKED + 102 * H


def test_the_default_rules_are_the_documented_thresholds() -> None:
    """No `alerts` block: 48 h to pickup, 72 h silence, 72 h at a pickup point."""
    rules = {r.kind: r for r in alert_rules(settings_from_mapping({}, env={}))}

    assert len(rules) == 5
    assert rules[AlertKind.NO_PICKUP].due_at(parcel("a")) == BOOKED + 48 * H


@pytest.mark.parametrize(
    ("block", "path"),
    [
        ({"no_pickup": {"hours": -1}}, "alerts.no_pickup.hours"),
        ({"no_update": {"enabled": True}}, "alerts.no_update.hours"),
        ({"delivery_overdue": {"default_transit_hours": 0}}, "alerts.delivery_overdue"),
        ({"stale": {"hours": 1}}, "alerts.stale"),
    ],
)
def test_a_bad_alerts_block_fails_at_start_up_with_its_path(
    block: dict[str, object], path: str
) -> None:
    """Negative hours, a missing threshold, an unknown rule: refused, the key named."""
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        settings_from_mapping({"alerts": block}, env={})


def test_a_recorded_callback_reads_back_exactly_as_it_was_verified() -> None:
    """The inbox keeps the mapped update; applying it later sees the same thing."""
    update = TrackingUpdate(
        "kuaidi100",
        "YT9001",
        "yunda",
        (
            TrackingEvent(BOOKED + 2 * H, "103", "已揽收", S.PICKED_UP, "上海市"),
            TrackingEvent(BOOKED + 3 * H, "9x", "unmapped", None),
        ),
        snapshot=True,
        raw_state="0",
        state=S.IN_TRANSIT,
        corrections=(Correction("carrier_code", "yuantong", "yunda"),),
        source_id="kd100:abc",
    )

    assert update_from_dict(update_to_dict(update)) == update
