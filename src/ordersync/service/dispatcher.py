"""The dispatcher: sends every pending delivery, in order per order, retrying with backoff.

One loop per destination, so a slow or dead destination never holds up the others. Each
loop keeps up to `max_in_flight` sends going; a delivery stays "claimed" in memory from
the moment it is fetched until its attempt has been *recorded*, so it is never sent twice
concurrently, and the next event of the same order becomes due only after that record is
committed. A crash loses nothing: what was not recorded is still pending and is sent again
(same webhook-id, so receivers apply it once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ordersync.clock import to_us, utcnow
from ordersync.domain.delivery import BreakerState, CircuitBreaker, DeliveryState, RetryPolicy
from ordersync.service.delivery_ports import (
    AttemptOutcome,
    AttemptRecord,
    DeliveryStore,
    DueDelivery,
    Sender,
)
from ordersync.service.singleton import wait_event

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5  # seconds; catches retries coming due and work from other processes


@dataclass(frozen=True, slots=True)
class Destination:
    id: str
    url: str
    secret: str
    policy: RetryPolicy
    timeout: float
    max_in_flight: int
    breaker_threshold: int = 20
    breaker_cooldown: float = 30.0
    breaker_max_cooldown: float = 600.0
    # This destination's own sender (a channel write-back speaks the platform's API);
    # None: the dispatcher's shared Standard Webhooks sender.
    sender: Sender | None = field(default=None, compare=False, repr=False)


class DeliveryObserver:
    """Hooks for metrics; the default does nothing."""

    def attempt(self, destination_id: str, outcome: AttemptOutcome, state: DeliveryState) -> None:
        pass

    def breaker(self, destination_id: str, state: str) -> None:
        pass


class ResultWriter:
    """Records attempt results in batches: one transaction for many attempts."""

    def __init__(self, store: DeliveryStore, max_batch: int = 1000) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[AttemptRecord, Callable[[], None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="delivery-results")

    def submit(self, record: AttemptRecord, done: Callable[[], None]) -> None:
        self._queue.put_nowait((record, done))

    async def drain(self) -> None:
        await self._queue.join()

    async def stop(self, timeout: float = 15.0) -> None:
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation of
            # this stop that arrives just as the drain finishes, and the caller runs on.
            async with asyncio.timeout(timeout):
                await self.drain()
        except TimeoutError:
            # Unrecorded attempts stay pending in the database and are sent again later
            # (same webhook-id): at-least-once, never lost.
            log.warning("stopping with %d unrecorded delivery attempts", self._queue.qsize())
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            delay = 0.05
            while True:
                try:
                    await self._store.record([r for r, _ in batch])
                    break
                except Exception:
                    # Keep the claims: these deliveries are still pending in the database
                    # and must not be sent again until their outcome is recorded.
                    log.exception("recording %d delivery attempts failed; retrying", len(batch))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            for _, done in batch:
                done()
                self._queue.task_done()


class DestinationWorker:
    def __init__(
        self,
        dest: Destination,
        store: DeliveryStore,
        sender: Sender,
        results: ResultWriter,
        observer: DeliveryObserver,
    ) -> None:
        self.dest = dest
        self._store = store
        self._sender = dest.sender or sender
        self._results = results
        self._observer = observer
        self.breaker = CircuitBreaker(
            dest.breaker_threshold, dest.breaker_cooldown, dest.breaker_max_cooldown
        )
        self.claimed: set[int] = set()
        # Deliveries released while a fetch was running: the fetch may have read them as
        # still pending just before their outcome was committed, so they must be skipped.
        self._released_during_fetch: set[int] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._sends: set[asyncio.Task[None]] = set()
        self._done: dict[int, asyncio.Future[None]] = {}
        # Broker mode: first attempts younger than this belong to the bus consumers.
        self.fresh_grace_us = 0
        # Bus consumers may fill all but a quarter of max_in_flight: the rest is kept for
        # the sweeper, which takes retries and a killed worker's expired leases, so a burst
        # of redelivered messages cannot starve it (that stretched a takeover to ~10 s).
        reserve = max(1, dest.max_in_flight // 4)
        self._consumer_slots = asyncio.Semaphore(max(1, dest.max_in_flight - reserve))
        self._via_consumer: set[int] = set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._fill()
            except Exception:
                log.exception("dispatcher %s: fetching due deliveries failed", self.dest.id)
            timeout = POLL_INTERVAL
            probe_in = self.breaker.seconds_until_probe(time.monotonic())
            if probe_in is not None:
                timeout = min(timeout, probe_in + 0.01)
            await wait_event(self._wake, timeout)

    async def stop(self) -> None:
        """Stop taking work; let in-flight sends finish and be recorded."""
        self._stopping = True
        self._wake.set()
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)

    async def _fill(self) -> None:
        free = self.dest.max_in_flight - len(self.claimed)
        # Refill in chunks, not one slot at a time: each fetch is a query.
        if free <= 0 or (self.claimed and free < max(1, self.dest.max_in_flight // 4)):
            return
        free = self.breaker.capacity(time.monotonic(), free)
        if free <= 0:
            return
        released: set[int] = set()
        self._released_during_fetch = released
        try:
            now_us = to_us(utcnow())
            rows = await self._store.fetch_due(
                self.dest.id,
                now_us,
                # Unleased (SQLite): rows claimed in memory come back and are skipped below.
                # Leased: each returned row is a claim, so ask for no more than we start.
                free if self._store.leased else free + len(self.claimed),
                now_us - self.fresh_grace_us if self.fresh_grace_us else None,
            )
        except BaseException:
            if self.breaker.probe_in_flight and not self.claimed:
                self.breaker.probe_in_flight = False  # the probe never went out
            raise
        finally:
            self._released_during_fetch = None
        started = 0
        for d in rows:
            if started >= free or self._stopping:
                break
            if d.seq in self.claimed or d.seq in released:
                continue
            self.claimed.add(d.seq)
            task = asyncio.create_task(self._attempt(d))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
            started += 1
        if started == 0 and free == 1 and self.breaker.probe_in_flight:
            self.breaker.probe_in_flight = False  # nothing to probe with yet

    def accepts_now(self) -> bool:
        """May a bus consumer hand over work now? Only while the breaker is closed. An open
        or half-open breaker's probe is the sweeper's to send: asking the breaker for
        capacity here would take the probe slot, and a consumer that then cannot claim its
        delivery would hold that slot forever, leaving the destination stalled."""
        return not self._stopping and self.breaker.state is BreakerState.CLOSED

    async def reserve_slot(self) -> None:
        """A bus consumer waits for a send slot before it claims (so a claim never waits
        unrenewed); it hands the slot to `deliver`, or gives it back with `release_slot`."""
        await self._consumer_slots.acquire()

    def release_slot(self) -> None:
        self._consumer_slots.release()

    async def deliver(self, d: DueDelivery) -> None:
        """Send one delivery claimed elsewhere (a bus consumer), in the slot it reserved;
        return once its outcome is recorded, so the consumer can acknowledge the message."""
        if d.seq in self.claimed:
            self.release_slot()
            return
        self.claimed.add(d.seq)
        self._via_consumer.add(d.seq)
        done = asyncio.get_running_loop().create_future()
        self._done[d.seq] = done
        task = asyncio.create_task(self._attempt(d))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)
        await asyncio.shield(done)

    async def _attempt(self, d: DueDelivery) -> None:
        started = utcnow()
        try:
            outcome = await self._sender.send(
                self.dest.url, self.dest.secret, d.event_id, d.body, self.dest.timeout
            )
        except Exception as e:  # a bug in a sender must not lose the claim
            log.exception("sender failed")
            outcome = AttemptOutcome(False, None, f"internal error: {type(e).__name__}", 0.0)
        attempt = d.attempts + 1
        started_us = to_us(started)
        now = time.monotonic()
        if outcome.ok:
            state, next_us = DeliveryState.SUCCEEDED, started_us
            self.breaker.record_success()
        elif outcome.permanent:
            # The receiver is up and answered; it refused this request, which no retry
            # changes. Dead at once, replayable once the cause is fixed.
            state, next_us = DeliveryState.DEAD, started_us
            self.breaker.record_success()
        else:
            self.breaker.record_failure(now)
            first = d.first_attempt_us if d.first_attempt_us is not None else started_us
            delay = self.dest.policy.next_delay(attempt, (started_us - first) / 1e6)
            if delay is None:
                state, next_us = DeliveryState.DEAD, started_us
            else:
                state, next_us = DeliveryState.PENDING, started_us + int(delay * 1e6)
                asyncio.get_running_loop().call_later(delay, self._wake.set)
        self._observer.attempt(self.dest.id, outcome, state)
        self._observer.breaker(self.dest.id, self.breaker.state.value)
        record = AttemptRecord(d, attempt, started_us, outcome, state, next_us)
        self._results.submit(record, lambda: self._release(d.seq))

    def _release(self, seq: int) -> None:
        self.claimed.discard(seq)
        if seq in self._via_consumer:
            self._via_consumer.discard(seq)
            self.release_slot()
        if (done := self._done.pop(seq, None)) is not None and not done.done():
            done.set_result(None)
        if self._released_during_fetch is not None:
            self._released_during_fetch.add(seq)
        self._wake.set()


class Dispatcher:
    def __init__(
        self,
        destinations: list[Destination],
        store: DeliveryStore,
        sender: Sender,
        observer: DeliveryObserver | None = None,
    ) -> None:
        self.results = ResultWriter(store)
        obs = observer or DeliveryObserver()
        self.workers = {
            d.id: DestinationWorker(d, store, sender, self.results, obs) for d in destinations
        }
        self._store = store
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, *, fresh_grace: float = 0.0, lease_renew_every: float | None = None) -> None:
        """`fresh_grace`: seconds a first attempt is left to the broker's consumers.
        `lease_renew_every`: renew the leases of in-flight deliveries this often."""
        self.results.start()
        for w in self.workers.values():
            w.fresh_grace_us = int(fresh_grace * 1e6)
        self._tasks = [
            asyncio.create_task(w.run(), name=f"dispatch-{w.dest.id}")
            for w in self.workers.values()
        ]
        if lease_renew_every:
            self._tasks.append(
                asyncio.create_task(self._renew_leases(lease_renew_every), name="lease-renewal")
            )

    async def _renew_leases(self, every: float) -> None:
        # A send may take longer than a lease (slow destination, long timeout): keep
        # claiming what is still in flight, so no other worker sends it meanwhile.
        while True:
            await asyncio.sleep(every)
            seqs = [s for w in self.workers.values() for s in w.claimed]
            try:
                await self._store.renew(seqs, to_us(utcnow()))
            except Exception:
                log.warning("renewing %d delivery leases failed", len(seqs), exc_info=True)

    def wake(self, destination_ids: set[str] | None = None) -> None:
        for dest_id, w in self.workers.items():
            if destination_ids is None or dest_id in destination_ids:
                w.wake()

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers.values()))
        loops = [t for t in self._tasks if t.get_name() != "lease-renewal"]
        await asyncio.gather(*loops, return_exceptions=True)
        await self.results.stop()
        # Only now: leases must outlive the drain, or another worker would resend.
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
