"""End to end: orders/create in, order.created delivered to 3 destinations; and peak memory.

Three processes share the machine: `ordersync serve` (HubProcess), the three sinks
(`bench.sinks_process`) and the load generator (this process, aiohttp, uvloop). The load
sends N pre-built, signed orders/create webhooks with 64 in flight and notes each 2xx with
time.monotonic(); the sinks note each applied event with time.monotonic() too (one clock
for all processes on Linux). When every sink has every order:

  delivered orders/s = N / (last sink ack - first send)
  latency            = last of the 3 sinks' received_at for the order - its 2xx time
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.common import (
    BENCH_DIR,
    CHANNEL,
    CpuMeter,
    create_pg_database,
    db_query,
    drop_pg_database,
    log_problems,
    machine_info,
    percentile,
    print_table,
    source_fingerprint,
    uptime,
    vm_status,
    wait_for_quiet,
    write_hub_config,
    write_result,
)
from bench.pool import order_bodies, shopify_headers
from ordersync.entrypoints.process import HubProcess, free_port
from ordersync.simulators.sinks import new_secret

SINKS = ("erp", "wms", "payment")
RETRY_SCHEDULE = [0.2, 0.5, 1.0]
MAX_TRIES = 8  # per webhook, like Shopify's simulator (retries keep the webhook id)
STALL_SECONDS = 120.0  # give up when no sink makes progress for this long


def destination(name: str, url: str, secret: str) -> dict[str, Any]:
    return {
        "id": name,
        "url": url,
        "secret": secret,
        "events": ["order.created"],
        "retry_schedule": list(RETRY_SCHEDULE),
        # As in `ordersync demo`: after the quick retries, back off 1 s .. 5 s.
        "retry_backoff": {"base": 1.0, "max_delay": 5.0, "max_age": 3600},
    }


class SinksProcess:
    def __init__(self, workdir: Path) -> None:
        self.secrets = {name: new_secret() for name in SINKS}
        self.log_path = workdir / "sinks.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "BENCH_SINK_SECRETS": json.dumps(self.secrets),
            "PYTHONPATH": str(BENCH_DIR.parent),
        }
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "bench.sinks_process"],
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
            )

    async def start(self) -> None:
        self.proc = self._spawn()
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 60)
        if not line:
            raise RuntimeError(f"sinks process failed to start; see {self.log_path}")
        self.ready = json.loads(line)

    @property
    def pid(self) -> int:
        return int(self.ready["pid"])

    def destinations(self) -> list[dict[str, Any]]:
        return [destination(n, self.ready["sinks"][n], self.secrets[n]) for n in SINKS]

    async def get(self, session: aiohttp.ClientSession, path: str) -> Any:
        async with session.get(self.ready["control"] + path) as r:
            r.raise_for_status()
            return orjson.loads(await r.read())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Load:
    """N signed webhooks, `concurrency` in flight; a failed one is retried with its id."""

    def __init__(self, url: str, requests: list[tuple[dict[str, str], bytes]]) -> None:
        self.url = url
        self.requests = requests
        self.accepted_at: list[float | None] = [None] * len(requests)
        self.order_ids: list[str | None] = [None] * len(requests)
        self.first_send = 0.0
        self.last_accept = 0.0
        self.retries = 0
        self.failed = 0
        self.statuses: dict[int, int] = {}

    async def run(self, concurrency: int, rate: float = 0.0) -> None:
        """Send everything; with `rate` (orders/s), order i goes no earlier than i / rate s
        after the first (open loop, as long as `concurrency` allows)."""
        next_index = 0
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=concurrency)

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal next_index
            while next_index < len(self.requests):
                i = next_index
                next_index += 1
                if rate > 0 and (delay := self.first_send + i / rate - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                await self._one(session, i, timeout)

        async with aiohttp.ClientSession(connector=connector) as session:
            self.first_send = time.monotonic()
            async with asyncio.TaskGroup() as tg:
                for _ in range(concurrency):
                    tg.create_task(worker(session))

    async def _one(
        self, session: aiohttp.ClientSession, i: int, timeout: aiohttp.ClientTimeout
    ) -> None:
        headers, body = self.requests[i]
        for attempt in range(MAX_TRIES):
            if attempt:
                self.retries += 1
                await asyncio.sleep(0.05 * 2 ** (attempt - 1))
            try:
                async with session.post(self.url, data=body, headers=headers, timeout=timeout) as r:
                    payload = await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            if 200 <= status < 300:
                now = time.monotonic()
                self.accepted_at[i] = now
                self.last_accept = max(self.last_accept, now)
                self.order_ids[i] = orjson.loads(payload)["order_id"]
                return
            self.statuses[status] = self.statuses.get(status, 0) + 1
        self.failed += 1


async def _wait_delivered(
    sinks: SinksProcess, session: aiohttp.ClientSession, expected: int, hub: HubProcess
) -> dict[str, Any]:
    last_total, last_progress = -1, time.monotonic()
    while True:
        stats = await sinks.get(session, "/stats")
        counts = [stats[n]["created"] for n in SINKS]
        if all(c >= expected for c in counts):
            return stats
        total = sum(counts)
        now = time.monotonic()
        if total != last_total:
            last_total, last_progress = total, now
        elif now - last_progress > STALL_SECONDS:
            print(f"  delivery stalled at {counts} of {expected} each", flush=True)
            return stats
        if hub.proc is not None and hub.proc.poll() is not None:
            print(f"  hub exited with {hub.proc.returncode}", flush=True)
            return stats
        await asyncio.sleep(0.25)


async def _sample_rss(pid: int, samples: list[tuple[float, int]], t0: float) -> None:
    while True:
        rss = vm_status(pid).get("VmRSS")
        if rss is not None:
            samples.append((round(time.monotonic() - t0, 1), rss))
        await asyncio.sleep(1.0)


def _analyse(load: Load, ledgers: dict[str, list[list[Any]]]) -> dict[str, Any]:
    accepted = {
        oid: t
        for oid, t in zip(load.order_ids, load.accepted_at, strict=True)
        if oid is not None and t is not None
    }
    last_ack: dict[str, float] = {}
    sinks_with: dict[str, int] = {}
    per_sink: dict[str, Any] = {}
    for name in SINKS:
        seen: dict[str, float] = {}
        dup = 0
        for order_id, _ext, etype, received_at, _attempt in ledgers.get(name, []):
            if etype != "order.created":
                continue
            if order_id in seen:
                dup += 1
                continue
            seen[order_id] = received_at
            if order_id in accepted:
                last_ack[order_id] = max(last_ack.get(order_id, 0.0), received_at)
                sinks_with[order_id] = sinks_with.get(order_id, 0) + 1
        missing = [oid for oid in accepted if oid not in seen]
        unexpected = [oid for oid in seen if oid not in accepted]
        per_sink[name] = {
            "applied_created": len(seen),
            "lost": len(missing),
            "lost_examples": missing[:5],
            "unexpected": len(unexpected),
            "applied_twice": dup,
        }
    # Only orders every sink has applied: their last ack is the moment delivery completed.
    latencies = [
        (last_ack[oid] - t) * 1000
        for oid, t in accepted.items()
        if sinks_with.get(oid) == len(SINKS)
    ]
    all_done = max(last_ack.values()) if last_ack else 0.0
    span = all_done - load.first_send
    n = len(accepted)
    return {
        "accepted": n,
        "delivered_orders_per_s": round(n / span, 1) if span > 0 else 0.0,
        "ingest_orders_per_s": round(n / (load.last_accept - load.first_send), 1)
        if load.last_accept > load.first_send
        else 0.0,
        "first_send_to_last_ack_s": round(span, 2),
        "last_2xx_to_last_ack_s": round(all_done - load.last_accept, 2),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p90": round(percentile(latencies, 90), 1),
            "p99": round(percentile(latencies, 99), 1),
            "max": round(max(latencies), 1) if latencies else 0.0,
            "min": round(min(latencies), 1) if latencies else 0.0,
        },
        "sinks": per_sink,
        "lost_total": sum(per_sink[s]["lost"] for s in SINKS),
        "applied_twice_total": sum(per_sink[s]["applied_twice"] for s in SINKS),
    }


async def run_e2e_once(db: str, orders: int, concurrency: int, rate: float = 0.0) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"ordersync-bench-e2e-{db}-"))
    secret = os.urandom(24).hex()
    started = time.monotonic()
    bodies = await asyncio.to_thread(order_bodies, orders)
    requests = [(shopify_headers(secret, b), b) for b in bodies]
    del bodies
    print(f"  {orders} signed orders built in {time.monotonic() - started:.1f}s", flush=True)
    pg_name = None
    if db == "sqlite":
        target = str(workdir / "bench.db")
        database_url = f"sqlite:///{target}"
    else:
        pg_name, database_url = create_pg_database("e2e")
        target = pg_name
    sinks = SinksProcess(workdir)
    await sinks.start()
    hub = HubProcess(
        write_hub_config(workdir, database_url, sinks.destinations()),
        free_port(),
        log_path=workdir / "hub.log",
        env={"BENCH_SHOP_SECRET": secret},
    )
    hub.start()
    rss: list[tuple[float, int]] = []
    try:
        await hub.wait_ready()
        assert hub.proc is not None
        pid = hub.proc.pid
        mem_ready = vm_status(pid)
        busy_before = await asyncio.to_thread(wait_for_quiet)
        load_before = uptime()
        load = Load(f"{hub.url}/v1/channels/{CHANNEL}/webhooks", requests)
        meter = CpuMeter(
            {"hub": pid, "sinks": sinks.pid, "self": os.getpid()}, postgres=db == "postgresql"
        )
        meter.start()
        sampler = asyncio.create_task(_sample_rss(pid, rss, time.monotonic()))
        await load.run(concurrency, rate)
        print(
            f"  {orders - load.failed} accepted in {load.last_accept - load.first_send:.1f}s;"
            " waiting for the sinks",
            flush=True,
        )
        async with aiohttp.ClientSession() as session:
            stats = await _wait_delivered(sinks, session, orders - load.failed, hub)
            cpu = meter.stop()
            sampler.cancel()
            mem_end = vm_status(pid)
            load_after = uptime()
            ledgers = await sinks.get(session, "/ledger")
    finally:
        exit_code = hub.terminate()
        sinks.stop()
    analysis = _analyse(load, ledgers)
    states = db_query(
        db, target, "SELECT state || ' ' || count(*) FROM deliveries GROUP BY state ORDER BY 1"
    )
    orders_rows = int(db_query(db, target, "SELECT count(*) FROM orders")[0])
    problems = log_problems(workdir / "hub.log")
    if pg_name is not None:
        drop_pg_database(pg_name)
    result = {
        "db": db,
        "ordersync_source": source_fingerprint()["sha256_12"],
        "orders": orders,
        "concurrency": concurrency,
        "paced_rate": rate or None,
        **analysis,
        "webhooks_failed": load.failed,
        "webhook_retries": load.retries,
        "webhook_error_statuses": load.statuses,
        "sink_stats": stats,
        "hub_orders_rows": orders_rows,
        "hub_delivery_states": {k: int(v) for k, v in (s.rsplit(" ", 1) for s in states)},
        "hub_rss_kib": {"at_ready": mem_ready, "at_end": mem_end},
        "hub_rss_samples_kib": rss[:: max(1, len(rss) // 60)],
        "cpu": cpu,
        "background_busy_pct_before": busy_before,
        "uptime_before": load_before,
        "uptime_after": load_after,
        "hub_exit_code": exit_code,
        "hub_log_problems": problems[:20],
    }
    if problems:
        result["workdir"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


COLUMNS = [
    "db",
    "orders",
    "delivered orders/s",
    "ingest 2xx/s",
    "p50 ms",
    "p99 ms",
    "lost",
    "applied twice",
    "hub VmHWM MiB",
    "hub CPU s",
    "sinks CPU s",
    "load CPU s",
    "other CPU %",
]


def row(r: dict[str, Any]) -> list[Any]:
    cpu = r["cpu"]["cpu_s"]
    return [
        r["db"],
        r["accepted"],
        f"{r['delivered_orders_per_s']:.0f}",
        f"{r['ingest_orders_per_s']:.0f}",
        f"{r['latency_ms']['p50']:.0f}",
        f"{r['latency_ms']['p99']:.0f}",
        r["lost_total"] + r["webhooks_failed"],
        r["applied_twice_total"],
        f"{r['hub_rss_kib']['at_end'].get('VmHWM', 0) / 1024:.0f}",
        cpu["hub"],
        cpu["sinks"],
        cpu["self"],
        r["cpu"]["other_cpu_pct"],
    ]


def conditions(orders: int, concurrency: int, rate: float = 0.0) -> str:
    pace = f"paced at {rate:g}/s, " if rate else ""
    return (
        f"{orders} orders/create via aiohttp ({pace}{concurrency} in flight, uvloop), hub"
        " `ordersync serve` with 3 destinations subscribed to order.created (retry_schedule"
        f" {RETRY_SCHEDULE}), 3 Standard Webhooks sinks (signature checked) in one separate"
        " process; all on one machine"
    )


async def run_e2e(
    dbs: list[str], *, orders: int, concurrency: int, repeat: int, rate: float = 0.0
) -> dict[str, Any]:
    info = machine_info()
    results = []
    for db in dbs:
        for attempt in range(repeat):
            print(f"e2e: {orders} orders on {db} (run {attempt + 1}/{repeat})", flush=True)
            r = await run_e2e_once(db, orders, concurrency, rate)
            r["run"] = attempt + 1
            results.append(r)
            print_table("", COLUMNS, [row(r)])
    table = print_table(
        f"e2e ({conditions(orders, concurrency, rate)})", COLUMNS, [row(r) for r in results]
    )
    name = f"e2e_paced_{rate:g}" if rate else "e2e"
    payload = {
        "benchmark": name,
        "machine": info,
        "conditions": conditions(orders, concurrency, rate),
        "results": results,
        "table": table,
        "uptime_at_end": uptime(),
    }
    write_result(name, payload)
    return payload


async def run_rss(*, orders: int, concurrency: int) -> dict[str, Any]:
    info = machine_info()
    print(f"rss: {orders} orders end to end on sqlite", flush=True)
    r = await run_e2e_once("sqlite", orders, concurrency)
    mem = r["hub_rss_kib"]
    columns = [
        "orders",
        "VmHWM MiB (peak)",
        "VmRSS at ready MiB",
        "VmRSS at end MiB",
        *COLUMNS[2:8],
    ]
    cells = [
        r["accepted"],
        f"{mem['at_end'].get('VmHWM', 0) / 1024:.0f}",
        f"{mem['at_ready'].get('VmRSS', 0) / 1024:.0f}",
        f"{mem['at_end'].get('VmRSS', 0) / 1024:.0f}",
        *row(r)[2:8],
    ]
    table = print_table(f"rss ({conditions(orders, concurrency)}; sqlite)", columns, [cells])
    payload = {
        "benchmark": "rss",
        "machine": info,
        "conditions": conditions(orders, concurrency) + "; SQLite",
        "result": r,
        "table": table,
        "uptime_at_end": uptime(),
    }
    write_result("rss", payload)
    return payload
