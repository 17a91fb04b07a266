"""Shipment write-back as a delivery: a `Sender` that speaks one channel's platform API.

A channel with `writeback: {enabled: true}` gets the destination `writeback.<channel id>`,
subscribed to `shipment.created` for that channel's orders only (the router's channel
filter). The dispatcher treats it like any destination (ordered per order, retries with
backoff, circuit breaker, dead letters, replay); only the sending differs: instead of a
Standard Webhooks POST, `ChannelWritebackSender` reads the event, runs the platform's
write-back conversation (adapters/channels/writeback.py) over HTTP, and reports a refusal
the platform will repeat as a *permanent* failure, which dead-letters the delivery at once.

A retry is safe on every platform: the conversations check what the platform already holds
(Shopify's fulfillments, WooCommerce's notes, the waybill TOP, JOS or Douyin recorded when
they refuse an order as already shipped), so an attempt whose answer was lost counts as
done, a re-booking updates the tracking, and only a waybill from outside the hub is a
permanent failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aiohttp

from ordersync import __version__
from ordersync.adapters.channels.writeback import (
    Conversation,
    WritebackFailed,
    WritebackRequest,
    conversation_for,
    shipped_from_event,
)
from ordersync.config import ChannelConfig
from ordersync.domain.delivery import Backoff, RetryPolicy
from ordersync.service.delivery_ports import AttemptOutcome
from ordersync.service.dispatcher import Destination
from ordersync.service.outbox import Subscription
from ordersync.service.pull import HttpResponse

log = logging.getLogger(__name__)

USER_AGENT = f"ordersync/{__version__}"

Http = Callable[[WritebackRequest, float], Awaitable[HttpResponse]]


class WritebackHttp:
    """Sends write-back requests over one keep-alive pool, shared by every channel. Network
    errors and timeouts propagate (the sender reports them as retryable)."""

    def __init__(self, connections: int = 32) -> None:
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, request: WritebackRequest, timeout: float) -> HttpResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                headers={"User-Agent": USER_AGENT},
            )
        async with self._session.request(
            request.method,
            request.url,
            params=list(request.params),
            headers=dict(request.headers),
            data=request.body or None,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            body = await response.read()
            headers = {k.lower(): v for k, v in response.headers.items()}
            return HttpResponse(response.status, headers, body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class ChannelWritebackSender:
    """The `Sender` of one channel's write-back destination (`url` and `secret` of the
    Destination are unused: the channel's own config says where and how to call)."""

    def __init__(
        self,
        channel: ChannelConfig,
        http: Http,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if channel.writeback is None:
            raise ValueError(f"channel {channel.id!r} has no writeback block")
        self.channel = channel
        self._conversation = conversation_for(channel.kind)
        self._codes = dict(channel.writeback.carrier_codes)
        self._http = http
        self._clock = clock

    async def send(
        self, url: str, secret: str, event_id: str, body: bytes, timeout: float
    ) -> AttemptOutcome:
        started = time.perf_counter()
        status: int | None = None

        def ms() -> float:
            return (time.perf_counter() - started) * 1000

        try:
            shipped = shipped_from_event(body, self._codes)
            conversation = self._conversation(self.channel, shipped, self._clock())
            request: WritebackRequest | None = _step(conversation, None)
            while request is not None:
                response = await self._http(request, timeout)
                status = response.status
                request = _step(conversation, response)
        except WritebackFailed as e:
            log.info("write-back to %s (%s) failed: %s", self.channel.id, event_id, e.detail)
            return AttemptOutcome(
                False, e.status or status, e.detail[:500], ms(), permanent=not e.retryable
            )
        except TimeoutError:
            return AttemptOutcome(False, status, f"timeout after {timeout:g}s", ms())
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as e:
            # The message names the host, never the query (it may carry an access token).
            return AttemptOutcome(False, status, f"{type(e).__name__}: {e}"[:300], ms())
        return AttemptOutcome(True, status, None, ms())


def _step(conversation: Conversation, response: HttpResponse | None) -> WritebackRequest | None:
    """The conversation's next request; None once it has finished (the write-back is done)."""
    try:
        if response is None:
            return next(conversation)
        return conversation.send(response)
    except StopIteration:
        return None


def writeback_destination(channel: ChannelConfig, http: Http) -> Destination:
    """The destination `writeback.<channel id>` of a channel whose write-back is enabled."""
    wb, dest_id = channel.writeback, channel.writeback_id
    if wb is None or dest_id is None:
        raise ValueError(f"channel {channel.id!r} has no enabled writeback")
    b = wb.retry_backoff
    return Destination(
        id=dest_id,
        url=f"channel:{channel.id}",
        secret="",
        policy=RetryPolicy(
            schedule=tuple(wb.retry_schedule),
            backoff=Backoff(b.base, b.multiplier, b.max_delay, b.max_age) if b else None,
        ),
        timeout=wb.timeout,
        max_in_flight=wb.max_in_flight,
        sender=ChannelWritebackSender(channel, http),
    )


def writeback_subscriptions(channels: list[ChannelConfig]) -> list[Subscription]:
    """Router subscriptions of the enabled write-backs: each for its own channel only."""
    return [
        (c.writeback_id, list(c.writeback.events), c.id)
        for c in channels
        if c.writeback is not None and c.writeback_id is not None
    ]
