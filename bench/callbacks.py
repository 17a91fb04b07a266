"""`python -m bench.callbacks`: carrier callbacks through a real hub over HTTP.

One process: the carrier simulator (Kdniao, Kuaidi100), a Standard Webhooks sink taking
every event, and an embedded hub (its API served by uvicorn on loopback, the database a
SQLite file, or PostgreSQL with `--db postgresql://...`). N orders are created and booked
through the API (each booking calls the simulator: waybill + subscription); then C
concurrent clients drive the parcels, each parcel's journey (pickup, transit, out for
delivery, delivered: four signed full-snapshot pushes) posted in order, as the demo does.

Reported: bookings/s, callbacks acknowledged/s (first post to last 200), callbacks applied/s
(first post to the last `applied_us` in `carrier_inbox`), and the ack -> applied lag per
callback (`applied_us - received_us`, both stamped by the hub) p50/p99/max, for every
callback and for the pickups alone (the ones a no-pickup timer races). With `--steps` the
hub's own steps are timed too (booking calls to the carrier, the inbox insert, the apply
transaction); `--profile FILE` writes a cProfile of the callback phase.

The clients and the event sink run in a second process, so the CPU they use is not the
hub's. Options: --parcels N (default 400), --clients C (16), --db URL, --steps,
--profile FILE, --record-batch N / --apply-batch N (1 and 1: one transaction per callback
recorded and per shipment applied, as before group commit and batching).
Writes bench/results/callbacks.json (or callbacks-<tag>.json with --tag).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import multiprocessing as mp
import pstats
import socket
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
from sqlalchemy import text

from bench.common import (
    create_pg_database,
    describe_machine,
    drop_pg_database,
    machine_info,
    percentile,
    print_table,
    write_result,
)
from ordersync.bootstrap import Hub, build_hub
from ordersync.config import settings_from_mapping
from ordersync.entrypoints.api.app import create_app
from ordersync.simulators.carriers import SAMPLE_JOURNEYS, CarrierSimulator
from ordersync.simulators.sinks import Sink, new_secret

API_KEY = "sk_bench_callbacks_0b7e"
CARRIERS = {"kdn-sf": ("kdniao", "SF"), "kd100-yt": ("kuaidi100", "yuantong")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _settings(
    db_url: str,
    sim: CarrierSimulator,
    sink: tuple[str, str],
    public_url: str,
    no_pickup: float,
) -> Any:
    credentials = {
        "kdniao": {"ebusiness_id": sim.kdniao.ebusiness_id, "app_key": sim.kdniao.app_key},
        "kuaidi100": {"key": sim.kuaidi100.key, "secret": sim.kuaidi100.secret, "salt": "b-77"},
    }
    return settings_from_mapping(
        {
            "database_url": db_url,
            "log_level": "WARNING",
            "public_url": public_url,
            "api_keys": [
                {
                    "id": "bench",
                    "key": API_KEY,
                    "scopes": ["orders:read", "orders:write", "deliveries:read"],
                }
            ],
            "destinations": [
                {
                    "id": "erp",
                    "url": sink[0],
                    "secret": sink[1],
                    "events": ["order.*", "shipment.*", "alert.*"],
                    "max_in_flight": 64,
                }
            ],
            "carriers": [
                {
                    "id": cid,
                    "kind": kind,
                    "endpoint": sim.endpoint(kind),
                    "credentials": credentials[kind],
                    "carrier_code": code,
                }
                for cid, (kind, code) in CARRIERS.items()
            ],
            # The no-pickup threshold (--no-pickup seconds, the demo's is 10): the clock runs
            # from the booking, and every parcel here is booked before the first push.
            "alerts": {"no_pickup": {"hours": no_pickup / 3600}},
        },
        env={},
    )


def _order(i: int) -> dict[str, Any]:
    return {
        "channel_id": "pos-bench",
        "external_id": f"BENCH-{i:06d}",
        "currency": "EUR",
        "totals": {"subtotal": "24.00", "shipping": "0", "tax": "4.56", "total": "28.56"},
        "lines": [{"sku": "WHISK", "name": "Whisk", "quantity": 2, "unit_price": "12.00"}],
        "customer": {"email": "bench@example.com", "name": "Bench Buyer"},
        "placed_at": "2026-11-22T10:00:00+01:00",
    }


class StepTimer:
    """Wall time of the hub's steps (wrapped instance attributes; `--steps`)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)

    def wrap(self, obj: Any, name: str, label: str) -> None:
        inner = getattr(obj, name, None)
        if inner is None:
            return
        times = self.times[label]

        async def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return await inner(*args, **kwargs)
            finally:
                times.append(time.perf_counter() - t)

        setattr(obj, name, timed)

    def rows(self) -> list[list[Any]]:
        out = []
        for label, ts in self.times.items():
            if ts:
                out.append(
                    [
                        label,
                        len(ts),
                        round(sum(ts) / len(ts) * 1e3, 2),
                        round(percentile(ts, 50) * 1e3, 2),
                        round(percentile(ts, 99) * 1e3, 2),
                    ]
                )
        return out


