"""Sans-I/O requests that set a channel's stock level, the readers of their answers, and a
`StockPush` that sends them.

* Shopify Admin REST: `POST /admin/api/{version}/inventory_levels/set.json` with
  `{"location_id", "inventory_item_id", "available"}` (an absolute level, so a retried or
  duplicated push is harmless), authenticated by `X-Shopify-Access-Token`.
* WooCommerce REST v3: `PUT /wp-json/wc/v3/products/{id}` with
  `{"stock_quantity", "manage_stock": true}`, HTTP Basic with the consumer key and secret.
* Taobao/Tmall TOP: `taobao.item.quantity.update` with `num_iid`, `sku_id` or `outer_id`
  (one SKU of an item with SKUs), `quantity` and `type=1` (a full update: the absolute
  level), signed like the pull calls (`taobao.sign`), as a form POST; answers
  `item_quantity_update_response.item`.
* JD JOS: `jingdong.stock.write.updateSkuStock` with `skuId` and `stockNum` (absolute) in
  `360buy_param_json`, signed like the pull calls (`jd.sign`), as a form POST; answers
  `jingdong_stock_write_updateSkuStock_responce.success`.
* Douyin: `sku.syncStock` with `sku_id` (or `code` and `product_id`), `stock_num` and
  `incremental: false` (absolute): the signed common parameters (`douyin.sign`) in the
  query, `param_json` as the JSON body; answers `{code: 10000}`.

The builders only build (method, url, headers, body, query); each request names the reader
of its answer. `RequestStockPush` maps a SKU to the platform's ids, builds the request,
hands it to an injected `send` and reads the answer, raising `StockPushFailed` unless it
took: `retryable` for HTTP 408, 429 and 5xx and the platforms' "busy" errors (TOP code 7
and `isp.*`, JOS and Douyin rate limits), permanent for any other refusal (unknown item,
bad signature, expired session), which the publisher does not retry at once.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import aiohttp

from ordersync.adapters.channels import douyin, jd, taobao
from ordersync.adapters.channels.base import FORM_CONTENT_TYPE, PullError, platform_busy
from ordersync.clock import utcnow
from ordersync.service.stock_publisher import StockPushError, StockPushObserver

SHOPIFY_SET_PATH = "/admin/api/{version}/inventory_levels/set.json"
WOO_PRODUCT_PATH = "/wp-json/wc/v3/products/{id}"
TAOBAO_QUANTITY_METHOD = "taobao.item.quantity.update"
TAOBAO_QUANTITY_RESPONSE_KEY = "item_quantity_update_response"
JD_STOCK_METHOD = "jingdong.stock.write.updateSkuStock"
JD_STOCK_RESPONSE_KEY = "jingdong_stock_write_updateSkuStock_responce"  # JD's own spelling
DOUYIN_STOCK_METHOD = "sku.syncStock"

_FORM = FORM_CONTENT_TYPE
_JSON = ("Content-Type", "application/json")

# (status, body text) -> None, or StockAnswerError
Reader = Callable[[int, str], None]


@dataclass(frozen=True, slots=True)
class PushRequest:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = field(repr=False)  # credentials: never in logs
    body: bytes = field(repr=False)  # a form POST carries the session
    params: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # the query
    reader: Reader | None = field(default=None, repr=False, compare=False)  # None: 2xx

    def json(self) -> object:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))


class StockAnswerError(StockPushError):
    """The platform's answer says the push did not take (raised by a reader)."""

    def __init__(self, detail: str, *, retryable: bool) -> None:
        super().__init__(detail, retryable=retryable)
        self.detail = detail


class StockPushFailed(StockPushError):
    def __init__(
        self, channel_id: str, sku: str, status: int, detail: str = "", *, retryable: bool = True
    ) -> None:
        super().__init__(
            f"stock push {channel_id}/{sku} answered {status} {detail}".rstrip(),
            retryable=retryable,
        )
        self.status = status


def _check_quantity(quantity: int) -> None:
    if quantity < 0:
        raise ValueError(f"a published quantity cannot be negative: {quantity}")


