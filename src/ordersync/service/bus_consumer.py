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


class ClaimBatcher:
    """Many consumers ask for claims at once: one statement per loop turn, not per delivery."""

    def __init__(self, store: ClaimStore, max_batch: int = 500) -> None:
        self._store = store
        self._max = max_batch
        self._waiting: dict[int, list[asyncio.Future[DueDelivery | None]]] = {}
        self._scheduled = False

    def claim(self, seq: int) -> Awaitable[DueDelivery | None]:
        fut: asyncio.Future[DueDelivery | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(seq, []).append(fut)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._waiting = self._waiting, {}
        seqs = list(batch)
        for i in range(0, len(seqs), self._max):
            part = {s: batch[s] for s in seqs[i : i + self._max]}
            asyncio.create_task(self._run(part))  # noqa: RUF006 - futures keep the results

    async def _run(self, part: dict[int, list[asyncio.Future[DueDelivery | None]]]) -> None:
        try:
            claimed = {d.seq: d for d in await self._store.claim(list(part), to_us(utcnow()))}
        except Exception as e:
            for futs in part.values():
                for f in futs:
                    if not f.done():
                        f.set_exception(e)
            return
        for seq, futs in part.items():
            for f in futs:
                if not f.done():
                    f.set_result(claimed.get(seq))


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
        for pause in (*CLAIM_RETRIES, None):
            d = await self._claims.claim(seq)
            if d is not None:
                await worker.deliver(d)
                return
            state = (await self._store.states([seq])).get(seq)
            if state != "pending":
                self.duplicates += 1  # already delivered (or dead): a redelivered message
                return
            if pause is None:
                break
            await asyncio.sleep(pause)
        # Pending but not claimable: an earlier delivery of its lane waits for a retry, or
        # another worker holds it. The sweeper takes it when it heads its lane.
        self.left_to_sweeper += 1
