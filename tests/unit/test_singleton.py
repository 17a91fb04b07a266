"""`SingletonTask` over the in-memory `FakeLeaseStore`: one runner does the work, a stand-by
takes over after a clean stop or a crash, and the work stops when the lease is lost."""

from __future__ import annotations

import asyncio

from ordersync.clock import to_us, utcnow
from ordersync.service.singleton import SingletonTask
from ordersync.testing import FakeLeaseStore, wait_until

TTL = 0.3  # seconds; the runners try the lease every 0.1 s


class Work:
    """Records whether the work runs and how often it was started and stopped."""

    def __init__(self) -> None:
        self.running = False
        self.starts = 0
        self.stops = 0

    async def start(self) -> None:
        self.running = True
        self.starts += 1

    async def stop(self) -> None:
        self.running = False
        self.stops += 1


def runner(store: FakeLeaseStore, work: Work, owner: str) -> SingletonTask:
    return SingletonTask("pull", store, work.start, work.stop, ttl=TTL, owner=owner)


async def test_only_one_of_two_runners_does_the_work() -> None:
    """Two runners on one lease: exactly one starts its work, the other stands by."""
    store = FakeLeaseStore()
    a_work, b_work = Work(), Work()
    a, b = runner(store, a_work, "worker-a"), runner(store, b_work, "worker-b")
    a.start()
    b.start()
    try:
        await wait_until(lambda: a_work.running or b_work.running)
        acquires = store.acquires
        await wait_until(lambda: store.acquires >= acquires + 6)  # a few renewal rounds
        assert [a_work.running, b_work.running].count(True) == 1
        assert a_work.starts + b_work.starts == 1
        assert [a.active, b.active].count(True) == 1
    finally:
        await a.stop()
        await b.stop()


async def test_a_stand_by_takes_over_at_once_after_a_clean_stop() -> None:
    """A clean stop stops the work and releases the lease; the stand-by's next try wins."""
    store = FakeLeaseStore()
    a_work, b_work = Work(), Work()
    a = runner(store, a_work, "worker-a")
    a.start()
    await wait_until(lambda: a_work.running)
    b = runner(store, b_work, "worker-b")
    b.start()
    try:
        await a.stop()
        assert not a_work.running
        assert a_work.stops == 1
        assert store.until_us == 0  # released: no waiting for the ttl
        await wait_until(lambda: b_work.running)
        assert store.owner == "worker-b"
    finally:
        await b.stop()


async def test_a_stand_by_takes_over_once_a_crashed_holders_lease_expires() -> None:
    """A holder that dies without releasing keeps the lease only until its ttl runs out."""
    store = FakeLeaseStore()
    a_work, b_work = Work(), Work()
    a = runner(store, a_work, "worker-a")
    a.start()
    await wait_until(lambda: a_work.running)
    b = runner(store, b_work, "worker-b")
    b.start()
    try:
        assert a._task is not None
        a._task.cancel()  # the process dies: no stop, no release
        await asyncio.gather(a._task, return_exceptions=True)
        epoch = store.epoch
        await wait_until(lambda: b_work.running, timeout=5 * TTL + 2)
        assert store.owner == "worker-b"
        assert store.epoch == epoch + 1
    finally:
        await b.stop()


async def test_the_work_stops_when_the_lease_is_taken_by_someone_else() -> None:
    """Another owner holds the lease (ours lapsed): the next renewal stops the work."""
    store = FakeLeaseStore()
    work = Work()
    a = runner(store, work, "worker-a")
    a.start()
    try:
        await wait_until(lambda: work.running)
        store.steal("worker-z", to_us(utcnow()) + 60_000_000)
        await wait_until(lambda: not work.running)
        assert not a.active
        assert work.stops == 1
    finally:
        await a.stop()
    assert work.stops == 1  # a stop after losing the lease does not stop the work twice


async def test_the_work_stops_when_renewal_fails_and_resumes_when_it_succeeds() -> None:
    """A failed renewal stops the work at once; the runner takes the lease again later."""
    store = FakeLeaseStore()
    work = Work()
    a = runner(store, work, "worker-a")
    a.start()
    try:
        await wait_until(lambda: work.running)
        store.fail_acquires = 1
        await wait_until(lambda: work.stops == 1)
        await wait_until(lambda: work.running)
        assert work.starts == 2
        assert store.owner == "worker-a"
    finally:
        await a.stop()


async def test_the_work_stops_when_renewal_hangs_past_the_lease() -> None:
    """A renewal that does not answer before the lease would run out counts as failed."""
    store = FakeLeaseStore()
    work = Work()
    hang = asyncio.Event()
    acquire = store.acquire

    async def slow_acquire(owner: str, now_us: int, ttl_us: int) -> int | None:
        if hang.is_set():
            await asyncio.sleep(3600)
        return await acquire(owner, now_us, ttl_us)

    store.acquire = slow_acquire  # type: ignore[method-assign]
    a = runner(store, work, "worker-a")
    a.start()
    try:
        await wait_until(lambda: work.running)
        hang.set()
        await wait_until(lambda: not work.running, timeout=5 * TTL + 2)
        assert not a.active
    finally:
        await a.stop()
