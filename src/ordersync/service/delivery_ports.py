"""The ports the dispatcher needs: where deliveries are stored and how they are sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ordersync.domain.delivery import DeliveryState


@dataclass(frozen=True, slots=True)
class DueDelivery:
    seq: int
    destination_id: str
    order_id: str
    event_id: str
    event_type: str
    attempts: int
    first_attempt_us: int | None
    body: bytes


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    ok: bool
    status: int | None
    error: str | None
    duration_ms: float
    # The receiver refused the request itself (e.g. a platform's "no such order"): sending
    # it again cannot succeed, so the delivery is dead-lettered at once for an operator.
    permanent: bool = False


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    delivery: DueDelivery
    attempt: int
    started_us: int
    outcome: AttemptOutcome
    state: DeliveryState
    next_attempt_us: int


class DeliveryStore(Protocol):
    # True when fetch_due leases what it returns (PostgreSQL): rows this process already
    # holds are then never returned again, so a fetch asks only for the free slots.
    leased: bool

    async def fetch_due(
        self, destination_id: str, now_us: int, limit: int, fresh_before_us: int | None = None
    ) -> list[DueDelivery]:
        """Claim pending deliveries due now that head their (destination, order) lane, oldest
        first. First attempts created after `fresh_before_us` are left out (a broker
        consumer is about to take them)."""
        ...

    async def renew(self, seqs: list[int], now_us: int) -> None:
        """Extend this process's claims on deliveries still in flight."""
        ...

    async def record(self, records: list[AttemptRecord]) -> None:
        """Store attempts and the resulting delivery states, in one transaction."""
        ...


class Sender(Protocol):
    async def send(
        self, url: str, secret: str, event_id: str, body: bytes, timeout: float
    ) -> AttemptOutcome: ...
