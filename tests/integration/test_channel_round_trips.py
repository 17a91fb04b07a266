"""JD, Douyin and generic-mapping channels end to end: pulls from the simulators and pushes
over loopback HTTP into a real hub on a SQLite file."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from ordersync.adapters.channels.generic import sign_body
from ordersync.bootstrap import Hub
from ordersync.entrypoints.api.app import create_app
from ordersync.service.pull import PullError
from ordersync.simulators.douyin_shop import DouyinShop
from ordersync.simulators.jd_jos import JosGateway
from ordersync.testing.pull_rig import PullRig, RigFactory, pull_rigs

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
JD_KEY, JD_SECRET, JD_TOKEN = "JDKEY01", "jos-secret-puer", "jd-token-1"
DY_KEY, DY_SECRET, DY_TOKEN = "7100000000000000001", "dy-secret-baicha", "dy-token"
PULL = {"overlap": 60, "page_size": 2, "max_window": 600, "settle": 2}


class Rig(PullRig):
    """A hub on a SQLite file, with real HTTP fetching and database cursors."""

    page_size = 2

    async def orders(self, channel_id: str) -> dict[str, tuple[str, str, dict[str, Any]]]:
        """external_id -> (status, payment_status, document)."""
        return {
            ext: (o.status, o.payment_status, o.doc)
            for ext, o in (await self.rows(channel_id)).items()
        }


@pytest.fixture
async def rig_for(tmp_path: Path) -> AsyncIterator[RigFactory]:
    async with pull_rigs(f"sqlite:///{tmp_path}/hub.db", start=T0, rig_class=Rig) as make:
        yield make


async def serve_hub(hub: Hub) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """The hub's API on a loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(hub, manage_hub=False), host="127.0.0.1", port=port, log_level="error"
        )
    )
    serving = asyncio.create_task(server.serve())
    for _ in range(1000):  # bounded wait for the socket, not a timing assertion
        if server.started:
            break
        await asyncio.sleep(0.01)
    return server, serving, port


# ---- JD ---------------------------------------------------------------------------------


@pytest.fixture
async def jos() -> AsyncIterator[JosGateway]:
    """A JOS gateway on loopback checking every sign."""
    gateway = JosGateway(app_key=JD_KEY, app_secret=JD_SECRET, access_token=JD_TOKEN)
    await gateway.start()
    yield gateway
    await gateway.stop()


def jd_channel(gateway: str, secret: str = JD_SECRET) -> dict[str, Any]:
    return {
        "id": "jd-flagship",
        "kind": "jd",
        "app_key": JD_KEY,
        "app_secret": secret,
        "access_token": JD_TOKEN,
        "gateway": gateway,
        "pull": PULL,
    }


async def test_jd_orders_are_pulled_through_signed_calls_into_the_hub(
    rig_for: RigFactory, jos: JosGateway
) -> None:
    """Signed calls, windows and pages; order ids beyond 2^53 arrive exact."""
    rig = await rig_for(jd_channel(jos.url))
    jos.clock = rig.clock
    rig.clock.tick(-900)
    ids = []
    for state in ["WAIT_SELLER_STOCK_OUT", "WAIT_GOODS_RECEIVE_CONFIRM", "TRADE_CANCELED"]:
        ids.append(jos.create(state=state)["orderId"])
        rig.clock.tick(60)
    rig.clock.now = T0

    await rig.puller("jd-flagship").catch_up()

    stored = await rig.orders("jd-flagship")
    assert {int(i) for i in stored} == set(ids)
    assert [stored[str(i)][:2] for i in ids] == [
        ("paid", "paid"),
        ("shipped", "paid"),
        ("cancelled", "voided"),
    ]
    assert jos.forged == 0


