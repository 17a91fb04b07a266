"""The pull engine: incremental, resumable pulls of a channel's orders by modified-time window.

How a late or moving order is never missed (ADR 5):

- A window ends `settle` seconds before now and is fixed once chosen, so no order can enter
  it while it is read except a *late write* (stored with an earlier modified time than the
  moment it became visible); each window starts `overlap` before the previous one ended, so
  a late write up to `overlap` old is read by the next window.
- An order modified while its window is being read leaves the window (its time moves past
  the end) and shifts the orders behind it one place forward. Reading pages from the last to
  the first means the shift only ever moves orders onto pages already read or still to read
  on their own, never past the reader; the moved order itself is read by a later window.
- The cursor (window and next page) is saved after every page, so a crash re-reads at most
  one page. Re-reads are harmless: each pulled state is ingested under the message id
  "<platform id>@<modified time>", which the inbox dedupes, and an older state never rolls
  an order back (its `channel_updated_at` is checked).

Requests wait for a token bucket; a platform's "slow down" (HTTP 429, Retry-After, a TOP
ban) pauses the bucket for as long as the platform asked, else backs off exponentially.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson

from ordersync.clock import utcnow
from ordersync.domain.commands import IngestChannelOrder
from ordersync.domain.errors import DomainError
from ordersync.domain.orders import OrderSnapshot

log = logging.getLogger(__name__)


# ---- what connectors and the HTTP adapter exchange with the engine --------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """Orders modified in [start, end], both tz-aware UTC."""

    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


def state_message_id(
    external_id: str, modified: datetime | None, snapshot: OrderSnapshot | None
) -> str:
    """The inbox key of one state of a platform order: platform id, the platform's modified
    time, and a fingerprint of what that state says. The same state pulled twice
    (overlapping windows), or pushed and pulled, is one inbox record; two different states
    stamped in the same second (platforms keep whole seconds: a WooCommerce order created
    and paid at once) are two, so the second is never dropped as a repeat."""
    stamp = modified.isoformat() if modified else "-"
    if snapshot is None:
        return f"{external_id}@{stamp}"
    digest = hashlib.blake2b(repr(snapshot).encode(), digest_size=8).hexdigest()
    return f"{external_id}@{stamp}#{digest}"


@dataclass(frozen=True, slots=True)
class PulledOrder:
    """One order as a pull returned it. `snapshot` None with `error` set: the platform sent
    something we cannot map; it is kept (raw) for an operator instead of stalling the pull."""

    external_id: str
    modified: datetime | None
    snapshot: OrderSnapshot | None
    raw: bytes
    error: str | None = None

    @property
    def message_id(self) -> str:
        return state_message_id(self.external_id, self.modified, self.snapshot)


@dataclass(frozen=True, slots=True)
class PullPage:
    orders: tuple[PulledOrder, ...]
    total_pages: int  # of the whole window at this page size, as the platform counts now
    total: int | None = None  # orders in the whole window, when the platform says
    # Cursor pagination (e.g. Shopify's Link header): the request for the next page, which
    # the engine follows forward instead of counting pages. Only for pages sorted by
    # modified time ascending: after each page a restart resumes the window from the last
    # modified time read (cursor links may expire, and the cursor table keeps no token).
    next_request: HttpRequest | None = None
    # Seconds to wait before the next request: the platform said its limit is nearly used.
    slow_down: float = 0.0


class PullError(Exception):
    """The platform refused a pull request for a reason waiting will not fix."""


class Throttled(Exception):
    """Try again later: the platform asked us to slow down (`retry_after` seconds when it
    said how long), or it or the network failed in a way worth retrying."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class PullSource(Protocol):
    """One channel's pull API (a connector bound to the channel's configuration)."""

    channel_id: str
    kind: str

    def request(self, window: Window, page: int, page_size: int) -> HttpRequest: ...

    def read(self, response: HttpResponse, page_size: int) -> PullPage: ...


Fetch = Callable[[HttpRequest], Awaitable[HttpResponse]]
Ingest = Callable[[IngestChannelOrder], Awaitable[Any]]


