"""A carrier callback that keeps failing, on a real database, for the tests of parking and
replaying callbacks (test_tracking_parked, test_parked_metric): the failure is a recorded
update this version cannot read (its stored doc broken by hand)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ordersync.domain.shipments import CallbackRetry

from .conftest import Query
from .test_shipments_api import World, assert_acked, book, new_order, push
from .test_tracking_async import K100, execute, hold, journey, svc

SECOND = timedelta(seconds=1)
UNREADABLE = '{"written_by": "a later version"}'


async def inbox_attempts(query: Query, w: World, number: str) -> list[tuple[str, int]]:
    """(outcome, attempts) of each callback recorded for `number`, oldest first."""
    rows = await query(
        w.hub,
        "SELECT outcome, attempts FROM carrier_inbox WHERE tracking_number = :n ORDER BY seq",
        n=number,
    )
    return [(str(o), int(a)) for o, a in rows]


async def outcomes_at(
    w: World, query: Query, number: str, *seconds: int
) -> list[tuple[int, tuple[str, int]]]:
    """Process the received callbacks at each of `seconds` from now (the clock moved there
    by hand); after each, (seconds, (outcome, attempts)) of `number`'s first callback."""
    t0 = w.clock.now
    seen: list[tuple[int, tuple[str, int]]] = []
    for offset in seconds:
        w.clock.now = t0 + offset * SECOND
        await svc(w).process_received()
        seen.append((offset, (await inbox_attempts(query, w, number))[0]))
    return seen


async def store_update_doc(w: World, number: str, doc: str) -> None:
    """Overwrite the stored update of `number`'s callback (to break or to mend it)."""
    await execute(
        w.hub,
        "UPDATE carrier_inbox SET update_doc = :d WHERE tracking_number = :n",
        d=doc,
        n=number,
    )


async def a_broken_callback(
    w: World, query: Query, retry: CallbackRetry | None = None
) -> tuple[str, str, str]:
    """A pushed callback whose stored update cannot be read: (order, number, good doc).
    Callbacks are held (not applied) until the test processes them; `retry`, if given,
    replaces the service's retry policy."""
    await hold(w)
    if retry is not None:
        svc(w).callback_retry = retry
    order_id = await new_order(w)
    number = (await book(w, order_id, K100))["tracking_number"]
    journey(w, number, upto=2)
    assert_acked("kuaidi100", await push(w, "kuaidi100", number), w.sim)
    [(doc,)] = await query(
        w.hub, "SELECT update_doc FROM carrier_inbox WHERE tracking_number = :n", n=number
    )
    await store_update_doc(w, number, UNREADABLE)
    return order_id, number, str(doc)


async def the_parked(w: World) -> tuple[dict[str, Any], str]:
    """The one parked callback as the API lists it, and its replay URL."""
    response = await w.api.get("/v1/carrier-callbacks/parked")
    assert response.status_code == 200, response.text
    [parked] = response.json()["data"]
    url = f"/v1/carrier-callbacks/{parked['carrier_id']}/{parked['callback_id']}/replay"
    return parked, url
