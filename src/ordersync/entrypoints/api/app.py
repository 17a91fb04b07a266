"""The ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ordersync import __version__
from ordersync.bootstrap import Hub
from ordersync.entrypoints.api import errors
from ordersync.entrypoints.api.auth import ApiKeys
from ordersync.entrypoints.api.routes import (
    carrier_rules,
    deliveries,
    inventory,
    ops,
    orders,
    webhooks,
)
from ordersync.entrypoints.api.routes import groups as group_routes
from ordersync.entrypoints.api.routes import returns as return_routes
from ordersync.entrypoints.api.routes import shipments as shipment_routes
from ordersync.entrypoints.api.routes.webhooks import WebhookFastPath


def create_app(hub: Hub, *, manage_hub: bool = True) -> FastAPI:
    """`manage_hub`: start the hub (migrations, writers, dispatcher) with the app and drain
    it on shutdown. Tests that run the hub themselves pass False."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_hub:
            await hub.start()
        try:
            yield
        finally:
            if manage_hub:
                await hub.stop()

    app = FastAPI(
        title="ordersync",
        version=__version__,
        summary="Order synchronization hub: channels in, signed events out, nothing lost.",
        lifespan=lifespan,
    )
    app.state.hub = hub
    app.state.api_keys = ApiKeys(hub.settings.api_keys)
    errors.install(app)
    app.add_middleware(WebhookFastPath)
    for r in (webhooks.router, orders.router, deliveries.router, inventory.router, ops.router):
        app.include_router(r)
    app.include_router(shipment_routes.router)
    app.include_router(carrier_rules.router)
    app.include_router(return_routes.router)
    app.include_router(group_routes.router)
    app.webhooks.include_router(orders.events)  # outbound events, documented
    return app
