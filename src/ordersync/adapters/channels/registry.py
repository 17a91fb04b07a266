"""Channel connectors: how each platform's inbound messages are verified and parsed.

A connector is chosen by the channel's `kind`. The sales-channels work adds more kinds
(and entry-point plugins); the webhook route only ever talks to this interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import orjson

from ordersync.adapters.channels import shopify
from ordersync.domain.orders import OrderSnapshot


class InboundError(Exception):
    """An inbound message we refuse; `status` is the HTTP answer, `code` the problem type."""

    def __init__(self, status: int, code: str, detail: str, path: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.path = path


@dataclass(frozen=True, slots=True)
class InboundMessage:
    message_id: str
    topic: str | None
    snapshot: OrderSnapshot | None  # None: a topic we record but do not act on
    headers: str  # the platform headers worth keeping for audit, as JSON


class ChannelConnector(Protocol):
    kind: str

    def verify(self, secret: str, headers: Mapping[str, str], body: bytes) -> bool: ...

    def parse(
        self, channel_id: str, headers: Mapping[str, str], body: bytes, *, shop_domain: str | None
    ) -> InboundMessage: ...


class ShopifyConnector:
    kind = "shopify"
    _AUDIT_HEADERS = (
        "x-shopify-topic",
        "x-shopify-shop-domain",
        "x-shopify-webhook-id",
        "x-shopify-triggered-at",
        "x-shopify-api-version",
        "x-shopify-event-id",
    )

    def verify(self, secret: str, headers: Mapping[str, str], body: bytes) -> bool:
        return shopify.verify_hmac(secret, body, headers.get("x-shopify-hmac-sha256"))

    def parse(
        self, channel_id: str, headers: Mapping[str, str], body: bytes, *, shop_domain: str | None
    ) -> InboundMessage:
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
        try:
            if topic in shopify.TOPICS:
                snapshot: OrderSnapshot | None = shopify.decode_order(channel_id, body)
            else:
                shopify.parse_body(body)  # still a well-formed JSON object, or 422
                snapshot = None
        except shopify.MappingError as e:
            raise InboundError(422, "invalid_payload", str(e), path=e.path) from None
        kept = {h: headers[h] for h in self._AUDIT_HEADERS if h in headers}
        return InboundMessage(message_id, topic, snapshot, orjson.dumps(kept).decode())


CONNECTORS: dict[str, ChannelConnector] = {"shopify": ShopifyConnector()}


def connector_for(kind: str) -> ChannelConnector:
    return CONNECTORS[kind]
