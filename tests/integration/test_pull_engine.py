"""The pull engine against the WooCommerce and TOP simulators over loopback HTTP, into a real
hub (SQLite file and PostgreSQL): windows, pages, crashes, throttling, late writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from ordersync.adapters.channels.pulling import HttpFetch
from ordersync.adapters.db.pull_cursors import SqlCursorStore
from ordersync.bootstrap import build_hub
from ordersync.config import Settings, settings_from_mapping
from ordersync.entrypoints.api.app import create_app
from ordersync.service.pull import (
    Cursor,
    HttpRequest,
    HttpResponse,
    PullError,
    PullSettings,
    TokenBucket,
)
from ordersync.simulators.taobao_top import TopGateway
from ordersync.simulators.woocommerce_store import WooStore
from ordersync.testing.cli import run_cli_streams, run_process
from ordersync.testing.pull_rig import Crash, ManualClock, PullRig, RigFactory, pull_rigs

if TYPE_CHECKING:
    from conftest import MigratedTemplates  # tests/conftest.py

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
WC_KEY, WC_SECRET, WC_HOOK = "ck_teehaus", "cs_teehaus", "wc-hook-teehaus"
TOP_KEY, TOP_SECRET, TOP_SESSION = "12345678", "top-secret-longjing", "6100e2a9"
QUICK = PullSettings(overlap=60, page_size=3, max_window=600, settle=2, lookback=3600)


class Clock(ManualClock):
    """The shared manual clock, starting at T0 unless told otherwise."""

    def __init__(self, start: datetime = T0) -> None:
        super().__init__(start)


def woo_channel(store_url: str) -> dict[str, Any]:
    return {
        "id": "woo-teehaus",
        "kind": "woocommerce",
        "secret": WC_HOOK,
        "store_url": store_url,
        "consumer_key": WC_KEY,
        "consumer_secret": WC_SECRET,
        "pull": {"overlap": 60, "page_size": 3, "max_window": 600, "settle": 2},
    }


def top_channel(gateway: str, fmt: str = "json", secret: str = TOP_SECRET) -> dict[str, Any]:
    return {
        "id": "tmall-flagship",
        "kind": "taobao",
        "app_key": TOP_KEY,
        "app_secret": secret,
        "session": TOP_SESSION,
        "format": fmt,
        "sign_method": "hmac",
        "gateway": gateway,
        "pull": {"overlap": 60, "page_size": 3, "max_window": 600, "settle": 2},
    }


def hub_settings(database_url: str, *channels: dict[str, Any]) -> Settings:
    return settings_from_mapping({"database_url": database_url, "channels": list(channels)}, env={})


class Rig(PullRig):
    """A hub with the pull machinery around it: real HTTP, real database cursors."""

    async def orders(self, channel_id: str) -> dict[str, tuple[str, str, int | None, str | None]]:
        """external_id -> (status, payment_status, channel_updated_us, note)."""
        return {
            ext: (o.status, o.payment_status, o.channel_updated_us, o.doc.get("note"))
            for ext, o in (await self.rows(channel_id)).items()
        }


@pytest.fixture
async def woo() -> AsyncIterator[WooStore]:
    """A WooCommerce store on loopback, on the test's clock (set through `rig`)."""
    store = WooStore(consumer_key=WC_KEY, consumer_secret=WC_SECRET, webhook_secret=WC_HOOK)
    await store.start()
    yield store
    await store.stop()


@pytest.fixture
async def top() -> AsyncIterator[TopGateway]:
    """A TOP gateway on loopback checking every sign."""
    gateway = TopGateway(app_key=TOP_KEY, app_secret=TOP_SECRET, session=TOP_SESSION)
    await gateway.start()
    yield gateway
    await gateway.stop()


@pytest.fixture
async def rig_for(migrated_database_url: str) -> AsyncIterator[RigFactory]:
    # Migrated already (a template copy): these tests are about pulling, not migrations.
    async with pull_rigs(migrated_database_url, start=T0, rig_class=Rig) as make:
        yield make


# ---- WooCommerce --------------------------------------------------------------------------


