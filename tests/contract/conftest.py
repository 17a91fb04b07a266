"""The contract suite runs every test once per backend combination, as real processes:

- `sqlite`:   SQLite + database queue (`ordersync serve` alone, the embedded default);
- `postgres`: PostgreSQL + database queue (`serve` plus two `ordersync worker`s);
- `rabbitmq`: PostgreSQL + RabbitMQ (`serve` as API only plus two workers).

A backend whose service is unreachable is skipped on a laptop and FAILS under CI=true.
On PostgreSQL each cluster's database starts as a copy of the session's migrated template
(see tests/conftest.py): `serve` still runs its migration step, which finds nothing to do.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from ordersync.testing.cluster import BACKENDS, BROKER_URL, POSTGRES_ADMIN_URL, Cluster


def _reachable(url: str, default_port: int) -> bool:
    u = make_url(url) if "://" in url and not url.startswith("amqp") else None
    if u is not None:
        host, port = u.host or "127.0.0.1", u.port or default_port
    else:
        rest = url.split("@")[-1].split("/")[0]
        host, _, p = rest.partition(":")
        port = int(p or default_port)
    try:
        socket.create_connection((host, port), 2).close()
        return True
    except OSError:
        return False


def require(backend: str) -> None:
    missing = []
    if backend != "sqlite" and not _reachable(POSTGRES_ADMIN_URL, 5432):
        missing.append("PostgreSQL")
    if backend == "rabbitmq" and not _reachable(BROKER_URL, 5672):
        missing.append("RabbitMQ")
    if missing:
        reason = f"{' and '.join(missing)} unreachable for the {backend} backend"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: every backend must run, never skip)")
        pytest.skip(reason)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    require(request.param)
    return str(request.param)


ClusterFactory = Callable[..., Any]


@pytest.fixture
async def cluster_for(
    backend: str, request: pytest.FixtureRequest
) -> AsyncIterator[ClusterFactory]:
    """`await cluster_for(**kw)`: a started Cluster on this test's backend, stopped after."""
    started: list[Cluster] = []
    template: str | None = None
    if backend != "sqlite" and os.environ.get("ORDERSYNC_TEST_TEMPLATES", "1") != "0":
        template = request.getfixturevalue("migrated_templates").postgres_database()

    async def make(**kw: Any) -> Cluster:
        kw.setdefault("subscriptions", {"erp": ["order.*"], "wms": ["order.created", "order.paid"]})
        kw.setdefault("template_database", template)
        c = Cluster(backend, **kw)  # type: ignore[arg-type]
        await c.__aenter__()
        started.append(c)
        return c

    yield make
    for c in started:
        await c.stop()
