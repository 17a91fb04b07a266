"""Fault injection on the hub's own processes: `ordersync serve` and `ordersync worker`
killed with SIGKILL mid-run and restarted (see fault_scenarios.py for how a scenario runs
and what it checks). These leave PostgreSQL and RabbitMQ alone, so they run beside the rest
of the suite."""

from __future__ import annotations

import asyncio

import pytest
from fault_scenarios import Accepted, Fault, Record, cluster, into_the_run, run_scenario

from ordersync.simulators.sinks import FaultPlan
from ordersync.testing.cluster import Cluster

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


async def kill_a_worker(c: Cluster, accepted: Accepted, fault: Fault) -> None:
    await into_the_run(accepted)
    victim = c.workers[0]
    fault.inject()
    applied = c.applied()
    victim.kill()  # SIGKILL: its leased deliveries, unacked messages, maybe the relay lease
    await asyncio.sleep(5.0)
    fault.facts["applied_while_a_worker_was_dead"] = c.applied() - applied
    victim.start()
    await victim.wait_ready()
    fault.lift()


@pytest.mark.timeout(300)
async def test_a_worker_killed_mid_delivery_loses_and_repeats_nothing_while_the_other_delivers(
    record_result: Record,
) -> None:
    """SIGKILL one of two workers mid-delivery, restart it 5 s later: each event once, in order."""
    # Slow sinks keep deliveries in flight at the moment of the kill.
    async with cluster(sink_faults=FaultPlan(latency=(0.01, 0.05))) as c:
        _, fault = await run_scenario(c, "worker_sigkill_rabbitmq", kill_a_worker, record_result)
        assert fault.facts["applied_while_a_worker_was_dead"] > 0, c.logs()


@pytest.mark.timeout(300)
async def test_a_worker_killed_mid_delivery_on_the_database_queue_loses_and_repeats_nothing(
    record_result: Record,
) -> None:
    """Same SIGKILL on backend "postgres" (database queue, no broker): each event once, in order."""
    async with cluster("postgres", sink_faults=FaultPlan(latency=(0.01, 0.05))) as c:
        _, fault = await run_scenario(c, "worker_sigkill_postgres", kill_a_worker, record_result)
        assert fault.facts["applied_while_a_worker_was_dead"] > 0, c.logs()


async def kill_the_api(c: Cluster, accepted: Accepted, fault: Fault) -> None:
    await into_the_run(accepted)
    assert c.api is not None
    fault.inject()
    fault.facts["accepted_when_killed"] = accepted()
    c.api.kill()  # in-flight webhooks get no answer; the store retries them (same id)
    await asyncio.sleep(0.5)
    c.api.start()
    await c.api.wait_ready()
    fault.lift()


@pytest.mark.timeout(300)
async def test_the_api_killed_mid_ingest_keeps_every_acknowledged_webhook_exactly_once(
    record_result: Record,
) -> None:
    """SIGKILL `serve` during the ingest burst, restart it: retried webhooks land once, in order."""
    async with cluster() as c:
        result, fault = await run_scenario(c, "api_sigkill_rabbitmq", kill_the_api, record_result)

        # Mid-burst: the store still had webhooks to send when `serve` died.
        assert fault.facts["accepted_when_killed"] < result.report.accepted, c.logs()
