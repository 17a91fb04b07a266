"""Douyin message pushes lead to orders: a verified trade message makes the hub fetch the
order's detail (`order.orderDetail`) from the shop and ingest it under the message's id.
Over loopback HTTP, into a real hub on a SQLite file."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ordersync.adapters.channels.douyin import event_sign
from ordersync.simulators.douyin_shop import DouyinShop
from ordersync.testing.pull_rig import RigFactory, pull_rigs

from .test_channel_round_trips import (
    DY_KEY,
    DY_SECRET,
    DY_TOKEN,
    T0,
    Rig,
    douyin_channel,
    serve_hub,
)


@pytest.fixture
async def rig_for(tmp_path: Path) -> AsyncIterator[RigFactory]:
    async with pull_rigs(f"sqlite:///{tmp_path}/hub.db", start=T0, rig_class=Rig) as make:
        yield make


@pytest.fixture
async def shop() -> AsyncIterator[DouyinShop]:
    """A Douyin shop open API on loopback checking every sign."""
    made = DouyinShop(app_key=DY_KEY, app_secret=DY_SECRET, access_token=DY_TOKEN)
    await made.start()
    yield made
    await made.stop()


class Pusher:
    """The platform's message service, posting to the hub's webhook URL."""

    def __init__(self, shop: DouyinShop, url: str) -> None:
        self.shop, self.url = shop, url

    async def send(
        self, tag: str, order: dict[str, Any], *, msg_id: str | None = None, secret: str = DY_SECRET
    ) -> httpx.Response:
        body = self.shop.message_body(tag, order, msg_id=msg_id)
        headers = {
            "content-type": "application/json",
            "app-id": DY_KEY,
            "event-sign": event_sign(DY_KEY, secret, body),
        }
        async with httpx.AsyncClient() as client:
            return await client.post(self.url, content=body, headers=headers)


@pytest.fixture
async def hub_and_pusher(
    rig_for: RigFactory, shop: DouyinShop
) -> AsyncIterator[tuple[Rig, Pusher]]:
    rig = await rig_for(douyin_channel(shop.url))
    assert isinstance(rig, Rig)
    server, serving, port = await serve_hub(rig.hub)
    try:
        yield rig, Pusher(shop, f"http://127.0.0.1:{port}/v1/channels/douyin-shop/webhooks")
    finally:
        server.should_exit = True
        await serving


async def test_a_paid_message_fetches_the_order_and_creates_it(
    hub_and_pusher: tuple[Rig, Pusher], shop: DouyinShop
) -> None:
    """Tag 101 names the order; its detail is fetched, mapped (fen as yuan) and stored."""
    rig, pusher = hub_and_pusher
    order = shop.create(status=2)

    answer = await pusher.send("101", order, msg_id="dy-msg-paid")

    assert answer.status_code == 200
    assert answer.json()["code"] == 0
    assert answer.json()["outcome"] == "created"
    stored = await rig.orders("douyin-shop")
    status, payment, doc = stored[order["order_id"]]
    assert (status, payment) == ("paid", "paid")
    assert doc["totals"]["total"] == "169.70"
    assert await rig.inbox("douyin-shop") == [("dy-msg-paid", "created")]


async def test_a_later_message_moves_the_order_on(
    hub_and_pusher: tuple[Rig, Pusher], shop: DouyinShop
) -> None:
    """Paid, then shipped (tag 102), then finished (tag 103): the order follows."""
    rig, pusher = hub_and_pusher
    order = shop.create(status=2)
    await pusher.send("101", order)

    shop.update(order["order_id"], order_status=3, ship_time=order["update_time"] + 60)
    shipped = await pusher.send("102", shop.orders[order["order_id"]])
    after_ship = (await rig.orders("douyin-shop"))[order["order_id"]][:2]
    shop.update(order["order_id"], order_status=5)
    finished = await pusher.send("103", shop.orders[order["order_id"]])

    assert (shipped.json()["outcome"], finished.json()["outcome"]) == ("updated", "updated")
    assert after_ship == ("shipped", "paid")
    assert (await rig.orders("douyin-shop"))[order["order_id"]][:2] == ("completed", "paid")


async def test_a_repeated_message_is_applied_once(
    hub_and_pusher: tuple[Rig, Pusher], shop: DouyinShop
) -> None:
    """The same msg_id again is a duplicate, even if the order changed in between."""
    rig, pusher = hub_and_pusher
    order = shop.create(status=2)
    first = await pusher.send("101", order, msg_id="dy-msg-7")
    shop.update(order["order_id"], order_status=4)  # cancelled since

    again = await pusher.send("101", order, msg_id="dy-msg-7")

    assert (first.json()["outcome"], again.json()["outcome"]) == ("created", "duplicate")
    assert (await rig.orders("douyin-shop"))[order["order_id"]][:2] == ("paid", "paid")
    assert await rig.inbox("douyin-shop") == [("dy-msg-7", "created")]


async def test_a_forged_push_is_refused_and_fetches_nothing(
    hub_and_pusher: tuple[Rig, Pusher], shop: DouyinShop
) -> None:
    """A wrong event-sign: 401 problem, no call to the shop, no order, no inbox record."""
    rig, pusher = hub_and_pusher
    order = shop.create(status=2)

    answer = await pusher.send("101", order, secret="guessed-secret")

    assert answer.status_code == 401
    assert answer.json()["type"].endswith("/invalid_signature")
    assert shop.calls == 0
    assert await rig.orders("douyin-shop") == {}
    assert await rig.inbox("douyin-shop") == []


async def test_when_the_shop_api_fails_nothing_is_recorded_and_a_retry_succeeds(
    hub_and_pusher: tuple[Rig, Pusher], shop: DouyinShop
) -> None:
    """A throttled detail call answers 503 and stores nothing, so the platform's retry of
    the same message still creates the order."""
    rig, pusher = hub_and_pusher
    order = shop.create(status=2)
    shop.throttle_next = 1

    refused = await pusher.send("101", order, msg_id="dy-msg-9")
    inbox_after_refusal = await rig.inbox("douyin-shop")
    retried = await pusher.send("101", order, msg_id="dy-msg-9")

    assert refused.status_code == 503
    assert refused.json()["type"].endswith("/order_fetch_throttled")
    assert inbox_after_refusal == []
    assert retried.json()["outcome"] == "created"


async def test_an_order_closed_after_shipping_is_refunded_not_cancelled(
    hub_and_pusher: tuple[Rig, Pusher], shop: DouyinShop
) -> None:
    """Shipped, then closed (status 4, ship_time set): refunded, still shipped."""
    rig, pusher = hub_and_pusher
    order = shop.create(status=3)
    shop.update(order["order_id"], ship_time=order["update_time"])
    await pusher.send("102", shop.orders[order["order_id"]])

    shop.update(order["order_id"], order_status=4)
    closed = await pusher.send("106", shop.orders[order["order_id"]])

    assert closed.json()["outcome"] == "updated"
    assert (await rig.orders("douyin-shop"))[order["order_id"]][:2] == ("shipped", "refunded")


async def test_messages_that_name_no_order_are_only_recorded(
    hub_and_pusher: tuple[Rig, Pusher], shop: DouyinShop
) -> None:
    """A product message (tag 400) has no p_id to fetch: recorded, nothing fetched."""
    rig, pusher = hub_and_pusher
    body = json.dumps(
        [{"tag": "400", "msg_id": "dy-msg-product", "data": json.dumps({"product_id": 36})}]
    ).encode()
    headers = {"app-id": DY_KEY, "event-sign": event_sign(DY_KEY, DY_SECRET, body)}

    async with httpx.AsyncClient() as client:
        answer = await client.post(pusher.url, content=body, headers=headers)

    assert answer.status_code == 200
    assert shop.calls == 0
    assert await rig.inbox("douyin-shop") == [("dy-msg-product", "ignored")]
