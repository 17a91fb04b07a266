"""Lane assignment: each broker lane is consumed by exactly one worker at a time, and the
lanes are shared out evenly among the live workers (like a Kafka consumer group).

All events of an order travel one lane, so with one consumer per lane they reach one worker
in commit order, where a per-(destination, order) chain sends them one after another. Two
workers never race for consecutive events of an order, which would cost claim retries (the
database claim rule would still keep them in order: correctness never depends on this).

Every `every` seconds a worker heartbeats, renews its lane leases, and moves toward its fair
share `ceil(lanes / live workers)`: above it, it stops consuming a lane, lets the handlers
of that lane finish, then releases it; below it, it claims free or expired lanes. A crashed
worker's lanes expire after `ttl` and are picked up by the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Protocol

from ordersync.clock import to_us, utcnow
from ordersync.service.singleton import cancel_and_wait

log = logging.getLogger(__name__)


class LaneStore(Protocol):
    async def ensure(self) -> None: ...
    async def heartbeat(self, owner: str, now_us: int, ttl_us: int) -> int: ...
    async def renew(self, owner: str, now_us: int, ttl_us: int) -> set[int]: ...
    async def claim(self, owner: str, want: int, now_us: int, ttl_us: int) -> set[int]: ...
    async def release(self, owner: str, lanes: set[int]) -> None: ...
    async def retire(self, owner: str) -> None: ...


class LaneConsumer(Protocol):
    async def start_lane(self, lane: int) -> None: ...
    async def stop_lane(self, lane: int, *, drain: bool) -> None: ...


class LaneAssigner:
    def __init__(
        self,
        store: LaneStore,
        consumer: LaneConsumer,
        *,
        lanes: int,
        owner: str,
        ttl: float = 4.0,
        every: float = 1.0,
    ) -> None:
        self.store = store
        self.consumer = consumer
        self.lanes = lanes
        self.owner = owner
        self.ttl_us = int(ttl * 1e6)
        self.every = every
        self.active: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.store.ensure()
        await self.rebalance()  # consume at once, not a second later
        self._task = asyncio.create_task(self._run(), name="lane-assigner")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        for lane in sorted(self.active):
            await self.consumer.stop_lane(lane, drain=True)
        with contextlib.suppress(Exception):  # the others take over at once, not after ttl
            await self.store.release(self.owner, self.active)
            await self.store.retire(self.owner)
        self.active = set()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.rebalance()
            except Exception:
                log.warning("lane rebalance failed; retrying", exc_info=True)

    async def rebalance(self) -> None:
        now = to_us(utcnow())
        live = max(1, await self.store.heartbeat(self.owner, now, self.ttl_us))
        held = await self.store.renew(self.owner, now, self.ttl_us)
        for lane in sorted(self.active - held):
            # Expired while we were stalled: someone else may own it now. Stop at once.
            log.warning("lane %d lease lost; stopping its consumer", lane)
            await self.consumer.stop_lane(lane, drain=False)
        self.active &= held
        for lane in sorted(held - self.active):
            await self.consumer.start_lane(lane)  # held but not consumed (after an error)
            self.active.add(lane)
        fair = math.ceil(self.lanes / live)
        if len(self.active) > fair:
            extra = set(sorted(self.active)[fair:])
            for lane in sorted(extra):
                await self.consumer.stop_lane(lane, drain=True)
            await self.store.release(self.owner, extra)
            self.active -= extra
            log.info("released lanes %s (%d live workers)", sorted(extra), live)
        elif len(self.active) < fair:
            got = await self.store.claim(self.owner, fair - len(self.active), now, self.ttl_us)
            for lane in sorted(got):
                await self.consumer.start_lane(lane)
            self.active |= got
            if got:
                log.info("consuming lanes %s (%d live workers)", sorted(self.active), live)
