"""A message bus whose writers compute the next batch while the previous one commits.

The plain `MessageBus` writer of one hot SKU alternates: lock and read the row, decide in
Python, write, commit; the database idles while Python decides and Python idles while the
database writes. Here (ADR 10) a writer hands each batch's write and commit to a task and
goes straight on with the next batch, starting from a *carried-over* state (the stock as
the previous batch left it, not yet committed) instead of reading the row under lock.
What keeps that safe:

- the next batch's stock UPDATE is guarded by the version it expects
  (`... WHERE version = expected`): PostgreSQL makes it wait for the previous batch's row
  lock, and it only matches once that batch committed. A previous batch that failed makes
  every batch built on it write nothing (`StaleStock`), and they are all computed again,
  in order, from locked rows, the way `MessageBus` retries a failing batch;
- commits finish in batch order (each waits for the row lock its predecessor holds), and
  results are handed out in that order, each only after its own commit;
- a carried-over state is only used for batches of `eligible` commands (reservations):
  any other command first lets every batch in flight finish, then runs as usual.

Another process changing the same row is noticed the same way (the version moved) and
costs one retry, never a wrong count: the database's CHECK and the guard decide.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ordersync.domain.errors import DomainError
from ordersync.service.messagebus import MessageBus, _Item
from ordersync.service.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

PLAIN_AFTER_VOID = 8  # batches decided from locked rows after a batch was void
# Split what waits into two batches only from this many: below it a batch's fixed cost
# (its round trips and statements) outweighs what overlapping two batches saves
# (bench.flash_sale: 8 buyers as two batches of 4 ran 30 % slower than one of 8).
SPLIT_FROM = 128

# carry -> unit of work starting from it (None: a plain one, reading under lock)
CarryFactory = Callable[[Any], UnitOfWork]
# (unit of work after its handlers ran, batch number) -> the carry for the next batch
CarryOf = Callable[[UnitOfWork, int], Any]
# (carry, last batch number known committed) -> the carry a new batch may start from
CarryPrune = Callable[[Any, int], Any]


@dataclass(frozen=True, slots=True)
class Carrying:
    """How a storage adapter carries state from one batch to the next (see module doc)."""

    factory: CarryFactory
    carry_of: CarryOf
    prune: CarryPrune
    depth: int = 2  # batches in flight at once, the one being decided included


@dataclass(slots=True)
class _Lane:
    carry: Any = None
    seq: int = 0  # batches started
    committed: int = 0  # every batch up to this one has committed (or been redone)
    broken: bool = False  # a batch in flight failed: later carried batches are void
    plain: int = 0  # batches to run from locked rows before carrying again (after a void one)
    inflight: deque[asyncio.Task[bool]] = field(default_factory=deque)
    committed_event: asyncio.Event | None = None  # set when the last batch's COMMIT returned

    def reap(self) -> None:
        while self.inflight and self.inflight[0].done():
            self.inflight.popleft()

    async def drain(self) -> None:
        if self.inflight:
            await asyncio.wait(list(self.inflight))
        self.inflight.clear()
        self.carry, self.broken, self.committed_event = None, False, None


class PipelinedBus(MessageBus):
    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        *,
        carrying: Carrying,
        eligible: Callable[[Any], bool],
        **kw: Any,
    ) -> None:
        super().__init__(uow_factory, **kw)
        if carrying.depth < 2:
            raise ValueError("depth >= 2 (1 is the plain MessageBus)")
        self._carry_factory = carrying.factory
        self._carry_of = carrying.carry_of
        self._carry_prune = carrying.prune
        self._eligible = eligible
        self._depth = carrying.depth

    async def _writer(self, queue: asyncio.Queue[_Item]) -> None:
        lane = _Lane()
        try:
            while True:
                batch = [await queue.get()]
                lane.reap()
                # With nothing in flight, take half of what waits: the other half becomes
                # the next batch, decided while this one commits. Otherwise a closed group
                # of callers (each asks again once answered) moves as one batch forever,
                # and nothing overlaps. With a batch in flight, take everything.
                limit = self._max_batch
                waiting = queue.qsize() + 1
                if not lane.inflight and waiting >= SPLIT_FROM:
                    limit = min(limit, (waiting + 1) // 2)
                while len(batch) < limit and not queue.empty():
                    batch.append(queue.get_nowait())
                try:
                    await self._pipelined(batch, lane, queue)
                except Exception:  # never let the writer die
                    log.exception("unexpected error in pipelined bus writer")
        finally:
            for task in lane.inflight:  # stopping: queue.join() saw them finish already
                task.cancel()

    async def _pipelined(
        self, batch: list[_Item], lane: _Lane, queue: asyncio.Queue[_Item]
    ) -> None:
        lane.reap()
        eligible = all(self._eligible(cmd) for cmd, _ in batch)
        if lane.broken or not eligible or lane.plain:
            await lane.drain()
        if not eligible or lane.plain:
            lane.plain = max(lane.plain - 1, 0)
            try:
                await self._run(batch)
            finally:
                for _ in batch:
                    queue.task_done()
            return
        while len(lane.inflight) >= self._depth:
            await asyncio.wait({lane.inflight[0]})
            lane.reap()
        if lane.broken:
            await lane.drain()
        lane.seq += 1
        seq = lane.seq
        carry = None if lane.carry is None else self._carry_prune(lane.carry, lane.committed)
        uow = self._carry_factory(carry)
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            await self._before_batch([cmd for cmd, _ in batch], uow)
            for cmd, fut in batch:
                try:
                    outcomes.append((fut, await self._handlers[type(cmd)](cmd, uow), None))
                except DomainError as e:
                    outcomes.append((fut, None, e))
            lane.carry = self._carry_of(uow, seq)
        except Exception as e:
            await uow.rollback()
            log.warning(
                "pipelined batch of %d failed before commit (%s); redoing it", len(batch), e
            )
            await lane.drain()
            try:
                await self._run(batch)  # from locked rows; one by one if that fails too
            finally:
                for _ in batch:
                    queue.task_done()
            return
        before = lane.inflight[-1] if lane.inflight else None
        committed = asyncio.Event()
        lane.inflight.append(
            asyncio.create_task(
                self._finish(
                    uow, batch, outcomes, before, lane.committed_event, committed, lane, seq, queue
                ),
                name=f"bus-commit-{seq}",
            )
        )
        lane.committed_event = committed

    async def _finish(
        self,
        uow: UnitOfWork,
        batch: list[_Item],
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
        before: asyncio.Task[bool] | None,
        before_committed: asyncio.Event | None,
        committed: asyncio.Event,
        lane: _Lane,
        seq: int,
        queue: asyncio.Queue[_Item],
    ) -> bool:
        """Commit, then answer in batch order. True: answered from this commit; False: the
        batch was redone from locked rows (its commit failed, or it started from the
        state of a batch that was redone: what it decided may name holds that were never
        written, so it is decided again; asking twice is safe, reservations are
        idempotent per order)."""
        try:
            failure: BaseException | None = None
            try:
                # Written only once the previous batch's COMMIT returned: the guarded UPDATE
                # reads the row in the statement's snapshot, and a row still showing the
                # state before that batch fails the guard (a needless redo). The decision,
                # the Python half of the work, is what overlaps the previous commit.
                if before_committed is not None and before is not None:
                    waiter = asyncio.ensure_future(before_committed.wait())
                    await asyncio.wait({waiter, before}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                await uow.commit()
            except Exception as e:
                failure = e
                lane.broken = True  # batches built on this one are void: none reuse it
                await uow.rollback()
            finally:
                committed.set()
            if before is not None:  # answers and redos go out in batch order
                await asyncio.wait({before})
                if failure is None and not before.result():
                    failure = StalePredecessor(f"batch {seq - 1} was redone")
            if failure is None:
                lane.committed = max(lane.committed, seq)
                for fut, result, error in outcomes:
                    if fut.done():
                        continue
                    if error is not None:
                        fut.set_exception(error)
                    else:
                        fut.set_result(result)
                return True
            lane.broken = True
            # Another writer is changing these rows (or the database failed): the next few
            # batches read under lock, so mixed traffic does not redo every batch.
            lane.plain = PLAIN_AFTER_VOID
            log.info("pipelined batch %d redone from locked rows (%s)", seq, failure)
            await self._run(batch)  # the plain bus's path: one by one only if this fails
            lane.committed = max(lane.committed, seq)
            return False
        finally:
            for _ in batch:
                queue.task_done()


class StalePredecessor(Exception):
    """The batch a pipelined batch started from was redone."""