# ---- the cursor ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a channel's pull stands. `watermark`: every order modified before it has been
    read (up to late writes within the overlap). `window`/`page`: the window being read and
    the next page to read in it (pages go down to 1)."""

    watermark: datetime
    window: Window | None = None
    page: int = 0


class CursorStore(Protocol):
    async def load(self, channel_id: str, name: str) -> Cursor | None: ...

    async def save(self, channel_id: str, name: str, cursor: Cursor) -> None: ...


class MemoryCursorStore:
    """Cursors in a dict: for tests, and for pulls that need not survive a restart."""

    def __init__(self) -> None:
        self.cursors: dict[tuple[str, str], Cursor] = {}

    async def load(self, channel_id: str, name: str) -> Cursor | None:
        return self.cursors.get((channel_id, name))

    async def save(self, channel_id: str, name: str, cursor: Cursor) -> None:
        self.cursors[(channel_id, name)] = cursor


# ---- rate limiting ------------------------------------------------------------------------


class TokenBucket:
    """`rate` requests per second on average, bursts of up to `burst`; `pause` empties it
    until a platform-given time has passed."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._at = clock()
        self._paused_until = 0.0

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return now

    async def acquire(self) -> None:
        while True:
            now = self._refill()
            if now < self._paused_until:
                await self._sleep(self._paused_until - now)
                continue
            # Within rounding of a whole token: a clock that moves by exactly the sleep asked
            # for could otherwise leave 0.999... forever.
            if self._tokens >= 1 - 1e-9:
                self._tokens = max(0.0, self._tokens - 1)
                return
            await self._sleep((1 - self._tokens) / self.rate)

    def pause(self, seconds: float) -> None:
        now = self._refill()
        self._paused_until = max(self._paused_until, now + seconds)
        self._tokens = 0.0


# ---- the engine ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PullSettings:
    interval: float = 60.0
    overlap: float = 300.0
    page_size: int = 50
    max_window: float = 3600.0
    settle: float = 5.0
    lookback: float = 86400.0
    backoff_base: float = 1.0
    backoff_max: float = 300.0


@dataclass
class PullStats:
    windows: int = 0
    pages: int = 0
    orders: int = 0
    throttled: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