def shopify_set_level(
    admin_base: str,
    api_version: str,
    access_token: str,
    *,
    location_id: int,
    inventory_item_id: int,
    available: int,
) -> PushRequest:
    """`inventory_levels/set.json`: the absolute `available` of one item at one location."""
    _check_quantity(available)
    body = {
        "location_id": location_id,
        "inventory_item_id": inventory_item_id,
        "available": available,
    }
    return PushRequest(
        "POST",
        admin_base.rstrip("/") + SHOPIFY_SET_PATH.format(version=api_version),
        (
            ("X-Shopify-Access-Token", access_token),
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ),
        json.dumps(body, separators=(",", ":")).encode(),
    )


def woocommerce_set_stock(
    site_base: str,
    consumer_key: str,
    consumer_secret: str,
    *,
    product_id: int,
    quantity: int,
) -> PushRequest:
    """`PUT products/{id}`: the managed `stock_quantity` of one product (or variation id)."""
    _check_quantity(quantity)
    credentials = base64.b64encode(f"{consumer_key}:{consumer_secret}".encode()).decode()
    body = {"stock_quantity": quantity, "manage_stock": True}
    return PushRequest(
        "PUT",
        site_base.rstrip("/") + WOO_PRODUCT_PATH.format(id=quote(str(product_id), safe="")),
        (
            ("Authorization", "Basic " + credentials),
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ),
        json.dumps(body, separators=(",", ":")).encode(),
    )


# ---- answers ----------------------------------------------------------------------------


def read_http(status: int, text: str) -> None:
    """Any 2xx took; 408, 429 and 5xx may pass on a retry, other statuses will not."""
    if 200 <= status < 300:
        return
    retryable = status in (408, 429) or status >= 500
    raise StockAnswerError(f"HTTP {status}: {text[:200]}", retryable=retryable)


def _json_object(platform: str, text: str) -> Mapping[str, Any]:
    try:
        data = json.loads(text, parse_float=Decimal)
    except (ValueError, RecursionError) as e:
        # A 2xx that is not JSON comes from a proxy or a gateway in trouble: try again.
        raise StockAnswerError(f"{platform} answered malformed JSON: {e}", retryable=True) from None
    if not isinstance(data, Mapping):
        raise StockAnswerError(f"{platform} answered JSON that is not an object", retryable=True)
    return data


def read_taobao_quantity_update(status: int, text: str, fmt: str = "json") -> None:
    """`taobao.item.quantity.update`: the item back, or `error_response` (code 7 "App Call
    Limited" and `isp.*` are the platform's trouble: retryable; `isv.*`, a bad signature or
    session: permanent)."""
    read_http(status, text)
    try:
        data = taobao.decode(text.encode("utf-8"), fmt)
    except PullError as e:
        raise StockAnswerError(str(e), retryable=True) from None
    error = data.get("error_response")
    if error is not None:
        err = error if isinstance(error, Mapping) else {}
        code, sub_code = str(err.get("code", "")), str(err.get("sub_code", ""))
        detail = f"TOP error {code} {err.get('msg', '')} ({sub_code}: {err.get('sub_msg', '')})"
        busy = code == "7" or "call-limited" in sub_code or "limited-by" in sub_code
        raise StockAnswerError(detail, retryable=busy or sub_code.startswith("isp."))
    body = data.get(TAOBAO_QUANTITY_RESPONSE_KEY)
    if not isinstance(body, Mapping) or not isinstance(body.get("item"), Mapping):
        raise StockAnswerError(
            f"TOP answered without {TAOBAO_QUANTITY_RESPONSE_KEY}.item", retryable=True
        )


def read_jd_update_sku_stock(status: int, text: str) -> None:
    """`jingdong.stock.write.updateSkuStock`: `success: true`, or an `error_response` (a
    rate limit or "busy" is retryable; a bad token, signature or SKU is not)."""
    read_http(status, text)
    data = _json_object("JOS", text)
    error = data.get("error_response")
    if error is not None:
        err = error if isinstance(error, Mapping) else {}
        desc = f"{err.get('en_desc', '')} {err.get('zh_desc', '')}".strip()
        raise StockAnswerError(
            f"JOS error {err.get('code', '')}: {desc}", retryable=platform_busy(desc)
        )
    envelope = data.get(JD_STOCK_RESPONSE_KEY)
    if not isinstance(envelope, Mapping):
        raise StockAnswerError(f"JOS answered without {JD_STOCK_RESPONSE_KEY}", retryable=True)
    if envelope.get("success") not in (True, "true"):
        words = f"{envelope.get('message', '')} {envelope.get('msg', '')}"
        raise StockAnswerError(
            f"JOS refused the stock update (code {envelope.get('code', '')}: {words.strip()})",
            retryable=platform_busy(words),
        )


