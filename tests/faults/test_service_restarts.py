"""Fault injection on the services themselves: PostgreSQL and RabbitMQ restarted mid-run
(see fault_scenarios.py for how a scenario runs and what it checks).

Marked `restarts_services`: every other test on the machine shares these services, so
`./dev test` runs these two alone, after the rest of the suite.
"""

from __future__ import annotations

import asyncio

import pytest
from fault_scenarios import Accepted, Fault, Record, cluster, into_the_run, run_scenario

from ordersync.testing import services
from ordersync.testing.cluster import Cluster

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.restarts_services]


async def restart_rabbitmq(c: Cluster, accepted: Accepted, fault: Fault) -> None:
    await into_the_run(accepted)
    fault.inject()
    try:
        await services.stop_rabbitmq()
        await asyncio.sleep(3.0)
    finally:
        await services.start_rabbitmq()
    fault.lift()


@pytest.mark.timeout(300)
async def test_a_rabbitmq_restart_mid_run_loses_repeats_and_reorders_nothing(
    record_result: Record,
) -> None:
    """Stop the RabbitMQ app mid-run for 3 s, start it again: every event arrives once, in order."""
    async with cluster() as c:
        await run_scenario(c, "rabbitmq_restart", restart_rabbitmq, record_result)


async def restart_postgres(c: Cluster, accepted: Accepted, fault: Fault) -> None:
    await into_the_run(accepted)
    fault.inject()
    await services.restart_postgres()  # always starts it again, even if stopping failed
    fault.lift()


@pytest.mark.timeout(300)
async def test_a_postgresql_restart_mid_run_loses_repeats_and_reorders_nothing(
    record_result: Record,
) -> None:
    """Restart PostgreSQL mid-run (fast shutdown): every accepted order kept, each event once."""
    async with cluster() as c:
        await run_scenario(c, "postgresql_restart", restart_postgres, record_result)
