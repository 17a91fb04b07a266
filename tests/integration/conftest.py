"""A real hub for integration tests: a real database (see `database_url`), the FastAPI app
over ASGI, and real HTTP sinks on loopback that verify every Standard Webhooks signature.

Destinations (all with quick retries, so failures play out in a second or two):

- `erp` takes every order event, 3 quick retries;
- `wms` takes only `order.paid` and `order.cancelled`;
- `crm` takes every order event, but gets ONE retry before a delivery is dead-lettered.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from ordersync.bootstrap import Hub, build_hub
from ordersync.config import Settings, settings_from_mapping
from ordersync.entrypoints.api.app import create_app
from ordersync.simulators.shopify_store import API_VERSION, encode, sign
from ordersync.simulators.sinks import Sink, new_secret

SHOP_SECRET = "shpss_test"
SHOP_DOMAIN = "teahouse-eu.myshopify.com"
OPS_KEY = "sk_test_ops_blue_teapot_4f9c2a"  # every scope
DASHBOARD_KEY = "sk_test_dashboard_matcha_7b1d"  # read-only: orders:read, deliveries:read
QUICK_RETRIES = [0.05, 0.05, 0.05]
SETTLE_SECONDS = 10.0


@dataclass
class Sinks:
    erp: Sink
    wms: Sink
    crm: Sink

    def __iter__(self) -> Iterator[Sink]:
        return iter((self.erp, self.wms, self.crm))


@pytest.fixture
async def sinks() -> AsyncIterator[Sinks]:
    """Three healthy Standard Webhooks receivers; a test may set `sink.faults` at any time."""
    made = Sinks(*(Sink(name, new_secret()) for name in ("erp", "wms", "crm")))
    for sink in made:
        await sink.start()
    yield made
    for sink in made:
        await sink.stop()


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(database_url: str, sinks: Sinks) -> SettingsFactory:
    """Hub settings on this test's database and sinks; keyword overrides go to `erp`."""

    def make(**erp: Any) -> Settings:
        def destination(sink: Sink, events: list[str], retries: list[float]) -> dict[str, Any]:
            return {
                "id": sink.name,
                "url": sink.events_url,
                "secret": sink.secret,
                "events": events,
                "retry_schedule": retries,
                "retry_backoff": None,
                "timeout": 5,
            }

        return settings_from_mapping(
            {
                "database_url": database_url,
                "channels": [{"id": "shop-eu", "kind": "shopify", "secret": SHOP_SECRET}],
                "api_keys": [
                    {
                        "id": "ops",
                        "key": OPS_KEY,
                        "scopes": [
                            "orders:read",
                            "orders:write",
                            "deliveries:read",
                            "deliveries:write",
                        ],
                    },
                    {
                        "id": "dashboard",
                        "key": DASHBOARD_KEY,
                        "scopes": ["orders:read", "deliveries:read"],
                    },
                ],
                "destinations": [
                    {**destination(sinks.erp, ["order.*"], QUICK_RETRIES), **erp},
                    destination(sinks.wms, ["order.paid", "order.cancelled"], QUICK_RETRIES),
                    destination(sinks.crm, ["order.*"], [0.05]),
                ],
            },
            env={},
        )

    return make


HubStarter = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def start_hub(database_url: str, sinks: Sinks) -> AsyncIterator[HubStarter]:
    """Builds and starts hubs (migrations included); stops whichever still run at the end.

    Depends on the database and the sinks only so that they outlive every hub it starts.
    """
    started: list[Hub] = []

    async def start(settings: Settings, *, dispatch: bool = True) -> Hub:
        hub = build_hub(settings)
        await hub.start(dispatch=dispatch)
        started.append(hub)
        return hub

    yield start
    for hub in reversed(started):
        if hub.running:
            await hub.stop()


@pytest.fixture
async def hub(start_hub: HubStarter, make_settings: SettingsFactory) -> Hub:
    return await start_hub(make_settings())


