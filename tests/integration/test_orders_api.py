"""The native order API on a real database: create, idempotency, listing, history, status."""

from __future__ import annotations

import base64
from typing import Any

import httpx

PROBLEM_JSON = "application/problem+json"


def matcha_order(external_id: str = "POS-BERLIN-0001", **changes: Any) -> dict[str, Any]:
    """Two matcha whisks sold at the Berlin shop's till, paid later."""
    order: dict[str, Any] = {
        "channel_id": "pos-berlin",
        "external_id": external_id,
        "name": "Berlin till #1",
        "currency": "EUR",
        "totals": {"subtotal": "24.00", "shipping": "0", "tax": "4.56", "total": "28.56"},
        "lines": [
            {"sku": "MATCHA-WHISK", "name": "Matcha whisk", "quantity": 2, "unit_price": "12.00"}
        ],
        "customer": {"email": "juergen.mueller@example.com", "name": "Jürgen Müller"},
        "placed_at": "2026-11-22T10:00:00+01:00",
    }
    order.update(changes)
    return order


async def create(api: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.post("/v1/orders", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def problem_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem: dict[str, Any] = response.json()
    assert problem["type"] == f"https://ordersync.dev/problems/{code}"
    assert problem["status"] == status
    return problem


async def test_creating_an_order_returns_201_and_the_stored_order(api: httpx.AsyncClient) -> None:
    """Amounts come back as the same decimal strings; the line total is derived exactly."""
    response = await api.post("/v1/orders", json=matcha_order())
    order = response.json()
    stored = (await api.get(f"/v1/orders/{order['id']}")).json()

    assert response.status_code == 201
    assert order["id"].startswith("ord_")
    assert (order["channel_id"], order["external_id"]) == ("pos-berlin", "POS-BERLIN-0001")
    assert (order["status"], order["payment_status"], order["version"]) == (
        "pending",
        "pending",
        1,
    )
    assert order["totals"] == {
        "subtotal": "24.00",
        "shipping": "0",
        "tax": "4.56",
        "discount": None,
        "total": "28.56",
    }
    assert order["lines"][0]["total"] == "24.00"
    assert order["placed_at"] == "2026-11-22T09:00:00Z"
    assert stored == order


async def test_the_same_idempotency_key_and_body_replays_the_stored_response(
    api: httpx.AsyncClient,
) -> None:
    """Stripe semantics: a retried POST gets the first answer again, and creates nothing."""
    headers = {"Idempotency-Key": "till-berlin-2026-11-22-0001"}
    first = await api.post("/v1/orders", json=matcha_order(), headers=headers)
    again = await api.post("/v1/orders", json=matcha_order(), headers=headers)
    listed = (await api.get("/v1/orders")).json()["data"]

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert [o["id"] for o in listed] == [first.json()["id"]]


async def test_the_same_idempotency_key_with_another_body_is_a_422(
    api: httpx.AsyncClient,
) -> None:
    """A key names one request; reusing it for a different one is the client's bug."""
    headers = {"Idempotency-Key": "till-berlin-2026-11-22-0002"}
    await api.post("/v1/orders", json=matcha_order(), headers=headers)
    other = await api.post(
        "/v1/orders", json=matcha_order(external_id="POS-BERLIN-0099"), headers=headers
    )
    listed = (await api.get("/v1/orders")).json()["data"]

    problem_of(other, 422, "idempotency_key_reused")
    assert [o["external_id"] for o in listed] == ["POS-BERLIN-0001"]


async def test_a_duplicate_external_id_without_a_key_is_a_409_naming_the_order(
    api: httpx.AsyncClient,
) -> None:
    """One (channel_id, external_id) is one order."""
    original = await create(api, matcha_order())
    duplicate = await api.post("/v1/orders", json=matcha_order())

    problem = problem_of(duplicate, 409, "order_exists")
    assert problem["order_id"] == original["id"]


async def test_money_sent_as_json_floats_is_refused_with_a_422(api: httpx.AsyncClient) -> None:
    """19.9 as a float might be 19.899999...; only decimal strings are money."""
    body = matcha_order(totals={"total": 28.56})
    body["lines"][0]["unit_price"] = 12.0
    response = await api.post("/v1/orders", json=body)
    listed = (await api.get("/v1/orders")).json()["data"]

    problem = problem_of(response, 422, "validation_error")
    assert {e["path"] for e in problem["errors"]} == {
        "body.totals.total",
        "body.lines.0.unit_price",
    }
    assert listed == []


async def test_listing_filters_by_channel_status_and_external_id(api: httpx.AsyncClient) -> None:
    """Each filter narrows to exactly the orders it names."""
    berlin_1 = await create(api, matcha_order("POS-BERLIN-0001"))
    berlin_2 = await create(api, matcha_order("POS-BERLIN-0002", status="paid"))
    munich = await create(
        api, matcha_order("POS-MUNICH-0001", channel_id="pos-munich", status="paid")
    )

    async def ids(**params: str) -> list[str]:
        response = await api.get("/v1/orders", params=params)
        assert response.status_code == 200, response.text
        return sorted(o["id"] for o in response.json()["data"])

    assert await ids(channel_id="pos-berlin") == sorted([berlin_1["id"], berlin_2["id"]])
    assert await ids(status="paid") == sorted([berlin_2["id"], munich["id"]])
    assert await ids(channel_id="pos-berlin", status="pending") == [berlin_1["id"]]
    assert await ids(external_id="POS-MUNICH-0001") == [munich["id"]]
    assert await ids(channel_id="pos-hamburg") == []


async def test_cursor_pagination_sees_every_order_exactly_once(api: httpx.AsyncClient) -> None:
    """Seven orders, three per page: pages of 3, 3 and 1, and no cursor after the last."""
    created = [(await create(api, matcha_order(f"POS-BERLIN-{n:04d}")))["id"] for n in range(7)]
    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _ in range(10):
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/orders", params=params)).json()
        seen += [o["id"] for o in page["data"]]
        sizes.append(len(page["data"]))
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert sizes == [3, 3, 1]
    assert sorted(seen) == sorted(created)
    assert len(set(seen)) == 7


async def test_without_locations_listed_orders_are_exactly_the_stored_orders(
    api: httpx.AsyncClient,
) -> None:
    """Inventory off: the list adds no `allocations` or `routing`, and matches GET."""
    created = await create(api, matcha_order())

    (listed,) = (await api.get("/v1/orders")).json()["data"]
    fetched = (await api.get(f"/v1/orders/{created['id']}")).json()

    assert listed == fetched == created
    assert "routing" not in listed
    assert "allocations" not in listed["lines"][0]


async def test_an_invalid_cursor_is_a_400_problem(api: httpx.AsyncClient) -> None:
    """Cursors are opaque: one we did not issue is refused, not guessed at."""
    response = await api.get("/v1/orders", params={"cursor": "not-a-cursor!!"})

    problem_of(response, 400, "invalid_cursor")


async def test_an_unknown_order_is_a_404_problem(api: httpx.AsyncClient) -> None:
    """Both the order and its history."""
    missing = "ord_01ARZ3NDEKTSV4RRFFQ69G5FAV"

    problem_of(await api.get(f"/v1/orders/{missing}"), 404, "order_not_found")
    problem_of(await api.get(f"/v1/orders/{missing}/history"), 404, "order_not_found")


async def test_history_records_each_change_with_its_cause(api: httpx.AsyncClient) -> None:
    """Created by the API, then paid by the operator key `ops`."""
    order = await create(api, matcha_order())
    paid = await api.post(f"/v1/orders/{order['id']}/status", json={"status": "paid"})
    history = (await api.get(f"/v1/orders/{order['id']}/history")).json()

    assert paid.status_code == 200, paid.text
    assert (paid.json()["status"], paid.json()["version"]) == ("paid", 2)
    assert [(h["version"], h["from_status"], h["to_status"], h["cause"]) for h in history] == [
        (1, None, "pending", "api:create"),
        (2, "pending", "paid", "api:ops"),
    ]
    assert all(h["at"].endswith("Z") for h in history)


async def test_an_illegal_transition_is_a_409_problem_and_changes_nothing(
    api: httpx.AsyncClient,
) -> None:
    """An unpaid, unshipped order cannot be delivered."""
    order = await create(api, matcha_order())
    response = await api.post(f"/v1/orders/{order['id']}/status", json={"status": "delivered"})
    after = (await api.get(f"/v1/orders/{order['id']}")).json()

    problem = problem_of(response, 409, "invalid_transition")
    assert (problem["current"], problem["target"]) == ("pending", "delivered")
    assert after == order


async def test_a_held_order_is_released_back_to_the_status_it_was_held_from(
    api: httpx.AsyncClient,
) -> None:
    """Paid, held for suspected fraud, released: paid again, reasons cleared, version 3."""
    order = await create(api, matcha_order(status="paid", payment_status="paid"))
    held = await api.post(
        f"/v1/orders/{order['id']}/status",
        json={"status": "on_hold", "hold_reasons": ["suspected_fraud"]},
    )
    released = await api.post(f"/v1/orders/{order['id']}/release")
    history = (await api.get(f"/v1/orders/{order['id']}/history")).json()

    assert held.status_code == 200, held.text
    assert (held.json()["status"], held.json()["held_from"], held.json()["hold_reasons"]) == (
        "on_hold",
        "paid",
        ["suspected_fraud"],
    )
    assert released.status_code == 200, released.text
    assert (released.json()["status"], released.json()["held_from"]) == ("paid", None)
    assert released.json()["hold_reasons"] == []
    assert released.json()["version"] == 3
    assert [h["to_status"] for h in history] == ["paid", "on_hold", "paid"]


async def test_holding_without_a_reason_or_releasing_an_unheld_order_is_refused(
    api: httpx.AsyncClient,
) -> None:
    """A hold must say why; only a held order can be released."""
    order = await create(api, matcha_order())
    no_reason = await api.post(f"/v1/orders/{order['id']}/status", json={"status": "on_hold"})
    not_held = await api.post(f"/v1/orders/{order['id']}/release")
    after = (await api.get(f"/v1/orders/{order['id']}")).json()

    problem_of(no_reason, 422, "invalid_order")
    problem_of(not_held, 422, "invalid_order")
    assert after["version"] == 1


async def test_text_with_a_nul_character_gets_the_same_answer_on_every_backend(
    api: httpx.AsyncClient,
) -> None:
    """SQLite stores U+0000, PostgreSQL text cannot: the API must not answer 5xx for it."""
    created = await api.post("/v1/orders", json=matcha_order(external_id="POS-BERLIN-\x000001"))
    cursor = base64.urlsafe_b64encode(b'"ord_\\u0000"').decode().rstrip("=")
    listed = await api.get("/v1/orders", params={"cursor": cursor})

    assert created.status_code == 422
    assert listed.status_code == 400
