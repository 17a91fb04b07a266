"""The `locations` and `inventory` configuration, and the policy the hub builds from it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ordersync.bootstrap import inventory_policy
from ordersync.config import ConfigError, settings_from_mapping
from ordersync.domain.inventory import LocationKind, ReserveOn

LOCATIONS = [
    {"id": "berlin-dc", "kind": "warehouse", "region": "eu", "priority": 1},
    {"id": "paris-store", "kind": "store", "region": "eu", "priority": 2, "capacity": 40},
]


def test_locations_and_reservation_settings_become_the_inventory_policy() -> None:
    """Kinds, priorities, capacities and the per-channel reservation moment carry over."""
    settings = settings_from_mapping(
        {
            "locations": LOCATIONS,
            "inventory": {"reserve_on": {"shop-eu": "paid"}, "unpaid_ttl": 600},
        },
        env={},
    )

    policy = inventory_policy(settings)

    assert policy is not None
    assert policy.locations["paris-store"].kind is LocationKind.STORE
    assert policy.locations["paris-store"].capacity == 40
    assert policy.reserves_on("shop-eu") is ReserveOn.PAID
    assert policy.reserves_on("pos-berlin") is ReserveOn.ACCEPTED
    assert policy.unpaid_ttl == timedelta(minutes=10)


def test_without_locations_there_is_no_inventory() -> None:
    """Inventory is opt-in: no locations, no policy, no stock work in the order pipeline."""
    assert inventory_policy(settings_from_mapping({}, env={})) is None


@pytest.mark.parametrize(
    ("locations", "where"),
    [
        ([{**LOCATIONS[0], "kind": "spaceport"}], "locations[0].kind"),
        ([LOCATIONS[0], LOCATIONS[0]], "locations"),
        ([{**LOCATIONS[0], "capacity": -1}], "locations[0].capacity"),
    ],
    ids=["unknown-kind", "duplicate-id", "negative-capacity"],
)
def test_a_bad_location_fails_at_start_up_naming_the_key(
    locations: list[dict[str, object]], where: str
) -> None:
    """The error names the path of the bad key, like every other setting."""
    with pytest.raises(ConfigError) as refused:
        settings_from_mapping({"locations": locations}, env={})

    assert f"\n  {where}: " in str(refused.value)
