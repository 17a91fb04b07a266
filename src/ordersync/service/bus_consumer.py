"""Worker side of the bus: turn each event message into claimed, sent, recorded deliveries.

Per (destination, order) the consumer works strictly one delivery after another, and a
delivery is claimed in the database only while it heads its lane (no earlier pending one),
under a lease. That rule, not the broker, is what keeps events of an order in order when
several workers consume the same lanes. A message is acknowledged once each of its
deliveries is recorded, already done, or left to the sweeper (the dispatcher's database
poll): breaker open, blocked behind a delivery waiting for its retry, or held by another
worker that keeps failing to finish it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Protocol

from ordersync.clock import to_us, utcnow
from ordersync.service.bus import EventMessage
from ordersync.service.delivery_ports import DueDelivery
from ordersync.service.dispatcher import Dispatcher

log = logging.getLogger(__name__)

# While an earlier delivery of the lane is still in flight elsewhere, try again this often
# (seconds) before leaving the delivery to the sweeper.
CLAIM_RETRIES = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)


class ClaimStore(Protocol):
    async def claim(self, seqs: list[int], now_us: int) -> list[DueDelivery]: ...
    async def states(self, seqs: list[int]) -> dict[int, str]: ...


Claim = DueDelivery | str  # claimed, or the delivery's state when it could not be claimed


class ClaimBatcher:
    """Many consumers ask for claims at once: one claim statement (and, for what it could
    not claim, one state lookup) per loop turn, not one query per delivery. At most
    `max_concurrent` statements run at once; claims asked for meanwhile wait and go out
    together as the next batch, so a burst grows batches instead of draining the pool."""

    def __init__(self, store: ClaimStore, max_batch: int = 500, max_concurrent: int = 2) -> None:
        self._store = store
        self._max = max_batch
        self._max_concurrent = max_concurrent
        self._running = 0
        self._waiting: dict[int, list[asyncio.Future[Claim]]] = {}
        self._scheduled = False

    def claim(self, seq: int) -> Awaitable[Claim]:
        """The claimed delivery, or its state ("pending", "succeeded", ..., "missing")."""
        fut: asyncio.Future[Claim] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(seq, []).append(fut)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        while self._waiting and self._running < self._max_concurrent:
            seqs = list(self._waiting)[: self._max]
            part = {s: self._waiting.pop(s) for s in seqs}
            self._running += 1
            asyncio.create_task(self._run(part))  # noqa: RUF006 - futures keep the results

    async def _run(self, part: dict[int, list[asyncio.Future[Claim]]]) -> None:
        try:
            await self._claim(part)
        finally:
            self._running -= 1
            if self._waiting and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def _claim(self, part: dict[int, list[asyncio.Future[Claim]]]) -> None:
        try:
            claimed: dict[int, Claim] = {
                d.seq: d for d in await self._store.claim(list(part), to_us(utcnow()))
            }
            if missed := [s for s in part if s not in claimed]:
                states = await self._store.states(missed)
                claimed |= {s: states.get(s, "missing") for s in missed}
        except Exception as e:
            for futs in part.values():
                for f in futs:
                    if not f.done():
                        f.set_exception(e)
            return
        for seq, futs in part.items():
            for f in futs:
                if not f.done():
                    f.set_result(claimed[seq])


class BusConsumer:
    def __init__(self, dispatcher: Dispatcher, store: ClaimStore) -> None:
        self._dispatcher = dispatcher
        self._store = store
        self._claims = ClaimBatcher(store)
        # The last link of each (destination, order) chain: the next waits for it.
        self._chains: dict[tuple[str, str], asyncio.Future[None]] = {}
        self.left_to_sweeper = 0
        self.duplicates = 0

    async def handle(self, msg: EventMessage) -> None:
        """Returns when the message may be acknowledged; raises to have it redelivered."""
        links = [self._link(seq, dest, msg.order_id) for seq, dest in msg.deliveries]
        results = await asyncio.gather(*links, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def _link(self, seq: int, dest: str, order_id: str) -> None:
        key = (dest, order_id)
        previous = self._chains.get(key)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chains[key] = mine
        try:
            if previous is not None:
                await asyncio.shield(previous)
            await self._deliver(seq, dest)
        finally:
            mine.set_result(None)
            if self._chains.get(key) is mine:
                del self._chains[key]

    async def _deliver(self, seq: int, dest: str) -> None:
        worker = self._dispatcher.workers.get(dest)
        if worker is None or not worker.accepts_now():
            self.left_to_sweeper += 1  # unknown here, stopping, or breaker open
            return
        await worker.reserve_slot()
        handed_over = False
        try:
            for pause in (*CLAIM_RETRIES, None):
                got = await self._claims.claim(seq)
                if isinstance(got, DueDelivery):
                    handed_over = True  # the slot goes with it
                    await worker.deliver(got)
                    return
                if got != "pending":
                    self.duplicates += 1  # already delivered (or dead): a redelivered message
                    return
                if pause is None:
                    break
                await asyncio.sleep(pause)
        finally:
            if not handed_over:
                worker.release_slot()
        # Pending but not claimable: an earlier delivery of its lane waits for a retry, or
        # another worker holds it. The sweeper takes it when it heads its lane.
        self.left_to_sweeper += 1
