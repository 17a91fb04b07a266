"""Command handlers, and the one registry that maps each command to its handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ordersync.domain import commands
from ordersync.service.handlers import orders
from ordersync.service.unit_of_work import UnitOfWork

Handler = Callable[[Any, UnitOfWork], Awaitable[Any]]

HANDLERS: dict[type, Handler] = {
    commands.IngestChannelOrder: orders.ingest_channel_order,
    commands.CreateOrder: orders.create_order,
    commands.ChangeOrderStatus: orders.change_order_status,
}
