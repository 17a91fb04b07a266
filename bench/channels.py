"""`python -m bench.channels`: channel connectors, mapping cost and pull throughput (issue #4).

    .venv/bin/python -m bench.channels [--orders 2000] [--seconds 1.0]

1. Mapping: one realistic order (3 lines, non-ASCII names) in each platform's wire format,
   built with the simulators' helpers, handled by its connector in a tight loop on one core
   (each call timed with `time.perf_counter_ns`, about `--seconds` per connector):
   - push connectors (shopify, woocommerce, generic): `verify` + `parse` of a signed webhook;
   - pull connectors (taobao JSON and XML, jd, douyin): `pull_response` of a one-order page
     (pulled pages are not signed: the hub signs its requests; Douyin pushes carry no
     order). `woocommerce-pull` is the same order read from a one-order REST page.
   Reported: mean and p99 µs per order, orders/s.
2. Pull: each pulling connector's simulator on loopback holds `--orders` orders (3 lines
   each, modified over the last ~50 minutes); the real pull engine (`ChannelPuller`, HTTP
   over aiohttp, cursors in the database, `Hub.handle` as ingest) reads them into a hub on a
   SQLite file in a temporary directory, at the platform's largest page size and a rate
   limit that never throttles. Reported: orders/s from the first request until every order
   is stored (checked: the hub's `orders` table holds exactly `--orders` for the channel),
   pages read and requests the simulator answered. The simulator runs in this process and
   event loop, so its CPU (filtering, sorting and encoding pages) is in the pull numbers.

Writes bench/results/channels.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeAlias

import yaml
from sqlalchemy import text

from bench.common import (
    background_busy,
    describe_machine,
    machine_info,
    percentile,
    print_table,
    uptime,
    write_result,
)
from ordersync.adapters.channels import douyin as dy
from ordersync.adapters.channels import generic as gen
from ordersync.adapters.channels import jd
from ordersync.adapters.channels import taobao as top
from ordersync.adapters.channels import woocommerce as wc
from ordersync.adapters.channels.base import HttpResponse
from ordersync.adapters.channels.pulling import BoundSource, HttpFetch
from ordersync.adapters.channels.registry import connector_for
from ordersync.adapters.db.pull_cursors import SqlCursorStore
from ordersync.bootstrap import build_hub
from ordersync.config import ChannelConfig, settings_from_mapping
from ordersync.domain.orders import OrderSnapshot
from ordersync.service.pull import ChannelPuller, PullSettings, TokenBucket
from ordersync.simulators import douyin_shop, jd_jos, shopify_store, taobao_top, woocommerce_store
from ordersync.simulators.douyin_shop import DouyinShop
from ordersync.simulators.jd_jos import JosGateway
from ordersync.simulators.taobao_top import TopGateway
from ordersync.simulators.woocommerce_store import WooStore

LINES = 3
SHOPIFY_SECRET, SHOP_DOMAIN = "shpss_bench", "teahouse-bench.myshopify.com"
WC_KEY, WC_SECRET, WC_HOOK = "ck_bench", "cs_bench", "wc-hook-bench"
TOP_KEY, TOP_SECRET, TOP_SESSION = "12345678", "top-secret-longjing", "6100e2a9bench"
JD_KEY, JD_SECRET, JD_TOKEN = "JDKEY01", "jos-secret-puer", "jd-token-1"
DY_KEY, DY_SECRET, DY_TOKEN = "7100000000000000001", "dy-secret-baicha", "dy-token"
GENERIC_SECRET = "erp-hook-secret"
PAGE_SIZES = {
    "woocommerce": wc.MAX_PER_PAGE,
    "taobao": top.MAX_PAGE_SIZE,
    "taobao-xml": top.MAX_PAGE_SIZE,
    "jd": jd.MAX_PAGE_SIZE,
    "douyin": dy.MAX_PAGE_SIZE,
}

# (sku, name, quantity, unit price): the three lines every benchmark order carries.
WC_LINES = [
    ("MATCHA-WHISK", "Matcha-Besen „Chasen“", 2, "12.00"),
    ("SENCHA-100", "Grüntee Sencha, 100 g", 1, "9.95"),
    ("KYUSU-SIDE", "Kyūsu 急須 Seitengriff", 1, "58.00"),
]
CN_LINES = [
    ("LONGJING-250", "西湖龙井 250g", 2, "88.00"),
    ("PUER-357", "云南普洱 357g", 1, "128.00"),
    ("ANJI-100", "安吉白茶 100g", 3, "59.90"),
]
GENERIC_MAPPING: dict[str, Any] = {
    "format": "json",
    "fields": {
        "external_id": "order.no",
        "status": {"path": "order.state", "map": {"10": "NEW", "20": "PAID"}},
        "total": {"path": "order.amount_fen", "transform": "cents_to_decimal"},
        "updated_at": {"path": "order.changed", "transform": "datetime"},
        "customer.name": "order.buyer",
        "address.line1": "order.ship.street",
        "address.city": "order.ship.city",
    },
    "lines": {
        "path": "order.items",
        "fields": {"sku": "sku", "name": "name", "quantity": "qty", "unit_price": "price"},
    },
    "statuses": {
        "NEW": {"status": "pending", "payment": "pending"},
        "PAID": {"status": "paid", "payment": "paid"},
    },
}


def _channel(raw: dict[str, Any]) -> ChannelConfig:
    (found,) = settings_from_mapping({"channels": [raw]}, env={}).channels
    return found


def _fen(price: str) -> int:
    return int(price.replace(".", ""))


# ---- the one order per platform -----------------------------------------------------------


def taobao_subs(tid: int, status: str = "WAIT_SELLER_SEND_GOODS") -> list[dict[str, Any]]:
    subs = []
    for i, (sku, name, qty, price) in enumerate(CN_LINES):
        paid = _fen(price) * qty
        subs.append(
            {
                "oid": tid + 1 + i,
                "title": name,
                "num": qty,
                "price": price,
                "payment": f"{paid // 100}.{paid % 100:02d}",
                "total_fee": f"{paid // 100}.{paid % 100:02d}",
                "discount_fee": "0.00",
                "outer_sku_id": sku,
                "num_iid": 600_000_000_001 + i,
                "sku_id": 4_000_000_000_001 + i,
                "refund_status": "NO_REFUND",
                "status": status,
            }
        )
    return subs


def jd_items() -> list[dict[str, Any]]:
    return [
        {
            "skuId": str(100012043978 + i),
            "outerSkuId": sku,
            "skuName": name,
            "jdPrice": price,
            "itemTotal": str(qty),
            "wareId": str(100009876543 + i),
        }
        for i, (sku, name, qty, price) in enumerate(CN_LINES)
    ]


def douyin_skus(order_id: int) -> list[dict[str, Any]]:
    return [
        {
            "order_id": str(order_id + 1 + i),
            "sku_id": 1_700_000_000_001 + i,
            "product_id": str(3600000000001 + i),
            "product_name": name,
            "code": sku,
            "item_num": qty,
            "goods_price": _fen(price),
            "pay_amount": _fen(price) * qty,
        }
        for i, (sku, name, qty, price) in enumerate(CN_LINES)
    ]


def shopify_order() -> dict[str, Any]:
    """A CNY order (Chinese buyer) with exactly three lines, from the store simulator."""
    factory = shopify_store.OrderFactory(seed=4)
    for _ in range(10_000):
        order = factory.new_order()
        lines = len(order["line_items"])
        if order["currency"] == "CNY" and lines == LINES and order.get("customer") is not None:
            return order
    raise RuntimeError("the order factory never made a 3-line CNY order")


def taobao_page(trades: list[dict[str, Any]], fmt: str) -> bytes:
    data = {
        "trades_sold_increment_get_response": {
            "total_results": len(trades),
            "trades": {"trade": trades},
        }
    }
    if fmt == "xml":
        return taobao_top.to_xml(data).encode("utf-8")
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def jd_page(orders: list[dict[str, Any]]) -> bytes:
    data = {
        jd.RESPONSE_KEY: {
            "code": "0",
            "searchorderinfo_result": {
                "apiResult": {"success": True, "code": "0"},
                "orderInfoList": orders,
                "orderTotal": len(orders),
            },
        }
    }
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def douyin_page(orders: list[dict[str, Any]]) -> bytes:
    data = {
        "code": dy.OK,
        "msg": "success",
        "data": {"shop_order_list": orders, "page": 0, "size": 100, "total": len(orders)},
        "log_id": "bench",
    }
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


# ---- 1. mapping ---------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    format: str
    body: bytes
    run: Callable[[], OrderSnapshot | None]


def _push(kind: str, channel: ChannelConfig, headers: dict[str, str], body: bytes) -> Case:
    connector = connector_for(kind)
    lowered = {k.lower(): v for k, v in headers.items()}  # as the HTTP layer hands them on

    def run() -> OrderSnapshot | None:
        if not connector.verify(channel, lowered, body):
            raise RuntimeError(f"{kind}: the benchmark push did not verify")
        return connector.parse(channel, lowered, body).snapshot

    return Case(kind, "webhook", body, run)


def _pulled(name: str, kind: str, channel: ChannelConfig, body: bytes, headers: Any) -> Case:
    connector = connector_for(kind)
    response = HttpResponse(200, headers, body)
    size = PAGE_SIZES[name.removesuffix("-pull")]

    def run() -> OrderSnapshot | None:
        (pulled,) = connector.pull_response(channel, response, size).orders
        if pulled.error is not None:
            raise RuntimeError(f"{name}: {pulled.error}")
        return pulled.snapshot

    return Case(name, "pull page", body, run)


def mapping_cases(workdir: Path) -> list[Case]:
    now = datetime.now(UTC).replace(microsecond=0)
    cases: list[Case] = []

    # Shopify: an orders/updated webhook as the store simulator sends it.
    order = shopify_order()
    body = shopify_store.encode(order)
    shop = _channel(
        {"id": "shop", "kind": "shopify", "secret": SHOPIFY_SECRET, "shop_domain": SHOP_DOMAIN}
    )
    headers = {
        "X-Shopify-Topic": "orders/updated",
        "X-Shopify-Hmac-Sha256": shopify_store.sign(SHOPIFY_SECRET, body),
        "X-Shopify-Shop-Domain": SHOP_DOMAIN,
        "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        "X-Shopify-Triggered-At": now.isoformat(),
        "X-Shopify-API-Version": shopify_store.API_VERSION,
        "X-Shopify-Event-Id": "98880550-7158-44d4-b7cd-2c97c8a091b5",
    }
    cases.append(_push("shopify", shop, headers, body))

    # WooCommerce: an order.updated webhook from the store simulator (Lena Größ in Wien).
    store = WooStore(consumer_key=WC_KEY, consumer_secret=WC_SECRET, webhook_secret=WC_HOOK)
    woo_order = woocommerce_store.make_order(4750, now, lines=WC_LINES)
    body, headers = store.webhook("order.updated", woo_order)
    woo = _channel(
        {
            "id": "woo",
            "kind": "woocommerce",
            "secret": WC_HOOK,
            "store_url": "http://127.0.0.1",
            "consumer_key": WC_KEY,
            "consumer_secret": WC_SECRET,
        }
    )
    cases.append(_push("woocommerce", woo, headers, body))

    # Taobao: one trade on a trades.sold.increment.get page, JSON and XML.
    tid = taobao_top.FIRST_TID
    trade = taobao_top.make_trade(tid, now, subs=taobao_subs(tid))
    for fmt in ("json", "xml"):
        channel = _channel(
            {
                "id": f"tmall-{fmt}",
                "kind": "taobao",
                "app_key": TOP_KEY,
                "app_secret": TOP_SECRET,
                "session": TOP_SESSION,
                "format": fmt,
            }
        )
        name = "taobao" if fmt == "json" else "taobao-xml"
        cases.append(_pulled(name, "taobao", channel, taobao_page([trade], fmt), {}))

    # JD: one order on a jingdong.pop.order.search page.
    jd_order = jd_jos.make_order(jd_jos.FIRST_ORDER_ID, now, items=jd_items())
    jd_channel = _channel(
        {
            "id": "jd",
            "kind": "jd",
            "app_key": JD_KEY,
            "app_secret": JD_SECRET,
            "access_token": JD_TOKEN,
        }
    )
    cases.append(_pulled("jd", "jd", jd_channel, jd_page([jd_order]), {}))

    # Douyin: one order on an order.searchList page (amounts in fen).
    dy_id = douyin_shop.FIRST_ORDER_ID
    dy_order = douyin_shop.make_order(dy_id, now, skus=douyin_skus(dy_id))
    dy_channel = _channel(
        {
            "id": "douyin",
            "kind": "douyin",
            "app_key": DY_KEY,
            "app_secret": DY_SECRET,
            "access_token": DY_TOKEN,
        }
    )
    cases.append(_pulled("douyin", "douyin", dy_channel, douyin_page([dy_order]), {}))

    # Generic: a signed push in an in-house ERP's JSON, read through a mapping file.
    mapping = workdir / "erp.yaml"
    mapping.write_text(yaml.safe_dump(GENERIC_MAPPING, allow_unicode=True), encoding="utf-8")
    erp = _channel(
        {
            "id": "erp",
            "kind": "generic",
            "mapping": str(mapping),
            "secret": GENERIC_SECRET,
            "signature_header": "X-ERP-Signature",
        }
    )
    doc = {
        "order": {
            "no": "18446744073709551617",
            "state": "20",
            "amount_fen": sum(_fen(p) * q for _, _, q, p in CN_LINES),
            "changed": now.isoformat(),
            "buyer": "吴先生",
            "ship": {"street": "南京西路 1 号", "city": "上海"},
            "items": [
                {"sku": sku, "name": name, "qty": qty, "price": price}
                for sku, name, qty, price in CN_LINES
            ],
        }
    }
    body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
    headers = {"X-ERP-Signature": gen.sign_body(GENERIC_SECRET, body)}
    cases.append(_push("generic", erp, headers, body))

    # WooCommerce again, as the pull engine reads it: the same order on a REST list page.
    page = woocommerce_store.encode([woo_order])
    pages = {"x-wp-total": "1", "x-wp-totalpages": "1"}
    cases.append(_pulled("woocommerce-pull", "woocommerce", woo, page, pages))
    return cases


def bench_mapping(case: Case, seconds: float) -> dict[str, Any]:
    snapshot = case.run()
    if snapshot is None or len(snapshot.lines) != LINES:
        raise RuntimeError(f"{case.name}: the benchmark order did not map to {LINES} lines")
    clock = time.perf_counter_ns
    run = case.run
    warm = clock()
    for _ in range(200):
        run()
    per_call = (clock() - warm) / 200
    n = max(1000, int(seconds * 1e9 / per_call))
    samples = [0] * n
    gc.collect()
    start = clock()
    for i in range(n):
        t0 = clock()
        run()
        samples[i] = clock() - t0
    elapsed = clock() - start
    us = [s / 1000 for s in samples]
    mean = sum(us) / n
    return {
        "connector": case.name,
        "format": case.format,
        "body_bytes": len(case.body),
        "lines": LINES,
        "iterations": n,
        "mean_us": round(mean, 1),
        "p50_us": round(percentile(us, 50), 1),
        "p99_us": round(percentile(us, 99), 1),
        "orders_per_s": round(1e6 / mean),
        "loop_s": round(elapsed / 1e9, 2),
    }


# ---- 2. pull throughput -------------------------------------------------------------------

Simulator: TypeAlias = WooStore | TopGateway | JosGateway | DouyinShop


def _requests(sim: Simulator) -> int:
    return sim.requests if isinstance(sim, WooStore) else sim.calls


def _fill(name: str, n: int, now: datetime) -> tuple[Simulator, Callable[[], dict[str, Any]]]:
    """The simulator holding `n` orders modified over the last ~50 minutes, and a function
    building the hub's channel for it once it listens."""
    span = 3000.0
    stamps = [now - timedelta(seconds=3060 - span * i / n) for i in range(n)]
    if name == "woocommerce":
        store = WooStore(consumer_key=WC_KEY, consumer_secret=WC_SECRET, webhook_secret=WC_HOOK)
        for i, t in enumerate(stamps):
            store.put(woocommerce_store.make_order(1001 + i, t, lines=WC_LINES))

        def woo() -> dict[str, Any]:
            return {
                "id": "woo-bench",
                "kind": "woocommerce",
                "secret": WC_HOOK,
                "store_url": store.base_url,
                "consumer_key": WC_KEY,
                "consumer_secret": WC_SECRET,
            }

        return store, woo
    if name in ("taobao", "taobao-xml"):
        gateway = TopGateway(app_key=TOP_KEY, app_secret=TOP_SECRET, session=TOP_SESSION)
        for i, t in enumerate(stamps):
            tid = taobao_top.FIRST_TID + 17 * i
            gateway.put(taobao_top.make_trade(tid, t, subs=taobao_subs(tid)))

        def tmall() -> dict[str, Any]:
            return {
                "id": "tmall-bench",
                "kind": "taobao",
                "app_key": TOP_KEY,
                "app_secret": TOP_SECRET,
                "session": TOP_SESSION,
                "format": "xml" if name == "taobao-xml" else "json",
                "sign_method": "hmac",
                "gateway": gateway.url,
            }

        return gateway, tmall
    if name == "jd":
        jos = JosGateway(app_key=JD_KEY, app_secret=JD_SECRET, access_token=JD_TOKEN)
        for i, t in enumerate(stamps):
            jos.put(jd_jos.make_order(jd_jos.FIRST_ORDER_ID + 13 * i, t, items=jd_items()))

        def jd_() -> dict[str, Any]:
            return {
                "id": "jd-bench",
                "kind": "jd",
                "app_key": JD_KEY,
                "app_secret": JD_SECRET,
                "access_token": JD_TOKEN,
                "gateway": jos.url,
            }

        return jos, jd_
    if name == "douyin":
        shop = DouyinShop(app_key=DY_KEY, app_secret=DY_SECRET, access_token=DY_TOKEN)
        for i, t in enumerate(stamps):
            oid = douyin_shop.FIRST_ORDER_ID + 11 * i
            shop.put(douyin_shop.make_order(oid, t, skus=douyin_skus(oid)))

        def douyin() -> dict[str, Any]:
            return {
                "id": "douyin-bench",
                "kind": "douyin",
                "app_key": DY_KEY,
                "app_secret": DY_SECRET,
                "access_token": DY_TOKEN,
                "sign_method": "hmac-sha256",
                "gateway": shop.url,
            }

        return shop, douyin
    raise ValueError(name)