async def test_woocommerce_orders_are_pulled_page_by_page_into_the_hub(
    rig_for: Callable[..., Any], woo: WooStore
) -> None:
    """Seven orders over three pages land once each, and the cursor advances past them."""
    assert woo.base_url is not None
    rig: Rig = await rig_for(woo_channel(woo.base_url))
    woo.clock = rig.clock
    rig.clock.tick(-1800)
    for _ in range(7):
        woo.create()
        rig.clock.tick(10)
    rig.clock.now = T0

    stats = await rig.puller("woo-teehaus").catch_up()

    assert set(await rig.orders("woo-teehaus")) == {str(i) for i in range(1001, 1008)}
    assert stats.outcomes["created"] == 7
    cursor = await SqlCursorStore(rig.hub.db).load("woo-teehaus", "live")
    assert cursor == Cursor(watermark=T0 - timedelta(seconds=2))


async def test_a_pull_that_crashes_between_pages_resumes_and_stores_each_order_once(
    rig_for: Callable[..., Any], woo: WooStore
) -> None:
    """The saved cursor points at the next page; the new process goes on from there."""
    assert woo.base_url is not None
    rig: Rig = await rig_for(woo_channel(woo.base_url))
    woo.clock = rig.clock
    rig.clock.tick(-600)
    for _ in range(8):
        woo.create()
        rig.clock.tick(5)
    rig.clock.now = T0

    crashing = rig.puller("woo-teehaus", crash_after=2)
    await crashing.start_at(T0 - timedelta(seconds=700))  # one window holds all eight

    with pytest.raises(Crash):
        await crashing.catch_up()
    halfway = await SqlCursorStore(rig.hub.db).load("woo-teehaus", "live")
    await rig.puller("woo-teehaus").catch_up()

    assert halfway is not None
    assert halfway.window is not None
    assert halfway.page == 2  # three pages: page 1 (probe), page 3 read; page 2 next
    assert len(await rig.orders("woo-teehaus")) == 8


async def test_throttled_pulls_back_off_and_then_read_everything(
    rig_for: Callable[..., Any], woo: WooStore
) -> None:
    """Two 429 answers (Retry-After) are waited out; nothing is skipped."""
    assert woo.base_url is not None
    rig: Rig = await rig_for(woo_channel(woo.base_url))
    woo.clock = rig.clock
    rig.clock.tick(-60)
    woo.create()
    rig.clock.now = T0
    woo.throttle_next = 2
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    stats = await rig.puller("woo-teehaus", sleep=sleep).catch_up()

    assert stats.throttled == 2
    assert len(await rig.orders("woo-teehaus")) == 1


async def test_a_late_write_inside_the_overlap_is_read_by_the_next_window(
    rig_for: Callable[..., Any], woo: WooStore
) -> None:
    """An update that shows up with a modified time already behind the cursor is not lost."""
    assert woo.base_url is not None
    rig: Rig = await rig_for(woo_channel(woo.base_url))
    woo.clock = rig.clock
    order = woo.create(status="pending")
    rig.clock.tick(30)
    puller = rig.puller("woo-teehaus")
    await puller.catch_up()

    # Committed now, stamped 20 s ago: behind the watermark, inside the 60 s overlap.
    late = rig.clock.now - timedelta(seconds=20)
    woo.update(order["id"], status="processing", date_paid_gmt=late.isoformat(), modified=late)
    rig.clock.tick(30)
    await puller.catch_up()

    ((status, payment, _, _),) = (await rig.orders("woo-teehaus")).values()
    assert (status, payment) == ("paid", "paid")


