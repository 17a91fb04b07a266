"""`python -m bench [ingest|e2e|rss|production|relay|all]`: run benchmarks, print, write JSON.

python -m bench ingest --seconds 15          # hub vs. baseline, SQLite and PostgreSQL
python -m bench e2e --orders 20000           # 3 destinations, SQLite and PostgreSQL
python -m bench rss --orders 100000          # peak RSS of `ordersync serve`
python -m bench production                   # PG + RabbitMQ + workers vs. embedded SQLite
python -m bench relay                        # only the outbox relay part of `production`
python -m bench all                          # all of them, in that order
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Coroutine
from typing import Any

from bench.common import RESULTS_DIR, describe_machine, machine_info

E2E_ORDERS = 20_000
RSS_ORDERS = 100_000
PROD_ORDERS = 3_000
RELAY_EVENTS = 50_000


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "which",
        nargs="?",
        default="all",
        choices=["ingest", "e2e", "rss", "production", "relay", "all"],
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="ingest: measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="ingest: warm-up seconds")
    parser.add_argument(
        "--orders",
        type=int,
        default=None,
        help=f"e2e / rss: orders to send (default {E2E_ORDERS} / {RSS_ORDERS})",
    )
    parser.add_argument(
        "--rss-orders", type=int, default=RSS_ORDERS, help="rss orders when running `all`"
    )
    parser.add_argument(
        "--db",
        default="sqlite,postgresql",
        help="comma-separated databases for ingest and e2e (sqlite, postgresql)",
    )
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration")
    parser.add_argument(
        "--hub-processes",
        type=int,
        default=1,
        help="ingest on PostgreSQL: `ordersync serve --processes N` (SQLite always 1)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="e2e: pace the orders at this many per second (default: as fast as accepted);"
        " results then go to e2e_paced_<rate>.json",
    )
    prod = parser.add_argument_group("production / relay")
    prod.add_argument(
        "--parts",
        default="ingest,relay,e2e,recovery",
        help="production: which parts to run (ingest, relay, e2e, recovery)",
    )
    prod.add_argument(
        "--prod-seconds", type=float, default=10.0, help="production ingest: measured seconds"
    )
    prod.add_argument(
        "--prod-orders",
        type=int,
        default=PROD_ORDERS,
        help=f"production e2e: order lifecycles per backend (default {PROD_ORDERS})",
    )
    prod.add_argument(
        "--relay-events",
        type=int,
        default=RELAY_EVENTS,
        help=f"relay throughput: backlog size (default {RELAY_EVENTS})",
    )
    prod.add_argument(
        "--lag-seconds", type=float, default=10.0, help="relay lag: seconds of paced events"
    )
    prod.add_argument(
        "--recovery-runs", type=int, default=3, help="recovery: worker kills (max reported)"
    )
    return parser.parse_args()


async def _main(args: argparse.Namespace) -> None:
    from bench.e2e import run_e2e, run_rss
    from bench.ingest import run_ingest
    from bench.production import PARTS, run_production

    dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    for db in dbs:
        if db not in ("sqlite", "postgresql"):
            raise SystemExit(f"unknown database {db!r}: use sqlite and/or postgresql")
    print(describe_machine(machine_info()), flush=True)
    if args.which in ("ingest", "all"):
        await run_ingest(
            dbs,
            seconds=args.seconds,
            warmup=args.warmup,
            connections=args.connections,
            repeat=args.repeat,
            hub_processes=args.hub_processes,
        )
    if args.which in ("e2e", "all"):
        await run_e2e(
            dbs,
            orders=args.orders or E2E_ORDERS,
            concurrency=args.connections,
            repeat=args.repeat,
            rate=args.rate,
        )
    if args.which == "rss":
        await run_rss(orders=args.orders or RSS_ORDERS, concurrency=args.connections)
    elif args.which == "all":
        await run_rss(orders=args.rss_orders, concurrency=args.connections)
    if args.which in ("production", "relay", "all"):
        parts = ["relay"] if args.which == "relay" else [p.strip() for p in args.parts.split(",")]
        for part in parts:
            if part not in PARTS:
                raise SystemExit(f"unknown part {part!r}: use {', '.join(PARTS)}")
        await run_production(
            parts=[p for p in PARTS if p in parts],
            seconds=args.prod_seconds,
            warmup=args.warmup,
            connections=args.connections,
            orders=args.prod_orders,
            relay_events=args.relay_events,
            lag_seconds=args.lag_seconds,
            recovery_runs=args.recovery_runs,
        )
    print(f"\nresults in {RESULTS_DIR}/", flush=True)


async def _cancel_on_sigterm(coro: Coroutine[Any, Any, None]) -> None:
    """SIGTERM (e.g. from `timeout`) cancels the run, so the clusters it started stop their
    processes and drop their databases and broker namespaces on the way out."""
    task = asyncio.ensure_future(coro)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    await task


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(_cancel_on_sigterm(coro))
        return
    uvloop.run(_cancel_on_sigterm(coro))


if __name__ == "__main__":
    _run(_main(_parse()))
