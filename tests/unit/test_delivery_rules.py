"""Delivery rules: when to retry a webhook, when to give up, when to stop calling."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ordersync.domain.delivery import Backoff, BreakerState, CircuitBreaker, RetryPolicy

# ---- retries ----------------------------------------------------------------------------------


def test_the_quick_retries_follow_the_schedule() -> None:
    """After 1, 2 and 3 failures the warehouse ERP is retried after 5, 10 and 30 seconds."""
    policy = RetryPolicy(schedule=(5.0, 10.0, 30.0))

    delays = [policy.next_delay(n, age=0.0) for n in (1, 2, 3)]

    assert delays == [5.0, 10.0, 30.0]


@given(
    failures=st.integers(min_value=4, max_value=40),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_after_the_schedule_backoff_doubles_with_jitter_within_bounds(
    failures: int, seed: int
) -> None:
    """The n-th backoff step waits between half and all of min(max_delay, base * 2**n)."""
    policy = RetryPolicy(
        schedule=(5.0, 5.0, 5.0),
        backoff=Backoff(base=30.0, multiplier=2.0, max_delay=3600.0, max_age=10**9),
    )
    ceiling = min(3600.0, 30.0 * 2.0 ** (failures - 4))

    delay = policy.next_delay(failures, age=0.0, rng=random.Random(seed))

    assert delay is not None
    assert ceiling / 2 <= delay <= ceiling


def test_the_jitter_actually_spreads_the_retries() -> None:
    """A thousand clients failing together do not all retry at the same instant."""
    policy = RetryPolicy(schedule=(), backoff=Backoff(base=60.0))
    rng = random.Random(7)

    delays = {policy.next_delay(1, age=0.0, rng=rng) for _ in range(1000)}

    assert len(delays) > 900
    assert min(d for d in delays if d is not None) >= 30.0


def test_backoff_gives_up_once_the_next_attempt_would_exceed_max_age() -> None:
    """A delivery failing for a day is dead-lettered instead of retried forever."""
    policy = RetryPolicy(schedule=(5.0,), backoff=Backoff(base=30.0, max_age=86400.0))

    early = policy.next_delay(2, age=100.0, rng=random.Random(1))
    late = policy.next_delay(2, age=86400.0 - 1.0, rng=random.Random(1))

    assert early is not None
    assert late is None


def test_the_schedule_is_honoured_even_late_in_the_cycle() -> None:
    """max_age bounds the backoff only; the quick retries always happen."""
    policy = RetryPolicy(schedule=(5.0, 5.0), backoff=Backoff(max_age=10.0))

    assert policy.next_delay(2, age=3600.0) == 5.0


def test_without_backoff_a_delivery_is_dead_after_the_schedule() -> None:
    """Schedule (1, 2) and no backoff: the third failure gives up."""
    policy = RetryPolicy(schedule=(1.0, 2.0), backoff=None)

    delays = [policy.next_delay(n, age=0.0) for n in (1, 2, 3, 4)]

    assert delays == [1.0, 2.0, None, None]


# ---- the circuit breaker ----------------------------------------------------------------------


def open_breaker(now: float = 100.0) -> CircuitBreaker:
    """A breaker (threshold 3, cooldown 30 s, capped at 100 s) that has just opened."""
    breaker = CircuitBreaker(threshold=3, cooldown=30.0, max_cooldown=100.0)
    for _ in range(3):
        breaker.record_failure(now)
    assert breaker.state is BreakerState.OPEN
    return breaker


def test_a_closed_breaker_lets_everything_through() -> None:
    """While the destination answers, the breaker never limits the sends."""
    breaker = CircuitBreaker(threshold=3)

    assert breaker.capacity(now=0.0, wanted=64) == 64
    assert breaker.seconds_until_probe(0.0) is None


def test_the_breaker_opens_after_threshold_consecutive_failures() -> None:
    """Two failures keep it closed; the third opens it."""
    breaker = CircuitBreaker(threshold=3, cooldown=30.0)
    breaker.record_failure(100.0)
    breaker.record_failure(100.0)
    still_closed = breaker.state

    breaker.record_failure(100.0)

    assert still_closed is BreakerState.CLOSED
    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_until_probe(110.0) == pytest.approx(20.0)


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    """Failures separated by a success never add up to the threshold."""
    breaker = CircuitBreaker(threshold=3)

    for _ in range(5):
        breaker.record_failure(1.0)
        breaker.record_failure(1.0)
        breaker.record_success()

    assert breaker.state is BreakerState.CLOSED


def test_an_open_breaker_sends_nothing_until_the_cooldown_passes() -> None:
    """For 30 seconds after opening, capacity is zero however much is waiting."""
    breaker = open_breaker(now=100.0)

    assert breaker.capacity(now=100.0, wanted=64) == 0
    assert breaker.capacity(now=129.9, wanted=64) == 0


def test_after_the_cooldown_exactly_one_probe_goes_through() -> None:
    """Half-open: one send may start; the rest wait for its verdict."""
    breaker = open_breaker(now=100.0)

    first = breaker.capacity(now=130.0, wanted=64)
    second = breaker.capacity(now=131.0, wanted=64)

    assert (first, second) == (1, 0)
    assert breaker.state is BreakerState.HALF_OPEN


def test_a_successful_probe_closes_the_breaker() -> None:
    """The destination is back: everything may flow again."""
    breaker = open_breaker(now=100.0)
    breaker.capacity(now=130.0, wanted=64)

    breaker.record_success()

    assert breaker.state is BreakerState.CLOSED
    assert breaker.capacity(now=130.0, wanted=64) == 64


def test_a_failed_probe_reopens_the_breaker_for_twice_as_long() -> None:
    """Cooldown 30 s, then 60 s after a failed probe."""
    breaker = open_breaker(now=100.0)
    breaker.capacity(now=130.0, wanted=1)

    breaker.record_failure(130.0)

    assert breaker.state is BreakerState.OPEN
    assert breaker.current_cooldown == 60.0
    assert breaker.capacity(now=189.0, wanted=1) == 0
    assert breaker.capacity(now=190.0, wanted=1) == 1


def test_the_doubled_cooldown_is_capped() -> None:
    """30, 60, then 100 s (max_cooldown), never 120."""
    breaker = open_breaker(now=0.0)
    now = 0.0
    cooldowns = []
    for _ in range(4):
        now += breaker.current_cooldown
        assert breaker.capacity(now=now, wanted=1) == 1
        breaker.record_failure(now)
        cooldowns.append(breaker.current_cooldown)

    assert cooldowns == [60.0, 100.0, 100.0, 100.0]


def test_a_breaker_closed_again_starts_over_with_the_base_cooldown() -> None:
    """After a recovery the next outage opens with 30 s, not the doubled cooldown."""
    breaker = open_breaker(now=0.0)
    breaker.capacity(now=30.0, wanted=1)
    breaker.record_failure(30.0)
    breaker.capacity(now=90.0, wanted=1)
    breaker.record_success()

    for _ in range(3):
        breaker.record_failure(200.0)

    assert breaker.state is BreakerState.OPEN
    assert breaker.current_cooldown == 30.0
