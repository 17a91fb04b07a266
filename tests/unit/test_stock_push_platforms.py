"""Stock pushes to Taobao/Tmall (TOP), JD (JOS) and Douyin: the signed requests, the
readers of the answers (retryable or permanent), the config that enables them, the
publisher's handling of a permanent refusal with its metric, and the simulators that take
(or refuse) the calls."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from ordersync.adapters.channels import douyin, jd, taobao
from ordersync.adapters.channels.stock_push import (
    DouyinStockTarget,
    ItemIds,
    JdStockTarget,
    PushRequest,
    RequestStockPush,
    StockAnswerError,
    StockPushFailed,
    TaobaoStockTarget,
    builder_for,
    douyin_sync_stock,
    jd_update_sku_stock,
    read_douyin_sync_stock,
    read_http,
    read_jd_update_sku_stock,
    read_taobao_quantity_update,
    taobao_quantity_update,
)
from ordersync.adapters.metrics import Metrics
from ordersync.config import ConfigError, StockItemRef, settings_from_mapping
from ordersync.service.stock_publisher import PublisherSettings, StockPublisher
from ordersync.simulators.douyin_shop import DouyinShop
from ordersync.simulators.jd_jos import JosGateway
from ordersync.simulators.stock_recorder import StockRecord
from ordersync.simulators.taobao_top import TopGateway, to_xml

# 2026-11-29 12:00 UTC is 20:00 in China.
AT = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
CHINA_AT = "2026-11-29 20:00:00"

TOP_KEY, TOP_SECRET, TOP_SESSION = "12345678", "top_secret_tea", "6100top_session_tea"
JOS_KEY, JOS_SECRET, JOS_TOKEN = "jos_app_tea", "jos_secret_tea", "jos_token_tea"
DY_KEY, DY_SECRET, DY_TOKEN = "7000000000000000001", "dy_secret_tea", "dy_token_tea"

NUM_IID = 600_000_000_001
TB_SKU_ID = 4_000_000_000_001
JD_SKU_ID = 100_012_043_978
DY_SKU_ID = 1_700_000_000_001


def _top(**kw: Any) -> PushRequest:
    args: dict[str, Any] = {"num_iid": NUM_IID, "quantity": 7, "now": AT, **kw}
    return taobao_quantity_update(
        "https://eco.taobao.com/router/rest", TOP_KEY, TOP_SECRET, TOP_SESSION, **args
    )


def _jos(**kw: Any) -> PushRequest:
    args: dict[str, Any] = {"sku_id": JD_SKU_ID, "quantity": 12, "now": AT, **kw}
    return jd_update_sku_stock(
        "https://api.jd.com/routerjson", JOS_KEY, JOS_SECRET, JOS_TOKEN, **args
    )


def _douyin(**kw: Any) -> PushRequest:
    args: dict[str, Any] = {"quantity": 3, "now": AT, **kw}
    if "code" not in args:
        args.setdefault("sku_id", DY_SKU_ID)
    return douyin_sync_stock(
        "https://openapi-fxg.jinritemai.com/", DY_KEY, DY_SECRET, DY_TOKEN, **args
    )


def _douyin_call(request: PushRequest) -> dict[str, str]:
    """What the platform checks: the query plus the body as `param_json`."""
    return {**dict(request.params), "param_json": request.body.decode("utf-8")}


def _refused(read: Any, status: int, body: Any) -> StockAnswerError:
    text = body if isinstance(body, str) else json.dumps(body)
    with pytest.raises(StockAnswerError) as caught:
        read(status, text)
    return caught.value


# ---- Taobao / Tmall TOP ---------------------------------------------------------------------


@pytest.mark.parametrize("sign_method", ["md5", "hmac", "hmac-sha256"])
def test_taobao_request_is_a_signed_full_update_that_top_verifies(sign_method: str) -> None:
    """`taobao.item.quantity.update` as a form POST: num_iid, sku_id, quantity, type=1 (the
    absolute level), the seller's session, China time, and a sign TOP's check accepts."""
    req = _top(sku_id=TB_SKU_ID, sign_method=sign_method)
    form = req.form()

    assert req.method == "POST"
    assert req.url == "https://eco.taobao.com/router/rest"
    assert ("Content-Type", "application/x-www-form-urlencoded;charset=utf-8") in req.headers
    assert form["method"] == "taobao.item.quantity.update"
    assert form["num_iid"] == str(NUM_IID)
    assert form["sku_id"] == str(TB_SKU_ID)
    assert form["quantity"] == "7"
    assert form["type"] == "1"
    assert form["session"] == TOP_SESSION
    assert form["timestamp"] == CHINA_AT
    assert form["sign_method"] == sign_method
    assert taobao.verify_sign(form, TOP_SECRET)
    assert not taobao.verify_sign({**form, "quantity": "700"}, TOP_SECRET)  # tampered
    assert not taobao.verify_sign(form, "another_secret")


def test_taobao_request_names_a_sku_by_outer_id_or_updates_the_whole_item() -> None:
    """Without a sku_id, the merchant's outer_id names the SKU; with neither, the item."""
    by_code = _top(outer_id="LONGJING-250").form()
    whole = _top().form()

    assert by_code["outer_id"] == "LONGJING-250"
    assert "sku_id" not in by_code
    assert taobao.verify_sign(by_code, TOP_SECRET)
    assert "sku_id" not in whole
    assert "outer_id" not in whole
    assert taobao.verify_sign(whole, TOP_SECRET)


