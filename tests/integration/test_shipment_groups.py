"""Merging and splitting shipments through the HTTP API, on a real SQLite file and a real
PostgreSQL database: every step is visible in the orders' history and outbox, every
refusal changes nothing, every step can be undone exactly, and two merges racing for one
order never both win."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from ordersync.bootstrap import Hub
from ordersync.config import Settings, settings_from_mapping

from .conftest import ClientFactory, HubStarter, Query, Sinks

OPS_KEY = "sk_test_ops_grouping_teapot_51c"
READER_KEY = "sk_test_reader_grouping_matcha_2e"
PROBLEM_JSON = "application/problem+json"
PLACED = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
MEI_LIN = {"external_id": "cust-88", "email": "mei.lin@example.com", "name": "Mei Lin"}
HOME = {
    "name": "Mei Lin",
    "line1": "Kastanienallee 12",
    "city": "Berlin",
    "postal_code": "10435",
    "country_code": "DE",
}
OFFICE = {**HOME, "line1": "Friedrichstrasse 100", "postal_code": "10117"}
TEAPOT = {"sku": "BLUE-TEAPOT", "name": "Blue teapot", "quantity": 1, "unit_price": "39.00"}
CUPS = {"sku": "JADE-CUP", "name": "Jade cup", "quantity": 4, "unit_price": "6.50"}


@dataclass
class Shop:
    hub: Hub
    api: httpx.AsyncClient
    reader: httpx.AsyncClient
    query: Query

    async def order(
        self,
        external_id: str,
        *,
        lines: tuple[dict[str, Any], ...] = (TEAPOT,),
        placed_at: datetime = PLACED,
        address: dict[str, Any] = HOME,
        customer: dict[str, Any] = MEI_LIN,
        status: str = "paid",
    ) -> str:
        total = sum(int(line["quantity"]) * float(line["unit_price"]) for line in lines)
        response = await self.api.post(
            "/v1/orders",
            json={
                "channel_id": "web",
                "external_id": external_id,
                "currency": "EUR",
                "status": status,
                "payment_status": "paid" if status == "paid" else "pending",
                "totals": {"total": f"{total:.2f}"},
                "lines": list(lines),
                "customer": customer,
                "shipping_address": address,
                "placed_at": placed_at.isoformat(),
            },
        )
        assert response.status_code == 201, response.text
        order_id: str = response.json()["id"]
        return order_id

    async def history(self, order_id: str) -> list[dict[str, Any]]:
        response = await self.reader.get(f"/v1/orders/{order_id}/history")
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()
        return rows

    async def groups(self, order_id: str) -> list[dict[str, Any]]:
        response = await self.reader.get(f"/v1/orders/{order_id}/groups")
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()["data"]
        return rows

    async def events(self, type_: str) -> list[str]:
        rows = await self.query(
            self.hub, "SELECT order_id FROM events WHERE type = :t ORDER BY seq", t=type_
        )
        return [r[0] for r in rows]

    async def state(self, *order_ids: str) -> Any:
        """Everything a refused step must leave alone."""
        return (
            [await self.history(o) for o in order_ids],
            [await self.groups(o) for o in order_ids],
            await self.query(self.hub, "SELECT type, order_id FROM events ORDER BY seq"),
            await self.query(self.hub, "SELECT id, state FROM shipment_groups ORDER BY id"),
        )

    async def stock(self, sku: str, location_id: str, on_hand: int) -> None:
        response = await self.api.put(
            f"/v1/inventory/{sku}", json={"location_id": location_id, "on_hand": on_hand}
        )
        assert response.status_code == 200, response.text


OpenShop = Callable[..., Awaitable[Shop]]


@pytest.fixture
def open_shop(
    start_hub: HubStarter,
    database_url: str,
    sinks: Sinks,
    client_for: ClientFactory,
    query: Query,
) -> OpenShop:
    """`await open_shop(**merge_settings)`: a hub with two locations and an `erp` sink."""

    async def start(**merge: Any) -> Shop:
        hub = await start_hub(shop_settings(database_url, sinks, **merge), dispatch=False)
        return Shop(hub, client_for(hub, OPS_KEY), client_for(hub, READER_KEY), query)

    return start


@pytest.fixture
async def shop(open_shop: OpenShop) -> Shop:
    return await open_shop()


def shop_settings(database_url: str, sinks: Sinks, **merge: Any) -> Settings:
    return settings_from_mapping(
        {
            "database_url": database_url,
            "api_keys": [
                {
                    "id": "ops",
                    "key": OPS_KEY,
                    "scopes": [
                        "orders:read",
                        "orders:write",
                        "inventory:read",
                        "inventory:write",
                        "deliveries:read",
                    ],
                },
                {"id": "reader", "key": READER_KEY, "scopes": ["orders:read"]},
            ],
            "destinations": [
                {
                    "id": "erp",
                    "url": sinks.erp.events_url,
                    "secret": sinks.erp.secret,
                    "events": ["order.*"],
                    "retry_schedule": [0.05],
                    "retry_backoff": None,
                }
            ],
            "locations": [
                {"id": "berlin-dc", "kind": "warehouse", "region": "eu", "priority": 1},
                {"id": "paris-store", "kind": "store", "region": "eu", "priority": 2},
            ],
            "inventory": {"expiry_interval": 3600},
            "merge": {"window": 7200, **merge},
        },
        env={},
    )


async def merge(shop: Shop, *order_ids: str) -> httpx.Response:
    return await shop.api.post("/v1/groups/merge", json={"order_ids": list(order_ids)})


def causes(history: list[dict[str, Any]]) -> list[str]:
    return [h["cause"] for h in history]


async def test_merging_two_orders_of_one_buyer_and_address_makes_one_shipment(shop: Shop) -> None:
    """Mei Lin's teapot and, an hour later, her cups leave as one parcel; both histories say so."""
    teapot = await shop.order("1001")
    cups = await shop.order("1002", lines=(CUPS,), placed_at=PLACED + timedelta(hours=1))

    response = await merge(shop, cups, teapot)

    assert response.status_code == 201, response.text
    group = response.json()
    assert group["kind"] == "merge"
    assert sorted(group["order_ids"]) == sorted([teapot, cups])
    assert {(i["order_id"], i["sku"], i["quantity"]) for i in group["items"]} == {
        (teapot, "BLUE-TEAPOT", 1),
        (cups, "JADE-CUP", 4),
    }
    for order_id in (teapot, cups):
        history = await shop.history(order_id)
        assert causes(history)[-1] == "group:merge"
        assert history[-1]["changed"] == ["shipment_groups"]
        assert history[-1]["to_status"] == history[-1]["from_status"] == "paid"
        assert [g["id"] for g in await shop.groups(order_id)] == [group["id"]]
    assert sorted(await shop.events("order.merged")) == sorted([teapot, cups])
    routed = await shop.query(
        shop.hub,
        "SELECT d.destination_id FROM deliveries d JOIN events e ON e.seq = d.event_seq"
        " WHERE e.type = 'order.merged'",
    )
    assert [r[0] for r in routed] == ["erp", "erp"]
    (body,) = await shop.query(
        shop.hub, "SELECT body FROM events WHERE type = 'order.merged' AND order_id = :o", o=cups
    )
    event = orjson.loads(body[0])
    assert event["data"]["id"] == cups
    assert [g["id"] for g in event["data"]["shipment_groups"]] == [group["id"]]
    assert event["data"]["grouping_change"].startswith("merged orders")