async def test_a_pushed_and_a_pulled_copy_of_one_order_state_are_one_inbox_record(
    rig_for: Callable[..., Any], woo: WooStore
) -> None:
    """The webhook and the pull both key the state as id@modified: the second is a duplicate."""
    assert woo.base_url is not None
    rig: Rig = await rig_for(woo_channel(woo.base_url))
    woo.clock = rig.clock
    order = woo.create()
    body, headers = woo.webhook("order.created", order)
    rig.clock.tick(30)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(rig.hub, manage_hub=False)),
        base_url="http://hub",
    ) as client:
        ping = await client.post(
            "/v1/channels/woo-teehaus/webhooks",
            content=b"webhook_id=7",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        pushed = await client.post(
            "/v1/channels/woo-teehaus/webhooks", content=body, headers=headers
        )
        forged = await client.post(
            "/v1/channels/woo-teehaus/webhooks",
            content=body.replace(b'"processing"', b'"cancelled"'),
            headers=headers,
        )

    stats = await rig.puller("woo-teehaus").catch_up()

    assert (ping.status_code, ping.json()["outcome"]) == (200, "ignored")
    assert (pushed.status_code, pushed.json()["outcome"]) == (200, "created")
    assert forged.status_code == 401
    assert stats.outcomes == {"duplicate": 1}
    [(key, outcome)] = await rig.inbox("woo-teehaus")
    assert (key.startswith(f"1001@{T0.isoformat()}#"), outcome) == (True, "created")


# ---- Taobao / TOP -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_taobao_trades_are_pulled_through_signed_calls(
    rig_for: Callable[..., Any], top: TopGateway, fmt: str
) -> None:
    """Signed calls, windows and pages in JSON or XML; tids beyond 2^53 arrive exact."""
    rig: Rig = await rig_for(top_channel(top.url, fmt))
    top.clock = rig.clock
    rig.clock.tick(-900)
    tids = []
    for status in ["WAIT_BUYER_PAY", "WAIT_SELLER_SEND_GOODS", "TRADE_FINISHED", "TRADE_CLOSED"]:
        tids.append(top.create(status=status)["tid"])
        rig.clock.tick(60)
    rig.clock.now = T0

    await rig.puller("tmall-flagship", page_size=2).catch_up()

    stored = await rig.orders("tmall-flagship")
    assert {int(t) for t in stored} == set(tids)
    assert [stored[str(t)][:2] for t in tids] == [
        ("pending", "pending"),
        ("paid", "paid"),
        ("completed", "paid"),
        ("cancelled", "refunded"),
    ]
    assert top.forged == 0


async def test_a_top_pull_with_the_wrong_secret_is_refused_by_the_gateway(
    rig_for: Callable[..., Any], top: TopGateway
) -> None:
    """The gateway checks the sign; error 25 stops the pull, nothing is stored."""
    rig: Rig = await rig_for(top_channel(top.url, secret="guessed"))
    top.create()

    with pytest.raises(PullError, match="25"):
        await rig.puller("tmall-flagship").catch_up()

    assert top.forged == 1
    assert await rig.orders("tmall-flagship") == {}


async def test_app_call_limited_is_waited_out(rig_for: Callable[..., Any], top: TopGateway) -> None:
    """TOP's error 7 pauses the pull for the ban's length, then it goes on."""
    rig: Rig = await rig_for(top_channel(top.url))
    top.clock = rig.clock
    rig.clock.tick(-30)
    top.create()
    rig.clock.now = T0
    top.throttle_next = 1

    stats = await rig.puller("tmall-flagship").catch_up()

    assert stats.throttled == 1
    assert len(await rig.orders("tmall-flagship")) == 1


# ---- the property -------------------------------------------------------------------------


Op = tuple[str, int, int]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.just(0), st.just(0)),
        st.tuples(st.just("update"), st.integers(0, 9), st.just(0)),
        st.tuples(st.just("late"), st.integers(0, 9), st.integers(0, 60)),  # s behind now
        st.tuples(st.just("tick"), st.integers(1, 400), st.just(0)),
        st.tuples(st.just("pull"), st.integers(0, 6), st.integers(1, 5)),  # crash after, size
    ),
    min_size=1,
    max_size=25,
)
LIFECYCLE = ["pending", "processing", "completed"]
CANONICAL = {"pending": "pending", "processing": "paid", "completed": "completed"}


@pytest.fixture
def migrated_template(migrated_templates: MigratedTemplates) -> Path:
    """The session's migrated SQLite file, copied for each example (migrating is the slow
    part)."""
    return migrated_templates.sqlite_file()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS)
def test_pulls_with_crashes_and_late_writes_store_each_order_once_in_its_latest_state(
    ops: list[Op], migrated_template: Path, tmp_path: Path
) -> None:
    """Random orders, page sizes, crashes between pages and late writes within the overlap:
    every order ends up stored exactly once, in the state the store holds last."""
    db = tmp_path / f"hub-{abs(hash(tuple(ops)))}.db"
    shutil.copy(migrated_template, db)
    try:
        asyncio.run(_play(ops, db))
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)


