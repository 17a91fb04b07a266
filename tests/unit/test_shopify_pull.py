"""Shopify pull, sans-I/O: requests, Link cursors, call limits, throttling and state keys."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ordersync.adapters.channels import shopify
from ordersync.adapters.channels.base import (
    Capability,
    HttpRequest,
    HttpResponse,
    PullError,
    PullPage,
    Throttled,
    Window,
)
from ordersync.adapters.channels.registry import BUILTIN
from ordersync.config import ConfigError, ShopifyChannel, settings_from_mapping
from ordersync.service.pull import (
    ChannelPuller,
    Cursor,
    MemoryCursorStore,
    PulledOrder,
    PullSettings,
    TokenBucket,
    state_message_id,
)
from ordersync.simulators.shopify_store import OrderFactory, encode

CONNECTOR = BUILTIN["shopify"]
TOKEN = "shpat_teahouse"
WINDOW = Window(
    datetime(2026, 11, 22, 8, 0, 0, 250_000, tzinfo=UTC),
    datetime(2026, 11, 22, 9, 0, 0, 750_000, tzinfo=UTC),
)
BASE = "https://teahouse.myshopify.com/admin/api/2025-01/orders.json"


def channel(**extra: Any) -> ShopifyChannel:
    raw = {
        "id": "shopify-teahouse",
        "kind": "shopify",
        "secret": "whsec",
        "shop_domain": "teahouse.myshopify.com",
        "access_token": TOKEN,
        "pull": {},
        **extra,
    }
    (found,) = settings_from_mapping({"channels": [raw]}, env={}).channels
    assert isinstance(found, ShopifyChannel)
    return found


def order(order_id: int | None = None, updated: str = "2026-11-22T08:30:00+00:00") -> Any:
    made = OrderFactory(seed=3).new_order(order_id)
    made["updated_at"] = updated
    return made


def response(orders: list[Any], status: int = 200, **headers: str) -> HttpResponse:
    body = b'{"orders":[' + b",".join(encode(o) for o in orders) + b"]}"
    return HttpResponse(status, {k.replace("_", "-"): v for k, v in headers.items()}, body)


def link(page_info: str, rel: str) -> str:
    return f'<{BASE}?limit=250&page_info={page_info}>; rel="{rel}"'


def test_shopify_declares_pull_beside_push() -> None:
    """The connector now declares both push and pull."""
    assert {Capability.PUSH, Capability.PULL} <= CONNECTOR.capabilities


def test_the_first_page_request_filters_by_updated_at_oldest_first_with_the_token() -> None:
    """Page 1 asks for any status, the window in whole seconds outwards, updated_at asc."""
    request = CONNECTOR.pull_request(channel(), WINDOW, 1, 500)
    assert request.method == "GET"
    assert request.url == BASE
    assert dict(request.params) == {
        "status": "any",
        "updated_at_min": "2026-11-22T08:00:00+00:00",
        "updated_at_max": "2026-11-22T09:00:01+00:00",
        "order": "updated_at asc",
        "limit": "250",
    }
    assert ("X-Shopify-Access-Token", TOKEN) in request.headers


def test_admin_url_and_api_version_override_where_pulls_go() -> None:
    """An explicit admin_url (a simulator) and api_version change the orders URL."""
    request = CONNECTOR.pull_request(
        channel(admin_url="http://127.0.0.1:8123/", api_version="2025-04"), WINDOW, 1, 50
    )
    assert request.url == "http://127.0.0.1:8123/admin/api/2025-04/orders.json"
    assert dict(request.params)["limit"] == "50"


def test_numbered_pages_beyond_the_first_are_refused() -> None:
    """Shopify has no page numbers; only page 1 can be built from a window."""
    with pytest.raises(PullError):
        CONNECTOR.pull_request(channel(), WINDOW, 2, 50)


def test_a_pull_block_without_an_access_token_is_refused_by_config() -> None:
    """Like WooCommerce's keys: a channel that pulls must carry its token."""
    with pytest.raises(ConfigError, match="pull needs access_token"):
        channel(access_token=None)


def test_a_push_only_shopify_channel_needs_no_token() -> None:
    """Without a pull block the new fields stay optional (the webhook channel is unchanged)."""
    (found,) = settings_from_mapping(
        {"channels": [{"id": "s", "kind": "shopify", "secret": "x"}]}, env={}
    ).channels
    assert isinstance(found, ShopifyChannel)
    assert found.access_token is None
    assert found.api_version == "2025-01"


def test_the_link_header_is_read_for_previous_and_next() -> None:
    """Both relations are parsed; only next becomes the following request."""
    header = link("prevTOKEN", "previous") + ", " + link("nextTOKEN", "next")
    assert shopify.parse_link(header) == {
        "previous": f"{BASE}?limit=250&page_info=prevTOKEN",
        "next": f"{BASE}?limit=250&page_info=nextTOKEN",
    }
    page = CONNECTOR.pull_response(channel(), response([order()], link=header), 100)
    assert page.next_request is not None
    assert page.next_request.url == BASE
    assert page.next_request.params == (("limit", "100"), ("page_info", "nextTOKEN"))
    assert ("X-Shopify-Access-Token", TOKEN) in page.next_request.headers


