"""Fixtures every test layer shares: the real databases the hub runs on.

`database_url` runs a test once on an SQLite file and once on a fresh PostgreSQL database
(created for that test alone and dropped afterwards). Without a reachable PostgreSQL the
PostgreSQL half is skipped on a laptop, but FAILS under CI=true: CI must never go green
by silently testing one backend.

Migrating a database takes longer than most tests that use it (about 0.8 s on PostgreSQL,
0.15 s on SQLite, a few hundred times per run). So a test that starts a hub (it asks for
`start_hub`, which migrates the database anyway) gets its database already migrated: a
copy of a template migrated once per session (per xdist worker), by `CREATE DATABASE ...
TEMPLATE` on PostgreSQL and a file copy on SQLite. The hub's own migration step still runs
and finds nothing to do. Every other test gets an empty database, as before (some test the
migrations themselves); `migrated_database_url` asks for a migrated one explicitly.
`ORDERSYNC_TEST_TEMPLATES=0` turns the templates off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from ordersync.adapters.db import migrate
from ordersync.adapters.db.database import Database

# The maintenance database of the local PostgreSQL service (trust auth, no password).
POSTGRES_ADMIN_URL = os.environ.get(
    "ORDERSYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# Fixtures whose tests migrate their database anyway, so may start from a migrated copy;
# ORDERSYNC_TEST_TEMPLATES=0 migrates every such database from scratch instead.
MIGRATING_FIXTURES = frozenset({"start_hub"})
USE_TEMPLATES = os.environ.get("ORDERSYNC_TEST_TEMPLATES", "1") != "0"

T = TypeVar("T")


async def _admin_connection() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        where = make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)
        reason = f"PostgreSQL is unreachable at {where}: {type(e).__name__}: {e}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run, never skip)")
        pytest.skip(reason)


def _postgres_url(name: str) -> str:
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _run(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from sync code, on a thread of its own: a sync session fixture may be
    set up while a test's event loop exists, and must neither use nor replace that loop."""

    async def call() -> T:
        return await make()

    with ThreadPoolExecutor(1, thread_name_prefix="migrated-template") as pool:
        return pool.submit(asyncio.run, call()).result()


async def _migrate(url: str) -> None:
    db = Database(url, pool_size=1)
    try:
        await migrate.upgrade(db)
    finally:
        await db.dispose()  # no session may stay on a PostgreSQL template


class MigratedTemplates:
    """A migrated SQLite file and a migrated PostgreSQL template database, each made on
    first use (once per session, i.e. per xdist worker) and removed at the end.

    PostgreSQL copies are made one ahead and dropped after their test, on a background
    thread: creating and dropping a database is mostly waiting for the disk, which can
    overlap with the tests' own work."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._sqlite: Path | None = None
        self._postgres: str | None = None
        self._lock = threading.Lock()
        self._background: ThreadPoolExecutor | None = None
        self._spare: Future[str] | None = None
        self._drops: list[Future[None]] = []

    def sqlite_file(self) -> Path:
        with self._lock:
            if self._sqlite is None:
                path = self._directory / "migrated.db"
                _run(lambda: _migrate(f"sqlite:///{path}"))
                with sqlite3.connect(path) as conn:  # everything in the one file, no -wal
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._sqlite = path
            return self._sqlite

    def postgres_database(self) -> str:
        """The name of the migrated template (no session ever stays connected to it)."""
        with self._lock:
            if self._postgres is None:
                name = f"ordersync_tpl_{uuid.uuid4().hex}"
                _run(lambda: _create_database(name))
                try:
                    _run(lambda: _migrate(_postgres_url(name)))
                except BaseException:
                    _run(lambda: _drop_database(name))
                    raise
                self._postgres = name
            return self._postgres

    def copy_sqlite(self, to: Path) -> None:
        shutil.copyfile(self.sqlite_file(), to)

    def clone_postgres(self) -> str:
        """A new migrated database, the caller's alone; give it back with drop_postgres()."""
        template = self.postgres_database()
        with self._lock:
            ready = self._spare or self._submit(_clone_database, template)
            self._spare = self._submit(_clone_database, template)
        return ready.result()

    def drop_postgres(self, name: str) -> None:
        with self._lock:
            self._drops.append(self._submit(_drop_database_now, name))

    def _submit(self, fn: Callable[[str], T], arg: str) -> Future[T]:
        if self._background is None:
            self._background = ThreadPoolExecutor(1, thread_name_prefix="database-clones")
        return self._background.submit(fn, arg)

    def close(self) -> None:
        with self._lock:
            spare, self._spare = self._spare, None
            drops, self._drops = self._drops, []
        if spare is not None:
            with contextlib.suppress(BaseException):  # its error, if any, was never needed
                drops.append(self._submit(_drop_database_now, spare.result()))
        for drop in drops:
            drop.result()
        if self._background is not None:
            self._background.shutdown()
        if self._postgres is not None:
            name, self._postgres = self._postgres, None
            _run(lambda: _drop_database(name))


def _clone_database(template: str) -> str:
    """On a background thread (no event loop there): a copy of `template`; its name."""
    name = f"ordersync_it_{uuid.uuid4().hex}"
    asyncio.run(_create_database(name, template))
    return name


def _drop_database_now(name: str) -> None:
    asyncio.run(_drop_database(name))


async def _create_database(name: str, template: str | None = None) -> None:
    admin = await _admin_connection()
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await admin.close()


async def _drop_database(name: str) -> None:
    admin = await _admin_connection()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedTemplates]:
    templates = MigratedTemplates(tmp_path_factory.mktemp("migrated-templates"))
    yield templates
    templates.close()


async def _database(
    kind: str, tmp_path: Path, templates: MigratedTemplates | None
) -> AsyncIterator[str]:
    """An SQLite file or a PostgreSQL database of this test's alone, migrated if
    `templates` is given, removed afterwards (the SQLite file with tmp_path)."""
    if kind == "sqlite":
        if templates is not None:
            templates.copy_sqlite(tmp_path / "hub.db")
        yield f"sqlite:///{tmp_path}/hub.db"
        return
    if templates is not None:
        name = templates.clone_postgres()
        try:
            yield _postgres_url(name)
        finally:
            templates.drop_postgres(name)
        return
    name = f"ordersync_it_{uuid.uuid4().hex}"
    await _create_database(name)
    try:
        yield _postgres_url(name)
    finally:
        await _drop_database(name)


BACKEND_PARAMS: list[Any] = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKEND_PARAMS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of a database of each kind, this test's alone: empty, or already migrated if
    the test starts a hub (see the module docstring)."""
    templates: MigratedTemplates | None = None
    if USE_TEMPLATES and MIGRATING_FIXTURES.intersection(request.fixturenames):
        templates = request.getfixturevalue("migrated_templates")
    async for url in _database(request.param, tmp_path, templates):
        yield url


@pytest.fixture(params=BACKEND_PARAMS)
async def migrated_database_url(
    request: pytest.FixtureRequest, tmp_path: Path, migrated_templates: MigratedTemplates
) -> AsyncIterator[str]:
    """A URL of a migrated database of each kind, this test's alone."""
    async for url in _database(request.param, tmp_path, migrated_templates):
        yield url
