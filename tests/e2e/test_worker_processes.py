"""`ordersync worker --processes N` on PostgreSQL: several worker processes share the
database queue, their metrics are served together (Prometheus multiprocess mode), and
SIGTERM drains them all to a clean exit."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import aiohttp
import pytest

from ordersync.entrypoints.process import free_port
from ordersync.testing.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(240)]


async def scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as r,
    ):
        return await r.text()


async def test_two_supervised_worker_processes_deliver_and_report_metrics_together() -> None:
    """The supervisor's /metrics sums both children; SIGTERM ends everything with exit 0."""
    async with Cluster(
        "postgres", workers=0, api_only=True, subscriptions={"erp": ["order.*"]}
    ) as c:
        port = free_port()
        sup = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, polled below
            [
                sys.executable,
                "-m",
                "ordersync",
                "worker",
                "--processes",
                "2",
                "--metrics-port",
                str(port),
                "--config",
                str(c.workdir / "ordersync.yaml"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(c.workdir / "supervisor.log").open("wb"),
        )
        try:
            for _ in range(100):  # the supervisor serves /metrics once it has started
                try:
                    await scrape(port)
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            result = await c.run(200)
            text = await scrape(port)
        finally:
            sup.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(sup.wait, 60)

    assert result.clean, result.verdict.problems
    succeeded = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(
            'ordersync_delivery_attempts_total{destination="erp",outcome="succeeded"'
        )
    ]
    assert succeeded == [float(len(result.hub_deliveries))]
    assert code == 0
