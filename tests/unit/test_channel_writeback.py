"""Shipment write-back without I/O: the channel-filtered router, each platform's request
builder and answer reader, the conversations, the sender, and the dispatcher's handling of
a permanent refusal."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import pytest

from ordersync.adapters.channels import douyin, jd, taobao
from ordersync.adapters.channels import writeback as wb
from ordersync.adapters.destinations.channel_writeback import (
    ChannelWritebackSender,
    writeback_destination,
    writeback_subscriptions,
)
from ordersync.config import (
    ChannelConfig,
    DouyinChannel,
    JdChannel,
    ShopifyChannel,
    TaobaoChannel,
    settings_from_mapping,
)
from ordersync.domain.delivery import DeliveryState, RetryPolicy
from ordersync.service.delivery_ports import AttemptOutcome
from ordersync.service.dispatcher import Dispatcher
from ordersync.service.outbox import EventRouter
from ordersync.service.pull import HttpResponse
from ordersync.testing import FakeDeliveryStore, FakeSender, wait_until

NOW = datetime(2026, 11, 28, 6, 30, tzinfo=UTC)  # 14:30 in China
SHIPPED = wb.Shipped("4611686018427387905", "SF1400020001", "SF", "shp_TEAPOT")
WRITEBACK = {"enabled": True, "carrier_codes": {"SF": "SF", "yuantong": "YTO"}}


def channel(kind: str, **extra: Any) -> ChannelConfig:
    base: dict[str, Any] = {
        "shopify": {
            "secret": "shpss_x",
            "access_token": "shpat_blue_teapot",
            "admin_url": "http://shop.test",
            "api_version": "2025-10",
        },
        "woocommerce": {
            "secret": "wc_hook",
            "store_url": "http://woo.test",
            "consumer_key": "ck_matcha",
            "consumer_secret": "cs_matcha",
        },
        "taobao": {
            "app_key": "12345678",
            "app_secret": "top-secret",
            "session": "6100-session",
            "gateway": "http://top.test/router/rest",
        },
        "jd": {
            "app_key": "jd-app",
            "app_secret": "jd-secret",
            "access_token": "jd-token",
            "gateway": "http://jos.test/routerjson",
        },
        "douyin": {
            "app_key": "dy-app",
            "app_secret": "dy-secret",
            "access_token": "dy-token",
            "gateway": "http://dy.test",
        },
    }[kind]
    raw = {"id": f"{kind}-cn", "kind": kind, **base, "writeback": WRITEBACK, **extra}
    return settings_from_mapping({"channels": [raw]}, env={}).channels[0]


def answer(status: int, body: Any, *, raw: bool = False) -> HttpResponse:
    data = body if raw else json.dumps(body, ensure_ascii=False).encode()
    return HttpResponse(status, {"content-type": "application/json"}, data)


def failure(call: Any, *args: Any) -> wb.WritebackFailed:
    with pytest.raises(wb.WritebackFailed) as caught:
        call(*args)
    return caught.value


def event(data: Mapping[str, Any], type_: str = "shipment.created") -> bytes:
    return json.dumps({"type": type_, "timestamp": "2026-11-28T06:30:00Z", "data": data}).encode()


SHIPMENT_DATA = {
    "id": "shp_TEAPOT",
    "order_id": "ord_TEAPOT",
    "channel_id": "taobao-cn",
    "external_id": "4611686018427387905",
    "carrier_id": "kd100-yt",
    "carrier_code": "yuantong",
    "tracking_number": "YT9876543210",
}


# ---- routing -----------------------------------------------------------------------------


def test_a_channel_bound_subscription_only_gets_that_channel_s_events() -> None:
    """The write-back of taobao-cn sees taobao-cn shipments; everyone still gets theirs."""
    router = EventRouter(
        [
            ("erp", ["order.*", "shipment.*"]),
            ("writeback.taobao-cn", ["shipment.created"], "taobao-cn"),
        ]
    )

    assert router.destinations_for("shipment.created", "taobao-cn") == (
        "erp",
        "writeback.taobao-cn",
    )
    assert router.destinations_for("shipment.created", "shop-eu") == ("erp",)
    assert router.destinations_for("shipment.created") == ("erp",)
    assert router.destinations_for("order.paid", "taobao-cn") == ("erp",)
    assert router.destinations_for("shipment.updated", "taobao-cn") == ("erp",)


def test_two_item_subscriptions_route_as_before() -> None:
    """Existing call sites pass (destination, patterns) and no channel."""
    router = EventRouter([("erp", ["order.*"]), ("wms", ["order.paid"])])

    assert router.destinations_for("order.paid") == ("erp", "wms")
    assert router.destinations_for("order.paid", "anything") == ("erp", "wms")
    assert router.destinations_for("stock.changed") == ()


def test_enabled_write_backs_become_subscriptions_and_destinations() -> None:
    """Only channels with `enabled: true`; the destination carries the channel's sender."""
    settings = settings_from_mapping(
        {
            "channels": [
                {**_raw("taobao"), "writeback": {"enabled": True, "retry_schedule": [1, 2]}},
                {**_raw("jd"), "writeback": {"enabled": False}},
            ]
        },
        env={},
    )

    subs = writeback_subscriptions(settings.channels)
    dest = writeback_destination(settings.channels[0], _unused_http)

    assert subs == [("writeback.tb", ["shipment.created"], "tb")]
    assert (dest.id, dest.policy.schedule, dest.max_in_flight) == ("writeback.tb", (1.0, 2.0), 4)
    assert isinstance(dest.sender, ChannelWritebackSender)


