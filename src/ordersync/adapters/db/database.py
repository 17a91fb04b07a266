"""Engines and transactions for SQLite and PostgreSQL behind one small interface.

SQLite allows one writer at a time. Instead of letting transactions race for the lock
(and fail with SQLITE_BUSY when a reader upgrades), all writes go through one connection
that opens `BEGIN IMMEDIATE`; reads use a separate pool and never block on WAL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


def async_url(url: str) -> str:
    """Map a plain `sqlite:///` or `postgresql://` URL to its asyncio driver."""
    u = make_url(url)
    if u.drivername in ("sqlite", "sqlite+aiosqlite"):
        return u.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if u.drivername in ("postgresql", "postgres", "postgresql+asyncpg"):
        return u.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database URL scheme {u.drivername!r} (sqlite or postgresql)")


def redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class Database:
    """`hide_parameters`: database errors end up in logs, and parameters hold customer data."""

    def __init__(
        self, url: str, *, pool_size: int = 8, idle_in_transaction_timeout: float = 60.0
    ) -> None:
        self.url = url
        aurl = async_url(url)
        self.is_sqlite = aurl.startswith("sqlite")
        if self.is_sqlite:
            path = make_url(aurl).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.writer = create_async_engine(
                aurl, pool_size=1, max_overflow=0, pool_timeout=60, hide_parameters=True
            )
            self.reader = create_async_engine(
                aurl, pool_size=pool_size, max_overflow=0, hide_parameters=True
            )
            _sqlite_setup(self.writer, immediate=True)
            _sqlite_setup(self.reader, immediate=False)
        else:
            # A transaction the hub left open and idle (a task cancelled mid-transaction
            # whose clean-up failed) would hold its row locks for ever, and every later
            # change of those rows would wait behind it: PostgreSQL ends such a session
            # after `idle_in_transaction_timeout` seconds. No transaction of the hub waits
            # that long between two statements.
            idle_ms = str(int(idle_in_transaction_timeout * 1000))
            self.writer = create_async_engine(
                aurl,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                hide_parameters=True,
                connect_args={"server_settings": {"idle_in_transaction_session_timeout": idle_ms}},
            )
            self.reader = self.writer

    @property
    def dialect(self) -> str:
        return "sqlite" if self.is_sqlite else "postgresql"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: commits on normal exit, rolls back on error."""
        async with self.writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.reader.connect() as conn:
            yield conn

    async def ping(self) -> None:
        from sqlalchemy import text

        async with self.read() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


def _sqlite_setup(engine: AsyncEngine, *, immediate: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see "begin" below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we answer 200. Group commit keeps it cheap.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
