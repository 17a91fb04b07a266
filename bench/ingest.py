"""Ingest: signed orders/create webhooks in, 200 after a durable commit; hub vs. baseline.

wrk holds 64 keep-alive connections and replays pre-built, correctly signed requests (each
webhook id and order id used once). Each server gets a fresh database, is warmed up, then
measured; afterwards the database is read back with sqlite3/psql to check that every 200
left a row.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    CpuMeter,
    create_pg_database,
    db_query,
    drop_pg_database,
    log_problems,
    machine_info,
    print_table,
    source_fingerprint,
    uptime,
    vm_status,
    wait_for_quiet,
    write_hub_config,
    write_result,
)
from bench.pool import order_bodies, write_wrk_pool
from ordersync.entrypoints.process import HubProcess, free_port

LUA = BENCH_DIR / "wrk_replay.lua"
WRK_THREADS = 1  # one wrk thread easily drives 64 connections and leaves the CPU to servers


class BaselineProcess(HubProcess):
    """`python -m bench.baseline_app`, started and stopped exactly like `ordersync serve`."""

    def start(self) -> None:
        log = self.log_path.open("ab")
        cmd = [sys.executable, "-m", "bench.baseline_app", "--config", str(self.config)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        env = {**self.env, "PYTHONPATH": str(BENCH_DIR.parent)}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()


@dataclass
class WrkRun:
    requests: int = 0
    duration_s: float = 0.0
    sent: int = 0
    ok: int = 0
    non_2xx: int = 0
    wraps: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def run_wrk(url: str, prefix: Path, seconds: float, connections: int, out: Path) -> WrkRun:
    if shutil.which("wrk") is None:
        raise SystemExit(
            "the ingest benchmarks drive load with wrk, which is not installed:"
            " `apt-get install wrk` (Debian) or `brew install wrk`"
        )
    cmd = ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "30s"]
    cmd += ["-s", str(LUA), url, "--", str(prefix)]
    proc = subprocess.run(
        cmd,
        env={**os.environ, "WRK_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    run = WrkRun()
    for line in out.read_text().splitlines():
        key, *vals = line.split(" ")
        if key == "id":
            run.ids.append(vals[0] if vals else "")
            continue
        nums = [int(v) for v in vals]
        if key == "summary":
            run.requests, run.duration_s = nums[0], nums[1] / 1e6
        elif key == "errors":
            run.errors = dict(
                zip(("connect", "read", "write", "status", "timeout"), nums, strict=True)
            )
        elif key == "latency":
            names = ("p50", "p90", "p99", "p99.9", "mean", "max", "min")
            run.latency_ms = {n: round(v / 1000, 2) for n, v in zip(names, nums, strict=True)}
        elif key == "thread":
            run.sent += nums[1]
            run.ok += nums[2]
            run.non_2xx += nums[3]
            run.wraps += nums[4]
        elif key == "status":
            run.statuses[nums[0]] = run.statuses.get(nums[0], 0) + nums[1]
    out.unlink()
    return run


class Pools:
    """Request files for warm-up and measurement, grown on demand (same bytes for every
    server: each server starts on an empty database, so no request is ever seen twice)."""

    def __init__(self, workdir: Path, secret: str) -> None:
        self.workdir = workdir
        self.secret = secret
        self.sizes = {"warm": 0, "measure": 0}

    def prefix(self, name: str) -> Path:
        return self.workdir / f"{name}.req"

    def ensure(self, name: str, n: int) -> None:
        have = self.sizes[name]
        if have >= n:
            return
        started = time.monotonic()
        bodies = order_bodies(n - have)
        # Append: thread files keep their round-robin split (n is kept a multiple of threads).
        files = [f"{self.prefix(name)}.{i}" for i in range(WRK_THREADS)]
        tmp = self.workdir / f"{name}.tmp"
        write_wrk_pool(bodies, self.secret, tmp, WRK_THREADS)
        for i, path in enumerate(files):
            with Path(path).open("ab") as dst, Path(f"{tmp}.{i}").open("rb") as src:
                shutil.copyfileobj(src, dst)
            Path(f"{tmp}.{i}").unlink()
        self.sizes[name] = n
        print(f"  {name} pool: {n} requests ({time.monotonic() - started:.1f}s to build)")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


async def measure_server(
    kind: str,
    db: str,
    pools: Pools,
    *,
    seconds: float,
    warmup: float,
    connections: int,
    secret: str,
    hub_processes: int = 1,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"ordersync-bench-{kind}-{db}-"))
    pg_name = None
    if db == "sqlite":
        target = str(workdir / "bench.db")
        database_url = f"sqlite:///{target}"
    else:
        pg_name, database_url = create_pg_database(kind)
        target = pg_name
    config = write_hub_config(workdir, database_url)
    if kind == "hub":
        server: HubProcess | BaselineProcess = HubProcess(
            config,
            free_port(),
            log_path=workdir / "server.log",
            env={"BENCH_SHOP_SECRET": secret},
            args=("--processes", str(hub_processes)) if hub_processes > 1 else (),
        )
    else:
        server = BaselineProcess(
            config, free_port(), log_path=workdir / "server.log", env={"BENCH_SHOP_SECRET": secret}
        )
    server.start()
    try:
        await server.wait_ready()
        assert server.proc is not None
        pid = server.proc.pid
        # `serve --processes N`: the supervisor's children serve; count their CPU too.
        servers = {"server": pid}
        if kind == "hub" and hub_processes > 1:
            for _ in range(100):
                children = _children(pid)
                if len(children) >= hub_processes:
                    break
                await asyncio.sleep(0.1)
            servers.update({f"server_{c}": c for c in children})
        busy_before = wait_for_quiet()
        load_before = uptime()
        url = f"{server.url}/"
        warm = run_wrk(url, pools.prefix("warm"), warmup, connections, workdir / "wrk.out")
        # Enough measurement requests for 1.6x the warm-up rate, so no request repeats.
        await asyncio.to_thread(
            pools.ensure, "measure", int(max(warm.rps, 1000) * seconds * 1.6) + connections
        )
        meter = CpuMeter({**servers, "self": os.getpid()}, postgres=db == "postgresql")
        meter.start()
        run = run_wrk(url, pools.prefix("measure"), seconds, connections, workdir / "wrk.out")
        cpu = meter.stop()
        memory = vm_status(pid)
        load_after = uptime()
    finally:
        exit_code = server.terminate()
    table = "orders" if kind == "hub" else "raw_webhooks"
    key = "id" if kind == "hub" else "webhook_id"
    stored = db_query(db, target, f"SELECT {key} FROM {table}")  # noqa: S608
    stored_set = set(stored)
    accepted = [*warm.ids, *run.ids]
    missing = [i for i in accepted if i not in stored_set]
    problems = log_problems(workdir / "server.log")
    if pg_name is not None:
        drop_pg_database(pg_name)
    result = {
        "server": kind,
        "db": db,
        "ordersync_source": source_fingerprint()["sha256_12"],
        "connections": connections,
        "warmup": {"seconds": warmup, "requests": warm.requests, "rps": round(warm.rps, 1)},
        "seconds": round(run.duration_s, 2),
        "requests": run.requests,
        "rps": round(run.rps, 1),
        "latency_ms": run.latency_ms,
        "ok": run.ok,
        "non_2xx": run.non_2xx,
        "statuses": run.statuses,
        "socket_errors": {k: v for k, v in run.errors.items() if k != "status"},
        "pool_wrapped": warm.wraps + run.wraps,
        "db_check": {
            "rows": len(stored),
            "distinct_rows": len(stored_set),
            "accepted_2xx": len(accepted),
            "accepted_without_row": len(missing),
            "missing_examples": missing[:5],
            # Rows whose 200 wrk never read: answered after wrk stopped (<= connections/run).
            "rows_beyond_2xx": len(stored) - len(accepted),
        },
        "cpu": cpu,
        "server_cpu_ms_per_request": round(
            1000 * sum(v for k, v in cpu["cpu_s"].items() if k.startswith("server")) / run.requests,
            3,
        )
        if run.requests
        else None,
        "server_rss_kib": memory,
        "background_busy_pct_before": busy_before,
        "uptime_before": load_before,
        "uptime_after": load_after,
        "server_exit_code": exit_code,
        "server_log_problems": problems[:20],
    }
    if not problems:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        result["workdir"] = str(workdir)
    return result


def row(r: dict[str, Any]) -> list[Any]:
    check = r["db_check"]
    verdict = (
        "ok" if check["accepted_without_row"] == 0 else f"{check['accepted_without_row']} LOST"
    )
    return [
        r["server"],
        r["db"],
        f"{r['rps']:.0f}",
        f"{r['latency_ms']['p50']:.1f}",
        f"{r['latency_ms']['p99']:.1f}",
        r["non_2xx"] + sum(r["socket_errors"].values()),
        f"{check['rows']} rows, {verdict}",
        r["server_cpu_ms_per_request"],
        r["cpu"]["other_cpu_pct"],
    ]


COLUMNS = [
    "server",
    "db",
    "req/s",
    "p50 ms",
    "p99 ms",
    "non-2xx+err",
    "db check (200 -> row)",
    "server CPU ms/req",
    "other CPU %",
]


async def run_ingest(
    dbs: list[str],
    *,
    seconds: float,
    warmup: float,
    connections: int,
    repeat: int,
    hub_processes: int = 1,
) -> dict[str, Any]:
    info = machine_info()
    secret = os.urandom(24).hex()
    workdir = Path(tempfile.mkdtemp(prefix="ordersync-bench-pool-"))
    pools = Pools(workdir, secret)
    try:
        await asyncio.to_thread(pools.ensure, "warm", int(9000 * warmup))
        await asyncio.to_thread(pools.ensure, "measure", int(3000 * seconds))
        results: list[dict[str, Any]] = []
        for db in dbs:
            for attempt in range(repeat):
                for kind in ("hub", "baseline"):
                    print(f"ingest: {kind} on {db} (run {attempt + 1}/{repeat})", flush=True)
                    r = await measure_server(
                        kind,
                        db,
                        pools,
                        seconds=seconds,
                        warmup=warmup,
                        connections=connections,
                        secret=secret,
                        hub_processes=hub_processes if db == "postgresql" else 1,
                    )
                    r["run"] = attempt + 1
                    results.append(r)
                    print_table("", COLUMNS, [row(r)])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ratios = {}
    for db in dbs:
        hub = [r["rps"] for r in results if r["db"] == db and r["server"] == "hub"]
        base = [r["rps"] for r in results if r["db"] == db and r["server"] == "baseline"]
        if hub and base:
            ratios[db] = round((sum(hub) / len(hub)) / (sum(base) / len(base)), 2)
    conditions = (
        f"wrk {WRK_THREADS} thread, {connections} keep-alive connections, warm-up {warmup:g}s,"
        f" measured {seconds:g}s; each request a distinct signed orders/create (~7 KB body);"
        " hub with one Shopify channel and no destinations; fresh database per server"
        + (f"; PostgreSQL hub: serve --processes {hub_processes}" if hub_processes > 1 else "")
    )
    table = print_table(f"ingest ({conditions})", COLUMNS, [row(r) for r in results])
    for db, ratio in ratios.items():
        print(f"hub/baseline throughput on {db}: {ratio}")
    payload = {
        "benchmark": "ingest",
        "machine": info,
        "conditions": conditions,
        "results": results,
        "ratio_hub_over_baseline": ratios,
        "table": table,
        "uptime_at_end": uptime(),
    }
    write_result("ingest", payload)
    return payload
