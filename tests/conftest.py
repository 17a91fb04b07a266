"""Fixtures every test layer shares: the real databases the hub runs on.

`database_url` runs a test once on an SQLite file and once on a fresh PostgreSQL database
(created for that test alone and dropped afterwards). Without a reachable PostgreSQL the
PostgreSQL half is skipped on a laptop, but FAILS under CI=true: CI must never go green
by silently testing one backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

# The maintenance database of the local PostgreSQL service (trust auth, no password).
POSTGRES_ADMIN_URL = os.environ.get(
    "ORDERSYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def _admin_connection() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        where = make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)
        reason = f"PostgreSQL is unreachable at {where}: {type(e).__name__}: {e}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run, never skip)")
        pytest.skip(reason)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty database of each kind, this test's alone."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/hub.db"
        return
    name = f"ordersync_it_{uuid.uuid4().hex}"
    admin = await _admin_connection()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await _admin_connection()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
