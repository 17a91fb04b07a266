"""Shipment write-back end to end: a hub on a real database books a waybill with the carrier
simulator, and the delivery engine tells the order's sales channel (each platform's
simulator, over loopback HTTP, checking its own auth and signatures) the carrier and the
tracking number, with retries, dead letters and replay like any delivery."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from ordersync.adapters.channels import writeback as wb
from ordersync.adapters.destinations.channel_writeback import WritebackHttp
from ordersync.bootstrap import Hub, build_hub
from ordersync.config import CarrierConfig, ChannelConfig, settings_from_mapping
from ordersync.simulators.carriers import CarrierSimulator
from ordersync.simulators.douyin_shop import DouyinShop
from ordersync.simulators.jd_jos import JosGateway
from ordersync.simulators.server import LoopbackServer
from ordersync.simulators.shopify_admin import ShopifyAdmin
from ordersync.simulators.taobao_top import TopGateway
from ordersync.simulators.woocommerce_store import WooStore
from ordersync.simulators.writebacks import WriteBack, WritebackDesk

from .conftest import OPS_KEY, ClientFactory, SettingsFactory, Settle
from .test_orders_api import create, matcha_order

BOOKED = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
CARRIER_ID = "kdn-sf"
QUICK = {"retry_schedule": [0.05, 0.05, 0.05], "retry_backoff": None, "timeout": 5}
KINDS = ["shopify", "woocommerce", "taobao", "jd", "douyin"]
# What each platform calls SF Express (the hub's carrier code "SF").
COMPANY = {
    "shopify": "SF Express",
    "woocommerce": "SF Express",
    "taobao": "SF",
    "jd": "467",
    "douyin": "shunfeng",
}


@dataclass
class Platform:
    """One sales platform's simulator, and how the hub is configured to reach it."""

    kind: str
    sim: LoopbackServer
    desk: WritebackDesk
    channel: dict[str, Any]  # the channel's config (without its writeback block)
    new_order: Callable[[], str]  # creates an order on the platform; its id there

    @property
    def channel_id(self) -> str:
        return str(self.channel["id"])


async def platform(kind: str) -> Platform:
    """Start the simulator of `kind` on loopback."""
    if kind == "shopify":
        shop = ShopifyAdmin(access_token="shpat_blue_teapot")
        url = await shop.start()
        channel = {
            "kind": "shopify",
            "secret": "shpss_x",
            "access_token": "shpat_blue_teapot",
            "admin_url": url,
            "api_version": shop.api_version,
        }
        return Platform(kind, shop, shop.writebacks, channel, lambda: str(shop.create()["id"]))
    if kind == "woocommerce":
        woo = WooStore(consumer_key="ck_matcha", consumer_secret="cs_matcha", webhook_secret="wh")
        url = await woo.start()
        channel = {
            "kind": "woocommerce",
            "secret": "wh",
            "store_url": url,
            "consumer_key": "ck_matcha",
            "consumer_secret": "cs_matcha",
        }
        return Platform(kind, woo, woo.writebacks, channel, lambda: str(woo.create()["id"]))
    if kind == "taobao":
        top = TopGateway(app_key="12345678", app_secret="top-secret", session="6100-session")
        await top.start()
        channel = {
            "kind": "taobao",
            "app_key": "12345678",
            "app_secret": "top-secret",
            "session": "6100-session",
            "gateway": top.url,
        }
        return Platform(kind, top, top.writebacks, channel, lambda: str(top.create()["tid"]))
    if kind == "jd":
        jos = JosGateway(app_key="JDKEY01", app_secret="jos-secret", access_token="jd-token")
        await jos.start()
        channel = {
            "kind": "jd",
            "app_key": "JDKEY01",
            "app_secret": "jos-secret",
            "access_token": "jd-token",
            "gateway": jos.url,
        }
        return Platform(kind, jos, jos.writebacks, channel, lambda: str(jos.create()["orderId"]))
    dy = DouyinShop(app_key="7100000000000000001", app_secret="dy-secret", access_token="dy-tok")
    await dy.start()
    channel = {
        "kind": "douyin",
        "app_key": "7100000000000000001",
        "app_secret": "dy-secret",
        "access_token": "dy-tok",
        "gateway": dy.url,
    }
    return Platform(kind, dy, dy.writebacks, channel, lambda: str(dy.create()["order_id"]))


