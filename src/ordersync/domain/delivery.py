"""Delivery rules: when to retry, when to give up, when to stop calling a failing destination."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum


class DeliveryState(StrEnum):
    PENDING = "pending"  # waiting for its (next) attempt
    SUCCEEDED = "succeeded"
    DEAD = "dead"  # retries exhausted: dead-lettered until an operator replays it


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 30.0
    multiplier: float = 2.0
    max_delay: float = 3600.0
    max_age: float = 86400.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Quick retries on a fixed schedule, then exponential backoff with jitter, then give up."""

    schedule: tuple[float, ...] = (5.0, 5.0, 5.0)
    backoff: Backoff | None = field(default_factory=Backoff)

    def next_delay(
        self, attempts: int, age: float, rng: random.Random | None = None
    ) -> float | None:
        """Seconds until the next attempt after `attempts` failed ones, or None to give up.

        `age` is the time since the first attempt of this retry cycle.
        """
        if attempts <= len(self.schedule):
            return self.schedule[attempts - 1]
        if self.backoff is None:
            return None
        b = self.backoff
        step = attempts - len(self.schedule) - 1
        ceiling = min(b.max_delay, b.base * b.multiplier**step)
        # "Equal jitter": never retry sooner than half the step, spread the rest evenly.
        delay = ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
        if age + delay > b.max_age:
            return None
        return delay


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """Stops sending to a destination after `threshold` consecutive failures.

    While open, nothing is sent (and no attempt is spent); after `cooldown` one probe goes
    through; its success closes the breaker, its failure re-opens it for twice as long.
    """

    threshold: int = 20
    cooldown: float = 30.0
    max_cooldown: float = 600.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    current_cooldown: float = 0.0
    probe_in_flight: bool = False

    def capacity(self, now: float, wanted: int) -> int:
        """How many sends may start now."""
        if self.state is BreakerState.CLOSED:
            return wanted
        if self.state is BreakerState.OPEN and now >= self.opened_at + self.current_cooldown:
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN and not self.probe_in_flight and wanted > 0:
            self.probe_in_flight = True
            return 1
        return 0

    def seconds_until_probe(self, now: float) -> float | None:
        if self.state is not BreakerState.OPEN:
            return None
        return max(0.0, self.opened_at + self.current_cooldown - now)

    def record_success(self) -> None:
        self.failures = 0
        self.probe_in_flight = False
        if self.state is not BreakerState.CLOSED:
            self.state = BreakerState.CLOSED
            self.current_cooldown = 0.0

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self.probe_in_flight = False
            self._open(now, min(self.max_cooldown, self.current_cooldown * 2))
        elif self.state is BreakerState.CLOSED and self.failures >= self.threshold:
            self._open(now, self.cooldown)

    def _open(self, now: float, cooldown: float) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.current_cooldown = cooldown
