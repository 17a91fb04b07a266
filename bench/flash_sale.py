"""Flash sale: many buyers reserving one hot SKU, batched writer vs. a naive baseline.

    .venv/bin/python -m bench.flash_sale [--seconds 3] [--buyers 8,64,256] [--db sqlite,postgresql]

For each database and each number of concurrent buyers, runs on a fresh database:

- `batched`: the hub's `InventoryService` as configured by default (one writer per SKU,
  every reservation queued while the previous transaction committed goes into the next
  one: ADR 6). Each reservation writes its stock change, a `reservations` row and a
  ledger row; its `stock.reserved` event has no subscriber here, so it is not stored.
- `pipelined` (PostgreSQL): the same writer with `inventory.pipeline` on (ADR 10): the
  next batch is decided from the state the last one left while that one commits.
- `recorded`: `batched`, also storing each `stock.reserved` event though no destination
  subscribes (`inventory.record_unrouted_events: true`; the default drops them, the ledger
  row is their record).
- `subscribed`: `batched` with a destination subscribed to `stock.reserved`: each hold also
  writes its outbox event and a delivery row (the dispatcher is not running).
- `naive`: what most code does: one transaction per reservation with a conditional
  `UPDATE stock SET reserved = reserved + 1 WHERE ... AND on_hand - reserved >= 1`,
  plus the same `reservations` and ledger rows (no outbox event: it does less).

Buyers are coroutines in this process, each reserving one unit in a loop for `--seconds`.
Latency is per reservation, from the call to its commit. Every run checks the result:
reserved = rows in `reservations` = the ledger's sum. Same run, same machine: compare the
ratio, the absolute numbers depend on what else the (shared) machine is doing.

CPU per reservation is recorded too, as it says more than a rate on a shared machine:
`py_us` is this process's CPU (the hub's share, buyers included), `pg_us` the CPU of the
PostgreSQL backends serving the cell's database (read from /proc, so a local server
only; polled, so a connection closed between two polls loses up to 0.2 s of its CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import (
    CpuMeter,
    create_pg_database,
    describe_machine,
    drop_pg_database,
    machine_info,
    percentile,
    print_table,
    proc_jiffies,
    uptime,
    write_result,
)
from ordersync.adapters.db import migrate
from ordersync.adapters.db.database import Database
from ordersync.adapters.db.inventory import SqlInventoryStore, StockCarry, sql_carrying
from ordersync.adapters.db.unit_of_work import SqlUnitOfWork
from ordersync.clock import to_us, utcnow
from ordersync.domain.inventory import InventoryPolicy, Location, LocationKind
from ordersync.domain.stock_commands import ReserveStock
from ordersync.ids import new_id
from ordersync.service.inventory import InventoryService
from ordersync.service.outbox import EventRouter

SKU, LOCATION = "FLASH-TEAPOT", "berlin-dc"
STOCK = 10**9  # never sold out: we measure the rate, not the end of the sale
NAIVE_POOL = 16  # connections (x2 with overflow) for the naive run on PostgreSQL

Reserve = Callable[[int, int], Awaitable[bool]]


async def _prepare(url: str) -> Database:
    db = Database(url, pool_size=NAIVE_POOL)
    await migrate.upgrade(db)
    async with db.write() as conn:
        await conn.execute(
            text(
                "INSERT INTO stock (sku, location_id, on_hand, reserved, safety_stock, version,"
                " updated_us) VALUES (:sku, :loc, :n, 0, 0, 0, :now)"
            ),
            {"sku": SKU, "loc": LOCATION, "n": STOCK, "now": to_us(utcnow())},
        )
    return db


async def _drive(buyers: int, seconds: float, reserve: Reserve) -> tuple[int, int, list[float]]:
    """(reserved, refused, latencies in seconds)."""
    latencies: list[float] = []
    counts = [0, 0]
    deadline = time.perf_counter() + seconds

    async def buyer(b: int) -> None:
        k = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            ok = await reserve(b, k)
            latencies.append(time.perf_counter() - t0)
            counts[0 if ok else 1] += 1
            k += 1

    async with asyncio.TaskGroup() as tg:
        for b in range(buyers):
            tg.create_task(buyer(b))
    return counts[0], counts[1], latencies


async def _batched(
    db: Database,
    buyers: int,
    seconds: float,
    *,
    pipeline: bool = False,
    record: bool = False,
    subscribed: bool = False,
) -> tuple[int, int, list[float]]:
    policy = InventoryPolicy({LOCATION: Location(LOCATION, LocationKind.WAREHOUSE, "eu", 1)})
    # `subscribed`: a WMS takes stock.reserved (an outbox event and a delivery per hold;
    # nothing sends them here, the dispatcher is not running).
    router = EventRouter([("wms", ["stock.reserved"])] if subscribed else [])

    def uow(carry: StockCarry | None = None) -> SqlUnitOfWork:
        u = SqlUnitOfWork(db, router, inventory=policy, stock_carry=carry)
        assert u.stock is not None
        u.stock.record_unrouted_events = record  # `inventory.record_unrouted_events`
        return u

    service = InventoryService(
        policy,
        uow,
        SqlInventoryStore(db),
        writers=1 if db.is_sqlite else 8,
        max_batch=512,
        carrying=None if db.is_sqlite or not pipeline else sql_carrying(uow),
    )
    await service.start(sweep=False)
    try:

        async def reserve(b: int, k: int) -> bool:
            result = await service.handle(ReserveStock(f"b{b}-{k}", ((SKU, 1),), datetime.now(UTC)))
            return bool(result.reserved)

        return await _drive(buyers, seconds, reserve)
    finally:
        await service.stop()


async def _pipelined(db: Database, buyers: int, seconds: float) -> tuple[int, int, list[float]]:
    """The batched writer with ADR 10's pipeline (`inventory.pipeline: true`)."""
    return await _batched(db, buyers, seconds, pipeline=True)


