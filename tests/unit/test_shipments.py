"""Shipments: deduplicated merging of snapshots and out-of-order callbacks by carrier time,
the current status from the latest event, and terminal statuses that never roll back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ordersync.domain.shipments import (
    CallbackRetry,
    CodeMapping,
    Correction,
    MappingConflictError,
    MappingTable,
    Shipment,
    ShipmentStatus,
    TrackingEvent,
    TrackingUpdate,
    find_conflicts,
)

S = ShipmentStatus
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def ev(hours: float, code: str, status: S | None, text: str = "", where: str = "") -> TrackingEvent:
    return TrackingEvent(at(hours), code, text or f"{code} at +{hours}h", status, where)


JOURNEY = (
    ev(1, "1", S.PICKED_UP, "【杭州市】 顺丰速运 已收取快件", "杭州市"),
    ev(5, "2", S.IN_TRANSIT, "快件已发往 上海转运中心", "杭州市"),
    ev(20, "201", S.IN_TRANSIT, "快件到达 上海浦东集散中心", "上海市"),
    ev(26, "202", S.OUT_FOR_DELIVERY, "派送员 王师傅 正在派件", "上海市"),
    ev(30, "3", S.DELIVERED, "已签收，签收人：本人", "上海市"),
)


def shipment() -> Shipment:
    return Shipment("shp-1", "kdniao-main", "SF1234567890", booked_at=T0, carrier_code="SF")


def test_a_new_shipment_is_pending_with_no_events() -> None:
    """Booked and not yet heard of: pending, no pickup time, no events."""
    s = shipment()
    assert s.status is S.PENDING
    assert s.events == ()
    assert s.picked_up_at is None


def test_events_are_kept_in_carrier_time_order_whatever_the_arrival_order() -> None:
    """Events merged newest first are listed oldest first."""
    s = shipment()
    s.merge(reversed(JOURNEY))
    assert [e.carrier_time for e in s.events] == [e.carrier_time for e in JOURNEY]
    assert s.status is S.DELIVERED


def test_a_full_snapshot_merged_twice_adds_nothing_the_second_time() -> None:
    """A replayed snapshot (the carrier pushes everything every time) is deduplicated."""
    s = shipment()
    first = s.merge(JOURNEY[:3])
    second = s.merge(JOURNEY[:3])
    assert len(first.added) == 3
    assert second.added == ()
    assert not second.changed
    assert len(s.events) == 3


def test_a_later_snapshot_adds_only_the_new_traces() -> None:
    """Snapshot n+1 contains snapshot n: only the new traces are added."""
    s = shipment()
    s.merge(JOURNEY[:2])
    result = s.merge(JOURNEY[:4])
    assert result.added == JOURNEY[2:4]
    assert (result.previous, result.current) == (S.IN_TRANSIT, S.OUT_FOR_DELIVERY)


def test_an_older_snapshot_arriving_late_does_not_move_the_status_back() -> None:
    """A stale snapshot (in transit) after a newer one (out for delivery) changes nothing."""
    s = shipment()
    s.merge(JOURNEY[:4])
    late = s.merge(JOURNEY[:2])
    assert late.added == ()
    assert s.status is S.OUT_FOR_DELIVERY


def test_an_out_of_order_single_event_is_inserted_by_carrier_time() -> None:
    """An earlier event arriving after a later one is recorded but is not the current one."""
    s = shipment()
    s.merge([JOURNEY[3]])
    result = s.merge([JOURNEY[1]])
    assert result.added == (JOURNEY[1],)
    assert s.status is S.OUT_FOR_DELIVERY
    assert s.events == (JOURNEY[1], JOURNEY[3])


def test_delivered_is_not_rolled_back_by_a_later_stray_scan() -> None:
    """A scan after delivery (carrier glitch) is recorded, but delivered stays delivered."""
    s = shipment()
    s.merge(JOURNEY)
    stray = ev(31, "2", S.IN_TRANSIT, "快件已发往 北京")
    s.merge([stray])
    assert stray in s.events
    assert s.status is S.DELIVERED
    assert s.is_terminal


def test_a_late_terminal_event_wins_over_earlier_non_terminal_ones() -> None:
    """Delivered arriving first, then the earlier journey: still delivered."""
    s = shipment()
    s.merge([JOURNEY[-1]])
    s.merge(JOURNEY[:-1])
    assert s.status is S.DELIVERED


def test_an_unmapped_code_keeps_raw_code_and_text_and_does_not_change_status() -> None:
    """An event with no mapping is kept for audit; the status comes from mapped events."""
    s = shipment()
    s.merge([JOURNEY[0], ev(2, "X99", None, "未知状态：仓库盘点")])
    assert s.status is S.PICKED_UP
    unknown = s.events[-1]
    assert (unknown.raw_code, unknown.raw_text, unknown.status) == (
        "X99",
        "未知状态：仓库盘点",
        None,
    )


def test_pickup_time_is_the_first_event_proving_the_carrier_has_the_parcel() -> None:
    """info_received is not a pickup; the first in-hand scan is."""
    s = shipment()
    s.merge([ev(0.5, "10", S.INFO_RECEIVED), ev(5, "2", S.IN_TRANSIT)])
    assert s.picked_up_at == at(5)


def test_status_since_is_the_start_of_the_trailing_run_of_the_current_status() -> None:
    """Two locker scans in a row: waiting since the first."""
    s = shipment()
    s.merge([ev(1, "1", S.PICKED_UP), ev(10, "211", S.AVAILABLE_FOR_PICKUP)])
    s.merge([ev(12, "211", S.AVAILABLE_FOR_PICKUP, "再次提醒取件")])
    assert s.status is S.AVAILABLE_FOR_PICKUP
    assert s.status_since == at(10)


def test_a_carrier_code_correction_is_recorded_once_and_applied() -> None:
    """comOld/comNew style correction: kept once (replays ignored), carrier code updated."""
    s = shipment()
    fix = Correction("carrier_code", "SF", "yuantong")
    update = TrackingUpdate(
        "kuaidi100", s.tracking_number, "yuantong", JOURNEY[:1], corrections=(fix,)
    )
    s.apply(update)
    s.apply(update)
    assert s.corrections == (fix,)
    assert s.carrier_code == "yuantong"


def test_carrier_times_must_carry_a_time_zone() -> None:
    """A naive carrier time is a bug in a parser, refused at once."""
    with pytest.raises(ValueError, match="time zone"):
        TrackingEvent(datetime(2026, 11, 20, 9, 0), "1", "x", S.PICKED_UP)


def test_a_shipment_survives_a_round_trip_through_its_dict_form() -> None:
    """to_dict/from_dict keeps events, raw codes, corrections and the status."""
    s = shipment()
    s.merge(JOURNEY)
    s.apply(
        TrackingUpdate(
            "kdniao",
            s.tracking_number,
            "SF",
            (),
            corrections=(Correction("tracking_number", "SF1", "SF2"),),
        )
    )
    back = Shipment.from_dict(s.to_dict())
    assert back.events == s.events
    assert back.status is S.DELIVERED
    assert back.corrections == s.corrections
    assert back.tracking_number == "SF2"


def test_find_conflicts_reports_a_raw_code_mapped_to_two_statuses() -> None:
    """The mapping check names each conflicting code with every status it was given."""
    rows = [
        CodeMapping("3", S.DELIVERED),
        CodeMapping("3", S.RETURNED),
        CodeMapping("1", S.PICKED_UP),
    ]
    assert find_conflicts(rows) == {"3": frozenset({S.DELIVERED, S.RETURNED})}
    with pytest.raises(MappingConflictError, match="'3'"):
        MappingTable.from_rows("demo", rows)


def test_a_mapping_override_replaces_a_default_row() -> None:
    """Configuration may remap a code; the table stays conflict-free and keeps the wording."""
    table = MappingTable.from_rows("demo", [CodeMapping("412", S.EXCEPTION, "超时未取")])
    mapped = table.with_overrides({"412": "available_for_pickup"})
    assert mapped.lookup("412") is S.AVAILABLE_FOR_PICKUP
    assert mapped.rows[0].description == "超时未取"


# ---- property: the final shipment does not depend on the order of callbacks -----------

CODES = [
    ("1", S.PICKED_UP),
    ("2", S.IN_TRANSIT),
    ("202", S.OUT_FOR_DELIVERY),
    ("211", S.AVAILABLE_FOR_PICKUP),
    ("3", S.DELIVERED),
    ("4", S.EXCEPTION),
    ("X", None),
]

events_st = st.builds(
    lambda h, code, text: ev(h, code[0], code[1], text),
    st.integers(min_value=0, max_value=20),
    st.sampled_from(CODES),
    st.sampled_from(["a", "b", "到达 上海"]),
)
# A callback is a list of events (a snapshot, a delta, or a replay of an earlier one).
callbacks_st = st.lists(st.lists(events_st, max_size=6), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(callbacks=callbacks_st, data=st.data())
def test_any_permutation_of_callbacks_yields_the_same_final_shipment(
    callbacks: list[list[TrackingEvent]], data: st.DataObject
) -> None:
    """Merging is order-independent: events, status and pickup time match in any order."""
    reference = shipment()
    for cb in callbacks:
        reference.merge(cb)
    order = data.draw(st.permutations(callbacks))
    replays = data.draw(st.lists(st.sampled_from(callbacks), max_size=3))
    other = shipment()
    for cb in [*order, *replays]:
        other.merge(cb)
    assert other.events == reference.events
    assert other.status is reference.status
    assert other.picked_up_at == reference.picked_up_at
    assert other.status_since == reference.status_since


def test_a_failing_callback_is_retried_after_doubling_waits_then_parked() -> None:
    """5 s, 10 s, 20 s, capped at 30 s; the fifth failure parks it (no retry time)."""
    retry = CallbackRetry(max_attempts=5, base=timedelta(seconds=5), cap=timedelta(seconds=30))

    waits = [retry.next_try(n, T0) for n in range(1, 6)]

    assert [None if w is None else (w - T0).total_seconds() for w in waits] == [
        5.0,
        10.0,
        20.0,
        30.0,
        None,
    ]


def test_a_callback_retry_policy_must_allow_at_least_one_attempt() -> None:
    """`max_attempts: 0` would park every callback unapplied: refused."""
    with pytest.raises(ValueError, match="max_attempts"):
        CallbackRetry(max_attempts=0)


def test_a_huge_attempt_count_waits_the_cap_instead_of_overflowing() -> None:
    """A policy allowing thousands of attempts still computes a wait (the cap)."""
    retry = CallbackRetry(max_attempts=10_000, cap=timedelta(minutes=10))

    assert retry.next_try(5_000, T0) == T0 + timedelta(minutes=10)
