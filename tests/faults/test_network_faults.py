"""Fault injection on the network: the hub's processes reach PostgreSQL or RabbitMQ through
a fault proxy that adds latency, resets connections and then swallows every byte (see
fault_scenarios.py for how a scenario runs and what it checks). The services themselves
keep running, so these run beside the rest of the suite."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fault_scenarios import (
    SUBSCRIPTIONS,
    Accepted,
    Fault,
    FaultFn,
    Record,
    cluster,
    into_the_run,
    run_scenario,
)
from sqlalchemy.engine import make_url

from ordersync.testing import services
from ordersync.testing.cluster import Cluster
from ordersync.testing.faultproxy import FaultProxy

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


class ProxiedDatabaseCluster(Cluster):
    """A cluster whose hub processes reach PostgreSQL through a fault proxy; the cluster
    itself still creates and drops its database over the real port."""

    def __init__(self, proxy: FaultProxy, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.proxy = proxy

    @property
    def database_url(self) -> str:
        return (
            make_url(self.real_database_url)
            .set(host="127.0.0.1", port=self.proxy.port)
            .render_as_string(hide_password=False)
        )


def flaky_network(proxy: FaultProxy) -> FaultFn:
    """Latency, then resets, then a black hole, then restore."""

    async def strike(c: Cluster, accepted: Accepted, fault: Fault) -> None:
        await into_the_run(accepted)
        fault.inject()
        try:
            proxy.latency(0.03, jitter=0.01)
            await asyncio.sleep(3.0)
            proxy.reset()  # open connections get a RST; new ones too while in this mode
            await asyncio.sleep(1.0)
            proxy.blackhole()  # bytes vanish, as behind a pulled cable
            await asyncio.sleep(3.0)
        finally:
            proxy.restore()
        fault.lift()
        fault.facts["proxy_connections_total"] = proxy.connections_total

    return strike


@pytest.mark.timeout(300)
async def test_latency_resets_and_a_black_hole_to_postgresql_lose_repeat_and_reorder_nothing(
    record_result: Record,
) -> None:
    """API and workers reach PostgreSQL through a proxy: 3 s latency, 1 s resets, 3 s black hole."""
    async with FaultProxy("127.0.0.1", 5432) as proxy:
        c = ProxiedDatabaseCluster(proxy, "rabbitmq", workers=2, subscriptions=SUBSCRIPTIONS)
        async with c:
            await run_scenario(c, "postgresql_network_faults", flaky_network(proxy), record_result)


@pytest.mark.timeout(300)
async def test_latency_resets_and_a_black_hole_to_rabbitmq_lose_repeat_and_reorder_nothing(
    record_result: Record,
) -> None:
    """API and workers reach RabbitMQ through a proxy: 3 s latency, 1 s resets, 3 s black hole."""
    broker = make_url(services.BROKER_URL)
    async with FaultProxy(broker.host or "127.0.0.1", broker.port or 5672) as proxy:
        proxied = broker.set(host="127.0.0.1", port=proxy.port)
        async with cluster(broker_url=proxied.render_as_string(hide_password=False)) as c:
            await run_scenario(c, "rabbitmq_network_faults", flaky_network(proxy), record_result)
