"""The pipelined bus: the next batch is decided while the last one commits (ADR 10).

A toy "stock" stands in for the database: a unit of work starts from a carried-over count
(or reads the committed one), adds its commands, and its commit only succeeds when the
committed count is still the one it started from, as the guarded UPDATE does. Commits are
held open by the test, so batches really are in flight while later ones are decided.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from ordersync.service.pipeline import Carrying, PipelinedBus
from ordersync.service.unit_of_work import UnitOfWork
from ordersync.testing import FakeUnitOfWork


@dataclass(frozen=True)
class Take:
    who: str

    @property
    def shard_key(self) -> str:
        return "hot"


@dataclass(frozen=True)
class Refill:
    n: int

    @property
    def shard_key(self) -> str:
        return "hot"


class Store:
    """The committed state, and what each commit is allowed to do."""

    def __init__(self, count: int) -> None:
        self.count, self.version = count, 0
        self.takers: list[str] = []
        self.gate = asyncio.Event()  # commits wait for it: batches stay in flight
        self.gate.set()
        self.fail_next_commit = False
        self.commits = 0
        self.carried_batches = 0


class Uow(FakeUnitOfWork):
    def __init__(self, store: Store, carry: tuple[int, int, list[str]] | None) -> None:
        super().__init__()
        self.store = store
        self.takers: list[str] = []
        self.known: list[str] = []  # tickets of batches still in flight (the carry)
        if carry is None:
            self.count, self.expect = store.count, store.version
        else:
            store.carried_batches += 1
            self.count, self.expect, self.known = carry
        self.version = self.expect

    async def commit(self) -> None:
        await self.store.gate.wait()
        if self.store.fail_next_commit:
            self.store.fail_next_commit = False
            raise ConnectionError("the connection dropped during COMMIT")
        if self.version != self.expect:  # nothing changed: nothing to guard
            if self.store.version != self.expect:
                raise RuntimeError("stale: the row moved under this batch")
            self.store.count, self.store.version = self.count, self.version
        self.store.takers += self.takers
        self.store.commits += 1

    async def rollback(self) -> None:
        pass


async def take(cmd: Take, uow: Any) -> bool | str:
    """Asking twice is answered with the first answer's ticket (like a held reservation)."""
    for ticket in (*uow.store.takers, *uow.known, *uow.takers):
        if ticket.startswith(f"{cmd.who}@"):
            return ticket
    if uow.count <= 0:
        return False
    uow.count -= 1
    uow.version = uow.expect + 1
    uow.takers.append(f"{cmd.who}@{id(uow)}")
    return True


async def refill(cmd: Refill, uow: Any) -> int:
    uow.count += cmd.n
    uow.version = uow.expect + 1
    return int(uow.count)


async def nothing(batch: list[Any], uow: UnitOfWork) -> None:
    return None


def make_bus(store: Store) -> PipelinedBus:
    carrying = Carrying(
        factory=lambda carry: Uow(store, carry),
        carry_of=lambda uow, seq: (uow.count, uow.version, uow.known + uow.takers),  # type: ignore[attr-defined]
        prune=lambda carry, committed: carry,
    )
    return PipelinedBus(
        lambda: Uow(store, None),
        carrying=carrying,
        eligible=lambda cmd: isinstance(cmd, Take),
        handlers={Take: take, Refill: refill},
        before_batch=nothing,
        max_batch=4,
    )


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_batches_decided_while_earlier_ones_commit_sell_exactly_the_stock() -> None:
    store = Store(count=10)
    bus = make_bus(store)
    bus.start()
    store.gate.clear()
    first = [asyncio.ensure_future(bus.handle(Take(f"a{i}"))) for i in range(4)]
    await _settle()
    rest = [asyncio.ensure_future(bus.handle(Take(f"b{i}"))) for i in range(12)]
    await _settle()
    assert store.carried_batches >= 1  # a batch was decided while the first was in flight
    assert not any(f.done() for f in first)  # nobody is answered before their commit
    store.gate.set()
    results = await asyncio.gather(*first, *rest)
    await bus.stop()
    assert results.count(True) == 10
    assert store.count == 0
    assert len(store.takers) == 10


async def test_a_failed_commit_voids_the_batches_built_on_it_and_they_are_redone() -> None:
    store = Store(count=6)
    bus = make_bus(store)
    bus.start()
    store.gate.clear()
    store.fail_next_commit = True
    first = [asyncio.ensure_future(bus.handle(Take(f"a{i}"))) for i in range(4)]
    await _settle()
    second = [asyncio.ensure_future(bus.handle(Take(f"b{i}"))) for i in range(4)]
    await _settle()
    store.gate.set()
    results = await asyncio.gather(*first, *second)
    await bus.stop()
    # The first commit failed and the second was decided from it: both are answered from
    # what committed (a buyer whose unit the second batch did write gets that ticket back),
    # so exactly the 6 units are sold, no more, to 6 distinct buyers.
    sold = [r for r in results if r is not False]
    assert len(sold) == 6
    assert all(r is True or r in store.takers for r in sold)
    assert store.count == 0
    assert len(set(store.takers)) == 6


async def test_a_batch_with_another_command_waits_for_those_in_flight() -> None:
    store = Store(count=1)
    bus = make_bus(store)
    bus.start()
    store.gate.clear()
    taken = asyncio.ensure_future(bus.handle(Take("a")))
    await _settle()
    refilled = asyncio.ensure_future(bus.handle(Refill(5)))
    await _settle()
    assert not refilled.done()
    store.gate.set()
    assert await taken is True
    # The refill read the committed count (0 after "a"), never a carried one.
    assert await refilled == 5
    after = [await bus.handle(Take(f"c{i}")) for i in range(6)]
    await bus.stop()
    assert after.count(True) == 5
    assert store.count == 0


def test_a_depth_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        PipelinedBus(
            lambda: FakeUnitOfWork(),
            carrying=Carrying(lambda c: FakeUnitOfWork(), lambda u, s: None, lambda c, n: c, 1),
            eligible=lambda cmd: True,
        )


async def test_asking_again_on_top_of_a_batch_that_failed_gets_the_redone_answer() -> None:
    store = Store(count=5)
    bus = make_bus(store)
    bus.start()
    store.gate.clear()
    store.fail_next_commit = True
    first = asyncio.ensure_future(bus.handle(Take("a")))
    await _settle()
    # Decided from the first batch's carried state: "a" already has a ticket there, so this
    # batch writes nothing and its own commit succeeds; but that ticket was never written.
    again = asyncio.ensure_future(bus.handle(Take("a")))
    await _settle()
    store.gate.set()
    assert await first is True
    answer = await again
    await bus.stop()
    assert answer in store.takers  # the ticket that exists, not the one that never did
    assert len(store.takers) == 1
    assert store.count == 4
