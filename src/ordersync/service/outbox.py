"""Turning domain events into outbox entries: the exact body every destination receives.

The body is built once, at the moment of the change, from the order *at that version*, so a
later change in the same transaction cannot leak into an earlier event, and every retry and
every destination gets the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import orjson

from ordersync.domain.codec import fmt_time, order_to_dict
from ordersync.domain.events import OrderEvent
from ordersync.domain.orders import Order
from ordersync.ids import new_id


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    event_id: str  # the Standard Webhooks `webhook-id`: stable across retries and replays
    type: str
    order_id: str
    version: int
    body: bytes
    destinations: tuple[str, ...]


class EventRouter:
    """Which destinations subscribe to which event types (glob patterns like `order.*`)."""

    def __init__(self, subscriptions: Iterable[tuple[str, Iterable[str]]]) -> None:
        self._subs = [(dest, tuple(patterns)) for dest, patterns in subscriptions]
        self._cache: dict[str, tuple[str, ...]] = {}

    def destinations_for(self, event_type: str) -> tuple[str, ...]:
        hit = self._cache.get(event_type)
        if hit is None:
            hit = tuple(
                dest for dest, pats in self._subs if any(fnmatchcase(event_type, p) for p in pats)
            )
            self._cache[event_type] = hit
        return hit


def outbox_entries(
    order: Order,
    events: list[OrderEvent],
    router: EventRouter,
    data: dict[str, Any] | None = None,
) -> list[OutboxEntry]:
    """`data`: the order's canonical JSON at its current version, if the caller has it."""
    if not events:
        return []
    if data is None:
        data = order_to_dict(order)
    return [
        OutboxEntry(
            event_id=new_id("evt"),
            type=e.type.value,
            order_id=order.id,
            version=e.version,
            body=orjson.dumps(
                {"type": e.type.value, "timestamp": fmt_time(e.occurred_at), "data": data}
            ),
            destinations=router.destinations_for(e.type.value),
        )
        for e in events
    ]
