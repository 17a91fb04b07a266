"""End to end with real processes over loopback: `ordersync serve` as a child process, the
Shopify store simulator and three Standard Webhooks sinks, checked ledger against hub."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import pytest
import yaml

from ordersync.entrypoints.demo import run_demo
from ordersync.entrypoints.demo_logistics import CARRIERS, LogisticsPlan
from ordersync.entrypoints.process import HubProcess, free_port
from ordersync.simulators.shopify_store import StoreSimulator
from ordersync.simulators.sinks import FaultPlan, Sink, new_secret

pytestmark = pytest.mark.e2e


async def test_a_hub_killed_mid_burst_loses_no_accepted_order_and_applies_nothing_twice() -> None:
    """SIGKILL `serve` in the middle of 600 orders, restart it: every 200 is kept, once.

    The kill is triggered by progress (webhooks accepted), not by a clock, so fewer orders
    than the 2,000 of the acceptance run still put it mid-burst; the asserts check that."""
    summary = await run_demo(orders=600, faults=False, quiet=True, crash=True)

    killed_after = summary["hub_killed_after_orders"]
    assert killed_after is not None
    assert 0 < killed_after < summary["webhooks_accepted"]  # webhooks kept coming after it
    assert summary["orders_sent"] == 600
    assert summary["orders_created"] == 600
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


async def test_demo_parcels_get_delivered_and_each_stale_one_raises_one_alert() -> None:
    """The paid orders are booked with Kdniao, Kuaidi100 and a generic carrier, driven by
    signed callbacks to delivered; a tenth is never picked up and raises exactly one
    no-pickup alert each (the demo's threshold is seconds, not 48 h); no other alert. A
    few delivered orders come back by reverse pickup and are refunded to the cent."""
    summary = await run_demo(
        orders=150,
        faults=False,
        quiet=True,
        crash=False,
        logistics=LogisticsPlan(stale_share=0.1, stale_after=4.0),
    )

    booked = summary["shipments_booked"]
    assert booked > 20  # the paid share of the store's orders
    assert summary["shipments_stale"] == round(booked * 0.1)
    assert summary["shipments_delivered"] == booked - summary["shipments_stale"]
    assert summary["alerts_raised"] == summary["shipments_stale"]
    assert summary["returns_booked"] >= 1  # ~5% of the delivered (those with SKUs)
    assert summary["returns_received"] == summary["returns_booked"]
    assert summary["logistics_problems"] == 0  # incl. each refund reaching the payment sink
    rows = {row["carrier"]: row for row in summary["logistics"]}
    assert set(rows) == {*CARRIERS, "total"}
    assert all(rows[c]["booked"] > 0 and rows[c]["delivered"] > 0 for c in CARRIERS)
    assert summary["problems"] == []
    assert (summary["lost"], summary["duplicated"], summary["out_of_order"]) == (0, 0, 0)


async def test_sigterm_drains_in_flight_deliveries_and_records_them(tmp_path: Path) -> None:
    """Stop `serve` while slow deliveries are in flight: they finish and are recorded, so
    every event the sink applied is `succeeded` in the hub's database (no redelivery)."""
    sink = Sink("erp", new_secret(), FaultPlan(latency=(0.3, 0.6)))
    await sink.start()
    db = tmp_path / "hub.db"
    config = tmp_path / "hub.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database_url": f"sqlite:///{db}",
                "channels": [{"id": "shop-eu", "kind": "shopify", "secret": "shpss_drain"}],
                "destinations": [
                    {"id": "erp", "url": sink.events_url, "secret": sink.secret, "timeout": 5}
                ],
            }
        )
    )
    hub = HubProcess(config, free_port(), log_path=tmp_path / "hub.log")
    hub.start()
    try:
        await hub.wait_ready()
        store = StoreSimulator(f"{hub.url}/v1/channels/shop-eu/webhooks", "shpss_drain")
        report = await store.run(40, lifecycle=False)
        await asyncio.sleep(0.2)  # deliveries are now in flight at the slow sink
        exit_code = await asyncio.to_thread(hub.terminate)
    finally:
        hub.kill()
        await sink.stop()
    with sqlite3.connect(db) as conn:
        succeeded = {
            row[0]
            for row in conn.execute(
                "SELECT e.id FROM deliveries d JOIN events e ON e.seq = d.event_seq"
                " WHERE d.state = 'succeeded'"
            )
        }

    assert report.accepted == 40
    assert exit_code in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its drain
    assert len(sink.ledger) > 0
    assert {e.webhook_id for e in sink.ledger} <= succeeded
