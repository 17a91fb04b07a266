"""Channel stock publishing to Taobao/Tmall, JD and Douyin through a running hub (SQLite and
PostgreSQL): a stock change reaches each platform's simulator as a signed stock update
carrying that channel's ATS, a throttled call is retried, and a refused one (a forged
signature) is counted and keeps its "stock changed" marker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ordersync.bootstrap import Hub
from ordersync.config import Settings, settings_from_mapping
from ordersync.simulators.douyin_shop import DouyinShop
from ordersync.simulators.jd_jos import JosGateway
from ordersync.simulators.taobao_top import TopGateway

from .conftest import ClientFactory, Eventually, HubStarter, Query

WMS_KEY = "sk_test_wms_tea_garden_19ab"
SHOP_KEY = "sk_test_shop_tea_garden_52cd"
TEA = "LONGJING-250"

TOP_KEY, TOP_SECRET, TOP_SESSION = "12345678", "top_secret_tea_garden", "6100tea_garden_session"
JOS_KEY, JOS_SECRET, JOS_TOKEN = "jos_tea_garden", "jos_secret_tea_garden", "jos_token_tea_garden"
DY_KEY, DY_SECRET, DY_TOKEN = "7000000000000000042", "dy_secret_tea_garden", "dy_token_tea_garden"

NUM_IID, TB_SKU_ID = 600_000_000_001, 4_000_000_000_001
TMALL_ITEM = f"{NUM_IID}:{TB_SKU_ID}"  # how the TOP simulator names one SKU of an item
JD_SKU_ID = "100012043978"
DY_SKU_ID = "1700000000001"


@dataclass
class Platforms:
    top: TopGateway
    jos: JosGateway
    douyin: DouyinShop


@pytest.fixture
async def platforms() -> AsyncIterator[Platforms]:
    """The three platforms' simulators, each on a free loopback port."""
    found = Platforms(
        TopGateway(app_key=TOP_KEY, app_secret=TOP_SECRET, session=TOP_SESSION),
        JosGateway(app_key=JOS_KEY, app_secret=JOS_SECRET, access_token=JOS_TOKEN),
        DouyinShop(app_key=DY_KEY, app_secret=DY_SECRET, access_token=DY_TOKEN),
    )
    for sim in (found.top, found.jos, found.douyin):
        await sim.start()
    yield found
    for sim in (found.top, found.jos, found.douyin):
        await sim.stop()


def tea_garden_settings(
    database_url: str, p: Platforms, *, top_secret: str = TOP_SECRET
) -> Settings:
    pacing = {"debounce": 0.05, "max_wait": 0.5, "rate": 100, "burst": 10}
    return settings_from_mapping(
        {
            "database_url": database_url,
            "channels": [
                {
                    "id": "tmall",
                    "kind": "taobao",
                    "app_key": TOP_KEY,
                    "app_secret": top_secret,
                    "session": TOP_SESSION,
                    "sign_method": "hmac-sha256",
                    "gateway": p.top.url,
                    "stock_publishing": {
                        "items": {TEA: {"num_iid": NUM_IID, "sku_id": TB_SKU_ID}},
                        **pacing,
                    },
                },
                {
                    "id": "jd-pop",
                    "kind": "jd",
                    "app_key": JOS_KEY,
                    "app_secret": JOS_SECRET,
                    "access_token": JOS_TOKEN,
                    "gateway": p.jos.url,
                    "stock_publishing": {
                        "locations": ["beijing-dc"],
                        "items": {TEA: int(JD_SKU_ID)},
                        **pacing,
                    },
                },
                {
                    "id": "doudian",
                    "kind": "douyin",
                    "app_key": DY_KEY,
                    "app_secret": DY_SECRET,
                    "access_token": DY_TOKEN,
                    "gateway": p.douyin.url,
                    "stock_publishing": {"ratio": "0.5", "items": {TEA: int(DY_SKU_ID)}, **pacing},
                },
            ],
            "api_keys": [
                {"id": "wms", "key": WMS_KEY, "scopes": ["inventory:read", "inventory:write"]},
                {"id": "shop", "key": SHOP_KEY, "scopes": ["orders:read", "orders:write"]},
            ],
            "locations": [
                {"id": "hangzhou-dc", "kind": "warehouse", "region": "cn-east", "priority": 1},
                {"id": "beijing-dc", "kind": "warehouse", "region": "cn-north", "priority": 2},
            ],
            "inventory": {"expiry_interval": 3600, "publish_poll_interval": 0.05},
        },
        env={},
    )


@dataclass
class TeaGarden:
    hub: Hub
    wms: httpx.AsyncClient
    shop: httpx.AsyncClient
    platforms: Platforms

    def tmall(self) -> int | None:
        return self.platforms.top.latest_stock(TMALL_ITEM)

    def jd(self) -> int | None:
        return self.platforms.jos.latest_stock(JD_SKU_ID)

    def douyin(self) -> int | None:
        return self.platforms.douyin.latest_stock(DY_SKU_ID)

    def pushes(self, channel: str, outcome: str) -> float:
        value = self.hub.metrics.registry.get_sample_value(
            "ordersync_stock_pushes_total", {"channel": channel, "outcome": outcome}
        )
        return value or 0.0