def read_douyin_sync_stock(status: int, text: str) -> None:
    """`sku.syncStock`: code 10000, or an error (rate limits and `isp.*` are retryable; a
    bad signature, an expired token or an unknown SKU are not)."""
    read_http(status, text)
    data = _json_object("Douyin", text)
    code = data.get("code")
    if code == douyin.OK:
        return
    sub_code = str(data.get("sub_code", ""))
    words = f"{data.get('msg', '')} {data.get('sub_msg', '')}"
    raise StockAnswerError(
        f"Douyin error {code} {data.get('msg', '')} ({sub_code}: {data.get('sub_msg', '')})",
        retryable=platform_busy(words) or sub_code.startswith("isp."),
    )


# ---- Taobao / JD / Douyin requests --------------------------------------------------------


def taobao_quantity_update(
    gateway: str,
    app_key: str,
    app_secret: str,
    session: str,
    *,
    num_iid: int,
    quantity: int,
    sku_id: int | None = None,
    outer_id: str | None = None,
    sign_method: str = "md5",
    fmt: str = "json",
    now: datetime | None = None,
) -> PushRequest:
    """`taobao.item.quantity.update`, `type=1`: the absolute `quantity` of an item, or of one
    of its SKUs (`sku_id`, or the merchant code `outer_id`)."""
    _check_quantity(quantity)
    params = {
        "method": TAOBAO_QUANTITY_METHOD,
        "app_key": app_key,
        "session": session,
        "timestamp": taobao.top_time(now or utcnow()),
        "format": fmt,
        "v": "2.0",
        "sign_method": sign_method,
        "num_iid": str(num_iid),
        "quantity": str(quantity),
        "type": "1",  # 1: full update (the level), 2: a delta
    }
    if sku_id is not None:
        params["sku_id"] = str(sku_id)
    if outer_id is not None:
        params["outer_id"] = outer_id
    params["sign"] = taobao.sign(params, app_secret, sign_method)
    return PushRequest(
        "POST",
        gateway,
        (_FORM,),
        urlencode(params).encode("utf-8"),
        reader=partial(read_taobao_quantity_update, fmt=fmt),
    )


def jd_update_sku_stock(
    gateway: str,
    app_key: str,
    app_secret: str,
    access_token: str,
    *,
    sku_id: int,
    quantity: int,
    now: datetime | None = None,
) -> PushRequest:
    """`jingdong.stock.write.updateSkuStock`: the absolute `stockNum` of one JD SKU."""
    _check_quantity(quantity)
    params = {
        "method": JD_STOCK_METHOD,
        "app_key": app_key,
        "access_token": access_token,
        "timestamp": jd.jos_time(now or utcnow()),
        "v": "2.0",
        "360buy_param_json": jd.param_json({"skuId": sku_id, "stockNum": quantity}),
    }
    params["sign"] = jd.sign(params, app_secret)
    return PushRequest(
        "POST",
        gateway,
        (_FORM,),
        urlencode(params).encode("utf-8"),
        reader=read_jd_update_sku_stock,
    )