def test_the_last_page_has_only_a_previous_link_and_no_next_request() -> None:
    """rel="previous" alone ends the window."""
    page = CONNECTOR.pull_response(
        channel(), response([order()], link=link("prevTOKEN", "previous")), 50
    )
    assert page.next_request is None
    assert page.total_pages == 1


def test_the_next_request_goes_to_the_configured_shop_not_the_links_host() -> None:
    """The token is taken from the link; the access token never follows a foreign host."""
    header = (
        '<https://evil.example/admin/api/2025-01/orders.json?page_info=abc&limit=5>; rel="next"'
    )
    page = CONNECTOR.pull_response(channel(), response([], link=header), 5)
    assert page.next_request is not None
    assert page.next_request.url == BASE
    assert dict(page.next_request.params) == {"limit": "5", "page_info": "abc"}


def test_an_empty_window_is_zero_pages() -> None:
    """No orders and no link: nothing more to read."""
    page = CONNECTOR.pull_response(channel(), response([]), 50)
    assert page == PullPage((), 0)


@pytest.mark.parametrize(
    ("header", "pause"),
    [(None, 0.0), ("1/40", 0.0), ("31/40", 0.0), ("32/40", 6.0), ("40/40", 10.0), ("64/80", 6.0)],
)
def test_a_nearly_full_call_bucket_asks_the_engine_to_slow_down(
    header: str | None, pause: float
) -> None:
    """From 80 % of the bucket on, wait until it has leaked down to half."""
    headers = {} if header is None else {"x_shopify_shop_api_call_limit": header}
    page = CONNECTOR.pull_response(channel(), response([order()], **headers), 50)
    assert page.slow_down == pytest.approx(pause)


def test_429_is_throttled_for_as_long_as_retry_after_says() -> None:
    """Shopify's Retry-After (seconds, possibly fractional) becomes the engine's pause."""
    with pytest.raises(Throttled) as caught:
        CONNECTOR.pull_response(channel(), response([], status=429, retry_after="2.0"), 50)
    assert caught.value.retry_after == 2.0


def test_server_errors_are_retried_with_backoff_and_bad_tokens_are_errors() -> None:
    """5xx: Throttled without a figure; 401: a PullError waiting will not fix."""
    with pytest.raises(Throttled) as caught:
        CONNECTOR.pull_response(channel(), response([], status=503), 50)
    assert caught.value.retry_after is None
    with pytest.raises(PullError, match="401"):
        CONNECTOR.pull_response(channel(), response([], status=401), 50)


def test_ids_beyond_64_bits_and_above_2_53_are_kept_exactly() -> None:
    """Ids are read exactly whether orjson can (2^53 + 1) or the exact parser must (2^64+)."""
    beyond_53 = 9_007_199_254_740_993
    beyond_64 = 2**64 + 7
    page = CONNECTOR.pull_response(channel(), response([order(beyond_53)]), 50)
    assert page.orders[0].external_id == str(beyond_53)
    page = CONNECTOR.pull_response(channel(), response([order(beyond_53), order(beyond_64)]), 50)
    assert [o.external_id for o in page.orders] == [str(beyond_53), str(beyond_64)]
    assert all(o.snapshot is not None for o in page.orders)
    assert str(beyond_64).encode() in page.orders[1].raw


def test_an_unmappable_order_is_kept_raw_with_its_error() -> None:
    """One bad order does not stall the page: it is recorded with id, time and problem."""
    bad = order(5_000_000_000_001)
    bad["currency"] = "dollars"
    page = CONNECTOR.pull_response(channel(), response([bad, order(5_000_000_000_002)]), 50)
    assert page.orders[0].snapshot is None
    assert page.orders[0].external_id == "5000000000001"
    assert "currency" in str(page.orders[0].error)
    assert page.orders[1].snapshot is not None


def test_a_page_that_is_not_an_orders_object_is_an_error() -> None:
    """A body without "orders" is refused rather than read as empty."""
    with pytest.raises(PullError):
        CONNECTOR.pull_response(channel(), HttpResponse(200, {}, b"[]"), 50)