def channel_config(p: Platform, **changes: Any) -> ChannelConfig:
    raw = {
        "id": f"{p.kind}-cn",
        **p.channel,
        "writeback": {"enabled": True, "carrier_codes": {"SF": COMPANY[p.kind]}, **QUICK},
        **changes,
    }
    return settings_from_mapping({"channels": [raw]}, env={}).channels[0]


@dataclass
class World:
    hub: Hub
    api: httpx.AsyncClient
    platform: Platform
    channel_id: str


StartWorld = Callable[[str], Awaitable[World]]


@pytest.fixture
async def carriers() -> AsyncIterator[CarrierSimulator]:
    sim = CarrierSimulator(clock=lambda: BOOKED)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def start_world(
    make_settings: SettingsFactory, client_for: ClientFactory, carriers: CarrierSimulator
) -> AsyncIterator[StartWorld]:
    """`await start_world(kind)`: the platform's simulator, and a hub with the Kdniao
    carrier and a channel of that kind whose write-back is enabled."""
    hubs: list[Hub] = []
    sims: list[LoopbackServer] = []

    async def start(kind: str) -> World:
        p = await platform(kind)
        sims.append(p.sim)
        base = make_settings()
        channel = channel_config(p)
        carrier = CarrierConfig(
            id=CARRIER_ID,
            kind="kdniao",
            endpoint=carriers.endpoint("kdniao"),
            credentials={
                "ebusiness_id": carriers.kdniao.ebusiness_id,
                "app_key": carriers.kdniao.app_key,
            },
            carrier_code="SF",
        )
        settings = base.model_copy(
            update={"channels": [*base.channels, channel], "carriers": [carrier]}
        )
        hub = build_hub(settings)
        await hub.start()
        hubs.append(hub)
        return World(hub, client_for(hub, OPS_KEY), p, channel.id)

    yield start
    for hub in reversed(hubs):
        if hub.running:
            await hub.stop()
    for sim in sims:
        await sim.stop()


async def channel_order(w: World, channel_id: str | None = None) -> tuple[str, str]:
    """An order on the platform, and the same order in the hub: (hub id, platform id)."""
    external_id = w.platform.new_order()
    body = matcha_order(external_id, channel_id=channel_id or w.channel_id)
    return (await create(w.api, body))["id"], external_id


async def book(w: World, order_id: str) -> dict[str, Any]:
    response = await w.api.post(f"/v1/orders/{order_id}/shipments", json={"carrier_id": CARRIER_ID})
    assert response.status_code == 201, response.text
    booked: dict[str, Any] = response.json()
    return booked


async def writeback_deliveries(w: World, order_id: str | None = None) -> list[dict[str, Any]]:
    params = {"destination_id": f"writeback.{w.channel_id}"}
    if order_id is not None:
        params["order_id"] = order_id
    response = await w.api.get("/v1/deliveries", params=params)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows


@pytest.mark.parametrize("kind", KINDS)
async def test_booking_a_shipment_writes_carrier_and_tracking_back_to_the_channel(
    kind: str, start_world: StartWorld, settle: Settle
) -> None:
    """The platform records its own order id, its code for SF Express and the number."""
    w = await start_world(kind)
    order_id, external_id = await channel_order(w)

    booked = await book(w, order_id)
    await settle(w.api)

    assert w.platform.desk.received == [
        WriteBack(external_id, COMPANY[kind], booked["tracking_number"])
    ]
    [delivery] = await writeback_deliveries(w, order_id)
    assert (delivery["event_type"], delivery["state"], delivery["attempts"]) == (
        "shipment.created",
        "succeeded",
        1,
    )