async def _recorded(db: Database, buyers: int, seconds: float) -> tuple[int, int, list[float]]:
    """The batched writer storing stock.reserved though nobody subscribes
    (`inventory.record_unrouted_events: true`, the behaviour before 2026-11-29 (4th))."""
    return await _batched(db, buyers, seconds, record=True)


async def _subscribed(db: Database, buyers: int, seconds: float) -> tuple[int, int, list[float]]:
    """The batched writer with a destination subscribed to stock.reserved."""
    return await _batched(db, buyers, seconds, subscribed=True)


async def _naive(db: Database, buyers: int, seconds: float) -> tuple[int, int, list[float]]:
    update = text(
        "UPDATE stock SET reserved = reserved + 1, version = version + 1, updated_us = :now"
        " WHERE sku = :sku AND location_id = :loc AND on_hand - reserved >= 1"
    )
    insert_res = text(
        "INSERT INTO reservations (id, order_id, sku, location_id, quantity, state,"
        " expires_us, created_us, updated_us) VALUES (:id, :o, :sku, :loc, 1, 'held', NULL,"
        " :now, :now)"
    )
    insert_ledger = text(
        "INSERT INTO stock_ledger (sku, location_id, cause, on_hand_delta, reserved_delta,"
        " reference, reservation_id, at_us) VALUES (:sku, :loc, 'order', 0, 1, :o, :id, :now)"
    )

    async def reserve(b: int, k: int) -> bool:
        params: dict[str, Any] = {
            "sku": SKU,
            "loc": LOCATION,
            "now": to_us(utcnow()),
            "o": f"b{b}-{k}",
            "id": new_id("res"),
        }
        async with db.write() as conn:
            if (await conn.execute(update, params)).rowcount != 1:
                return False
            await conn.execute(insert_res, params)
            await conn.execute(insert_ledger, params)
        return True

    return await _drive(buyers, seconds, reserve)


async def _check(db: Database) -> dict[str, int]:
    async with db.read() as conn:
        reserved = (await conn.execute(text("SELECT reserved FROM stock"))).scalar_one()
        rows = (await conn.execute(text("SELECT COUNT(*) FROM reservations"))).scalar_one()
        ledger = (
            await conn.execute(text("SELECT COALESCE(SUM(reserved_delta), 0) FROM stock_ledger"))
        ).scalar_one()
    if not int(reserved) == int(rows) == int(ledger):
        raise SystemExit(f"inconsistent: reserved {reserved}, rows {rows}, ledger {ledger}")
    return {"reserved": int(reserved)}


