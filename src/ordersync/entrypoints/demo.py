"""`ordersync demo`: a simulated Shopify store, the hub, and ERP/WMS/payment sinks.

The hub runs as a real `ordersync serve` child process on the embedded default (SQLite,
in-process workers); the store and the sinks run here and talk to it over loopback HTTP.
With `--faults` the sinks fail, time out and lag, the store sends duplicates and stale
updates, and the hub is killed with SIGKILL mid-burst and restarted. The run ends by
comparing the sinks' ledgers with the hub: lost, duplicated and out-of-order must be 0.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ordersync.entrypoints.demo_channels import ChannelDriver, check, drivers_for
from ordersync.entrypoints.demo_logistics import LogisticsDriver, LogisticsPlan, LogisticsReport
from ordersync.entrypoints.process import HubProcess, free_port
from ordersync.simulators.shopify_store import StoreReport, StoreSimulator
from ordersync.simulators.sinks import FaultPlan, Sink, new_secret
from ordersync.simulators.verify import HubClient, verify

CHANNEL = "shop-demo"
# Who listens to what, as a merchant would wire it.
SUBSCRIPTIONS = {
    "erp": ["order.*"],
    "wms": ["order.created", "order.paid", "order.cancelled", "order.shipped"],
    "payment": ["order.created", "order.paid", "order.cancelled", "order.refunded"],
}


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def write_config(
    workdir: Path,
    sinks: dict[str, Sink],
    faults: bool,
    extra: Sequence[ChannelDriver] = (),
    logistics: LogisticsDriver | None = None,
    public_url: str | None = None,
) -> Path:
    destinations = [
        {
            "id": name,
            "url": sink.events_url,
            "secret": sink.secret,
            "events": SUBSCRIPTIONS[name],
            # Quick retries, then backoff capped low so a demo never waits for minutes.
            "retry_schedule": [0.2, 0.5, 1.0],
            "retry_backoff": {"base": 1.0, "max_delay": 5.0, "max_age": 3600},
            "timeout": 1.0 if faults else 5.0,
            "max_in_flight": 64,
            # Demo scale: a sink that fails everything for a moment (fail_first) should not
            # park the run behind minutes of cooldown.
            "breaker": {"failure_threshold": 500, "cooldown": 1.0, "max_cooldown": 5.0},
        }
        for name, sink in sinks.items()
    ]
    config: dict[str, Any] = {
        "database_url": f"sqlite:///{workdir / 'ordersync.db'}",
        "log_level": "WARNING",
        "channels": [
            {"id": CHANNEL, "kind": "shopify", "secret": "env:DEMO_SHOP_SECRET"},
            *(d.config() for d in extra),
        ],
        "destinations": destinations,
        "api_keys": [
            {
                "id": "demo",
                "key": "env:DEMO_API_KEY",
                "scopes": ["orders:read", "orders:write", "deliveries:read", "deliveries:write"],
            }
        ],
    }
    if logistics is not None:
        # Kuaidi100 subscriptions carry the hub's callback URL.
        config.update({"public_url": public_url, **logistics.config()})
    path = workdir / "ordersync.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def run_demo(
    *,
    orders: int,
    faults: bool,
    quiet: bool,
    port: int = 0,
    keep: bool = False,
    crash: bool | None = None,
    sink_faults: FaultPlan | None = None,
    channels: list[str] | None = None,
    logistics: LogisticsPlan | None = None,
) -> dict[str, Any]:
    """Run the whole demo and return its summary. `crash` (default: with `faults`) kills the
    hub with SIGKILL mid-burst and restarts it; `sink_faults` overrides the sinks' faults;
    `channels` adds sales channels beside Shopify (each gets a fifth of `orders`, min 10);
    `logistics` (None: off) books the paid orders with the simulated carriers, tracks them
    to delivered and lets a share go stale to raise alerts (entrypoints/demo_logistics.py)."""
    crash = faults if crash is None else crash
    extra = drivers_for([c for c in (channels or []) if c != "shopify"])
    console = Console(stderr=True, quiet=quiet)
    workdir = Path(tempfile.mkdtemp(prefix="ordersync-demo-"))
    shop_secret, api_key = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    plan = sink_faults
    if plan is None and faults:
        plan = FaultPlan(error_rate=0.10, timeout_rate=0.01, hang_seconds=3.0, latency=(0.0, 0.02))
    sinks = {name: Sink(name, new_secret(), plan) for name in SUBSCRIPTIONS}
    for sink in sinks.values():
        await sink.start()
    for driver in extra:
        await driver.start()
    carriers = LogisticsDriver(logistics) if logistics is not None else None
    if carriers is not None:
        await carriers.start()
    port = port or free_port()
    hub = HubProcess(
        write_config(workdir, sinks, faults, extra, carriers, f"http://127.0.0.1:{port}"),
        port,
        log_path=workdir / "hub.log",
        env={"DEMO_SHOP_SECRET": shop_secret, "DEMO_API_KEY": api_key},
    )
    console.print(
        f"[bold]ordersync demo[/bold]: {orders} orders, faults {'on' if faults else 'off'};"
        f" channels shopify{''.join(', ' + d.kind for d in extra)}; work dir {workdir}"
    )
    hub.start()
    try:
        await hub.wait_ready()
        summary = await _drive(
            hub, sinks, shop_secret, api_key, orders, faults, crash, console, extra, carriers
        )
    finally:
        exit_code = hub.terminate()  # SIGTERM: drains and exits 0
        for sink in sinks.values():
            await sink.stop()
        for driver in extra:
            await driver.stop()
        if carriers is not None:
            await carriers.stop()
    summary["hub_exit_code"] = exit_code
    summary["workdir"] = str(workdir) if keep else None
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    if not quiet:
        _print_summary(console, summary)
    return summary


async def _drive(
    hub: HubProcess,
    sinks: dict[str, Sink],
    shop_secret: str,
    api_key: str,
    orders: int,
    faults: bool,
    crash: bool,
    console: Console,
    extra: list[ChannelDriver],
    carriers: LogisticsDriver | None = None,
) -> dict[str, Any]:
    store = StoreSimulator(
        f"{hub.url}/v1/channels/{CHANNEL}/webhooks",
        shop_secret,
        concurrency=32,
        duplicate_rate=0.05 if faults else 0.01,
        reorder_rate=0.05 if faults else 0.01,
    )
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    crashed_at: int | None = None
    with progress:
        accepted_task = progress.add_task("webhooks accepted", total=None)
        delivered_task = progress.add_task("events delivered ", total=None)
        accepted = 0
        # About 40% into the run: the store sends ~2.3 webhooks per order.
        crash_point = asyncio.Event()

        def on_accepted() -> None:
            nonlocal accepted
            accepted += 1
            progress.advance(accepted_task)
            if accepted >= orders:
                crash_point.set()

        async def crash_midway() -> None:
            nonlocal crashed_at
            await crash_point.wait()
            crashed_at = accepted
            hub.kill()  # SIGKILL mid-burst: in-flight requests get no answer
            hub.start()

        started = time.monotonic()
        async with store, aiohttp.ClientSession() as session:
            crasher = asyncio.create_task(crash_midway()) if crash else None
            per_channel = max(10, orders // 5)
            feeds = [asyncio.create_task(d.run(hub.url, per_channel, session)) for d in extra]
            report = await store.run(orders, lifecycle=True, on_accepted=on_accepted)
            await asyncio.gather(*feeds)
            if crasher is not None:
                await crasher
            await hub.wait_ready()
            client = HubClient(hub.url, api_key, session)
            channel_problems = await _await_channels(client, extra)
            await _settle(client, sinks, progress, delivered_task)
            finished = time.monotonic()
            # The orders as the store left them: what the checks compare with the store.
            hub_orders = await client.all_pages("/v1/orders", channel_id=CHANNEL)
            shipped: LogisticsReport | None = None
            if carriers is not None:
                paid = [o["id"] for o in hub_orders if o["status"] == "paid"]
                ship_task = progress.add_task("parcels tracked   ", total=None)
                shipped = await carriers.run(hub.url, api_key, session, paid)
                progress.update(ship_task, completed=len(shipped.parcels))
                await _settle(client, sinks, progress, delivered_task)  # their events too
                shipped.problems += _refunds_paid_out(shipped, sinks["payment"])
            hub_deliveries = await client.all_pages("/v1/deliveries")
            webhooks = await client.metric("ordersync_webhooks_received_total")
            attempts = await client.metric("ordersync_delivery_attempts_total")
    summary = _summarize(
        report, hub_orders, hub_deliveries, sinks, webhooks, attempts, started, finished, crashed_at
    )
    for d in extra:
        summary[f"{d.kind}_orders"] = len(d.expected())
    if shipped is not None:
        summary.update(shipped.summary())
        summary["logistics"] = shipped.rows()
        summary["problems"] += shipped.problems[:20]
    summary["lost"] += len(channel_problems)
    summary["problems"] += channel_problems[:20]
    return summary


def _refunds_paid_out(shipped: LogisticsReport, payment: Sink) -> list[str]:
    """Each received return reached the payment sink as `order.refunded` with its amount."""
    problems = []
    for ret in shipped.returns:
        if ret.payment_status is None:  # only authorized: no money to give back
            continue
        amounts = [
            Decimal(e.data["refund"]["amount"])
            for e in payment.ledger
            if e.type == "order.refunded" and e.order_id == ret.order_id
        ]
        if amounts != [ret.refund]:
            problems.append(
                f"payment sink got refunds {amounts} for order {ret.order_id},"
                f" expected [{ret.refund}]"
            )
    return problems


async def _settle(
    client: HubClient, sinks: dict[str, Sink], progress: Progress, task: TaskID
) -> None:
    """Wait until no delivery is pending."""
    while (pending := await client.pending_deliveries()) > 0:
        applied = sum(len(s.ledger) for s in sinks.values())
        progress.update(task, completed=applied, total=applied + pending)
        await asyncio.sleep(0.2)
    applied = sum(len(s.ledger) for s in sinks.values())
    progress.update(task, completed=applied, total=applied)


async def _await_channels(
    client: HubClient, extra: list[ChannelDriver], timeout: float = 90.0
) -> list[str]:
    """Wait until the hub holds every extra channel's orders in their latest state (pulled
    channels get there on the hub's schedule); what is still wrong at the deadline is lost."""
    deadline = time.monotonic() + timeout
    while True:
        problems: list[str] = []
        for d in extra:
            problems += check(d, await client.all_pages("/v1/orders", channel_id=d.id))
        if not problems or time.monotonic() > deadline:
            return problems
        await asyncio.sleep(0.5)


