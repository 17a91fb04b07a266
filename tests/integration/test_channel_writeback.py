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
from ordersync.config import (
    CarrierConfig,
    ChannelConfig,
    DouyinChannel,
    ShopifyChannel,
    TaobaoChannel,
    settings_from_mapping,
)
from ordersync.simulators.carriers import CarrierSimulator
from ordersync.simulators.douyin_shop import DouyinShop
from ordersync.simulators.douyin_shop import make_order as make_douyin_order
from ordersync.simulators.jd_jos import JosGateway
from ordersync.simulators.server import LoopbackServer
from ordersync.simulators.shopify_admin import ShopifyAdmin
from ordersync.simulators.taobao_top import TopGateway, make_trade
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


async def book(w: World, order_id: str, **body: Any) -> dict[str, Any]:
    """Book a shipment of the order with the carrier (`body`: a parcel's lines, or the
    shipment it replaces); the booking."""
    response = await w.api.post(
        f"/v1/orders/{order_id}/shipments", json={"carrier_id": CARRIER_ID, **body}
    )
    assert response.status_code == 201, response.text
    booked: dict[str, Any] = response.json()
    return booked


async def ship_an_order(w: World, settle: Settle) -> tuple[str, str, dict[str, Any]]:
    """An order of the channel booked with the carrier, its deliveries settled: (hub id,
    platform id, the booking)."""
    order_id, external_id = await channel_order(w)
    booked = await book(w, order_id)
    await settle(w.api)
    return order_id, external_id, booked


def written_back(w: World, external_id: str, booked: dict[str, Any]) -> list[WriteBack]:
    """What the platform records when the booking is written back once."""
    return [WriteBack(external_id, COMPANY[w.platform.kind], booked["tracking_number"])]


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

    order_id, external_id, booked = await ship_an_order(w, settle)

    assert w.platform.desk.received == written_back(w, external_id, booked)
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

    order_id, external_id, booked = await ship_an_order(w, settle)

    assert w.platform.desk.received == written_back(w, external_id, booked)
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

    order_id, external_id, booked = await ship_an_order(w, settle)
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
    assert w.platform.desk.received == written_back(w, external_id, booked)


# ---- the hard cases: a lost answer, a waybill from elsewhere ----------------------------


@pytest.mark.parametrize("kind", ["taobao", "jd", "douyin", "shopify"])
async def test_a_write_back_whose_answer_was_lost_succeeds_on_retry(
    kind: str, start_world: StartWorld, settle: Settle
) -> None:
    """The platform shipped the order but its answer never arrived: the retry is refused as
    already shipped, finds our waybill recorded there, and counts as done (once)."""
    w = await start_world(kind)
    w.platform.desk.lose_next = 1

    order_id, external_id, booked = await ship_an_order(w, settle)

    assert w.platform.desk.received == written_back(w, external_id, booked)
    [delivery] = await writeback_deliveries(w, order_id)
    assert (delivery["state"], delivery["attempts"]) == ("succeeded", 2)


@pytest.mark.parametrize("kind", ["taobao", "jd", "douyin"])
async def test_an_order_shipped_outside_the_hub_is_dead_lettered_naming_both_waybills(
    kind: str, start_world: StartWorld, settle: Settle
) -> None:
    """The merchant shipped it in the platform's backend with another waybill: not ours, so
    not a success, and no retry will change that; the error names both numbers."""
    w = await start_world(kind)
    order_id, external_id = await channel_order(w)
    ship_elsewhere(w.platform, external_id, "ZT7300000001")

    booked = await book(w, order_id)
    await settle(w.api)

    [dead] = await writeback_deliveries(w, order_id)
    assert (dead["state"], dead["attempts"]) == ("dead", 1)
    assert "already shipped with waybill ZT7300000001" in dead["last_error"]
    assert f"not ours ({booked['tracking_number']})" in dead["last_error"]
    assert w.platform.desk.received == []


def ship_elsewhere(p: Platform, external_id: str, waybill: str) -> None:
    sim = p.sim
    if isinstance(sim, TopGateway | JosGateway):
        sim.ship_elsewhere(int(external_id), waybill)
    else:
        assert isinstance(sim, DouyinShop)
        sim.ship_elsewhere(external_id, waybill)


# ---- parcels and re-bookings -----------------------------------------------------------
#
# Booked through the API: a parcel names its lines (the platform's line ids), the last one
# takes what is left and completes the order; a re-booking names the shipment it replaces.


async def two_line_hub_order(w: World, external_id: str, lines: list[tuple[str, int, str]]) -> str:
    """The platform's two-line order in the hub, each line with its id on the platform."""
    body = matcha_order(
        external_id,
        channel_id=w.channel_id,
        lines=[
            {"external_id": line_id, "sku": sku, "quantity": qty, "unit_price": "12.00"}
            for line_id, qty, sku in lines
        ],
    )
    body["totals"] = {"subtotal": "36.00", "total": "36.00"}
    order_id: str = (await create(w.api, body))["id"]
    return order_id