def douyin_sync_stock(
    gateway: str,
    app_key: str,
    app_secret: str,
    access_token: str,
    *,
    quantity: int,
    sku_id: int | None = None,
    code: str | None = None,
    product_id: int | None = None,
    sign_method: str = "hmac-sha256",
    now: datetime | None = None,
) -> PushRequest:
    """`sku.syncStock`, `incremental: false`: the absolute `stock_num` of one SKU, named by
    `sku_id` or by its merchant `code` (with its `product_id`)."""
    _check_quantity(quantity)
    if sku_id is None and code is None:
        raise ValueError("a Douyin stock update needs sku_id or code")
    business: dict[str, Any] = {"stock_num": quantity, "incremental": False}
    if sku_id is not None:
        business["sku_id"] = sku_id
    else:
        business["code"] = code
    if product_id is not None:
        business["product_id"] = product_id
    body = douyin.param_json(business)
    stamp = douyin.open_time(now or utcnow())
    params = {
        "app_key": app_key,
        "method": DOUYIN_STOCK_METHOD,
        "access_token": access_token,
        "timestamp": stamp,
        "v": "2",
        "sign_method": sign_method,
        "sign": douyin.sign(
            app_key, app_secret, DOUYIN_STOCK_METHOD, body, stamp, "2", sign_method
        ),
    }
    return PushRequest(
        "POST",
        gateway.rstrip("/") + "/" + DOUYIN_STOCK_METHOD.replace(".", "/"),
        (_JSON,),
        body.encode("utf-8"),
        tuple(params.items()),
        reader=read_douyin_sync_stock,
    )


# (channel_id, sku, quantity) -> request; None: this channel does not list that SKU.
RequestBuilder = Callable[[str, int], PushRequest | None]
# request -> (status, body text)
Send = Callable[[PushRequest], Awaitable[tuple[int, str]]]


@dataclass(frozen=True, slots=True)
class ShopifyStockTarget:
    admin_base: str
    api_version: str
    access_token: str = field(repr=False)
    location_id: int
    items: Mapping[str, int]  # sku -> inventory_item_id

    def request(self, sku: str, quantity: int) -> PushRequest | None:
        item = self.items.get(sku)
        if item is None:
            return None
        return shopify_set_level(
            self.admin_base,
            self.api_version,
            self.access_token,
            location_id=self.location_id,
            inventory_item_id=item,
            available=quantity,
        )


@dataclass(frozen=True, slots=True)
class WooCommerceStockTarget:
    site_base: str
    consumer_key: str = field(repr=False)
    consumer_secret: str = field(repr=False)
    products: Mapping[str, int]  # sku -> product (or variation) id

    def request(self, sku: str, quantity: int) -> PushRequest | None:
        product = self.products.get(sku)
        if product is None:
            return None
        return woocommerce_set_stock(
            self.site_base,
            self.consumer_key,
            self.consumer_secret,
            product_id=product,
            quantity=quantity,
        )


@dataclass(frozen=True, slots=True)
class ItemIds:
    """A SKU's ids on Taobao, JD or Douyin (config.py's `items` value, read per kind)."""

    num_iid: int | None = None
    sku_id: int | None = None
    outer_id: str | None = None
    code: str | None = None
    product_id: int | None = None


def item_ids(kind: str, value: Any) -> ItemIds:
    """An `items` value as ids: a plain integer is Taobao's `num_iid`, JD's and Douyin's
    `sku_id`; a `StockItemRef` says which is which."""
    if isinstance(value, int):
        return ItemIds(num_iid=value) if kind == "taobao" else ItemIds(sku_id=value)
    return ItemIds(
        num_iid=value.num_iid,
        sku_id=value.sku_id,
        outer_id=value.outer_id,
        code=value.code,
        product_id=value.product_id,
    )


@dataclass(frozen=True, slots=True)
class TaobaoStockTarget:
    gateway: str
    app_key: str
    app_secret: str = field(repr=False)
    session: str = field(repr=False)
    items: Mapping[str, ItemIds]
    sign_method: str = "md5"
    fmt: str = "json"
    clock: Callable[[], datetime] = utcnow

    def request(self, sku: str, quantity: int) -> PushRequest | None:
        ids = self.items.get(sku)
        if ids is None or ids.num_iid is None:
            return None
        return taobao_quantity_update(
            self.gateway,
            self.app_key,
            self.app_secret,
            self.session,
            num_iid=ids.num_iid,
            sku_id=ids.sku_id,
            outer_id=ids.outer_id,
            quantity=quantity,
            sign_method=self.sign_method,
            fmt=self.fmt,
            now=self.clock(),
        )


@dataclass(frozen=True, slots=True)
class JdStockTarget:
    gateway: str
    app_key: str
    app_secret: str = field(repr=False)
    access_token: str = field(repr=False)
    items: Mapping[str, ItemIds]
    clock: Callable[[], datetime] = utcnow

    def request(self, sku: str, quantity: int) -> PushRequest | None:
        ids = self.items.get(sku)
        if ids is None or ids.sku_id is None:
            return None
        return jd_update_sku_stock(
            self.gateway,
            self.app_key,
            self.app_secret,
            self.access_token,
            sku_id=ids.sku_id,
            quantity=quantity,
            now=self.clock(),
        )