def _count(samples: dict[str, float], label: str) -> int:
    return int(sum(v for k, v in samples.items() if label in k))


def _summarize(
    report: StoreReport,
    hub_orders: list[dict[str, Any]],
    hub_deliveries: list[dict[str, Any]],
    sinks: dict[str, Sink],
    webhooks: dict[str, float],
    attempts: dict[str, float],
    started: float,
    finished: float,
    crashed_at: int | None,
) -> dict[str, Any]:
    verdict = verify(report, hub_orders, hub_deliveries, sinks)
    # Latency: from the store's first 2xx for an order to the last sink applying its creation.
    created_at: dict[str, float] = {}
    for sink in sinks.values():
        for e in sink.ledger:
            if e.type == "order.created":
                ext = str(e.data.get("external_id"))
                created_at[ext] = max(created_at.get(ext, 0.0), e.received_at)
    latencies = [
        (created_at[ext] - acc.first_accepted_at) * 1000
        for ext, acc in report.accepted_orders.items()
        if ext in created_at
    ]
    states = [d["state"] for d in hub_deliveries]
    elapsed = finished - started
    # Webhooks answered while the hub was being killed are counted as retries by the store;
    # the metrics restart with the process, so hub-side counts cover the restarted hub only.
    return {
        "orders_sent": len(report.accepted_orders),
        "orders_created": len(hub_orders),
        "orders_updated": sum(1 for o in hub_orders if o["version"] > 1),
        "webhooks_sent": report.sent,
        "webhooks_accepted": report.accepted,
        "webhooks_failed": report.failed,
        "webhook_retries": report.retries,
        "duplicates_sent": report.duplicates_sent,
        "stale_sent": report.stale_sent,
        "duplicates_suppressed": _count(webhooks, 'outcome="duplicate"')
        + sum(s.duplicates_suppressed for s in sinks.values()),
        "stale_ignored": _count(webhooks, 'outcome="stale"'),
        "deliveries_total": len(hub_deliveries),
        "deliveries_succeeded": states.count("succeeded"),
        "deliveries_retried": _count(attempts, 'outcome="retrying"'),
        "deliveries_dead_lettered": states.count("dead"),
        "sink_failures_injected": sum(s.failures_injected for s in sinks.values()),
        "hub_killed_after_orders": crashed_at,
        "elapsed_s": round(elapsed, 2),
        "throughput_orders_per_s": round(len(report.accepted_orders) / elapsed, 1)
        if elapsed
        else 0,
        "latency_p50_ms": round(percentile(latencies, 50), 1),
        "latency_p99_ms": round(percentile(latencies, 99), 1),
        "latency_mean_ms": round(statistics.fmean(latencies), 1) if latencies else 0,
        "lost": verdict.lost,
        "duplicated": verdict.duplicated,
        "out_of_order": verdict.out_of_order,
        "problems": verdict.problems,
    }


def _print_summary(console: Console, s: dict[str, Any]) -> None:
    table = Table(title="ordersync demo summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in s.items():
        if key in ("problems", "workdir", "logistics") or value is None:
            continue
        style = ""
        if key in ("lost", "duplicated", "out_of_order", "logistics_problems"):
            style = "bold green" if value == 0 else "bold red"
        table.add_row(key.replace("_", " "), f"[{style}]{value}[/{style}]" if style else str(value))
    console.print(table)
    if s.get("logistics"):
        parcels = Table(title="logistics: parcels per carrier")
        columns = ("carrier", "booked", "delivered", "stale", "alerts", "returned")
        for column in columns:
            parcels.add_column(column, justify="left" if column == "carrier" else "right")
        for row in s["logistics"]:
            parcels.add_row(*(str(row[c]) for c in columns))
        console.print(parcels)
    for p in s["problems"]:
        console.print(f"[red]{p}[/red]")
