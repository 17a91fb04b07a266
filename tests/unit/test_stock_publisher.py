"""StockPublisher: debounce, coalescing, unchanged skips, per-channel rate limit, retries."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from typing import Any

import pytest

from ordersync.service.stock_publisher import PublisherSettings, StockPublisher


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingPush:
    def __init__(self, clock: FakeClock, failures: int = 0) -> None:
        self.clock = clock
        self.failures = failures
        self.calls: list[tuple[str, str, int, float]] = []
        self.attempts = 0

    async def push(self, channel_id: str, sku: str, quantity: int) -> None:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("channel unavailable")
        self.calls.append((channel_id, sku, quantity, self.clock.now))


class Stock:
    """ATS per sku, the same for every channel; counts reads."""

    def __init__(self, channels: tuple[str, ...]) -> None:
        self.channels = channels
        self.ats: dict[str, int] = {}
        self.reads = 0

    async def __call__(self, sku: str) -> Mapping[str, int]:
        self.reads += 1
        return dict.fromkeys(self.channels, self.ats[sku])


def make(
    channels: tuple[str, ...] = ("shop",),
    failures: int = 0,
    **settings: Any,
) -> tuple[StockPublisher, FakeClock, RecordingPush, Stock]:
    clock = FakeClock()
    push = RecordingPush(clock, failures)
    stock = Stock(channels)
    publisher = StockPublisher(
        channels,
        stock,
        push,
        PublisherSettings(**settings),
        clock=clock,
        sleep=clock.sleep,
    )
    return publisher, clock, push, stock


async def test_burst_of_changes_is_coalesced_into_one_push_with_the_latest_value() -> None:
    """Ten changes 0.5 s apart, then quiet: one push, with the value at the end."""
    publisher, clock, push, stock = make(debounce=2.0)
    for qty in range(10, 0, -1):
        stock.ats["SKU-1"] = qty
        publisher.notify("SKU-1")
        assert await publisher.publish_due() == 0
        clock.advance(0.5)
    clock.advance(1.5)
    assert await publisher.publish_due() == 1
    assert [(c, s, q) for c, s, q, _ in push.calls] == [("shop", "SKU-1", 1)]
    assert stock.reads == 1


async def test_nothing_is_pushed_before_the_debounce_has_elapsed() -> None:
    """A change 1.9 s ago with a 2 s debounce is still waiting."""
    publisher, clock, _push, stock = make(debounce=2.0)
    stock.ats["SKU-1"] = 5
    publisher.notify("SKU-1")
    clock.advance(1.9)
    assert await publisher.publish_due() == 0
    assert publisher.next_due() == pytest.approx(clock.now + 0.1)
    clock.advance(0.1)
    assert await publisher.publish_due() == 1


async def test_a_burst_that_never_pauses_is_still_published_after_max_wait() -> None:
    """Changes every second under a 2 s debounce still publish once max_wait has passed."""
    publisher, clock, push, stock = make(debounce=2.0, max_wait=5.0)
    published = 0
    for qty in range(8):
        stock.ats["SKU-1"] = qty
        publisher.notify("SKU-1")
        published += await publisher.publish_due()
        clock.advance(1.0)
    assert published == 1
    assert push.calls[0][2] == 5


async def test_an_unchanged_value_is_not_pushed_again() -> None:
    """A second notification that leaves the ATS where it was costs no push."""
    publisher, clock, push, stock = make(debounce=2.0)
    stock.ats["SKU-1"] = 7
    publisher.notify("SKU-1")
    clock.advance(2.0)
    await publisher.publish_due()
    publisher.notify("SKU-1")
    clock.advance(2.0)
    assert await publisher.publish_due() == 0
    assert len(push.calls) == 1
    assert publisher.skipped_unchanged == 1
    assert publisher.last_pushed("shop", "SKU-1") == 7


async def test_debounce_is_per_channel_and_sku() -> None:
    """Two SKUs on two channels give four pushes, each with its own SKU's value."""
    publisher, clock, push, stock = make(channels=("shop", "woo"), debounce=1.0, rate=100.0)
    stock.ats.update({"A": 1, "B": 2})
    publisher.notify("A")
    publisher.notify("B")
    clock.advance(1.0)
    assert await publisher.publish_due() == 4
    assert sorted((c, s, q) for c, s, q, _ in push.calls) == [
        ("shop", "A", 1),
        ("shop", "B", 2),
        ("woo", "A", 1),
        ("woo", "B", 2),
    ]


