"""Production mode (PostgreSQL + RabbitMQ, `ordersync serve` + `ordersync worker`) next to
the embedded default (SQLite, one `serve`), in one run, on this machine.

Every deployment is started by the test harness (`ordersync.testing.cluster.Cluster`): a
fresh database (and RabbitMQ namespace), the API and N worker processes, 3 Standard Webhooks
sinks (signatures checked) in this process; the harness drops it all afterwards.

1. Ingest: wrk, 64 keep-alive connections, pre-built signed orders/create (as
   `python -m bench ingest`), warm-up then measured; each 2xx is checked against the
   `orders` table. Three setups: embedded SQLite (delivering to the sinks meanwhile), the
   broker-mode API with no worker running (ingest only: orders + outbox rows), and the API
   with 2 workers relaying and delivering meanwhile.
2. Relay: (a) commit -> publish lag when idle, exactly, with the relay in this process
   (`bench.relay`), and in a real deployment (1 worker) from its `ordersync_relay_lag_seconds`
   histogram while single webhooks arrive 50 ms apart; the same paced load on SQLite gives
   the idle end-to-end latency of both modes. (b) Throughput: a 50,000-event backlog, one
   relay, events/s until all are published.
3. End to end: the harness's store simulator (order lifecycles, 1% duplicate and 1% stale
   webhooks, 64 in flight) against 3 destinations, on SQLite and on RabbitMQ with 2 workers;
   orders/s, order accepted -> last destination applied order.created, and the verdict
   (lost / duplicated / out of order).
4. Recovery: steady load with sinks answering after 0.5 s (deliveries in flight), SIGKILL
   worker 0, time until the deliveries it had leased are claimed again and succeeded by the
   other worker; repeated, the maximum reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.common import (
    CpuMeter,
    db_query,
    machine_info,
    print_table,
    source_fingerprint,
    uptime,
    wait_for_quiet,
    write_result,
)
from bench.ingest import WRK_THREADS, run_wrk
from bench.pool import order_bodies, shopify_headers
from bench.relay import measure_idle_lag, measure_throughput, summary_ms
from ordersync.config import BrokerConfig, WorkerConfig
from ordersync.simulators.shopify_store import AcceptedOrder, StoreReport
from ordersync.simulators.sinks import FaultPlan
from ordersync.simulators.verify import HubClient, verify
from ordersync.testing.cluster import CHANNEL, Cluster

PARTS = ("ingest", "relay", "e2e", "recovery")
_LEASE = WorkerConfig().lease_seconds  # the defaults the cluster's workers run with
_GRACE = BrokerConfig().sweep_grace
WEBHOOK_PATH = f"/v1/channels/{CHANNEL}/webhooks"
INGEST_GOAL = (2500.0, 100.0)  # orders/s, p99 ms
LAG_GOAL_MS = 50.0
RELAY_GOAL = 5000.0  # events/s
RECOVERY_GOAL_S = 5.0
RECOVERY_RATE = 60.0  # orders/s of steady load while a worker is killed
RECOVERY_LATENCY = 0.5  # seconds each sink takes to answer, so deliveries are in flight


# ---- helpers -------------------------------------------------------------------------------


def _rabbitmq_pid() -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "beam.smp":
                    return int(entry.name)
            except OSError:
                continue
    return None


def _meter(c: Cluster) -> CpuMeter:
    """CPU of the deployment's processes, this process (sinks, load, wrk), PG and RabbitMQ."""
    assert c.api is not None
    assert c.api.proc is not None
    pids = {"api": c.api.proc.pid}
    for i, w in enumerate(c.workers):
        if w.proc is not None:
            pids[f"worker{i}"] = w.proc.pid
    if c.backend == "rabbitmq" and (mq := _rabbitmq_pid()) is not None:
        pids["rabbitmq"] = mq
    pids["self"] = os.getpid()
    return CpuMeter(pids, postgres=c.backend != "sqlite")


def _cpu_text(cpu: dict[str, Any]) -> str:
    s = cpu["cpu_s"]
    workers = sum(v for k, v in s.items() if k.startswith("worker"))
    parts = [f"api {s.get('api', 0):.1f}"]
    if any(k.startswith("worker") for k in s):
        parts.append(f"workers {workers:.1f}")
    if cpu["postgres_cpu_s"]:
        parts.append(f"pg {cpu['postgres_cpu_s']:.1f}")
    if "rabbitmq" in s:
        parts.append(f"mq {s['rabbitmq']:.1f}")
    parts.append(f"bench {s.get('self', 0):.1f}")
    return ", ".join(parts) + f" / {cpu['wall_s']:.0f}s"


