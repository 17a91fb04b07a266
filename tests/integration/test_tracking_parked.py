"""Carrier callbacks that keep failing to apply: retried with backoff, parked after
`callback_retry.max_attempts` failures (an alert, counted in the alert metrics), listed by
the API and replayed once by an operator. The failure is a recorded update this version
cannot read (its stored doc broken by hand); the clock is moved by hand."""

from __future__ import annotations

from typing import Any

from ordersync.domain.shipments import CallbackRetry

from . import test_tracking_async
from .conftest import Query
from .test_orders_api import problem_of
from .test_shipments_api import event_types, shipments_of
from .test_tracking_async import K100, Start, inbox, raised_total, svc
from .tracking_rig import SECOND, a_broken_callback, outcomes_at, store_update_doc, the_parked
from .tracking_rig import inbox_attempts as attempts

sim = test_tracking_async.sim  # the fixtures: the carrier simulator, and hubs on it
start = test_tracking_async.start

PARKED_RULE = "shipment.callback_parked"


# Three attempts, 10 s then 20 s apart (the defaults would be 10, from 5 s).
THREE_TRIES = CallbackRetry(max_attempts=3, base=10 * SECOND, cap=SECOND * 25)


async def park(w: Any, query: Query, number: str) -> None:
    """Three failed attempts, each at its retry time."""
    await outcomes_at(w, query, number, 0, 10, 30)


async def test_a_failing_callback_is_retried_with_backoff_then_parked_with_one_alert(
    start: Start, query: Query
) -> None:
    """Three attempts at 0 s, 10 s and 30 s (never in between), then parked: no more
    attempts, listed with its error, one `shipment.callback_parked` alert and metric."""
    w = await start()
    order_id, number, _ = await a_broken_callback(w, query, THREE_TRIES)
    seen = await outcomes_at(w, query, number, 0, 1, 9, 10, 11, 29, 30, 31, 600, 6000)

    assert seen == [
        (0, ("received", 1)),
        (1, ("received", 1)),
        (9, ("received", 1)),
        (10, ("received", 2)),
        (11, ("received", 2)),
        (29, ("received", 2)),
        (30, ("parked", 3)),
        (31, ("parked", 3)),
        (600, ("parked", 3)),
        (6000, ("parked", 3)),
    ]
    listed = (await w.api.get("/v1/carrier-callbacks/parked")).json()["data"]
    assert [(p["tracking_number"], p["order_id"], p["attempts"]) for p in listed] == [
        (number, order_id, 3)
    ]
    assert listed[0]["last_error"].startswith("KeyError")
    alerts = (await w.api.get("/v1/alerts")).json()["data"]
    assert [a["rule"] for a in alerts] == [PARKED_RULE]
    assert raised_total(w, PARKED_RULE) == 1
    assert (await event_types(query, w.hub, order_id)).count("alert.raised") == 1
    [shipment] = await shipments_of(w, order_id)
    assert shipment["events"] == []


async def test_a_replayed_parked_callback_applies_once(start: Start, query: Query) -> None:
    """Parked, then mended and replayed: applied once; a second replay is a 409 and
    changes nothing, nor does a later sweep."""
    w = await start()
    order_id, number, good = await a_broken_callback(w, query, THREE_TRIES)
    await park(w, query, number)
    _, url = await the_parked(w)
    await store_update_doc(w, number, good)

    first = await w.api.post(url)
    again = await w.api.post(url)
    await svc(w).process_received()

    assert first.status_code == 200
    assert first.json()["outcome"] == "applied"
    problem_of(again, 409, "callback_not_parked")
    assert await inbox(query, w.hub, number) == ["applied"]
    assert (await w.api.get("/v1/carrier-callbacks/parked")).json()["data"] == []
    [shipment] = await shipments_of(w, order_id)
    assert [e["raw_code"] for e in shipment["events"]] == ["103", "1002"]
    assert (await event_types(query, w.hub, order_id)).count("shipment.updated") == 1


async def test_bad_replay_requests_get_problems_and_change_nothing(
    start: Start, query: Query
) -> None:
    """Unknown callback 404, unknown carrier 404, no key 401, read-only key 403: the
    parked callback stays parked."""
    w = await start()
    _, number, _ = await a_broken_callback(w, query, THREE_TRIES)
    await park(w, query, number)
    parked, own = await the_parked(w)

    unknown = await w.api.post(f"/v1/carrier-callbacks/{K100}/cb-missing/replay")
    no_carrier = await w.api.post(f"/v1/carrier-callbacks/nowhere/{parked['callback_id']}/replay")
    anonymous = await w.carrier.post(own)

    problem_of(unknown, 404, "callback_not_found")
    problem_of(no_carrier, 404, "carrier_not_found")
    problem_of(anonymous, 401, "unauthorized")
    assert await attempts(query, w, number) == [("parked", 3)]


async def test_a_replay_that_fails_again_is_retried_and_parked_anew(
    start: Start, query: Query
) -> None:
    """Replayed unmended: `failed`, back to `received` with one attempt counted, and parked
    again after the full number of attempts (a second alert is not raised)."""
    w = await start()
    order_id, number, _ = await a_broken_callback(w, query, THREE_TRIES)
    await park(w, query, number)
    _, url = await the_parked(w)

    replayed = await w.api.post(url)
    after_replay = await attempts(query, w, number)
    await park(w, query, number)

    assert (replayed.status_code, replayed.json()["outcome"]) == (200, "failed")
    assert after_replay == [("received", 1)]
    assert await attempts(query, w, number) == [("parked", 3)]
    assert (await event_types(query, w.hub, order_id)).count("alert.raised") == 1
