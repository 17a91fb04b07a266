"""In-memory stand-ins for the broker and the relay's tables, for fast unit tests.

`FakeBus` keeps one FIFO per lane like the RabbitMQ lanes, redelivers a message whose
handler raised, and can refuse publishes; `FakeRelayStore` holds events and the relay lease
with the same epoch and fencing rules as the SQL store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ordersync.service.bus import EventMessage, Handler, lane_of
from ordersync.service.singleton import cancel_and_wait


class FakeBusError(Exception):
    pass


class FakeBus:
    def __init__(self, lanes: int = 4) -> None:
        self.lanes = lanes
        self.published: list[EventMessage] = []
        self.fail_publishes = 0
        self.redeliveries = 0
        self._queue: asyncio.Queue[EventMessage] = asyncio.Queue()
        self._consumer: asyncio.Task[None] | None = None

    async def publish(self, messages: list[EventMessage]) -> None:
        if self.fail_publishes > 0:
            self.fail_publishes -= 1
            raise FakeBusError("publish refused (injected)")
        for m in messages:
            lane_of(m.order_id, self.lanes)  # the same routing as RabbitMQ, for coverage
            self.published.append(m)
            self._queue.put_nowait(m)

    async def start_lane(self, lane: int) -> None:
        """The fake has one queue for all lanes; lane assignment is not modelled."""

    async def stop_lane(self, lane: int, *, drain: bool) -> None:
        """See `start_lane`."""

    async def subscribe(self, handler: Handler, lanes: list[int] | None = None) -> None:
        async def consume() -> None:
            while True:
                m = await self._queue.get()
                try:
                    await handler(m)
                except Exception:
                    self.redeliveries += 1
                    self._queue.put_nowait(m)
                finally:
                    self._queue.task_done()

        self._consumer = asyncio.create_task(consume())

    async def drained(self) -> None:
        await self._queue.join()

    async def unsubscribe(self) -> None:
        if self._consumer is not None:
            await cancel_and_wait(self._consumer)


@dataclass
class FakeEvent:
    message: EventMessage
    published_us: int | None = None


class FakeRelayStore:
    def __init__(self) -> None:
        self.events: list[FakeEvent] = []
        self.owner: str | None = None
        self.epoch = 0
        self.until_us = 0
        self.fail_acquires = 0

    def add(self, order_id: str, destinations: tuple[str, ...] = ("erp",)) -> EventMessage:
        seq = len(self.events) + 1
        m = EventMessage(
            seq,
            f"evt_{seq}",
            order_id,
            0,
            tuple((seq * 10 + i, d) for i, d in enumerate(destinations)),
        )
        self.events.append(FakeEvent(m))
        return m

    async def acquire(self, owner: str, now_us: int, ttl_us: int) -> int | None:
        if self.fail_acquires > 0:
            self.fail_acquires -= 1
            raise FakeBusError("database away (injected)")
        if self.owner == owner and self.until_us >= now_us:
            self.until_us = now_us + ttl_us
            return self.epoch
        if self.owner is None or self.owner == owner or self.until_us < now_us:
            self.owner, self.epoch, self.until_us = owner, self.epoch + 1, now_us + ttl_us
            return self.epoch
        return None

    async def release(self, owner: str) -> None:
        if self.owner == owner:
            self.until_us = 0

    async def unpublished(self, limit: int) -> list[EventMessage]:
        return [e.message for e in self.events if e.published_us is None][:limit]

    async def mark_published(self, seqs: list[int], owner: str, epoch: int, now_us: int) -> bool:
        if (self.owner, self.epoch) != (owner, epoch):
            return False
        for e in self.events:
            if e.message.event_seq in seqs:
                e.published_us = now_us
        return True

    async def listen(self, wake: Callable[[], None], lost: Callable[[], None]) -> Callable[[], Any]:
        async def close() -> None:
            pass

        return close


class FakeLeaseStore:
    """One named lease in memory with epochs, shared by several `SingletonTask`s; tests can
    make acquires fail and hand the lease to someone else (`steal`)."""

    def __init__(self) -> None:
        self.owner: str | None = None
        self.epoch = 0
        self.until_us = 0
        self.fail_acquires = 0
        self.acquires = 0

    async def acquire(self, owner: str, now_us: int, ttl_us: int) -> int | None:
        self.acquires += 1
        if self.fail_acquires > 0:
            self.fail_acquires -= 1
            raise FakeBusError("database away (injected)")
        if self.owner == owner and self.until_us >= now_us:
            self.until_us = now_us + ttl_us
            return self.epoch
        if self.owner is None or self.owner == owner or self.until_us < now_us:
            self.owner, self.epoch, self.until_us = owner, self.epoch + 1, now_us + ttl_us
            return self.epoch
        return None

    async def release(self, owner: str) -> None:
        if self.owner == owner:
            self.until_us = 0

    def steal(self, owner: str, until_us: int) -> None:
        """Someone else takes the lease (as after our lease lapsed)."""
        self.owner, self.epoch, self.until_us = owner, self.epoch + 1, until_us


class FakeLaneStore:
    """Lane leases and heartbeats in memory, shared by several `LaneAssigner`s."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        self.leases: dict[int, tuple[str | None, int]] = {}
        self.seen: dict[str, int] = {}

    async def ensure(self) -> None:
        for lane in range(self.lanes):
            self.leases.setdefault(lane, (None, 0))

    async def heartbeat(self, owner: str, now_us: int, ttl_us: int) -> int:
        self.seen[owner] = now_us
        return sum(1 for t in self.seen.values() if t >= now_us - ttl_us)

    async def renew(self, owner: str, now_us: int, ttl_us: int) -> set[int]:
        mine = {n for n, (o, until) in self.leases.items() if o == owner and until >= now_us}
        for n in mine:
            self.leases[n] = (owner, now_us + ttl_us)
        return mine

    async def claim(self, owner: str, want: int, now_us: int, ttl_us: int) -> set[int]:
        free = [n for n, (o, until) in sorted(self.leases.items()) if o is None or until < now_us]
        got = set(free[: max(0, want)])
        for n in got:
            self.leases[n] = (owner, now_us + ttl_us)
        return got

    async def release(self, owner: str, lanes: set[int]) -> None:
        for n in lanes:
            if self.leases.get(n, (None, 0))[0] == owner:
                self.leases[n] = (None, 0)

    async def retire(self, owner: str) -> None:
        self.seen.pop(owner, None)

    def owners(self) -> dict[int, str | None]:
        return {n: o for n, (o, _) in sorted(self.leases.items())}


class RecordingLaneConsumer:
    """Remembers which lanes it consumes, for lane-assignment tests."""

    def __init__(self) -> None:
        self.consuming: set[int] = set()

    async def start_lane(self, lane: int) -> None:
        self.consuming.add(lane)

    async def stop_lane(self, lane: int, *, drain: bool) -> None:
        self.consuming.discard(lane)
