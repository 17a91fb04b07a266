"""Bulk replay of parked carrier callbacks (`POST /v1/carrier-callbacks/parked/replay`) on a
real database: once the cause of an outage is mended, the operator puts back every parked
callback matching the filters (carrier, parked time window, error text; the oldest `limit`)
in one request, and the processor applies them as usual. The failures are recorded updates
this version cannot read (their stored docs broken by hand, two ways for two error texts);
the clock is moved by hand."""

from __future__ import annotations

from typing import Any

import orjson

from ordersync.domain.shipments import CallbackRetry

from . import test_tracking_async
from .conftest import DASHBOARD_KEY, ClientFactory, Query
from .test_orders_api import problem_of
from .test_shipments_api import (
    BOOKED,
    CARRIER_IDS,
    JOURNEYS,
    H,
    World,
    assert_acked,
    book,
    new_order,
    order_status,
    push,
    shipments_of,
)
from .test_tracking_async import K100, Start, eventually, hold, inbox, svc
from .tracking_rig import SECOND, UNREADABLE, outcomes_at, store_update_doc
from .tracking_rig import inbox_attempts as attempts

sim = test_tracking_async.sim  # the fixtures: the carrier simulator, and hubs on it
start = test_tracking_async.start

KDN = CARRIER_IDS["kdniao"]
URL = "/v1/carrier-callbacks/parked/replay"
# Three attempts, 10 s then 20 s apart: parked 30 s after the first.
THREE_TRIES = CallbackRetry(max_attempts=3, base=10 * SECOND, cap=25 * SECOND)


class Parcel:
    """An order with one parcel whose one pushed callback cannot be applied."""

    def __init__(self, order_id: str, number: str, good: str) -> None:
        self.order_id, self.number, self.good = order_id, number, good


async def broken(
    w: World, query: Query, kind: str, name: str, *, bad_state: bool = False
) -> Parcel:
    """Book with `kind`, push two tracking events (picked up, in transit), and break the
    recorded update: unreadable (a KeyError) or with an unknown status (a ValueError)."""
    order_id = await new_order(w, f"POS-BULK-{name}")
    number = (await book(w, order_id, CARRIER_IDS[kind]))["tracking_number"]
    for hours, code, wording, place in JOURNEYS[kind][:2]:
        w.sim.add_trace(number, code, wording, BOOKED + hours * H, place)
    assert_acked(kind, await push(w, kind, number), w.sim)
    [(good,)] = await query(
        w.hub, "SELECT update_doc FROM carrier_inbox WHERE tracking_number = :n", n=number
    )
    doc = UNREADABLE
    if bad_state:
        doc = orjson.dumps({**orjson.loads(good), "state": "teleported"}).decode()
    await store_update_doc(w, number, doc)
    return Parcel(order_id, number, str(good))


async def park(w: World, query: Query, parcel: Parcel) -> None:
    """Three failed attempts, each at its retry time (the clock ends 30 s later)."""
    seen = await outcomes_at(w, query, parcel.number, 0, 10, 30)
    assert seen[-1] == (30, ("parked", 3))


async def parked(w: World) -> dict[str, dict[str, Any]]:
    """The parked callbacks as the API lists them, by tracking number (oldest first)."""
    response = await w.api.get("/v1/carrier-callbacks/parked")
    assert response.status_code == 200, response.text
    return {p["tracking_number"]: p for p in response.json()["data"]}


async def replay(w: World, **filters: Any) -> list[str]:
    """Bulk replay; the callback ids put back (checked against the count)."""
    response = await w.api.post(URL, json=filters)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["replayed"] == len(body["ids"])
    ids: list[str] = body["ids"]
    return ids


async def mend(w: World, *parcels: Parcel) -> None:
    for p in parcels:
        await store_update_doc(w, p.number, p.good)


async def state(w: World, query: Query, parcel: Parcel) -> tuple[str, str, list[str]]:
    """(shipment status, order status, callback outcomes) of `parcel`."""
    [shipment] = await shipments_of(w, parcel.order_id)
    outcomes = await inbox(query, w.hub, parcel.number)
    return shipment["status"], await order_status(w, parcel.order_id), outcomes


async def four_parked(w: World, query: Query) -> dict[str, Parcel]:
    """Parked 30 s apart, oldest first: a, b (Kuaidi100, KeyError), c (Kdniao, KeyError),
    d (Kuaidi100, ValueError)."""
    await hold(w)
    svc(w).callback_retry = THREE_TRIES
    out: dict[str, Parcel] = {}
    for name, kind, bad_state in [
        ("a", "kuaidi100", False),
        ("b", "kuaidi100", False),
        ("c", "kdniao", False),
        ("d", "kuaidi100", True),
    ]:
        out[name] = await broken(w, query, kind, name, bad_state=bad_state)
        await park(w, query, out[name])
    return out