async def bench_pull(name: str, n: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    sim, channel_of = _fill(name, n, now)
    await sim.start()
    fetch = HttpFetch(timeout=30)
    with tempfile.TemporaryDirectory(prefix=f"bench-pull-{name}-") as tmp:
        raw = channel_of()
        settings = settings_from_mapping(
            {"database_url": f"sqlite:///{tmp}/hub.db", "channels": [raw]}, env={}
        )
        hub = build_hub(settings)
        await hub.start(dispatch=False, pull=False)
        try:
            channel = settings.channel(raw["id"])
            assert channel is not None
            page_size = PAGE_SIZES[name]
            puller = ChannelPuller(
                BoundSource(connector_for(channel.kind), channel),
                fetch,
                SqlCursorStore(hub.db),
                hub.handle,
                # One window holds every order: [now - 3600 - 300, now - 2].
                PullSettings(
                    overlap=300, page_size=page_size, max_window=7200, settle=2, lookback=3600
                ),
                bucket=TokenBucket(1_000_000.0, 1_000_000),  # never throttles
            )
            gc.collect()
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            stats = await puller.catch_up()
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            async with hub.db.read() as conn:
                stored = (
                    await conn.execute(
                        text("SELECT count(*) FROM orders WHERE channel_id = :c"), {"c": raw["id"]}
                    )
                ).scalar_one()
        finally:
            await fetch.close()
            await hub.stop()
            await sim.stop()
    if stored != n:
        raise RuntimeError(f"{name}: {stored} orders stored, expected {n}")
    return {
        "connector": name,
        "orders": n,
        "stored": stored,
        "page_size": page_size,
        "wall_s": round(wall, 2),
        "orders_per_s": round(n / wall),
        "cpu_s": round(cpu, 2),
        "cpu_us_per_order": round(cpu / n * 1e6),
        "pages": stats.pages,
        "windows": stats.windows,
        "requests": _requests(sim),
        "throttled": stats.throttled,
        "outcomes": dict(stats.outcomes),
    }


# ---- main ---------------------------------------------------------------------------------


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000, help="orders per pull run")
    parser.add_argument("--seconds", type=float, default=1.0, help="mapping loop per connector")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    info = machine_info()
    print(describe_machine(info), flush=True)
    busy = background_busy()
    print(f"  machine {busy}% busy before the run (other work on it)", flush=True)

    mapping: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-channels-") as tmp:
        for case in mapping_cases(Path(tmp)):
            mapping.append(bench_mapping(case, args.seconds))
            m = mapping[-1]
            print(
                f"  map {m['connector']}: {m['mean_us']} µs mean, {m['p99_us']} µs p99"
                f" ({m['body_bytes']} B, {m['iterations']} runs)",
                flush=True,
            )

    pulls: list[dict[str, Any]] = []
    for name in PAGE_SIZES:
        pulls.append(await bench_pull(name, args.orders))
        p = pulls[-1]
        print(
            f"  pull {name}: {p['orders_per_s']} orders/s ({p['wall_s']} s,"
            f" {p['pages']} pages, {p['requests']} requests)",
            flush=True,
        )

    by_pull = {p["connector"]: p for p in pulls}
    rows = []
    for m in mapping:
        p = by_pull.get(m["connector"]) or {}
        rows.append(
            [
                m["connector"],
                m["format"],
                m["mean_us"],
                m["p99_us"],
                m["orders_per_s"],
                p.get("orders_per_s", "-"),
                p.get("pages", "-"),
                p.get("requests", "-"),
            ]
        )
    table = print_table(
        f"Channels: mapping cost per order (one core) and pull throughput ({args.orders} orders,"
        " SQLite hub, simulator on loopback in the same process)",
        [
            "connector",
            "mapped from",
            "map µs mean",
            "map µs p99",
            "map orders/s",
            "pull orders/s",
            "pages",
            "requests",
        ],
        rows,
    )
    path = write_result(
        "channels",
        {
            "machine": info,
            "uptime_at_end": uptime(),
            "busy_before_pct": busy,
            "orders": args.orders,
            "mapping_seconds": args.seconds,
            "mapping": mapping,
            "pull": pulls,
            "table": table,
        },
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    asyncio.run(main())
