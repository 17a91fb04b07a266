"""Which connector serves which channel kind: the built-ins, plus third-party plugins.

Built-in connectors are registered here directly. A third party publishes an entry point in
the group "ordersync.channels" (name = the kind, value = a connector object or a class or
factory that returns one); it is loaded the first time its kind is asked for, and checked
against the `ChannelConnector` interface then, so a broken plugin fails at start-up with
its name rather than on the first webhook.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points

import orjson

from ordersync.adapters.channels import shopify
from ordersync.adapters.channels.base import (
    Capability,
    ChannelConnector,
    HttpRequest,
    HttpResponse,
    InboundError,
    InboundMessage,
    PullPage,
    StatusRule,
    StatusTable,
    Window,
    statuses_for,
)
from ordersync.adapters.channels.douyin import DouyinConnector
from ordersync.adapters.channels.generic import GenericConnector
from ordersync.adapters.channels.jd import JdConnector
from ordersync.adapters.channels.taobao import TaobaoConnector
from ordersync.adapters.channels.woocommerce import WooCommerceConnector
from ordersync.config import PLUGIN_GROUP, ChannelConfig, ShopifyChannel
from ordersync.domain.order_status import PAYMENT_SECURED, OrderStatus, PaymentStatus

__all__ = [
    "BUILTIN",
    "ChannelConnector",
    "InboundError",
    "InboundMessage",
    "PluginError",
    "ShopifyConnector",
    "connector_for",
    "discover",
    "status_table",
]


class PluginError(Exception):
    """A third-party connector could not be loaded or does not fit the interface."""


class ShopifyConnector:
    """Shopify orders webhooks, and pulls through the Admin REST orders endpoint (cursor
    pagination, see `shopify.pull_request`). Shopify's order status is derived from several fields
    (financial_status, fulfillment_status, cancelled_at), so its table holds the
    financial_status values; the rest is fixed in `shopify._status`."""

    kind = "shopify"
    capabilities = frozenset({Capability.PUSH, Capability.PULL})
    default_statuses = StatusTable(
        {
            name: StatusRule(
                OrderStatus.PAID if payment in PAYMENT_SECURED else OrderStatus.PENDING,
                payment,
            )
            for name, payment in shopify.PAYMENT_STATUSES.items()
        }
    )
    _AUDIT_HEADERS = (
        "x-shopify-topic",
        "x-shopify-shop-domain",
        "x-shopify-webhook-id",
        "x-shopify-triggered-at",
        "x-shopify-api-version",
        "x-shopify-event-id",
    )

    def verify(self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes) -> bool:
        assert isinstance(channel, ShopifyChannel)
        secret = channel.secret.get_secret_value()
        return shopify.verify_hmac(secret, body, headers.get("x-shopify-hmac-sha256"))

    def parse(
        self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes
    ) -> InboundMessage:
        assert isinstance(channel, ShopifyChannel)
        shop_domain = channel.shop_domain
        if shop_domain is not None and headers.get("x-shopify-shop-domain") != shop_domain:
            raise InboundError(
                401, "unknown_shop", "X-Shopify-Shop-Domain does not match this channel"
            )
        message_id = headers.get("x-shopify-webhook-id")
        if not message_id:
            raise InboundError(400, "missing_header", "X-Shopify-Webhook-Id is required")
        topic = headers.get("x-shopify-topic")
        if not topic:
            raise InboundError(400, "missing_header", "X-Shopify-Topic is required")
        if b"\\u0000" in body:
            # No database text column can hold NUL; refuse it before it poisons a batch.
            raise InboundError(422, "invalid_payload", "NUL characters (\\u0000) are not accepted")
        payments = _shopify_payments(channel)
        try:
            if topic in shopify.TOPICS:
                snapshot = shopify.decode_order(channel.id, body, payments=payments)
            else:
                shopify.parse_body(body)  # still a well-formed JSON object, or 422
                snapshot = None
        except shopify.MappingError as e:
            raise InboundError(422, "invalid_payload", str(e), path=e.path) from None
        kept = {h: headers[h] for h in self._AUDIT_HEADERS if h in headers}
        return InboundMessage(message_id, topic, snapshot, orjson.dumps(kept).decode())

    def pull_request(
        self, channel: ChannelConfig, window: Window, page: int, page_size: int
    ) -> HttpRequest:
        assert isinstance(channel, ShopifyChannel)
        return shopify.pull_request(channel, window, page, page_size)

    def pull_response(
        self, channel: ChannelConfig, response: HttpResponse, page_size: int
    ) -> PullPage:
        assert isinstance(channel, ShopifyChannel)
        return shopify.pull_response(
            channel, response, page_size, payments=_shopify_payments(channel)
        )


def _shopify_payments(channel: ShopifyChannel) -> Mapping[str, PaymentStatus] | None:
    """financial_status -> payment with the channel's overrides; None: the defaults."""
    if not channel.statuses:
        return None
    table = status_table(channel)
    return {k: r.payment for k, r in table.rules.items() if r.payment is not None}


BUILTIN: dict[str, ChannelConnector] = {
    "shopify": ShopifyConnector(),
    "woocommerce": WooCommerceConnector(),
    "taobao": TaobaoConnector(),
    "jd": JdConnector(),
    "douyin": DouyinConnector(),
    "generic": GenericConnector(),
}
_plugins: dict[str, ChannelConnector] = {}


def discover(
    group: str = PLUGIN_GROUP, *, found: Callable[[], list[EntryPoint]] | None = None
) -> dict[str, ChannelConnector]:
    """Load every installed plugin connector (built-ins win a name clash)."""
    eps = found() if found is not None else list(entry_points(group=group))
    loaded: dict[str, ChannelConnector] = {}
    for ep in eps:
        if ep.name in BUILTIN:
            continue
        loaded[ep.name] = _load(ep)
    return loaded


def _load(ep: EntryPoint) -> ChannelConnector:
    try:
        obj = ep.load()
    except Exception as e:
        raise PluginError(f"channel plugin {ep.name!r} ({ep.value}) failed to load: {e}") from e
    if isinstance(obj, type) or (callable(obj) and not isinstance(obj, ChannelConnector)):
        obj = obj()
    if not isinstance(obj, ChannelConnector):
        raise PluginError(f"channel plugin {ep.name!r} ({ep.value}) is not a ChannelConnector")
    if obj.kind != ep.name:
        raise PluginError(f"channel plugin {ep.name!r} declares kind {obj.kind!r}")
    if not all(isinstance(c, Capability) for c in obj.capabilities):
        raise PluginError(f"channel plugin {ep.name!r} declares unknown capabilities")
    return obj


def connector_for(kind: str) -> ChannelConnector:
    connector = BUILTIN.get(kind) or _plugins.get(kind)
    if connector is None:
        for ep in entry_points(group=PLUGIN_GROUP, name=kind):
            connector = _plugins[kind] = _load(ep)
            break
    if connector is None:
        raise PluginError(f"no connector for channel kind {kind!r}")
    return connector


def status_table(channel: ChannelConfig) -> StatusTable:
    """The channel's status table: its connector's defaults, overridden by its config."""
    return statuses_for(connector_for(channel.kind).default_statuses, channel)