async def test_filters_put_back_exactly_the_matching_callbacks_which_then_apply(
    start: Start, query: Query
) -> None:
    """Carrier, error text and parked window each select exactly their callbacks; those
    are applied once the cause is mended (the shipment and the order move), the others
    stay parked, and a repeated request puts back nothing."""
    w = await start()
    ps = await four_parked(w, query)
    listed = await parked(w)
    ids = {name: listed[p.number]["callback_id"] for name, p in ps.items()}
    assert [listed[p.number]["carrier_id"] for p in ps.values()] == [K100, K100, KDN, K100]
    assert listed[ps["d"].number]["last_error"].startswith("ValueError")
    assert listed[ps["a"].number]["last_error"].startswith("KeyError")
    before = await state(w, query, ps["a"])
    await mend(w, *ps.values())

    by_carrier = await replay(w, carrier=KDN)
    by_error = await replay(w, error_contains="is not a valid ShipmentStatus")
    b_at = listed[ps["b"].number]["parked_at"]
    by_before = await replay(w, parked_before=b_at)  # strictly before b: a
    still = set(await parked(w))
    by_window = await replay(w, parked_after=b_at, parked_before="2100-01-01T00:00:00Z")
    again = await replay(w, carrier=KDN)
    await svc(w).process_received()

    assert (by_carrier, by_error, by_before) == ([ids["c"]], [ids["d"]], [ids["a"]])
    assert still == {ps["b"].number}
    assert by_window == [ids["b"]]
    assert again == []
    assert before == ("pending", "pending", ["parked"])
    for p in ps.values():
        assert await state(w, query, p) == ("in_transit", "shipped", ["applied"])
    assert await parked(w) == {}
    assert await replay(w) == []


async def test_callbacks_not_matching_stay_parked_while_the_matching_ones_apply(
    start: Start, query: Query
) -> None:
    """Kuaidi100 callbacks with the KeyError, mended and replayed: applied; the Kdniao one
    and the one with another error are neither replayed nor retried by later sweeps."""
    w = await start()
    ps = await four_parked(w, query)
    await mend(w, *ps.values())

    replayed = await replay(w, carrier=K100, error_contains="KeyError")
    await outcomes_at(w, query, ps["a"].number, 0, 600, 6000)

    listed = await parked(w)
    assert len(replayed) == 2
    assert set(listed) == {ps["c"].number, ps["d"].number}
    for name in "ab":
        assert await state(w, query, ps[name]) == ("in_transit", "shipped", ["applied"])
    for name in "cd":
        assert await state(w, query, ps[name]) == ("pending", "pending", ["parked"])
        assert await attempts(query, w, ps[name].number) == [("parked", 3)]


async def test_the_limit_takes_the_oldest_first_and_repeats_put_back_nothing_new(
    start: Start, query: Query
) -> None:
    """`limit` 2 of four: the two parked first; the next request the next two; then none,
    also after they are applied. Replayed callbacks start their attempts from zero."""
    w = await start()
    ps = await four_parked(w, query)
    order = [c["callback_id"] for c in (await parked(w)).values()]

    first = await replay(w, limit=2)
    after_first = {name: await attempts(query, w, p.number) for name, p in ps.items()}
    second = await replay(w, limit=2)
    third = await replay(w, limit=2)
    await mend(w, *ps.values())
    await svc(w).process_received()
    fourth = await replay(w)

    assert (first, second, third, fourth) == (order[:2], order[2:], [], [])
    assert after_first == {
        "a": [("received", 0)],
        "b": [("received", 0)],
        "c": [("parked", 3)],
        "d": [("parked", 3)],
    }
    for p in ps.values():
        assert await state(w, query, p) == ("in_transit", "shipped", ["applied"])


async def test_the_running_processor_is_woken_and_applies_the_replayed_callbacks(
    start: Start, query: Query
) -> None:
    """With no sweep running, only the wake of the replay gets them applied."""
    w = await start()
    ps = await four_parked(w, query)
    await mend(w, *ps.values())
    svc(w).start(sweep=False)

    replayed = await replay(w, error_contains="KeyError")

    async def applied() -> bool:
        outcomes = [await inbox(query, w.hub, ps[n].number) for n in "abc"]
        return outcomes == [["applied"]] * 3

    await eventually(applied, "the replayed callbacks applied by the processor")
    assert len(replayed) == 3
    assert await state(w, query, ps["c"]) == ("in_transit", "shipped", ["applied"])
    assert set(await parked(w)) == {ps["d"].number}


async def test_bad_bulk_replay_requests_get_problems_and_change_nothing(
    start: Start, query: Query, client_for: ClientFactory
) -> None:
    """Out-of-range limit, a time without offset or not a time, an empty window, an empty
    error text, an unknown field, no body: 422 problems; unknown carrier 404; no key 401;
    a read-only key 403. Everything stays parked."""
    w = await start()
    await hold(w)
    svc(w).callback_retry = THREE_TRIES
    p = await broken(w, query, "kuaidi100", "x")
    await park(w, query, p)

    invalid = [
        {"limit": 0},
        {"limit": 10_001},
        {"limit": "many"},
        {"parked_before": "2026-11-20T01:00:00"},
        {"parked_after": "yesterday"},
        {"error_contains": ""},
        {"carrier_id": K100},
        {"carrier": ""},
    ]
    for body in invalid:
        problem = problem_of(await w.api.post(URL, json=body), 422, "validation_error")
        assert problem["errors"], body
    problem_of(
        await w.api.post(
            URL,
            json={"parked_after": "2026-11-21T00:00:00Z", "parked_before": "2026-11-20T00:00:00Z"},
        ),
        422,
        "invalid_window",
    )
    problem_of(await w.api.post(URL), 422, "validation_error")
    problem_of(await w.api.post(URL, json={"carrier": "nowhere"}), 404, "carrier_not_found")
    problem_of(await w.carrier.post(URL, json={}), 401, "unauthorized")
    problem_of(await client_for(w.hub, DASHBOARD_KEY).post(URL, json={}), 403, "forbidden")

    assert await attempts(query, w, p.number) == [("parked", 3)]
    assert list(await parked(w)) == [p.number]
