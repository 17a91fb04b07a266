"""Pre-generated, correctly signed Shopify orders/create webhooks (unique ids everywhere).

Bodies come from the simulator's `OrderFactory`, so they are realistic (about 7 KB, 1-5
lines, non-ASCII text, ids beyond 2^53); generating them costs ~0.15 ms each, which is why
they are built before the clock starts and spread over all CPUs.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from bench.common import CHANNEL, SHOP_DOMAIN
from ordersync.simulators.shopify_store import API_VERSION, OrderFactory, encode, sign

WEBHOOK_PATH = f"/v1/channels/{CHANNEL}/webhooks"
_CHUNK = 5000


def _chunk(seed: int) -> list[tuple[str, bytes]]:
    factory = OrderFactory(seed)
    out = []
    for _ in range(_CHUNK):
        order = factory.new_order()
        out.append((str(order["id"]), encode(order)))
    return out


def order_bodies(n: int, seed: int | None = None) -> list[bytes]:
    """`n` orders/create bodies with distinct order ids."""
    rng = random.Random(seed)
    seen: set[str] = set()
    bodies: list[bytes] = []
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        while len(bodies) < n:
            missing = n - len(bodies)
            seeds = [rng.randrange(1 << 62) for _ in range(-(-missing // _CHUNK))]
            for chunk in pool.map(_chunk, seeds):
                for order_id, body in chunk:
                    if order_id not in seen and len(bodies) < n:
                        seen.add(order_id)
                        bodies.append(body)
    return bodies


def shopify_headers(secret: str, body: bytes, topic: str = "orders/create") -> dict[str, str]:
    """The headers Shopify sends, with a fresh webhook id and the body's HMAC."""
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": sign(secret, body),
        "X-Shopify-Shop-Domain": SHOP_DOMAIN,
        "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        "X-Shopify-Triggered-At": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "X-Shopify-API-Version": API_VERSION,
        "X-Shopify-Event-Id": str(uuid.uuid4()),
    }


def raw_request(headers: dict[str, str], body: bytes) -> bytes:
    """One HTTP/1.1 keep-alive request, byte for byte as it goes on the wire."""
    lines = [f"POST {WEBHOOK_PATH} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def write_wrk_pool(bodies: Iterable[bytes], secret: str, prefix: Path, threads: int) -> int:
    """Write requests for wrk_replay.lua: `<prefix>.<thread>` files of "<len>\\n<request>"."""
    count = 0
    with ExitStack() as stack:
        files = [stack.enter_context(Path(f"{prefix}.{i}").open("wb")) for i in range(threads)]
        for i, body in enumerate(bodies):
            request = raw_request(shopify_headers(secret, body), body)
            out = files[i % threads]
            out.write(b"%d\n" % len(request))
            out.write(request)
            count += 1
    return count