def two_line_order(p: Platform) -> tuple[str, list[tuple[str, int, str]]]:
    """An order of two lines on the platform: its id, and (line id, quantity, sku) each."""
    sim = p.sim
    if isinstance(sim, ShopifyAdmin):
        order = sim.create(
            line_items=[
                {"id": 7001, "sku": "BLUE-TEAPOT", "quantity": 1},
                {"id": 7002, "sku": "MATCHA-WHISK", "quantity": 2},
            ]
        )
        return str(order["id"]), [("7001", 1, "BLUE-TEAPOT"), ("7002", 2, "MATCHA-WHISK")]
    if isinstance(sim, TopGateway):
        tid = 4_611_686_018_427_390_001
        subs = [
            {"oid": tid + 1, "num": 1, "payment": "88.00", "outer_sku_id": "BLUE-TEAPOT"},
            {"oid": tid + 2, "num": 2, "payment": "24.00", "outer_sku_id": "MATCHA-WHISK"},
        ]
        sim.put(make_trade(tid, BOOKED, subs=subs))
        return str(tid), [(str(tid + 1), 1, "BLUE-TEAPOT"), (str(tid + 2), 2, "MATCHA-WHISK")]
    if isinstance(sim, DouyinShop):
        oid = 6_920_000_000_000_090_001
        skus = [
            {"order_id": str(oid + 1), "code": "BLUE-TEAPOT", "item_num": 1, "pay_amount": 8800},
            {"order_id": str(oid + 2), "code": "MATCHA-WHISK", "item_num": 2, "pay_amount": 2400},
        ]
        sim.put(make_douyin_order(oid, BOOKED, skus=skus))
        return str(oid), [(str(oid + 1), 1, "BLUE-TEAPOT"), (str(oid + 2), 2, "MATCHA-WHISK")]
    if isinstance(sim, WooStore):
        order = sim.create(
            lines=[
                ("BLUE-TEAPOT", "Blue teapot", 1, "88.00"),
                ("MATCHA-WHISK", "Matcha whisk", 2, "12.00"),
            ]
        )
        ids = [str(li["id"]) for li in order["line_items"]]
        return str(order["id"]), [(ids[0], 1, "BLUE-TEAPOT"), (ids[1], 2, "MATCHA-WHISK")]
    assert isinstance(sim, JosGateway)
    return p.new_order(), [("100012043978", 1, "BLUE-TEAPOT"), ("100012043979", 2, "MATCHA-WHISK")]


@pytest.mark.parametrize("kind", KINDS)
async def test_each_parcel_of_a_split_order_is_written_back_with_its_lines(
    kind: str, start_world: StartWorld, settle: Settle
) -> None:
    """Two parcels, one line each: Shopify fulfils the line items, TOP consigns the
    sub-order (is_split), Douyin ships the sku order as one pack, WooCommerce notes each
    parcel and completes the order with the last; JOS, which ships whole orders only,
    hears once, from the parcel that completes the order."""
    w = await start_world(kind)
    external_id, lines = two_line_order(w.platform)
    order_id = await two_line_hub_order(w, external_id, lines)
    line_id, qty, _ = lines[0]

    first = await book(w, order_id, lines=[{"external_id": line_id, "quantity": qty}])
    last = await book(w, order_id)  # the rest: the second line, completing the order
    await settle(w.api)

    assert (first["completes_order"], last["completes_order"]) == (False, True)
    parcels = [(first["tracking_number"], lines[0]), (last["tracking_number"], lines[1])]

    company = COMPANY[kind]
    deliveries = await writeback_deliveries(w, order_id)
    assert [d["state"] for d in deliveries] == ["succeeded", "succeeded"]
    received = w.platform.desk.received
    if kind == "jd":
        assert received == [WriteBack(external_id, company, last["tracking_number"])]
    elif kind == "woocommerce":
        assert [r.tracking_number for r in received] == [n for n, _ in parcels]
        assert isinstance(w.platform.sim, WooStore)
        notes = [n["note"] for n in w.platform.sim.notes[int(external_id)]]
        assert notes[0] == (
            f"Shipped via SF Express, tracking number {first['tracking_number']}: 1 × BLUE-TEAPOT"
        )
        assert w.platform.sim.orders[int(external_id)]["status"] == "completed"
    else:
        assert received == [
            WriteBack(external_id, company, number, ((line_id, qty),))
            for number, (line_id, qty, _) in parcels
        ]
    assert shipped_in_full(w.platform, external_id)


