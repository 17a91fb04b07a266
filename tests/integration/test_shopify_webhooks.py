"""Shopify webhooks into a real hub: verified, mapped, stored once, never rolled back."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ordersync.bootstrap import Hub
from ordersync.simulators.shopify_store import cancel, encode, fulfill, pay, sign

from .conftest import Query, Settle, ShopifyShop, Sinks

PROBLEM_JSON = "application/problem+json"
BEYOND_FLOAT = 9_007_199_254_740_993  # 2^53 + 1: a JSON float would read it as ...992
NINETEEN_DIGITS = 4_611_686_018_427_387_905  # 2^62 + 1


def teapot_order(order_id: int = BEYOND_FLOAT, **changes: Any) -> dict[str, Any]:
    """Shopify order #1001: two Blue Teapots (10% off) and a 青花瓷 pot, shipped to Berlin."""
    address = {
        "first_name": "Jürgen",
        "last_name": "Müller",
        "name": "Jürgen Müller",
        "company": "Teahouse GmbH",
        "address1": "Unter den Linden 77",
        "address2": "Floor 3",
        "city": "Berlin",
        "province": "Berlin",
        "province_code": "BE",
        "country": "Germany",
        "country_code": "DE",
        "zip": "10117",
        "phone": "+49305550123",
    }
    eur = {"currency_code": "EUR"}
    order = {
        "id": order_id,
        "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
        "name": "#1001",
        "email": "jurgen.muller@example.com",
        "currency": "EUR",
        "created_at": "2026-11-22T10:00:00+01:00",
        "processed_at": "2026-11-22T10:00:00+01:00",
        "updated_at": "2026-11-22T10:00:00+01:00",
        "cancelled_at": None,
        "cancel_reason": None,
        "closed_at": None,
        "financial_status": "pending",
        "fulfillment_status": None,
        "note": "礼品包装，谢谢",
        "total_line_items_price": "158.80",
        "total_discounts": "6.98",
        "subtotal_price": "151.82",
        "total_shipping_price_set": {
            "shop_money": {"amount": "4.90", **eur},
            "presentment_money": {"amount": "4.90", **eur},
        },
        "total_tax": "28.85",
        "total_price": "185.57",
        "line_items": [
            {
                "id": 13_000_000_000_007,
                "product_id": 8_000_000_001_011,
                "variant_id": 80_000_000_010_111,
                "sku": "BLUE-TEAPOT",
                "title": "Blue Teapot",
                "variant_title": "1 L",
                "name": "Blue Teapot - 1 L",
                "quantity": 2,
                "price": "34.90",
                "total_discount": "0.00",
                "discount_allocations": [{"amount": "6.98", "discount_application_index": 0}],
            },
            {
                "id": NINETEEN_DIGITS,
                "product_id": 8_000_000_000_544,
                "variant_id": 80_000_000_005_440,
                "sku": "",
                "title": "青花瓷茶壶",
                "variant_title": None,
                "name": "青花瓷茶壶",
                "quantity": 1,
                "price": "89.00",
                "total_discount": "0.00",
                "discount_allocations": [],
            },
        ],
        "customer": {
            "id": 7_000_000_000_042,
            "email": "jurgen.muller@example.com",
            "first_name": "Jürgen",
            "last_name": "Müller",
            "phone": "+49305550123",
        },
        "shipping_address": address,
        "billing_address": dict(address),
        "fulfillments": [],
        "refunds": [],
    }
    order.update(changes)
    return order


async def created(shop: ShopifyShop, order: dict[str, Any]) -> str:
    response = await shop.send("orders/create", order)
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "created"
    return str(response.json()["order_id"])


async def nothing_stored(hub: Hub, api: httpx.AsyncClient, query: Query) -> None:
    assert (await api.get("/v1/orders")).json()["data"] == []
    assert await query(hub, "SELECT COUNT(*) FROM orders") == [(0,)]
    assert await query(hub, "SELECT COUNT(*) FROM inbox") == [(0,)]
    assert await query(hub, "SELECT COUNT(*) FROM events") == [(0,)]


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem: dict[str, Any] = response.json()
    assert problem["type"] == f"https://ordersync.dev/problems/{code}"
    assert problem["status"] == status
    assert problem["detail"]
    return problem


