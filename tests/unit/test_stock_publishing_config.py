"""The `stock_publishing` block of a channel: a bad one fails at start-up, naming the key."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from ordersync.adapters.channels.stock_sync import channel_stock
from ordersync.bootstrap import inventory_policy
from ordersync.config import ConfigError, settings_from_mapping

LOCATIONS = [{"id": "berlin-dc", "kind": "warehouse", "region": "eu"}]


def shop(**publishing: Any) -> dict[str, Any]:
    return {
        "id": "shop-eu",
        "kind": "shopify",
        "secret": "shpss_teahouse",
        "access_token": "shpat_teahouse",
        "shop_domain": "teahouse.myshopify.com",
        "stock_publishing": {"location_id": 655441491, **publishing},
    }


def load(channel: dict[str, Any], locations: list[dict[str, Any]] | None = None) -> Any:
    return settings_from_mapping(
        {"channels": [channel], "locations": LOCATIONS if locations is None else locations},
        env={},
    )


def test_a_complete_block_is_read_with_its_defaults() -> None:
    """Ratio as an exact decimal, every location pooled, feeds never stale by default."""
    settings = load(shop(ratio="0.3", items={"BLUE-TEAPOT": 808950810}))
    sp = settings.channels[0].stock_publishing

    assert sp.ratio == Decimal("0.3")
    assert sp.locations is None
    assert sp.stale_after is None
    assert sp.items == {"BLUE-TEAPOT": 808950810}


@pytest.mark.parametrize(
    ("channel", "locations", "message"),
    [
        (shop(ratio="1.5"), None, "ratio"),
        (shop(floor=5, cap=2), None, "cap 2 is below floor 5"),
        (shop(debounce=10, max_wait=5), None, "max_wait must be at least debounce"),
        (shop(locations=["lisbon-dc"]), None, "unknown ['lisbon-dc']"),
        (shop(), [], "stock_publishing needs locations"),
        ({**shop(), "stock_publishing": {}}, None, "needs location_id"),
        (
            {
                "id": "tmall",
                "kind": "taobao",
                "app_key": "12345678",
                "app_secret": "top_secret",
                "stock_publishing": {},
            },
            None,
            "stock_publishing needs session",  # the seller's authorization
        ),
    ],
)
def test_a_bad_block_is_refused_at_start_up(
    channel: dict[str, Any], locations: list[dict[str, Any]] | None, message: str
) -> None:
    """Each mistake fails loading with a message that says what is wrong."""
    with pytest.raises(ConfigError) as caught:
        load(channel, locations)

    assert message in str(caught.value)


def test_a_disabled_block_needs_nothing() -> None:
    """`enabled: false` keeps the settings without checking them against the channel."""
    channel = {**shop(), "stock_publishing": {"enabled": False}}

    assert load(channel, []).channels[0].stock_publishing.enabled is False


def woo(channel_id: str, **publishing: Any) -> dict[str, Any]:
    return {
        "id": channel_id,
        "kind": "woocommerce",
        "secret": "woo_webhook_secret",
        "store_url": "https://teahouse.example",
        "consumer_key": "ck_teahouse",
        "consumer_secret": "cs_teahouse",
        "stock_publishing": publishing,
    }


def test_channels_naming_one_pool_share_it() -> None:
    """Two stores in pool "eu" get one `StockPool` with both rules; the shop keeps its own."""
    settings = settings_from_mapping(
        {
            "channels": [
                shop(),
                woo("woo-nl", pool="eu", promise="exclusive", ratio="0.25"),
                woo("woo-be", pool="eu"),
            ],
            "locations": LOCATIONS,
        },
        env={},
    )
    policy = inventory_policy(settings)
    assert policy is not None

    channels = channel_stock(settings, policy)

    pools = {c.channel_id: c.pool for c in channels}
    assert pools["woo-nl"] is pools["woo-be"]
    assert [r.channel_id for r in pools["woo-nl"].rules] == ["woo-nl", "woo-be"]
    assert [r.channel_id for r in pools["shop-eu"].rules] == ["shop-eu"]


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (
            {"promise": "exclusive", "ratio": "0.6"},
            {"promise": "exclusive", "ratio": "0.5"},
            "above 1",
        ),
        ({"stale_after": 60}, {}, "same locations with the same stale_after"),
    ],
)
def test_a_pool_whose_channels_disagree_is_refused(
    first: dict[str, Any], second: dict[str, Any], message: str
) -> None:
    """Exclusive promises cannot sum above the pool, and a pool has one shape."""
    channels = [woo("woo-nl", pool="eu", **first), woo("woo-be", pool="eu", **second)]

    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"channels": channels, "locations": LOCATIONS}, env={})

    assert message in str(caught.value)
