"""Standard Webhooks over HTTP: sign and POST one event.

Signature: `v1,` + base64(HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}.{body}")), the
key being the base64 part of a `whsec_...` secret. Receivers can verify with the
`standardwebhooks` package (our sink simulators do exactly that).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time

import aiohttp

from ordersync import __version__
from ordersync.service.delivery_ports import AttemptOutcome

USER_AGENT = f"ordersync/{__version__} (+https://www.standardwebhooks.com)"


def secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


class HttpSender:
    """POSTs with one shared connection pool (keep-alive) for all destinations."""

    def __init__(self, *, connections: int = 256) -> None:
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._keys: dict[str, bytes] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": USER_AGENT},
            skip_auto_headers=("Accept-Encoding",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, url: str, secret: str, event_id: str, body: bytes, timeout: float
    ) -> AttemptOutcome:
        assert self._session is not None, "HttpSender.start() not called"
        key = self._keys.get(secret)
        if key is None:
            key = self._keys[secret] = secret_key(secret)
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(key, event_id, ts, body),
        }
        started = time.perf_counter()
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                text = await resp.read()
                ms = (time.perf_counter() - started) * 1000
                if 200 <= resp.status < 300:
                    return AttemptOutcome(True, resp.status, None, ms)
                snippet = text[:200].decode("utf-8", "replace")
                return AttemptOutcome(False, resp.status, f"HTTP {resp.status}: {snippet}", ms)
        except TimeoutError:
            ms = (time.perf_counter() - started) * 1000
            return AttemptOutcome(False, None, f"timeout after {timeout:g}s", ms)
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as e:
            ms = (time.perf_counter() - started) * 1000
            return AttemptOutcome(False, None, f"{type(e).__name__}: {e}"[:300], ms)
