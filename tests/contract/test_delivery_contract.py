"""What every storage and bus backend promises, checked on real processes: every accepted
order kept, every event delivered to every subscriber once and in order per order, retries,
dead letters and replay, operator verbs, readiness, and a graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest

from ordersync.simulators.sinks import FaultPlan
from ordersync.simulators.verify import HubClient, verify
from ordersync.testing.cli import run_cli_streams, run_process
from ordersync.testing.cluster import Cluster

ClusterFactory = Callable[..., Awaitable[Cluster]]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def clean(c: Cluster, result: object) -> str:
    return f"{getattr(result, 'verdict', None)}\n{c.logs()}"


async def test_every_accepted_order_reaches_each_subscriber_once_in_order(
    cluster_for: ClusterFactory,
) -> None:
    """300 orders through their lifecycle, with duplicate and reordered webhooks."""
    c = await cluster_for()

    result = await c.run(300, duplicate_rate=0.05, reorder_rate=0.05)

    assert result.clean, clean(c, result)
    assert len(result.hub_orders) == 300
    assert all(d["state"] == "succeeded" for d in result.hub_deliveries)
    assert c.sinks["erp"].ledger, "the erp sink received nothing"


async def test_a_destination_failing_each_event_twice_still_gets_each_once_in_order(
    cluster_for: ClusterFactory,
) -> None:
    """Retries keep the webhook-id and the order; every delivery shows its three attempts."""
    c = await cluster_for(
        sink_faults=FaultPlan(fail_first=2),
        destination={"retry_schedule": [0.05, 0.05, 0.05], "retry_backoff": None},
    )

    result = await c.run(60)

    assert result.clean, clean(c, result)
    assert {d["attempts"] for d in result.hub_deliveries} == {3}
    assert sum(s.failures_injected for s in c.sinks.values()) == 2 * len(result.hub_deliveries)


async def cli(c: Cluster, *args: str) -> tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr) of `ordersync *args`: a real child process on the SQLite
    cluster (the entry point itself is proven there), in this process on the others (the
    same Typer app without a second of imports per call: testing/cli.py)."""
    argv = (*args, "--config", str(c.workdir / "ordersync.yaml"))
    if c.backend == "sqlite":
        return await run_process(*argv)
    return await run_cli_streams(*argv)


async def test_dead_letters_are_listed_and_replayed_by_the_operator_cli(
    cluster_for: ClusterFactory,
) -> None:
    """A destination down past its retries: `dlq list` shows it, `dlq replay` delivers it."""
    c = await cluster_for(
        destination={"retry_schedule": [0.05], "retry_backoff": None},
        subscriptions={"erp": ["order.created"]},
    )
    c.sinks["erp"].faults = FaultPlan(error_rate=1.0)
    async with c.store(8) as store:
        report = await store.run(20, lifecycle=False)
    await c.settle(120)

    listed_code, listed, listed_err = await cli(c, "dlq", "list", "--json")
    c.sinks["erp"].faults = FaultPlan()
    replayed_code, replayed, replayed_err = await cli(c, "dlq", "replay")
    await c.settle(120)
    _, summary, _ = await cli(c, "deliveries", "summary", "--json")

    assert listed_code == 0, listed_err.decode()
    dead = orjson.loads(listed)
    assert len(dead) == len(report.accepted_orders) == 20
    assert {d["state"] for d in dead} == {"dead"}
    assert replayed_code == 0, replayed_err.decode()
    assert b"queued 20" in replayed
    assert orjson.loads(summary) == [
        {"destination": "erp", "pending": 0, "succeeded": 20, "dead": 0}
    ]
    assert sorted(e.webhook_id for e in c.sinks["erp"].ledger) == sorted(
        d["event_id"] for d in dead
    )


async def test_readiness_reports_the_database_and_the_broker_where_there_is_one(
    cluster_for: ClusterFactory, backend: str
) -> None:
    """`/readyz` names each dependency it checked."""
    c = await cluster_for()

    async with aiohttp.ClientSession() as session, session.get(f"{c.url}/readyz") as r:
        body = await r.json()

    assert r.status == 200
    expected = {"hub": "ok", "database": "ok"}
    if backend == "rabbitmq":
        expected["broker"] = "ok"
    assert body["checks"] == expected


async def test_sigterm_drains_in_flight_deliveries_and_a_restart_finishes_the_rest(
    cluster_for: ClusterFactory,
) -> None:
    """Stop every delivering process mid-stream: exit 0, nothing lost, nothing twice."""
    c = await cluster_for(sink_faults=FaultPlan(latency=(0.05, 0.2)))
    delivering = c.workers or ([c.api] if c.api else [])
    async with c.store(16) as store:
        report = await store.run(150, lifecycle=True)
    await asyncio.sleep(0.5)

    codes = [await asyncio.to_thread(p.terminate, 60.0) for p in delivering]
    applied_at_stop = c.applied()
    for p in delivering:
        p.start()
    for p in delivering:
        await p.wait_ready()
    await c.settle(120)
    async with aiohttp.ClientSession() as session:
        client = HubClient(c.url, c.api_key, session)
        orders = await client.all_pages("/v1/orders")
        deliveries = await client.all_pages("/v1/deliveries")
    verdict = verify(report, orders, deliveries, c.sinks)

    assert codes == [0] * len(delivering), c.logs()
    assert applied_at_stop > 0, "nothing was delivered before the stop"
    assert (verdict.lost, verdict.duplicated, verdict.out_of_order) == (0, 0, 0), verdict.problems
