"""Sans-I/O requests that set a channel's stock level, and a `StockPush` that sends them.

* Shopify Admin REST: `POST /admin/api/{version}/inventory_levels/set.json` with
  `{"location_id", "inventory_item_id", "available"}` (an absolute level, so a retried or
  duplicated push is harmless), authenticated by `X-Shopify-Access-Token`.
* WooCommerce REST v3: `PUT /wp-json/wc/v3/products/{id}` with
  `{"stock_quantity", "manage_stock": true}`, HTTP Basic with the consumer key and secret.

The builders only build (method, url, headers, body); `RequestStockPush` maps a SKU to the
platform's ids, builds the request and hands it to an injected `send`, raising on a non-2xx
answer so the publisher retries.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

SHOPIFY_SET_PATH = "/admin/api/{version}/inventory_levels/set.json"
WOO_PRODUCT_PATH = "/wp-json/wc/v3/products/{id}"


@dataclass(frozen=True, slots=True)
class PushRequest:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


class StockPushFailed(Exception):
    def __init__(self, channel_id: str, sku: str, status: int, detail: str = "") -> None:
        super().__init__(f"stock push {channel_id}/{sku} answered {status} {detail}".rstrip())
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


# (channel_id, sku, quantity) -> request; None: this channel does not list that SKU.
RequestBuilder = Callable[[str, int], PushRequest | None]
# request -> (status, body text)
Send = Callable[[PushRequest], Awaitable[tuple[int, str]]]


@dataclass(frozen=True, slots=True)
class ShopifyStockTarget:
    admin_base: str
    api_version: str
    access_token: str
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
    consumer_key: str
    consumer_secret: str
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


class RequestStockPush:
    """The `StockPush` port over request builders per channel and one `send` function."""

    def __init__(self, builders: Mapping[str, RequestBuilder], send: Send) -> None:
        self._builders = dict(builders)
        self._send = send

    async def push(self, channel_id: str, sku: str, quantity: int) -> None:
        builder = self._builders.get(channel_id)
        request = builder(sku, quantity) if builder is not None else None
        if request is None:
            return  # nothing listed there: nothing to publish
        status, text = await self._send(request)
        if not 200 <= status < 300:
            raise StockPushFailed(channel_id, sku, status, text[:200])
