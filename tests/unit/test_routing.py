"""Routing as specifications: which location ships an order, and the reasons recorded."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ordersync.domain.inventory import Location, LocationKind
from ordersync.domain.routing import (
    Coordinates,
    Destination,
    LineDecision,
    PriorityScore,
    Router,
    RoutingLine,
    RoutingOutcome,
    RoutingPolicy,
    RoutingRequest,
    Site,
    dry_run,
    route,
)

BERLIN = Coordinates(52.52, 13.40)
MUNICH = Coordinates(48.14, 11.58)
LYON = Coordinates(45.76, 4.84)

BERLIN_DC = Site(Location("berlin-dc", LocationKind.WAREHOUSE, "eu", 1), BERLIN)
MUNICH_STORE = Site(Location("munich-store", LocationKind.STORE, "eu", 2), MUNICH)
LYON_DC = Site(Location("lyon-dc", LocationKind.WAREHOUSE, "eu", 1), LYON)
SHENZHEN = Site(Location("shenzhen-factory", LocationKind.FACTORY, "cn", 1, capacity=2))
SITES = (BERLIN_DC, MUNICH_STORE, LYON_DC, SHENZHEN)


def order(
    *lines: tuple[str, int],
    region: str = "eu",
    near: Coordinates | None = None,
    channel: str = "shopify-eu",
    order_id: str = "ord_1001",
) -> RoutingRequest:
    """An order to Berlin-ish unless told otherwise."""
    return RoutingRequest(
        order_id, channel, tuple(RoutingLine(s, q) for s, q in lines), Destination(region, near)
    )


def allocations(lines: tuple[LineDecision, ...]) -> dict[str, list[tuple[str, int]]]:
    """sku -> [(location, quantity)] of a decision, for compact assertions."""
    return {ln.sku: [(a.location_id, a.quantity) for a in ln.allocations] for ln in lines}


def test_a_location_without_the_sku_is_excluded_for_availability() -> None:
    """Berlin has no teapots, so the teapot ships from Munich and Berlin says why not."""
    stock = {("BLUE-TEAPOT", "munich-store"): 4}

    d = route(order(("BLUE-TEAPOT", 2)), SITES, stock)

    assert allocations(d.lines) == {"BLUE-TEAPOT": [("munich-store", 2)]}
    berlin = next(c for c in d.explanation.candidates if c.location_id == "berlin-dc")
    assert berlin.excluded_by == ("availability: no stock of any ordered SKU",)


def test_the_nearest_location_wins_between_equal_priorities() -> None:
    """A buyer in Lyon gets the Lyon warehouse rather than Berlin (same priority)."""
    stock = {("MATCHA-TIN", "berlin-dc"): 9, ("MATCHA-TIN", "lyon-dc"): 9}

    d = route(order(("MATCHA-TIN", 1), near=Coordinates(45.75, 4.85)), SITES, stock)

    assert d.locations == ("lyon-dc",)


def test_a_location_in_another_region_is_penalised_without_coordinates() -> None:
    """A Chinese buyer is served from Shenzhen, not Berlin, by region alone."""
    stock = {("JADE-CUP", "berlin-dc"): 5, ("JADE-CUP", "shenzhen-factory"): 5}

    d = route(order(("JADE-CUP", 2), region="cn"), SITES, stock)

    assert d.locations == ("shenzhen-factory",)
    berlin = next(c for c in d.explanation.candidates if c.location_id == "berlin-dc")
    assert dict(berlin.scores)["distance"] == 25.0


def test_priority_decides_when_distance_and_cost_are_equal() -> None:
    """Berlin (priority 1) beats the Munich store (priority 2) for a buyer without a position."""
    stock = {("BLUE-TEAPOT", "berlin-dc"): 3, ("BLUE-TEAPOT", "munich-store"): 3}

    d = route(order(("BLUE-TEAPOT", 1)), SITES, stock)

    assert d.locations == ("berlin-dc",)


def test_a_location_at_capacity_is_skipped() -> None:
    """Shenzhen has already shipped its two orders today, so the order goes to Berlin."""
    stock = {("JADE-CUP", "berlin-dc"): 5, ("JADE-CUP", "shenzhen-factory"): 5}

    d = route(order(("JADE-CUP", 1), region="cn"), SITES, stock, load={"shenzhen-factory": 2})

    assert d.locations == ("berlin-dc",)
    factory = next(c for c in d.explanation.candidates if c.location_id == "shenzhen-factory")
    assert factory.excluded_by == ("capacity: at capacity (2 of 2 shipments)",)


def test_the_cheaper_location_wins_when_everything_else_is_equal() -> None:
    """Two identical warehouses; the one with lower per-unit cost gets the order."""
    dear = Site(Location("hamburg-dc", LocationKind.WAREHOUSE, "eu", 1), None, Decimal("2.50"))
    cheap = Site(
        Location("leipzig-dc", LocationKind.WAREHOUSE, "eu", 1),
        None,
        Decimal("0.80"),
        Decimal("1.00"),
    )
    stock = {("BLUE-TEAPOT", "hamburg-dc"): 9, ("BLUE-TEAPOT", "leipzig-dc"): 9}

    d = route(order(("BLUE-TEAPOT", 3)), (dear, cheap), stock)

    assert d.locations == ("leipzig-dc",)
    leipzig = next(c for c in d.explanation.candidates if c.location_id == "leipzig-dc")
    assert dict(leipzig.scores)["cost"] == 3.4


def test_a_channel_only_ships_from_its_allowed_locations() -> None:
    """The Tmall channel may only ship from Shenzhen, even though Berlin ranks better."""
    stock = {("JADE-CUP", "berlin-dc"): 5, ("JADE-CUP", "shenzhen-factory"): 5}
    policy = RoutingPolicy(channel_locations={"tmall": frozenset({"shenzhen-factory"})})

    d = route(order(("JADE-CUP", 1), channel="tmall"), SITES, stock, policy)

    assert d.locations == ("shenzhen-factory",)
    berlin = next(c for c in d.explanation.candidates if c.location_id == "berlin-dc")
    assert berlin.excluded_by == ("channel_restriction: channel tmall may not ship from berlin-dc",)


def test_the_whole_order_comes_from_one_location_when_one_can_serve_it() -> None:
    """Munich ranks worse than Berlin but has both SKUs, so it ships everything at once."""
    stock = {
        ("BLUE-TEAPOT", "berlin-dc"): 5,
        ("BLUE-TEAPOT", "munich-store"): 1,
        ("MATCHA-TIN", "munich-store"): 2,
    }

    d = route(order(("BLUE-TEAPOT", 1), ("MATCHA-TIN", 2)), SITES, stock)

    assert d.outcome is RoutingOutcome.ROUTED
    assert d.locations == ("munich-store",)
    assert "munich-store can serve the whole order" in d.explanation.text()


def test_without_single_location_preference_each_line_goes_to_its_best_location() -> None:
    """When one place is not preferred, the teapot leaves from Berlin and the tin from Munich."""
    stock = {
        ("BLUE-TEAPOT", "berlin-dc"): 5,
        ("BLUE-TEAPOT", "munich-store"): 1,
        ("MATCHA-TIN", "munich-store"): 2,
    }
    policy = RoutingPolicy(prefer_single_location=False)

    d = route(order(("BLUE-TEAPOT", 1), ("MATCHA-TIN", 2)), SITES, stock, policy)

    assert allocations(d.lines) == {
        "BLUE-TEAPOT": [("berlin-dc", 1)],
        "MATCHA-TIN": [("munich-store", 2)],
    }


def test_an_order_no_single_location_can_serve_is_split_when_allowed() -> None:
    """Teapots in Berlin, tins in Lyon: two shipments."""
    stock = {("BLUE-TEAPOT", "berlin-dc"): 5, ("MATCHA-TIN", "lyon-dc"): 5}

    d = route(order(("BLUE-TEAPOT", 2), ("MATCHA-TIN", 3)), SITES, stock)

    assert d.outcome is RoutingOutcome.ROUTED
    assert sorted(d.locations) == ["berlin-dc", "lyon-dc"]
    assert d.shipments == 2


def test_splitting_never_exceeds_max_shipments() -> None:
    """Three SKUs in three places but only two shipments allowed: the third is short."""
    stock = {
        ("BLUE-TEAPOT", "berlin-dc"): 5,
        ("MATCHA-TIN", "lyon-dc"): 5,
        ("JADE-CUP", "munich-store"): 5,
    }
    policy = RoutingPolicy(max_shipments=2, backorder_allowed=True)

    d = route(order(("BLUE-TEAPOT", 1), ("MATCHA-TIN", 1), ("JADE-CUP", 1)), SITES, stock, policy)

    assert d.shipments == 2
    assert sum(d.backordered.values()) == 1


def test_a_forbidden_split_without_backorders_makes_the_order_unroutable() -> None:
    """No split allowed and no place has both: nothing is allocated, and it says why."""
    stock = {("BLUE-TEAPOT", "berlin-dc"): 5, ("MATCHA-TIN", "lyon-dc"): 5}
    policy = RoutingPolicy(allow_split=False)

    d = route(order(("BLUE-TEAPOT", 2), ("MATCHA-TIN", 3)), SITES, stock, policy)

    assert d.outcome is RoutingOutcome.UNROUTABLE
    assert d.locations == ()
    # Lyon serves the most units (3 tins), so the teapots are what is short.
    assert {ln.sku: ln.short for ln in d.lines} == {"BLUE-TEAPOT": 2, "MATCHA-TIN": 0}
    assert "stock_shortage" in d.explanation.text()


def test_a_forbidden_split_with_backorders_ships_what_one_place_has_and_waits_for_the_rest() -> (
    None
):
    """Berlin sends the teapots now; the tins are backordered rather than split off."""
    stock = {("BLUE-TEAPOT", "berlin-dc"): 5, ("MATCHA-TIN", "lyon-dc"): 1}
    policy = RoutingPolicy(allow_split=False, backorder_allowed=True)

    d = route(order(("BLUE-TEAPOT", 2), ("MATCHA-TIN", 3)), SITES, stock, policy)

    assert d.outcome is RoutingOutcome.BACKORDERED
    assert d.locations == ("berlin-dc",)
    assert d.backordered == {"MATCHA-TIN": 3}


def test_backorders_take_what_exists_and_wait_for_the_rest() -> None:
    """Ten teapots ordered, seven in stock anywhere: seven ship, three are backordered."""
    stock = {("BLUE-TEAPOT", "berlin-dc"): 4, ("BLUE-TEAPOT", "munich-store"): 3}
    policy = RoutingPolicy(backorder_allowed=True)

    d = route(order(("BLUE-TEAPOT", 10)), SITES, stock, policy)

    assert d.outcome is RoutingOutcome.BACKORDERED
    assert allocations(d.lines) == {"BLUE-TEAPOT": [("berlin-dc", 4), ("munich-store", 3)]}
    assert d.backordered == {"BLUE-TEAPOT": 3}


def test_a_preorder_sku_waits_without_blocking_the_rest_of_the_order() -> None:
    """The unreleased jade kettle is on preorder; the cups ship now from Berlin."""
    stock = {("JADE-CUP", "berlin-dc"): 6}
    policy = RoutingPolicy(preorder_skus=frozenset({"JADE-KETTLE"}))

    d = route(order(("JADE-CUP", 2), ("JADE-KETTLE", 1)), SITES, stock, policy)

    assert d.outcome is RoutingOutcome.BACKORDERED
    kettle = next(ln for ln in d.lines if ln.sku == "JADE-KETTLE")
    assert (kettle.preorder, kettle.backordered, kettle.allocations) == (True, 1, ())
    assert d.locations == ("berlin-dc",)
    assert "JADE-KETTLE: 1 unit(s) on preorder" in d.explanation.text()


def test_the_explanation_lists_every_candidate_with_its_score_components() -> None:
    """Why Berlin: each location appears, excluded ones with the rule, others with scores."""
    stock = {("BLUE-TEAPOT", "berlin-dc"): 3, ("BLUE-TEAPOT", "munich-store"): 3}

    d = route(order(("BLUE-TEAPOT", 1)), SITES, stock)
    text = d.explanation.text()

    assert "berlin-dc: score 10 (priority 10 + distance 0 + cost 0)" in text
    assert "can serve the whole order; chosen" in text
    assert "munich-store: score 20 (priority 20 + distance 0 + cost 0)" in text
    assert "lyon-dc: excluded (availability: no stock of any ordered SKU)" in text
    record = d.as_dict()
    assert record["lines"][0]["allocations"] == [{"location_id": "berlin-dc", "quantity": 1}]
    assert [c["chosen"] for c in record["candidates"]] == [True, False, False, False]


def test_rules_compose_a_router_with_only_the_scorers_given() -> None:
    """A router scoring priority alone ignores distance: Berlin wins for a Lyon buyer."""
    stock = {("MATCHA-TIN", "berlin-dc"): 9, ("MATCHA-TIN", "lyon-dc"): 9}
    router = Router(scorers=(PriorityScore(),))

    d = router.route(order(("MATCHA-TIN", 1), near=LYON), SITES, stock)

    assert d.locations == ("berlin-dc",)


def test_the_same_inputs_always_give_the_same_decision() -> None:
    """Deterministic: ties break by location id, and the site order does not matter."""
    stock = {("BLUE-TEAPOT", "berlin-dc"): 3, ("BLUE-TEAPOT", "lyon-dc"): 3}
    first = route(order(("BLUE-TEAPOT", 1)), SITES, stock)

    again = route(order(("BLUE-TEAPOT", 1)), tuple(reversed(SITES)), stock)

    assert first == again
    assert first.locations == ("berlin-dc",)


def test_a_dry_run_over_past_orders_summarises_splits_backorders_and_load() -> None:
    """Three past orders share limited stock: one single-place, one split, one backordered."""
    stock = {
        ("BLUE-TEAPOT", "berlin-dc"): 3,
        ("MATCHA-TIN", "lyon-dc"): 2,
    }
    orders = [
        order(("BLUE-TEAPOT", 2), order_id="ord_1"),
        order(("BLUE-TEAPOT", 1), ("MATCHA-TIN", 1), order_id="ord_2"),
        order(("MATCHA-TIN", 3), order_id="ord_3"),
    ]

    summary = dry_run(orders, SITES, stock, RoutingPolicy(backorder_allowed=True))

    assert (summary.orders, summary.single_location, summary.split) == (3, 2, 1)
    assert summary.backordered == 1
    assert summary.share_single_location == 2 / 3
    assert summary.shipments_per_location == {"berlin-dc": 2, "lyon-dc": 2}
    assert summary.units_per_location == {"berlin-dc": 3, "lyon-dc": 2}
    assert stock[("BLUE-TEAPOT", "berlin-dc")] == 3  # the caller's stock is untouched


SKU_POOL = ("BLUE-TEAPOT", "MATCHA-TIN", "JADE-CUP", "RED-KETTLE")
LOC_POOL = tuple(
    Site(Location(f"loc-{i}", LocationKind.WAREHOUSE, "eu" if i % 2 else "cn", i % 3, cap))
    for i, cap in enumerate((None, 1, 2, None, 1))
)


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(st.tuples(st.sampled_from(SKU_POOL), st.integers(1, 6)), min_size=1, max_size=5),
    stock=st.dictionaries(
        st.tuples(st.sampled_from(SKU_POOL), st.sampled_from([s.id for s in LOC_POOL])),
        st.integers(0, 8),
    ),
    load=st.dictionaries(st.sampled_from([s.id for s in LOC_POOL]), st.integers(0, 2)),
    allow_split=st.booleans(),
    prefer_single=st.booleans(),
    backorder=st.booleans(),
    max_shipments=st.integers(1, 4),
)
def test_allocations_never_exceed_stock_or_capacity_and_account_for_every_unit(
    lines: list[tuple[str, int]],
    stock: dict[tuple[str, str], int],
    load: dict[str, int],
    allow_split: bool,
    prefer_single: bool,
    backorder: bool,
    max_shipments: int,
) -> None:
    """Whatever the inputs: within stock, capacity and max shipments; units all accounted for."""
    policy = RoutingPolicy(allow_split, max_shipments, prefer_single, backorder)

    d = route(order(*lines), LOC_POOL, stock, policy, load)

    taken: dict[tuple[str, str], int] = {}
    for ln in d.lines:
        for a in ln.allocations:
            taken[(ln.sku, a.location_id)] = taken.get((ln.sku, a.location_id), 0) + a.quantity
            assert a.quantity > 0
        if d.outcome is RoutingOutcome.UNROUTABLE:
            assert ln.allocated == 0
        else:
            assert ln.allocated == ln.quantity - ln.backordered
    assert all(q <= stock.get(key, 0) for key, q in taken.items())
    for site in LOC_POOL:
        cap = site.location.capacity
        if cap is not None and site.id in d.locations:
            assert load.get(site.id, 0) + 1 <= cap
    assert d.shipments <= (max_shipments if allow_split else 1)
    if not backorder:
        assert d.outcome is not RoutingOutcome.BACKORDERED
