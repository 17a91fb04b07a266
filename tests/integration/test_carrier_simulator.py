"""The carrier simulator over loopback HTTP: book a waybill and subscribe in each carrier's
format, then receive its signed pushes (full snapshots, out of order, replayed, forged)
through the connectors, and end with the parcel delivered."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import pytest
from aiohttp import web

from ordersync.adapters.carriers.base import (
    Booking,
    CallbackRejected,
    CarrierAccount,
    CarrierConnector,
    CarrierError,
    CarrierRequest,
    CarrierResponse,
    Item,
    Party,
    connector_for,
)
from ordersync.domain.shipments import Shipment, ShipmentStatus
from ordersync.simulators.carriers import SAMPLE_JOURNEYS, CarrierSimulator, KdniaoAccount

S = ShipmentStatus
BOOKED = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
H = timedelta(hours=1)

JOURNEYS = SAMPLE_JOURNEYS
CARRIER_CODES = {"kdniao": "SF", "kuaidi100": "yuantong", "generic": "PostCH"}


@dataclass
class Hub:
    """A stand-in for the hub's callback endpoint: verify, parse, merge, answer."""

    accounts: dict[str, CarrierAccount]
    shipments: dict[str, Shipment] = field(default_factory=dict)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    base_url: str = ""

    async def callback(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        account = self.accounts[kind]
        connector = connector_for(kind)
        body = await request.read()
        try:
            updates = connector.parse_callback(account, body, dict(request.headers))
        except CallbackRejected as e:
            self.rejected.append((kind, e.code))
            return web.json_response({"error": e.code}, status=e.status)
        for update in updates:
            self.shipments[update.tracking_number].apply(update)
        ack = connector.ack(account)
        return web.Response(status=ack.status, body=ack.body, content_type=ack.content_type)


async def send(session: aiohttp.ClientSession, request: CarrierRequest) -> CarrierResponse:
    async with session.request(
        request.method, request.url, data=request.body, headers=dict(request.headers)
    ) as response:
        return CarrierResponse(response.status, dict(response.headers), await response.read())


World = tuple[CarrierSimulator, Hub, aiohttp.ClientSession]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    sim = CarrierSimulator(clock=lambda: BOOKED)
    await sim.start()
    hub = Hub(
        {
            "kdniao": CarrierAccount(
                "kdn",
                "kdniao",
                sim.endpoint("kdniao"),
                {"ebusiness_id": sim.kdniao.ebusiness_id, "app_key": sim.kdniao.app_key},
            ),
            "kuaidi100": CarrierAccount(
                "kd100",
                "kuaidi100",
                sim.endpoint("kuaidi100"),
                {"key": sim.kuaidi100.key, "secret": sim.kuaidi100.secret, "salt": "our-salt-77"},
            ),
            "generic": CarrierAccount(
                "ezp",
                "generic",
                sim.endpoint("generic"),
                {"api_key": sim.generic.api_key, "webhook_secret": sim.generic.webhook_secret},
            ),
        }
    )
    app = web.Application()
    app.router.add_post("/v1/carriers/{kind}/callbacks", hub.callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    hub.base_url = f"http://{host}:{port}"
    async with aiohttp.ClientSession() as session:
        yield sim, hub, session
    await runner.cleanup()
    await sim.stop()


def booking(kind: str) -> Booking:
    return Booking(
        order_id=f"ORD-{kind}",
        carrier_code=CARRIER_CODES[kind],
        sender=Party("茶馆仓库", "13800000000", "浙江省", "杭州市", "西湖区", "龙井路 1 号"),
        recipient=Party("张三", "13900000000", "湖南省", "长沙市", "天心区", "金盆岭 8 栋"),
        items=(Item("龙井茶", 2, Decimal("0.25")),),
        weight_kg=Decimal("0.6"),
    )


async def book_and_subscribe(
    kind: str, sim: CarrierSimulator, hub: Hub, session: aiohttp.ClientSession
) -> tuple[CarrierConnector, str]:
    connector = connector_for(kind)
    account = hub.accounts[kind]
    order = booking(kind)
    result = connector.parse_booking_response(
        order, await send(session, connector.build_booking_request(account, order))
    )
    number = result.tracking_number
    hub.shipments[number] = Shipment(
        f"shp-{kind}",
        account.carrier_id,
        number,
        booked_at=BOOKED,
        carrier_code=result.carrier_code,
    )
    callback_url = f"{hub.base_url}/v1/carriers/{kind}/callbacks"
    connector.parse_subscription_response(
        await send(
            session,
            connector.build_subscription_request(
                account, number, result.carrier_code, callback_url
            ),
        )
    )
    if kind != "kuaidi100":  # Kdniao and EasyPost-style push URLs are set in the console
        sim.push_url = callback_url
    return connector, number


@pytest.mark.parametrize("kind", ["kdniao", "kuaidi100", "generic"])
async def test_book_subscribe_and_track_to_delivered_through_signed_pushes(
    kind: str, world: World
) -> None:
    """Each push is a growing full snapshot; the hub acks in the carrier's format each time."""
    sim, hub, session = world
    _, number = await book_and_subscribe(kind, sim, hub, session)
    assert sim.parcels[number].subscribed
    statuses = []
    for hours, code, text, place in JOURNEYS[kind]:
        sim.add_trace(number, code, text, BOOKED + hours * H, place)
        answer = await sim.push(number, url=f"{hub.base_url}/v1/carriers/{kind}/callbacks")
        assert answer.status == 200
        statuses.append(hub.shipments[number].status)
        if kind == "kdniao":
            assert answer.json()["Success"] is True
            assert answer.json()["EBusinessID"] == sim.kdniao.ebusiness_id
        elif kind == "kuaidi100":
            assert answer.json() == {"result": True, "returnCode": "200", "message": "成功"}
    assert statuses[-1] is S.DELIVERED
    shipment = hub.shipments[number]
    assert [e.raw_code for e in shipment.events] == [c for _, c, _, _ in JOURNEYS[kind]]
    assert shipment.events[0].raw_text == JOURNEYS[kind][0][2]
    assert hub.rejected == []


@pytest.mark.parametrize("kind", ["kdniao", "kuaidi100", "generic"])
async def test_out_of_order_and_replayed_pushes_converge_on_delivered(
    kind: str, world: World
) -> None:
    """Single-trace pushes newest first, then a stale snapshot, then a replay: delivered."""
    sim, hub, session = world
    _, number = await book_and_subscribe(kind, sim, hub, session)
    traces = [sim.add_trace(number, c, t, BOOKED + h * H, p) for h, c, t, p in JOURNEYS[kind]]
    for trace in reversed(traces):
        assert (await sim.push(number, [trace])).status == 200
        assert hub.shipments[number].status is S.DELIVERED
    assert (await sim.push(number, traces[:2])).status == 200  # a stale snapshot
    body, headers = sim.push_body(number)
    for _ in range(2):  # the same signed body delivered twice
        url = f"{hub.base_url}/v1/carriers/{kind}/callbacks"
        async with session.post(url, data=body, headers=headers) as replay:
            assert replay.status == 200
    shipment = hub.shipments[number]
    assert shipment.status is S.DELIVERED
    assert len(shipment.events) == len(traces)


@pytest.mark.parametrize("kind", ["kdniao", "kuaidi100", "generic"])
async def test_a_push_signed_with_the_wrong_secret_is_refused(kind: str, world: World) -> None:
    """A forger without our secret gets a 401 and changes nothing."""
    sim, hub, session = world
    _, number = await book_and_subscribe(kind, sim, hub, session)
    sim.add_trace(number, JOURNEYS[kind][-1][1], "forged delivery", BOOKED + 3 * H)
    if kind == "kdniao":
        sim.kdniao = KdniaoAccount(sim.kdniao.ebusiness_id, "stolen-guess")
    elif kind == "kuaidi100":
        sim.parcels[number].salt = "guess"
    else:
        sim.generic = type(sim.generic)(sim.generic.api_key, "guess")
    answer = await sim.push(number, url=f"{hub.base_url}/v1/carriers/{kind}/callbacks")
    assert answer.status == 401
    assert hub.rejected == [(kind, "signature_invalid")]
    assert hub.shipments[number].status is S.PENDING


async def test_kuaidi100_pushes_a_carrier_correction(world: World) -> None:
    """autoCheck with comOld/comNew reaches the shipment as a correction."""
    sim, hub, session = world
    _, number = await book_and_subscribe("kuaidi100", sim, hub, session)
    sim.add_trace(number, "103", "已揽收", BOOKED + 2 * H)
    answer = await sim.push(number, correction=("yuantong", "yunda"))
    assert answer.status == 200
    shipment = hub.shipments[number]
    assert shipment.carrier_code == "yunda"
    assert [(c.field, c.old, c.new) for c in shipment.corrections] == [
        ("carrier_code", "yuantong", "yunda")
    ]


async def test_the_simulator_refuses_badly_signed_bookings_and_subscriptions(world: World) -> None:
    """Wrong AppKey, wrong Kuaidi100 secret or key, wrong API key: each carrier says no."""
    sim, _, session = world
    for kind, creds in [
        ("kdniao", {"ebusiness_id": sim.kdniao.ebusiness_id, "app_key": "wrong"}),
        ("kuaidi100", {"key": sim.kuaidi100.key, "secret": "wrong", "salt": "s"}),
        ("generic", {"api_key": "wrong", "webhook_secret": "s"}),
    ]:
        account = CarrierAccount("x", kind, sim.endpoint(kind), creds)
        connector = connector_for(kind)
        response = await send(session, connector.build_booking_request(account, booking(kind)))
        with pytest.raises(CarrierError):
            connector.parse_booking_response(booking(kind), response)
    bad_key = CarrierAccount(
        "x", "kuaidi100", sim.endpoint("kuaidi100"), {"key": "nope", "salt": "s"}
    )
    kd100 = connector_for("kuaidi100")
    response = await send(
        session, kd100.build_subscription_request(bad_key, "YT1", "yuantong", "http://x")
    )
    with pytest.raises(CarrierError, match="600"):
        kd100.parse_subscription_response(response)
    assert [r for r, _ in sim.rejected] == [
        "kdniao",
        "kuaidi100/order",
        "generic/shipments",
        "kuaidi100/poll",
    ]
    assert json.loads(response.body)["returnCode"] == "600"
