"""Outbound delivery to real HTTP sinks: signed, complete, once, in order, and recoverable."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import orjson

from ordersync.bootstrap import Hub
from ordersync.simulators.shopify_store import OrderFactory, cancel, pay
from ordersync.simulators.sinks import FaultPlan, Sink

from .conftest import (
    OPS_KEY,
    ClientFactory,
    Eventually,
    HubStarter,
    Query,
    SettingsFactory,
    Settle,
    ShopifyShop,
    Sinks,
)

WMS_EVENTS = {"order.paid", "order.cancelled"}


def unpaid_order(factory: OrderFactory, order_id: int | None = None) -> dict[str, Any]:
    order = factory.new_order(order_id)
    order["financial_status"] = "pending"
    return order


async def shopify_story(shop: ShopifyShop, order: dict[str, Any], *, cancelled: bool) -> None:
    """Created unpaid, then paid, then (maybe) cancelled: every topic answered 200."""
    paid = pay(order)
    steps = [("orders/create", order), ("orders/paid", paid)]
    if cancelled:
        steps.append(("orders/cancelled", cancel(paid)))
    for topic, snapshot in steps:
        response = await shop.send(topic, snapshot)
        assert response.status_code == 200, response.text


async def all_events(hub: Hub, query: Query) -> list[dict[str, Any]]:
    """Every event the hub recorded, oldest first, with the exact body it sends."""
    rows = await query(
        hub, "SELECT id, type, order_id, order_version, body FROM events ORDER BY seq"
    )
    return [
        {"id": r[0], "type": r[1], "order_id": r[2], "version": r[3], "body": bytes(r[4])}
        for r in rows
    ]


def assert_got_each_event_once_in_order(sink: Sink, events: list[dict[str, Any]]) -> None:
    """The sink applied exactly these events, once each, each order's in the hub's order."""
    applied = [e.webhook_id for e in sink.ledger]
    assert sorted(applied) == sorted(e["id"] for e in events)
    assert len(set(applied)) == len(applied)
    assert sink.rejected == 0
    for order_id, entries in sink.applied_by_order().items():
        expected = [e["id"] for e in events if e["order_id"] == order_id]
        assert [e.webhook_id for e in entries] == expected
        versions = [e.version for e in entries]
        assert versions == sorted(versions)


async def test_every_event_reaches_each_subscribed_sink_once_signed_and_complete(
    shop: ShopifyShop,
    api: httpx.AsyncClient,
    hub: Hub,
    sinks: Sinks,
    settle: Settle,
    query: Query,
) -> None:
    """ERP and CRM get every event; the WMS only order.paid and order.cancelled."""
    factory = OrderFactory(seed=2026)
    await shopify_story(shop, unpaid_order(factory, 9_007_199_254_740_993), cancelled=True)
    await shopify_story(shop, unpaid_order(factory), cancelled=False)
    native = await api.post(
        "/v1/orders",
        json={
            "external_id": "PHONE-ORDER-17",
            "currency": "JPY",
            "status": "paid",
            "payment_status": "paid",
            "totals": {"total": "4980"},
            "lines": [{"sku": "KYUSU-SIDE", "quantity": 1, "unit_price": "4980"}],
        },
    )
    assert native.status_code == 201, native.text
    summary = await settle(api)
    events = await all_events(hub, query)

    assert {e["type"] for e in events} >= {"order.created", "order.paid", "order.cancelled"}
    assert summary["erp"]["succeeded"] == summary["crm"]["succeeded"] == len(events)
    assert summary["wms"]["succeeded"] == len([e for e in events if e["type"] in WMS_EVENTS])
    assert all(states["dead"] == 0 for states in summary.values())
    assert_got_each_event_once_in_order(sinks.erp, events)
    assert_got_each_event_once_in_order(sinks.crm, events)
    assert_got_each_event_once_in_order(sinks.wms, [e for e in events if e["type"] in WMS_EVENTS])
    by_id = {e["id"]: e for e in events}
    for entry in sinks.erp.ledger:
        sent = orjson.loads(by_id[entry.webhook_id]["body"])
        assert set(sent) == {"type", "timestamp", "data"}
        assert datetime.fromisoformat(sent["timestamp"]).utcoffset() is not None
        assert sent["timestamp"].endswith("Z")
        assert entry.type == sent["type"] == by_id[entry.webhook_id]["type"]
        assert entry.data == sent["data"]
        assert entry.order_id == by_id[entry.webhook_id]["order_id"]
        assert entry.version == sent["data"]["version"] == by_id[entry.webhook_id]["version"]
        assert entry.attempt == 1


async def test_a_sink_failing_each_events_first_two_attempts_still_gets_each_once_in_order(
    shop: ShopifyShop,
    api: httpx.AsyncClient,
    hub: Hub,
    sinks: Sinks,
    settle: Settle,
    query: Query,
) -> None:
    """503, 503, then 200 for every event: applied once each, one order's in version order."""
    sinks.erp.faults = FaultPlan(fail_first=2)
    factory = OrderFactory(seed=503)
    for _ in range(2):
        await shopify_story(shop, unpaid_order(factory), cancelled=False)
    await settle(api)
    events = await all_events(hub, query)
    erp = (await api.get("/v1/deliveries", params={"destination_id": "erp"})).json()["data"]

    assert_got_each_event_once_in_order(sinks.erp, events)
    assert {e.attempt for e in sinks.erp.ledger} == {3}
    assert sinks.erp.failures_injected == 2 * len(events)
    assert sinks.erp.duplicates_suppressed == 0
    assert {(d["state"], d["attempts"], d["last_status"]) for d in erp} == {("succeeded", 3, 200)}