def shipped_in_full(p: Platform, external_id: str) -> bool:
    sim = p.sim
    if isinstance(sim, ShopifyAdmin):
        return int(external_id) in sim.fulfilled
    if isinstance(sim, TopGateway):
        return bool(sim.trades[int(external_id)]["status"] == "WAIT_BUYER_CONFIRM_GOODS")
    if isinstance(sim, DouyinShop):
        return bool(sim.orders[external_id]["order_status"] == 3)
    if isinstance(sim, JosGateway):
        return bool(sim.orders[int(external_id)]["orderState"] == "WAIT_GOODS_RECEIVE_CONFIRM")
    assert isinstance(sim, WooStore)
    return bool(sim.orders[int(external_id)]["status"] == "completed")


@pytest.mark.parametrize("kind", ["shopify", "woocommerce", "taobao", "douyin"])
async def test_a_re_booking_updates_the_tracking_number_on_the_platform(
    kind: str, start_world: StartWorld, settle: Settle
) -> None:
    """Written back with the first waybill, then re-booked: Shopify updates the
    fulfillment's tracking, TOP resends the consignment, Douyin edits the logistics,
    WooCommerce gets a new note; nothing is shipped twice."""
    w = await start_world(kind)
    order_id, external_id, first = await ship_an_order(w, settle)

    again = await book(w, order_id, replaces=first["id"])
    await settle(w.api)

    company = COMPANY[kind]
    assert again["replaces"][0]["tracking_number"] == first["tracking_number"]
    assert w.platform.desk.updated == [WriteBack(external_id, company, again["tracking_number"])]
    assert [d["state"] for d in await writeback_deliveries(w, order_id)] == [
        "succeeded",
        "succeeded",
    ]
    if kind != "woocommerce":  # there the new note is the record
        assert w.platform.desk.received == [
            WriteBack(external_id, company, first["tracking_number"])
        ]
    assert recorded_waybills(w.platform, external_id) == [again["tracking_number"]]


def recorded_waybills(p: Platform, external_id: str) -> list[str]:
    sim = p.sim
    if isinstance(sim, ShopifyAdmin):
        return [f["tracking_number"] for f in sim.fulfillments[int(external_id)]]
    if isinstance(sim, TopGateway):
        return [s["out_sid"] for s in sim.shippings[int(external_id)]]
    if isinstance(sim, DouyinShop):
        return [i["tracking_no"] for i in sim.orders[external_id]["logistics_info"]]
    assert isinstance(sim, WooStore)
    notes = sim.notes[int(external_id)]
    return [n["note"].split("tracking number ")[1].split(" ")[0] for n in notes[-1:]]


async def test_a_re_booking_on_jd_is_dead_lettered_for_an_operator(
    start_world: StartWorld, settle: Settle
) -> None:
    """JOS has no call to change a shipped order's waybill: said plainly, naming both
    waybills, not retried."""
    w = await start_world("jd")
    order_id, external_id, first = await ship_an_order(w, settle)

    again = await book(w, order_id, replaces=first["id"])
    await settle(w.api)

    states = [(d["state"], d["attempts"]) for d in await writeback_deliveries(w, order_id)]
    assert sorted(states) == [("dead", 1), ("succeeded", 1)]
    [dead] = [d for d in await writeback_deliveries(w, order_id) if d["state"] == "dead"]
    assert "cannot change a shipped order's waybill" in dead["last_error"]
    assert (
        f"waybill {first['tracking_number']}, re-booked as {again['tracking_number']}"
        in dead["last_error"]
    )
    assert w.platform.desk.received == [WriteBack(external_id, "467", first["tracking_number"])]


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


@pytest.mark.parametrize("kind", ["shopify", "taobao", "douyin"])
async def test_a_simulator_refuses_a_forged_tracking_change(kind: str) -> None:
    """The calls that change a shipped order's waybill check credentials like the rest:
    a forged one changes nothing."""
    p = await platform(kind)
    http = WritebackHttp()
    try:
        external_id = p.new_order()
        shipped = wb.Shipped(external_id, "SF1400020001", "SF", "shp_first")
        await converse(
            wb.conversation_for(kind)(channel_config(p), shipped, datetime.now(UTC)), http
        )
        forged = channel_config(p, **FORGERIES[kind])
        rebooked = wb.Shipped(
            external_id, "YT9876543210", "YTO", "shp_new", replaces=("SF1400020001",)
        )
        now = datetime.now(UTC)
        if isinstance(forged, ShopifyChannel):
            request = wb.shopify_update_tracking(forged, rebooked, 255_858_046)
        elif isinstance(forged, TaobaoChannel):
            request = wb.taobao_consign_resend(forged, rebooked, now)
        else:
            assert isinstance(forged, DouyinChannel)
            request = wb.douyin_logistics_edit(forged, rebooked, now)
        answered = await http(request, 5.0)
    finally:
        await http.close()
        await p.sim.stop()

    assert p.desk.received == [WriteBack(external_id, "SF", "SF1400020001")]
    assert p.desk.updated == []
    if kind == "shopify":
        assert answered.status == 401
    else:
        assert getattr(p.sim, "forged", None) == 1
