"""Fault injection against the production deployment: `ordersync serve` plus two
`ordersync worker` processes on PostgreSQL and RabbitMQ, driven by the Shopify store
simulator and checked against Standard Webhooks sinks.

Each scenario pushes 2,000 orders through their lifecycle, injects its fault about a third
of the way into the ingest, lifts it a few seconds later, waits until no delivery is
pending, and then compares the sinks' ledgers with the hub: nothing lost, nothing applied
twice, every order's events in order. Recovery times (fault lifted -> backlog drained) are
recorded in bench/results/faults.json and printed at the end of the session; they are
reported, never asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from ordersync.simulators import shopify_store
from ordersync.simulators.sinks import FaultPlan
from ordersync.testing import services
from ordersync.testing.cluster import Backend, Cluster, RunResult
from ordersync.testing.faultproxy import FaultProxy

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

ORDERS = 2000
CONCURRENCY = 32
# Light fan-out: the faults, not the fan-out, are under test (and the budget is 2 cores).
SUBSCRIPTIONS = {"erp": ["order.*"], "wms": ["order.created", "order.paid"]}
WEBHOOKS_PER_ORDER = 2.2  # what the store's order lifecycle sends on average
FAULT_AT = 0.35  # share of the run's webhooks accepted when the fault hits
SETTLE_TIMEOUT = 180.0
DESTINATION_TIMEOUT = 2.0  # the cluster's destination timeout (see Cluster.config)

# Shopify retries an unanswered webhook for hours; the simulator's default 8 tries (~6 s of
# backoff) is shorter than a loaded 2-core box may need to restart `serve` or PostgreSQL.
STORE_TRIES = 10  # ~25 s of backoff

Accepted = Callable[[], int]


@pytest.fixture(autouse=True)
def patient_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store keeps retrying through a whole outage, as Shopify would."""
    monkeypatch.setattr(shopify_store, "MAX_TRIES", STORE_TRIES)


@dataclass
class Fault:
    """When a scenario's fault was injected and lifted (monotonic clock), and what the
    scenario observed meanwhile."""

    injected: float | None = None
    lifted: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def inject(self) -> None:
        self.injected = time.monotonic()

    def lift(self) -> None:
        self.lifted = time.monotonic()

    @property
    def seconds(self) -> float:
        assert self.injected is not None, "the fault was never injected"
        assert self.lifted is not None, "the fault was never lifted"
        return self.lifted - self.injected


FaultFn = Callable[[Cluster, Accepted, Fault], Awaitable[None]]


async def into_the_run(accepted: Accepted, share: float = FAULT_AT) -> None:
    """Wait until `share` of the run's webhooks has been accepted (accepted() is a counter
    the store bumps, so it is polled)."""
    target = int(ORDERS * WEBHOOKS_PER_ORDER * share)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while (seen := accepted()) < target:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {seen} of {target} webhooks accepted; no fault injected")
        await asyncio.sleep(0.02)


def cluster(backend: Backend = "rabbitmq", **kw: Any) -> Cluster:
    kw.setdefault("subscriptions", SUBSCRIPTIONS)
    return Cluster(backend, workers=2, **kw)


async def run_scenario(
    c: Cluster, name: str, fault_fn: FaultFn, record: Callable[[dict[str, Any]], None]
) -> tuple[RunResult, Fault]:
    """Run ORDERS orders through `c` while `fault_fn` strikes; record the numbers, then
    check that the backlog drained and nothing was lost, duplicated or reordered."""
    fault = Fault()
    started = time.monotonic()
    result = await c.run(
        ORDERS,
        concurrency=CONCURRENCY,
        during=lambda accepted: fault_fn(c, accepted, fault),
        settle_timeout=SETTLE_TIMEOUT,
    )
    drained_at = started + result.elapsed_s  # run() returns once nothing is pending
    assert fault.lifted is not None, "the fault never ran"
    still_pending_for = await c.settle(SETTLE_TIMEOUT)  # and it stays drained
    v = result.verdict
    report = result.report
    states: dict[str, int] = {}
    for d in result.hub_deliveries:
        states[d["state"]] = states.get(d["state"], 0) + 1
    record(
        {
            "scenario": name,
            "backend": c.backend,
            "workers": c.workers_wanted,
            "orders": result.orders,
            "webhooks_accepted": report.accepted,
            "webhooks_failed": report.failed,
            "webhook_retries": report.retries,
            "deliveries": len(result.hub_deliveries),
            "delivery_states": states,
            "sink_attempts": sum(s.attempts for s in c.sinks.values()),
            "sink_duplicates_suppressed": sum(s.duplicates_suppressed for s in c.sinks.values()),
            "elapsed_s": round(result.elapsed_s, 2),
            "ingest_s": round(report.elapsed, 2),
            "fault_s": round(fault.seconds, 2),
            "recovery_s": round(max(0.0, drained_at - fault.lifted), 2),
            "drain_after_ingest_s": round(max(0.0, result.elapsed_s - report.elapsed), 2),
            "lost": v.lost,
            "duplicated": v.duplicated,
            "out_of_order": v.out_of_order,
            **fault.facts,
        }
    )
    context = f"verdict {v}\nproblems: {v.problems}\n{c.logs()}"
    assert (v.lost, v.duplicated, v.out_of_order) == (0, 0, 0), context
    assert states == {"succeeded": len(result.hub_deliveries)}, context
    # A webhook the store gave up on would make the verdict blind to that order.
    assert report.failed == 0, f"the store gave up on {report.failed} webhooks\n{context}"
    assert len(report.accepted_orders) == ORDERS, context
    assert still_pending_for < SETTLE_TIMEOUT, context
    return result, fault


