"""A connector bound to one channel as the pull engine's `PullSource`, and the HTTP client
the engine fetches with (aiohttp)."""

from __future__ import annotations

import aiohttp

from ordersync.adapters.channels.base import Capability, ChannelConnector
from ordersync.adapters.channels.registry import connector_for
from ordersync.config import ChannelConfig, PullConfig
from ordersync.service.pull import (
    ChannelPuller,
    CursorStore,
    Fetch,
    HttpRequest,
    HttpResponse,
    Ingest,
    PullError,
    PullPage,
    PullSettings,
    Throttled,
    TokenBucket,
    Window,
)


class BoundSource:
    """`connector` speaking for `channel`."""

    def __init__(self, connector: ChannelConnector, channel: ChannelConfig) -> None:
        if Capability.PULL not in connector.capabilities:
            raise PullError(f"{connector.kind} channels cannot be pulled")
        self.connector = connector
        self.channel = channel
        self.channel_id = channel.id
        self.kind = channel.kind

    def request(self, window: Window, page: int, page_size: int) -> HttpRequest:
        return self.connector.pull_request(self.channel, window, page, page_size)

    def read(self, response: HttpResponse, page_size: int) -> PullPage:
        return self.connector.pull_response(self.channel, response, page_size)


class HttpFetch:
    """Sends the engine's requests; network failures become `Throttled` (try again)."""

    def __init__(self, timeout: float = 30.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(
                request.method,
                request.url,
                params=list(request.params),
                headers=dict(request.headers),
            ) as response:
                body = await response.read()
                headers = {k.lower(): v for k, v in response.headers.items()}
                return HttpResponse(response.status, headers, body)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise Throttled(f"{type(e).__name__}: {e}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def pull_settings(config: PullConfig) -> PullSettings:
    return PullSettings(
        interval=config.interval,
        overlap=config.overlap,
        page_size=config.page_size,
        max_window=config.max_window,
        settle=config.settle,
        lookback=config.lookback,
    )


def puller_for(
    channel: ChannelConfig,
    fetch: Fetch,
    cursors: CursorStore,
    ingest: Ingest,
    *,
    name: str = "live",
) -> ChannelPuller:
    """The puller of a channel that has a `pull` block."""
    if channel.pull is None:
        raise PullError(f"channel {channel.id!r} has no pull block in its configuration")
    source = BoundSource(connector_for(channel.kind), channel)
    bucket = TokenBucket(channel.pull.rate, channel.pull.burst)
    return ChannelPuller(
        source, fetch, cursors, ingest, pull_settings(channel.pull), bucket=bucket, name=name
    )
