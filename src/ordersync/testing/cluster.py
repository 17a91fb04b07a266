"""A whole deployment on loopback, for contract, fault and end-to-end tests and benchmarks.

Three backends, one interface:

- `sqlite`:   `ordersync serve` alone on an SQLite file (embedded: the database queue);
- `postgres`: `ordersync serve` plus worker processes sharing the database queue;
- `rabbitmq`: `ordersync serve` (API only) plus worker processes on RabbitMQ.

Each cluster gets its own PostgreSQL database (empty, or a copy of `template_database`, a
migrated database no session is connected to) and its own RabbitMQ namespace, and removes
them when it stops. `database_url` / `broker_url` may point the hub at a fault proxy while
the cluster itself still reaches the real services for setup and cleanup.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import asyncpg
import yaml
from sqlalchemy.engine import make_url

from ordersync.entrypoints.process import HubProcess, free_port
from ordersync.simulators.shopify_store import StoreReport, StoreSimulator
from ordersync.simulators.sinks import FaultPlan, Sink, new_secret
from ordersync.simulators.verify import HubClient, Verdict, verify

Backend = Literal["sqlite", "postgres", "rabbitmq"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres", "rabbitmq")

POSTGRES_ADMIN_URL = os.environ.get(
    "ORDERSYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BROKER_URL = os.environ.get("ORDERSYNC_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
CHANNEL = "shop-cluster"
SUBSCRIPTIONS = {
    "erp": ["order.*"],
    "wms": ["order.created", "order.paid", "order.cancelled", "order.shipped"],
    "payment": ["order.created", "order.paid", "order.cancelled", "order.refunded"],
}


@dataclass
class RunResult:
    report: StoreReport
    verdict: Verdict
    orders: int
    elapsed_s: float
    hub_orders: list[dict[str, Any]] = field(default_factory=list)
    hub_deliveries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        v = self.verdict
        return (v.lost, v.duplicated, v.out_of_order) == (0, 0, 0)


class Cluster:
    def __init__(
        self,
        backend: Backend,
        *,
        workers: int = 2,
        sink_faults: FaultPlan | None = None,
        destination: dict[str, Any] | None = None,
        database_url: str | None = None,
        broker_url: str | None = None,
        worker_settings: dict[str, Any] | None = None,
        broker_settings: dict[str, Any] | None = None,
        log_level: str = "WARNING",
        subscriptions: dict[str, list[str]] | None = None,
        api_only: bool | None = None,
        template_database: str | None = None,
    ) -> None:
        # With workers the API leaves deliveries to them (with a broker it always does).
        self.api_only = (workers > 0 and backend == "postgres") if api_only is None else api_only
        self.log_level = log_level
        self.subscriptions = subscriptions or SUBSCRIPTIONS
        self.backend = backend
        self.workers_wanted = workers if backend != "sqlite" else 0
        self.workdir = Path(tempfile.mkdtemp(prefix=f"ordersync-{backend}-"))
        self.namespace = f"ostest-{uuid.uuid4().hex[:12]}"
        self._db_name = f"ordersync_cl_{uuid.uuid4().hex}"
        self._template = template_database
        self._db_override = database_url
        self._broker_override = broker_url
        self.sinks = {n: Sink(n, new_secret(), sink_faults) for n in self.subscriptions}
        self.shop_secret = secrets.token_urlsafe(32)
        self.api_key = secrets.token_urlsafe(24)
        self._destination = destination or {}
        self._worker_settings = worker_settings or {}
        self._broker_settings = broker_settings or {}
        self.api: HubProcess | None = None
        self.workers: list[HubProcess] = []

    # ---- URLs ------------------------------------------------------------------------
    @property
    def real_database_url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.workdir / 'hub.db'}"
        return (
            make_url(POSTGRES_ADMIN_URL)
            .set(database=self._db_name)
            .render_as_string(hide_password=False)
        )

    @property
    def database_url(self) -> str:
        return self._db_override or self.real_database_url

    @property
    def broker_url(self) -> str | None:
        if self.backend != "rabbitmq":
            return None
        return self._broker_override or BROKER_URL

    @property
    def url(self) -> str:
        assert self.api is not None
        return self.api.url

    def config(self) -> dict[str, Any]:
        destinations = [
            {
                "id": name,
                "url": sink.events_url,
                "secret": sink.secret,
                "events": self.subscriptions[name],
                "retry_schedule": [0.2, 0.5, 1.0],
                "retry_backoff": {"base": 1.0, "max_delay": 3.0, "max_age": 3600},
                "timeout": 2.0,
                "max_in_flight": 64,
                "breaker": {"failure_threshold": 200, "cooldown": 0.5, "max_cooldown": 2.0},
                **self._destination,
            }
            for name, sink in self.sinks.items()
        ]
        cfg: dict[str, Any] = {
            "database_url": self.database_url,
            "log_level": self.log_level,
            "channels": [{"id": CHANNEL, "kind": "shopify", "secret": self.shop_secret}],
            "destinations": destinations,
            "api_keys": [
                {
                    "id": "cluster",
                    "key": self.api_key,
                    "scopes": [
                        "orders:read",
                        "orders:write",
                        "deliveries:read",
                        "deliveries:write",
                    ],
                }
            ],
            "worker": dict(self._worker_settings),
        }
        if self.broker_url:
            cfg["broker_url"] = self.broker_url
            cfg["broker"] = {"namespace": self.namespace, **self._broker_settings}
        return cfg

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        for sink in self.sinks.values():
            await sink.start()
        if self.backend != "sqlite":
            admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
            try:
                template = f' TEMPLATE "{self._template}"' if self._template else ""
                await admin.execute(f'CREATE DATABASE "{self._db_name}"{template}')
            finally:
                await admin.close()
        path = self.workdir / "ordersync.yaml"
        path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.api = HubProcess(
            path,
            free_port(),
            log_path=self.workdir / "api.log",
            args=("--api-only",) if self.api_only else (),
        )
        self.api.start()
        await self.api.wait_ready()  # migrates before the workers start
        for i in range(self.workers_wanted):
            self.workers.append(
                HubProcess(
                    path,
                    free_port(),
                    log_path=self.workdir / f"worker{i}.log",
                    command="worker",
                )
            )
        for w in self.workers:
            w.start()
        for w in self.workers:
            await w.wait_ready()

    async def stop(self, keep: bool = False) -> None:
        for p in [*self.workers, *([self.api] if self.api else [])]:
            await asyncio.to_thread(p.terminate, 60.0)
        for sink in self.sinks.values():
            await sink.stop()
        if self.backend != "sqlite":
            admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{self._db_name}" WITH (FORCE)')
            finally:
                await admin.close()
        if self.backend == "rabbitmq":
            from ordersync.adapters.bus.rabbitmq import RabbitBus

            bus = RabbitBus(BROKER_URL, namespace=self.namespace, **_lanes(self._broker_settings))
            try:
                await bus.connect()
                await bus.delete_topology()
            finally:
                await bus.close()
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def __aenter__(self) -> Cluster:
        try:
            await self.start()
        except BaseException:
            await self.stop(keep=True)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(keep=exc[0] is not None)

    def logs(self) -> str:
        """The tail of every process log, for a failing test's message."""
        out = []
        for f in sorted(self.workdir.glob("*.log")):
            out.append(
                f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-30:])
            )
        return "\n".join(out)

    # ---- driving ---------------------------------------------------------------------
    def store(self, concurrency: int = 32, **kw: Any) -> StoreSimulator:
        return StoreSimulator(
            f"{self.url}/v1/channels/{CHANNEL}/webhooks",
            self.shop_secret,
            concurrency=concurrency,
            **kw,
        )

    async def run(
        self,
        orders: int,
        *,
        concurrency: int = 32,
        during: Callable[[Callable[[], int]], Awaitable[None]] | None = None,
        settle_timeout: float = 300.0,
        duplicate_rate: float = 0.01,
        reorder_rate: float = 0.01,
    ) -> RunResult:
        """Push `orders` orders through their lifecycle while `during(accepted)` injects a
        fault, wait until every delivery is settled, and compare sinks with the hub."""
        accepted = 0

        def on_accepted() -> None:
            nonlocal accepted
            accepted += 1

        started = time.monotonic()
        store = self.store(concurrency, duplicate_rate=duplicate_rate, reorder_rate=reorder_rate)
        async with store:
            fault = asyncio.ensure_future(during(lambda: accepted)) if during else None
            report = await store.run(orders, lifecycle=True, on_accepted=on_accepted)
            if fault is not None:
                await fault
        await self.settle(settle_timeout)
        elapsed = time.monotonic() - started
        async with aiohttp.ClientSession() as session:
            client = HubClient(self.url, self.api_key, session)
            hub_orders = await client.all_pages("/v1/orders", channel_id=CHANNEL)
            hub_deliveries = await client.all_pages("/v1/deliveries")
        verdict = verify(report, hub_orders, hub_deliveries, self.sinks)
        return RunResult(report, verdict, orders, elapsed, hub_orders, hub_deliveries)

    async def settle(self, timeout: float = 300.0) -> float:
        """Wait until no delivery is pending; returns the seconds it took."""
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            client = HubClient(self.url, self.api_key, session)
            while True:
                try:
                    if await client.pending_deliveries() == 0:
                        return time.monotonic() - started
                except (aiohttp.ClientError, OSError):
                    pass  # the API may be restarting in a scenario
                if time.monotonic() - started > timeout:
                    raise TimeoutError(
                        f"deliveries still pending after {timeout}s\n"
                        f"{await self._pending_report()}\n{self.logs()}"
                    )
                await asyncio.sleep(0.2)

    async def _pending_report(self, limit: int = 20) -> str:
        """The oldest pending deliveries with their retry and lease state, for a failure."""
        if self.backend == "sqlite":
            return "(pending deliveries: see the SQLite file in the work directory)"
        dsn = make_url(self.real_database_url).set(drivername="postgresql")
        try:
            conn = await asyncpg.connect(dsn.render_as_string(hide_password=False), timeout=5)
        except (OSError, asyncpg.PostgresError) as e:
            return f"(pending deliveries unavailable: {e})"
        try:
            rows = await conn.fetch(
                "SELECT seq, destination_id, order_id, attempts, last_status, last_error,"
                " (next_attempt_us - $1) / 1e6 AS due_in_s, lease_owner,"
                " (lease_until_us - $1) / 1e6 AS lease_left_s"
                " FROM deliveries WHERE state = 'pending' ORDER BY seq LIMIT $2",
                int(time.time() * 1e6),
                limit,
            )
        finally:
            await conn.close()
        return "oldest pending deliveries:\n" + "\n".join(str(dict(r)) for r in rows)

    def applied(self) -> int:
        return sum(len(s.ledger) for s in self.sinks.values())


def _lanes(broker_settings: dict[str, Any]) -> dict[str, Any]:
    return {"lanes": broker_settings["lanes"]} if "lanes" in broker_settings else {}
