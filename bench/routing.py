"""Routing decisions/s: orders of 1-5 lines over 20 locations, with explanations.

python -m bench.routing                 # 2 s per row, writes bench/results/routing.json
python -m bench.routing --seconds 5

Pure CPU in one process: the domain's `Router.route` with the default rules (filters:
channel restriction, capacity, availability; scorers: priority, distance, cost), each
decision building its full explanation. Orders and stock are generated from a fixed seed,
so runs compare.
"""

from __future__ import annotations

import argparse
import random
import time
from decimal import Decimal
from typing import Any

from bench.common import (
    describe_machine,
    machine_info,
    percentile,
    print_table,
    uptime,
    write_result,
)
from ordersync.domain.inventory import Location, LocationKind
from ordersync.domain.routing import (
    Coordinates,
    Destination,
    Router,
    RoutingLine,
    RoutingOutcome,
    RoutingPolicy,
    RoutingRequest,
    Site,
)

LOCATIONS = 20
SKUS = 200
POOL = 2_000  # orders generated per line count, cycled through


def _world(rng: random.Random) -> tuple[list[Site], dict[tuple[str, str], int]]:
    kinds = (LocationKind.WAREHOUSE, LocationKind.STORE, LocationKind.FACTORY)
    sites = [
        Site(
            Location(
                f"loc-{i:02d}",
                kinds[i % 3],
                ("eu", "us", "cn")[i % 3],
                priority=i % 4,
                capacity=None if i % 5 else 1_000_000,
            ),
            Coordinates(rng.uniform(-60, 60), rng.uniform(-180, 180)),
            Decimal(rng.randint(20, 150)) / 100,
            Decimal(rng.randint(200, 900)) / 100,
        )
        for i in range(LOCATIONS)
    ]
    stock = {
        (f"SKU-{s:04d}", site.id): rng.randint(0, 40)
        for s in range(SKUS)
        for site in sites
        if rng.random() < 0.6
    }
    return sites, stock


def _orders(rng: random.Random, lines: int) -> list[RoutingRequest]:
    return [
        RoutingRequest(
            f"ord_{lines}_{n}",
            "shopify-eu" if n % 4 else "tmall",
            tuple(
                RoutingLine(f"SKU-{s:04d}", rng.randint(1, 3))
                for s in rng.sample(range(SKUS), lines)
            ),
            Destination(
                ("eu", "us", "cn")[n % 3], Coordinates(rng.uniform(-60, 60), rng.uniform(-180, 180))
            ),
        )
        for n in range(POOL)
    ]


def _run(lines: int, seconds: float, sites: list[Site], stock: Any, seed: int) -> dict[str, Any]:
    rng = random.Random(seed + lines)
    orders = _orders(rng, lines)
    policy = RoutingPolicy(
        max_shipments=3,
        backorder_allowed=True,
        channel_locations={"tmall": frozenset(s.id for s in sites[::2])},
    )
    router = Router()
    load: dict[str, int] = {}
    for req in orders[:200]:  # warm up
        router.route(req, sites, stock, policy, load)
    done, splits, single, back = 0, 0, 0, 0
    lat: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            req = orders[done % POOL]
            t0 = time.perf_counter()
            d = router.route(req, sites, stock, policy, load)
            lat.append(time.perf_counter() - t0)
            done += 1
            single += d.shipments == 1
            splits += d.shipments > 1
            back += d.outcome is RoutingOutcome.BACKORDERED
    elapsed = time.perf_counter() - start
    return {
        "lines": lines,
        "locations": len(sites),
        "decisions": done,
        "seconds": round(elapsed, 3),
        "per_second": round(done / elapsed),
        "p50_us": round(percentile(lat, 50) * 1e6, 1),
        "p99_us": round(percentile(lat, 99) * 1e6, 1),
        "single_location_share": round(single / done, 3),
        "split_share": round(splits / done, 3),
        "backordered_share": round(back / done, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    info = machine_info()
    print(describe_machine(info), flush=True)
    sites, stock = _world(random.Random(args.seed))
    rows = [_run(n, args.seconds, sites, stock, args.seed) for n in range(1, 6)]
    text = print_table(
        f"Routing over {LOCATIONS} locations: decisions/s, one core ({args.seconds:g} s per row)",
        ["lines", "decisions/s", "p50 µs", "p99 µs", "single", "split", "backordered"],
        [
            [
                r["lines"],
                r["per_second"],
                r["p50_us"],
                r["p99_us"],
                r["single_location_share"],
                r["split_share"],
                r["backordered_share"],
            ]
            for r in rows
        ],
    )
    path = write_result(
        "routing",
        {
            "machine": info,
            "uptime_at_end": uptime(),
            "seconds_per_row": args.seconds,
            "seed": args.seed,
            "runs": rows,
            "table": text,
        },
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