async def test_orders_of_other_channels_are_not_written_back(
    start_world: StartWorld, settle: Settle
) -> None:
    """A till order shipped with the same carrier never reaches the Taobao write-back."""
    w = await start_world("taobao")
    till_order, _ = await channel_order(w, channel_id="pos-berlin")

    await book(w, till_order)
    await settle(w.api)

    assert w.platform.desk.received == []
    assert await writeback_deliveries(w) == []


@pytest.mark.parametrize("kind", ["woocommerce", "shopify", "douyin"])
async def test_a_write_back_the_platform_fails_is_retried_until_it_succeeds(
    kind: str, start_world: StartWorld, settle: Settle
) -> None:
    """Two HTTP 500s, then success: one record on the platform, three attempts (for
    WooCommerce the note made before the failing status update is not added again)."""
    w = await start_world(kind)
    w.platform.desk.fail_next = 2
    order_id, external_id = await channel_order(w)

    booked = await book(w, order_id)
    await settle(w.api)

    assert w.platform.desk.received == [
        WriteBack(external_id, COMPANY[kind], booked["tracking_number"])
    ]
    [delivery] = await writeback_deliveries(w, order_id)
    assert (delivery["state"], delivery["attempts"]) == ("succeeded", 3)
    if isinstance(w.platform.sim, WooStore):
        store = w.platform.sim
        assert len(store.notes[int(external_id)]) == 1
        assert store.orders[int(external_id)]["status"] == "completed"


@pytest.mark.parametrize("kind", ["taobao", "jd"])
async def test_a_write_back_the_platform_refuses_is_dead_lettered_then_replayed(
    kind: str, start_world: StartWorld, settle: Settle
) -> None:
    """A business refusal is not retried: dead at once with the platform's error; once the
    cause is fixed, an operator's replay writes it back."""
    w = await start_world(kind)
    w.platform.desk.refuse = True
    order_id, external_id = await channel_order(w)

    booked = await book(w, order_id)
    await settle(w.api)
    [dead] = await writeback_deliveries(w, order_id)
    w.platform.desk.refuse = False
    replay = await w.api.post(f"/v1/deliveries/{dead['id']}/replay")
    await settle(w.api)
    [replayed] = await writeback_deliveries(w, order_id)

    assert (dead["state"], dead["attempts"]) == ("dead", 1)
    assert ("isv.logistics-offline-service-error" if kind == "taobao" else "10400001") in (
        dead["last_error"]
    )
    assert replay.status_code == 202
    assert replayed["state"] == "succeeded"
    assert w.platform.desk.received == [
        WriteBack(external_id, COMPANY[kind], booked["tracking_number"])
    ]


# ---- the simulators' own checks ------------------------------------------------------------


FORGERIES = {
    "shopify": {"access_token": "shpat_stolen"},
    "woocommerce": {"consumer_secret": "cs_guess"},
    "taobao": {"app_secret": "not-the-secret"},
    "jd": {"app_secret": "not-the-secret"},
    "douyin": {"app_secret": "not-the-secret"},
}


async def converse(talk: wb.Conversation, http: WritebackHttp) -> None:
    """Run a write-back conversation over HTTP to its end (or its WritebackFailed)."""
    request = next(talk)
    while True:
        try:
            request = talk.send(await http(request, 5.0))
        except StopIteration:
            return


@pytest.mark.parametrize("kind", KINDS)
async def test_a_simulator_refuses_a_write_back_with_forged_credentials(kind: str) -> None:
    """Wrong token or signature: refused permanently, nothing recorded."""
    p = await platform(kind)
    http = WritebackHttp()
    try:
        shipped = wb.Shipped(p.new_order(), "SF1400020001", "SF", "shp_forged")
        forged = channel_config(p, **FORGERIES[kind])
        talk = wb.conversation_for(kind)(forged, shipped, datetime.now(UTC))
        with pytest.raises(wb.WritebackFailed) as refused:
            await converse(talk, http)
    finally:
        await http.close()
        await p.sim.stop()

    assert refused.value.retryable is False
    assert p.desk.received == []
    if kind in ("taobao", "jd", "douyin"):
        assert getattr(p.sim, "forged", None) == 1