@pytest.mark.parametrize("order_id", [BEYOND_FLOAT, NINETEEN_DIGITS], ids=["2^53+1", "19-digit"])
async def test_a_signed_orders_create_stores_the_order_with_every_field_mapped(
    shop: ShopifyShop, api: httpx.AsyncClient, query: Query, hub: Hub, order_id: int
) -> None:
    """Ids keep every digit, amounts stay decimal strings with their scale, text is untouched."""
    response = await shop.send("orders/create", teapot_order(order_id))
    order_ref = response.json()["order_id"]
    order = (await api.get(f"/v1/orders/{order_ref}")).json()

    assert response.status_code == 200
    assert response.json() == {"outcome": "created", "order_id": order_ref}
    assert order_ref.startswith("ord_")
    berlin = {
        "name": "Jürgen Müller",
        "company": "Teahouse GmbH",
        "line1": "Unter den Linden 77",
        "line2": "Floor 3",
        "city": "Berlin",
        "region": "BE",
        "postal_code": "10117",
        "country_code": "DE",
        "phone": "+49305550123",
    }
    assert order == {
        "id": order_ref,
        "channel_id": "shop-eu",
        "external_id": str(order_id),
        "name": "#1001",
        "status": "pending",
        "payment_status": "pending",
        "hold_reasons": [],
        "held_from": None,
        "currency": "EUR",
        "totals": {
            "subtotal": "151.82",
            "shipping": "4.90",
            "tax": "28.85",
            "discount": "6.98",
            "total": "185.57",
        },
        "lines": [
            {
                "sku": "BLUE-TEAPOT",
                "name": "Blue Teapot - 1 L",
                "quantity": 2,
                "unit_price": "34.90",
                "discount": "6.98",
                "total": "62.82",
                "external_id": "13000000000007",
                "product_id": "8000000001011",
                "variant_id": "80000000010111",
            },
            {
                "sku": None,
                "name": "青花瓷茶壶",
                "quantity": 1,
                "unit_price": "89.00",
                "discount": "0.00",
                "total": "89.00",
                "external_id": "4611686018427387905",
                "product_id": "8000000000544",
                "variant_id": "80000000005440",
            },
        ],
        "customer": {
            "external_id": "7000000000042",
            "email": "jurgen.muller@example.com",
            "name": "Jürgen Müller",
            "phone": "+49305550123",
        },
        "shipping_address": berlin,
        "billing_address": berlin,
        "note": "礼品包装，谢谢",
        "placed_at": "2026-11-22T09:00:00Z",
        "created_at": order["created_at"],
        "updated_at": order["updated_at"],
        "channel_updated_at": "2026-11-22T09:00:00Z",
        "version": 1,
    }
    assert await query(hub, "SELECT external_id FROM orders") == [(str(order_id),)]
    found = (await api.get("/v1/orders", params={"external_id": str(order_id)})).json()["data"]
    assert [o["id"] for o in found] == [order_ref]


@pytest.mark.parametrize(
    "forgery",
    [
        {"secret": "shpss_attacker"},
        {"signature": "bm90IGEgc2lnbmF0dXJlIGF0IGFsbA=="},
        {"body_tampered": True},
    ],
    ids=["wrong-secret", "garbage-signature", "tampered-body"],
)
async def test_a_forged_signature_is_refused_with_401_and_nothing_is_stored(
    shop: ShopifyShop,
    api: httpx.AsyncClient,
    query: Query,
    hub: Hub,
    forgery: dict[str, Any],
) -> None:
    """No order, no inbox row, no event: a forged webhook leaves no trace but a metric."""
    genuine = teapot_order()
    if forgery.get("body_tampered"):
        # Shopify's real signature, over the genuine body, sent with a cheaper total.
        signature = sign(shop.secret, encode(genuine))
        cheap = teapot_order(total_price="0.01")
        response = await shop.send("orders/create", cheap, signature=signature)
    else:
        response = await shop.send("orders/create", genuine, **forgery)

    assert_problem(response, 401, "invalid_signature")
    await nothing_stored(hub, api, query)


async def test_a_webhook_without_a_signature_is_refused_with_401(
    shop: ShopifyShop, api: httpx.AsyncClient, query: Query, hub: Hub
) -> None:
    """A request lacking X-Shopify-Hmac-Sha256 is not from Shopify."""
    response = await shop.send("orders/create", teapot_order(), without=("X-Shopify-Hmac-Sha256",))

    assert_problem(response, 401, "invalid_signature")
    await nothing_stored(hub, api, query)


@pytest.mark.parametrize(
    "body",
    [b'{"id": 9007199254740993, "line_items": [', b"[1, 2, 3]", b"\xff\xfe not utf-8"],
    ids=["truncated", "not-an-object", "not-utf8"],
)
async def test_a_signed_but_malformed_body_gets_a_4xx_problem_naming_the_issue(
    shop: ShopifyShop, api: httpx.AsyncClient, query: Query, hub: Hub, body: bytes
) -> None:
    """Shopify's own signature over garbage still gets a problem body, and stores nothing."""
    response = await shop.send("orders/create", body=body)

    assert 400 <= response.status_code < 500
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["type"].startswith("https://ordersync.dev/problems/")
    assert problem["detail"]
    await nothing_stored(hub, api, query)


