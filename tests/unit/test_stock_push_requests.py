"""Stock push requests for Shopify and WooCommerce, and the recording simulator that takes them."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from ordersync.adapters.channels.stock_push import (
    PushRequest,
    RequestStockPush,
    ShopifyStockTarget,
    StockPushFailed,
    WooCommerceStockTarget,
    shopify_set_level,
    woocommerce_set_stock,
)
from ordersync.simulators.stock_recorder import StockRecord, StockRecorder

AT = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_shopify_request_sets_the_absolute_level_of_one_item_at_one_location() -> None:
    """POST inventory_levels/set.json with location_id, inventory_item_id and available."""
    req = shopify_set_level(
        "https://demo.myshopify.com/",
        "2024-10",
        "shpat_x",
        location_id=655441491,
        inventory_item_id=808950810,
        available=42,
    )
    assert req.method == "POST"
    assert req.url == "https://demo.myshopify.com/admin/api/2024-10/inventory_levels/set.json"
    assert ("X-Shopify-Access-Token", "shpat_x") in req.headers
    assert ("Content-Type", "application/json") in req.headers
    assert req.json() == {"location_id": 655441491, "inventory_item_id": 808950810, "available": 42}


def test_woocommerce_request_puts_a_managed_stock_quantity() -> None:
    """PUT products/{id} with stock_quantity and manage_stock true, HTTP Basic."""
    req = woocommerce_set_stock("https://shop.example/", "ck_1", "cs_2", product_id=794, quantity=0)
    assert req.method == "PUT"
    assert req.url == "https://shop.example/wp-json/wc/v3/products/794"
    expected = "Basic " + base64.b64encode(b"ck_1:cs_2").decode()
    assert ("Authorization", expected) in req.headers
    assert req.json() == {"stock_quantity": 0, "manage_stock": True}


def test_negative_quantities_are_never_built() -> None:
    """A request can only carry a count of zero or more."""
    with pytest.raises(ValueError, match="negative"):
        woocommerce_set_stock("https://s", "k", "s", product_id=1, quantity=-1)
    with pytest.raises(ValueError, match="negative"):
        shopify_set_level(
            "https://s", "2024-10", "t", location_id=1, inventory_item_id=2, available=-3
        )


def test_targets_map_skus_to_platform_ids_and_skip_unlisted_skus() -> None:
    """A target builds a request for a SKU it lists and None for one it does not."""
    shopify = ShopifyStockTarget("https://d.myshopify.com", "2024-10", "t", 7, {"SKU-1": 99})
    woo = WooCommerceStockTarget("https://w.example", "k", "s", {"SKU-1": 12})
    shop_req = shopify.request("SKU-1", 3)
    woo_req = woo.request("SKU-1", 3)
    assert shop_req is not None
    assert shop_req.json() == {"location_id": 7, "inventory_item_id": 99, "available": 3}
    assert woo_req is not None
    assert woo_req.url.endswith("/products/12")
    assert shopify.request("SKU-2", 3) is None
    assert woo.request("SKU-2", 3) is None


async def test_request_stock_push_raises_on_a_non_2xx_answer() -> None:
    """A 503 from the platform becomes StockPushFailed so the publisher retries."""
    sent: list[PushRequest] = []

    async def send(request: PushRequest) -> tuple[int, str]:
        sent.append(request)
        return 503, "busy"

    woo = WooCommerceStockTarget("https://w.example", "k", "s", {"SKU-1": 12})
    port = RequestStockPush({"woo": woo.request}, send)
    with pytest.raises(StockPushFailed) as err:
        await port.push("woo", "SKU-1", 4)
    assert err.value.status == 503
    await port.push("unknown-channel", "SKU-1", 4)
    await port.push("woo", "SKU-unlisted", 4)
    assert len(sent) == 1


@pytest.fixture
async def recorder_server() -> AsyncIterator[tuple[StockRecorder, TestServer]]:
    recorder = StockRecorder(clock=lambda: AT)
    server = TestServer(recorder.app())
    await server.start_server()
    try:
        yield recorder, server
    finally:
        await server.close()


async def _send_with(session: aiohttp.ClientSession, request: PushRequest) -> tuple[int, str]:
    async with session.request(
        request.method, request.url, headers=dict(request.headers), data=request.body
    ) as resp:
        return resp.status, await resp.text()


async def test_simulator_records_both_platforms_pushes(
    recorder_server: tuple[StockRecorder, TestServer],
) -> None:
    """Requests built by the adapter are accepted and recorded as (item, quantity, time)."""
    recorder, server = recorder_server
    base = str(server.make_url("/")).rstrip("/")
    shopify = ShopifyStockTarget(base, "2024-10", "shpat_x", 655441491, {"SKU-1": 808950810})
    woo = WooCommerceStockTarget(base, "ck", "cs", {"SKU-1": 794})
    async with aiohttp.ClientSession() as session:

        async def send(request: PushRequest) -> tuple[int, str]:
            return await _send_with(session, request)

        port = RequestStockPush({"shop": shopify.request, "woo": woo.request}, send)
        await port.push("shop", "SKU-1", 17)
        await port.push("woo", "SKU-1", 5)
    assert recorder.records == [
        StockRecord("shopify", "808950810", "655441491", 17, AT),
        StockRecord("woocommerce", "794", None, 5, AT),
    ]
    assert recorder.latest("shopify", "808950810") == 17


async def test_simulator_injected_failure_then_success_and_rejects_bad_requests(
    recorder_server: tuple[StockRecorder, TestServer],
) -> None:
    """fail_next answers 503 once; missing auth or manage_stock is refused and not recorded."""
    recorder, server = recorder_server
    base = str(server.make_url("/")).rstrip("/")
    good = woocommerce_set_stock(base, "ck", "cs", product_id=1, quantity=2)
    recorder.fail_next(1)
    async with aiohttp.ClientSession() as session:
        assert (await _send_with(session, good))[0] == 503
        assert (await _send_with(session, good))[0] == 200
        no_auth = PushRequest("PUT", good.url, (), good.body)
        assert (await _send_with(session, no_auth))[0] == 401
        unmanaged = PushRequest("PUT", good.url, good.headers, b'{"stock_quantity": 2}')
        assert (await _send_with(session, unmanaged))[0] == 400
        url = base + "/admin/api/2024-10/inventory_levels/set.json"
        bad = PushRequest("POST", url, (("X-Shopify-Access-Token", "t"),), b'{"available": 1}')
        assert (await _send_with(session, bad))[0] == 422
    assert [r.quantity for r in recorder.records] == [2]
