"""The connector interface (v2): what every sales channel implements, and its small types.

A connector is stateless and shared by every channel of its kind; each call gets the
channel's configuration. Pulling is sans-I/O: the connector builds `HttpRequest`s and reads
`HttpResponse`s, the pull engine does the waiting, rate limiting and HTTP, so connectors
are tested with plain bytes and platforms' quirks stay in one file per platform.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from ordersync.adapters.channels.readers import required_obj
from ordersync.adapters.channels.shopify import InexactNumber, MappingError
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.orders import OrderSnapshot
from ordersync.service.pull import (
    HttpRequest,
    HttpResponse,
    PulledOrder,
    PullError,
    PullPage,
    Throttled,
    Window,
)

if TYPE_CHECKING:
    from ordersync.config import ChannelConfig

__all__ = [
    "Capability",
    "ChannelConnector",
    "HttpRequest",
    "HttpResponse",
    "InboundError",
    "InboundMessage",
    "MappingError",
    "PullError",
    "PullPage",
    "PulledOrder",
    "StatusRule",
    "StatusTable",
    "Throttled",
    "Window",
    "statuses_for",
]


# The form body the Chinese platforms' gateways (TOP, JOS, Douyin) take for a signed call.
FORM_CONTENT_TYPE = ("Content-Type", "application/x-www-form-urlencoded;charset=utf-8")


def platform_busy(words: str) -> bool:
    """A platform's refusal that says "too many calls" or "busy" (English or Chinese:
    频 frequency, 繁忙 busy, 限流 throttled): retryable, the platform's trouble."""
    lowered = words.lower()
    return any(w in lowered for w in ("limit", "busy")) or any(
        w in words for w in ("频", "繁忙", "限流")
    )


class Capability(StrEnum):
    """What a connector can do; the hub only asks a connector for what it declares."""

    PUSH = "push"  # signed webhooks to POST /v1/channels/{id}/webhooks
    PULL = "pull"  # incremental pull by modified-time window
    FULFILLMENT_WRITE_BACK = "fulfillment_write_back"  # carrier + tracking number
    PARTIAL_SHIPMENT_WRITE_BACK = "partial_shipment_write_back"  # some lines only
    STOCK_PUSH = "stock_push"  # available quantities to the platform
    ORDER_NOTE = "order_note"  # a note on the platform's order


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
    # A handshake (e.g. WooCommerce's "webhook_id=N" ping): answer 200, store nothing.
    ack_only: bool = False


# ---- status mapping -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusRule:
    """Where one platform status lands. `payment` None: the connector derives the payment
    state from the order's own data (paid date, refunds); `ignore`: not an order yet."""

    status: OrderStatus
    payment: PaymentStatus | None = None
    ignore: bool = False


@dataclass(frozen=True, slots=True)
class StatusTable:
    """Platform status -> canonical status, per channel: the connector's defaults with the
    channel's overrides from config applied on top."""

    rules: Mapping[str, StatusRule]

    def with_overrides(self, overrides: Mapping[str, StatusRule]) -> StatusTable:
        if not overrides:
            return self
        return StatusTable({**self.rules, **overrides})

    def rule(self, platform_status: object, path: str) -> StatusRule:
        if not isinstance(platform_status, str) or not platform_status:
            raise MappingError(path, f"expected a status string, got {platform_status!r}")
        found = self.rules.get(platform_status)
        if found is None:
            known = ", ".join(sorted(self.rules))
            raise MappingError(
                path, f"unknown status {platform_status!r} (mapped: {known}); map it in config"
            )
        return found


_merged: dict[tuple[int, tuple[tuple[str, StatusRule], ...]], StatusTable] = {}


def statuses_for(defaults: StatusTable, channel: ChannelConfig) -> StatusTable:
    """A channel's status table: the connector's defaults, overridden by its config."""
    if not channel.statuses:
        return defaults
    overrides = tuple(
        (k, StatusRule(v.status, v.payment, v.ignore)) for k, v in channel.statuses.items()
    )
    key = (id(defaults), overrides)
    table = _merged.get(key)
    if table is None:
        table = _merged[key] = defaults.with_overrides(dict(overrides))
    return table


def pulled_order(
    order: Any,
    path: str,
    *,
    ident: Callable[[Mapping[str, Any], str], str],
    modified: Callable[[Mapping[str, Any], str], datetime | None],
    snapshot: Callable[[Mapping[str, Any], str], OrderSnapshot | None],
    raw: bytes | None = None,
) -> PulledOrder:
    """One order of a pull page, mapped. An order that cannot be mapped is kept raw with
    its error (and with its id and time when those read), so the inbox shows what was
    refused instead of the pull stalling on it."""
    raw = orjson.dumps(order, default=str) if raw is None else raw
    external_id, changed = "?", None
    try:
        found = required_obj(order, path)
        external_id = ident(found, path)
        changed = modified(found, path)
        return PulledOrder(external_id, changed, snapshot(found, path), raw)
    except InexactNumber:
        raise  # a float where an exact number belongs: the caller re-reads the page exactly
    except MappingError as e:
        return PulledOrder(external_id, changed, None, raw, error=str(e))


def numbered_page(
    pulled: tuple[PulledOrder, ...], total: int, page_size: int, max_page_size: int
) -> PullPage:
    """A page of a platform that reports its total count: the page count follows from it."""
    return PullPage(pulled, math.ceil(total / min(page_size, max_page_size)), total)


class PullOnly:
    """For connectors whose platform pushes through its own message service rather than
    HTTP webhooks: the webhook route answers 404 `push_not_supported`."""

    kind: str

    def verify(self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes) -> bool:
        return False

    def parse(
        self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes
    ) -> InboundMessage:
        raise InboundError(
            404, "push_not_supported", f"{self.kind} channels are pulled, not pushed"
        )


# ---- pulling: the engine's types (service/pull.py), re-exported for connector authors ----


@runtime_checkable
class ChannelConnector(Protocol):
    """A sales channel. Register built-ins in `registry.py`; third parties publish an entry
    point in the group "ordersync.channels" whose object has these attributes."""

    kind: str
    capabilities: frozenset[Capability]
    default_statuses: StatusTable

    def verify(self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes) -> bool:
        """True only if the platform signed exactly these bytes (PUSH)."""
        ...

    def parse(
        self, channel: ChannelConfig, headers: Mapping[str, str], body: bytes
    ) -> InboundMessage:
        """The verified message, mapped; raises InboundError to refuse it (PUSH)."""
        ...

    def pull_request(
        self, channel: ChannelConfig, window: Window, page: int, page_size: int
    ) -> HttpRequest:
        """The request for one page (1-based) of orders modified in `window` (PULL)."""
        ...

    def pull_response(
        self, channel: ChannelConfig, response: HttpResponse, page_size: int
    ) -> PullPage:
        """The page, mapped; raises Throttled or PullError (PULL)."""
        ...
