"""A harness for testing pulls end to end: a real hub (database, message bus, cursors) and
real HTTP against a platform simulator, on a clock the test moves. Connector authors can
use it for their own plugin's tests.

    async with pull_rigs("sqlite:///hub.db", start=T0) as rig_for:
        rig = await rig_for(my_channel_config)
        await rig.puller("my-shop").start_at(T0 - timedelta(minutes=5))
        assert len(await rig.rows("my-shop")) == 7
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, NamedTuple

from sqlalchemy import text

from ordersync.adapters.channels.pulling import BoundSource, HttpFetch
from ordersync.adapters.channels.registry import connector_for
from ordersync.adapters.db.pull_cursors import SqlCursorStore
from ordersync.bootstrap import Hub, build_hub
from ordersync.config import ChannelConfig, settings_from_mapping
from ordersync.service.pull import (
    ChannelPuller,
    Fetch,
    HttpRequest,
    HttpResponse,
    PullSettings,
    TokenBucket,
)


class ManualClock:
    """The time the simulated platform and the puller agree on; tests move it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Crash(Exception):
    """The process died here."""


class CrashingFetch:
    """Fetches for real, but the process "dies" after `pages` successful requests
    (None: never)."""

    def __init__(self, fetch: Fetch, pages: int | None) -> None:
        self.fetch = fetch
        self.left = pages

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.left is not None:
            if self.left == 0:
                raise Crash
            self.left -= 1
        return await self.fetch(request)


class StoredOrder(NamedTuple):
    status: str
    payment_status: str
    channel_updated_us: int | None
    doc: dict[str, Any]


async def _no_wait(_seconds: float) -> None:
    await asyncio.sleep(0)


@dataclass
class PullRig:
    """A hub with the pull machinery around it: real HTTP, real database cursors."""

    hub: Hub
    fetch: HttpFetch
    clock: ManualClock
    page_size: ClassVar[int] = 3  # small pages, so a handful of orders spans several

    def channel(self, channel_id: str) -> ChannelConfig:
        found = self.hub.settings.channel(channel_id)
        assert found is not None, f"no channel {channel_id!r} in the rig's settings"
        return found

    def puller(
        self,
        channel_id: str,
        *,
        page_size: int | None = None,
        fetch: Fetch | None = None,
        crash_after: int | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        bucket: TokenBucket | None = None,
    ) -> ChannelPuller:
        """A puller with quick windows (60 s overlap, 2 s settle) that never really waits."""
        channel = self.channel(channel_id)
        return ChannelPuller(
            BoundSource(connector_for(channel.kind), channel),
            CrashingFetch(fetch or self.fetch, crash_after),
            SqlCursorStore(self.hub.db),
            self.hub.handle,
            PullSettings(
                overlap=60,
                page_size=page_size or self.page_size,
                max_window=600,
                settle=2,
                lookback=3600,
            ),
            bucket=bucket,
            clock=self.clock,
            sleep=sleep or _no_wait,
        )

    async def rows(self, channel_id: str) -> dict[str, StoredOrder]:
        """The channel's orders by external id; fails if one is stored twice."""
        async with self.hub.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT external_id, status, payment_status, channel_updated_us, doc"
                    " FROM orders WHERE channel_id = :c"
                ),
                {"c": channel_id},
            )
            found: dict[str, StoredOrder] = {}
            for ext, status, payment, updated, doc in rows:
                assert ext not in found, f"order {ext} stored twice"
                found[ext] = StoredOrder(status, payment, updated, json.loads(doc))
            return found

    async def inbox(self, channel_id: str) -> list[tuple[str, str]]:
        """(message id, outcome) of every inbound message of the channel."""
        async with self.hub.db.read() as conn:
            rows = await conn.execute(
                text("SELECT message_id, outcome FROM inbox WHERE source = :c ORDER BY message_id"),
                {"c": channel_id},
            )
            return [(m, o) for m, o in rows]


RigFactory = Callable[..., Awaitable[PullRig]]


@contextlib.asynccontextmanager
async def pull_rigs(
    database_url: str, *, start: datetime, rig_class: type[PullRig] = PullRig
) -> AsyncIterator[RigFactory]:
    """`rig_for(*channel_configs)` builds a started hub (no dispatch, no pull loops of its
    own) on `database_url`, as a `rig_class`; every rig is stopped on exit."""
    made: list[PullRig] = []

    async def make(*channels: dict[str, Any]) -> PullRig:
        settings = settings_from_mapping(
            {"database_url": database_url, "channels": list(channels)}, env={}
        )
        hub = build_hub(settings)
        await hub.start(dispatch=False, pull=False)
        rig = rig_class(hub, HttpFetch(timeout=10), ManualClock(start))
        made.append(rig)
        return rig

    try:
        yield make
    finally:
        for rig in made:
            await rig.fetch.close()
            await rig.hub.stop()