def test_requests_keep_credentials_out_of_their_repr() -> None:
    """A request or a target that ends up in a log shows no session, token or secret."""
    requests = [_top(), _jos(), _douyin()]
    targets = [
        TaobaoStockTarget("https://g", TOP_KEY, TOP_SECRET, TOP_SESSION, {}),
        JdStockTarget("https://g", JOS_KEY, JOS_SECRET, JOS_TOKEN, {}),
        DouyinStockTarget("https://g", DY_KEY, DY_SECRET, DY_TOKEN, {}),
    ]
    shown = " ".join(repr(x) for x in [*requests, *targets])

    for secret in (TOP_SECRET, TOP_SESSION, JOS_SECRET, JOS_TOKEN, DY_SECRET, DY_TOKEN):
        assert secret not in shown


def test_taobao_answer_with_the_item_took_in_json_and_xml() -> None:
    """The item back means the level is set, whichever format the channel asked for."""
    answer = {"item_quantity_update_response": {"item": {"num_iid": NUM_IID, "num": 7}}}

    read_taobao_quantity_update(200, json.dumps(answer), "json")
    read_taobao_quantity_update(200, to_xml(answer), "xml")


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        ({"code": 7, "msg": "App Call Limited", "sub_code": "accesscontrol.limited-by-app"}, True),
        ({"code": 15, "msg": "Remote service error", "sub_code": "isp.top-remote-timeout"}, True),
        ({"code": 15, "msg": "Remote service error", "sub_code": "isv.item-not-exist"}, False),
        ({"code": 25, "msg": "Invalid signature"}, False),
        ({"code": 27, "msg": "Invalid session", "sub_code": "invalid-sessionkey"}, False),
        ({"code": 41, "msg": "Invalid arguments", "sub_code": "isv.invalid-parameter"}, False),
    ],
)
def test_taobao_errors_are_retryable_only_when_the_platform_is_busy(
    error: dict[str, Any], retryable: bool
) -> None:
    """Call limits and `isp.*` (TOP's own trouble) pass on a retry; anything the seller
    must fix (the item, the signature, the session, the arguments) does not."""
    refused = _refused(
        lambda s, t: read_taobao_quantity_update(s, t, "json"), 200, {"error_response": error}
    )

    assert refused.retryable is retryable
    assert f"TOP error {error['code']}" in refused.detail


@pytest.mark.parametrize(
    ("status", "body", "retryable"),
    [
        (502, "Bad Gateway", True),
        (429, "slow down", True),
        (403, "Forbidden", False),
        (200, "<html>captive portal</html>", True),  # not JSON: a proxy in trouble
        (200, json.dumps({"item_quantity_update_response": {}}), True),
    ],
)
def test_taobao_http_and_malformed_answers(status: int, body: str, retryable: bool) -> None:
    """HTTP 5xx/429 and garbled 200s are worth retrying (the level is absolute); a 403 is not."""
    refused = _refused(lambda s, t: read_taobao_quantity_update(s, t, "json"), status, body)

    assert refused.retryable is retryable


# ---- JD JOS ---------------------------------------------------------------------------------