def _log_warnings(c: Cluster) -> dict[str, int]:
    """WARNING lines of the deployment's logs, counted by process and message start."""
    out: dict[str, int] = {}
    for f in sorted(c.workdir.glob("*.log")):
        for line in f.read_text(errors="replace").splitlines():
            if " WARNING " in line:
                msg = line.split(" WARNING ", 1)[1]
                key = f"{f.stem}: {re.sub(r'[0-9]+', 'N', msg)[:90]}"
                out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:15])


async def _attempt_outcomes(c: Cluster) -> dict[str, int]:
    """Delivery attempts by outcome and error (PostgreSQL deployments)."""
    conn = await _pg(c)
    try:
        rows = await conn.fetch(
            "SELECT outcome, coalesce(left(error, 60), ''), count(*) FROM delivery_attempts"
            " GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 10"
        )
    finally:
        await conn.close()
    return {f"{r[0]} {r[1]}".strip(): int(r[2]) for r in rows}


def _log_problems(c: Cluster) -> list[str]:
    bad = ("ERROR", "CRITICAL", "Traceback")
    out = []
    for f in sorted(c.workdir.glob("*.log")):
        for line in f.read_text(errors="replace").splitlines():
            if any(b in line for b in bad):
                out.append(f"{f.name}: {line[:300]}")
    return out


async def _pg(c: Cluster) -> asyncpg.Connection:
    return await asyncpg.connect(c.real_database_url, timeout=10)


async def _metrics_text(port: int) -> str:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r,
    ):
        return await r.text()


