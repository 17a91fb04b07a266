"""End to end with real processes over loopback: `ordersync serve` as a child process, the
Shopify store simulator and three Standard Webhooks sinks, checked ledger against hub."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from ordersync.entrypoints.demo import run_demo
from ordersync.simulators.sinks import FaultPlan

pytestmark = pytest.mark.e2e


async def test_a_hub_killed_mid_burst_loses_no_accepted_order_and_applies_nothing_twice() -> None:
    """SIGKILL `serve` in the middle of 2,000 orders, restart it: every 200 is kept, once."""
    summary = await run_demo(orders=2000, faults=False, quiet=True, crash=True)

    assert summary["hub_killed_after_orders"] is not None
    assert summary["hub_exit_code"] == 0  # the restarted hub drained on SIGTERM
    assert summary["orders_sent"] == 2000
    assert summary["orders_created"] == 2000
    assert summary["problems"] == []
    assert (summary["lost"], summary["duplicated"], summary["out_of_order"]) == (0, 0, 0)


async def test_a_sink_failing_its_first_two_attempts_gets_each_event_once_in_order() -> None:
    """Every event fails twice at every sink, then is applied exactly once, in version order."""
    summary = await run_demo(
        orders=200, faults=False, quiet=True, crash=False, sink_faults=FaultPlan(fail_first=2)
    )

    assert summary["sink_failures_injected"] == 2 * summary["deliveries_total"]
    assert summary["deliveries_succeeded"] == summary["deliveries_total"]
    assert summary["problems"] == []
    assert (summary["lost"], summary["duplicated"], summary["out_of_order"]) == (0, 0, 0)


@pytest.mark.timeout(900)
def test_the_demo_command_with_faults_reports_nothing_lost_duplicated_or_out_of_order() -> None:
    """The acceptance run: `ordersync demo --orders 2000 --faults --json`."""
    proc = subprocess.run(
        [sys.executable, "-m", "ordersync", "demo", "--orders", "2000", "--faults", "--json"],
        capture_output=True,
        timeout=600,
        check=False,
    )
    summary = orjson.loads(proc.stdout)

    assert proc.returncode == 0, summary["problems"]
    assert summary["deliveries_retried"] > 0
    assert summary["hub_killed_after_orders"] is not None
    assert (summary["lost"], summary["duplicated"], summary["out_of_order"]) == (0, 0, 0)