@dataclass(frozen=True, slots=True)
class DouyinStockTarget:
    gateway: str
    app_key: str
    app_secret: str = field(repr=False)
    access_token: str = field(repr=False)
    items: Mapping[str, ItemIds]
    sign_method: str = "hmac-sha256"
    clock: Callable[[], datetime] = utcnow

    def request(self, sku: str, quantity: int) -> PushRequest | None:
        ids = self.items.get(sku)
        if ids is None or (ids.sku_id is None and ids.code is None):
            return None
        return douyin_sync_stock(
            self.gateway,
            self.app_key,
            self.app_secret,
            self.access_token,
            quantity=quantity,
            sku_id=ids.sku_id,
            code=ids.code,
            product_id=ids.product_id,
            sign_method=self.sign_method,
            now=self.clock(),
        )


class RequestStockPush:
    """The `StockPush` port over request builders per channel and one `send` function.
    `observer` (the metrics) is picked up by the publisher that pushes through this port."""

    def __init__(
        self,
        builders: Mapping[str, RequestBuilder],
        send: Send,
        *,
        observer: StockPushObserver | None = None,
    ) -> None:
        self._builders = dict(builders)
        self._send = send
        self.observer = observer

    async def push(self, channel_id: str, sku: str, quantity: int) -> None:
        builder = self._builders.get(channel_id)
        request = builder(sku, quantity) if builder is not None else None
        if request is None:
            return  # nothing listed there: nothing to publish
        status, text = await self._send(request)
        try:
            (request.reader or read_http)(status, text)
        except StockAnswerError as e:
            raise StockPushFailed(
                channel_id, sku, status, e.detail[:300], retryable=e.retryable
            ) from None


class HttpStockSend:
    """The `Send` of the running hub: one aiohttp session, opened on first use. Network
    errors propagate, so the publisher retries them like a 5xx."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, request: PushRequest) -> tuple[int, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.request(
            request.method,
            request.url,
            headers=dict(request.headers),
            params=list(request.params) or None,
            data=request.body,
        ) as response:
            return response.status, await response.text(errors="replace")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _integer_items(items: Mapping[str, Any]) -> dict[str, int]:
    """Shopify and WooCommerce take one integer id per SKU (config.py checked)."""
    return {sku: int(ref) for sku, ref in items.items()}


def builder_for(channel: Any) -> RequestBuilder | None:
    """The request builder of a configured channel with `stock_publishing` (config.py's
    Shopify, WooCommerce, Taobao, JD or Douyin channel), or None if it publishes none."""
    sp = getattr(channel, "stock_publishing", None)
    if sp is None or not sp.enabled:
        return None
    if channel.kind == "shopify":
        return ShopifyStockTarget(
            channel.admin_base,
            channel.api_version,
            channel.access_token.get_secret_value(),
            sp.location_id,
            _integer_items(sp.items),
        ).request
    if channel.kind == "woocommerce":
        return WooCommerceStockTarget(
            channel.store_url,
            channel.consumer_key.get_secret_value(),
            channel.consumer_secret.get_secret_value(),
            _integer_items(sp.items),
        ).request
    if channel.kind in ("taobao", "jd", "douyin"):
        ids = {sku: item_ids(channel.kind, ref) for sku, ref in sp.items.items()}
        secret = channel.app_secret.get_secret_value()
        if channel.kind == "taobao":
            return TaobaoStockTarget(
                channel.gateway,
                channel.app_key,
                secret,
                channel.session.get_secret_value(),
                ids,
                channel.sign_method,
                channel.format,
            ).request
        token = channel.access_token.get_secret_value()
        if channel.kind == "jd":
            return JdStockTarget(channel.gateway, channel.app_key, secret, token, ids).request
        return DouyinStockTarget(
            channel.gateway, channel.app_key, secret, token, ids, channel.sign_method
        ).request
    raise ValueError(f"channel {channel.id!r}: no stock push for kind {channel.kind!r}")
