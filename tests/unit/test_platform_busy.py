"""Which platform refusals count as "busy, try again" (adapters/channels/base.py)."""

from __future__ import annotations

import pytest

from ordersync.adapters.channels.base import platform_busy


@pytest.mark.parametrize(
    "words",
    ["App Call Limited", "System is BUSY", "调用频率超限", "系统繁忙", "接口限流"],
)
def test_rate_limits_and_busy_gateways_are_retryable(words: str) -> None:
    assert platform_busy(words)


@pytest.mark.parametrize("words", ["Invalid signature", "订单已发货", "isv.invalid-parameter", ""])
def test_refusals_the_platform_would_repeat_are_not(words: str) -> None:
    assert not platform_busy(words)
