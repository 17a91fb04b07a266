"""The baseline: the plain FastAPI webhook receiver a Python team would write first.

One process (uvicorn, uvloop, httptools, like `ordersync serve`). Per request it verifies the
same Shopify HMAC, does one plain INSERT of the raw body and commits it before answering 200:
aiosqlite in autocommit mode (each INSERT is its own transaction) on WAL with
synchronous=FULL, or an asyncpg pool (each `execute` is its own transaction). No parsing, no
mapping, no dedupe, no outbox: the least work that still makes a 200 durable.

It reads the hub's own config file (database_url and the channel secret), so both servers
get the same configuration:

    python -m bench.baseline_app --config ordersync.yaml --host 127.0.0.1 --port 8001
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import orjson
import uvicorn
from fastapi import FastAPI, Request
from sqlalchemy.engine import make_url
from starlette.responses import Response

from ordersync.adapters.channels.shopify import verify_hmac
from ordersync.config import Settings, load_settings

TABLE = "raw_webhooks"


class Store(Protocol):
    async def open(self) -> None: ...
    async def insert(self, webhook_id: str, topic: str | None, body: bytes) -> None: ...
    async def close(self) -> None: ...


class SqliteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: Any = None

    async def open(self) -> None:
        import aiosqlite

        # isolation_level=None: autocommit, so every INSERT commits (and fsyncs) on its own.
        self.conn = await aiosqlite.connect(self.path, isolation_level=None)
        await self.conn.execute("PRAGMA journal_mode=WAL")
        await self.conn.execute("PRAGMA synchronous=FULL")
        await self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (webhook_id TEXT NOT NULL, topic TEXT,"
            " received_us INTEGER NOT NULL, body BLOB NOT NULL)"
        )

    async def insert(self, webhook_id: str, topic: str | None, body: bytes) -> None:
        await self.conn.execute(
            f"INSERT INTO {TABLE} (webhook_id, topic, received_us, body) VALUES (?, ?, ?, ?)",  # noqa: S608
            (webhook_id, topic, time.time_ns() // 1000, body),
        )

    async def close(self) -> None:
        await self.conn.close()


class PostgresStore:
    def __init__(self, url: str, pool_size: int = 16) -> None:
        self.url = url
        self.pool_size = pool_size
        self.pool: Any = None

    async def open(self) -> None:
        import asyncpg

        self.pool = await asyncpg.create_pool(
            self.url, min_size=self.pool_size, max_size=self.pool_size
        )
        await self.pool.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (webhook_id TEXT NOT NULL, topic TEXT,"
            " received_us BIGINT NOT NULL, body BYTEA NOT NULL)"
        )

    async def insert(self, webhook_id: str, topic: str | None, body: bytes) -> None:
        await self.pool.execute(
            f"INSERT INTO {TABLE} (webhook_id, topic, received_us, body) VALUES ($1, $2, $3, $4)",  # noqa: S608
            webhook_id,
            topic,
            time.time_ns() // 1000,
            body,
        )

    async def close(self) -> None:
        await self.pool.close()


def store_for(database_url: str) -> Store:
    url = make_url(database_url)
    if url.drivername.startswith("sqlite"):
        return SqliteStore(str(url.database))
    return PostgresStore(url.set(drivername="postgresql").render_as_string(hide_password=False))


def _json(data: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def create_app(settings: Settings) -> FastAPI:
    store = store_for(settings.database_url)
    secrets = {c.id: c.secret.get_secret_value() for c in settings.channels}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await store.open()
        yield
        await store.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    async def readyz() -> Response:
        return _json({"status": "ready"})

    @app.post("/v1/channels/{channel_id}/webhooks")
    async def receive(channel_id: str, request: Request) -> Response:
        secret = secrets.get(channel_id)
        if secret is None:
            return _json({"error": "unknown_channel"}, 404)
        body = await request.body()
        headers = request.headers
        if not verify_hmac(secret, body, headers.get("x-shopify-hmac-sha256")):
            return _json({"error": "invalid_signature"}, 401)
        webhook_id = headers.get("x-shopify-webhook-id")
        if not webhook_id:
            return _json({"error": "missing_header"}, 400)
        await store.insert(webhook_id, headers.get("x-shopify-topic"), body)
        return _json({"outcome": "stored", "order_id": webhook_id})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    settings = load_settings(args.config)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        backlog=2048,
    )


if __name__ == "__main__":
    main()
