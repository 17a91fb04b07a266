"""Events: past-tense facts that a change produced, fanned out through the outbox."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    ORDER_CREATED = "order.created"
    ORDER_UPDATED = "order.updated"
    ORDER_PAID = "order.paid"
    ORDER_CANCELLED = "order.cancelled"
    ORDER_SHIPPED = "order.shipped"
    ORDER_DELIVERED = "order.delivered"
    ORDER_COMPLETED = "order.completed"
    ORDER_HELD = "order.held"
    ORDER_RELEASED = "order.released"
    ORDER_REFUNDED = "order.refunded"
    # Routing reserved stock for the order: the event a WMS picks from. Its body is the
    # order plus each line's `allocations` (location, units) and the `routing` summary
    # (`codec.allocated_event`).
    ORDER_ALLOCATED = "order.allocated"


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """One event about one order, at the order version it describes.

    `fields`: keys this event's body sets on top of the order's canonical JSON (None: the
    body is the order as it is). Only ever adds to or fills in the order's own shape, so a
    receiver reading `order.*` bodies reads this one the same way.
    """

    type: EventType
    order_id: str
    version: int
    occurred_at: datetime
    fields: Mapping[str, Any] | None = None