async def test_a_sink_that_always_fails_ends_dead_and_a_replay_delivers_it(
    api: httpx.AsyncClient,
    sinks: Sinks,
    settle: Settle,
) -> None:
    """CRM answers 500 to everything: after its one retry the delivery is dead-lettered, with
    both attempts on record; once CRM is healthy again, a replay delivers it, same webhook-id."""
    sinks.crm.faults = FaultPlan(error_rate=1.0)
    created = await api.post(
        "/v1/orders",
        json={
            "external_id": "CRM-OUTAGE-1",
            "currency": "GBP",
            "totals": {"total": "19.99"},
            "lines": [{"sku": "DOORMAT-GREY", "quantity": 1, "unit_price": "19.99"}],
        },
    )
    assert created.status_code == 201, created.text
    await settle(api)

    dead = (await api.get("/v1/deliveries", params={"state": "dead"})).json()["data"]
    assert [(d["destination_id"], d["event_type"], d["attempts"]) for d in dead] == [
        ("crm", "order.created", 2)
    ]
    assert dead[0]["order_id"] == created.json()["id"]
    assert dead[0]["last_status"] == 500
    assert dead[0]["next_attempt_at"] is None
    detail = (await api.get(f"/v1/deliveries/{dead[0]['id']}")).json()
    assert [(a["attempt"], a["status"], a["outcome"]) for a in detail["attempt_log"]] == [
        (1, 500, "failed"),
        (2, 500, "failed"),
    ]
    assert all(a["error"].startswith("HTTP 500") for a in detail["attempt_log"])
    assert sinks.crm.ledger == []

    sinks.crm.faults = FaultPlan()
    replay = await api.post(f"/v1/deliveries/{dead[0]['id']}/replay")
    await settle(api)
    after = (await api.get(f"/v1/deliveries/{dead[0]['id']}")).json()

    assert replay.status_code == 202
    assert replay.json() == {"id": dead[0]["id"], "state": "pending"}
    assert (after["state"], after["attempts"], after["last_status"]) == ("succeeded", 3, 200)
    assert [a["status"] for a in after["attempt_log"]] == [500, 500, 200]
    assert [e.webhook_id for e in sinks.crm.ledger] == [dead[0]["event_id"]]
    assert (await api.get("/v1/deliveries", params={"state": "dead"})).json()["data"] == []


async def test_replaying_an_unknown_delivery_is_a_404_problem(api: httpx.AsyncClient) -> None:
    """Ids the hub never issued are not found, whatever their shape."""
    missing = await api.post("/v1/deliveries/dlv_999999/replay")
    malformed = await api.get("/v1/deliveries/not-a-delivery")

    assert missing.status_code == 404
    assert missing.json()["type"] == "https://ordersync.dev/problems/delivery_not_found"
    assert malformed.status_code == 404
    assert malformed.headers["content-type"] == "application/problem+json"


async def test_replaying_a_delivery_still_pending_is_a_409_problem(
    start_hub: HubStarter, make_settings: SettingsFactory, client_for: ClientFactory
) -> None:
    """Replay is for finished deliveries; a pending one is already on its way."""
    hub = await start_hub(make_settings(), dispatch=False)  # nothing is sent: all stay pending
    api = client_for(hub, OPS_KEY)
    created = await api.post(
        "/v1/orders",
        json={
            "currency": "CNY",
            "totals": {"total": "88.00"},
            "lines": [{"sku": "SENCHA-100", "quantity": 1, "unit_price": "88.00"}],
        },
    )
    assert created.status_code == 201, created.text
    pending = (await api.get("/v1/deliveries", params={"destination_id": "erp"})).json()["data"]
    response = await api.post(f"/v1/deliveries/{pending[0]['id']}/replay")

    assert [(d["state"], d["attempts"]) for d in pending] == [("pending", 0)]
    assert pending[0]["next_attempt_at"] is not None
    assert response.status_code == 409
    assert response.json()["type"] == "https://ordersync.dev/problems/delivery_not_replayable"


