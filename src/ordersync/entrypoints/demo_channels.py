"""The demo's extra sales channels (`ordersync demo --channels shopify,woocommerce,taobao`).

Each driver runs one platform simulator beside the Shopify store and feeds the hub the way
that platform does: WooCommerce pushes signed webhooks (retried until answered 2xx, as
WooCommerce retries), Taobao/Tmall is pulled by the hub through the TOP gateway simulator.
At the end every driver checks the hub holds each of its orders once, in its latest state.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta
from typing import Any, Protocol

import aiohttp

from ordersync.simulators.taobao_top import TopGateway
from ordersync.simulators.woocommerce_store import WooStore

EXTRA_CHANNELS = ("woocommerce", "taobao")
PUSH_TRIES = 30  # ~30 s of retries: long enough to outlast a hub restart in --faults


class ChannelDriver(Protocol):
    id: str
    kind: str
    sent: int

    def config(self) -> dict[str, Any]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def run(self, hub_url: str, orders: int, session: aiohttp.ClientSession) -> None: ...

    def expected(self) -> dict[str, str]:
        """external_id -> the canonical status the hub must end with."""
        ...


class WooCommerceDriver:
    """A WooCommerce store pushing `order.created`, then `order.updated` once paid."""

    kind = "woocommerce"

    def __init__(self, channel_id: str = "woo-demo") -> None:
        self.id = channel_id
        self.store = WooStore(
            consumer_key="ck_" + secrets.token_hex(20),
            consumer_secret="cs_" + secrets.token_hex(20),
            webhook_secret=secrets.token_urlsafe(24),
        )
        self._expected: dict[str, str] = {}
        self.sent = 0

    def config(self) -> dict[str, Any]:
        assert self.store.base_url is not None, "start() first"
        return {
            "id": self.id,
            "kind": "woocommerce",
            "secret": self.store.webhook_secret,
            "store_url": self.store.base_url,
        }

    async def start(self) -> None:
        await self.store.start()

    async def stop(self) -> None:
        await self.store.stop()

    async def run(self, hub_url: str, orders: int, session: aiohttp.ClientSession) -> None:
        url = f"{hub_url}/v1/channels/{self.id}/webhooks"
        gate = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with gate:
                order = self.store.create(status="pending")
                await self._push(session, url, "order.created", order)
                self._expected[str(order["id"])] = "pending"
                if i % 2 == 0:  # half of them get paid
                    paid = self.store.update(order["id"], status="processing")
                    await self._push(session, url, "order.updated", paid)
                    self._expected[str(order["id"])] = "paid"

        await asyncio.gather(*(one(i) for i in range(orders)))

    async def _push(
        self, session: aiohttp.ClientSession, url: str, topic: str, order: dict[str, Any]
    ) -> None:
        body, headers = self.store.webhook(topic, order)  # one delivery id for every retry
        for attempt in range(PUSH_TRIES):
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status < 300:
                        self.sent += 1
                        return
                    if r.status < 500:
                        raise RuntimeError(f"hub refused a WooCommerce webhook: {r.status}")
            except aiohttp.ClientError:
                pass  # the hub is restarting: retry, as WooCommerce does
            await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
        raise RuntimeError(f"WooCommerce webhook for order {order['id']} never accepted")

    def expected(self) -> dict[str, str]:
        return dict(self._expected)


class TaobaoDriver:
    """A Tmall shop the hub pulls through the TOP gateway: trades created unpaid, half of
    them paid a few seconds later (a later `modified`, as TOP stamps each change)."""

    kind = "taobao"

    def __init__(self, channel_id: str = "tmall-demo") -> None:
        self.id = channel_id
        self.gateway = TopGateway(
            app_key=str(secrets.randbelow(10**8) + 10**7),
            app_secret=secrets.token_hex(16),
            session="6100" + secrets.token_hex(20),
        )
        self._expected: dict[str, str] = {}
        self.sent = 0

    def config(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": "taobao",
            "app_key": self.gateway.app_key,
            "app_secret": self.gateway.app_secret,
            "session": self.gateway.session,
            "sign_method": "hmac",
            "gateway": self.gateway.url,
            # Demo pace: poll every second, windows end 1 s before now.
            "pull": {
                "interval": 1.0,
                "overlap": 30,
                "page_size": 50,
                "max_window": 600,
                "settle": 1,
                "lookback": 600,
                "rate": 20,
                "burst": 20,
            },
        }

    async def start(self) -> None:
        await self.gateway.start()

    async def stop(self) -> None:
        await self.gateway.stop()

    async def run(self, hub_url: str, orders: int, session: aiohttp.ClientSession) -> None:
        for i in range(orders):
            trade = self.gateway.create(status="WAIT_BUYER_PAY")
            tid = int(trade["tid"])
            self._expected[str(tid)] = "pending"
            if i % 2 == 0:
                # TOP's `modified` has whole seconds: a payment stamped in the same second
                # as the creation would look like the same state (see the issue note).
                later = self.gateway.clock() + timedelta(seconds=2)
                self.gateway.update(tid, modified=later, status="WAIT_SELLER_SEND_GOODS")
                self._expected[str(tid)] = "paid"
            self.sent += 1
            if i % 50 == 49:
                await asyncio.sleep(0)

    def expected(self) -> dict[str, str]:
        return dict(self._expected)


def drivers_for(kinds: list[str]) -> list[ChannelDriver]:
    unknown = [k for k in kinds if k not in EXTRA_CHANNELS]
    if unknown:
        raise ValueError(
            f"unknown demo channel(s) {', '.join(unknown)}: choose from shopify, "
            + ", ".join(EXTRA_CHANNELS)
        )
    made: list[ChannelDriver] = []
    for kind in dict.fromkeys(kinds):
        made.append(WooCommerceDriver() if kind == "woocommerce" else TaobaoDriver())
    return made


def check(driver: ChannelDriver, hub_orders: list[dict[str, Any]]) -> list[str]:
    """What is missing or wrong for this channel's orders in the hub (empty: all good)."""
    problems = []
    seen: dict[str, int] = {}
    for o in hub_orders:
        seen[str(o["external_id"])] = seen.get(str(o["external_id"]), 0) + 1
    for ext in driver.expected():
        if ext not in seen:
            problems.append(f"{driver.id}: order {ext} is not in the hub")
    for ext, n in seen.items():
        if n > 1:
            problems.append(f"{driver.id}: order {ext} is in the hub {n} times")
    by_ext = {str(o["external_id"]): o for o in hub_orders}
    for ext, want in driver.expected().items():
        got = by_ext.get(ext)
        if got is not None and got["status"] != want:
            problems.append(f"{driver.id}: order {ext} is {got['status']}, expected {want}")
    return problems
