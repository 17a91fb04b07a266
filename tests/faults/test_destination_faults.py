"""Fault injection on the destinations: a sink that answers 500s, times out or hangs for a
while (see fault_scenarios.py for how a scenario runs and what it checks). Nothing shared is
touched, so these run beside the rest of the suite."""

from __future__ import annotations

import asyncio

import pytest
from fault_scenarios import (
    DESTINATION_TIMEOUT,
    SUBSCRIPTIONS,
    Accepted,
    Fault,
    FaultFn,
    Record,
    cluster,
    into_the_run,
    run_scenario,
)

from ordersync.simulators.sinks import FaultPlan
from ordersync.testing.cluster import Cluster

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


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
    record_result: Record,
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
    record_result: Record,
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
    record_result: Record,
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