def _raw(kind: str) -> dict[str, Any]:
    short = {"taobao": "tb", "jd": "jd"}[kind]
    return {
        "id": short,
        "kind": kind,
        "app_key": "k",
        "app_secret": "s",
        ("session" if kind == "taobao" else "access_token"): "t",
    }


async def _unused_http(request: wb.WritebackRequest, timeout: float) -> HttpResponse:
    raise AssertionError("no HTTP expected")


def test_config_refuses_a_write_back_without_the_platform_credentials() -> None:
    """A Shopify write-back needs the Admin API token: said at start-up, with the path."""
    with pytest.raises(Exception, match="writeback needs access_token"):
        settings_from_mapping(
            {
                "channels": [
                    {"id": "s", "kind": "shopify", "secret": "x", "writeback": {"enabled": True}}
                ]
            },
            env={},
        )


def test_config_refuses_a_destination_named_like_a_write_back() -> None:
    """`writeback.<channel>` is taken by the channel's write-back destination."""
    with pytest.raises(Exception, match="reserved for channel 'tb'"):
        settings_from_mapping(
            {
                "channels": [{**_raw("taobao"), "writeback": {"enabled": True}}],
                "destinations": [
                    {"id": "writeback.tb", "url": "http://x.test", "secret": "whsec_AAAA"}
                ],
            },
            env={},
        )


# ---- the event ---------------------------------------------------------------------------


def test_the_event_gives_the_platform_order_id_and_the_mapped_company_code() -> None:
    """carrier_code yuantong maps to TOP's YTO; the order's id on the platform is used."""
    shipped = wb.shipped_from_event(event(SHIPMENT_DATA), {"yuantong": "YTO"})

    assert shipped == wb.Shipped("4611686018427387905", "YT9876543210", "YTO", "shp_TEAPOT")


def test_an_unmapped_carrier_code_is_sent_as_it_is() -> None:
    shipped = wb.shipped_from_event(event(SHIPMENT_DATA), {})

    assert shipped.company == "yuantong"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (event(SHIPMENT_DATA, "order.shipped"), "cannot write back a 'order.shipped' event"),
        (event({**SHIPMENT_DATA, "external_id": None}), "lacks external_id"),
        (b"not json", "not JSON"),
    ],
)
def test_an_event_that_cannot_be_written_back_is_refused_permanently(
    body: bytes, reason: str
) -> None:
    refused = failure(wb.shipped_from_event, body, {})

    assert reason in refused.detail
    assert refused.retryable is False


# ---- shared HTTP rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (500, True),
        (502, True),
        (503, True),
        (429, True),
        (408, True),
        (400, False),
        (401, False),
        (404, False),
        (422, False),
    ],
)
def test_http_statuses_split_into_retryable_and_permanent(status: int, retryable: bool) -> None:
    refused = failure(wb.check_http, "Shopify", answer(status, {"errors": "nope"}))

    assert (refused.status, refused.retryable) == (status, retryable)


# ---- Shopify -------------------------------------------------------------------------------


def test_shopify_asks_for_the_order_s_fulfillment_orders_with_the_access_token() -> None:
    shop = channel("shopify")
    assert isinstance(shop, ShopifyChannel)

    request = wb.shopify_fulfillment_orders(shop, wb.Shipped("450789469", "SF1", "SF Express", "s"))

    assert request.method == "GET"
    assert (
        request.url == "http://shop.test/admin/api/2025-10/orders/450789469/fulfillment_orders.json"
    )
    assert ("X-Shopify-Access-Token", "shpat_blue_teapot") in request.headers


def test_shopify_fulfils_the_open_fulfillment_orders_with_tracking_info() -> None:
    shop = channel("shopify")
    assert isinstance(shop, ShopifyChannel)
    shipped = wb.Shipped("450789469", "SF1400020001", "SF Express", "shp_1")

    request = wb.shopify_fulfillment(shop, shipped, (1046000778, 1046000779))

    assert (request.method, request.url) == (
        "POST",
        "http://shop.test/admin/api/2025-10/fulfillments.json",
    )
    assert request.json() == {
        "fulfillment": {
            "line_items_by_fulfillment_order": [
                {"fulfillment_order_id": 1046000778},
                {"fulfillment_order_id": 1046000779},
            ],
            "tracking_info": {"number": "SF1400020001", "company": "SF Express"},
            "notify_customer": True,
        }
    }


def test_shopify_reads_the_open_fulfillment_orders() -> None:
    body = {
        "fulfillment_orders": [
            {"id": 1, "status": "closed"},
            {"id": 2, "status": "open"},
            {"id": 3, "status": "in_progress"},
        ]
    }

    assert wb.read_shopify_fulfillment_orders(answer(200, body)) == (2, 3)