async def test_rate_limit_spaces_pushes_per_channel_on_a_fake_clock() -> None:
    """2 pushes/s with a burst of 1: six SKUs due together leave 0.5 s apart."""
    publisher, _clock, push, stock = make(debounce=0.0, rate=2.0, burst=1)
    for i in range(6):
        stock.ats[f"SKU-{i}"] = i + 1
        publisher.notify(f"SKU-{i}")
    assert await publisher.publish_due() == 6
    times = [at for *_, at in push.calls]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.5 - 1e-9 for gap in gaps)
    assert times[-1] - times[0] == pytest.approx(2.5)


async def test_rate_limit_allows_a_burst_up_to_the_bucket_size() -> None:
    """A full bucket of 4 sends 4 pushes at once, then waits for the fifth."""
    publisher, clock, push, stock = make(debounce=0.0, rate=1.0, burst=4)
    for i in range(5):
        stock.ats[f"SKU-{i}"] = 1
        publisher.notify(f"SKU-{i}")
    start = clock.now
    await publisher.publish_due()
    assert [at - start for *_, at in push.calls] == pytest.approx([0, 0, 0, 0, 1.0])


async def test_failed_push_is_retried_with_backoff_until_it_succeeds() -> None:
    """Two failures then success: three attempts, backoff 0.5 s then 1 s, one push recorded."""
    publisher, clock, push, stock = make(debounce=0.0, failures=2, backoff=0.5, rate=1000.0)
    stock.ats["SKU-1"] = 3
    publisher.notify("SKU-1")
    assert await publisher.publish_due() == 1
    assert push.attempts == 3
    assert clock.sleeps == [0.5, 1.0]
    assert publisher.last_pushed("shop", "SKU-1") == 3
    assert publisher.failures == 2


async def test_push_that_keeps_failing_is_requeued_not_lost() -> None:
    """After max_attempts failures the key comes back later and is pushed then."""
    publisher, clock, push, stock = make(
        debounce=0.0, failures=3, max_attempts=3, requeue_after=60.0, rate=1000.0
    )
    stock.ats["SKU-1"] = 9
    publisher.notify("SKU-1")
    assert await publisher.publish_due() == 0
    assert publisher.last_pushed("shop", "SKU-1") is None
    assert await publisher.publish_due() == 0
    clock.advance(60.0)
    assert await publisher.publish_due() == 1
    assert push.calls[0][2] == 9


async def test_failed_ats_read_is_requeued_not_lost() -> None:
    """If the stock cannot be read when the timer fires, the SKU is published later."""
    publisher, clock, push, stock = make(debounce=0.0, requeue_after=30.0)
    publisher.notify("SKU-1")  # stock.ats has no SKU-1 yet: the read raises KeyError
    assert await publisher.publish_due() == 0
    stock.ats["SKU-1"] = 6
    clock.advance(30.0)
    assert await publisher.publish_due() == 1
    assert push.calls[0][2] == 6


async def test_channel_missing_from_the_ats_answer_is_not_published() -> None:
    """A SKU that a channel does not list is left alone there."""
    clock = FakeClock()
    push = RecordingPush(clock)

    async def only_shop(sku: str) -> Mapping[str, int]:
        return {"shop": 4}

    publisher = StockPublisher(
        ("shop", "woo"),
        only_shop,
        push,
        PublisherSettings(debounce=0.0),
        clock=clock,
        sleep=clock.sleep,
    )
    publisher.notify("SKU-1")
    await publisher.publish_due()
    assert [c for c, *_ in push.calls] == ["shop"]


async def test_run_loop_publishes_notifications_until_stopped() -> None:
    """The production loop wakes on a notification, pushes, and exits when stop is set."""
    pushed = asyncio.Event()

    class Port:
        calls: list[tuple[str, str, int]] = []  # noqa: RUF012

        async def push(self, channel_id: str, sku: str, quantity: int) -> None:
            self.calls.append((channel_id, sku, quantity))
            pushed.set()

    async def source(sku: str) -> Mapping[str, int]:
        return {"shop": 11}

    port = Port()
    publisher = StockPublisher(("shop",), source, port, PublisherSettings(debounce=0.0))
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    publisher.notify("SKU-1")
    await asyncio.wait_for(pushed.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert port.calls == [("shop", "SKU-1", 11)]


def test_settings_refuse_nonsense() -> None:
    """A max_wait shorter than the debounce or a zero rate is a configuration error."""
    with pytest.raises(ValueError, match="max_wait"):
        PublisherSettings(debounce=5.0, max_wait=1.0)
    with pytest.raises(ValueError, match="rate"):
        PublisherSettings(rate=0)