async def _play(ops: list[Op], db: Path) -> None:
    clock = Clock()
    store = WooStore(
        consumer_key=WC_KEY, consumer_secret=WC_SECRET, webhook_secret=WC_HOOK, clock=clock
    )
    await store.start()
    assert store.base_url is not None
    hub = build_hub(hub_settings(f"sqlite:///{db}", woo_channel(store.base_url)))
    await hub.start(run_migrations=False, dispatch=False, pull=False)
    rig = Rig(hub, HttpFetch(timeout=10), clock)
    stage: dict[int, int] = {}  # order id -> index into LIFECYCLE
    try:
        await rig.puller("woo-teehaus").start_at(T0 - timedelta(seconds=1))  # before any order
        for op, a, b in ops:
            ids = sorted(store.orders)
            if op == "create":
                stage[store.create(status="pending")["id"]] = 0
            elif op in ("update", "late") and ids:
                oid = ids[a % len(ids)]
                stage[oid] = min(stage[oid] + 1, len(LIFECYCLE) - 1)
                previous = datetime.fromisoformat(store.orders[oid]["date_modified_gmt"])
                # Never at or before the order's previous time: platforms keep them rising.
                stamp = max(clock.now - timedelta(seconds=b), previous.replace(tzinfo=UTC))
                stamp += timedelta(seconds=1)
                clock.now = max(clock.now, stamp)
                store.update(
                    oid,
                    status=LIFECYCLE[stage[oid]],
                    customer_note=f"edit at {stamp.isoformat()}",
                    date_paid_gmt="2026-11-22T08:00:00" if stage[oid] else None,
                    modified=stamp,
                )
            elif op == "tick":
                clock.tick(a)
            elif op == "pull":
                crash = a if a < 6 else None
                with contextlib.suppress(Crash):
                    await rig.puller("woo-teehaus", crash_after=crash, page_size=b).catch_up()
        clock.tick(QUICK.settle + 1)
        await rig.puller("woo-teehaus", page_size=2).catch_up()

        stored = await rig.orders("woo-teehaus")
        assert set(stored) == {str(i) for i in store.orders}
        for oid, order in store.orders.items():
            status, _, updated_us, note = stored[str(oid)]
            assert status == CANONICAL[order["status"]], (oid, ops)
            assert note == (order["customer_note"] or None), (oid, ops)
            modified = datetime.fromisoformat(order["date_modified_gmt"]).replace(tzinfo=UTC)
            assert updated_us == int(modified.timestamp()) * 1_000_000
    finally:
        await rig.fetch.close()
        await hub.stop()
        await store.stop()


# ---- the operator's verb ------------------------------------------------------------------


async def test_backfill_pulls_a_channel_from_a_given_time_on_the_command_line(
    migrated_database_url: str, woo: WooStore, tmp_path: Path
) -> None:
    """`ordersync backfill --channel X --since T` reads every order modified since T, once."""
    database_url = migrated_database_url
    assert woo.base_url is not None
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    clock = Clock(an_hour_ago)
    woo.clock = clock
    for _ in range(5):
        woo.create()
        clock.tick(120)
    channel = woo_channel(woo.base_url)
    # Not the default 2 requests/s: the ~8 calls of a run would wait ~2 s on the token
    # bucket, which test_the_token_bucket_spaces_requests_beyond_its_burst covers.
    channel["pull"]["rate"] = 50
    config = tmp_path / "hub.yaml"
    config.write_text(json.dumps({"database_url": database_url, "channels": [channel]}))

    async def backfill(*args: str, process: bool = False) -> dict[str, Any]:
        run = run_process if process else run_cli_streams
        code, out, err = await run(
            "backfill", "--channel", "woo-teehaus", *args, "--config", str(config), "--json"
        )
        assert code == 0, err.decode()
        rows: list[dict[str, Any]] = json.loads(out)
        (row,) = rows
        return row

    since = (an_hour_ago - timedelta(minutes=5)).isoformat()
    # The suite's one real `python -m ordersync backfill` process: the first run on SQLite.
    first = await backfill("--since", since, process=database_url.startswith("sqlite"))
    again = await backfill("--since", since)

    assert first["outcome_created"] == 5
    assert "outcome_created" not in again
    assert again["outcome_duplicate"] == again["orders"] >= 5
    hub = build_hub(hub_settings(database_url))
    try:
        async with hub.db.read() as conn:
            count = (await conn.execute(text("SELECT COUNT(*) FROM orders"))).scalar_one()
    finally:
        await hub.db.dispose()
    assert count == 5


