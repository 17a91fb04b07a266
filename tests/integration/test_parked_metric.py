"""Parked carrier callbacks on a real database: the `tracking.callback_retry` block decides
when a callback that keeps failing is parked, and `ordersync_carrier_callbacks_parked`
(scraped from /metrics) counts the callbacks waiting for an operator. The failure is a
recorded update this version cannot read (its stored doc broken by hand); the clock is
moved by hand."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ordersync.config import CallbackRetryConfig, TrackingConfig

from . import test_tracking_async
from .conftest import Query
from .test_shipments_api import World
from .test_tracking_async import Start, svc
from .tracking_rig import a_broken_callback, outcomes_at, store_update_doc, the_parked

sim = test_tracking_async.sim  # the fixtures: the carrier simulator, and hubs on it
start = test_tracking_async.start

GAUGE = "ordersync_carrier_callbacks_parked"
# Two attempts a minute apart, then parked (the defaults would be 10, from 5 s).
TWO_TRIES = TrackingConfig(
    callback_retry=CallbackRetryConfig(max_attempts=2, base_seconds=60, cap_seconds=60)
)


async def scraped(w: World) -> float:
    """The gauge's value as Prometheus reads it from /metrics."""
    response = await w.api.get("/metrics")
    assert response.status_code == 200, response.text
    [family] = [f for f in text_string_to_metric_families(response.text) if f.name == GAUGE]
    assert family.type == "gauge"
    [sample] = family.samples
    return float(sample.value)


async def test_the_configured_callback_retry_decides_when_a_callback_is_parked(
    start: Start, query: Query
) -> None:
    """`tracking.callback_retry` of 2 attempts 60 s apart: retried at 60 s (not at 59 s),
    then parked, where the built-in policy would still be retrying."""
    w = await start(tracking=TWO_TRIES)
    _, number, _ = await a_broken_callback(w, query)
    seen = await outcomes_at(w, query, number, 0, 59, 60, 6000)

    assert seen == [
        (0, ("received", 1)),
        (59, ("received", 1)),
        (60, ("parked", 2)),
        (6000, ("parked", 2)),
    ]


async def test_the_parked_gauge_is_scraped_from_metrics_with_what_its_observer_reports(
    start: Start,
) -> None:
    """/metrics serves the gauge (0 before anything is counted) and the count reported."""
    w = await start()
    before = await scraped(w)

    observer: Any = w.hub.metrics.alert_observer()  # what ShipmentService reports to
    observer.parked_callbacks(3)

    assert before == 0
    assert await scraped(w) == 3


async def test_the_parked_gauge_counts_parked_callbacks_until_they_are_replayed(
    start: Start, query: Query
) -> None:
    """Parked: the gauge reads 1 on the next refresh; mended and replayed: back to 0."""
    w = await start(tracking=TWO_TRIES)
    _, number, good = await a_broken_callback(w, query)
    await svc(w).refresh_open_alerts()  # what the hub's gauge loop runs every 5 s
    none_yet = await scraped(w)
    await outcomes_at(w, query, number, 0, 60)  # parked at the second attempt
    await svc(w).refresh_open_alerts()
    while_parked = await scraped(w)
    _, replay = await the_parked(w)
    await store_update_doc(w, number, good)
    replayed = await w.api.post(replay)
    await svc(w).refresh_open_alerts()

    assert (none_yet, while_parked) == (0, 1)
    assert replayed.json()["outcome"] == "applied"
    assert await scraped(w) == 0
