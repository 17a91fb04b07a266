"""The acceptance run, end to end: the documented demo command as a child process, with
faults, a SIGKILL of the hub mid-burst and two channels beside Shopify.

In a file of its own so that `--dist loadfile` runs it beside the other end-to-end tests
rather than after them: it is the longest test of the suite.
"""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(900)
def test_the_demo_command_with_faults_reports_nothing_lost_duplicated_or_out_of_order() -> None:
    """The acceptance run, with a pushed and a pulled channel beside Shopify:
    `ordersync demo --orders 2000 --faults --channels shopify,woocommerce,taobao --json`."""
    channels = "shopify,woocommerce,taobao"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ordersync",
            "demo",
            "--orders",
            "2000",
            "--faults",
            "--json",
            "--channels",
            channels,
        ],
        capture_output=True,
        timeout=600,
        check=False,
    )
    summary = orjson.loads(proc.stdout)

    assert proc.returncode == 0, summary["problems"]
    assert summary["deliveries_retried"] > 0
    assert summary["hub_killed_after_orders"] is not None
    assert (summary["lost"], summary["duplicated"], summary["out_of_order"]) == (0, 0, 0)
    assert (summary["woocommerce_orders"], summary["taobao_orders"]) == (400, 400)
    # Logistics is part of the default run: every parcel but the stale tenth delivered,
    # one alert per stale parcel.
    assert summary["shipments_booked"] > 0
    assert summary["shipments_delivered"] == (
        summary["shipments_booked"] - summary["shipments_stale"]
    )
    assert summary["alerts_raised"] == summary["shipments_stale"]
    assert summary["logistics_problems"] == 0
