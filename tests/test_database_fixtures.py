"""The database fixtures of tests/conftest.py keep their promises on both backends: a
`migrated_database_url` is at the latest migration head, a plain `database_url` is empty,
and every test's database is its own (a write in one reaches neither the template nor the
next test's copy)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from ordersync.adapters.db import migrate
from ordersync.adapters.db.database import Database

if TYPE_CHECKING:
    from conftest import MigratedTemplates  # tests/conftest.py

MIGRATIONS = Path(migrate.__file__).parent / "migrations"
# Turns of the independence test that already wrote their marker: backend -> (url, marker).
WRITTEN: dict[str, list[tuple[str, str]]] = {}


def latest_head() -> str:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def backend_of(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


async def tables(db: Database) -> set[str]:
    async with db.read() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


async def lease_names(db: Database) -> set[str]:
    async with db.read() as conn:
        return {n for (n,) in await conn.execute(text("SELECT name FROM relay_lease"))}


async def write_marker(db: Database, name: str) -> None:
    async with db.write() as conn:
        await conn.execute(
            text("INSERT INTO relay_lease (name, owner, epoch, until_us) VALUES (:n, 'x', 0, 0)"),
            {"n": name},
        )


async def lease_names_of_a_new_copy(
    templates: MigratedTemplates, beside: str, tmp_path: Path
) -> set[str]:
    """The relay_lease names in a copy of the template made now, on the backend of the
    database `beside` (and on its server); the copy is removed again."""
    if backend_of(beside) == "sqlite":
        copy = tmp_path / "next.db"
        templates.copy_sqlite(copy)
        db = Database(f"sqlite:///{copy}")
        try:
            return await lease_names(db)
        finally:
            await db.dispose()
    name = templates.clone_postgres()
    url = make_url(beside).set(database=name).render_as_string(hide_password=False)
    db = Database(url)
    try:
        return await lease_names(db)
    finally:
        await db.dispose()
        templates.drop_postgres(name)


@pytest.fixture
async def open_db() -> AsyncIterator[list[Database]]:
    """Databases opened by the test, disposed of afterwards (a PostgreSQL copy is dropped
    WITH (FORCE), but an open pool would still log its broken connections)."""
    opened: list[Database] = []
    yield opened
    for db in opened:
        await db.dispose()


async def test_a_migrated_database_is_at_the_latest_head(
    migrated_database_url: str, open_db: list[Database]
) -> None:
    """The template copy carries the newest revision and what the migrations built, up to
    0013's columns on `carrier_inbox`."""
    db = Database(migrated_database_url)
    open_db.append(db)

    revision = await migrate.current(db)
    names = await tables(db)
    async with db.read() as conn:
        inbox = await conn.run_sync(lambda s: inspect(s).get_columns("carrier_inbox"))

    assert revision == latest_head()
    assert {"orders", "relay_lease", "carrier_inbox", "alembic_version"} <= names
    assert {"attempts", "retry_us", "last_error"} <= {c["name"] for c in inbox}
    assert await lease_names(db) == {"outbox"}  # the data migrations ran too


@pytest.mark.parametrize(
    ("migrated_database_url", "database_url"),
    [
        pytest.param("sqlite", "sqlite", id="sqlite"),
        pytest.param("postgresql", "postgresql", id="postgresql", marks=pytest.mark.postgres),
    ],
    indirect=True,
)
async def test_a_migrated_database_has_the_schema_a_fresh_migration_builds(
    migrated_database_url: str, database_url: str, open_db: list[Database]
) -> None:
    """Same tables as an empty database of the same backend migrated from scratch."""
    copy, fresh = Database(migrated_database_url), Database(database_url)
    open_db.extend([copy, fresh])

    await migrate.upgrade(fresh)

    assert await tables(copy) == await tables(fresh)
    assert await migrate.current(copy) == await migrate.current(fresh) == latest_head()


async def test_a_plain_database_url_outside_hub_tests_is_empty(
    database_url: str, open_db: list[Database]
) -> None:
    """Tests that do not start a hub (some test the migrations) still get an empty one."""
    db = Database(database_url)
    open_db.append(db)

    assert await migrate.current(db) is None
    assert await tables(db) == set()


@pytest.mark.parametrize("turn", ["first", "second"])
async def test_a_write_in_one_tests_database_is_not_seen_in_another(
    turn: str,
    migrated_database_url: str,
    migrated_templates: MigratedTemplates,
    tmp_path: Path,
    open_db: list[Database],
) -> None:
    """Each turn writes a marker row: no other turn's marker is in its database, and a new
    copy of the template made after the write does not have this turn's marker either."""
    backend = backend_of(migrated_database_url)
    earlier = WRITTEN.setdefault(backend, [])
    db = Database(migrated_database_url)
    open_db.append(db)
    marker = f"marker-{turn}-{uuid.uuid4().hex}"

    before = await lease_names(db)
    await write_marker(db, marker)
    after = await lease_names(db)
    earlier.append((migrated_database_url, marker))
    in_next_copy = await lease_names_of_a_new_copy(
        migrated_templates, migrated_database_url, tmp_path
    )

    assert before == {"outbox"}  # no marker of the turn that ran before, nor of this one
    assert after == {"outbox", marker}
    assert in_next_copy == {"outbox"}
    assert len({url for url, _ in earlier}) == len(earlier)  # every turn had its own database
