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

from ordersync.domain.codec import event_data, fmt_time, order_to_dict
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


Subscription = tuple[str, Iterable[str]] | tuple[str, Iterable[str], str | None]


class EventRouter:
    """Which destinations subscribe to which event types (glob patterns like `order.*`).

    A subscription is `(destination, patterns)`, or `(destination, patterns, channel_id)`
    for a destination that takes only the events of one channel's orders (a channel's
    write-back). Routing stays one dict lookup per event: per event type the router keeps
    the destinations every channel gets, plus, only for the channels that have their own
    subscriptions, the full tuple that channel gets.
    """

    def __init__(self, subscriptions: Iterable[Subscription]) -> None:
        self._subs: list[tuple[str, tuple[str, ...], str | None]] = [
            (s[0], tuple(s[1]), s[2] if len(s) > 2 else None) for s in subscriptions
        ]
        self._channels = {channel for _, _, channel in self._subs if channel is not None}
        self._cache: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {}

    def destinations_for(self, event_type: str, channel_id: str | None = None) -> tuple[str, ...]:
        """`channel_id`: the channel of the order the event is about (None: unknown, so
        channel-bound destinations are left out)."""
        hit = self._cache.get(event_type)
        if hit is None:
            hit = self._cache[event_type] = self._route(event_type)
        if channel_id is None:
            return hit[0]
        return hit[1].get(channel_id, hit[0])

    def _route(self, event_type: str) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
        def matches(pats: tuple[str, ...]) -> bool:
            return any(fnmatchcase(event_type, p) for p in pats)

        everyone = tuple(d for d, pats, ch in self._subs if ch is None and matches(pats))
        per_channel = {
            channel: tuple(
                d for d, pats, ch in self._subs if ch in (None, channel) and matches(pats)
            )
            for channel in self._channels
        }
        return everyone, {c: dests for c, dests in per_channel.items() if dests != everyone}


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
                {
                    "type": e.type.value,
                    "timestamp": fmt_time(e.occurred_at),
                    "data": event_data(data, e),
                }
            ),
            destinations=router.destinations_for(e.type.value, order.channel_id),
        )
        for e in events
    ]
