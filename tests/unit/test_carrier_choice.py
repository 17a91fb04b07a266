"""Carrier choice: ordered rules on destination, weight, total, channel and service level,
a cost that breaks ties between rules of equal priority, runtime overrides, fallbacks, and
an explanation of every decision."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ordersync.config import ConfigError, Settings, settings_from_mapping
from ordersync.domain.carrier_choice import (
    CarrierRule,
    NoCarrierMatched,
    ParcelFacts,
    choose,
    explicit,
)
from ordersync.service.carrier_booking import rules_from_config

CARRIERS = ["kdn-sf", "kd100-yt", "ezp-post"]


def parcel(**changes: object) -> ParcelFacts:
    base: dict[str, object] = {
        "order_id": "ord_GREEN-TEA-7",
        "channel_id": "shop-eu",
        "country": "CN",
        "region": "Zhejiang",
        "total": Decimal("88.00"),
        "currency": "CNY",
        "weight_kg": Decimal("1.2"),
        "service": "standard",
    }
    base.update(changes)
    return ParcelFacts(**base)  # type: ignore[arg-type]


RULES = [
    CarrierRule.build(
        "express-cn",
        "kdn-sf",
        fallback=["kd100-yt"],
        countries=["CN"],
        services=["express"],
    ),
    CarrierRule.build(
        "heavy",
        "kd100-yt",
        fallback=["kdn-sf"],
        min_weight_kg=Decimal("20"),
    ),
    CarrierRule.build("abroad", "ezp-post", countries=["CH", "DE"]),
    CarrierRule.build("china-default", "kd100-yt", fallback=["kdn-sf"], countries=["CN"]),
]


def test_the_first_matching_rule_wins_and_says_why() -> None:
    """An express parcel in China goes with SF, then YTO; the explanation names the rule."""
    choice = choose(RULES, parcel(service="express"), available=CARRIERS)

    assert choice.carriers == ("kdn-sf", "kd100-yt")
    assert choice.rule_id == "express-cn"
    assert (
        choice.explanation[0]
        == "rule express-cn matches (country in ['cn'], service in ['express'])"
    )
    assert choice.explanation[-1] == "try kdn-sf then kd100-yt"


def test_rules_that_do_not_match_are_explained_before_the_one_that_does() -> None:
    """A standard 1.2 kg parcel skips the express and heavy rules, with the reasons."""
    choice = choose(RULES, parcel(), available=CARRIERS)

    assert choice.rule_id == "china-default"
    assert choice.explanation[:3] == (
        "rule express-cn: service standard not in ['express']",
        "rule heavy: weight 1.2 kg < 20 kg",
        "rule abroad: country CN not in ['ch', 'de']",
    )


def test_a_weight_rule_does_not_match_an_unknown_weight() -> None:
    """Without a weight a heavy-goods rule cannot apply; the reason asks for weight_kg."""
    rules = [CarrierRule.build("heavy", "kd100-yt", min_weight_kg=Decimal("20"))]

    with pytest.raises(NoCarrierMatched) as e:
        choose(rules, parcel(weight_kg=None), available=CARRIERS)

    assert e.value.explanation == ("rule heavy: weight unknown (give weight_kg)",)


@pytest.mark.parametrize(
    ("total", "currency", "expected"),
    [
        (Decimal("499.99"), "CNY", "cheap"),
        (Decimal("500.00"), "CNY", "valuable"),
        (Decimal("900.00"), "EUR", "anything"),
    ],
)
def test_order_total_bounds_are_in_the_rule_currency(
    total: Decimal, currency: str, expected: str
) -> None:
    """max_total is exclusive, min_total inclusive, and another currency never matches."""
    rules = [
        CarrierRule.build("cheap", "kd100-yt", max_total=Decimal("500"), currency="CNY"),
        CarrierRule.build("valuable", "kdn-sf", min_total=Decimal("500"), currency="CNY"),
        CarrierRule.build("anything", "ezp-post"),
    ]

    assert choose(rules, parcel(total=total, currency=currency), available=CARRIERS).rule_id == (
        expected
    )


def test_channel_and_region_conditions() -> None:
    """A Zhejiang order from the Taobao shop goes with its own rule; others fall through."""
    rules = [
        CarrierRule.build("tmall-zj", "kdn-sf", channels=["tmall-cn"], regions=["zhejiang"]),
        CarrierRule.build("rest", "kd100-yt"),
    ]

    assert choose(rules, parcel(channel_id="tmall-cn"), available=CARRIERS).rule_id == "tmall-zj"
    assert choose(rules, parcel(), available=CARRIERS).rule_id == "rest"
    assert (
        choose(rules, parcel(channel_id="tmall-cn", region="Jiangsu"), available=CARRIERS).rule_id
        == "rest"
    )


def test_cost_breaks_a_tie_between_rules_of_equal_priority() -> None:
    """Two rules at priority 1 both match: the cheaper wins, whatever their order."""
    rules = [
        CarrierRule.build("sf-domestic", "kdn-sf", priority=1, cost=Decimal("12.5")),
        CarrierRule.build("yto-domestic", "kd100-yt", priority=1, cost=Decimal("8")),
        CarrierRule.build("post", "ezp-post", priority=0, countries=["CH"]),
    ]

    choice = choose(rules, parcel(), available=CARRIERS)

    assert choice.rule_id == "yto-domestic"
    assert "rule cost 8" in choice.explanation


def test_a_runtime_override_replaces_the_carrier_and_keeps_the_fallbacks() -> None:
    """Switching the China rule to SF books SF first; YTO stays as the fallback."""
    rules = [CarrierRule.build("china", "kd100-yt", fallback=["kdn-sf", "kd100-yt"])]

    choice = choose(rules, parcel(), available=CARRIERS, overrides={"china": "ezp-post"})

    assert choice.carriers == ("ezp-post", "kdn-sf", "kd100-yt")
    assert choice.overridden
    assert "carrier overridden at run time: kd100-yt -> ezp-post" in choice.explanation


def test_carriers_that_are_not_configured_are_skipped() -> None:
    """A fallback naming a removed carrier is left out, and the explanation says so."""
    rules = [CarrierRule.build("china", "kd100-yt", fallback=["dhl-gone", "kdn-sf"])]

    choice = choose(rules, parcel(), available=CARRIERS)

    assert choice.carriers == ("kd100-yt", "kdn-sf")
    assert "carrier dhl-gone is not configured: skipped" in choice.explanation


def test_without_rules_the_first_configured_carrier_is_used() -> None:
    """No rules at all: the first carrier, as before rules existed."""
    choice = choose([], parcel(), available=CARRIERS)

    assert (choice.carriers, choice.rule_id) == (("kdn-sf",), None)


def test_no_matching_rule_is_an_error_with_every_reason() -> None:
    """Rules exist but none applies: refuse, listing why each did not."""
    rules = [CarrierRule.build("abroad", "ezp-post", countries=["CH"])]

    with pytest.raises(NoCarrierMatched) as e:
        choose(rules, parcel(), available=CARRIERS)

    assert e.value.code == "no_carrier_rule_matched"
    assert e.value.explanation == ("rule abroad: country CN not in ['ch']",)


def test_a_named_carrier_is_its_own_explanation() -> None:
    """A carrier_id in the request bypasses the rules."""
    choice = explicit("ezp-post")

    assert choice.to_dict("ezp-post") == {
        "rule_id": None,
        "candidates": ["ezp-post"],
        "overridden": False,
        "booked_with": "ezp-post",
        "explanation": ["carrier ezp-post named in the request"],
    }


def _settings(rules: list[dict[str, object]], **carrier: object) -> Settings:
    carriers = [
        {"id": "kdn-sf", "kind": "kdniao", "endpoint": "https://api.kdniao.test", **carrier},
        {"id": "ezp-post", "kind": "generic", "endpoint": "https://api.easypost.test"},
    ]
    return settings_from_mapping({"carriers": carriers, "carrier_rules": rules}, env={})


def test_config_rules_must_name_configured_carriers() -> None:
    """A rule (or a fallback) naming an unknown carrier fails at start-up, naming the rule."""
    with pytest.raises(ConfigError, match=r"carrier_rules\[1\] \(abroad\): unknown carrier 'dhl'"):
        _settings(
            [
                {"id": "china", "carrier": "kdn-sf", "countries": ["CN"]},
                {"id": "abroad", "carrier": "ezp-post", "fallback": ["dhl"]},
            ]
        )
    with pytest.raises(ConfigError, match="duplicate id 'china'"):
        _settings([{"id": "china", "carrier": "kdn-sf"}, {"id": "china", "carrier": "ezp-post"}])
    with pytest.raises(ConfigError, match=r"carriers\[0\]\.poll\.rate"):
        _settings([], poll={"rate": 0})


def test_config_rules_become_domain_rules_with_decimals() -> None:
    """Money and weights stay Decimal from YAML to the rule."""
    settings = _settings(
        [
            {
                "id": "valuable",
                "carrier": "kdn-sf",
                "fallback": ["ezp-post"],
                "min_total": "500.00",
                "currency": "CNY",
                "max_weight_kg": "2.5",
                "services": ["Express"],
                "cost": "12.5",
            }
        ]
    )
    [rule] = rules_from_config(settings.carrier_rules)

    assert rule.min_total == Decimal("500.00")
    assert rule.max_weight_kg == Decimal("2.5")
    assert rule.cost == Decimal("12.5")
    assert rule.services == frozenset({"express"})
    assert rule.fallback == ("ezp-post",)
