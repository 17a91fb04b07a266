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
  (the change is not lost).

`publish_due()` does one round and is what tests drive with a fake clock and sleep;
`run()` loops it in production.
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
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.channels = tuple(channels)
        self.settings = settings or PublisherSettings()
        self._source = source
        self._port = port
        self._clock = clock
        self._sleep = sleep
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._last: dict[tuple[str, str], int] = {}
        self._buckets = {
            ch: TokenBucket(self.settings.rate, self.settings.burst, clock=clock, sleep=sleep)
            for ch in self.channels
        }
        self._wake = asyncio.Event()
        self.pushed = 0
        self.skipped_unchanged = 0
        self.failures = 0

    # ---- input ----------------------------------------------------------------------------

    def notify(self, sku: str) -> None:
        """The stock of `sku` changed: (re)start its debounce timer on every channel."""
        now = self._clock()
        s = self.settings
        for channel in self.channels:
            key = (channel, sku)
            pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = _Pending(now, now + s.debounce)
            else:
                pending.due = min(now + s.debounce, pending.first + s.max_wait)
        self._wake.set()

    def last_pushed(self, channel_id: str, sku: str) -> int | None:
        return self._last.get((channel_id, sku))

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
        due = now + self.settings.requeue_after
        pending = self._pending.setdefault((channel, sku), _Pending(now, due))
        pending.due = min(pending.due, due)

    async def _push_with_retry(self, channel: str, sku: str, qty: int) -> bool:
        s = self.settings
        delay = s.backoff
        for attempt in range(1, s.max_attempts + 1):
            await self._buckets[channel].acquire()
            try:
                await self._port.push(channel, sku, qty)
            except Exception:
                self.failures += 1
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
                return True
        return False  # pragma: no cover - the loop always returns

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