def test_a_shopify_order_already_fulfilled_is_not_fulfilled_again() -> None:
    """All fulfillment orders closed: the conversation ends after the GET (a lost answer
    to an earlier attempt must not create a second fulfillment)."""
    shop = channel("shopify")
    talk = wb.shopify_conversation(shop, SHIPPED, NOW)
    next(talk)

    with pytest.raises(StopIteration):
        talk.send(answer(200, {"fulfillment_orders": [{"id": 1, "status": "closed"}]}))


def test_a_shopify_order_on_hold_cannot_be_fulfilled() -> None:
    refused = failure(
        wb.read_shopify_fulfillment_orders,
        answer(200, {"fulfillment_orders": [{"id": 1, "status": "on_hold"}]}),
    )

    assert refused.retryable is False
    assert "on_hold" in refused.detail


def test_a_shopify_refusal_of_the_fulfillment_is_permanent() -> None:
    refused = failure(
        wb.read_shopify_fulfillment, answer(422, {"errors": {"base": ["unfulfillable"]}})
    )

    assert (refused.status, refused.retryable) == (422, False)


def test_a_created_shopify_fulfillment_is_accepted() -> None:
    wb.read_shopify_fulfillment(answer(201, {"fulfillment": {"id": 255858046}}))


# ---- WooCommerce ---------------------------------------------------------------------------


def test_woocommerce_adds_a_customer_note_then_completes_the_order() -> None:
    """Notes first (none yet), then the note, then status completed; Basic auth on each."""
    store = channel("woocommerce")
    shipped = wb.Shipped("1001", "DHL", "Deutsche Post DHL", "shp_1")
    talk = wb.woocommerce_conversation(store, shipped, NOW)

    listing = next(talk)
    note = talk.send(answer(200, []))
    complete = talk.send(answer(201, {"id": 1, "note": "..."}))
    with pytest.raises(StopIteration):
        talk.send(answer(200, {"id": 1001, "status": "completed"}))

    assert (listing.method, listing.url) == (
        "GET",
        "http://woo.test/wp-json/wc/v3/orders/1001/notes",
    )
    assert (note.method, note.url) == ("POST", "http://woo.test/wp-json/wc/v3/orders/1001/notes")
    assert note.json() == {
        "note": "Shipped via Deutsche Post DHL, tracking number DHL",
        "customer_note": True,
    }
    assert (complete.method, complete.url) == ("PUT", "http://woo.test/wp-json/wc/v3/orders/1001")
    assert complete.json() == {"status": "completed"}
    assert ("Authorization", "Basic Y2tfbWF0Y2hhOmNzX21hdGNoYQ==") in note.headers


def test_a_woocommerce_retry_does_not_add_the_note_twice() -> None:
    """The note from the earlier attempt is there: straight to the status update."""
    store = channel("woocommerce")
    talk = wb.woocommerce_conversation(store, SHIPPED, NOW)
    next(talk)

    after = talk.send(answer(200, [{"id": 9, "note": wb.woo_note_text(SHIPPED)}]))

    assert after.method == "PUT"


def test_an_unknown_woocommerce_order_is_permanent() -> None:
    body = {"code": "woocommerce_rest_shop_order_invalid_id", "message": "Invalid ID."}

    refused = failure(wb.read_woo, answer(404, body))

    assert refused.retryable is False
    assert "woocommerce_rest_shop_order_invalid_id" in refused.detail


# ---- Taobao TOP ----------------------------------------------------------------------------


def test_taobao_offline_send_is_a_signed_form_post() -> None:
    """tid, out_sid and company_code, signed as the pull calls (the gateway's check)."""
    top = channel("taobao")
    assert isinstance(top, TaobaoChannel)

    request = wb.taobao_offline_send(top, SHIPPED, NOW)
    form = request.form()

    assert (request.method, request.url) == ("POST", "http://top.test/router/rest")
    assert form["method"] == "taobao.logistics.offline.send"
    assert (form["tid"], form["out_sid"], form["company_code"]) == (
        "4611686018427387905",
        "SF1400020001",
        "SF",
    )
    assert (form["session"], form["timestamp"]) == ("6100-session", "2026-11-28 14:30:00")
    assert taobao.verify_sign(form, "top-secret")
    assert not taobao.verify_sign({**form, "out_sid": "SF999"}, "top-secret")


def test_taobao_reads_a_successful_shipping() -> None:
    top = channel("taobao")
    assert isinstance(top, TaobaoChannel)
    body = {"logistics_offline_send_response": {"shipping": {"is_success": True}}}

    wb.read_taobao_offline_send(top, answer(200, body))


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (
            {
                "code": 15,
                "msg": "Remote service error",
                "sub_code": "isv.logistics-offline-service-error:B04",
            },
            False,
        ),
        ({"code": 27, "msg": "Invalid session"}, False),
        (
            {
                "code": 7,
                "msg": "App Call Limited",
                "sub_code": "accesscontrol.limited-by-app-access-count",
            },
            True,
        ),
        (
            {
                "code": 15,
                "msg": "Remote service error",
                "sub_code": "isp.logistics-service-unavailable",
            },
            True,
        ),
    ],
)
def test_taobao_errors_are_permanent_unless_busy_or_the_platform_s_own(
    error: dict[str, Any], retryable: bool
) -> None:
    top = channel("taobao")
    assert isinstance(top, TaobaoChannel)

    refused = failure(wb.read_taobao_offline_send, top, answer(200, {"error_response": error}))

    assert refused.retryable is retryable
    assert str(error["code"]) in refused.detail


