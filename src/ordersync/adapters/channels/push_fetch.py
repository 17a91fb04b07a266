"""Pushes that name orders instead of carrying them (Douyin's message push: `p_id` and the new
status, not the order). The connector says which orders a verified push is about; the hub
fetches each one's detail through the platform's API, as the pull engine does, and ingests
it under the push's own message ids, so the inbox key and the effect share one transaction
and a repeated push is applied once.

Every detail is fetched before anything is ingested: if the platform's API fails, nothing is
recorded and the webhook answers 503, so the platform pushes again (and the pull, when the
channel has one, reads the order anyway).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import orjson

from ordersync.adapters.channels.base import (
    HttpRequest,
    HttpResponse,
    InboundError,
    PulledOrder,
    PullError,
    Throttled,
)
from ordersync.config import ChannelConfig
from ordersync.domain.commands import IngestChannelOrder
from ordersync.service.pull import Fetch, Ingest


@dataclass(frozen=True, slots=True)
class PushedOrder:
    """One order a push is about: its platform id, and the push's message ids about it
    (joined with "+", the inbox key), with their topic."""

    external_id: str
    message_id: str
    topic: str


@runtime_checkable
class FetchesPushedOrders(Protocol):
    """A connector whose pushes name orders that the hub then fetches."""

    def pushed_orders(
        self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes
    ) -> tuple[PushedOrder, ...]:
        """The orders a verified push is about; () when it names none (record it only)."""
        ...

    def detail_request(
        self, channel: ChannelConfig, external_id: str, *, now: datetime | None = None
    ) -> HttpRequest:
        """The signed request for one order's detail."""
        ...

    def detail_response(self, channel: ChannelConfig, response: HttpResponse) -> PulledOrder:
        """The order, mapped (or kept raw with its error); raises Throttled or PullError."""
        ...


async def fetch_pushed(
    connector: FetchesPushedOrders,
    channel: ChannelConfig,
    pushed: tuple[PushedOrder, ...],
    fetch: Fetch,
) -> list[PulledOrder]:
    """Each pushed order's detail; InboundError 503 if the platform's API fails."""

    async def one(ref: PushedOrder) -> PulledOrder:
        response = await fetch(connector.detail_request(channel, ref.external_id))
        return connector.detail_response(channel, response)

    try:
        return list(await asyncio.gather(*(one(ref) for ref in pushed)))
    except Throttled as e:
        raise InboundError(503, "order_fetch_throttled", f"fetching the order: {e}") from None
    except PullError as e:
        raise InboundError(503, "order_fetch_failed", f"fetching the order: {e}") from None


def commands(
    channel: ChannelConfig,
    pushed: tuple[PushedOrder, ...],
    fetched: list[PulledOrder],
    *,
    audit: Mapping[str, Any],
    received_at: datetime,
) -> list[IngestChannelOrder]:
    """One ingest per pushed order, keyed by the push's message ids; the body kept is the
    fetched order (what was applied), the headers say which push asked for it."""
    out = []
    for ref, order in zip(pushed, fetched, strict=True):
        headers = {**audit, "fetched": ref.external_id}
        if order.error is not None:
            headers["error"] = order.error
        out.append(
            IngestChannelOrder(
                channel_id=channel.id,
                kind=channel.kind,
                message_id=ref.message_id,
                topic=ref.topic if order.error is None else f"{ref.topic}:unmappable",
                snapshot=order.snapshot,
                received_at=received_at,
                body=order.raw,
                headers=orjson.dumps(headers).decode(),
            )
        )
    return out


async def ingest_pushed(
    connector: FetchesPushedOrders,
    channel: ChannelConfig,
    pushed: tuple[PushedOrder, ...],
    *,
    fetch: Fetch,
    ingest: Ingest,
    audit: Mapping[str, Any],
    received_at: datetime,
) -> list[Any]:
    """Fetch every pushed order, then ingest them together (one group commit); the
    handlers' results, in the order of `pushed`."""
    fetched = await fetch_pushed(connector, channel, pushed, fetch)
    cmds = commands(channel, pushed, fetched, audit=audit, received_at=received_at)
    return list(await asyncio.gather(*(ingest(c) for c in cmds)))