@pytest.mark.parametrize(
    ("second", "status", "code"),
    [
        ({"address": OFFICE}, 422, "address_mismatch"),
        ({"placed_at": PLACED + timedelta(hours=3)}, 422, "outside_merge_window"),
        (
            {"customer": {"external_id": "cust-99", "name": "Someone Else"}},
            422,
            "buyer_mismatch",
        ),
        ({"status": "cancelled"}, 409, "order_not_open"),
    ],
    ids=["other-address", "outside-window", "other-buyer", "cancelled"],
)
async def test_a_merge_that_breaks_a_rule_is_refused_and_changes_nothing(
    shop: Shop, second: dict[str, Any], status: int, code: str
) -> None:
    """A parcel to the office, three hours later, someone else's, or cancelled: refused."""
    teapot = await shop.order("1001")
    other = await shop.order("1002", **second)
    before = await shop.state(teapot, other)

    response = await merge(shop, teapot, other)

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["type"].endswith("/" + code)
    assert await shop.state(teapot, other) == before


async def test_merge_needs_two_known_orders_and_the_write_scope(shop: Shop) -> None:
    """One order, an unknown order, or a read-only key: refused with a clear code."""
    teapot = await shop.order("1001")

    one = await merge(shop, teapot, teapot)
    unknown = await merge(shop, teapot, "ord_missing")
    read_only = await shop.reader.post("/v1/groups/merge", json={"order_ids": [teapot, "x"]})

    assert (one.status_code, one.json()["type"].rsplit("/", 1)[1]) == (
        422,
        "merge_needs_two_orders",
    )
    assert (unknown.status_code, unknown.json()["type"].rsplit("/", 1)[1]) == (
        404,
        "order_not_found",
    )
    assert read_only.status_code == 403
    assert await shop.groups(teapot) == [
        {
            "id": f"grp_{teapot}",
            "kind": "order",
            "state": "active",
            "location_id": None,
            "order_ids": [teapot],
            "items": [{"order_id": teapot, "sku": "BLUE-TEAPOT", "quantity": 1}],
            "made_from": [],
        }
    ]


