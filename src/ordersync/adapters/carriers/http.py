"""The HTTP side of carrier connectors: send a `CarrierRequest`, return a `CarrierResponse`.

Bookings and subscriptions are rare next to callbacks, so each call uses a short-lived
session: nothing to open at start-up or leak at shutdown.
"""

from __future__ import annotations

import aiohttp

from ordersync.adapters.carriers.base import CarrierError, CarrierRequest, CarrierResponse


class CarrierHttp:
    def __init__(self, timeout: float = 15.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def send(self, request: CarrierRequest) -> CarrierResponse:
        """Raises `CarrierError` when the carrier cannot be reached."""
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.request(
                    request.method, request.url, data=request.body, headers=dict(request.headers)
                ) as response,
            ):
                body = await response.read()
                return CarrierResponse(response.status, dict(response.headers), body)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise CarrierError(f"{request.method} {request.url}: {type(e).__name__}: {e}") from e