async def test_deliveries_survive_a_hub_restart_while_a_sink_is_down(
    start_hub: HubStarter,
    make_settings: SettingsFactory,
    client_for: ClientFactory,
    shop_for: Callable[[httpx.AsyncClient], ShopifyShop],
    sinks: Sinks,
    settle: Settle,
    eventually: Eventually,
    query: Query,
) -> None:
    """The ERP is down when the hub stops; a new hub on the same database, with the ERP back,
    delivers every event exactly once, each order's in order."""
    # Retries that never run out, so nothing goes dead before the restart.
    settings = make_settings(
        retry_schedule=[0.05],
        retry_backoff={"base": 0.05, "multiplier": 1, "max_delay": 0.05, "max_age": 3600},
    )
    sinks.erp.faults = FaultPlan(error_rate=1.0)
    first = await start_hub(settings)
    shop = shop_for(client_for(first))
    factory = OrderFactory(seed=404)
    for n in range(3):
        await shopify_story(shop, unpaid_order(factory), cancelled=n == 0)
    await eventually(lambda: sinks.erp.failures_injected >= 3, "the ERP to refuse a few events")
    await first.stop()
    applied_while_down = list(sinks.erp.ledger)

    sinks.erp.faults = FaultPlan()
    second = await start_hub(settings)
    api = client_for(second, OPS_KEY)
    summary = await settle(api)
    events = await all_events(second, query)
    erp = (await api.get("/v1/deliveries", params={"destination_id": "erp"})).json()["data"]

    assert applied_while_down == []
    assert max(d["attempts"] for d in erp) >= 2
    assert summary["erp"]["succeeded"] == len(events)
    assert summary["erp"]["dead"] == 0
    assert_got_each_event_once_in_order(sinks.erp, events)
    assert_got_each_event_once_in_order(sinks.wms, [e for e in events if e["type"] in WMS_EVENTS])
    assert_got_each_event_once_in_order(sinks.crm, events)


async def test_replaying_a_succeeded_delivery_resends_the_same_webhook_id(
    api: httpx.AsyncClient, sinks: Sinks, settle: Settle
) -> None:
    """The ERP lost its copy and asks again: same webhook-id, so a careful receiver dedupes."""
    created = await api.post(
        "/v1/orders",
        json={
            "external_id": "ERP-RESYNC-1",
            "currency": "USD",
            "totals": {"total": "41.00"},
            "lines": [{"sku": "POUROVER-WHT", "quantity": 1, "unit_price": "41.00"}],
        },
    )
    assert created.status_code == 201, created.text
    await settle(api)
    [delivery] = (await api.get("/v1/deliveries", params={"destination_id": "erp"})).json()["data"]
    replay = await api.post(f"/v1/deliveries/{delivery['id']}/replay")
    await settle(api)
    after = (await api.get(f"/v1/deliveries/{delivery['id']}")).json()

    assert replay.status_code == 202
    assert (after["state"], after["attempts"]) == ("succeeded", 2)
    assert [a["status"] for a in after["attempt_log"]] == [200, 200]
    assert [e.webhook_id for e in sinks.erp.ledger] == [delivery["event_id"]]
    assert sinks.erp.duplicates_suppressed == 1


async def test_deliveries_are_listed_by_order_and_destination_with_a_cursor(
    api: httpx.AsyncClient, sinks: Sinks, settle: Settle
) -> None:
    """Two paid orders, three destinations: pages of two walk every delivery once."""
    order_ids = []
    for n in (1, 2):
        created = await api.post(
            "/v1/orders",
            json={
                "external_id": f"PAID-SENCHA-{n}",
                "status": "paid",
                "payment_status": "paid",
                "currency": "EUR",
                "totals": {"total": "9.95"},
                "lines": [{"sku": "SENCHA-100", "quantity": 1, "unit_price": "9.95"}],
            },
        )
        order_ids.append(created.json()["id"])
    await settle(api)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/deliveries", params=params)).json()
        seen += [d["id"] for d in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    first_orders = (await api.get("/v1/deliveries", params={"order_id": order_ids[0]})).json()
    wms = (await api.get("/v1/deliveries", params={"destination_id": "wms"})).json()

    # Each order: created + paid to erp and crm, paid to wms.
    assert len(seen) == len(set(seen)) == 10
    assert {d["order_id"] for d in first_orders["data"]} == {order_ids[0]}
    assert len(first_orders["data"]) == 5
    assert {(d["event_type"], d["order_version"]) for d in wms["data"]} == {("order.paid", 1)}
    assert len(wms["data"]) == 2


async def test_a_delivery_id_beyond_64_bits_is_a_404_problem(api: httpx.AsyncClient) -> None:
    """dlv_ followed by 23 nines names no delivery: 404, not a crash."""
    response = await api.get("/v1/deliveries/dlv_99999999999999999999999")

    assert response.status_code == 404
    assert response.json()["type"] == "https://ordersync.dev/problems/delivery_not_found"
