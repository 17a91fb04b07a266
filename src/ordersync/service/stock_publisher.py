"""Pushes each channel's available-to-sell to the channel, without flooding it.

`notify(sku)` says a SKU's stock changed. For every channel the publisher (re)starts a
debounce timer for (channel, SKU): a burst of changes ends in one push, made with the value
read when the timer fires (the latest), not one per change. A burst that never pauses is
still published once `max_wait` has passed since its first change. When a timer fires:

* the ATS is read through `AtsSource` (the domain's `stock_publishing.publish` behind it);
* a value equal to the last one pushed to that channel is skipped;
* each channel has a token bucket (`rate` pushes a second, bursts of `burst`);
* a failed push is retried with exponential backoff up to `max_attempts`; if it still
  fails (or the ATS cannot be read), the key is re-queued `requeue_after` seconds later
  (the change is not lost);
* a push the platform refused for good (a `StockPushError` with `retryable` false: an
  unknown item, a bad signature, an expired session) is not retried at once (the answer
  would be the same, and some platforms charge per call) but re-queued like an exhausted
  one, so a fixed mapping or a renewed token is picked up without a new stock change.

Every attempt is reported to a `StockPushObserver` (the Prometheus counter
`ordersync_stock_pushes_total{channel,outcome}`): `pushed`, `failed` (will be retried) or
`rejected` (refused for good).

`publish_due()` does one round and is what tests drive with a fake clock and sleep;
`run()` loops it in production. Settings may differ per channel (`channel_settings`).
`settled(sku)` is true once no channel has a push of that SKU pending or in flight: the
durable "stock changed" marker (service/stock_sync.py) is deleted only then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ordersync.service.pull import TokenBucket

log = logging.getLogger(__name__)


class StockPush(Protocol):
    async def push(self, channel_id: str, sku: str, quantity: int) -> None: ...


class StockPushError(Exception):
    """A push that did not take. `retryable`: whether trying again soon can help (busy,
    down, rate-limited) or not (refused: unknown item, bad credentials)."""

    def __init__(self, detail: str, *, retryable: bool = True) -> None:
        super().__init__(detail)
        self.retryable = retryable


class StockPushObserver(Protocol):
    def push_attempted(self, channel_id: str, outcome: str) -> None:
        """One push attempt: `pushed`, `failed` (retryable) or `rejected` (permanent)."""
        ...


PUSHED, FAILED, REJECTED = "pushed", "failed", "rejected"


# sku -> {channel_id: ATS}; a channel missing from the answer is not published.
AtsSource = Callable[[str], Awaitable[Mapping[str, int]]]


@dataclass(frozen=True, slots=True)
class PublisherSettings:
    debounce: float = 2.0  # seconds of quiet before a (channel, sku) is pushed
    max_wait: float = 30.0  # a continuous burst is still pushed after this long
    rate: float = 2.0  # pushes per second per channel
    burst: int = 4
    max_attempts: int = 5
    backoff: float = 0.5  # first retry delay; doubles each attempt
    max_backoff: float = 30.0
    requeue_after: float = 60.0  # after max_attempts failures

    def __post_init__(self) -> None:
        if self.debounce < 0 or self.max_wait < self.debounce:
            raise ValueError("debounce must be >= 0 and max_wait >= debounce")
        if self.rate <= 0 or self.burst < 1 or self.max_attempts < 1:
            raise ValueError("rate > 0, burst >= 1 and max_attempts >= 1 are required")


@dataclass(slots=True)
class _Pending:
    first: float  # when the burst started
    due: float  # when to push


class StockPublisher:
    def __init__(
        self,
        channels: Sequence[str],
        source: AtsSource,
        port: StockPush,
        settings: PublisherSettings | None = None,
        *,
        channel_settings: Mapping[str, PublisherSettings] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observer: StockPushObserver | None = None,
    ) -> None:
        self.channels = tuple(channels)
        # Whoever built the port may hang the observer on it (`port.observer`), so the
        # metrics reach the publisher without its owner (StockSync) knowing about them.
        self._observer = observer or getattr(port, "observer", None)
        self.settings = settings or PublisherSettings()
        self._per_channel = {
            ch: (channel_settings or {}).get(ch, self.settings) for ch in self.channels
        }
        self._source = source
        self._port = port
        self._clock = clock
        self._sleep = sleep
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._last: dict[tuple[str, str], int] = {}
        self._busy: dict[str, int] = {}  # sku -> pushes (or ATS reads) in flight
        self._buckets = {
            ch: TokenBucket(s.rate, s.burst, clock=clock, sleep=sleep)
            for ch, s in self._per_channel.items()
        }
        self._wake = asyncio.Event()
        self.pushed = 0
        self.skipped_unchanged = 0
        self.failures = 0
        self.rejected = 0

    # ---- input ----------------------------------------------------------------------------

    def notify(self, sku: str) -> None:
        """The stock of `sku` changed: (re)start its debounce timer on every channel."""
        now = self._clock()
        for channel in self.channels:
            s = self._per_channel[channel]
            key = (channel, sku)
            pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = _Pending(now, now + s.debounce)
            else:
                pending.due = min(now + s.debounce, pending.first + s.max_wait)
        self._wake.set()

    def last_pushed(self, channel_id: str, sku: str) -> int | None:
        return self._last.get((channel_id, sku))

    def settled(self, sku: str) -> bool:
        """No push of `sku` is pending or in flight on any channel."""
        if self._busy.get(sku):
            return False
        return not any((ch, sku) in self._pending for ch in self.channels)

    def next_due(self) -> float | None:
        return min((p.due for p in self._pending.values()), default=None)

    # ---- output ---------------------------------------------------------------------------

    async def publish_due(self) -> int:
        """Push every (channel, sku) whose timer has fired; return how many were pushed."""
        now = self._clock()
        due = sorted(k for k, p in self._pending.items() if p.due <= now)
        if not due:
            return 0
        for key in due:
            del self._pending[key]
        for _, sku in due:
            self._busy[sku] = self._busy.get(sku, 0) + 1
        try:
            return await self._publish(due)
        finally:
            for _, sku in due:
                self._busy[sku] -= 1
                if not self._busy[sku]:
                    del self._busy[sku]

    async def _publish(self, due: list[tuple[str, str]]) -> int:
        values: dict[str, Mapping[str, int]] = {}
        unreadable: set[str] = set()
        for _, sku in due:
            if sku in values or sku in unreadable:
                continue
            try:
                values[sku] = await self._source(sku)
            except Exception:
                log.warning("reading the ATS of %s failed; retrying later", sku, exc_info=True)
                unreadable.add(sku)
        by_channel: dict[str, list[tuple[str, int]]] = {}
        for channel, sku in due:
            if sku in unreadable:
                self._requeue(channel, sku)
                continue
            qty = values[sku].get(channel)
            if qty is None:
                continue
            if self._last.get((channel, sku)) == qty:
                self.skipped_unchanged += 1
                continue
            by_channel.setdefault(channel, []).append((sku, qty))
        counts = await asyncio.gather(
            *(self._push_channel(ch, items) for ch, items in by_channel.items())
        )
        return sum(counts)

    async def _push_channel(self, channel: str, items: list[tuple[str, int]]) -> int:
        pushed = 0
        for sku, qty in items:
            if await self._push_with_retry(channel, sku, qty):
                self._last[(channel, sku)] = qty
                self.pushed += 1
                pushed += 1
            else:
                self._requeue(channel, sku)
        return pushed

    def _requeue(self, channel: str, sku: str) -> None:
        now = self._clock()
        due = now + self._per_channel[channel].requeue_after
        pending = self._pending.setdefault((channel, sku), _Pending(now, due))
        pending.due = min(pending.due, due)

    async def _push_with_retry(self, channel: str, sku: str, qty: int) -> bool:
        s = self._per_channel[channel]
        delay = s.backoff
        for attempt in range(1, s.max_attempts + 1):
            await self._buckets[channel].acquire()
            try:
                await self._port.push(channel, sku, qty)
            except Exception as e:
                self.failures += 1
                if isinstance(e, StockPushError) and not e.retryable:
                    self.rejected += 1
                    self._observe(channel, REJECTED)
                    log.error(
                        "stock push %s/%s=%d refused (not retried before %.0f s): %s",
                        channel,
                        sku,
                        qty,
                        s.requeue_after,
                        e,
                    )
                    return False
                self._observe(channel, FAILED)
                log.warning(
                    "stock push %s/%s=%d failed (attempt %d/%d)",
                    channel,
                    sku,
                    qty,
                    attempt,
                    s.max_attempts,
                    exc_info=True,
                )
                if attempt == s.max_attempts:
                    return False
                await self._sleep(delay)
                delay = min(delay * 2, s.max_backoff)
            else:
                self._observe(channel, PUSHED)
                return True
        return False  # pragma: no cover - the loop always returns

    def _observe(self, channel: str, outcome: str) -> None:
        if self._observer is None:
            return
        try:
            self._observer.push_attempted(channel, outcome)
        except Exception:  # metrics must never stop a push
            log.warning("stock push observer failed", exc_info=True)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish whatever falls due until `stop` is set (production loop, real time)."""
        while not stop.is_set():
            await self.publish_due()
            nxt = self.next_due()
            timeout = None if nxt is None else max(0.0, nxt - self._clock())
            self._wake.clear()
            waiters = {
                asyncio.ensure_future(self._wake.wait()),
                asyncio.ensure_future(stop.wait()),
            }
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