def test_jd_request_sets_the_stock_of_one_sku_signed_as_jos_verifies() -> None:
    """`jingdong.stock.write.updateSkuStock`: skuId and stockNum in 360buy_param_json,
    the access token, China time, and a sign JOS's check accepts."""
    req = _jos()
    form = req.form()

    assert req.method == "POST"
    assert req.url == "https://api.jd.com/routerjson"
    assert form["method"] == "jingdong.stock.write.updateSkuStock"
    assert json.loads(form["360buy_param_json"]) == {"skuId": JD_SKU_ID, "stockNum": 12}
    assert form["access_token"] == JOS_TOKEN
    assert form["timestamp"] == CHINA_AT
    assert form["v"] == "2.0"
    assert jd.verify_sign(form, JOS_SECRET)
    assert not jd.verify_sign(
        {**form, "360buy_param_json": '{"skuId":1,"stockNum":12}'}, JOS_SECRET
    )


def test_jd_answer_with_success_took() -> None:
    read_jd_update_sku_stock(
        200,
        json.dumps(
            {"jingdong_stock_write_updateSkuStock_responce": {"code": "0", "success": True}}
        ),
    )


@pytest.mark.parametrize(
    ("body", "retryable"),
    [
        (
            {
                "error_response": {
                    "code": "63",
                    "en_desc": "call limit exceeded",
                    "zh_desc": "调用频率超限",
                }
            },
            True,
        ),
        ({"error_response": {"code": "66", "en_desc": "", "zh_desc": "系统繁忙"}}, True),
        (
            {
                "error_response": {
                    "code": "20",
                    "en_desc": "Invalid signature",
                    "zh_desc": "签名无效",
                }
            },
            False,
        ),
        (
            {
                "error_response": {
                    "code": "19",
                    "en_desc": "Invalid access_token",
                    "zh_desc": "无效",
                }
            },
            False,
        ),
        ({"jingdong_stock_write_updateSkuStock_responce": {"code": "0", "success": False}}, False),
        ({"unexpected": {}}, True),
    ],
)
def test_jd_errors_are_retryable_only_when_jos_is_busy(
    body: dict[str, Any], retryable: bool
) -> None:
    """Rate limits and "busy" pass on a retry; a bad signature or token, or a refused SKU,
    do not."""
    assert _refused(read_jd_update_sku_stock, 200, body).retryable is retryable


# ---- Douyin -------------------------------------------------------------------------------


@pytest.mark.parametrize("sign_method", ["md5", "hmac-sha256"])
def test_douyin_request_is_a_signed_absolute_sync_the_platform_verifies(sign_method: str) -> None:
    """`sku.syncStock`: the common parameters (with the sign) in the query, param_json
    {sku_id, stock_num, incremental: false} as the JSON body, POSTed to /sku/syncStock."""
    req = _douyin(sign_method=sign_method)
    query = dict(req.params)

    assert req.method == "POST"
    assert req.url == "https://openapi-fxg.jinritemai.com/sku/syncStock"
    assert ("Content-Type", "application/json") in req.headers
    assert req.json() == {"sku_id": DY_SKU_ID, "stock_num": 3, "incremental": False}
    assert query["method"] == "sku.syncStock"
    assert query["access_token"] == DY_TOKEN
    assert query["timestamp"] == CHINA_AT
    assert query["sign_method"] == sign_method
    assert douyin.verify_call(_douyin_call(req), DY_SECRET)
    forged = {**_douyin_call(req), "param_json": '{"incremental":false,"sku_id":1,"stock_num":3}'}
    assert not douyin.verify_call(forged, DY_SECRET)


def test_douyin_request_names_a_sku_by_code_and_product() -> None:
    """Without a sku_id, the merchant's SKU code with its product id."""
    req = _douyin(code="ANJI-100", product_id=3_600_000_000_001)

    assert req.json() == {
        "code": "ANJI-100",
        "product_id": 3_600_000_000_001,
        "stock_num": 3,
        "incremental": False,
    }
    assert douyin.verify_call(_douyin_call(req), DY_SECRET)
    with pytest.raises(ValueError, match="sku_id or code"):
        douyin_sync_stock("https://g", DY_KEY, DY_SECRET, DY_TOKEN, quantity=1)