async def _gather_limited(n: int, jobs: Sequence[Callable[[], Awaitable[None]]]) -> None:
    gate = asyncio.Semaphore(n)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


async def _query(hub: Hub, sql: str) -> list[Any]:
    async with hub.db.read() as conn:
        return list(await conn.execute(text(sql)))


Journey = tuple[str, list[tuple[bytes, dict[str, str]]]]


def _load_process(conn: Connection, clients: int) -> None:
    """The other side, in its own process (so its CPU is not the hub's): the event sink
    and the carrier's clients posting the prepared pushes."""
    asyncio.run(_load_main(conn, clients))


async def _load_main(conn: Connection, clients: int) -> None:
    loop = asyncio.get_running_loop()
    sink = Sink("erp", new_secret())
    await sink.start()
    conn.send((sink.events_url, sink.secret))
    hub_url, journeys = await loop.run_in_executor(None, conn.recv)
    problems: list[str] = []
    connector = aiohttp.TCPConnector(limit=clients * 2)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def drive(cid: str, pushes: list[tuple[bytes, dict[str, str]]]) -> None:
            for body, push_headers in pushes:
                async with session.post(
                    f"{hub_url}/v1/carriers/{cid}/callbacks", data=body, headers=push_headers
                ) as r:
                    await r.read()
                    if r.status != 200:
                        problems.append(f"{cid}: {r.status}")

        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await _gather_limited(clients, [partial(drive, *j) for j in journeys])
        acked_s = time.perf_counter() - t0
        cpu_s = time.process_time() - cpu0
    conn.send({"acked_s": acked_s, "problems": problems[:10], "cpu_s": cpu_s})
    await loop.run_in_executor(None, conn.recv)  # stop: the hub has drained its deliveries
    await sink.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-callbacks-"))
    db_url = args.db or f"sqlite:///{workdir / 'hub.db'}"
    sim = CarrierSimulator()
    await sim.start()
    loop = asyncio.get_running_loop()
    parent, child = mp.get_context("spawn").Pipe()
    load = mp.get_context("spawn").Process(target=_load_process, args=(child, args.clients))
    load.start()
    sink = await loop.run_in_executor(None, parent.recv)
    port = _free_port()
    hub_url = f"http://127.0.0.1:{port}"
    hub = build_hub(_settings(db_url, sim, sink, hub_url, args.no_pickup))
    await hub.start()
    steps = StepTimer()
    if hub.shipments is not None:
        # 1 and 1: one transaction per callback recorded and per shipment applied (as
        # before group commit and batches).
        if args.record_batch is not None:
            hub.shipments.record_batch = args.record_batch
        if args.apply_batch is not None:
            hub.shipments.apply_batch_size = args.apply_batch
    if args.steps and hub.shipments is not None:
        svc = hub.shipments
        steps.wrap(svc, "send", "carrier HTTP call (booking, subscription)")
        steps.wrap(svc, "_record", "callback inbox insert (tx)")
        steps.wrap(svc, "apply_pending", "apply one shipment (tx)")
        steps.wrap(svc, "apply_batch", "apply a batch of shipments (tx)")
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(hub, manage_hub=False),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to await
        await asyncio.sleep(0.01)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    carrier_ids = list(CARRIERS)
    result: dict[str, Any] = {"db": "sqlite" if db_url.startswith("sqlite") else "postgresql"}
    try:
        connector = aiohttp.TCPConnector(limit=args.clients * 2)
        async with aiohttp.ClientSession(connector=connector) as session:
            order_ids: list[str] = []

            async def create(i: int) -> None:
                async with session.post(
                    f"{hub_url}/v1/orders", json=_order(i), headers=headers
                ) as r:
                    assert r.status == 201, await r.text()
                    order_ids.append((await r.json())["id"])

            jobs = [partial(create, i) for i in range(args.parcels)]
            await _gather_limited(args.clients, jobs)
            order_ids.sort()
            parcels: list[tuple[str, str]] = []  # (carrier id, tracking number)

            async def book(i: int, order_id: str) -> None:
                cid = carrier_ids[i % len(carrier_ids)]
                async with session.post(
                    f"{hub_url}/v1/orders/{order_id}/shipments",
                    json={"carrier_id": cid},
                    headers=headers,
                ) as r:
                    assert r.status == 201, await r.text()
                    parcels.append((cid, (await r.json())["tracking_number"]))

            t0 = time.perf_counter()
            await _gather_limited(
                args.clients, [partial(book, i, o) for i, o in enumerate(order_ids)]
            )
            booking_s = time.perf_counter() - t0

            # Every push prepared up front (signing is the carrier's work, not the hub's).
            base = datetime.now(UTC)
            journeys: list[Journey] = []
            for cid, number in parcels:
                kind = CARRIERS[cid][0]
                pushes = []
                for hours, code, wording, place in SAMPLE_JOURNEYS[kind]:
                    sim.add_trace(number, code, wording, base + timedelta(minutes=hours), place)
                    pushes.append(sim.push_body(number))
                journeys.append((cid, pushes))
            profiler = cProfile.Profile() if args.profile else None
            if profiler is not None:
                profiler.enable()
            start_wall_us = int(time.time() * 1e6)
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            parent.send((hub_url, journeys))
            load_result = await loop.run_in_executor(None, parent.recv)
            acked_s = load_result["acked_s"]
            problems = load_result["problems"]
            total = sum(len(p) for _, p in journeys)
            deadline = time.perf_counter() + args.timeout
            while True:
                [(left,)] = await _query(
                    hub, "SELECT count(*) FROM carrier_inbox WHERE outcome = 'received'"
                )
                if left == 0 or time.perf_counter() > deadline:
                    break
                await asyncio.sleep(0.02)
            cpu_s = time.process_time() - cpu0
            wall_s = time.perf_counter() - t0
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
                stats = pstats.Stats(profiler)
                stats.sort_stats("cumulative").print_stats(40)
                stats.sort_stats("tottime").print_stats(25)
            rows = [
                r
                for r in await _query(
                    hub,
                    "SELECT received_us, applied_us, outcome, seq, tracking_number"
                    " FROM carrier_inbox ORDER BY seq",
                )
                if r[0] >= start_wall_us
            ]
            applied = [r for r in rows if r[1] is not None]
            lags = [(r[1] - r[0]) / 1e6 for r in applied]
            first_seen: dict[str, Any] = {}
            for r in rows:
                first_seen.setdefault(r[4], r)
            pickup_lags = [(r[1] - r[0]) / 1e6 for r in first_seen.values() if r[1] is not None]
            last_applied = max((r[1] for r in applied), default=start_wall_us)
            applied_s = (last_applied - start_wall_us) / 1e6
            [(alerts,)] = await _query(hub, "SELECT count(*) FROM alerts")
            result.update(
                {
                    "parcels": len(parcels),
                    "clients": args.clients,
                    "bookings_per_s": round(len(parcels) / booking_s, 1),
                    "callbacks": total,
                    "acked_per_s": round(total / acked_s, 1),
                    "applied": len(applied),
                    "applied_per_s": round(len(applied) / applied_s, 1) if applied_s else None,
                    "parcels_per_s": round(len(parcels) / max(applied_s, acked_s), 1),
                    "lag_p50_ms": round(percentile(lags, 50) * 1e3, 1) if lags else None,
                    "lag_p99_ms": round(percentile(lags, 99) * 1e3, 1) if lags else None,
                    "lag_max_ms": round(max(lags) * 1e3, 1) if lags else None,
                    "pickup_lag_p50_ms": round(percentile(pickup_lags, 50) * 1e3, 1)
                    if pickup_lags
                    else None,
                    "pickup_lag_p99_ms": round(percentile(pickup_lags, 99) * 1e3, 1)
                    if pickup_lags
                    else None,
                    "outcomes": {
                        o: sum(r[2] == o for r in rows) for o in sorted({r[2] for r in rows})
                    },
                    "alerts": alerts,
                    # CPU of the hub's process (all threads; 100 = one core) and of the
                    # clients' process, over the callback phase
                    "hub_cpu_pct": round(cpu_s / wall_s * 100),
                    "clients_cpu_pct": round(load_result["cpu_s"] / wall_s * 100),
                    "problems": problems[:10],
                }
            )
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serving
        await hub.stop()
        parent.send("stop")
        await loop.run_in_executor(None, load.join, 30)
        await sim.stop()
    if args.steps:
        result["steps"] = steps.rows()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.callbacks", description=__doc__)
    parser.add_argument("--parcels", type=int, default=400)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--db", default=None, help="database URL (default: a SQLite file)")
    parser.add_argument("--pg", action="store_true", help="a fresh PostgreSQL database")
    parser.add_argument("--steps", action="store_true", help="time the hub's steps")
    parser.add_argument("--profile", default=None, help="write a cProfile of the callbacks")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--tag", default=None)
    parser.add_argument("--no-pickup", type=float, default=3600.0, help="alert threshold, s")
    parser.add_argument("--record-batch", type=int, default=None, help="callbacks per insert tx")
    parser.add_argument("--apply-batch", type=int, default=None, help="shipments per apply tx")
    args = parser.parse_args()
    info = machine_info()
    print(describe_machine(info), flush=True)
    pg_name = None
    if args.pg:
        pg_name, args.db = create_pg_database("callbacks")
    try:
        result = asyncio.run(run(args))
    finally:
        if pg_name is not None:
            drop_pg_database(pg_name)
    steps = result.pop("steps", None)
    print_table(
        f"Carrier callbacks over HTTP ({result['db']}, {args.clients} clients)",
        ["measure", "value"],
        [[k, v] for k, v in result.items()],
    )
    if steps:
        print_table("Hub steps (wall time, ms)", ["step", "calls", "mean", "p50", "p99"], steps)
        result["steps"] = steps
    name = "callbacks" if args.tag is None else f"callbacks-{args.tag}"
    path = write_result(name, {"machine": info, "args": vars(args), "result": result})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