class _Backends:
    """CPU of the PostgreSQL backends serving one database, polled while a cell runs."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.jiffies: dict[int, tuple[int, int]] = {}  # pid -> (at start or 0, last seen)
        self._started = False

    async def poll(self) -> None:
        async with self.db.read() as conn:
            pids = (
                await conn.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                        " AND backend_type = 'client backend'"
                    )
                )
            ).scalars()
            for pid in pids:
                now = proc_jiffies(int(pid))
                # A backend born during the cell spent all its CPU on it.
                first = self.jiffies.get(pid, (now if not self._started else 0, 0))[0]
                self.jiffies[pid] = (first, now)
        self._started = True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        await self.poll()

    def seconds(self) -> float:
        return sum(last - first for first, last in self.jiffies.values()) / _TICK


_TICK = os.sysconf("SC_CLK_TCK")


async def _one(kind: str, mode: str, buyers: int, seconds: float) -> dict[str, Any]:
    pg_name = None
    tmp = tempfile.TemporaryDirectory(prefix="flash-sale-")
    if kind == "sqlite":
        url = f"sqlite:///{Path(tmp.name) / 'hub.db'}"
    else:
        pg_name, url = create_pg_database(f"flash_{mode}")
    db = await _prepare(url)
    try:
        run = {
            "batched": _batched,
            "pipelined": _pipelined,
            "recorded": _recorded,
            "subscribed": _subscribed,
            "naive": _naive,
        }[mode]
        backends = _Backends(db) if kind == "postgresql" else None
        stop = asyncio.Event()
        poller = asyncio.create_task(backends.run(stop)) if backends else None
        meter = CpuMeter({"self": os.getpid()})
        meter.start()
        if backends:
            await backends.poll()  # the baseline
        c0, t0 = time.process_time(), time.perf_counter()
        reserved, refused, lat = await run(db, buyers, seconds)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        machine = meter.stop()
        stop.set()
        if poller:
            await poller
        check = await _check(db)
    finally:
        await db.dispose()
        if pg_name:
            drop_pg_database(pg_name)
        tmp.cleanup()
    return {
        "db": kind,
        "mode": mode,
        "buyers": buyers,
        "seconds": round(elapsed, 2),
        "reserved": reserved,
        "refused": refused,
        "per_second": round(reserved / elapsed),
        "p50_ms": round(percentile(lat, 50) * 1000, 1),
        "p99_ms": round(percentile(lat, 99) * 1000, 1),
        "py_us": round(cpu / max(reserved, 1) * 1e6, 1),
        "pg_us": round(backends.seconds() / max(reserved, 1) * 1e6, 1) if backends else None,
        "machine_busy_pct": machine["machine_busy_pct"],
        "other_cpu_pct": machine["other_cpu_pct"],
        "check": check,
    }


def _modes(kind: str) -> tuple[str, ...]:
    """`pipelined`: ADR 10's option, PostgreSQL only (SQLite's writer is never pipelined)."""
    more = ("pipelined",) if kind == "postgresql" else ()
    return ("naive", "batched", *more, "recorded", "subscribed")


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--buyers", default="8,64,256")
    parser.add_argument("--db", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    info = machine_info()
    print(describe_machine(info), flush=True)
    rows: list[dict[str, Any]] = []
    for kind in args.db.split(","):
        for buyers in (int(b) for b in args.buyers.split(",")):
            for mode in _modes(kind):
                rows.append(await _one(kind, mode, buyers, args.seconds))
                r = rows[-1]
                print(
                    f"  {kind} {mode} {buyers} buyers: {r['per_second']}/s,"
                    f" CPU per reservation: hub {r['py_us']} us, PostgreSQL {r['pg_us']} us;"
                    f" machine {r['machine_busy_pct']} % busy, {r['other_cpu_pct']} % not ours",
                    flush=True,
                )
    table = []
    for kind in args.db.split(","):
        for buyers in (int(b) for b in args.buyers.split(",")):
            cell = {
                m: next(r for r in rows if (r["db"], r["buyers"], r["mode"]) == (kind, buyers, m))
                for m in _modes(kind)
            }
            naive, batched, piped = cell["naive"], cell["batched"], cell.get("pipelined")
            recorded, subscribed = cell["recorded"], cell["subscribed"]
            table.append(
                [
                    kind,
                    buyers,
                    naive["per_second"],
                    naive["p99_ms"],
                    batched["per_second"],
                    batched["p99_ms"],
                    f"{batched['per_second'] / max(naive['per_second'], 1):.1f}x",
                    batched["py_us"],
                    batched["pg_us"] if batched["pg_us"] is not None else "-",
                    piped["per_second"] if piped else "-",
                    f"{piped['py_us']} / {piped['pg_us']}" if piped else "-",
                    recorded["per_second"],
                    subscribed["per_second"],
                ]
            )
    text_table = print_table(
        f"Flash sale: one SKU, reservations/s and p99 ({args.seconds:g} s per cell)",
        [
            "db",
            "buyers",
            "naive/s",
            "naive p99 ms",
            "batched/s",
            "batched p99 ms",
            "batched / naive",
            "batched hub CPU us/res",
            "batched PG CPU us/res",
            "pipelined/s",
            "pipelined hub / PG CPU us/res",
            "recorded/s",
            "subscribed/s",
        ],
        table,
    )
    path = write_result(
        "flash_sale",
        {
            "machine": info,
            "uptime_at_end": uptime(),
            "seconds_per_cell": args.seconds,
            "runs": rows,
            "table": text_table,
        },
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    if os.environ.get("ORDERSYNC_BENCH_LOOP") == "asyncio":
        asyncio.run(main())
    else:  # the hub's own loop: `ordersync serve` and `worker` run on uvloop (cli.py)
        import uvloop

        uvloop.run(main())