def test_taobao_in_xml_is_read_too() -> None:
    top = channel("taobao", format="xml")
    assert isinstance(top, TaobaoChannel)
    body = (
        b'<?xml version="1.0" encoding="utf-8" ?><logistics_offline_send_response>'
        b"<shipping><is_success>true</is_success></shipping></logistics_offline_send_response>"
    )

    wb.read_taobao_offline_send(top, answer(200, body, raw=True))


# ---- JD ------------------------------------------------------------------------------------


def test_jd_shipment_is_signed_and_carries_the_business_json() -> None:
    shop = channel("jd")
    assert isinstance(shop, JdChannel)

    form = wb.jd_order_shipment(
        shop, wb.Shipped("9007199254740993", "JDV0001", "467", "s"), NOW
    ).form()

    assert form["method"] == "jingdong.pop.order.shipment"
    assert json.loads(form["360buy_param_json"]) == {
        "orderId": "9007199254740993",
        "logiCoprId": "467",
        "logiNo": "JDV0001",
    }
    assert jd.verify_sign(form, "jd-secret")


def test_jd_reads_success_and_refusals() -> None:
    ok = {
        "jingdong_pop_order_shipment_responce": {
            "code": "0",
            "sopjosshipment_result": {"success": True},
        }
    }
    refused_body = {
        "jingdong_pop_order_shipment_responce": {
            "code": "0",
            "sopjosshipment_result": {
                "success": False,
                "code": "10400001",
                "chineseErrCode": "订单已出库",
            },
        }
    }

    wb.read_jd_order_shipment(answer(200, ok))
    refused = failure(wb.read_jd_order_shipment, answer(200, refused_body))
    limited = failure(
        wb.read_jd_order_shipment,
        answer(
            200,
            {
                "error_response": {
                    "code": "63",
                    "en_desc": "call limit exceeded",
                    "zh_desc": "调用频率超限",
                }
            },
        ),
    )

    assert refused.retryable is False
    assert "订单已出库" in refused.detail
    assert limited.retryable is True


# ---- Douyin --------------------------------------------------------------------------------


def test_douyin_logistics_add_signs_the_query_and_posts_param_json() -> None:
    shop = channel("douyin")
    assert isinstance(shop, DouyinChannel)

    request = wb.douyin_logistics_add(
        shop, wb.Shipped("6920000000000000001", "YT1", "yuantong", "s"), NOW
    )
    params = dict(request.params)

    assert (request.method, request.url) == ("POST", "http://dy.test/order/logisticsAdd")
    assert request.json() == {
        "company_code": "yuantong",
        "logistics_code": "YT1",
        "order_id": "6920000000000000001",
    }
    assert params["method"] == "order.logisticsAdd"
    assert douyin.verify_call({**params, "param_json": request.body.decode()}, "dy-secret")


def test_douyin_reads_success_and_errors() -> None:
    wb.read_douyin_logistics_add(answer(200, {"code": 10000, "msg": "success", "data": {}}))
    refused = failure(
        wb.read_douyin_logistics_add,
        answer(
            200, {"code": 50001, "msg": "订单状态不允许发货", "sub_code": "isv.business-failed"}
        ),
    )
    limited = failure(
        wb.read_douyin_logistics_add,
        answer(
            200, {"code": 50002, "msg": "调用频率超限 (rate limit)", "sub_code": "isp.rate-limited"}
        ),
    )

    assert refused.retryable is False
    assert limited.retryable is True


# ---- the sender ----------------------------------------------------------------------------


class ScriptedHttp:
    """Answers write-back requests from a list, recording them."""

    def __init__(self, *answers: HttpResponse | BaseException) -> None:
        self.answers = list(answers)
        self.requests: list[wb.WritebackRequest] = []

    async def __call__(self, request: wb.WritebackRequest, timeout: float) -> HttpResponse:
        self.requests.append(request)
        found = self.answers.pop(0)
        if isinstance(found, BaseException):
            raise found
        return found


TOP_OK = answer(200, {"logistics_offline_send_response": {"shipping": {"is_success": True}}})


async def test_the_sender_runs_the_platform_call_and_reports_success() -> None:
    http = ScriptedHttp(TOP_OK)
    sender = ChannelWritebackSender(channel("taobao"), http, clock=lambda: NOW)

    outcome = await sender.send("channel:taobao-cn", "", "evt_1", event(SHIPMENT_DATA), 5.0)
    form = dict(parse_qsl(http.requests[0].body.decode()))

    assert (outcome.ok, outcome.status, outcome.permanent) == (True, 200, False)
    assert (form["tid"], form["out_sid"], form["company_code"]) == (
        "4611686018427387905",
        "YT9876543210",
        "YTO",
    )


