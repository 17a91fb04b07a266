"""Events: past-tense facts that a change produced, fanned out through the outbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


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


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """One event about one order, at the order version it describes."""

    type: EventType
    order_id: str
    version: int
    occurred_at: datetime