def _histogram(text: str, name: str) -> dict[str, float]:
    """Cumulative bucket counts by upper bound, plus _count and _sum (no labels)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = re.search(r'le="([^"]+)"', line)
            if le:
                out[le.group(1)] = float(line.rsplit(" ", 1)[1])
        elif line.startswith((f"{name}_count ", f"{name}_sum ")):
            key, value = line.rsplit(" ", 1)
            out[key[len(name) :]] = float(value)
    return out


def _bucket_percentile(before: dict[str, float], after: dict[str, float], p: float) -> str:
    """The upper bound of the bucket holding the p-th percentile of what was observed
    between the two scrapes (a histogram only knows that much)."""
    count = after.get("_count", 0) - before.get("_count", 0)
    if count <= 0:
        return "n/a"
    bounds = sorted((float(k), k) for k in after if not k.startswith("_"))
    for _, key in bounds:
        if after[key] - before.get(key, 0) >= p / 100 * count:
            return f"<= {float(key) * 1000:g} ms" if key != "+Inf" else "> 30 s"
    return "n/a"


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


# ---- 1. ingest -----------------------------------------------------------------------------


def _raw_request(headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {WEBHOOK_PATH} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Pools:
    """wrk request files for the harness's channel (one signing secret for every cluster:
    each starts on an empty database, so every request is new to every server)."""

    def __init__(self, workdir: Path, secret: str) -> None:
        self.workdir = workdir
        self.secret = secret
        self.sizes = {"warm": 0, "measure": 0}

    def prefix(self, name: str) -> Path:
        return self.workdir / f"{name}.req"

    def ensure(self, name: str, n: int) -> None:
        if self.sizes[name] >= n:
            return
        started = time.monotonic()
        bodies = order_bodies(n - self.sizes[name])
        with ExitStack() as stack:
            files = [
                stack.enter_context(Path(f"{self.prefix(name)}.{i}").open("ab"))
                for i in range(WRK_THREADS)
            ]
            for i, body in enumerate(bodies):
                request = _raw_request(shopify_headers(self.secret, body), body)
                out = files[i % WRK_THREADS]
                out.write(b"%d\n" % len(request))
                out.write(request)
        self.sizes[name] = n
        print(f"  {name} pool: {n} requests ({time.monotonic() - started:.1f}s to build)")


INGEST_SETUPS: list[tuple[str, int, str]] = [
    ("sqlite", 0, "SQLite embedded: `serve` ingesting and delivering to the 3 sinks"),
    ("rabbitmq", 0, "PG+RabbitMQ: API only, no worker running (orders + outbox rows)"),
    ("rabbitmq", 2, "PG+RabbitMQ: API, 2 workers relaying + delivering meanwhile"),
]


async def measure_ingest(
    backend: str,
    workers: int,
    label: str,
    pools: Pools,
    *,
    seconds: float,
    warmup: float,
    connections: int,
) -> dict[str, Any]:
    c = Cluster(backend, workers=workers)  # type: ignore[arg-type]
    c.shop_secret = pools.secret
    async with c:
        url = f"{c.url}/"
        out = c.workdir / "wrk.out"
        busy_before = await asyncio.to_thread(wait_for_quiet)
        warm = await asyncio.to_thread(run_wrk, url, pools.prefix("warm"), warmup, connections, out)
        await asyncio.to_thread(
            pools.ensure, "measure", int(max(warm.rps, 1000) * seconds * 1.6) + connections
        )
        meter = _meter(c)
        meter.start()
        run = await asyncio.to_thread(
            run_wrk, url, pools.prefix("measure"), seconds, connections, out
        )
        cpu = meter.stop()
        accepted = [*warm.ids, *run.ids]
        outbox: dict[str, Any] = {}
        if backend == "sqlite":
            stored = set(db_query("sqlite", str(c.workdir / "hub.db"), "SELECT id FROM orders"))
        else:
            conn = await _pg(c)
            try:
                stored = {r[0] for r in await conn.fetch("SELECT id FROM orders")}
                row = await conn.fetchrow(
                    "SELECT (SELECT count(*) FROM events),"
                    " (SELECT count(*) FROM events WHERE published_us IS NULL),"
                    " (SELECT count(*) FROM deliveries)"
                )
                outbox = {"events": row[0], "events_unpublished": row[1], "deliveries": row[2]}
            finally:
                await conn.close()
        problems = _log_problems(c)
    missing = [i for i in accepted if i not in stored]
    return {
        "setup": label,
        "backend": backend,
        "workers": workers,
        "connections": connections,
        "warmup": {"seconds": warmup, "requests": warm.requests, "rps": round(warm.rps, 1)},
        "seconds": round(run.duration_s, 2),
        "requests": run.requests,
        "rps": round(run.rps, 1),
        "latency_ms": run.latency_ms,
        "non_2xx": run.non_2xx,
        "statuses": run.statuses,
        "socket_errors": {k: v for k, v in run.errors.items() if k != "status"},
        "pool_wrapped": warm.wraps + run.wraps,
        "db_check": {
            "rows": len(stored),
            "accepted_2xx": len(accepted),
            "accepted_without_row": len(missing),
            "missing_examples": missing[:5],
        },
        "outbox": outbox,
        "cpu": cpu,
        "api_cpu_ms_per_request": round(1000 * cpu["cpu_s"]["api"] / run.requests, 3)
        if run.requests
        else None,
        "background_busy_pct_before": busy_before,
        "log_problems": problems[:20],
    }


def _ingest_row(r: dict[str, Any]) -> list[Any]:
    lat = r["latency_ms"]
    check = r["db_check"]
    errors = r["non_2xx"] + sum(r["socket_errors"].values())
    lost = check["accepted_without_row"]
    verdict = "ok" if lost == 0 else f"{lost} LOST"
    goal_rps, goal_p99 = INGEST_GOAL
    return [
        "1 ingest",
        r["setup"],
        f"{r['rps']:.0f} orders/s ({r['api_cpu_ms_per_request']} CPU-ms/req in `serve`)",
        f"{lat['p50']:.1f}",
        f"{lat['p99']:.1f}",
        f"2xx->row {verdict}, {errors} err",
        f">= {goal_rps:.0f}/s, p99 <= {goal_p99:.0f}",
        _met(r["rps"] >= goal_rps and lat["p99"] <= goal_p99),
        _cpu_text(r["cpu"]),
    ]


# ---- 2. relay ------------------------------------------------------------------------------


async def _paced_orders(
    c: Cluster,
    rate: float,
    *,
    seconds: float | None = None,
    stop: asyncio.Event | None = None,
    accepted: dict[str, AcceptedOrder] | None = None,
) -> dict[str, float]:
    """orders/create at `rate`/s (each in its own task, so a slow answer shifts nothing);
    returns order external id -> 2xx time (monotonic)."""
    done: dict[str, float] = {}
    failed = 0
    tasks: set[asyncio.Task[None]] = set()
    async with c.store(concurrency=64) as store:

        async def one() -> None:
            nonlocal failed
            order = store.factory.new_order()
            status = await store.send("orders/create", order)
            now = time.monotonic()
            if 200 <= status < 300:
                key = str(order["id"])
                done[key] = now
                if accepted is not None:
                    accepted[key] = AcceptedOrder(now, order, ["orders/create"])
            else:
                failed += 1

        started = time.monotonic()
        i = 0
        while True:
            if seconds is not None and time.monotonic() - started >= seconds:
                break
            if stop is not None and stop.is_set():
                break
            if (delay := started + i / rate - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.gather(*tasks)
    if failed:
        print(f"  {failed} paced webhooks were not accepted", flush=True)
    return done


def _created_applied(c: Cluster) -> dict[str, float]:
    """Order external id -> when the last sink applied its order.created (monotonic)."""
    last: dict[str, float] = {}
    for sink in c.sinks.values():
        for e in sink.ledger:
            if e.type == "order.created":
                ext = str(e.data.get("external_id"))
                last[ext] = max(last.get(ext, 0.0), e.received_at)
    return last


async def measure_paced(backend: str, seconds: float, spacing: float) -> dict[str, Any]:
    """Single webhooks `spacing` s apart: relay-lag histogram (broker mode, 1 worker) and
    2xx -> last sink applied order.created."""
    c = Cluster(backend, workers=1)  # type: ignore[arg-type]
    async with c:
        await asyncio.to_thread(wait_for_quiet)
        before: dict[str, float] = {}
        if c.workers:
            before = _histogram(
                await _metrics_text(c.workers[0].port), "ordersync_relay_lag_seconds"
            )
        meter = _meter(c)
        meter.start()
        sent = await _paced_orders(c, 1 / spacing, seconds=seconds)
        await c.settle(60)
        cpu = meter.stop()
        hist: dict[str, Any] = {}
        if c.workers:
            after = _histogram(
                await _metrics_text(c.workers[0].port), "ordersync_relay_lag_seconds"
            )
            n = after.get("_count", 0) - before.get("_count", 0)
            total = after.get("_sum", 0) - before.get("_sum", 0)
            hist = {
                "observed": int(n),
                "mean_ms": round(1000 * total / n, 2) if n else None,
                "p50": _bucket_percentile(before, after, 50),
                "p99": _bucket_percentile(before, after, 99),
                "buckets_after": after,
            }
        applied = _created_applied(c)
        problems = _log_problems(c)
        exact: dict[str, float] = {}
        if c.workers:
            # The same interval, exactly, per event: created_us is stamped as the API's
            # transaction starts, published_us once the broker confirmed (the relay's mark).
            conn = await _pg(c)
            try:
                lags = await conn.fetch(
                    "SELECT published_us - created_us FROM events WHERE published_us IS NOT NULL"
                )
            finally:
                await conn.close()
            exact = summary_ms([r[0] / 1e6 for r in lags])
    lat = [applied[k] - t for k, t in sent.items() if k in applied]
    return {
        "backend": backend,
        "workers": 1 if backend != "sqlite" else 0,
        "seconds": seconds,
        "spacing_s": spacing,
        "orders": len(sent),
        "not_applied": len(sent) - len(lat),
        "accepted_to_last_sink_ms": summary_ms(lat),
        "relay_lag_histogram": hist,
        "created_to_published_ms": exact,
        "cpu": cpu,
        "log_problems": problems[:20],
    }


# ---- 3. end to end -------------------------------------------------------------------------


async def measure_e2e(backend: str, orders: int, concurrency: int) -> dict[str, Any]:
    c = Cluster(backend, workers=2)  # type: ignore[arg-type]
    async with c:
        busy_before = await asyncio.to_thread(wait_for_quiet)
        meter = _meter(c)
        meter.start()
        started = time.monotonic()
        res = await c.run(orders, concurrency=concurrency)
        cpu = meter.stop()
        applied = _created_applied(c)
        last_any = max((e.received_at for s in c.sinks.values() for e in s.ledger), default=0.0)
        sinks = {n: s.stats() for n, s in c.sinks.items()}
        problems = _log_problems(c)
        warnings = _log_warnings(c)
        attempts = await _attempt_outcomes(c) if backend != "sqlite" else {}
    report = res.report
    n = len(report.accepted_orders)
    lat = [
        applied[ext] - acc.first_accepted_at
        for ext, acc in report.accepted_orders.items()
        if ext in applied
    ]
    span = last_any - started
    states: dict[str, int] = {}
    for d in res.hub_deliveries:
        states[d["state"]] = states.get(d["state"], 0) + 1
    v = res.verdict
    return {
        "backend": backend,
        "workers": 2 if backend != "sqlite" else 0,
        "orders": orders,
        "concurrency": concurrency,
        "accepted_orders": n,
        "webhooks_accepted": report.accepted,
        "webhooks_failed": report.failed,
        "webhook_retries": report.retries,
        "duplicates_sent": report.duplicates_sent,
        "stale_sent": report.stale_sent,
        "store_seconds": round(report.elapsed, 2),
        "first_send_to_last_apply_s": round(span, 2),
        "orders_per_s": round(n / span, 1) if span > 0 else 0.0,
        "webhooks_per_s_ingest": round(report.accepted / report.elapsed, 1)
        if report.elapsed
        else 0.0,
        "deliveries": len(res.hub_deliveries),
        "deliveries_per_s": round(len(res.hub_deliveries) / span, 1) if span > 0 else 0.0,
        "delivery_states": states,
        "accepted_to_last_sink_created_ms": summary_ms(lat),
        "lost": v.lost,
        "duplicated": v.duplicated,
        "out_of_order": v.out_of_order,
        "verdict_problems": v.problems,
        "sinks": sinks,
        "duplicate_sends": sum(s["duplicates_suppressed"] for s in sinks.values()),
        "attempt_outcomes": attempts,
        "log_warnings": warnings,
        "cpu": cpu,
        "background_busy_pct_before": busy_before,
        "log_problems": problems[:20],
    }


# ---- 4. recovery ---------------------------------------------------------------------------


def _worker_id(log_path: Path) -> str:
    found = re.findall(r"worker (wrk_\S+) running", log_path.read_text(errors="replace"))
    if not found:
        raise RuntimeError(f"no 'worker ... running' line in {log_path}")
    return str(found[-1])


async def _wait_worker_id(log_path: Path, previous: str | None, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        with_id = None
        with contextlib.suppress(RuntimeError):
            with_id = _worker_id(log_path)
        if with_id is not None and with_id != previous:
            return with_id
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker id not found in {log_path}")
        await asyncio.sleep(0.1)


async def _wait_steady(conn: asyncpg.Connection, timeout: float = 30.0) -> float:
    """Wait until no delivery has been pending for more than 2 s (the previous kill's
    backlog is gone); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        old = await conn.fetchval(
            "SELECT count(*) FROM deliveries WHERE state = 'pending' AND created_us < $1",
            time.time_ns() // 1000 - 2_000_000,
        )
        if old == 0:
            break
        await asyncio.sleep(0.2)
    return round(time.monotonic() - started, 2)