async def test_the_sender_reports_a_platform_refusal_as_permanent() -> None:
    error = {"error_response": {"code": 15, "msg": "Remote service error", "sub_code": "isv.x"}}
    sender = ChannelWritebackSender(channel("taobao"), ScriptedHttp(answer(200, error)))

    outcome = await sender.send("", "", "evt_1", event(SHIPMENT_DATA), 5.0)

    assert (outcome.ok, outcome.permanent) == (False, True)
    assert outcome.error is not None
    assert "isv.x" in outcome.error


async def test_the_sender_reports_timeouts_and_5xx_as_retryable() -> None:
    sender = ChannelWritebackSender(
        channel("taobao"), ScriptedHttp(TimeoutError(), answer(503, {"busy": True}))
    )

    timed_out = await sender.send("", "", "evt_1", event(SHIPMENT_DATA), 2.0)
    busy = await sender.send("", "", "evt_1", event(SHIPMENT_DATA), 2.0)

    assert (timed_out.ok, timed_out.permanent, timed_out.error) == (
        False,
        False,
        "timeout after 2s",
    )
    assert (busy.ok, busy.status, busy.permanent) == (False, 503, False)


async def test_the_sender_never_puts_credentials_in_the_error() -> None:
    """A refusal's error is stored and shown in the API: no session, token or secret."""
    sender = ChannelWritebackSender(channel("taobao"), ScriptedHttp(answer(401, {"x": 1})))

    outcome = await sender.send("", "", "evt_1", event(SHIPMENT_DATA), 2.0)

    assert outcome.error is not None
    assert "6100-session" not in outcome.error
    assert "top-secret" not in outcome.error


# ---- the dispatcher ------------------------------------------------------------------------


async def test_a_permanent_failure_is_dead_lettered_at_once_and_the_next_event_goes() -> None:
    """No retries for a refusal the platform will repeat; the order's lane moves on."""
    dest = writeback_destination(channel("taobao"), _unused_http)
    refusal = AttemptOutcome(False, 200, "TOP error 15", 1.0, permanent=True)
    sender = FakeSender({"evt_refused": [refusal]})
    dest = type(dest)(
        id=dest.id,
        url=dest.url,
        secret="",
        policy=RetryPolicy(schedule=(0.01, 0.01), backoff=None),
        timeout=1.0,
        max_in_flight=4,
        sender=sender,
    )
    store = FakeDeliveryStore()
    store.add(dest.id, "ord_TEAPOT", "evt_refused")
    store.add(dest.id, "ord_TEAPOT", "evt_next")
    dispatcher = Dispatcher([dest], store, FakeSender(default=refusal))
    dispatcher.start()
    try:
        await wait_until(store.all_settled, poke=dispatcher.wake, timeout=5.0)
    finally:
        await dispatcher.stop()

    refused, nxt = store.by_event("evt_refused"), store.by_event("evt_next")
    assert (refused.state, refused.attempts) == (DeliveryState.DEAD, 1)
    assert nxt.state is DeliveryState.SUCCEEDED
    assert sender.sent_event_ids() == ["evt_refused", "evt_next"]


# ---- parcels, re-bookings and lost answers -------------------------------------------------

PARCEL = wb.Shipped(
    "4611686018427387905",
    "SF1400020002",
    "SF",
    "shp_PARCEL2",
    lines=(wb.ShippedLine("4611686018427387907", 2, "MATCHA-WHISK"),),
    completes_order=False,
)
REBOOKED = wb.Shipped("4611686018427387905", "YT9876543210", "YTO", "shp_NEW", replaces=("SF1",))
TOP_CONSIGNED = answer(
    200,
    {
        "error_response": {
            "code": 15,
            "msg": "Remote service error",
            "sub_code": "isv.logistics-offline-service-error:B150",
            "sub_msg": "订单已发货，不能重复发货 (already consigned)",
        }
    },
)


def top_shippings(*out_sids: str) -> HttpResponse:
    rows = [{"tid": 4611686018427387905, "out_sid": o, "company_name": "SF"} for o in out_sids]
    body = {"shippings": {"shipping": rows}, "total_results": len(rows)}
    return answer(200, {"logistics_orders_get_response": body})


def test_the_event_s_parcel_lines_and_replaced_waybills_are_read() -> None:
    """A parcel of some lines, not the last; re-booked from an earlier waybill."""
    data = {
        **SHIPMENT_DATA,
        "lines": [{"external_id": "4611686018427387907", "quantity": 2, "sku": "MATCHA-WHISK"}],
        "completes_order": False,
        "replaces": [{"id": "shp_OLD", "tracking_number": "SF1400000001"}],
    }

    shipped = wb.shipped_from_event(event(data), {})

    assert shipped.lines == (wb.ShippedLine("4611686018427387907", 2, "MATCHA-WHISK"),)
    assert (shipped.partial, shipped.completes_order) == (True, False)
    assert shipped.replaces == ("SF1400000001",)


def test_an_event_without_lines_is_the_whole_order() -> None:
    shipped = wb.shipped_from_event(event(SHIPMENT_DATA), {})

    assert (shipped.lines, shipped.partial, shipped.completes_order, shipped.replaces) == (
        (),
        False,
        True,
        (),
    )