# ---- processes -------------------------------------------------------------------------


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
    record_result: Callable[[dict[str, Any]], None],
) -> None:
    """SIGKILL one of two workers mid-delivery, restart it 5 s later: each event once, in order."""
    # Slow sinks keep deliveries in flight at the moment of the kill.
    async with cluster(sink_faults=FaultPlan(latency=(0.01, 0.05))) as c:
        _, fault = await run_scenario(c, "worker_sigkill_rabbitmq", kill_a_worker, record_result)
        assert fault.facts["applied_while_a_worker_was_dead"] > 0, c.logs()


@pytest.mark.timeout(300)
async def test_a_worker_killed_mid_delivery_on_the_database_queue_loses_and_repeats_nothing(
    record_result: Callable[[dict[str, Any]], None],
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
    record_result: Callable[[dict[str, Any]], None],
) -> None:
    """SIGKILL `serve` during the ingest burst, restart it: retried webhooks land once, in order."""
    async with cluster() as c:
        await run_scenario(c, "api_sigkill_rabbitmq", kill_the_api, record_result)


# ---- services --------------------------------------------------------------------------


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
    record_result: Callable[[dict[str, Any]], None],
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
    record_result: Callable[[dict[str, Any]], None],
) -> None:
    """Restart PostgreSQL mid-run (fast shutdown): every accepted order kept, each event once."""
    async with cluster() as c:
        await run_scenario(c, "postgresql_restart", restart_postgres, record_result)


# ---- network, through the fault proxy ---------------------------------------------------


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
    record_result: Callable[[dict[str, Any]], None],
) -> None:
    """API and workers reach PostgreSQL through a proxy: 3 s latency, 1 s resets, 3 s black hole."""
    async with FaultProxy("127.0.0.1", 5432) as proxy:
        c = ProxiedDatabaseCluster(proxy, "rabbitmq", workers=2, subscriptions=SUBSCRIPTIONS)
        async with c:
            await run_scenario(c, "postgresql_network_faults", flaky_network(proxy), record_result)


@pytest.mark.timeout(300)
async def test_latency_resets_and_a_black_hole_to_rabbitmq_lose_repeat_and_reorder_nothing(
    record_result: Callable[[dict[str, Any]], None],
) -> None:
    """API and workers reach RabbitMQ through a proxy: 3 s latency, 1 s resets, 3 s black hole."""
    broker = make_url(services.BROKER_URL)
    async with FaultProxy(broker.host or "127.0.0.1", broker.port or 5672) as proxy:
        proxied = broker.set(host="127.0.0.1", port=proxy.port)
        async with cluster(broker_url=proxied.render_as_string(hide_password=False)) as c:
            await run_scenario(c, "rabbitmq_network_faults", flaky_network(proxy), record_result)


# ---- destinations ----------------------------------------------------------------------


def bad_destination(name: str, plan: FaultPlan, seconds: float) -> FaultFn:
    """Sink `name` follows `plan` for `seconds`, then is healthy again."""

    async def strike(c: Cluster, accepted: Accepted, fault: Fault) -> None:
        await into_the_run(accepted)
        sink = c.sinks[name]
        healthy = sink.faults
        others = [s for s in c.sinks.values() if s is not sink]
        attempts = sink.attempts
        fault.inject()
        sink.faults = plan
        try:
            await asyncio.sleep(seconds)
        finally:
            sink.faults = healthy
        fault.lift()
        assert fault.injected is not None
        window = (fault.injected, fault.lifted)
        # Hung attempts count as failures only once they give up, so count arrivals.
        fault.facts["attempts_during_fault"] = sink.attempts - attempts
        fault.facts["applied_by_others_during_fault"] = sum(
            1 for s in others for e in s.ledger if window[0] <= e.received_at <= window[1]
        )

    return strike


@pytest.mark.timeout(300)
async def test_a_destination_answering_500_for_a_while_still_gets_every_event_once_in_order(
    record_result: Callable[[dict[str, Any]], None],
) -> None:
    """`erp` answers every request with a 500 for 5 s, then recovers: each event once, in order."""
    async with cluster() as c:
        _, fault = await run_scenario(
            c,
            "destination_500s",
            bad_destination("erp", FaultPlan(error_rate=1.0), 5.0),
            record_result,
        )
        assert fault.facts["attempts_during_fault"] > 0, c.logs()


@pytest.mark.timeout(300)
async def test_a_destination_timing_out_for_a_while_still_gets_every_event_once_in_order(
    record_result: Callable[[dict[str, Any]], None],
) -> None:
    """`erp` hangs every request past the 2 s timeout for 5 s, then recovers: each event once."""
    hang = FaultPlan(timeout_rate=1.0, hang_seconds=2 * DESTINATION_TIMEOUT)
    async with cluster() as c:
        _, fault = await run_scenario(
            c, "destination_timeouts", bad_destination("erp", hang, 5.0), record_result
        )
        assert fault.facts["attempts_during_fault"] > 0, c.logs()


@pytest.mark.timeout(300)
async def test_a_destination_hanging_for_minutes_holds_up_no_other_and_drains_after(
    record_result: Callable[[dict[str, Any]], None],
) -> None:
    """For 15 s each request to `wms` hangs 180 s: `erp` and `payment` keep flowing; wms drains."""
    subscriptions = {**SUBSCRIPTIONS, "payment": ["order.paid", "order.cancelled"]}
    hang = FaultPlan(timeout_rate=1.0, hang_seconds=180.0)
    async with cluster(subscriptions=subscriptions) as c:
        _, fault = await run_scenario(
            c, "destination_hangs_180s", bad_destination("wms", hang, 15.0), record_result
        )
        assert fault.facts["attempts_during_fault"] > 0, c.logs()
        assert fault.facts["applied_by_others_during_fault"] > 0, c.logs()
