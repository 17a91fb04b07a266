"""Tracking by polling, for carriers that do not push (a carrier's `poll:` block).

Each round, per polling carrier: take up to `batch` active parcels still tracked
(`poll_state` NULL) whose last poll is at least `interval` old, never-polled and
oldest-polled first; retire those booked longer than `max_age` ago (`expired`: polled no
more; a `shipment.tracking_expired` event and alert tell the operator first); query the
rest in the connector's batch size (one parcel per Kdniao or Kuaidi100 instant query,
many per generic tracker query), each query taking a token from the carrier's bucket
(`rate` per second, bursts of `burst`). Every answer goes through the callback path
(`ShipmentService.apply_tracking`): the carrier inbox dedupes it (its key is a hash of
what the carrier said, so an unchanged answer is a no-op), events merge by carrier time,
the order moves on. Queried parcels are stamped `polled_at`, answered or not (a carrier
that is down does not starve the others); parcels whose status became final are
retired (`final`).

The loop runs in one process at a time: the embedded process, or the worker holding the
"tracking-poll" lease (service/singleton.py), so two rounds never overlap.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from ordersync.adapters.carriers.base import CarrierError, PollingConnector, Waybill
from ordersync.clock import utcnow
from ordersync.domain.shipments import TrackingUpdate
from ordersync.service.carrier_booking import CarrierCallObserver
from ordersync.service.pull import TokenBucket
from ordersync.service.singleton import cancel_and_wait, cancelling

if TYPE_CHECKING:
    from ordersync.config import CarrierConfig
    from ordersync.service.shipments import ShipmentService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PollPolicy:
    interval: timedelta
    batch: int
    rate: float
    burst: int
    max_age: timedelta


@dataclass(frozen=True, slots=True)
class Tracked:
    """A parcel the poller may ask about."""

    shipment_id: str
    order_id: str
    tracking_number: str
    carrier_code: str
    carrier_ref: str
    booked_at: datetime
    polled_at: datetime | None


class PollStore(Protocol):
    async def due_for_poll(
        self, carrier_id: str, polled_before: datetime, limit: int
    ) -> list[Tracked]:
        """Active, still-tracked parcels not polled since `polled_before`, never-polled and
        oldest-polled first."""
        ...

    async def mark_polled(self, shipment_ids: Sequence[str], now: datetime) -> None: ...

    async def retire(self, shipment_ids: Sequence[str], state: str, now: datetime) -> None: ...

    async def retire_final(self, shipment_ids: Sequence[str], now: datetime) -> int:
        """Retire those whose status is now terminal (or that were cancelled)."""
        ...


@dataclass
class RoundReport:
    carrier_id: str
    queried: int = 0  # parcels asked about
    queries: int = 0  # requests sent
    applied: int = 0  # answers that changed a shipment
    unchanged: int = 0  # answers seen before, or adding nothing
    failed: int = 0  # parcels whose query failed, or whose answer failed to apply
    expired: int = 0
    final: int = 0


def poll_source(update: TrackingUpdate) -> str:
    """The inbox key of a polled answer: a hash of what it says, so the same answer twice
    is recorded once and a changed one is a new record."""
    h = hashlib.sha256()
    h.update(f"{update.tracking_number}|{update.raw_state}|{update.carrier_code}".encode())
    for e in sorted(update.events, key=lambda e: (e.carrier_time, e.raw_code, e.raw_text)):
        h.update(f"|{e.carrier_time.isoformat()}|{e.raw_code}|{e.raw_text}".encode())
    for c in update.corrections:
        h.update(f"|{c.field}:{c.old}>{c.new}".encode())
    return f"poll:{h.hexdigest()[:32]}"


@dataclass
class TrackingPoller:
    service: ShipmentService
    store: PollStore
    policies: Mapping[str, PollPolicy]  # carrier id -> policy, polling carriers only
    clock: Callable[[], datetime] = utcnow
    # The token buckets' own time and sleep (monotonic seconds), replaceable in tests.
    monotonic: Callable[[], float] | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    tick: float = 5.0  # seconds between rounds when nothing is due
    observer: CarrierCallObserver | None = None
    _buckets: dict[str, TokenBucket] = field(default_factory=dict, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for carrier_id, p in self.policies.items():
            kw = {} if self.monotonic is None else {"clock": self.monotonic}
            self._buckets[carrier_id] = TokenBucket(p.rate, p.burst, sleep=self.sleep, **kw)

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None and self.policies:
            self._task = asyncio.create_task(self._run(), name="tracking-poll")

    async def stop(self) -> None:
        if self._task is not None:  # cleared once ended: a cancelled stop is finished by the next
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        while True:
            busy = False
            for carrier_id in self.policies:
                try:
                    report = await self.poll_carrier(carrier_id)
                except Exception as e:  # the poller must survive a database restart
                    if cancelling():  # ... but not its stop (see singleton.cancelling)
                        raise asyncio.CancelledError from e
                    log.warning("tracking poll of %s failed", carrier_id, exc_info=True)
                    continue
                busy = busy or report.queried + report.expired >= self.policies[carrier_id].batch
            if not busy:
                await asyncio.sleep(self.tick)

    # ---- one round --------------------------------------------------------------------

    async def poll_once(self) -> list[RoundReport]:
        return [await self.poll_carrier(c) for c in self.policies]

    async def poll_carrier(self, carrier_id: str) -> RoundReport:
        policy = self.policies[carrier_id]
        carrier = self.service.carriers[carrier_id]
        connector = carrier.connector
        report = RoundReport(carrier_id)
        if not isinstance(connector, PollingConnector):
            log.warning("carrier %s (%s) cannot be polled", carrier_id, connector.kind)
            return report
        now = self.clock()
        due = await self.store.due_for_poll(carrier_id, now - policy.interval, policy.batch)
        old = [t.shipment_id for t in due if now - t.booked_at > policy.max_age]
        if old and await self._expire([t for t in due if t.shipment_id in set(old)], policy, now):
            report.expired = len(old)
        live = [t for t in due if t.shipment_id not in set(old)]
        size = max(1, connector.poll_batch)
        for start in range(0, len(live), size):
            chunk = live[start : start + size]
            waybills = [
                Waybill(t.order_id, t.tracking_number, t.carrier_code, t.carrier_ref) for t in chunk
            ]
            await self._buckets[carrier_id].acquire()
            report.queries += 1
            report.queried += len(chunk)
            try:
                response = await self.service.send(
                    connector.build_poll_request(carrier.account, waybills)
                )
                updates = connector.parse_poll_response(
                    carrier.account, waybills, response, carrier.mapping
                )
            except (CarrierError, OSError, TimeoutError) as e:
                log.info("polling %d parcel(s) of %s failed: %s", len(chunk), carrier_id, e)
                if self.observer is not None:
                    self.observer.called(carrier_id, "poll", "error")
                report.failed += len(chunk)
                await self.store.mark_polled([t.shipment_id for t in chunk], self.clock())
                continue
            if self.observer is not None:
                self.observer.called(carrier_id, "poll", "ok")
            for update in updates:
                outcome = await self.service.apply_tracking(
                    carrier_id, update, response.body, poll_source(update)
                )
                if outcome == "applied":
                    report.applied += 1
                elif outcome == "failed":  # recorded; the sweep retries it (or parks it)
                    report.failed += 1
                else:
                    report.unchanged += 1
            ids = [t.shipment_id for t in chunk]
            await self.store.mark_polled(ids, self.clock())
            report.final += await self.store.retire_final(ids, self.clock())
        return report

    async def _expire(self, old: Sequence[Tracked], policy: PollPolicy, now: datetime) -> bool:
        """Tell (event + alert, see ShipmentService.tracking_expired), then retire. If the
        telling fails the parcels are not retired but come back after the interval (not
        first in every round, starving the live ones)."""
        ids = [t.shipment_id for t in old]
        try:
            await self.service.tracking_expired(
                [(t.shipment_id, t.order_id) for t in old], policy.max_age, now
            )
        except Exception as e:
            if cancelling():
                raise asyncio.CancelledError from e
            log.warning(
                "telling %d expired parcel(s) failed; retried later", len(ids), exc_info=True
            )
            await self.store.mark_polled(ids, now)
            return False
        await self.store.retire(ids, "expired", now)
        return True


def policies_from_config(carriers: Sequence[CarrierConfig]) -> dict[str, PollPolicy]:
    """The `poll:` blocks of the configured carriers."""
    out: dict[str, PollPolicy] = {}
    for c in carriers:
        poll = c.poll
        if poll is None:
            continue
        out[c.id] = PollPolicy(
            interval=timedelta(seconds=poll.interval),
            batch=poll.batch,
            rate=poll.rate,
            burst=poll.burst,
            max_age=timedelta(seconds=poll.max_age),
        )
    return out
