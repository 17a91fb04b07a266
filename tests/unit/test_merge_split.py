"""Merging and splitting shipments as specifications: every step can be undone exactly."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ordersync.domain.inventory import Location, LocationKind
from ordersync.domain.merge_split import (
    GroupingError,
    GroupingEventType,
    MergePolicy,
    Origin,
    join,
    leave,
    merge,
    mergeable,
    order_group,
    split_by_availability,
    split_by_location,
    unmerge,
)
from ordersync.domain.order_status import OrderStatus
from ordersync.domain.orders import Address, Customer
from ordersync.domain.routing import RoutingLine, RoutingPolicy, RoutingRequest, Site, route
from ordersync.testing.factories import PLACED_AT, make_line, make_order

AT = PLACED_AT + timedelta(hours=3)
TEA_CUP = make_line(sku="JADE-CUP", name="Jade cup", quantity=4, external_id="l-cup")
MATCHA = make_line(sku="MATCHA-TIN", name="Matcha tin", quantity=1, external_id="l-tin")


def test_two_orders_of_one_buyer_to_one_address_within_the_window_are_mergeable() -> None:
    """Mei Lin orders a teapot, then cups an hour later: one parcel; next day's order is not."""
    first = make_order("ord_1", external_id="1")
    second = make_order(
        "ord_2", external_id="2", placed_at=PLACED_AT + timedelta(hours=1), lines=(TEA_CUP,)
    )
    next_day = make_order("ord_3", external_id="3", placed_at=PLACED_AT + timedelta(days=1))
    stranger = make_order(
        "ord_4", external_id="4", customer=Customer(external_id="999", name="Someone Else")
    )

    sets = mergeable([next_day, second, stranger, first], MergePolicy(window=timedelta(hours=2)))

    assert [[o.id for o in s] for s in sets] == [["ord_1", "ord_2"]]


def test_cancelled_orders_are_never_merged() -> None:
    """A cancelled second order does not join the first one's parcel."""
    first = make_order("ord_1", external_id="1")
    gone = make_order("ord_2", external_id="2", status=OrderStatus.CANCELLED)

    assert mergeable([first, gone]) == []


def test_merge_then_unmerge_restores_the_original_shipments() -> None:
    """Teapots and cups travel together, then apart again, exactly as before."""
    teapot = order_group(make_order("ord_1", external_id="1"))
    cups = order_group(make_order("ord_2", external_id="2", lines=(TEA_CUP,)))

    merged = merge([teapot, cups], "grp_meilin", at=AT)
    (parcel,) = merged.groups
    restored = unmerge(parcel, at=AT)

    assert parcel.kind is Origin.MERGE
    assert parcel.order_ids == ("ord_1", "ord_2")
    assert parcel.quantities() == {("ord_1", "BLUE-TEAPOT"): 2, ("ord_2", "JADE-CUP"): 4}
    assert restored.groups == (teapot, cups)
    assert [e.type for e in merged.history] == [GroupingEventType.MERGED] * 2
    assert (
        merged.history[0].description == "merged orders ord_1, ord_2 into one shipment (grp_meilin)"
    )
    assert [(e.order_id, e.group_ids) for e in restored.history] == [
        ("ord_1", ("grp_ord_1",)),
        ("ord_2", ("grp_ord_2",)),
    ]


def test_orders_to_different_addresses_cannot_be_merged() -> None:
    """Amsterdam and Rotterdam are two parcels, whoever the buyer is."""
    rotterdam = Address(
        name="Mei Lin", line1="Coolsingel 40", postal_code="3011 AD", country_code="NL"
    )
    a = order_group(make_order("ord_1", external_id="1"))
    b = order_group(make_order("ord_2", external_id="2", shipping_address=rotterdam))

    with pytest.raises(GroupingError, match="one known address"):
        merge([a, b], "grp_x", at=AT)


def test_split_by_location_then_join_restores_the_order() -> None:
    """Teapots from Berlin, cups from Lyon, then joined back into the one order."""
    order = make_order("ord_1", lines=(make_line(), TEA_CUP))
    group = order_group(order)
    sites = (
        Site(Location("berlin-dc", LocationKind.WAREHOUSE, "eu", 1)),
        Site(Location("lyon-dc", LocationKind.WAREHOUSE, "eu", 1)),
    )
    stock = {("BLUE-TEAPOT", "berlin-dc"): 5, ("JADE-CUP", "lyon-dc"): 9}
    request = RoutingRequest(
        "ord_1", "shopify-teahouse", (RoutingLine("BLUE-TEAPOT", 2), RoutingLine("JADE-CUP", 4))
    )
    decision = route(request, sites, stock)

    split = split_by_location(group, decision, at=AT)
    joined = join(split.groups, at=AT)

    assert [(g.location_id, g.quantities()) for g in split.groups] == [
        ("berlin-dc", {("ord_1", "BLUE-TEAPOT"): 2}),
        ("lyon-dc", {("ord_1", "JADE-CUP"): 4}),
    ]
    assert split.history[0].description == (
        "split shipment grp_ord_1 by location into grp_ord_1.1, grp_ord_1.2"
    )
    assert joined.groups == (group,)
    assert joined.history[0].type is GroupingEventType.JOINED