async def test_an_order_missing_its_total_is_refused_with_the_path_of_the_field(
    shop: ShopifyShop, api: httpx.AsyncClient, query: Query, hub: Hub
) -> None:
    """A wrong amount is worse than a refused webhook: 422 with `path` = total_price."""
    response = await shop.send("orders/create", teapot_order(total_price=None))

    problem = assert_problem(response, 422, "invalid_payload")
    assert problem["path"] == "total_price"
    await nothing_stored(hub, api, query)


async def test_a_webhook_to_an_unknown_channel_gets_a_404_problem(
    shop: ShopifyShop, api: httpx.AsyncClient, query: Query, hub: Hub
) -> None:
    """Only configured channels receive webhooks."""
    response = await shop.send("orders/create", teapot_order(), channel="shop-mars")

    problem = assert_problem(response, 404, "unknown_channel")
    assert "shop-mars" in problem["detail"]
    await nothing_stored(hub, api, query)


async def test_the_same_webhook_id_twice_is_acknowledged_twice_and_applied_once(
    shop: ShopifyShop,
    api: httpx.AsyncClient,
    query: Query,
    hub: Hub,
    sinks: Sinks,
    settle: Settle,
) -> None:
    """Shopify retries with the same webhook id: one order, one history entry, one event."""
    order = teapot_order()
    first = await shop.send("orders/create", order, webhook_id="wh-teapot-create-1")
    again = await shop.send("orders/create", order, webhook_id="wh-teapot-create-1")
    await settle(api)
    order_ref = first.json()["order_id"]
    listed = (await api.get("/v1/orders")).json()["data"]
    history = (await api.get(f"/v1/orders/{order_ref}/history")).json()

    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json()["outcome"] == "created"
    assert again.json()["outcome"] == "duplicate"
    assert [o["id"] for o in listed] == [order_ref]
    assert len(history) == 1
    assert await query(hub, "SELECT message_id, outcome FROM inbox") == [
        ("wh-teapot-create-1", "created")
    ]
    assert [(e.type, e.order_id) for e in sinks.erp.ledger] == [("order.created", order_ref)]
    assert sinks.erp.attempts == 1
    assert sinks.wms.ledger == []


async def test_an_update_older_than_the_held_one_never_rolls_the_order_back(
    shop: ShopifyShop, api: httpx.AsyncClient
) -> None:
    """Paid at 10:05; a reordered 10:02 snapshot (unpaid, new note) is acknowledged as stale."""
    order = teapot_order()
    order_ref = await created(shop, order)
    paid = teapot_order(financial_status="paid", updated_at="2026-11-22T10:05:00+01:00")
    assert (await shop.send("orders/paid", paid)).json()["outcome"] == "updated"
    before = (await api.get(f"/v1/orders/{order_ref}")).json()

    late = teapot_order(note="Bitte klingeln", updated_at="2026-11-22T10:02:00+01:00")
    response = await shop.send("orders/updated", late)
    after = (await api.get(f"/v1/orders/{order_ref}")).json()
    history = (await api.get(f"/v1/orders/{order_ref}/history")).json()

    assert response.status_code == 200
    assert response.json()["outcome"] == "stale"
    assert (after["status"], after["payment_status"], after["version"]) == ("paid", "paid", 2)
    assert after["note"] == "礼品包装，谢谢"
    assert after == before
    assert len(history) == 2


async def test_orders_paid_after_create_moves_the_order_to_paid_at_version_two(
    shop: ShopifyShop, api: httpx.AsyncClient
) -> None:
    """History tells what happened, why, and which Shopify message said so."""
    order = teapot_order()
    create = await shop.send("orders/create", order, webhook_id="wh-create-1001")
    paid = await shop.send("orders/paid", pay(order), webhook_id="wh-paid-1001")
    order_ref = create.json()["order_id"]
    current = (await api.get(f"/v1/orders/{order_ref}")).json()
    history = (await api.get(f"/v1/orders/{order_ref}/history")).json()

    assert paid.status_code == 200
    assert paid.json() == {"outcome": "updated", "order_id": order_ref}
    assert (current["status"], current["payment_status"], current["version"]) == (
        "paid",
        "paid",
        2,
    )
    assert [
        (
            h["version"],
            h["from_status"],
            h["to_status"],
            h["to_payment_status"],
            h["cause"],
            h["source_message_id"],
        )
        for h in history
    ] == [
        (1, None, "pending", "pending", "shopify:orders/create", "wh-create-1001"),
        (2, "pending", "paid", "paid", "shopify:orders/paid", "wh-paid-1001"),
    ]