@pytest.mark.parametrize(
    ("body", "retryable"),
    [
        ({"code": 50002, "msg": "调用频率超限 (rate limit)", "sub_code": "isp.rate-limited"}, True),
        ({"code": 60000, "msg": "服务繁忙", "sub_code": "isp.service-error"}, True),
        ({"code": 30004, "msg": "签名校验失败", "sub_code": "isv.sign-invalid"}, False),
        (
            {"code": 30005, "msg": "access_token已过期", "sub_code": "isv.access-token-expired"},
            False,
        ),
        (
            {"code": 50001, "msg": "sku不存在", "sub_code": "isv.business-failed:sku-not-found"},
            False,
        ),
    ],
)
def test_douyin_errors_are_retryable_only_when_the_platform_is_busy(
    body: dict[str, Any], retryable: bool
) -> None:
    assert _refused(read_douyin_sync_stock, 200, body).retryable is retryable


def test_douyin_answer_10000_took() -> None:
    read_douyin_sync_stock(200, json.dumps({"code": 10000, "msg": "success", "data": {}}))


def test_negative_levels_are_never_built() -> None:
    with pytest.raises(ValueError, match="negative"):
        _top(quantity=-1)
    with pytest.raises(ValueError, match="negative"):
        _jos(quantity=-1)
    with pytest.raises(ValueError, match="negative"):
        _douyin(quantity=-1)


def test_plain_http_answers_for_shopify_and_woocommerce() -> None:
    """Shopify and WooCommerce answer with HTTP alone: 2xx took, 408/429/5xx retry, other
    4xx (a bad token, an unknown item) are refused for good."""
    read_http(200, "{}")
    assert _refused(read_http, 503, "busy").retryable is True
    assert _refused(read_http, 408, "timeout").retryable is True
    assert _refused(read_http, 404, "Not Found").retryable is False


# ---- the port, the targets and the config ---------------------------------------------------


async def test_a_200_carrying_a_platform_error_is_a_failed_push() -> None:
    """TOP answers errors with HTTP 200: the port reads the body, not just the status, and
    says whether the publisher may retry."""
    answers = iter(
        [
            (200, json.dumps({"error_response": {"code": 25, "msg": "Invalid signature"}})),
            (200, json.dumps({"error_response": {"code": 7, "msg": "App Call Limited"}})),
            (200, json.dumps({"item_quantity_update_response": {"item": {"num": 4}}})),
        ]
    )
    sent: list[PushRequest] = []

    async def send(request: PushRequest) -> tuple[int, str]:
        sent.append(request)
        return next(answers)

    target = TaobaoStockTarget(
        "https://g", TOP_KEY, TOP_SECRET, TOP_SESSION, {"TEA": ItemIds(num_iid=NUM_IID)}
    )
    port = RequestStockPush({"tmall": target.request}, send)

    with pytest.raises(StockPushFailed) as permanent:
        await port.push("tmall", "TEA", 4)
    with pytest.raises(StockPushFailed) as busy:
        await port.push("tmall", "TEA", 4)
    await port.push("tmall", "TEA", 4)
    await port.push("tmall", "NOT-LISTED", 4)

    assert permanent.value.retryable is False
    assert "Invalid signature" in str(permanent.value)
    assert busy.value.retryable is True
    assert len(sent) == 3


CHINA_CHANNELS: list[dict[str, Any]] = [
    {
        "id": "tmall",
        "kind": "taobao",
        "app_key": TOP_KEY,
        "app_secret": TOP_SECRET,
        "session": TOP_SESSION,
        "sign_method": "hmac-sha256",
        "stock_publishing": {
            "items": {
                "LONGJING-250": {"num_iid": NUM_IID, "sku_id": TB_SKU_ID},
                "TEA-TIN": 600_000_000_002,
            }
        },
    },
    {
        "id": "jd-pop",
        "kind": "jd",
        "app_key": JOS_KEY,
        "app_secret": JOS_SECRET,
        "access_token": JOS_TOKEN,
        "stock_publishing": {"items": {"PUER-357": JD_SKU_ID}},
    },
    {
        "id": "doudian",
        "kind": "douyin",
        "app_key": DY_KEY,
        "app_secret": DY_SECRET,
        "access_token": DY_TOKEN,
        "stock_publishing": {
            "items": {"ANJI-100": DY_SKU_ID, "ANJI-50": {"code": "ANJI-50", "product_id": 36}}
        },
    },
]


def _settings(channels: list[dict[str, Any]]) -> Any:
    return settings_from_mapping(
        {
            "channels": channels,
            "locations": [{"id": "hangzhou-dc", "kind": "warehouse", "region": "cn"}],
        },
        env={},
    )