async def test_a_jd_order_changed_later_is_updated_not_duplicated(
    rig_for: RigFactory, jos: JosGateway
) -> None:
    """The next pull reads the new state of the same orderId."""
    rig = await rig_for(jd_channel(jos.url))
    jos.clock = rig.clock
    rig.clock.tick(-300)
    order_id = jos.create()["orderId"]
    rig.clock.now = T0
    await rig.puller("jd-flagship").catch_up()
    jos.update(order_id, orderState="WAIT_GOODS_RECEIVE_CONFIRM")
    rig.clock.tick(120)

    await rig.puller("jd-flagship").catch_up()

    assert [v[:2] for v in (await rig.orders("jd-flagship")).values()] == [("shipped", "paid")]


async def test_a_jd_pull_with_the_wrong_secret_is_refused_by_the_gateway(
    rig_for: RigFactory, jos: JosGateway
) -> None:
    """The gateway checks the sign; the refusal stops the pull and nothing is stored."""
    rig = await rig_for(jd_channel(jos.url, secret="guessed"))
    jos.create()

    with pytest.raises(PullError, match="signature"):
        await rig.puller("jd-flagship").catch_up()

    assert jos.forged == 1
    assert await rig.orders("jd-flagship") == {}


async def test_a_jd_call_limit_is_waited_out(rig_for: RigFactory, jos: JosGateway) -> None:
    """Two refused calls are retried; every order still arrives once."""
    rig = await rig_for(jd_channel(jos.url))
    jos.clock = rig.clock
    rig.clock.tick(-300)
    jos.create()
    jos.create()
    rig.clock.now = T0
    jos.throttle_next = 2

    await rig.puller("jd-flagship").catch_up()

    assert len(await rig.orders("jd-flagship")) == 2


# ---- Douyin -------------------------------------------------------------------------------


@pytest.fixture
async def shop() -> AsyncIterator[DouyinShop]:
    """A Douyin shop open API on loopback checking every sign."""
    made = DouyinShop(app_key=DY_KEY, app_secret=DY_SECRET, access_token=DY_TOKEN)
    await made.start()
    yield made
    await made.stop()


def douyin_channel(gateway: str, sign_method: str = "hmac-sha256") -> dict[str, Any]:
    return {
        "id": "douyin-shop",
        "kind": "douyin",
        "app_key": DY_KEY,
        "app_secret": DY_SECRET,
        "access_token": DY_TOKEN,
        "sign_method": sign_method,
        "gateway": gateway,
        "pull": PULL,
    }


@pytest.mark.parametrize("sign_method", ["md5", "hmac-sha256"])
async def test_douyin_orders_are_pulled_through_signed_calls_into_the_hub(
    rig_for: RigFactory, shop: DouyinShop, sign_method: str
) -> None:
    """Signed calls, 0-based pages over a window; fen arrive as exact yuan."""
    rig = await rig_for(douyin_channel(shop.url, sign_method))
    shop.clock = rig.clock
    rig.clock.tick(-900)
    ids = []
    for status in [1, 2, 3, 4, 5]:
        ids.append(shop.create(status=status)["order_id"])
        rig.clock.tick(60)
    rig.clock.now = T0

    await rig.puller("douyin-shop").catch_up()

    stored = await rig.orders("douyin-shop")
    assert set(stored) == set(ids)
    assert [stored[i][:2] for i in ids] == [
        ("pending", "pending"),
        ("paid", "paid"),
        ("shipped", "paid"),
        ("cancelled", "refunded"),
        ("completed", "paid"),
    ]
    assert stored[ids[1]][2]["totals"]["total"] == "169.70"
    assert shop.forged == 0


async def test_douyin_rate_limits_are_waited_out(rig_for: RigFactory, shop: DouyinShop) -> None:
    """Refused calls are retried; every order still arrives once."""
    rig = await rig_for(douyin_channel(shop.url))
    shop.clock = rig.clock
    rig.clock.tick(-300)
    for _ in range(3):
        shop.create()
    rig.clock.now = T0
    shop.throttle_next = 2

    await rig.puller("douyin-shop").catch_up()

    assert len(await rig.orders("douyin-shop")) == 3