@pytest.mark.parametrize(
    "line",
    [{"quantity": 1}, {"external_id": "7001", "quantity": 0}, {"external_id": "7001"}],
)
def test_a_parcel_line_without_platform_id_or_quantity_is_refused_permanently(
    line: dict[str, Any],
) -> None:
    refused = failure(wb.shipped_from_event, event({**SHIPMENT_DATA, "lines": [line]}), {})

    assert refused.retryable is False
    assert "platform line id or a quantity" in refused.detail


@pytest.mark.parametrize(
    ("detail", "shipped"),
    [
        ("TOP error 15 Remote service error (isv.x:B150: 订单已发货，不能重复发货)", True),
        ("JOS shipment refused 10400002: order already shipped 订单已出库", True),
        ("Douyin error 50001 订单已发货 (isv.business-failed:order-shipped)", True),
        ("TOP error 15 Remote service error (isv.x:B01: 交易不存在或状态不允许发货)", False),
        ("JOS shipment refused 10400001: order cannot be shipped", False),
    ],
)
def test_already_shipped_refusals_are_told_from_other_refusals(detail: str, shipped: bool) -> None:
    assert wb.already_shipped(detail) is shipped


def test_an_already_shipped_order_with_our_waybill_was_our_lost_answer() -> None:
    assert wb.settle_shipped("TOP", SHIPPED, ["SF1400020001"]) is None


def test_an_already_shipped_order_with_a_replaced_waybill_is_to_be_updated() -> None:
    assert wb.settle_shipped("TOP", REBOOKED, ["SF1"]) == "SF1"


def test_an_already_shipped_order_with_a_foreign_waybill_is_a_permanent_failure() -> None:
    refused = failure(wb.settle_shipped, "TOP", SHIPPED, ["ZT7300000001"])

    assert refused.retryable is False
    assert "already shipped with waybill ZT7300000001, not ours (SF1400020001)" in refused.detail


def test_taobao_sends_a_partial_parcel_as_a_split_consignment() -> None:
    """is_split=1 and the parcel's sub-orders (oids) in sub_tid, signed with the rest."""
    top = channel("taobao")
    assert isinstance(top, TaobaoChannel)

    form = wb.taobao_offline_send(top, PARCEL, NOW).form()

    assert (form["is_split"], form["sub_tid"]) == ("1", "4611686018427387907")
    assert taobao.verify_sign(form, "top-secret")


def _run(talk: wb.Conversation, *answers: HttpResponse) -> list[wb.WritebackRequest]:
    """Drive a conversation with these answers; the requests it made (to its end)."""
    requests = [next(talk)]
    for given in answers:
        try:
            requests.append(talk.send(given))
        except StopIteration:
            return requests
    raise AssertionError(f"the conversation goes on after {len(answers)} answers")


def _refusal(talk: wb.Conversation, *answers: HttpResponse) -> wb.WritebackFailed:
    """Drive a conversation with these answers; the failure the last one makes it raise."""
    next(talk)
    for given in answers[:-1]:
        talk.send(given)
    return failure(talk.send, answers[-1])


def test_a_taobao_retry_after_a_lost_answer_finds_our_waybill_and_stops() -> None:
    top = channel("taobao")
    talk = wb.taobao_conversation(top, SHIPPED, NOW)

    sent = _run(talk, TOP_CONSIGNED, top_shippings("SF1400020001"))

    assert [r.form()["method"] for r in sent] == [
        "taobao.logistics.offline.send",
        "taobao.logistics.orders.get",
    ]
    assert sent[1].form()["tid"] == "4611686018427387905"
    assert taobao.verify_sign(sent[1].form(), "top-secret")


def test_a_taobao_re_booking_resends_the_consignment_with_the_new_waybill() -> None:
    top = channel("taobao")
    resent = answer(200, {"logistics_consign_resend_response": {"shipping": {"is_success": True}}})

    sent = _run(
        wb.taobao_conversation(top, REBOOKED, NOW), TOP_CONSIGNED, top_shippings("SF1"), resent
    )
    form = sent[2].form()

    assert form["method"] == "taobao.logistics.consign.resend"
    assert (form["tid"], form["out_sid"], form["company_code"]) == (
        "4611686018427387905",
        "YT9876543210",
        "YTO",
    )
    assert taobao.verify_sign(form, "top-secret")


def test_a_taobao_order_consigned_with_another_waybill_is_refused_permanently() -> None:
    talk = wb.taobao_conversation(channel("taobao"), SHIPPED, NOW)

    refused = _refusal(talk, TOP_CONSIGNED, top_shippings("ZT7300000001"))

    assert refused.retryable is False
    assert "ZT7300000001" in refused.detail


def test_a_busy_taobao_is_retried_without_asking_what_shipped() -> None:
    talk = wb.taobao_conversation(channel("taobao"), SHIPPED, NOW)
    busy = {"error_response": {"code": 7, "msg": "App Call Limited", "sub_code": "x.limited-by-y"}}

    refused = _refusal(talk, answer(200, busy))

    assert refused.retryable is True


JOS_SHIPPED = answer(
    200,
    {
        "jingdong_pop_order_shipment_responce": {
            "code": "0",
            "sopjosshipment_result": {
                "success": False,
                "code": "10400002",
                "englishErrCode": "order already shipped",
                "chineseErrCode": "订单已出库",
            },
        }
    },
)