ClientFactory = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFactory]:
    """`client_for(hub, key=None)`: an HTTP client for the hub's API, closed at the end."""
    clients: list[httpx.AsyncClient] = []

    def make(hub: Hub, key: str | None = None) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(hub, manage_hub=False)),
            base_url="http://hub",
            headers={"Authorization": f"Bearer {key}"} if key else None,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def api(hub: Hub, client_for: ClientFactory) -> httpx.AsyncClient:
    """The operator's client: an API key holding every scope."""
    return client_for(hub, OPS_KEY)


@pytest.fixture
def dashboard(hub: Hub, client_for: ClientFactory) -> httpx.AsyncClient:
    """A read-only client: orders:read and deliveries:read."""
    return client_for(hub, DASHBOARD_KEY)


@pytest.fixture
def anonymous(hub: Hub, client_for: ClientFactory) -> httpx.AsyncClient:
    """No API key at all, as Shopify and load balancers call."""
    return client_for(hub)


class ShopifyShop:
    """Sends order webhooks to the hub the way Shopify does: its headers, HMAC of the body."""

    def __init__(self, client: httpx.AsyncClient, secret: str = SHOP_SECRET) -> None:
        self.client = client
        self.secret = secret

    async def send(
        self,
        topic: str,
        order: dict[str, Any] | None = None,
        *,
        body: bytes | None = None,
        webhook_id: str | None = None,
        secret: str | None = None,
        signature: str | None = None,
        channel: str = "shop-eu",
        without: tuple[str, ...] = (),
    ) -> httpx.Response:
        """POST one webhook; `body` overrides the encoded order, `without` drops headers."""
        raw = encode(order or {}) if body is None else body
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": signature or sign(secret or self.secret, raw),
            "X-Shopify-Shop-Domain": SHOP_DOMAIN,
            "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
            "X-Shopify-Triggered-At": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "X-Shopify-API-Version": API_VERSION,
            "X-Shopify-Event-Id": str(uuid.uuid4()),
        }
        for name in without:
            del headers[name]
        return await self.client.post(
            f"/v1/channels/{channel}/webhooks", content=raw, headers=headers
        )


@pytest.fixture
def shop_for() -> Callable[[httpx.AsyncClient], ShopifyShop]:
    return ShopifyShop


@pytest.fixture
def shop(anonymous: httpx.AsyncClient) -> ShopifyShop:
    """The Shopify store `shop-eu`, sending to this test's hub (no API key: HMAC only)."""
    return ShopifyShop(anonymous)


Settle = Callable[[httpx.AsyncClient], Awaitable[dict[str, dict[str, int]]]]


@pytest.fixture
def settle() -> Settle:
    """`await settle(api)`: wait (10 s at most) until no delivery is pending; the summary."""

    async def wait(client: httpx.AsyncClient) -> dict[str, dict[str, int]]:
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            response = await client.get("/v1/deliveries/summary")
            assert response.status_code == 200, response.text
            summary: dict[str, dict[str, int]] = response.json()
            if all(states.get("pending", 0) == 0 for states in summary.values()):
                return summary
            if time.monotonic() > deadline:
                pytest.fail(f"deliveries still pending after {SETTLE_SECONDS:g} s: {summary}")
            await asyncio.sleep(0.05)

    return wait


Eventually = Callable[[Callable[[], bool], str], Awaitable[None]]


@pytest.fixture
def eventually() -> Eventually:
    """`await eventually(condition, what)`: poll (10 s at most), else fail naming `what`."""

    async def wait(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + SETTLE_SECONDS
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {SETTLE_SECONDS:g} s waiting for {what}")
            await asyncio.sleep(0.02)

    return wait


Query = Callable[..., Awaitable[list[tuple[Any, ...]]]]


@pytest.fixture
def query() -> Query:
    """`await query(hub, sql, **params)`: rows straight from the hub's database."""

    async def run(hub: Hub, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        async with hub.db.read() as conn:
            return [tuple(row) for row in await conn.execute(text(sql), params)]

    return run