async def test_unmerge_gives_back_exactly_the_original_shipments(shop: Shop) -> None:
    """Merged, then unmerged: each order ships on its own again, and both steps are history."""
    teapot = await shop.order("1001")
    cups = await shop.order("1002", lines=(CUPS,), placed_at=PLACED + timedelta(minutes=20))
    original = {o: await shop.groups(o) for o in (teapot, cups)}
    group_id = (await merge(shop, teapot, cups)).json()["id"]

    response = await shop.api.post(f"/v1/groups/{group_id}/unmerge")
    again = await shop.api.post(f"/v1/groups/{group_id}/unmerge")

    assert response.status_code == 200, response.text
    assert {o: await shop.groups(o) for o in (teapot, cups)} == original
    for order_id in (teapot, cups):
        assert causes(await shop.history(order_id))[-2:] == ["group:merge", "group:unmerge"]
    assert sorted(await shop.events("order.unmerged")) == sorted([teapot, cups])
    assert again.status_code == 409
    assert again.json()["type"].endswith("/group_not_active")
    merged = await shop.reader.get(f"/v1/groups/{group_id}")
    assert merged.json()["state"] == "retired"
    remerged = await merge(shop, teapot, cups)
    assert remerged.status_code == 201, remerged.text


async def test_merge_candidates_lists_orders_of_one_buyer_and_address_within_the_window(
    shop: Shop,
) -> None:
    """The teapot and the cups are candidates; the office order and next day's are not."""
    teapot = await shop.order("1001")
    cups = await shop.order("1002", lines=(CUPS,), placed_at=PLACED + timedelta(hours=1))
    await shop.order("1003", address=OFFICE)
    await shop.order("1004", placed_at=PLACED + timedelta(days=1))

    response = await shop.reader.get(
        "/v1/groups/merge-candidates", params={"since": "2000-01-01T00:00:00Z"}
    )

    assert response.status_code == 200, response.text
    assert [c["order_ids"] for c in response.json()["data"]] == [[teapot, cups]]
    await merge(shop, teapot, cups)
    after = await shop.reader.get(
        "/v1/groups/merge-candidates", params={"since": "2000-01-01T00:00:00Z"}
    )
    assert after.json()["data"] == []