def test_split_by_location_puts_backordered_units_in_a_waiting_group() -> None:
    """Three of four cups ship from Lyon; the fourth waits in a group with no location."""
    group = order_group(make_order("ord_1", lines=(TEA_CUP,)))
    sites = (Site(Location("lyon-dc", LocationKind.WAREHOUSE, "eu", 1)),)
    request = RoutingRequest("ord_1", "shopify-teahouse", (RoutingLine("JADE-CUP", 4),))
    decision = route(
        request, sites, {("JADE-CUP", "lyon-dc"): 3}, RoutingPolicy(backorder_allowed=True)
    )

    split = split_by_location(group, decision, at=AT)

    assert [(g.location_id, g.quantities()) for g in split.groups] == [
        ("lyon-dc", {("ord_1", "JADE-CUP"): 3}),
        (None, {("ord_1", "JADE-CUP"): 1}),
    ]
    assert join(split.groups, at=AT).groups == (group,)


def test_split_by_availability_ships_what_is_here_and_joins_back() -> None:
    """One matcha tin is here, the teapots are not: two groups, reversible."""
    group = order_group(make_order("ord_1", lines=(make_line(), MATCHA)))

    split = split_by_availability(group, {"MATCHA-TIN": 5, "BLUE-TEAPOT": 0}, at=AT)

    assert [g.quantities() for g in split.groups] == [
        {("ord_1", "MATCHA-TIN"): 1},
        {("ord_1", "BLUE-TEAPOT"): 2},
    ]
    assert join(split.groups, at=AT).groups == (group,)


def test_a_split_with_everything_available_changes_nothing() -> None:
    """All in stock: one group, no history entry."""
    group = order_group(make_order("ord_1"))

    split = split_by_availability(group, {"BLUE-TEAPOT": 10}, at=AT)

    assert split.groups == (group,)
    assert split.history == ()


def test_a_merged_group_split_by_availability_round_trips_both_ways() -> None:
    """Merge two orders, split the parcel, join it, unmerge: the original two orders."""
    a = order_group(make_order("ord_1", external_id="1"))
    b = order_group(make_order("ord_2", external_id="2", lines=(TEA_CUP, MATCHA)))
    (parcel,) = merge([a, b], "grp_meilin", at=AT).groups

    split = split_by_availability(parcel, {"BLUE-TEAPOT": 1, "JADE-CUP": 4}, at=AT)
    (rejoined,) = join(split.groups, at=AT).groups

    assert len(split.groups) == 2
    assert unmerge(rejoined, at=AT).groups == (a, b)


def test_joining_only_some_parts_of_a_split_is_refused() -> None:
    """Half a split cannot be joined: the other part would be lost."""
    group = order_group(make_order("ord_1", lines=(make_line(), MATCHA)))
    parts = split_by_availability(group, {"MATCHA-TIN": 1}, at=AT).groups

    with pytest.raises(GroupingError, match="not every part"):
        join(parts[:1], at=AT)


def test_an_order_leaving_a_three_order_shipment_leaves_the_other_two_merged() -> None:
    """Mei Lin cancels the cups: the teapot and the matcha still travel together."""
    teapot = order_group(make_order("ord_1", external_id="1"))
    cups = order_group(make_order("ord_2", external_id="2", lines=(TEA_CUP,)))
    matcha = order_group(make_order("ord_3", external_id="3", lines=(MATCHA,)))
    (parcel,) = merge([teapot, cups, matcha], "grp_meilin", at=AT).groups

    result = leave(parcel, "ord_2", at=AT, why="cancelled")

    (smaller,) = result.groups
    assert smaller.id == "grp_meilin"
    assert smaller.kind is Origin.MERGE
    assert smaller.order_ids == ("ord_1", "ord_3")
    assert smaller.origin == (teapot, matcha)
    assert unmerge(smaller, at=AT).groups == (teapot, matcha)
    assert [(e.type, e.order_id, e.group_ids, e.cause) for e in result.history] == [
        (GroupingEventType.UNMERGED, "ord_2", (), "group:leave"),
        (GroupingEventType.MERGED, "ord_1", ("grp_meilin",), "group:leave"),
        (GroupingEventType.MERGED, "ord_3", ("grp_meilin",), "group:leave"),
    ]
    assert (
        result.history[0].description == "order ord_2 left merged shipment grp_meilin (cancelled)"
    )


def test_a_merged_shipment_left_with_one_order_dissolves() -> None:
    """The teapot is refunded: the cups ship on their own again, exactly as placed."""
    teapot = order_group(make_order("ord_1", external_id="1"))
    cups = order_group(make_order("ord_2", external_id="2", lines=(TEA_CUP,)))
    (parcel,) = merge([teapot, cups], "grp_meilin", at=AT).groups

    result = leave(parcel, "ord_1", at=AT, why="refunded")

    assert result.groups == (cups,)
    assert [(e.type, e.order_id, e.group_ids) for e in result.history] == [
        (GroupingEventType.UNMERGED, "ord_1", ()),
        (GroupingEventType.UNMERGED, "ord_2", ("grp_ord_2",)),
    ]
    assert "dissolved" in result.history[1].description


def test_only_a_member_of_a_merged_shipment_can_leave_it() -> None:
    """An order shipping as placed, or a stranger to the group, has nothing to leave."""
    teapot = order_group(make_order("ord_1", external_id="1"))
    cups = order_group(make_order("ord_2", external_id="2", lines=(TEA_CUP,)))
    (parcel,) = merge([teapot, cups], "grp_meilin", at=AT).groups

    with pytest.raises(GroupingError, match="not a merged group"):
        leave(teapot, "ord_1", at=AT, why="cancelled")
    with pytest.raises(GroupingError, match="not in grp_meilin"):
        leave(parcel, "ord_9", at=AT, why="cancelled")
