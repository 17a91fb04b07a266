"""`python -m bench.carriers`: carrier callback ingestion and stale-shipment timer sweeps.

1. Callbacks: for each carrier format, a realistic signed push (8 traces, non-ASCII text)
   is verified, parsed and mapped by its connector, then merged into a shipment (the CPU
   work of one callback, without HTTP or the database). Reported per second and in µs.
2. Timers: N open shipments (default 1,000,000: half booked and waiting for pickup, 40 %
   in transit, 10 % at a pickup point) are indexed by `TimerIndex`; then a minute-by-minute
   sweep runs for an hour of simulated time. Reported: memory of the shipments and of the
   index (RSS deltas), index build time, time per sweep (mean, p99, max) and alerts per
   sweep, next to one full scan of every shipment (what a sweep without an index costs).

Options: --shipments N, --callbacks N, --sweeps N. Writes bench/results/carriers.json.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import describe_machine, machine_info, percentile, print_table, write_result
from ordersync.adapters.carriers.base import CarrierAccount, connector_for
from ordersync.domain.alerts import TimerIndex, default_rules, evaluate
from ordersync.domain.shipments import Shipment, ShipmentStatus, TrackingEvent
from ordersync.simulators.carriers import CarrierSimulator, SimParcel, SimTrace

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
_PAGE = os.sysconf("SC_PAGE_SIZE")

TRACES = {
    "kdniao": [
        ("1", "【杭州市】顺丰速运 已收取快件"),
        ("2", "快件已发往 杭州转运中心"),
        ("204", "快件到达 杭州转运中心"),
        ("2", "快件已发往 长沙转运中心"),
        ("204", "快件到达 湖南长沙转运中心"),
        ("201", "快件到达 长沙市 金盆岭营业部"),
        ("202", "派件员 李师傅（138****0000）正在派件"),
        ("301", "已签收，签收人：本人，感谢使用顺丰"),
    ],
    "kuaidi100": [
        ("103", "【上海市】圆通速递 已揽收"),
        ("1002", "快件离开 上海转运中心 已发往 北京"),
        ("1002", "快件到达 北京转运中心"),
        ("1001", "快件到达 北京市朝阳区望京营业部"),
        ("5", "派件员 王师傅 正在派件"),
        ("501", "快件已由 北京朝阳区菜鸟驿站 代收，请及时取件"),
        ("501", "再次提醒：快件在驿站待取"),
        ("304", "已从驿站取出，签收人：菜鸟驿站"),
    ],
    "generic": [
        ("pre_transit", "Shipment information received"),
        ("in_transit", "Accepted at Zürich-Mülligen"),
        ("in_transit", "Sorted at Härkingen"),
        ("in_transit", "Departed Härkingen"),
        ("in_transit", "Arrived at Bern"),
        ("out_for_delivery", "Unterwegs zur Zustellung"),
        ("failure", "Empfänger nicht angetroffen"),
        ("delivered", "Zugestellt an Jürg Müller"),
    ],
}


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE


def _timed(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - start


def _parse_and_merge(parse: Callable[[], Any], number: str) -> None:
    shipment = Shipment("s", "c", number, booked_at=NOW - 48 * H)
    for update in parse():
        shipment.apply(update)


def bench_callbacks(n: int) -> list[dict[str, Any]]:
    sim = CarrierSimulator(clock=lambda: NOW)
    accounts = {
        "kdniao": CarrierAccount(
            "kdn",
            "kdniao",
            "http://sim/kdniao",
            {"ebusiness_id": sim.kdniao.ebusiness_id, "app_key": sim.kdniao.app_key},
        ),
        "kuaidi100": CarrierAccount("kd100", "kuaidi100", "http://sim", {"salt": "bench-salt"}),
        "generic": CarrierAccount(
            "ezp", "generic", "http://sim", {"webhook_secret": sim.generic.webhook_secret}
        ),
    }
    rows = []
    for kind, traces in TRACES.items():
        number = f"BENCH-{kind}"
        parcel = SimParcel(kind, number, "SF", salt="bench-salt")
        parcel.traces = [
            SimTrace(NOW - (len(traces) - i) * 3 * H, code, text, "长沙市")
            for i, (code, text) in enumerate(traces)
        ]
        sim.parcels[number] = parcel
        body, headers = sim.push_body(number)
        connector = connector_for(kind)
        account = accounts[kind]

        parse = partial(connector.parse_callback, account, body, headers)
        parse_and_merge = partial(_parse_and_merge, parse, number)
        (update,) = parse()
        if update.state is None or len(update.events) != len(traces):
            raise RuntimeError(f"{kind}: the benchmark push did not parse as expected")
        parse_and_merge()
        _timed(parse, min(n, 500))  # warm-up
        parse_s = _timed(parse, n)
        merge_s = _timed(parse_and_merge, n)
        rows.append(
            {
                "format": kind,
                "body_bytes": len(body),
                "traces": len(traces),
                "callbacks": n,
                "verify_parse_map_per_s": round(n / parse_s),
                "verify_parse_map_us": round(parse_s / n * 1e6, 1),
                "with_merge_per_s": round(n / merge_s),
                "with_merge_us": round(merge_s / n * 1e6, 1),
            }
        )
    return rows


def make_shipments(n: int, rng: random.Random) -> dict[str, Shipment]:
    """Open shipments as a busy hub holds them; due times spread over the next days."""
    store: dict[str, Shipment] = {}
    S = ShipmentStatus
    for i in range(n):
        sid = f"shp-{i:07d}"
        kind = rng.random()
        if kind < 0.5:  # booked in the last 48 h, waiting for pickup
            s = Shipment(sid, "kdn", f"SF{i:010d}", booked_at=NOW - rng.uniform(0, 48) * H)
        elif kind < 0.9:  # picked up, last scan in the last 72 h
            booked = NOW - rng.uniform(72, 96) * H
            s = Shipment(
                sid,
                "kd100",
                f"YT{i:010d}",
                booked_at=booked,
                promised_by=booked + rng.uniform(96, 150) * H,
            )
            s.merge([TrackingEvent(NOW - rng.uniform(0, 72) * H, "0", "在途", S.IN_TRANSIT)])
        else:  # waiting at a pickup point for up to 72 h
            s = Shipment(sid, "ezp", f"99{i:010d}", booked_at=NOW - 100 * H)
            s.merge(
                [
                    TrackingEvent(
                        NOW - rng.uniform(0, 72) * H, "211", "已放入快递柜", S.AVAILABLE_FOR_PICKUP
                    )
                ]
            )
        store[sid] = s
    return store


def bench_timers(n: int, sweeps: int) -> dict[str, Any]:
    rng = random.Random(6)
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    store = make_shipments(n, rng)
    build_shipments_s = time.perf_counter() - t0
    gc.collect()
    rss1 = rss_bytes()

    index = TimerIndex(default_rules())
    t0 = time.perf_counter()
    for s in store.values():
        index.track(s)
    build_index_s = time.perf_counter() - t0
    gc.collect()
    rss2 = rss_bytes()

    lookup = store.get
    open_timers = len(index)
    t = time.perf_counter()
    backlog = index.sweep(NOW, lookup)  # everything already overdue when the hub starts
    catch_up_s = time.perf_counter() - t
    times: list[float] = []
    raised: list[int] = []
    evaluated: list[int] = []
    now = NOW
    gc.disable()  # the sweep allocates little; keep collector pauses out of the numbers
    try:
        for _ in range(sweeps):
            now += timedelta(minutes=1)
            t = time.perf_counter()
            alerts = index.sweep(now, lookup)
            times.append(time.perf_counter() - t)
            raised.append(len(alerts))
            evaluated.append(index.last_stats.evaluated)
        t = time.perf_counter()
        index.sweep(now, lookup)  # nothing due: the idle cost
        idle_s = time.perf_counter() - t
    finally:
        gc.enable()

    rules = index.rules
    t = time.perf_counter()
    full = sum(len(evaluate(s, now, rules)) for s in store.values())
    full_scan_s = time.perf_counter() - t

    t = time.perf_counter()
    state = index.to_state()
    to_state_s = time.perf_counter() - t
    t = time.perf_counter()
    TimerIndex.from_state(state)
    from_state_s = time.perf_counter() - t
    return {
        "open_shipments": n,
        "open_timers": open_timers,
        "shipments_rss_mb": round((rss1 - rss0) / 2**20, 1),
        "index_rss_mb": round((rss2 - rss1) / 2**20, 1),
        "index_bytes_per_shipment": round((rss2 - rss1) / n, 1),
        "build_shipments_s": round(build_shipments_s, 2),
        "build_index_s": round(build_index_s, 2),
        "catch_up_sweep_ms": round(catch_up_s * 1e3, 1),
        "catch_up_alerts": len(backlog),
        "sweeps": sweeps,
        "sweep_interval": "60 s simulated",
        "sweep_mean_ms": round(sum(times) / len(times) * 1e3, 3),
        "sweep_p99_ms": round(percentile(times, 99) * 1e3, 3),
        "sweep_max_ms": round(max(times) * 1e3, 3),
        "due_per_sweep_mean": round(sum(evaluated) / len(evaluated), 1),
        "alerts_per_sweep_mean": round(sum(raised) / len(raised), 1),
        "alerts_total": sum(raised),
        "idle_sweep_us": round(idle_s * 1e6, 1),
        "full_scan_ms": round(full_scan_s * 1e3, 1),
        "full_scan_alerts": full,
        "persist_to_state_s": round(to_state_s, 2),
        "restore_from_state_s": round(from_state_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.carriers", description=__doc__)
    parser.add_argument("--shipments", type=int, default=1_000_000)
    parser.add_argument("--callbacks", type=int, default=20_000)
    parser.add_argument("--sweeps", type=int, default=60)
    args = parser.parse_args()

    info = machine_info()
    print(describe_machine(info), flush=True)
    callbacks = bench_callbacks(args.callbacks)
    print_table(
        "Carrier callbacks: verify + parse + map (+ merge into a shipment), one core",
        ["format", "bytes", "traces", "callbacks/s", "µs", "with merge/s", "µs (merge)"],
        [
            [
                r["format"],
                r["body_bytes"],
                r["traces"],
                f"{r['verify_parse_map_per_s']:,}",
                r["verify_parse_map_us"],
                f"{r['with_merge_per_s']:,}",
                r["with_merge_us"],
            ]
            for r in callbacks
        ],
    )
    timers = bench_timers(args.shipments, args.sweeps)
    print_table(
        f"Stale-shipment timers at {args.shipments:,} open shipments",
        ["measure", "value"],
        [[k, v] for k, v in timers.items()],
    )
    path = write_result("carriers", {"machine": info, "callbacks": callbacks, "timers": timers})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
