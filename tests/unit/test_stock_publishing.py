"""Channel stock publishing: the ATS formula, stale feeds, low-stock alerts, exclusive pools."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ordersync.domain.inventory import Location, LocationKind, StockLevel
from ordersync.domain.stock_publishing import (
    LowStockMonitor,
    PromiseKind,
    Publication,
    PublishingRule,
    StockPool,
    publish,
    sellable,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
DC = Location("dc", LocationKind.WAREHOUSE, "eu", 1)
STORE = Location("store", LocationKind.STORE, "eu", 2)
EXCLUSIVE = PromiseKind.EXCLUSIVE


def level(location: str, on_hand: int, reserved: int = 0, safety: int = 0) -> StockLevel:
    return StockLevel("SKU-1", location, on_hand=on_hand, reserved=reserved, safety_stock=safety)


def pool(*rules: PublishingRule, max_age: timedelta = timedelta(minutes=15)) -> StockPool:
    return StockPool("main", (DC, STORE), rules, max_feed_age=max_age)


FRESH = {"dc": NOW - timedelta(minutes=1), "store": NOW - timedelta(minutes=1)}


def test_full_ratio_publishes_available_minus_safety_stock() -> None:
    """Ratio 1 with nothing else publishes on_hand - reserved - safety stock."""
    p = pool(PublishingRule("shop"))
    out = publish(p, "SKU-1", [level("dc", 50, reserved=5, safety=3)], FRESH, NOW)
    assert out["shop"].quantity == 42


def test_ratio_fixed_floor_and_cap_apply_in_order() -> None:
    """(base x ratio) + fixed, then floor and cap, in that order."""
    assert PublishingRule("a", ratio=Fraction(1, 2), fixed=3).quantity(20) == 13
    assert PublishingRule("a", ratio=Fraction(1, 2), fixed=-4).quantity(20) == 6
    assert PublishingRule("a", ratio=Fraction(1, 10), floor=5).quantity(20) == 5
    assert PublishingRule("a", cap=7).quantity(20) == 7
    assert PublishingRule("a", safety_stock=4, ratio=Fraction(1, 2)).quantity(20) == 8


def test_fractions_are_rounded_down_never_up() -> None:
    """7 x 0.9 = 6.3 publishes 6 and 0.3 x 10 is exactly 3, not 2.999."""
    assert PublishingRule("a", ratio=Fraction(9, 10)).quantity(7) == 6
    assert PublishingRule("a", ratio=Fraction("0.3")).quantity(10) == 3
    assert PublishingRule("a", ratio=Fraction(99, 100)).quantity(1) == 0


def test_floor_and_fixed_never_publish_more_than_exists_or_below_zero() -> None:
    """A floor or positive fixed amount is bounded by the base; a negative one stops at 0."""
    assert PublishingRule("a", floor=5).quantity(2) == 2
    assert PublishingRule("a", fixed=10).quantity(4) == 4
    assert PublishingRule("a", fixed=-10).quantity(4) == 0
    assert PublishingRule("a").quantity(-3) == 0


def test_invalid_rules_are_refused() -> None:
    """Ratios outside 0..1, a negative floor and a cap below the floor are configuration errors."""
    with pytest.raises(ValueError, match="ratio"):
        PublishingRule("a", ratio=Fraction(3, 2))
    with pytest.raises(ValueError, match="negative"):
        PublishingRule("a", floor=-1)
    with pytest.raises(ValueError, match="cap"):
        PublishingRule("a", floor=5, cap=2)


def test_pool_sums_fresh_locations_and_ignores_locations_outside_it() -> None:
    """Sellable stock is the sum over the pool's locations, each net of its safety stock."""
    levels = [level("dc", 10, safety=2), level("store", 5, reserved=1), level("elsewhere", 99)]
    assert sellable(pool(), levels, FRESH, NOW) == (12, False)


def test_safety_stock_larger_than_available_counts_as_zero_not_negative() -> None:
    """A location below its safety stock does not eat into another location's stock."""
    levels = [level("dc", 2, safety=5), level("store", 4)]
    assert sellable(pool(), levels, FRESH, NOW) == (4, False)


def test_stale_feed_publishes_zero_on_every_channel() -> None:
    """Every location's feed older than the maximum age: all channels get 0, marked stale."""
    p = pool(PublishingRule("shop"), PublishingRule("woo", floor=3))
    old = {"dc": NOW - timedelta(hours=1), "store": NOW - timedelta(hours=2)}
    out = publish(p, "SKU-1", [level("dc", 50), level("store", 10)], old, NOW)
    assert out == {
        "shop": Publication("shop", "SKU-1", 0, stale=True),
        "woo": Publication("woo", "SKU-1", 0, stale=True),
    }


def test_missing_feed_counts_as_stale() -> None:
    """A location that never reported stock is not trusted."""
    p = pool(PublishingRule("shop"))
    out = publish(p, "SKU-1", [level("dc", 50)], {}, NOW)
    assert out["shop"].quantity == 0
    assert out["shop"].stale


def test_one_stale_location_drops_only_its_own_stock() -> None:
    """A stale store feed removes the store's units; the fresh warehouse still publishes."""
    fed = {"dc": NOW - timedelta(minutes=1), "store": NOW - timedelta(minutes=20)}
    out = publish(
        pool(PublishingRule("shop")), "SKU-1", [level("dc", 8), level("store", 5)], fed, NOW
    )
    assert out["shop"] == Publication("shop", "SKU-1", 8)


