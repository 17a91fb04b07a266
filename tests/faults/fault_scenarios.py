"""How a fault scenario runs, shared by the fault-injection test modules.

Each scenario pushes ORDERS orders through their lifecycle against `serve` plus two
`ordersync worker` processes, injects its fault about a third of the way into the ingest
(the trigger is progress, never a clock), lifts it a few seconds later, waits until no
delivery is pending, and then compares the sinks' ledgers with the hub: nothing lost,
nothing applied twice, every order's events in order. It also checks that the fault landed
mid-flight: events had already been applied when it struck, and the store still had
webhooks to get accepted and the sinks events to apply afterwards. Recovery times are
recorded in bench/results/faults.json and printed at the end of the session; they are
reported, never asserted.

ORDERS is 800 (the store sends ~1,760 webhooks); `ORDERSYNC_FAULT_ORDERS=2000` runs the
longer soak this suite used to run on every `./dev test`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ordersync.testing.cluster import Backend, Cluster, RunResult

ORDERS = int(os.environ.get("ORDERSYNC_FAULT_ORDERS", "800"))
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
Record = Callable[[dict[str, Any]], None]


@dataclass
class Fault:
    """When a scenario's fault was injected and lifted (monotonic clock), how far the run
    had got when it struck, and what the scenario observed meanwhile."""

    injected: float | None = None
    lifted: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    # Set by run_scenario: the store's accepted-webhook counter and the sinks' ledger size.
    accepted: Accepted | None = field(default=None, repr=False)
    applied: Callable[[], int] | None = field(default=None, repr=False)

    def inject(self) -> None:
        self.injected = time.monotonic()
        if self.accepted is not None:
            self.facts["accepted_at_injection"] = self.accepted()
        if self.applied is not None:
            self.facts["applied_at_injection"] = self.applied()

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
    c: Cluster, name: str, fault_fn: FaultFn, record: Record
) -> tuple[RunResult, Fault]:
    """Run ORDERS orders through `c` while `fault_fn` strikes; record the numbers, then
    check that the fault landed mid-flight, the backlog drained and nothing was lost,
    duplicated or reordered."""
    fault = Fault(applied=c.applied)

    def strike(accepted: Accepted) -> Awaitable[None]:
        fault.accepted = accepted
        return fault_fn(c, accepted, fault)

    started = time.monotonic()
    result = await c.run(
        ORDERS, concurrency=CONCURRENCY, during=strike, settle_timeout=SETTLE_TIMEOUT
    )
    drained_at = started + result.elapsed_s  # run() returns once nothing is pending
    assert fault.lifted is not None, "the fault never ran"
    still_pending_for = await c.settle(SETTLE_TIMEOUT)  # and it stays drained
    v = result.verdict
    report = result.report
    states: dict[str, int] = {}
    for d in result.hub_deliveries:
        states[d["state"]] = states.get(d["state"], 0) + 1
    applied_in_all = c.applied()
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
    context = f"verdict {v}\nproblems: {v.problems}\nfacts: {fault.facts}\n{c.logs()}"
    # Mid-flight: the fault struck after events had started to flow and before the store
    # and the sinks were done, so the run had to ride through it.
    accepted_then = fault.facts.get("accepted_at_injection")
    applied_then = fault.facts.get("applied_at_injection")
    assert accepted_then is not None, "fault.inject() never ran"
    assert applied_then is not None, "fault.inject() never ran"
    assert accepted_then < report.accepted, f"the ingest was over before the fault\n{context}"
    assert 0 < applied_then < applied_in_all, f"the fault missed the deliveries\n{context}"
    assert (v.lost, v.duplicated, v.out_of_order) == (0, 0, 0), context
    assert states == {"succeeded": len(result.hub_deliveries)}, context
    # A webhook the store gave up on would make the verdict blind to that order.
    assert report.failed == 0, f"the store gave up on {report.failed} webhooks\n{context}"
    assert len(report.accepted_orders) == ORDERS, context
    assert still_pending_for < SETTLE_TIMEOUT, context
    return result, fault
