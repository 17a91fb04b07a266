"""Splitting by what each order holds where, and the stored form of shipment groups."""

from __future__ import annotations

from datetime import timedelta

from ordersync.domain.merge_split import (
    GroupingEventType,
    Origin,
    group_from_dict,
    group_to_dict,
    join,
    merge,
    order_group,
    split_by_allocation,
)
from ordersync.testing.factories import PLACED_AT, make_line, make_order

AT = PLACED_AT + timedelta(hours=1)
CUPS = make_line(sku="JADE-CUP", name="Jade cup", quantity=4, external_id="l-cup")


def test_a_merged_parcel_splits_by_the_location_holding_each_orders_own_units() -> None:
    """Both orders want cups; each order's cups leave from where that order holds them."""
    first = order_group(make_order("ord_1", external_id="1", lines=(CUPS,)))
    second = order_group(make_order("ord_2", external_id="2", lines=(CUPS,)))
    (parcel,) = merge([first, second], "grp_meilin", at=AT).groups

    result = split_by_allocation(
        parcel,
        {("ord_1", "JADE-CUP"): {"paris-store": 4}, ("ord_2", "JADE-CUP"): {"berlin-dc": 3}},
        at=AT,
    )

    assert [(p.location_id, p.quantities()) for p in result.groups] == [
        ("berlin-dc", {("ord_2", "JADE-CUP"): 3}),
        ("paris-store", {("ord_1", "JADE-CUP"): 4}),
        (None, {("ord_2", "JADE-CUP"): 1}),
    ]
    assert [e.type for e in result.history] == [GroupingEventType.SPLIT] * 2
    assert join(result.groups, at=AT).groups == (parcel,)


def test_units_all_held_at_one_location_are_not_split() -> None:
    """Everything in Berlin: one parcel stays one parcel, and nothing is recorded."""
    group = order_group(make_order("ord_1", external_id="1", lines=(CUPS,)))

    result = split_by_allocation(group, {("ord_1", "JADE-CUP"): {"berlin-dc": 4}}, at=AT)

    assert result.groups == (group,)
    assert result.history == ()


def test_a_group_survives_its_stored_form_with_everything_it_was_made_from() -> None:
    """Stored and read back, a merge still knows the exact groups it came from."""
    first = order_group(make_order("ord_1", external_id="1"))
    second = order_group(make_order("ord_2", external_id="2", lines=(CUPS,)))
    (parcel,) = merge([first, second], "grp_meilin", at=AT).groups

    back = group_from_dict(group_to_dict(parcel))

    assert back == parcel
    assert back.kind is Origin.MERGE
    assert back.origin == (first, second)


def test_every_grouping_step_has_its_history_cause() -> None:
    """The order history says `group:<step>` for each kind of step."""
    assert [t.cause for t in GroupingEventType] == [
        "group:merge",
        "group:unmerge",
        "group:split",
        "group:join",
    ]
