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
- a batch's statements are built (in Python) while its predecessor is still in flight; a
  storage adapter that knows its writes (`Carrying.commit`) sends them as soon as the
  predecessor's guarded write has returned, i.e. holds the row lock, so this batch's write
  queues on that lock while the predecessor's COMMIT (the WAL flush) runs, and PostgreSQL
  re-checks the guard on the committed row once it gets the lock (`Turn`);
- a carried-over state is only used for batches of `eligible` commands (reservations):
  any other command first lets every batch in flight finish, then runs as usual.

Another process changing the same row is noticed the same way (the version moved) and
costs one retry, never a wrong count: the database's CHECK and the guard decide.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
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


class Turn:
    """A pipelined batch's place in line, handed to `Carrying.commit`.

    `wait(committed=False)`: returns once the previous batch's guarded write has returned
    (it holds the row locks, so a write sent now queues behind it and is checked against
    what it commits) or the previous batch ended. `wait(committed=True)`: once it
    committed (or ended): for writes that must *see* its rows, e.g. an UPDATE of a row it
    inserted. `written()`: this batch's guarded write has returned. `waited`: `wait` was
    called (a hook that wrote nothing waits before its COMMIT all the same)."""

    __slots__ = ("_before", "_before_committed", "_before_written", "_written", "waited")

    def __init__(
        self,
        before: asyncio.Task[bool] | None,
        before_written: asyncio.Event | None,
        before_committed: asyncio.Event | None,
        written: asyncio.Event,
    ) -> None:
        self._before = before
        self._before_written = before_written
        self._before_committed = before_committed
        self._written = written
        self.waited = False

    async def wait(self, *, committed: bool) -> None:
        self.waited = True
        event = self._before_committed if committed else self._before_written
        if self._before is None or event is None or event.is_set() or self._before.done():
            return
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter, self._before}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    def written(self) -> None:
        self._written.set()


async def commit_in_turn(uow: UnitOfWork, turn: Turn) -> None:
    """`Carrying.commit` for a unit of work that cannot say when its write is done: it
    writes and commits only once the previous batch committed."""
    await turn.wait(committed=True)
    await uow.commit()
    turn.written()


# (unit of work, its turn) -> write and commit, calling `turn.wait` before the first write
CommitHook = Callable[[UnitOfWork, Turn], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Carrying:
    """How a storage adapter carries state from one batch to the next (see module doc)."""

    factory: CarryFactory
    carry_of: CarryOf
    prune: CarryPrune
    depth: int = 2  # batches in flight at once, the one being decided included
    commit: CommitHook = commit_in_turn


@dataclass(slots=True)
class _Lane:
    carry: Any = None
    seq: int = 0  # batches started
    committed: int = 0  # every batch up to this one has committed (or been redone)
    broken: bool = False  # a batch in flight failed: later carried batches are void
    plain: int = 0  # batches to run from locked rows before carrying again (after a void one)
    inflight: deque[asyncio.Task[bool]] = field(default_factory=deque)
    committed_event: asyncio.Event | None = None  # set when the last batch's COMMIT returned
    written_event: asyncio.Event | None = None  # set when the last batch's write returned

    def reap(self) -> None:
        while self.inflight and self.inflight[0].done():
            self.inflight.popleft()

    async def drain(self) -> None:
        if self.inflight:
            await asyncio.wait(list(self.inflight))
        self.inflight.clear()
        self.carry, self.broken = None, False
        self.committed_event = self.written_event = None


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
        self._commit = carrying.commit

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
        committed, written = asyncio.Event(), asyncio.Event()
        turn = Turn(before, lane.written_event, lane.committed_event, written)
        lane.inflight.append(
            asyncio.create_task(
                self._finish(
                    uow, batch, outcomes, before, turn, committed, written, lane, seq, queue
                ),
                name=f"bus-commit-{seq}",
            )
        )
        lane.committed_event, lane.written_event = committed, written

    async def _finish(
        self,
        uow: UnitOfWork,
        batch: list[_Item],
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
        before: asyncio.Task[bool] | None,
        turn: Turn,
        committed: asyncio.Event,
        written: asyncio.Event,
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
                # Not written before the previous batch's guarded write returned: a write
                # sent earlier could take the row first, read the state before that batch
                # and fail the guard (a needless redo). The hook builds the statements
                # first, so they and the decision overlap the previous batch's write and
                # COMMIT; the write then queues on the row lock (Turn).
                await self._commit(uow, turn)
            except Exception as e:
                failure = e
                lane.broken = True  # batches built on this one are void: none reuse it
                await uow.rollback()
            finally:
                written.set()
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