def jos_order(waybill: str) -> HttpResponse:
    info = {"orderId": "4611686018427387905", "waybill": waybill, "logisticsId": "467"}
    body = {"code": "0", "orderDetailInfo": {"orderInfo": info, "apiResult": {"success": True}}}
    return answer(200, {"jingdong_pop_order_get_responce": body})


def test_jd_does_not_write_back_a_parcel_that_leaves_lines_to_ship() -> None:
    """JOS ships whole orders: the parcel that completes the order is written back."""
    shop = channel("jd")

    with pytest.raises(StopIteration):
        next(wb.jd_conversation(shop, PARCEL, NOW))
    last = next(wb.jd_conversation(shop, replace(PARCEL, completes_order=True), NOW))

    assert json.loads(last.form()["360buy_param_json"])["logiNo"] == "SF1400020002"


def test_a_jd_retry_after_a_lost_answer_reads_the_order_s_waybill() -> None:
    sent = _run(
        wb.jd_conversation(channel("jd"), SHIPPED, NOW), JOS_SHIPPED, jos_order("SF1400020001")
    )
    form = sent[1].form()

    assert form["method"] == "jingdong.pop.order.get"
    assert json.loads(form["360buy_param_json"])["order_id"] == "4611686018427387905"
    assert jd.verify_sign(form, "jd-secret")


def test_a_jd_re_booking_is_refused_for_an_operator() -> None:
    talk = wb.jd_conversation(channel("jd"), REBOOKED, NOW)

    refused = _refusal(talk, JOS_SHIPPED, jos_order("SF1"))

    assert refused.retryable is False
    assert "cannot change a shipped order's waybill" in refused.detail


DOUYIN_SHIPPED = answer(
    200,
    {"code": 50001, "msg": "订单已发货 (already shipped)", "sub_code": "isv.business-failed"},
)


def douyin_detail(*tracking: str) -> HttpResponse:
    parcels = [{"tracking_no": t, "company": "shunfeng"} for t in tracking]
    detail = {"order_id": "4611686018427387905", "logistics_info": parcels}
    return answer(200, {"code": 10000, "msg": "success", "data": {"shop_order_detail": detail}})


def test_douyin_ships_a_partial_parcel_as_a_single_pack_of_its_sku_orders() -> None:
    """order.logisticsAddSinglePack: the sku orders and counts, our shipment id as the
    platform's request_id (a repeat makes no second pack)."""
    shop = channel("douyin")
    assert isinstance(shop, DouyinChannel)

    request = wb.douyin_logistics_add(shop, PARCEL, NOW)

    assert request.url == "http://dy.test/order/logisticsAddSinglePack"
    assert request.json() == {
        "company_code": "SF",
        "logistics_code": "SF1400020002",
        "order_id_list": ["4611686018427387905"],
        "request_id": "shp_PARCEL2",
        "shipped_order_info": [{"shipped_num": 2, "shipped_order_id": "4611686018427387907"}],
    }
    assert douyin.verify_call(
        {**dict(request.params), "param_json": request.body.decode()}, "dy-secret"
    )


def test_a_douyin_re_booking_edits_the_order_s_logistics() -> None:
    ok = answer(200, {"code": 10000, "msg": "success", "data": {}})

    sent = _run(
        wb.douyin_conversation(channel("douyin"), REBOOKED, NOW),
        DOUYIN_SHIPPED,
        douyin_detail("SF1"),
        ok,
    )

    assert [r.url for r in sent] == [
        "http://dy.test/order/logisticsAdd",
        "http://dy.test/order/orderDetail",
        "http://dy.test/order/logisticsEdit",
    ]
    assert dict(sent[1].params)["method"] == "order.orderDetail"
    assert sent[2].json()["logistics_code"] == "YT9876543210"


def test_a_douyin_retry_after_a_lost_answer_stops_at_our_waybill() -> None:
    sent = _run(
        wb.douyin_conversation(channel("douyin"), SHIPPED, NOW),
        DOUYIN_SHIPPED,
        douyin_detail("SF1400020001"),
    )

    assert len(sent) == 2


SHOPIFY_FO = {
    "fulfillment_orders": [
        {
            "id": 4501,
            "status": "in_progress",
            "line_items": [
                {"id": 70011, "line_item_id": 7001, "quantity": 1, "fulfillable_quantity": 0},
                {"id": 70021, "line_item_id": 7002, "quantity": 3, "fulfillable_quantity": 3},
            ],
        }
    ]
}


def test_shopify_fulfils_a_parcel_s_lines_from_the_fulfillment_order_lines() -> None:
    parcel = replace(SHIPPED, lines=(wb.ShippedLine("7002", 2),), completes_order=False)
    orders = SHOPIFY_FO["fulfillment_orders"]

    picks = wb.shopify_line_picks(orders, parcel)
    request = wb.shopify_fulfillment(channel("shopify"), parcel, (), picks)  # type: ignore[arg-type]

    assert picks == ((4501, ((70021, 2),)),)
    assert request.json()["fulfillment"]["line_items_by_fulfillment_order"] == [
        {
            "fulfillment_order_id": 4501,
            "fulfillment_order_line_items": [{"id": 70021, "quantity": 2}],
        }
    ]