def test_a_pushed_and_a_pulled_copy_of_one_state_share_the_state_key() -> None:
    """The pulled key is id@updated_at#hash of the snapshot the webhook path maps."""
    resource = order(9_007_199_254_740_993, "2026-11-22T17:30:00+09:00")
    body = encode(resource)
    pushed = CONNECTOR.parse(
        channel(),
        {
            "x-shopify-topic": "orders/updated",
            "x-shopify-webhook-id": "wh-1",
            "x-shopify-shop-domain": "teahouse.myshopify.com",
        },
        body,
    )
    (pulled,) = CONNECTOR.pull_response(channel(), response([resource]), 50).orders
    assert pulled.snapshot == pushed.snapshot
    assert pushed.snapshot is not None
    modified = datetime(2026, 11, 22, 8, 30, tzinfo=UTC)
    assert pulled.modified == modified
    assert pulled.message_id == state_message_id("9007199254740993", modified, pushed.snapshot)
    assert pulled.message_id.startswith("9007199254740993@2026-11-22T08:30:00+00:00#")


def test_status_overrides_apply_to_pulled_orders_as_to_pushed_ones() -> None:
    """A channel's financial_status override changes the pulled payment state too."""
    resource = order()
    resource["financial_status"] = "pending"
    custom = channel(statuses={"pending": {"status": "paid", "payment": "paid"}})
    (pulled,) = CONNECTOR.pull_response(custom, response([resource]), 50).orders
    assert pulled.snapshot is not None
    assert pulled.snapshot.payment_status == "paid"


# ---- the engine follows cursors ---------------------------------------------------------


class CursorSource:
    """A fake cursor-paginated source: pages of (id, modified) chained by next_request."""

    channel_id = "shop"
    kind = "shopify"

    def __init__(self, pages: list[list[int]], start: datetime) -> None:
        self.pages = pages
        self.start = start

    def request(self, window: Window, page: int, page_size: int) -> HttpRequest:
        return HttpRequest("GET", "first", params=(("min", window.start.isoformat()),))

    def read(self, response: HttpResponse, page_size: int) -> PullPage:
        index = int(response.body)
        orders = tuple(
            PulledOrder(str(n), self.start + timedelta(seconds=n), None, b"{}")
            for n in self.pages[index]
        )
        following = (
            HttpRequest("GET", "next", params=(("page_info", str(index + 1)),))
            if index + 1 < len(self.pages)
            else None
        )
        return PullPage(orders, 1, next_request=following, slow_down=0.5 if index == 0 else 0)


def test_the_engine_follows_next_requests_and_resumes_a_crash_from_the_last_time_read() -> None:
    """Pages are read forward; after a crash the window restarts at the last modified time."""
    t0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    source = CursorSource([[1, 2], [3, 4], [5]], t0)
    cursors = MemoryCursorStore()
    ingested: list[str] = []
    fetched: list[HttpRequest] = []
    crash_at = {"next:2"}

    async def fetch(request: HttpRequest) -> HttpResponse:
        tag = f"{request.url}:{dict(request.params).get('page_info', '')}"
        fetched.append(request)
        if tag in crash_at:
            crash_at.discard(tag)
            raise RuntimeError("crash")
        if request.url == "first":
            first = datetime.fromisoformat(dict(request.params)["min"])
            return HttpResponse(200, {}, b"0" if first < t0 + timedelta(seconds=2) else b"1")
        return HttpResponse(200, {}, dict(request.params)["page_info"].encode())

    async def ingest(command: Any) -> None:
        ingested.append(command.message_id.split("@")[0])

    waited: list[float] = []
    mono = {"t": 0.0}

    async def sleep(seconds: float) -> None:
        waited.append(seconds)
        mono["t"] += seconds

    now = {"t": t0 + timedelta(seconds=30)}
    settings = PullSettings(overlap=0, page_size=2, max_window=600, settle=1, lookback=30)

    def puller() -> ChannelPuller:
        bucket = TokenBucket(1000.0, 1000, clock=lambda: mono["t"], sleep=sleep)
        return ChannelPuller(
            source,
            fetch,
            cursors,
            ingest,
            settings,
            bucket=bucket,
            clock=lambda: now["t"],
            sleep=sleep,
        )

    async def play() -> None:
        await cursors.save("shop", "live", Cursor(watermark=t0))
        with pytest.raises(RuntimeError):
            await puller().catch_up()
        saved = await cursors.load("shop", "live")
        assert saved is not None
        assert saved.window is not None
        assert saved.window.start == t0 + timedelta(seconds=4)  # the last time read
        assert saved.page == 1
        await puller().catch_up()

    asyncio.run(play())
    assert ingested[:4] == ["1", "2", "3", "4"]
    assert set(ingested) == {"1", "2", "3", "4", "5"}
    saved = asyncio.run(cursors.load("shop", "live"))
    assert saved == Cursor(watermark=t0 + timedelta(seconds=29))
    assert 0.5 in waited  # the first page's slow_down paused the bucket


def test_a_link_url_keeps_its_page_info_exactly() -> None:
    """The token is taken as it appears in the Link URL."""
    url = f"{BASE}?page_info=eyJsYXN0IjpbIjIwMjYiXX0&limit=3"
    assert shopify.page_info(url) == "eyJsYXN0IjpbIjIwMjYiXX0"
    assert shopify.page_info(f"{BASE}?limit=3") is None