class ChannelPuller:
    """Pulls one channel until caught up (`catch_up`), or forever (`run`). `name` keeps
    separate cursors per purpose: "live" for the loop, "backfill" for `ordersync backfill`."""

    def __init__(
        self,
        source: PullSource,
        fetch: Fetch,
        cursors: CursorStore,
        ingest: Ingest,
        settings: PullSettings,
        *,
        bucket: TokenBucket | None = None,
        name: str = "live",
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self.fetch = fetch
        self.cursors = cursors
        self.ingest = ingest
        self.settings = settings
        self.bucket = bucket or TokenBucket(1000.0, 1000, sleep=sleep)
        self.name = name
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.stats = PullStats()

    async def start_at(self, since: datetime) -> None:
        """Start (or restart) this cursor at `since`, e.g. for a backfill."""
        await self.cursors.save(self.source.channel_id, self.name, Cursor(watermark=since))

    async def catch_up(self, on_page: Callable[[PullStats], None] | None = None) -> PullStats:
        """Read every window up to `settle` before now; resumes a saved cursor."""
        cid = self.source.channel_id
        cursor = await self.cursors.load(cid, self.name)
        if cursor is None:
            lookback = timedelta(seconds=self.settings.lookback)
            cursor = Cursor(watermark=self.clock() - lookback)
            await self.cursors.save(cid, self.name, cursor)
        counted: int | None = None  # the window's size when its read began (this process)
        while True:
            if cursor.window is None:
                window = self._next_window(cursor.watermark)
                if window is None:
                    return self.stats
                first = await self._page(window, 1)
                self.stats.windows += 1
                await self._ingest(first)
                if first.next_request is not None:
                    await self._follow(cursor.watermark, window, first, on_page)
                if first.total_pages <= 1 or first.next_request is not None:
                    cursor = Cursor(watermark=window.end)
                    await self.cursors.save(cid, self.name, cursor)
                    continue
                # Several pages: read them last to first (see the module docstring), page 1
                # again included, since orders may have shifted onto it meanwhile.
                cursor = Cursor(cursor.watermark, window, first.total_pages)
                counted = first.total
                await self.cursors.save(cid, self.name, cursor)
            current = cursor.window
            if current is None:  # pragma: no cover - set just above
                continue
            last: PullPage | None = None
            while cursor.page >= 1:
                last = await self._page(current, cursor.page)
                await self._ingest(last)
                if last.next_request is not None:
                    await self._follow(cursor.watermark, current, last, on_page)
                cursor = dataclasses.replace(cursor, page=cursor.page - 1)
                await self.cursors.save(cid, self.name, cursor)
                if on_page is not None:
                    on_page(self.stats)
            if last is not None and self._grew(counted, last):
                # A late write entered the window while it was read and may have pushed an
                # order onto a page already read: read the window again (the inbox dedupes).
                log.info("window of channel %s grew while read; reading it again", cid)
                cursor = Cursor(cursor.watermark, current, max(last.total_pages, 1))
                counted = last.total
                await self.cursors.save(cid, self.name, cursor)
                continue
            counted = None
            cursor = Cursor(watermark=current.end)
            await self.cursors.save(cid, self.name, cursor)

    async def _follow(
        self,
        watermark: datetime,
        window: Window,
        page: PullPage,
        on_page: Callable[[PullStats], None] | None,
    ) -> None:
        """Follow a cursor-paginated window forward from `page` (already ingested). After
        each page the window is saved as starting at the last modified time read, page 1:
        a restart re-reads from there (the inbox dedupes the orders at that very time)."""
        cid = self.source.channel_id
        while page.next_request is not None:
            read_to = max((o.modified for o in page.orders if o.modified is not None), default=None)
            if read_to is not None and read_to > window.start:
                window = Window(read_to, window.end)
                await self.cursors.save(cid, self.name, Cursor(watermark, window, 1))
            page = await self._page(window, 1, page.next_request)
            await self._ingest(page)
            if on_page is not None:
                on_page(self.stats)

    @staticmethod
    def _grew(counted: int | None, page_one: PullPage) -> bool:
        return counted is not None and page_one.total is not None and page_one.total > counted

    async def run(self) -> None:
        """Catch up, wait `interval`, repeat; errors are logged and retried next round."""
        while True:
            try:
                await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pulling channel %s failed; retrying", self.source.channel_id)
            await self.sleep(self.settings.interval)

    def _next_window(self, watermark: datetime) -> Window | None:
        s = self.settings
        now = self.clock() - timedelta(seconds=s.settle)
        start = watermark - timedelta(seconds=s.overlap)
        end = min(start + timedelta(seconds=s.max_window), now)
        # Caught up once less than `settle` (at least a second) is left to read; otherwise
        # a real clock would always have moved on a little and the loop would never rest.
        if end - watermark < timedelta(seconds=max(s.settle, 1.0)):
            return None
        return Window(start, end)

    async def _page(
        self, window: Window, page: int, request: HttpRequest | None = None
    ) -> PullPage:
        attempt = 0
        while True:
            await self.bucket.acquire()
            try:
                if request is None:
                    request = self.source.request(window, page, self.settings.page_size)
                response = await self.fetch(request)
                result = self.source.read(response, self.settings.page_size)
            except Throttled as e:
                self.stats.throttled += 1
                delay = e.retry_after
                if delay is None:
                    cap = min(self.settings.backoff_max, self.settings.backoff_base * 2**attempt)
                    delay = cap / 2 + self.rng.uniform(0, cap / 2)  # equal jitter
                attempt += 1
                log.info(
                    "channel %s throttled (%s); waiting %.1f s", self.source.channel_id, e, delay
                )
                self.bucket.pause(delay)
                continue
            self.stats.pages += 1
            if result.slow_down > 0:
                self.bucket.pause(result.slow_down)
            return result

    async def _ingest(self, page: PullPage) -> None:
        if not page.orders:
            return
        received = self.clock()
        commands = [self._command(o, received) for o in page.orders]
        # All at once: the message bus commits them together (group commit).
        results = await asyncio.gather(*(self.ingest(c) for c in commands), return_exceptions=True)
        for cmd, result in zip(commands, results, strict=True):
            if isinstance(result, DomainError):
                # Refused by the domain before it was recorded; the next window retries.
                log.warning("pulled %s refused: %s", cmd.message_id, result)
                self.stats.outcomes["refused"] += 1
            elif isinstance(result, BaseException):
                raise result  # the page is not done: it is read again
            else:
                self.stats.outcomes[str(getattr(result, "outcome", "done"))] += 1
        self.stats.orders += len(commands)

    def _command(self, order: PulledOrder, received: datetime) -> IngestChannelOrder:
        headers = {"pull": self.name}
        if order.error is not None:
            headers["error"] = order.error
        return IngestChannelOrder(
            channel_id=self.source.channel_id,
            kind=self.source.kind,
            message_id=order.message_id,
            topic="pull" if order.error is None else "pull:unmappable",
            snapshot=order.snapshot,
            received_at=received,
            body=order.raw,
            headers=orjson.dumps(headers).decode(),
        )