async def test_split_by_location_then_join_round_trip(shop: Shop) -> None:
    """Teapot held in Berlin, cups in Paris: two parcels; joined, one parcel again."""
    await shop.stock("BLUE-TEAPOT", "berlin-dc", 5)
    await shop.stock("JADE-CUP", "paris-store", 40)
    order = await shop.order("1001", lines=(TEAPOT, CUPS))
    held = await shop.api.get(f"/v1/inventory/reservations/{order}")
    assert {(r["sku"], r["location_id"]) for r in held.json()["data"]} == {
        ("BLUE-TEAPOT", "berlin-dc"),
        ("JADE-CUP", "paris-store"),
    }, held.text
    original = await shop.groups(order)

    response = await shop.api.post(f"/v1/orders/{order}/split", json={"by": "location"})

    assert response.status_code == 200, response.text
    parts = response.json()["data"]
    assert [(p["location_id"], [i["sku"] for i in p["items"]]) for p in parts] == [
        ("berlin-dc", ["BLUE-TEAPOT"]),
        ("paris-store", ["JADE-CUP"]),
    ]
    assert [g["id"] for g in await shop.groups(order)] == [p["id"] for p in parts]
    assert causes(await shop.history(order))[-1] == "group:split"
    assert await shop.events("order.split") == [order]
    twice = await shop.api.post(f"/v1/orders/{order}/split", json={"by": "location"})
    assert (twice.status_code, twice.json()["type"].rsplit("/", 1)[1]) == (409, "already_split")

    joined = await shop.api.post(f"/v1/groups/{parts[1]['id']}/join")

    assert joined.status_code == 200, joined.text
    assert await shop.groups(order) == original
    assert causes(await shop.history(order))[-2:] == ["group:split", "group:join"]
    assert await shop.events("order.joined") == [order]


async def test_split_by_availability_keeps_what_waits_for_stock_apart(shop: Shop) -> None:
    """Only 1 of 4 cups is in stock: one parcel now, the rest waits; a bad `by` is a 422."""
    await shop.stock("JADE-CUP", "berlin-dc", 1)
    order = await shop.order("1001", lines=(CUPS,))

    response = await shop.api.post(f"/v1/orders/{order}/split", json={"by": "availability"})
    bad = await shop.api.post(f"/v1/orders/{order}/split", json={"by": "colour"})

    assert response.status_code == 200, response.text
    assert [[i["quantity"] for i in p["items"]] for p in response.json()["data"]] == [[1], [3]]
    assert bad.status_code == 422
    assert bad.json()["type"].endswith("/validation_error")


async def test_split_with_nothing_held_anywhere_is_refused(shop: Shop) -> None:
    """No stock, no reservations: splitting by location has nothing to go by."""
    order = await shop.order("1001", lines=(TEAPOT, CUPS))
    before = await shop.state(order)

    response = await shop.api.post(f"/v1/orders/{order}/split", json={"by": "location"})

    assert response.status_code == 409
    assert response.json()["type"].endswith("/no_allocations")
    assert await shop.state(order) == before


async def test_concurrent_merges_of_overlapping_orders_never_both_win(shop: Shop) -> None:
    """Three operators merge A+B, B+C and A+C at once: exactly one merge wins."""
    a = await shop.order("1001")
    b = await shop.order("1002", placed_at=PLACED + timedelta(minutes=10))
    c = await shop.order("1003", placed_at=PLACED + timedelta(minutes=20))

    responses = await asyncio.gather(merge(shop, a, b), merge(shop, b, c), merge(shop, a, c))

    outcomes = Counter(r.status_code for r in responses)
    assert outcomes == {201: 1, 409: 2}, [r.text for r in responses]
    assert {r.json()["type"].rsplit("/", 1)[1] for r in responses if r.status_code == 409} == {
        "order_already_grouped"
    }
    members = await shop.query(
        shop.hub, "SELECT order_id, COUNT(*) FROM shipment_group_members GROUP BY order_id"
    )
    assert len(members) == 2
    assert all(n == 1 for _, n in members)
    assert len(await shop.events("order.merged")) == 2


