"""API keys and scopes, and the operational endpoints: health, readiness, metrics, OpenAPI."""

from __future__ import annotations

import httpx

from ordersync.simulators.shopify_store import OrderFactory

from .conftest import ShopifyShop

PROBLEM_JSON = "application/problem+json"
TEAPOT = {
    "external_id": "WEB-BLUE-TEAPOT-1",
    "currency": "USD",
    "totals": {"total": "34.90"},
    "lines": [{"sku": "BLUE-TEAPOT", "quantity": 1, "unit_price": "34.90"}],
}


async def test_a_request_without_an_api_key_gets_a_401_problem(
    anonymous: httpx.AsyncClient,
) -> None:
    """It says how to authenticate, in the body and in WWW-Authenticate."""
    response = await anonymous.get("/v1/orders")

    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["www-authenticate"].startswith("Bearer")
    problem = response.json()
    assert problem["type"] == "https://ordersync.dev/problems/unauthorized"
    assert (problem["status"], problem["title"]) == (401, "Unauthorized")
    assert "Bearer" in problem["detail"]


async def test_a_wrong_api_key_gets_a_401_and_creates_nothing(
    anonymous: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    """An unknown key is refused before the request body is looked at."""
    wrong = {"Authorization": "Bearer sk_live_stolen_from_a_pastebin"}
    listed = await anonymous.get("/v1/orders", headers=wrong)
    posted = await anonymous.post("/v1/orders", json=TEAPOT, headers=wrong)

    assert (listed.status_code, posted.status_code) == (401, 401)
    assert posted.headers["content-type"] == PROBLEM_JSON
    assert posted.json()["type"] == "https://ordersync.dev/problems/unauthorized"
    assert (await api.get("/v1/orders")).json()["data"] == []


async def test_a_key_without_the_scope_gets_a_403_naming_it(
    dashboard: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    """The read-only dashboard key may read orders and deliveries, never write them."""
    posted = await dashboard.post("/v1/orders", json=TEAPOT)
    replayed = await dashboard.post("/v1/deliveries/dlv_1/replay")
    read_orders = await dashboard.get("/v1/orders")
    read_deliveries = await dashboard.get("/v1/deliveries")

    assert posted.status_code == 403
    assert posted.headers["content-type"] == PROBLEM_JSON
    assert posted.json()["type"] == "https://ordersync.dev/problems/forbidden"
    assert "orders:write" in posted.json()["detail"]
    assert replayed.status_code == 403
    assert "deliveries:write" in replayed.json()["detail"]
    assert (read_orders.status_code, read_deliveries.status_code) == (200, 200)
    assert (await api.get("/v1/orders")).json()["data"] == []


async def test_the_webhook_route_needs_no_api_key_only_the_shopify_signature(
    shop: ShopifyShop, api: httpx.AsyncClient
) -> None:
    """Shopify cannot send bearer keys; its HMAC is the authentication."""
    order = OrderFactory(seed=1001).new_order(order_id=9_007_199_254_740_993)
    response = await shop.send("orders/create", order)

    assert "authorization" not in shop.client.headers
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "created"
    assert (await api.get(f"/v1/orders/{response.json()['order_id']}")).status_code == 200


async def test_liveness_and_readiness_answer_200_without_a_key(
    anonymous: httpx.AsyncClient,
) -> None:
    """Probes from the orchestrator carry no credentials."""
    alive = await anonymous.get("/healthz")
    ready = await anonymous.get("/readyz")

    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"hub": "ok", "database": "ok"}}


async def test_metrics_count_received_webhooks_by_channel_and_outcome(
    shop: ShopifyShop, anonymous: httpx.AsyncClient
) -> None:
    """One created and one forged webhook each show up under their own outcome."""
    order = OrderFactory(seed=7).new_order()
    await shop.send("orders/create", order)
    await shop.send("orders/create", order, secret="shpss_attacker")
    response = await anonymous.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert 'ordersync_webhooks_received_total{channel="shop-eu",outcome="created"} 1.0' in lines
    assert 'ordersync_webhooks_received_total{channel="shop-eu",outcome="forged"} 1.0' in lines


async def test_the_openapi_document_lists_the_order_and_webhook_routes(
    anonymous: httpx.AsyncClient,
) -> None:
    """Integrators generate clients from /openapi.json."""
    response = await anonymous.get("/openapi.json")
    paths = response.json()["paths"]

    assert response.status_code == 200
    assert {"get", "post"} <= set(paths["/v1/orders"])
    assert "post" in paths["/v1/channels/{channel_id}/webhooks"]
    assert "get" in paths["/v1/deliveries"]
    assert "post" in paths["/v1/deliveries/{delivery_id}/replay"]
