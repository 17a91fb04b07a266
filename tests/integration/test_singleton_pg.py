"""`SingletonTask` on the real PostgreSQL: named leases in `relay_lease` (the row made on
first use), one runner at a time, takeover after a crash, and fencing by epoch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from ordersync.adapters.db.database import Database
from ordersync.adapters.db.relay import SqlRelayStore
from ordersync.bootstrap import Hub, Role, build_hub
from ordersync.config import Settings, settings_from_mapping
from ordersync.service.singleton import SingletonTask
from ordersync.testing import wait_until

pytestmark = [
    pytest.mark.postgres,
    # A migrated copy of the session's template: these tests are about leases, not migrations.
    pytest.mark.parametrize("migrated_database_url", ["postgresql"], indirect=True),
]

TTL = 0.6  # seconds; the runners try the lease every 0.2 s
T0 = 1_900_000_000_000_000  # a fixed "now" in microseconds


@pytest.fixture
async def db(migrated_database_url: str) -> AsyncIterator[Database]:
    database = Database(migrated_database_url)
    yield database
    await database.dispose()


class Work:
    """Records whether the work runs and how often it was started."""

    def __init__(self) -> None:
        self.running = False
        self.starts = 0

    async def start(self) -> None:
        self.running = True
        self.starts += 1

    async def stop(self) -> None:
        self.running = False


def runner(db: Database, work: Work, owner: str) -> SingletonTask:
    return SingletonTask(
        "pull", SqlRelayStore(db, "pull"), work.start, work.stop, ttl=TTL, owner=owner
    )


async def lease(db: Database, name: str) -> tuple[str | None, int]:
    async with db.read() as conn:
        row = (
            await conn.execute(
                text("SELECT owner, epoch FROM relay_lease WHERE name = :n"), {"n": name}
            )
        ).one()
    return row[0], int(row[1])


async def wait_for_owner(db: Database, name: str, owner: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await lease(db, name))[0] != owner:
        if loop.time() > deadline:
            raise TimeoutError(f"{owner} did not take lease {name!r} within {timeout} s")
        await asyncio.sleep(0.05)


async def test_exactly_one_of_two_runners_holds_a_named_lease_and_runs(db: Database) -> None:
    """Two runners in different 'processes': one runs the work; the relay's row is untouched."""
    a_work, b_work = Work(), Work()
    a, b = runner(db, a_work, "worker-a"), runner(db, b_work, "worker-b")
    a.start()
    b.start()
    try:
        await wait_until(lambda: a_work.running or b_work.running, timeout=10)
        for _ in range(5):  # several renewal rounds
            await asyncio.sleep(TTL / 3)
            assert [a_work.running, b_work.running].count(True) == 1
        assert a_work.starts + b_work.starts == 1
        holder = "worker-a" if a_work.running else "worker-b"
        assert (await lease(db, "pull"))[0] == holder
        assert (await lease(db, "outbox")) == (None, 0)
    finally:
        await a.stop()
        await b.stop()


async def test_a_crashed_holder_is_replaced_once_its_lease_expires(db: Database) -> None:
    """Cancelling the holder without releasing (a crash): the other runner takes over."""
    a_work, b_work = Work(), Work()
    a = runner(db, a_work, "worker-a")
    a.start()
    await wait_until(lambda: a_work.running, timeout=10)
    b = runner(db, b_work, "worker-b")
    b.start()
    try:
        _, epoch = await lease(db, "pull")
        assert a._task is not None
        a._task.cancel()  # dies: no stop, no release
        await asyncio.gather(a._task, return_exceptions=True)
        await wait_until(lambda: b_work.running, timeout=10)
        assert await lease(db, "pull") == ("worker-b", epoch + 1)
    finally:
        await b.stop()


async def test_a_clean_stop_releases_the_lease_for_the_stand_by(db: Database) -> None:
    """A stopped runner releases its lease; the stand-by holds it on its next try."""
    a_work, b_work = Work(), Work()
    a = runner(db, a_work, "worker-a")
    a.start()
    await wait_until(lambda: a_work.running, timeout=10)
    b = runner(db, b_work, "worker-b")
    b.start()
    try:
        await a.stop()
        assert not a_work.running
        await wait_for_owner(db, "pull", "worker-b")
        await wait_until(lambda: b_work.running, timeout=10)
    finally:
        await b.stop()


async def test_a_stalled_holder_cannot_renew_after_a_takeover(db: Database) -> None:
    """Fencing: once another owner took the expired lease, the late holder's renewal fails."""
    store_a, store_b = SqlRelayStore(db, "shipments-sweep"), SqlRelayStore(db, "shipments-sweep")
    ttl_us = 1_000_000
    epoch_a = await store_a.acquire("worker-a", T0, ttl_us)
    assert epoch_a == 1
    assert await store_b.acquire("worker-b", T0 + 1, ttl_us) is None  # still held
    epoch_b = await store_b.acquire("worker-b", T0 + ttl_us + 1, ttl_us)  # a stalled past it
    assert epoch_b == epoch_a + 1
    assert await store_a.acquire("worker-a", T0 + ttl_us + 2, ttl_us) is None
    await store_a.release("worker-a")  # a late release of a lost lease changes nothing
    assert await lease(db, "shipments-sweep") == ("worker-b", epoch_b)
    assert await store_b.acquire("worker-b", T0 + ttl_us + 3, ttl_us) == epoch_b


def worker_settings(database_url: str) -> Settings:
    """A channel with a `pull` block (its store is unreachable: pulls fail and retry)."""
    channel = {
        "id": "woo-teehaus",
        "kind": "woocommerce",
        "secret": "wc_hook_secret_for_tests",
        "store_url": "http://127.0.0.1:9",
        "consumer_key": "ck_test_singleton",
        "consumer_secret": "cs_test_singleton",
        "pull": {"overlap": 60, "page_size": 3, "max_window": 600, "settle": 2},
    }
    return settings_from_mapping(
        {
            "database_url": database_url,
            "channels": [channel],
            "worker": {"relay_lease_seconds": TTL},
        },
        env={},
    )


async def test_two_worker_hubs_pull_in_one_and_hand_over_on_stop(
    db: Database, migrated_database_url: str
) -> None:
    """Worker hubs run the pull loops under the "pull" lease: one pulls; a stop hands over."""
    hubs = [build_hub(worker_settings(migrated_database_url), Role.WORKER) for _ in range(2)]
    for hub in hubs:
        await hub.start(run_migrations=False, dispatch=False)
    stopped: list[Hub] = []
    try:
        await wait_until(lambda: any(h.pullers for h in hubs), timeout=10)
        holder = next(h for h in hubs if h.pullers)
        other = next(h for h in hubs if h is not holder)
        assert not other.pullers
        assert (await lease(db, "pull"))[0] == holder.deliveries.owner
        await holder.stop()
        stopped.append(holder)
        assert holder.singletons == []
        await wait_until(lambda: bool(other.pullers), timeout=10)
        assert (await lease(db, "pull"))[0] == other.deliveries.owner
    finally:
        for hub in hubs:
            if hub not in stopped:
                await hub.stop()