async def test_a_repeated_merge_under_one_idempotency_key_replays_the_first_answer(
    shop: Shop,
) -> None:
    """The same key and body: the same group, once; the key on another body is a 422."""
    teapot = await shop.order("1001")
    cups = await shop.order("1002", lines=(CUPS,), placed_at=PLACED + timedelta(minutes=5))
    headers = {"Idempotency-Key": "merge-meilin-1"}

    first = await shop.api.post(
        "/v1/groups/merge", json={"order_ids": [teapot, cups]}, headers=headers
    )
    again = await shop.api.post(
        "/v1/groups/merge", json={"order_ids": [teapot, cups]}, headers=headers
    )
    other = await shop.api.post(
        "/v1/groups/merge", json={"order_ids": [cups, teapot]}, headers=headers
    )

    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 422
    assert other.json()["type"].endswith("/idempotency_key_reused")
    assert sorted(await shop.events("order.merged")) == sorted([teapot, cups])
    assert causes(await shop.history(teapot)).count("group:merge") == 1


async def test_unknown_groups_and_read_only_keys_are_refused(shop: Shop) -> None:
    """No such group is a 404; a read-only key may look but not split, unmerge or join."""
    order = await shop.order("1001")

    missing = await shop.api.post("/v1/groups/grp_nowhere/unmerge")
    looked = await shop.reader.get(f"/v1/orders/{order}/groups")
    split = await shop.reader.post(f"/v1/orders/{order}/split", json={"by": "location"})
    join = await shop.reader.post(f"/v1/groups/grp_{order}/join")
    not_a_part = await shop.api.post(f"/v1/groups/grp_{order}/join")

    assert (missing.status_code, missing.json()["type"].rsplit("/", 1)[1]) == (
        404,
        "group_not_found",
    )
    assert looked.status_code == 200
    assert split.status_code == join.status_code == 403
    assert not_a_part.status_code == 404  # an order shipping as placed has no stored group


async def test_the_auto_merge_sweep_merges_every_candidate_set_once(shop: Shop) -> None:
    """The sweep merges the teapot and the cups; a second sweep finds nothing left to do."""
    teapot = await shop.order("1001")
    cups = await shop.order("1002", lines=(CUPS,), placed_at=PLACED + timedelta(minutes=30))
    office = await shop.order("1003", address=OFFICE)
    grouping = shop.hub.grouping
    assert grouping is not None

    made = await grouping.auto_merge()
    again = await grouping.auto_merge()

    assert len(made) == 1
    assert again == []
    assert [g["id"] for g in await shop.groups(teapot)] == made
    assert [g["id"] for g in await shop.groups(cups)] == made
    assert [g["kind"] for g in await shop.groups(office)] == ["order"]
    assert causes(await shop.history(cups))[-1] == "group:merge"


async def test_a_hub_with_merge_auto_merges_by_itself(open_shop: OpenShop) -> None:
    """`merge.auto: true`: orders of one buyer to one address end up in one shipment."""
    shop = await open_shop(auto=True, auto_interval=0.05)
    teapot = await shop.order("1001")
    cups = await shop.order("1002", lines=(CUPS,), placed_at=PLACED + timedelta(minutes=30))

    for _ in range(500):  # 10 s at most: a deadline, not a timing assertion
        if [g["kind"] for g in await shop.groups(teapot)] == ["merge"]:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the auto-merge sweep did not merge the orders")

    (group,) = await shop.groups(cups)
    assert sorted(group["order_ids"]) == sorted([teapot, cups])
