"""Shopify pull end to end: the Admin REST simulator over loopback HTTP into a real hub on a
SQLite file (cursor pages, crashes between pages, throttling, late writes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ordersync.adapters.db.pull_cursors import SqlCursorStore
from ordersync.service.pull import (
    PullError,
    TokenBucket,
)
from ordersync.simulators.shopify_admin import ShopifyAdmin
from ordersync.testing.pull_rig import Crash, CrashingFetch, PullRig, RigFactory, pull_rigs

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
TOKEN = "shpat_teahouse_admin"
CHANNEL = "shopify-teahouse"


def shopify_channel(admin_url: str, token: str = TOKEN) -> dict[str, Any]:
    return {
        "id": CHANNEL,
        "kind": "shopify",
        "secret": "whsec-teahouse",
        "shop_domain": "teahouse.myshopify.com",
        "admin_url": admin_url,
        "api_version": "2025-10",
        "access_token": token,
        "pull": {"overlap": 60, "page_size": 2, "max_window": 600, "settle": 2},
    }


class Rig(PullRig):
    """A hub on a SQLite file, with real HTTP fetching and database cursors."""

    page_size = 2

    async def stored(self) -> dict[str, tuple[str, str, dict[str, Any]]]:
        """external_id -> (status, payment_status, document); fails on a duplicate."""
        return {
            ext: (o.status, o.payment_status, o.doc)
            for ext, o in (await self.rows(CHANNEL)).items()
        }


@pytest.fixture
async def shop() -> AsyncIterator[ShopifyAdmin]:
    """The shop's Admin REST API on loopback, checking the access token."""
    admin = ShopifyAdmin(access_token=TOKEN, api_version="2025-10")
    await admin.start()
    yield admin
    await admin.stop()


@pytest.fixture
async def rig_for(tmp_path: Path) -> AsyncIterator[RigFactory]:
    async with pull_rigs(f"sqlite:///{tmp_path}/hub.db", start=T0, rig_class=Rig) as make:
        yield make


async def stocked(rig_for: RigFactory, shop: ShopifyAdmin, n: int) -> Rig:
    """A rig whose shop holds `n` orders updated 5 s apart in the ten minutes before T0."""
    assert shop.base_url is not None
    rig = await rig_for(shopify_channel(shop.base_url))
    shop.clock = rig.clock
    for i in range(n):
        shop.create(updated_at=T0 - timedelta(seconds=300 - 5 * i))
    return rig


async def test_every_order_is_pulled_once_following_link_header_cursors(
    rig_for: RigFactory, shop: ShopifyAdmin
) -> None:
    """Seven orders, two a page: four cursor pages, each order stored once with its exact id."""
    rig = await stocked(rig_for, shop, 7)
    puller = rig.puller(CHANNEL)
    await puller.start_at(T0 - timedelta(seconds=400))

    stats = await puller.catch_up()

    stored = await rig.stored()
    assert set(stored) == {str(i) for i in shop.orders}
    assert any(int(i) > 2**53 for i in stored)  # the factory mixes in ids beyond 2^53
    assert len(await rig.inbox(CHANNEL)) == 7
    assert stats.pages == 4
    first, *following = shop.requests
    assert first["status"] == "any"
    assert first["order"] == "updated_at asc"
    assert all(set(q) == {"limit", "page_info"} for q in following)


async def test_a_pull_that_crashes_between_pages_resumes_and_stores_each_order_once(
    rig_for: RigFactory, shop: ShopifyAdmin
) -> None:
    """The saved window starts at the last updated_at read; the next process goes on there."""
    rig = await stocked(rig_for, shop, 7)
    crashing = rig.puller(CHANNEL, fetch=CrashingFetch(rig.fetch, pages=2))
    await crashing.start_at(T0 - timedelta(seconds=400))

    with pytest.raises(Crash):
        await crashing.catch_up()
    halfway = await SqlCursorStore(rig.hub.db).load(CHANNEL, "live")
    await rig.puller(CHANNEL).catch_up()

    assert halfway is not None
    assert halfway.window is not None
    assert halfway.window.start == T0 - timedelta(seconds=300 - 5 * 3)  # the 4th order's time
    assert halfway.page == 1
    assert set(await rig.stored()) == {str(i) for i in shop.orders}
    assert len(await rig.inbox(CHANNEL)) == 7


async def test_a_late_write_inside_the_overlap_is_read_by_the_next_window(
    rig_for: RigFactory, shop: ShopifyAdmin
) -> None:
    """An update that shows up stamped behind the watermark, within the overlap, is read."""
    assert shop.base_url is not None
    rig = await rig_for(shopify_channel(shop.base_url))
    shop.clock = rig.clock
    order = shop.create(financial_status="pending", fulfillment_status=None, cancelled_at=None)
    rig.clock.tick(30)
    puller = rig.puller(CHANNEL)
    await puller.catch_up()
    ((_, payment, _),) = (await rig.stored()).values()

    late = rig.clock.now - timedelta(seconds=20)  # committed now, stamped 20 s ago
    shop.update(order["id"], financial_status="paid", updated_at=late)
    rig.clock.tick(30)
    await puller.catch_up()

    assert payment == "pending"
    ((status, payment, _),) = (await rig.stored()).values()
    assert (status, payment) == ("paid", "paid")


async def test_429_and_a_nearly_full_call_bucket_are_waited_out(
    rig_for: RigFactory, shop: ShopifyAdmin
) -> None:
    """A 429's Retry-After and the call-limit slowdown pause the pull; nothing is skipped."""
    rig = await stocked(rig_for, shop, 3)
    shop.throttle_next = 1
    shop.retry_after = "1.5"
    shop.calls_used = 35  # the next call reports 36/40
    waits: list[float] = []
    elapsed = [0.0]

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        elapsed[0] += seconds
        await asyncio.sleep(0)

    bucket = TokenBucket(1000.0, 1000, clock=lambda: elapsed[0], sleep=sleep)
    puller = rig.puller(CHANNEL, sleep=sleep, bucket=bucket)
    await puller.start_at(T0 - timedelta(seconds=400))
    stats = await puller.catch_up()

    assert stats.throttled == 1
    assert stats.pages == 2
    assert len(await rig.stored()) == 3
    # Retry-After 1.5; then 36/40 used: wait until it leaked to half, (36 - 20) / 2 s.
    assert waits[:2] == [pytest.approx(1.5), pytest.approx(8.0)]


async def test_a_wrong_access_token_is_a_pull_error(
    rig_for: RigFactory, shop: ShopifyAdmin
) -> None:
    """401 from the shop is not retried: waiting will not fix the token."""
    assert shop.base_url is not None
    rig = await rig_for(shopify_channel(shop.base_url, token="shpat_wrong"))
    shop.clock = rig.clock
    shop.create(updated_at=T0 - timedelta(seconds=30))

    with pytest.raises(PullError, match="401"):
        await rig.puller(CHANNEL).catch_up()