def test_taobao_jd_and_douyin_channels_publish_stock_through_their_own_calls() -> None:
    """Config enables stock publishing on the three kinds; each channel's builder maps its
    SKUs to the platform's ids and signs with the channel's own credentials."""
    settings = _settings(CHINA_CHANNELS)
    tmall, jd_pop, doudian = (builder_for(c) for c in settings.channels)
    assert tmall is not None
    assert jd_pop is not None
    assert doudian is not None

    sku_level = tmall("LONGJING-250", 5)
    item_level = tmall("TEA-TIN", 6)
    jd_level = jd_pop("PUER-357", 8)
    dy_level = doudian("ANJI-100", 9)
    dy_by_code = doudian("ANJI-50", 1)
    assert sku_level is not None
    assert item_level is not None
    assert jd_level is not None
    assert dy_level is not None
    assert dy_by_code is not None

    assert sku_level.form()["sku_id"] == str(TB_SKU_ID)
    assert sku_level.form()["sign_method"] == "hmac-sha256"
    assert taobao.verify_sign(sku_level.form(), TOP_SECRET)
    assert item_level.form()["num_iid"] == "600000000002"
    assert "sku_id" not in item_level.form()
    assert json.loads(jd_level.form()["360buy_param_json"])["skuId"] == JD_SKU_ID
    assert jd.verify_sign(jd_level.form(), JOS_SECRET)
    assert dy_level.json() == {"sku_id": DY_SKU_ID, "stock_num": 9, "incremental": False}
    assert douyin.verify_call(_douyin_call(dy_level), DY_SECRET)
    assert dy_by_code.json() == {
        "code": "ANJI-50",
        "product_id": 36,
        "stock_num": 1,
        "incremental": False,
    }
    assert tmall("PUER-357", 5) is None  # not listed on Tmall: never pushed there
    assert isinstance(settings.channels[0].stock_publishing.items["LONGJING-250"], StockItemRef)


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        ({**CHINA_CHANNELS[0], "session": None}, "stock_publishing needs session"),
        ({**CHINA_CHANNELS[1], "access_token": None}, "stock_publishing needs access_token"),
        ({**CHINA_CHANNELS[2], "access_token": None}, "stock_publishing needs access_token"),
        (
            {**CHINA_CHANNELS[0], "stock_publishing": {"items": {"X": {"sku_id": 1}}}},
            "items['X'] needs num_iid",
        ),
        (
            {**CHINA_CHANNELS[1], "stock_publishing": {"items": {"X": {"num_iid": 1}}}},
            "items['X'] needs sku_id",
        ),
        (
            {**CHINA_CHANNELS[2], "stock_publishing": {"items": {"X": {"product_id": 1}}}},
            "items['X'] needs sku_id or code",
        ),
        (
            {**CHINA_CHANNELS[1], "stock_publishing": {"items": {"X": 0}}},
            "must be a positive id",
        ),
        (
            {
                "id": "shop",
                "kind": "shopify",
                "secret": "s",
                "access_token": "t",
                "shop_domain": "tea.myshopify.com",
                "stock_publishing": {"location_id": 1, "items": {"X": {"sku_id": 1}}},
            },
            "items['X'] must be an integer id",
        ),
    ],
)
def test_a_channel_that_cannot_push_stock_is_refused_at_start_up(
    channel: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings([channel])

    assert message in str(caught.value)


# ---- the publisher and the metric -----------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class _Port:
    """Answers each push with the next outcome: None (took) or an exception."""

    def __init__(self, outcomes: list[Exception | None]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    async def push(self, channel_id: str, sku: str, quantity: int) -> None:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome


def _metric(metrics: Metrics, channel: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "ordersync_stock_pushes_total", {"channel": channel, "outcome": outcome}
    )
    return value or 0.0


async def _ats(sku: str) -> Mapping[str, int]:
    return {"tmall": 5}


async def test_a_permanent_refusal_is_not_retried_at_once_but_requeued_and_counted() -> None:
    """A bad signature is not tried five times in a row: the key waits `requeue_after`,
    then goes again (a renewed session would take it); the metric shows both outcomes."""
    clock = _Clock()
    metrics = Metrics()
    refused = StockPushFailed("tmall", "TEA", 200, "TOP error 25", retryable=False)
    port = _Port([refused])
    publisher = StockPublisher(
        ["tmall"],
        _ats,
        port,
        PublisherSettings(debounce=0, max_wait=1, max_attempts=5, requeue_after=60),
        clock=clock,
        sleep=clock.sleep,
        observer=metrics.stock_push_observer(),
    )

    publisher.notify("TEA")
    assert await publisher.publish_due() == 0
    assert port.calls == 1  # not retried
    assert publisher.rejected == 1
    assert not publisher.settled("TEA")  # requeued: its marker stays

    clock.now += 60
    assert await publisher.publish_due() == 1
    assert publisher.last_pushed("tmall", "TEA") == 5
    assert publisher.settled("TEA")
    assert _metric(metrics, "tmall", "rejected") == 1
    assert _metric(metrics, "tmall", "pushed") == 1


async def test_retryable_failures_are_retried_and_counted_through_the_ports_observer() -> None:
    """Two busy answers then success: three attempts in one round; the observer hung on the
    port (as stock_sync_from_settings does) counts them."""
    clock = _Clock()
    metrics = Metrics()
    busy = StockPushFailed("tmall", "TEA", 200, "TOP error 7", retryable=True)
    port = _Port([busy, ConnectionError("reset")])
    port.observer = metrics.stock_push_observer()  # type: ignore[attr-defined]
    publisher = StockPublisher(
        ["tmall"],
        _ats,
        port,
        PublisherSettings(debounce=0, max_wait=1, max_attempts=5),
        clock=clock,
        sleep=clock.sleep,
    )

    publisher.notify("TEA")
    assert await publisher.publish_due() == 1
    assert port.calls == 3
    assert _metric(metrics, "tmall", "failed") == 2
    assert _metric(metrics, "tmall", "pushed") == 1
    assert _metric(metrics, "tmall", "rejected") == 0


# ---- the simulators -------------------------------------------------------------------------


@pytest.fixture
async def platforms() -> AsyncIterator[tuple[TopGateway, JosGateway, DouyinShop, dict[str, str]]]:
    top = TopGateway(app_key=TOP_KEY, app_secret=TOP_SECRET, session=TOP_SESSION, clock=lambda: AT)
    jos = JosGateway(
        app_key=JOS_KEY, app_secret=JOS_SECRET, access_token=JOS_TOKEN, clock=lambda: AT
    )
    shop = DouyinShop(app_key=DY_KEY, app_secret=DY_SECRET, access_token=DY_TOKEN, clock=lambda: AT)
    servers = [TestServer(top.app()), TestServer(jos.app()), TestServer(shop.app())]
    for server in servers:
        await server.start_server()
    bases = [str(s.make_url("/")).rstrip("/") for s in servers]
    try:
        yield top, jos, shop, {"top": bases[0], "jos": bases[1], "douyin": bases[2]}
    finally:
        for server in servers:
            await server.close()


async def _send(session: aiohttp.ClientSession, request: PushRequest) -> tuple[int, str]:
    async with session.request(
        request.method,
        request.url,
        headers=dict(request.headers),
        params=list(request.params) or None,
        data=request.body,
    ) as response:
        return response.status, await response.text()


async def test_simulators_take_signed_stock_updates_and_record_them(
    platforms: tuple[TopGateway, JosGateway, DouyinShop, dict[str, str]],
) -> None:
    """Each simulator verifies the sign like its platform, sets the level and records it."""
    top, jos, shop, base = platforms
    tmall = TaobaoStockTarget(
        base["top"] + "/router/rest",
        TOP_KEY,
        TOP_SECRET,
        TOP_SESSION,
        {"LONGJING-250": ItemIds(num_iid=NUM_IID, sku_id=TB_SKU_ID)},
        "hmac",
        "xml",
        clock=lambda: AT,
    )
    jd_pop = JdStockTarget(
        base["jos"] + "/routerjson",
        JOS_KEY,
        JOS_SECRET,
        JOS_TOKEN,
        {"PUER-357": ItemIds(sku_id=JD_SKU_ID)},
        clock=lambda: AT,
    )
    doudian = DouyinStockTarget(
        base["douyin"],
        DY_KEY,
        DY_SECRET,
        DY_TOKEN,
        {"ANJI-100": ItemIds(sku_id=DY_SKU_ID), "ANJI-50": ItemIds(code="ANJI-50")},
        clock=lambda: AT,
    )
    async with aiohttp.ClientSession() as session:

        async def send(request: PushRequest) -> tuple[int, str]:
            return await _send(session, request)

        port = RequestStockPush(
            {"tmall": tmall.request, "jd": jd_pop.request, "douyin": doudian.request}, send
        )
        await port.push("tmall", "LONGJING-250", 17)
        await port.push("jd", "PUER-357", 0)
        await port.push("douyin", "ANJI-100", 4)
        await port.push("douyin", "ANJI-50", 2)

    assert top.stock_records == [StockRecord("taobao", f"{NUM_IID}:{TB_SKU_ID}", None, 17, AT)]
    assert jos.stock_records == [StockRecord("jd", str(JD_SKU_ID), None, 0, AT)]
    assert shop.stock_records == [
        StockRecord("douyin", str(DY_SKU_ID), None, 4, AT),
        StockRecord("douyin", "ANJI-50", None, 2, AT),
    ]
    assert top.latest_stock(f"{NUM_IID}:{TB_SKU_ID}") == 17
    assert jos.latest_stock(str(JD_SKU_ID)) == 0
    assert shop.latest_stock(str(DY_SKU_ID)) == 4
    assert (top.forged, jos.forged, shop.forged) == (0, 0, 0)


async def test_simulators_refuse_forged_stock_updates_as_their_platforms_do(
    platforms: tuple[TopGateway, JosGateway, DouyinShop, dict[str, str]],
) -> None:
    """Signed with the wrong secret: each simulator answers its platform's signature error
    (HTTP 200), records nothing, and the port reports a permanent failure."""
    top, jos, shop, base = platforms
    wrong = "not_the_secret"
    forged = {
        "tmall": TaobaoStockTarget(
            base["top"] + "/router/rest", TOP_KEY, wrong, TOP_SESSION, {"T": ItemIds(num_iid=1)}
        ).request,
        "jd": JdStockTarget(
            base["jos"] + "/routerjson", JOS_KEY, wrong, JOS_TOKEN, {"T": ItemIds(sku_id=1)}
        ).request,
        "douyin": DouyinStockTarget(
            base["douyin"], DY_KEY, wrong, DY_TOKEN, {"T": ItemIds(sku_id=1)}
        ).request,
    }
    async with aiohttp.ClientSession() as session:

        async def send(request: PushRequest) -> tuple[int, str]:
            return await _send(session, request)

        port = RequestStockPush(forged, send)
        for channel in forged:
            with pytest.raises(StockPushFailed) as caught:
                await port.push(channel, "T", 3)
            assert caught.value.retryable is False
            assert caught.value.status == 200

    assert (top.forged, jos.forged, shop.forged) == (1, 1, 1)
    assert top.stock_records == jos.stock_records == shop.stock_records == []


async def test_simulators_throttle_and_refuse_stock_updates_with_the_right_kind_of_error(
    platforms: tuple[TopGateway, JosGateway, DouyinShop, dict[str, str]],
) -> None:
    """A throttled call is retryable, an unknown item is not; neither is recorded."""
    top, jos, shop, base = platforms
    targets = {
        "tmall": TaobaoStockTarget(
            base["top"] + "/router/rest",
            TOP_KEY,
            TOP_SECRET,
            TOP_SESSION,
            {"T": ItemIds(num_iid=1)},
        ).request,
        "jd": JdStockTarget(
            base["jos"] + "/routerjson", JOS_KEY, JOS_SECRET, JOS_TOKEN, {"T": ItemIds(sku_id=1)}
        ).request,
        "douyin": DouyinStockTarget(
            base["douyin"], DY_KEY, DY_SECRET, DY_TOKEN, {"T": ItemIds(sku_id=1)}
        ).request,
    }
    for platform in (top, jos, shop):
        platform.throttle_next = 1
        platform.stock_refuse = True
    async with aiohttp.ClientSession() as session:

        async def send(request: PushRequest) -> tuple[int, str]:
            return await _send(session, request)

        port = RequestStockPush(targets, send)
        for channel in targets:
            with pytest.raises(StockPushFailed) as throttled:
                await port.push(channel, "T", 3)
            with pytest.raises(StockPushFailed) as refused:
                await port.push(channel, "T", 3)
            assert throttled.value.retryable is True, channel
            assert refused.value.retryable is False, channel

    assert top.stock_records == jos.stock_records == shop.stock_records == []