def test_feed_age_limit_is_configurable() -> None:
    """The same 20-minute-old feed is fresh under a one-hour limit."""
    fed = {"dc": NOW - timedelta(minutes=20)}
    p = pool(PublishingRule("shop"), max_age=timedelta(hours=1))
    assert publish(p, "SKU-1", [level("dc", 8)], fed, NOW)["shop"].quantity == 8


def test_exclusive_ratios_above_one_are_refused() -> None:
    """Exclusive promises partition the pool, so their ratios may not sum above 1."""
    with pytest.raises(ValueError, match="exclusive ratios"):
        pool(
            PublishingRule("a", ratio=Fraction(6, 10), kind=EXCLUSIVE),
            PublishingRule("b", ratio=Fraction(6, 10), kind=EXCLUSIVE),
        )


def test_shared_ratios_may_sum_above_one() -> None:
    """Shared channels may each advertise most of the same units."""
    p = pool(PublishingRule("a", ratio=Fraction(8, 10)), PublishingRule("b", ratio=Fraction(8, 10)))
    out = publish(p, "SKU-1", [level("dc", 10)], FRESH, NOW)
    assert (out["a"].quantity, out["b"].quantity) == (8, 8)


def test_exclusive_floor_is_clipped_to_what_earlier_exclusives_left() -> None:
    """A floor on a later exclusive channel cannot over-promise the pool: it is clipped."""
    p = pool(
        PublishingRule("a", ratio=Fraction(9, 10), kind=EXCLUSIVE, priority=0),
        PublishingRule("b", ratio=Fraction(1, 10), floor=4, kind=EXCLUSIVE, priority=1),
    )
    out = publish(p, "SKU-1", [level("dc", 10)], FRESH, NOW)
    assert out["a"] == Publication("a", "SKU-1", 9)
    assert out["b"] == Publication("b", "SKU-1", 1, clipped=True)


def test_shared_channels_only_see_what_exclusive_channels_left() -> None:
    """Units set aside for an exclusive channel are never shown to a shared one."""
    p = pool(
        PublishingRule("marketplace", ratio=Fraction(1, 4), kind=EXCLUSIVE),
        PublishingRule("shop"),
        PublishingRule("woo"),
    )
    out = publish(p, "SKU-1", [level("dc", 20)], FRESH, NOW)
    assert [out[c].quantity for c in ("marketplace", "shop", "woo")] == [5, 15, 15]


@settings(max_examples=300, deadline=None)
@given(
    on_hand=st.lists(st.integers(0, 500), min_size=1, max_size=2),
    safety=st.lists(st.integers(0, 50), min_size=2, max_size=2),
    rules=st.lists(
        st.tuples(
            st.integers(0, 100),  # ratio in percent, rescaled below to sum <= 1
            st.integers(-20, 40),  # fixed
            st.integers(0, 30),  # floor
            st.one_of(st.none(), st.integers(30, 400)),  # cap
            st.integers(0, 10),  # channel safety stock
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_exclusive_channels_never_promise_more_than_the_pool_holds(
    on_hand: list[int],
    safety: list[int],
    rules: list[tuple[int, int, int, int | None, int]],
) -> None:
    """Property: the sum of exclusive ATS never exceeds available - safety stock."""
    total_pct = max(100, sum(r[0] for r in rules))
    built = tuple(
        PublishingRule(
            f"ch{i}",
            ratio=Fraction(pct, total_pct),
            fixed=fixed,
            floor=floor,
            cap=cap,
            safety_stock=ch_safety,
            kind=EXCLUSIVE,
        )
        for i, (pct, fixed, floor, cap, ch_safety) in enumerate(rules)
    )
    p = pool(*built)
    levels = [
        level(loc, oh, safety=sf)
        for loc, oh, sf in zip(("dc", "store"), on_hand, safety, strict=False)
    ]
    out = publish(p, "SKU-1", levels, FRESH, NOW)
    limit = sum(max(0, lv.available - lv.safety_stock) for lv in levels)
    assert sum(pub.quantity for pub in out.values()) <= limit
    assert all(pub.quantity >= 0 for pub in out.values())


def test_low_stock_alerts_once_per_crossing_and_rearms_above_threshold() -> None:
    """Below 5: one alert; staying low: silence; back above 5: re-armed; below again: alert."""
    rule = PublishingRule("shop", low_stock_below=5)
    monitor = LowStockMonitor()
    seen = []
    for qty in (10, 4, 3, 0, 5, 4, 6, 2, 2):
        alert = monitor.observe(rule, Publication("shop", "SKU-1", qty), NOW)
        seen.append(None if alert is None else alert.quantity)
    assert seen == [None, 4, None, None, None, None, None, 2, None]


def test_low_stock_is_tracked_per_channel_and_sku() -> None:
    """One channel's alert does not silence another channel's or another SKU's."""
    p = pool(
        PublishingRule("shop", low_stock_below=5),
        PublishingRule("woo", low_stock_below=3),
        PublishingRule("quiet"),
    )
    monitor = LowStockMonitor()
    out = publish(p, "SKU-1", [level("dc", 4)], FRESH, NOW)
    alerts = monitor.observe_all(p, out, NOW)
    assert [(a.channel_id, a.quantity, a.threshold) for a in alerts] == [("shop", 4, 5)]
    other = monitor.observe(p.rules[0], Publication("shop", "SKU-2", 1), NOW)
    assert other is not None
    assert other.sku == "SKU-2"