async def _kill_once(c: Cluster, conn: asyncpg.Connection, worker_id: str) -> dict[str, Any]:
    victim = c.workers[0]
    steady_wait = await _wait_steady(conn)
    # Wait until the victim holds leases (deliveries in flight at the sinks).
    deadline = time.monotonic() + 15
    held = 0
    while time.monotonic() < deadline:
        held = await conn.fetchval(
            "SELECT count(*) FROM deliveries WHERE lease_owner = $1 AND state = 'pending'",
            worker_id,
        )
        if held >= 10:
            break
        await asyncio.sleep(0.05)
    leader = None
    try:
        text = await _metrics_text(victim.port)
        m = re.search(r"^ordersync_relay_leader (\S+)", text, re.M)
        leader = bool(m and float(m.group(1)) == 1.0)
    except (aiohttp.ClientError, TimeoutError):
        pass
    killed_at = time.monotonic()
    killed_wall_us = time.time_ns() // 1000
    await asyncio.to_thread(victim.kill)
    kill_returned = time.monotonic() - killed_at
    rows = await conn.fetch(
        "SELECT d.seq, d.destination_id, e.id FROM deliveries d JOIN events e"
        " ON e.seq = d.event_seq WHERE d.lease_owner = $1 AND d.state = 'pending'",
        worker_id,
    )
    seqs = [r[0] for r in rows]
    first_claim = all_claimed = all_done = None
    claimed: set[int] = set()
    deadline = time.monotonic() + 60
    while seqs and all_done is None and time.monotonic() < deadline:
        now = time.monotonic() - killed_at
        states = await conn.fetch(
            "SELECT seq, state, lease_owner FROM deliveries WHERE seq = ANY($1::bigint[])", seqs
        )
        for seq, state, owner in states:
            if state != "pending" or (owner is not None and owner != worker_id):
                claimed.add(seq)
        if claimed and first_claim is None:
            first_claim = now
        if len(claimed) == len(seqs) and all_claimed is None:
            all_claimed = now
        if all(s == "succeeded" for _, s, _ in states):
            all_done = now
        else:
            await asyncio.sleep(0.02)
    # The survivor's attempts at them (started_us: when its send began).
    attempts = await conn.fetch(
        "SELECT started_us, duration_ms, outcome, coalesce(error, '') FROM delivery_attempts"
        " WHERE delivery_seq = ANY($1::bigint[]) AND started_us >= $2",
        seqs,
        killed_wall_us,
    )
    starts = [(a[0] - killed_wall_us) / 1e6 for a in attempts]
    outcomes: dict[str, int] = {}
    for a in attempts:
        key = f"{a[2]} {a[3][:60]}".strip()
        outcomes[key] = outcomes.get(key, 0) + 1
    # The sinks' view. Sends of the victim still at a sink when it died are applied there
    # after the kill too (their redelivery is then suppressed by the sink as a duplicate).
    wanted = {(r[1], r[2]) for r in rows}
    after = [
        e.received_at - killed_at
        for name, s in c.sinks.items()
        for e in s.ledger
        if (name, e.webhook_id) in wanted and e.received_at >= killed_at
    ]
    return {
        "victim": worker_id,
        "waited_for_steady_s": steady_wait,
        "victim_led_relay": leader,
        "leased_at_kill": len(seqs),
        "held_before_kill": held,
        "kill_call_s": round(kill_returned, 3),
        "kill_to_first_reclaim_s": _r(first_claim),
        "kill_to_all_reclaimed_s": _r(all_claimed),
        "kill_to_all_succeeded_s": _r(all_done),
        "kill_to_first_resend_s": _r(min(starts) if starts else None),
        "kill_to_last_resend_s": _r(max(starts) if starts else None),
        "resend_attempts": outcomes,
        "applied_at_sinks_after_kill": len(after),
        "kill_to_first_sink_apply_s": _r(min(after) if after else None),
        "kill_to_last_sink_apply_s": _r(max(after) if after else None),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


async def measure_recovery(runs: int) -> dict[str, Any]:
    c = Cluster(
        "rabbitmq",
        workers=2,
        sink_faults=FaultPlan(latency=(RECOVERY_LATENCY, RECOVERY_LATENCY)),
        log_level="INFO",  # for the worker's "worker wrk_... running" line
    )
    results = []
    accepted: dict[str, AcceptedOrder] = {}
    async with c:
        stop = asyncio.Event()
        load = asyncio.create_task(_paced_orders(c, RECOVERY_RATE, stop=stop, accepted=accepted))
        conn = await _pg(c)
        meter = _meter(c)
        meter.pids.pop("worker0", None)  # killed and restarted: its CPU is not countable
        meter.start()
        try:
            worker_id = await _wait_worker_id(c.workers[0].log_path, None)
            await asyncio.sleep(2.0)
            for i in range(runs):
                r = await _kill_once(c, conn, worker_id)
                r["run"] = i + 1
                results.append(r)
                print(
                    f"  recovery run {i + 1}: {r['leased_at_kill']} leased deliveries;"
                    f" reclaimed first {r['kill_to_first_reclaim_s']} s, all"
                    f" {r['kill_to_all_reclaimed_s']} s; all succeeded"
                    f" {r['kill_to_all_succeeded_s']} s (victim led the relay:"
                    f" {r['victim_led_relay']})",
                    flush=True,
                )
                c.workers[0].start()
                await c.workers[0].wait_ready()
                worker_id = await _wait_worker_id(c.workers[0].log_path, worker_id)
                await asyncio.sleep(2.0)
        finally:
            stop.set()
            await load
            await conn.close()
        await c.settle(120)
        cpu = meter.stop()
        async with aiohttp.ClientSession() as session:
            client = HubClient(c.url, c.api_key, session)
            hub_orders = await client.all_pages("/v1/orders", channel_id=CHANNEL)
            hub_deliveries = await client.all_pages("/v1/deliveries")
        report = StoreReport(accepted=len(accepted), accepted_orders=accepted)
        verdict = verify(report, hub_orders, hub_deliveries, c.sinks)
        sinks = {n: s.stats() for n, s in c.sinks.items()}
        problems = _log_problems(c)
        warnings = _log_warnings(c)
        attempts = await _attempt_outcomes(c)
    return {
        "runs": results,
        "load_orders_per_s": RECOVERY_RATE,
        "sink_latency_s": RECOVERY_LATENCY,
        "orders_accepted": len(accepted),
        "lost": verdict.lost,
        "duplicated": verdict.duplicated,
        "out_of_order": verdict.out_of_order,
        "verdict_problems": verdict.problems,
        "sinks": sinks,
        "duplicate_sends": sum(s["duplicates_suppressed"] for s in sinks.values()),
        "attempt_outcomes": attempts,
        "log_warnings": warnings,
        "cpu": cpu,
        "log_problems": problems[:20],
    }


def _max(results: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in results]
    return None if any(v is None for v in values) or not values else max(values)


# ---- the run -------------------------------------------------------------------------------

COLUMNS = ["#", "setup", "result", "p50 ms", "p99 ms", "check", "goal", "met", "CPU s"]


def _conditions(seconds: float, warmup: float, connections: int, orders: int) -> dict[str, str]:
    return {
        "ingest": (
            f"wrk {WRK_THREADS} thread, {connections} keep-alive connections, warm-up"
            f" {warmup:g}s, measured {seconds:g}s; distinct signed orders/create (~7 KB);"
            " 3 destinations subscribed (harness defaults), fresh database per setup"
        ),
        "relay": (
            "in-process: OutboxRelay + SqlRelayStore + RabbitBus (batch 1000, 8 quorum lanes,"
            " 100 events/message), fresh database; idle: 1 event (+3 deliveries, NOTIFY) per"
            " 50 ms; backlog: events pre-inserted, one relay. Deployment: `serve` + 1 worker,"
            " orders/create 50 ms apart"
        ),
        "e2e": (
            f"Cluster harness store: {orders} order lifecycles (create, pay, update, cancel or"
            " fulfil), 1% duplicate + 1% stale webhooks, 64 in flight; 3 destinations (erp"
            " order.*, wms + payment 4 types each), sinks in the bench process; RabbitMQ"
            " with 2 `ordersync worker` processes"
        ),
        "recovery": (
            f"RabbitMQ, 2 workers, orders/create at {RECOVERY_RATE:g}/s, every sink answers"
            f" after {RECOVERY_LATENCY:g}s; lease_seconds {_LEASE:g} (renewed every"
            f" {_LEASE / 4:g} s), sweeper poll 0.5 s, sweep_grace {_GRACE:g} s; SIGKILL worker 0,"
            " restart it, repeat"
        ),
    }


async def run_production(
    *,
    parts: list[str],
    seconds: float,
    warmup: float,
    connections: int,
    orders: int,
    relay_events: int,
    lag_seconds: float,
    recovery_runs: int,
) -> dict[str, Any]:
    info = machine_info()
    conditions = _conditions(seconds, warmup, connections, orders)
    payload: dict[str, Any] = {
        "benchmark": "production",
        "machine": info,
        "ordersync_source": source_fingerprint()["sha256_12"],
        "conditions": {p: conditions[p] for p in parts},
    }
    rows: list[list[Any]] = []
    started = time.monotonic()

    if "ingest" in parts:
        workdir = Path(tempfile.mkdtemp(prefix="ordersync-bench-prodpool-"))
        pools = Pools(workdir, os.urandom(24).hex())
        results = []
        try:
            await asyncio.to_thread(pools.ensure, "warm", int(5000 * warmup))
            await asyncio.to_thread(pools.ensure, "measure", int(3000 * seconds))
            for backend, workers, label in INGEST_SETUPS:
                print(f"production ingest: {label}", flush=True)
                r = await measure_ingest(
                    backend,
                    workers,
                    label,
                    pools,
                    seconds=seconds,
                    warmup=warmup,
                    connections=connections,
                )
                results.append(r)
                print_table("", COLUMNS, [_ingest_row(r)])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        payload["ingest"] = results
        rows += [_ingest_row(r) for r in results]

    if "relay" in parts:
        print("production relay: idle lag, in process", flush=True)
        lag = await measure_idle_lag(lag_seconds, 0.05)
        print(f"production relay: backlog of {relay_events} events, one relay", flush=True)
        thru = await measure_throughput(relay_events)
        paced = []
        for backend in ("sqlite", "rabbitmq"):
            print(f"production relay: webhooks 50 ms apart, {backend} deployment", flush=True)
            paced.append(await measure_paced(backend, lag_seconds, 0.05))
        payload["relay"] = {"idle_lag": lag, "throughput": thru, "paced_deployment": paced}
        c2c, c2r = lag["commit_to_confirm_ms"], lag["commit_to_consumer_ms"]
        rows.append(
            [
                "2a relay lag",
                f"in-process relay, {lag['events']} events 50 ms apart: commit -> confirmed",
                f"consumer got it: p50 {c2r['p50']}, p99 {c2r['p99']}, max {c2r['max']} ms",
                c2c["p50"],
                c2c["p99"],
                f"unconfirmed {lag['not_confirmed']}, unreceived {lag['not_received']}",
                f"p99 <= {LAG_GOAL_MS:g} ms",
                _met(c2c["p99"] <= LAG_GOAL_MS and c2r["p99"] <= LAG_GOAL_MS),
                "-",
            ]
        )
        for p in paced:
            lat = p["accepted_to_last_sink_ms"]
            h = p["relay_lag_histogram"]
            if p["backend"] == "sqlite":
                setup = "SQLite embedded: orders/create 50 ms apart, 2xx -> 3rd sink applied"
                result = f"{p['orders']} orders, e2e p50 {lat.get('p50')} ms"
                goal, met = "-", "-"
            else:
                ex = p["created_to_published_ms"]
                setup = (
                    "PG+RabbitMQ, 1 worker, same load: commit -> published per event"
                    " (events.created_us -> published_us)"
                )
                result = (
                    f"max {ex.get('max')} ms; worker histogram p50 {h.get('p50')}, p99"
                    f" {h.get('p99')}; 2xx -> 3rd sink p50 {lat.get('p50')} / p99"
                    f" {lat.get('p99')} ms"
                )
                goal = f"p99 <= {LAG_GOAL_MS:g} ms"
                met = _met(bool(ex) and ex["p99"] <= LAG_GOAL_MS)
            rows.append(
                [
                    "2a relay lag" if p["backend"] != "sqlite" else "2a e2e idle",
                    setup,
                    result,
                    p["created_to_published_ms"].get("p50", lat.get("p50")),
                    p["created_to_published_ms"].get("p99", lat.get("p99")),
                    f"not applied {p['not_applied']}",
                    goal,
                    met,
                    _cpu_text(p["cpu"]),
                ]
            )
        calls = thru["relay_calls"]
        split = ", ".join(f"{k} {v['total_s']:.2f}s" for k, v in calls.items())
        rows.append(
            [
                "2b relay thru",
                f"backlog {thru['events']} events ({thru['deliveries']} deliveries), 1 relay",
                f"{thru['events_per_s']:.0f} events/s ({thru['seconds']:.2f}s; {split})",
                "-",
                "-",
                f"left {thru['left_unpublished']}, broker has"
                f" {thru['drained_distinct_events']} distinct",
                f">= {RELAY_GOAL:.0f}/s",
                _met(thru["events_per_s"] >= RELAY_GOAL and thru["left_unpublished"] == 0),
                "-",
            ]
        )

    if "e2e" in parts:
        results = []
        for backend in ("sqlite", "rabbitmq"):
            print(f"production e2e: {orders} orders on {backend}", flush=True)
            results.append(await measure_e2e(backend, orders, connections))
        payload["e2e"] = results
        for r in results:
            lat = r["accepted_to_last_sink_created_ms"]
            rows.append(
                [
                    "3 e2e",
                    "SQLite embedded (1 `serve`)"
                    if r["backend"] == "sqlite"
                    else "PG+RabbitMQ: `serve` + 2 `worker`",
                    f"{r['orders_per_s']:.0f} orders/s ({r['deliveries_per_s']:.0f}"
                    f" deliveries/s, {r['webhooks_per_s_ingest']:.0f} webhooks/s in)",
                    lat.get("p50"),
                    lat.get("p99"),
                    f"lost {r['lost']}, dup {r['duplicated']}, out-of-order {r['out_of_order']}",
                    "0 / 0 / 0",
                    _met((r["lost"], r["duplicated"], r["out_of_order"]) == (0, 0, 0)),
                    _cpu_text(r["cpu"]),
                ]
            )

    if "recovery" in parts:
        print(f"production recovery: SIGKILL worker 0, {recovery_runs} times", flush=True)
        rec = await measure_recovery(recovery_runs)
        payload["recovery"] = rec
        runs = rec["runs"]
        worst_claim = _max(runs, "kill_to_all_reclaimed_s")
        worst_done = _max(runs, "kill_to_all_succeeded_s")
        leased = "/".join(str(r["leased_at_kill"]) for r in runs)
        led = sum(1 for r in runs if r["victim_led_relay"])
        rec["max_kill_to_all_reclaimed_s"] = worst_claim
        rec["max_kill_to_all_succeeded_s"] = worst_done
        rows.append(
            [
                "4 recovery",
                f"SIGKILL worker 0 x{len(runs)} ({leased} leased; it led the relay {led}x)",
                f"max kill -> all reclaimed {worst_claim} s, -> all succeeded {worst_done} s",
                "-",
                "-",
                f"lost {rec['lost']}, dup {rec['duplicated']}, out-of-order {rec['out_of_order']}",
                f"<= {RECOVERY_GOAL_S:g} s",
                _met(worst_done is not None and worst_done <= RECOVERY_GOAL_S),
                _cpu_text(rec["cpu"]),
            ]
        )

    title = (
        f"production vs embedded ({info['cpu_count']} CPU {info['cpu_model']}; everything on"
        " one machine: hub processes, PostgreSQL, RabbitMQ, sinks, load)"
    )
    table = print_table(title, COLUMNS, rows)
    for part in parts:
        print(f"  {part}: {conditions[part]}")
    payload["table"] = table
    payload["elapsed_s"] = round(time.monotonic() - started, 1)
    payload["uptime_at_end"] = uptime()
    name = "production" if list(parts) == list(PARTS) else "production_" + "_".join(parts)
    write_result(name, payload)
    print(f"production: {payload['elapsed_s']} s in all", flush=True)
    return payload
