"""The `merge` block of the config: the merge window and the auto-merge sweep."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ordersync.bootstrap import merge_policy
from ordersync.config import ConfigError, settings_from_mapping


def test_the_merge_window_comes_from_config_in_seconds() -> None:
    """`merge.window: 1800` merges orders placed up to half an hour apart."""
    settings = settings_from_mapping({"merge": {"window": 1800, "same_channel": False}}, env={})

    policy = merge_policy(settings)

    assert policy.window == timedelta(minutes=30)
    assert policy.same_channel is False
    assert settings.merge.auto is False


def test_a_merge_window_of_zero_fails_at_start_up_naming_the_key() -> None:
    """A window of 0 s could never merge anything: refused with the path of the bad key."""
    with pytest.raises(ConfigError, match=r"merge\.window"):
        settings_from_mapping({"merge": {"window": 0}}, env={})