Opener = Callable[..., Awaitable[TeaGarden]]


@pytest.fixture
def open_tea_garden(
    start_hub: HubStarter, database_url: str, client_for: ClientFactory, platforms: Platforms
) -> Opener:
    async def start(**kw: Any) -> TeaGarden:
        hub = await start_hub(tea_garden_settings(database_url, platforms, **kw))
        return TeaGarden(hub, client_for(hub, WMS_KEY), client_for(hub, SHOP_KEY), platforms)

    return start


async def count(wms: httpx.AsyncClient, location: str, on_hand: int, key: str) -> None:
    response = await wms.put(
        f"/v1/inventory/{TEA}",
        json={"location_id": location, "on_hand": on_hand},
        headers={"Idempotency-Key": key},
    )
    assert response.status_code == 200, response.text


def tea_order(external_id: str, quantity: int) -> dict[str, Any]:
    return {
        "channel_id": "web",
        "external_id": external_id,
        "currency": "CNY",
        "totals": {"total": f"{88 * quantity}.00"},
        "lines": [
            {"sku": TEA, "name": "西湖龙井 250g", "quantity": quantity, "unit_price": "88.00"}
        ],
    }


async def test_a_stock_change_reaches_taobao_jd_and_douyin_with_each_channels_ats(
    open_tea_garden: Opener, eventually: Eventually
) -> None:
    """WMS counts, then an order for 3: each platform's simulator takes a signed stock
    update with that channel's ATS (Tmall all stock, JD Beijing only, Douyin half)."""
    t = await open_tea_garden()
    await count(t.wms, "hangzhou-dc", 10, "wms-tea-1")
    await count(t.wms, "beijing-dc", 4, "wms-tea-2")
    await eventually(
        lambda: t.tmall() == 14 and t.jd() == 4 and t.douyin() == 7, "the counts published"
    )

    jd_before = len(t.platforms.jos.stock_records)  # 0 then 4, or just 4: as polls fall

    created = await t.shop.post("/v1/orders", json=tea_order("WEB-CN-1", 3))
    assert created.status_code == 201, created.text
    await eventually(lambda: t.tmall() == 11 and t.douyin() == 5, "the reservation published")

    assert t.tmall() == 11  # 14 - 3, every location
    assert t.jd() == 4  # Beijing only: the reservation came from Hangzhou
    assert t.douyin() == 5  # half of 11, rounded down
    assert len(t.platforms.jos.stock_records) == jd_before  # JD's ATS unchanged: not re-sent
    assert (t.platforms.top.forged, t.platforms.jos.forged, t.platforms.douyin.forged) == (0, 0, 0)
    # The simulators record a push before answering; the hub counts it on the answer.
    await eventually(
        lambda: (
            t.pushes("tmall", "pushed") == len(t.platforms.top.stock_records)
            and t.pushes("jd-pop", "pushed") == jd_before
            and t.pushes("doudian", "pushed") == len(t.platforms.douyin.stock_records)
        ),
        "every push counted",
    )
    assert t.pushes("tmall", "pushed") >= 2  # the counts, then the reservation
    assert t.pushes("doudian", "rejected") == 0


async def test_a_throttled_push_is_retried_until_it_lands(
    open_tea_garden: Opener, eventually: Eventually
) -> None:
    """TOP answers "App Call Limited" twice: the publisher retries and the level lands."""
    t = await open_tea_garden()
    t.platforms.top.throttle_next = 2
    await count(t.wms, "hangzhou-dc", 6, "wms-tea-throttle")

    await eventually(lambda: t.tmall() == 6, "the throttled count published")
    await eventually(lambda: t.pushes("tmall", "pushed") == 1, "the push counted")

    assert t.pushes("tmall", "failed") == 2
    assert t.pushes("tmall", "pushed") == 1
    assert t.pushes("tmall", "rejected") == 0


async def test_a_push_refused_for_its_signature_is_counted_and_keeps_its_marker(
    open_tea_garden: Opener, eventually: Eventually, query: Query
) -> None:
    """A Tmall channel configured with the wrong app secret: TOP refuses the signature,
    nothing is recorded there, the refusal is counted as permanent (not as a retryable
    failure), and the SKU's marker stays for a later attempt; the other channels publish."""
    t = await open_tea_garden(top_secret="not_the_app_secret")
    await count(t.wms, "hangzhou-dc", 5, "wms-tea-forged")

    await eventually(lambda: t.pushes("tmall", "rejected") >= 1 and t.douyin() == 2, "the refusal")

    assert t.platforms.top.forged >= 1
    assert t.platforms.top.stock_records == []
    assert t.pushes("tmall", "failed") == 0  # permanent: not retried at once
    assert await query(t.hub, "SELECT sku FROM stock_dirty") == [(TEA,)]