def test_shopify_refuses_a_parcel_line_that_is_fulfilled_already() -> None:
    parcel = replace(SHIPPED, lines=(wb.ShippedLine("7001", 1),))

    refused = failure(wb.shopify_line_picks, SHOPIFY_FO["fulfillment_orders"], parcel)

    assert refused.retryable is False
    assert "line item 7001 × 1" in refused.detail


def test_a_shopify_re_booking_updates_the_fulfillment_s_tracking() -> None:
    closed = {"fulfillment_orders": [{"id": 4501, "status": "closed", "line_items": []}]}
    fulfillments = {
        "fulfillments": [{"id": 255858046, "status": "success", "tracking_number": "SF1"}]
    }
    shop = channel("shopify")

    sent = _run(
        wb.shopify_conversation(shop, REBOOKED, NOW),
        answer(200, closed),
        answer(200, fulfillments),
        answer(200, {"fulfillment": {"id": 255858046}}),
    )

    assert (sent[1].method, sent[1].url) == (
        "GET",
        "http://shop.test/admin/api/2025-10/orders/4611686018427387905/fulfillments.json",
    )
    assert (sent[2].method, sent[2].url) == (
        "POST",
        "http://shop.test/admin/api/2025-10/fulfillments/255858046/update_tracking.json",
    )
    assert sent[2].json()["fulfillment"]["tracking_info"] == {
        "number": "YT9876543210",
        "company": "YTO",
    }


def test_a_shopify_parcel_whose_fulfillment_exists_is_not_fulfilled_again() -> None:
    """A lost answer: the retry finds our tracking number on a fulfillment and stops."""
    parcel = replace(SHIPPED, lines=(wb.ShippedLine("7002", 2),))
    ours = {"fulfillments": [{"id": 1, "status": "success", "tracking_numbers": ["SF1400020001"]}]}

    sent = _run(
        wb.shopify_conversation(channel("shopify"), parcel, NOW),
        answer(200, SHOPIFY_FO),
        answer(200, ours),
    )

    assert [r.method for r in sent] == ["GET", "GET"]


def test_a_woocommerce_parcel_is_noted_with_its_lines_and_leaves_the_order_open() -> None:
    store = channel("woocommerce")
    parcel = replace(
        SHIPPED, lines=(wb.ShippedLine("100101", 2, "MATCHA-WHISK"),), completes_order=False
    )

    sent = _run(
        wb.woocommerce_conversation(store, parcel, NOW), answer(200, []), answer(201, {"id": 1})
    )

    assert [r.method for r in sent] == ["GET", "POST"]
    assert (
        sent[1].json()["note"] == "Shipped via SF, tracking number SF1400020001: 2 × MATCHA-WHISK"
    )


def test_a_woocommerce_re_booking_notes_the_replaced_number() -> None:
    assert wb.woo_note_text(REBOOKED) == (
        "Shipped via YTO, tracking number YT9876543210 (replaces tracking number SF1)"
    )


async def test_the_sender_counts_a_lost_answer_found_on_the_platform_as_success() -> None:
    """Through the sender: refused as consigned, our waybill recorded: ok, not permanent."""
    http = ScriptedHttp(TOP_CONSIGNED, top_shippings("YT9876543210"))
    sender = ChannelWritebackSender(channel("taobao"), http, clock=lambda: NOW)

    outcome = await sender.send("", "", "evt_1", event(SHIPMENT_DATA), 5.0)

    assert (outcome.ok, outcome.permanent, len(http.requests)) == (True, False, 2)


def test_a_woocommerce_note_for_a_longer_number_does_not_count_as_ours() -> None:
    """SF12's note is not SF1's: the retry of SF1 still adds its own."""
    notes = [{"id": 9, "note": "Shipped via SF, tracking number SF12"}]
    shipped = replace(SHIPPED, tracking_number="SF1")

    assert wb.read_woo_notes(answer(200, notes), shipped) is False
    assert wb.read_woo_notes(answer(200, [{"note": wb.woo_note_text(shipped)}]), shipped) is True


# ---- the modules ---------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["writeback", "writeback_cn"])
def test_either_write_back_module_can_be_imported_first(
    first: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`writeback` and `writeback_cn` (the China platforms) import each other at their ends:
    in a fresh interpreter either may come first, and `writeback` names the same functions."""
    package = importlib.import_module("ordersync.adapters.channels")
    for name in ("writeback", "writeback_cn"):  # put back as they were after the test
        monkeypatch.delitem(sys.modules, f"ordersync.adapters.channels.{name}")
        monkeypatch.delattr(package, name, raising=False)

    importlib.import_module(f"ordersync.adapters.channels.{first}")
    core = sys.modules["ordersync.adapters.channels.writeback"]
    cn = sys.modules["ordersync.adapters.channels.writeback_cn"]

    assert core is not wb
    assert core.conversation_for("douyin") is cn.douyin_conversation
    assert core.taobao_offline_send is cn.taobao_offline_send
    assert cn.WritebackFailed is core.WritebackFailed