@pytest.mark.parametrize("sign_method", ["md5", "hmac-sha256"])
async def test_douyin_pushes_are_verified_recorded_once_and_forgeries_refused(
    rig_for: RigFactory, shop: DouyinShop, sign_method: str
) -> None:
    """Over loopback: a signed message is recorded in the inbox; a forged one gets 401."""
    rig = await rig_for(douyin_channel(shop.url))
    server, serving, port = await serve_hub(rig.hub)
    try:
        url = f"http://127.0.0.1:{port}/v1/channels/douyin-shop/webhooks"
        order = shop.create()
        good = await shop.push(url, "100", order, sign_method=sign_method)
        real_secret, shop.app_secret = shop.app_secret, "guessed"
        forged = await shop.push(url, "100", order, sign_method=sign_method)
        shop.app_secret = real_secret
    finally:
        server.should_exit = True
        await serving

    assert (good, forged) == (200, 401)
    assert [m for m, _ in await rig.inbox("douyin-shop")] == ["dy-msg-1"]


# ---- generic mapping ----------------------------------------------------------------------

GENERIC_SECRET = "erp-hook-secret"
GENERIC_MAPPING = {
    "format": "json",
    "fields": {
        "external_id": "order.no",
        "status": {"path": "order.state", "map": {"10": "NEW", "20": "PAID"}},
        "total": {"path": "order.amount_fen", "transform": "cents_to_decimal"},
        "updated_at": {"path": "order.changed", "transform": "datetime"},
        "customer.name": "order.buyer",
    },
    "lines": {
        "path": "order.items",
        "fields": {"sku": "sku", "name": "name", "quantity": "qty", "unit_price": "price"},
    },
    "statuses": {
        "NEW": {"status": "pending", "payment": "pending"},
        "PAID": {"status": "paid", "payment": "paid"},
    },
}


def generic_order(state: str, changed: str, amount_fen: int = 2400) -> bytes:
    order = {
        "order": {
            "no": "18446744073709551617",
            "state": state,
            "amount_fen": amount_fen,
            "changed": changed,
            "buyer": "吴先生",
            "items": [{"sku": "PUER-1", "name": "熟普", "qty": 2, "price": "12.00"}],
        }
    }
    return json.dumps(order, ensure_ascii=False).encode("utf-8")


async def test_a_generic_channel_accepts_signed_pushes_in_its_mapping_format(
    rig_for: RigFactory, tmp_path: Path
) -> None:
    """Over loopback: create, duplicate, update; forged and unmappable pushes refused."""
    mapping = tmp_path / "erp.yaml"
    mapping.write_text(yaml.safe_dump(GENERIC_MAPPING, allow_unicode=True), encoding="utf-8")
    rig = await rig_for(
        {
            "id": "erp-inhouse",
            "kind": "generic",
            "mapping": str(mapping),
            "secret": GENERIC_SECRET,
            "signature_header": "X-ERP-Signature",
        }
    )
    server, serving, port = await serve_hub(rig.hub)
    url = f"http://127.0.0.1:{port}/v1/channels/erp-inhouse/webhooks"
    created = generic_order("10", "2026-11-22T08:00:00+00:00")
    paid = generic_order("20", "2026-11-22T08:05:00+00:00")
    negative = generic_order("20", "2026-11-22T08:06:00+00:00", amount_fen=-1)
    try:
        async with httpx.AsyncClient() as client:

            async def send(body: bytes, secret: str = GENERIC_SECRET) -> httpx.Response:
                headers = {"X-ERP-Signature": sign_body(secret, body)}
                return await client.post(url, content=body, headers=headers)

            answers = [await send(created), await send(created), await send(paid)]
            forged = await send(paid, secret="guessed")
            unmappable = await send(negative)
    finally:
        server.should_exit = True
        await serving

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json()["outcome"] for a in answers] == ["created", "duplicate", "updated"]
    assert forged.status_code == 401
    assert unmappable.status_code == 422
    assert unmappable.json()["path"] == "order.amount_fen"
    stored = await rig.orders("erp-inhouse")
    assert list(stored) == ["18446744073709551617"]
    status, payment, doc = stored["18446744073709551617"]
    assert (status, payment) == ("paid", "paid")
    assert doc["totals"]["total"] == "24.00"