async def test_a_pull_only_channel_answers_webhooks_with_not_found(
    rig_for: Callable[..., Any], top: TopGateway
) -> None:
    """Taobao channels are pulled; a POST to their webhook URL is refused, nothing stored."""
    rig: Rig = await rig_for(top_channel(top.url))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(rig.hub, manage_hub=False)),
        base_url="http://hub",
    ) as client:
        response = await client.post("/v1/channels/tmall-flagship/webhooks", content=b"{}")

    assert response.status_code == 404
    assert await rig.inbox("tmall-flagship") == []


async def test_the_embedded_hub_pulls_channels_that_have_a_pull_block(
    migrated_database_url: str, woo: WooStore
) -> None:
    """`serve` without a broker runs a pull loop per channel with `pull`; orders arrive."""
    database_url = migrated_database_url
    assert woo.base_url is not None
    woo.clock = Clock(datetime.now(UTC) - timedelta(seconds=60))
    woo.create()
    channel = woo_channel(woo.base_url)
    channel["pull"] = {"interval": 0.2, "lookback": 120, "max_window": 3600, "rate": 50}
    hub = build_hub(hub_settings(database_url, channel))
    await hub.start(dispatch=False)
    try:
        rig = Rig(hub, HttpFetch(), Clock())
        for _ in range(200):  # the loop's first round; bounded, not a timing assertion
            if await rig.orders("woo-teehaus"):
                break
            await asyncio.sleep(0.05)
        stored = await rig.orders("woo-teehaus")
    finally:
        await hub.stop()

    assert set(stored) == {"1001"}
    assert [p.source.channel_id for p in hub.pullers] == ["woo-teehaus"]


async def test_the_token_bucket_spaces_requests_beyond_its_burst() -> None:
    """Two tokens of burst at 4 per second: the third request waits a quarter second."""
    now = [0.0]
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(4.0, 2, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        await bucket.acquire()
    bucket.pause(10.0)
    await bucket.acquire()

    assert waited[0] == pytest.approx(0.25)
    assert sum(waited[1:]) == pytest.approx(10.0)


async def test_a_late_write_landing_in_a_window_being_read_triggers_a_second_read(
    rig_for: Callable[..., Any], woo: WooStore
) -> None:
    """A late order that shifts older orders onto pages already read cannot make one vanish."""
    assert woo.base_url is not None
    rig: Rig = await rig_for(woo_channel(woo.base_url))
    woo.clock = rig.clock
    rig.clock.tick(-590)
    for _ in range(9):
        woo.create()
        rig.clock.tick(5)
    rig.clock.now = T0
    puller = rig.puller("woo-teehaus")
    await puller.start_at(T0 - timedelta(seconds=700))
    fetch = puller.fetch
    calls = 0

    async def late_write_after_two_pages(request: HttpRequest) -> HttpResponse:
        nonlocal calls
        calls += 1
        if calls == 3:  # probe (page 1) and page 3 read: an older order appears
            rig.clock.tick(-600)
            woo.create()
            rig.clock.now = T0
        return await fetch(request)

    puller.fetch = late_write_after_two_pages

    await puller.catch_up()

    assert len(await rig.orders("woo-teehaus")) == 10


async def test_the_store_simulator_pushes_signed_webhooks_the_hub_accepts_over_http(
    rig_for: Callable[..., Any], woo: WooStore
) -> None:
    """Over loopback: the activation ping, an order.created, then its update, in order."""
    assert woo.base_url is not None
    rig: Rig = await rig_for(woo_channel(woo.base_url))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(rig.hub, manage_hub=False), host="127.0.0.1", port=port, log_level="error"
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(1000):  # bounded wait for the socket, not a timing assertion
            if server.started:
                break
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}/v1/channels/woo-teehaus/webhooks"
        order = woo.create(status="pending")
        statuses = [await woo.ping(url), await woo.send(url, "order.created", order)]
        woo.clock = Clock(datetime.now(UTC) + timedelta(seconds=5))  # modified times rise
        paid = woo.update(order["id"], status="processing", date_paid_gmt="2026-11-22T08:00:00")
        statuses.append(await woo.send(url, "order.updated", paid))
    finally:
        server.should_exit = True
        await serving

    assert statuses == [200, 200, 200]
    assert [s[:2] for s in (await rig.orders("woo-teehaus")).values()] == [("paid", "paid")]
