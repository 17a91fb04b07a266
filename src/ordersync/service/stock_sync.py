"""From committed stock changes to every channel's ATS: the "stock-publish" singleton.

Every transaction that changes stock (a reservation, a release, a shipment, a feed) also
upserts the SKU's row in `stock_dirty` and bumps its `seq` (one upsert per SKU per
batch). `StockSync` polls those markers and notifies the `StockPublisher`, which debounces,
rate limits and pushes; a marker is deleted only once the publisher has settled the SKU on
every channel (pushed, found unchanged, or not listed there) *and* no newer change bumped
it since it was read. So:

* a crash or a lost lease between the change and the push loses nothing: the marker is
  still there for the next holder, which publishes again (an over-publication, harmless:
  the platforms' calls set absolute levels);
* a push that keeps failing stays requeued in the publisher and its marker stays put.

Staleness needs no change to happen: a location whose last feed grows older than a
channel's `stale_after` must drop to 0. A scan every few seconds notifies the SKUs whose
feeds crossed that age since the previous scan (the first scan after taking the lease
notifies every SKU with a stale row, since the last holder may have missed some).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from ordersync.clock import utcnow
from ordersync.domain.inventory import StockLevel
from ordersync.domain.stock_publishing import PublishingRule, StockPool, publish
from ordersync.service.singleton import cancel_and_wait, wait_event
from ordersync.service.stock_publisher import PublisherSettings, StockPublisher, StockPush

log = logging.getLogger(__name__)


class StockChangeStore(Protocol):
    async def levels(self, sku: str) -> list[tuple[StockLevel, datetime | None]]: ...
    async def dirty(self, limit: int = 1000) -> list[tuple[str, int]]: ...
    async def settle(self, markers: Sequence[tuple[str, int]]) -> None: ...
    async def fed_between(self, after: datetime | None, until: datetime) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class ChannelStock:
    """One channel's publishing: its pool (shared with the channels of the same pool,
    holding every one's rule), its SKUs, its push pacing."""

    channel_id: str
    pool: StockPool
    skus: frozenset[str]  # SKUs the channel lists (others are never pushed there)
    settings: PublisherSettings
    stale_after: timedelta | None  # None: feeds never go stale in this pool

    @property
    def rule(self) -> PublishingRule:
        return next(r for r in self.pool.rules if r.channel_id == self.channel_id)


class StockSync:
    def __init__(
        self,
        store: StockChangeStore,
        channels: Sequence[ChannelStock],
        port: StockPush,
        *,
        poll_interval: float = 0.5,
        scan_interval: float | None = None,
        clock: Callable[[], datetime] = utcnow,
        batch: int = 1000,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.channels = {c.channel_id: c for c in channels}
        self._port = port
        self.publisher = self._new_publisher()
        self._poll = poll_interval
        ages = [c.stale_after for c in channels if c.stale_after is not None]
        # Notice a feed going stale within a quarter of the shortest age (1..60 s).
        self._scan = scan_interval or (
            min(60.0, max(1.0, min(ages).total_seconds() / 4)) if ages else None
        )
        self._scanned: dict[timedelta, datetime] = {}  # age -> cutoff of the last scan
        self._clock = clock
        self._batch = batch
        self._seen: dict[str, int] = {}  # sku -> marker seq handed to the publisher
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._close = close  # the pushers' HTTP session (reopened on the next push)

    def _new_publisher(self) -> StockPublisher:
        return StockPublisher(
            list(self.channels),
            self.ats,
            self._port,
            channel_settings={c.channel_id: c.settings for c in self.channels.values()},
        )

    # ---- ATS ------------------------------------------------------------------------------

    async def ats(self, sku: str) -> Mapping[str, int]:
        """Each listing channel's ATS for `sku`, from the stock as committed now."""
        listing = [c for c in self.channels.values() if sku in c.skus]
        if not listing:
            return {}
        rows = await self.store.levels(sku)
        now = self._clock()
        levels = [lv for lv, _ in rows]
        out: dict[str, int] = {}
        by_pool: dict[str, dict[str, int]] = {}  # exclusive shares are decided per pool
        for c in listing:
            if c.pool.id not in by_pool:
                if c.stale_after is None:
                    fed = {lv.location_id: now for lv in levels}
                else:
                    fed = {lv.location_id: at for lv, at in rows if at is not None}
                publications = publish(c.pool, sku, levels, fed, now)
                by_pool[c.pool.id] = {ch: p.quantity for ch, p in publications.items()}
            out[c.channel_id] = by_pool[c.pool.id][c.channel_id]
        return out

    def _listed(self, sku: str) -> bool:
        return any(sku in c.skus for c in self.channels.values())

    # ---- one round ------------------------------------------------------------------------

    async def poll_once(self) -> int:
        """Hand new markers to the publisher and settle the published ones; returns how
        many SKUs were notified."""
        done = [(sku, seq) for sku, seq in self._seen.items() if self.publisher.settled(sku)]
        await self.store.settle(done)  # a newer seq survives and comes back below
        for sku, _ in done:
            del self._seen[sku]
        notified = 0
        unlisted = []
        for sku, seq in await self.store.dirty(self._batch):
            if self._seen.get(sku) == seq:
                continue
            if not self._listed(sku):
                unlisted.append((sku, seq))  # no channel sells it: nothing to say
                continue
            self._seen[sku] = seq
            self.publisher.notify(sku)
            notified += 1
        await self.store.settle(unlisted)
        return notified

    async def scan_stale(self) -> int:
        """Notify the SKUs whose feeds went stale for some channel since the last scan."""
        now = self._clock()
        skus: set[str] = set()
        for age in {c.stale_after for c in self.channels.values() if c.stale_after}:
            cutoff = now - age
            skus.update(await self.store.fed_between(self._scanned.get(age), cutoff))
            self._scanned[age] = cutoff
        listed = sorted(s for s in skus if self._listed(s))
        for sku in listed:
            self.publisher.notify(sku)
        return len(listed)

    async def step(self) -> int:
        """Poll, then push whatever is due (what tests drive)."""
        await self.poll_once()
        return await self.publisher.publish_due()

    # ---- the loop the singleton runs ----------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="stock-publish")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stop.set()
        await cancel_and_wait(self._task)
        self._task = None
        # A new holder starts from the markers; what this one half did is redone there.
        # Forget what was pushed too: another holder may have pushed since.
        self.publisher = self._new_publisher()
        self._seen.clear()
        self._scanned.clear()
        if self._close is not None:
            await self._close()

    async def _run(self) -> None:
        publisher = asyncio.create_task(self.publisher.run(self._stop), name="stock-push")
        loop = asyncio.get_running_loop()
        next_scan = loop.time()
        try:
            while not self._stop.is_set():
                try:
                    if self._scan is not None and loop.time() >= next_scan:
                        next_scan = loop.time() + self._scan
                        await self.scan_stale()
                    await self.poll_once()
                except Exception:  # the loop must survive a database restart
                    log.warning("stock publishing poll failed", exc_info=True)
                await wait_event(self._stop, self._poll)
        finally:
            await cancel_and_wait(publisher)