async def test_orders_cancelled_after_paid_cancels_and_refunds_and_tells_the_warehouse(
    shop: ShopifyShop, api: httpx.AsyncClient, sinks: Sinks, settle: Settle
) -> None:
    """Cancelling a captured order refunds it; the WMS hears order.paid, then order.cancelled."""
    order = teapot_order()
    order_ref = await created(shop, order)
    paid = pay(order)
    await shop.send("orders/paid", paid)
    response = await shop.send("orders/cancelled", cancel(paid, reason="customer"))
    await settle(api)
    current = (await api.get(f"/v1/orders/{order_ref}")).json()
    history = (await api.get(f"/v1/orders/{order_ref}/history")).json()

    assert response.json() == {"outcome": "updated", "order_id": order_ref}
    assert (current["status"], current["payment_status"], current["version"]) == (
        "cancelled",
        "refunded",
        3,
    )
    assert (history[-1]["from_status"], history[-1]["to_status"]) == ("paid", "cancelled")
    assert history[-1]["cause"] == "shopify:orders/cancelled"
    assert [(e.type, e.version) for e in sinks.wms.ledger] == [
        ("order.paid", 2),
        ("order.cancelled", 3),
    ]
    assert [e.type for e in sinks.erp.ledger] == [
        "order.created",
        "order.updated",
        "order.paid",
        "order.updated",
        "order.cancelled",
        "order.refunded",
    ]


async def test_a_webhook_without_a_webhook_id_is_a_400_problem(
    shop: ShopifyShop, api: httpx.AsyncClient, query: Query, hub: Hub
) -> None:
    """Without X-Shopify-Webhook-Id a retry could not be told from a new message."""
    response = await shop.send("orders/create", teapot_order(), without=("X-Shopify-Webhook-Id",))

    problem = assert_problem(response, 400, "missing_header")
    assert "X-Shopify-Webhook-Id" in problem["detail"]
    await nothing_stored(hub, api, query)


async def test_orders_paid_arriving_before_orders_create_wins_and_the_late_create_is_stale(
    shop: ShopifyShop, api: httpx.AsyncClient
) -> None:
    """Shopify does not promise order: the paid snapshot creates the order, paid, at once."""
    order = teapot_order()
    paid = await shop.send("orders/paid", pay(order))
    late_create = await shop.send("orders/create", order)
    order_ref = paid.json()["order_id"]
    current = (await api.get(f"/v1/orders/{order_ref}")).json()

    assert paid.json()["outcome"] == "created"
    assert late_create.json() == {"outcome": "stale", "order_id": order_ref}
    assert (current["status"], current["payment_status"], current["version"]) == (
        "paid",
        "paid",
        1,
    )


async def test_an_unchanged_newer_snapshot_still_guards_against_an_older_one(
    shop: ShopifyShop, api: httpx.AsyncClient
) -> None:
    """Note "Ring twice" at 10:00, "Leave at door" at 10:05, back to "Ring twice" at 10:10;
    the 10:10 snapshot overtakes the 10:05 one, which must then count as stale."""
    order_ref = await created(shop, teapot_order(note="Ring twice"))
    newest = teapot_order(note="Ring twice", updated_at="2026-11-22T10:10:00+01:00")
    overtaken = teapot_order(note="Leave at door", updated_at="2026-11-22T10:05:00+01:00")
    assert (await shop.send("orders/updated", newest)).json()["outcome"] == "unchanged"
    response = await shop.send("orders/updated", overtaken)
    current = (await api.get(f"/v1/orders/{order_ref}")).json()

    assert response.json()["outcome"] == "stale"
    assert current["note"] == "Ring twice"
    assert current["channel_updated_at"] == "2026-11-22T09:10:00Z"
    assert current["version"] == 1


async def test_a_held_order_that_shopify_fulfils_meanwhile_is_shipped_and_no_longer_held(
    shop: ShopifyShop, api: httpx.AsyncClient
) -> None:
    """Held for review, then the merchant ships it from Shopify admin: the hold ends."""
    order = teapot_order()
    paid = pay(order)
    order_ref = await created(shop, paid)
    held = await api.post(
        f"/v1/orders/{order_ref}/status",
        json={"status": "on_hold", "hold_reasons": ["payment_review"]},
    )
    assert held.status_code == 200, held.text
    shipped = await shop.send("orders/fulfilled", fulfill(paid))
    assert shipped.json()["outcome"] == "updated"
    current = (await api.get(f"/v1/orders/{order_ref}")).json()
    released = await api.post(f"/v1/orders/{order_ref}/release")

    assert (current["status"], current["held_from"], current["hold_reasons"]) == (
        "shipped",
        None,
        [],
    )
    assert released.status_code == 422  # nothing left to release
