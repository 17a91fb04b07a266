"""Settings: one YAML file plus environment overrides. No I/O at import time.

Secrets may be written as `env:NAME`; they are resolved when the file is loaded and kept
as `SecretStr`, so they never show in reprs or logs. A bad file fails at start-up with the
path of the bad key (`destinations[0].retry_schedule[1]: ...`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.shipments import CallbackRetry, ShipmentStatus

ENV_PREFIX = "ORDERSYNC_"
# Top-level keys that an environment variable may override, e.g. ORDERSYNC_DATABASE_URL.
ENV_OVERRIDES = ("database_url", "broker_url", "log_level", "public_url")


class ConfigError(Exception):
    """The configuration is unusable; the message names the bad key."""


class Scope(StrEnum):
    ORDERS_READ = "orders:read"
    ORDERS_WRITE = "orders:write"
    DELIVERIES_READ = "deliveries:read"
    DELIVERIES_WRITE = "deliveries:write"
    INVENTORY_READ = "inventory:read"
    INVENTORY_WRITE = "inventory:write"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PullConfig(_Model):
    """Incremental pull by modified-time window (see service/pull.py and ADR 5)."""

    interval: float = Field(default=60.0, gt=0)  # seconds between rounds once caught up
    overlap: float = Field(default=300.0, ge=0)  # seconds each window re-reads (late writes)
    page_size: int = Field(default=50, ge=1, le=1000)
    max_window: float = Field(default=3600.0, gt=0)  # longest window one request covers
    settle: float = Field(default=5.0, ge=0)  # a window ends this long before now
    rate: float = Field(default=2.0, gt=0)  # requests per second (token bucket)
    burst: int = Field(default=4, ge=1)
    lookback: float = Field(default=86400.0, ge=0)  # first run: start this long ago

    @model_validator(mode="after")
    def _window_outruns_overlap(self) -> PullConfig:
        if self.max_window <= self.overlap:
            raise ValueError("max_window must be longer than overlap, or the pull never advances")
        return self


class StatusRuleConfig(_Model):
    """One row of a channel's status table: platform status -> canonical statuses."""

    status: OrderStatus
    payment: PaymentStatus | None = None  # None: derived from the order (paid date, refunds)
    ignore: bool = False  # not an order yet (e.g. a checkout draft)


WRITEBACK_KINDS = ("shopify", "woocommerce", "taobao", "jd", "douyin")
WritebackEvent = Literal["shipment.created"]  # the events a write-back can turn into a call


class WritebackConfig(_Model):
    """Shipment write-back: push carrier and tracking number to the channel's own order,
    as a delivery to the destination `writeback.<channel id>` (retries, dead letters and
    replay like any destination; see adapters/destinations/channel_writeback.py)."""

    enabled: bool = False
    events: list[WritebackEvent] = Field(
        default_factory=lambda: list[WritebackEvent](["shipment.created"]), min_length=1
    )
    # The hub's carrier code (the shipment's `carrier_code`) -> the platform's own logistics
    # company code (TOP `company_code`, JD `logiCoprId`, Douyin `company_code`) or, for
    # Shopify and WooCommerce, the carrier name shown to the buyer. Unmapped codes are sent
    # as they are.
    carrier_codes: dict[str, str] = Field(default_factory=dict)
    retry_schedule: list[float] = Field(default_factory=lambda: [5.0, 30.0, 120.0])
    retry_backoff: BackoffConfig | None = Field(default_factory=lambda: BackoffConfig())
    timeout: float = Field(default=10.0, gt=0)
    max_in_flight: int = Field(default=4, ge=1, le=64)

    @field_validator("retry_schedule")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(x < 0 for x in v):
            raise ValueError("delays must be >= 0 seconds")
        return v


# What each kind needs to call the platform for a write-back (besides the webhook secret).
_WRITEBACK_NEEDS = {
    "shopify": ("access_token",),
    "woocommerce": ("consumer_key", "consumer_secret"),
    "taobao": ("session",),
    "jd": ("access_token",),
    "douyin": ("access_token",),
}


class StockItemRef(_Model):
    """A SKU's listing where the platform's stock call takes more than one id (a value of
    `stock_publishing.items`). Taobao/Tmall (`taobao.item.quantity.update`): `num_iid`,
    plus `sku_id` or `outer_id` for one SKU of an item with SKUs; JD
    (`jingdong.stock.write.updateSkuStock`): `sku_id`; Douyin (`sku.syncStock`): `sku_id`,
    or `code` (the merchant SKU code) with `product_id`."""

    num_iid: int | None = Field(default=None, gt=0)
    sku_id: int | None = Field(default=None, gt=0)
    outer_id: str | None = Field(default=None, min_length=1)
    code: str | None = Field(default=None, min_length=1)
    product_id: int | None = Field(default=None, gt=0)


def _check_stock_items(kind: str, items: Mapping[str, int | StockItemRef]) -> None:
    """Each kind's stock call needs its ids: refuse an `items` entry lacking them."""
    for sku, ref in items.items():
        if isinstance(ref, int):
            if ref <= 0:
                raise ValueError(f"stock_publishing.items[{sku!r}] must be a positive id")
            continue
        if kind in ("shopify", "woocommerce"):
            raise ValueError(f"stock_publishing.items[{sku!r}] must be an integer id")
        if kind == "taobao" and ref.num_iid is None:
            raise ValueError(f"stock_publishing.items[{sku!r}] needs num_iid")
        if kind == "jd" and ref.sku_id is None:
            raise ValueError(f"stock_publishing.items[{sku!r}] needs sku_id")
        if kind == "douyin" and ref.sku_id is None and ref.code is None:
            raise ValueError(f"stock_publishing.items[{sku!r}] needs sku_id or code")


class StockPublishingConfig(_Model):
    """What a channel is told it can sell (issue 5; domain/stock_publishing.py).

    ATS = (available - safety_stock across the pooled locations' fresh feeds) x ratio
    + fixed, then floor and cap, never more than the pool. `items` maps a SKU to the
    platform's id: an integer (Shopify `inventory_item_id`; WooCommerce product or
    variation id; Taobao/Tmall `num_iid` of an item without SKUs; JD `skuId`; Douyin
    `sku_id`), or a `StockItemRef` where one id is not enough (Taobao `num_iid` with
    `sku_id` or `outer_id`; Douyin `code` with `product_id`). SKUs not listed are not
    published. Pushes are debounced per SKU (`debounce` seconds of
    quiet, but at most `max_wait` after the first change) and rate limited per channel.
    """

    enabled: bool = True
    ratio: Decimal = Field(default=Decimal(1), ge=0, le=1)
    fixed: int = 0  # added after the ratio; negative holds units back
    floor: int = Field(default=0, ge=0)
    cap: int | None = Field(default=None, ge=0)
    safety_stock: int = Field(default=0, ge=0)  # on top of each location's own
    locations: list[str] | None = None  # pooled location ids; None: all
    debounce: float = Field(default=2.0, ge=0)
    max_wait: float = Field(default=30.0, gt=0)
    rate: float = Field(default=2.0, gt=0)  # pushes per second to this channel
    burst: int = Field(default=4, ge=1)
    # Seconds after which a location's last WMS/ERP feed is too old to sell from (it then
    # counts as 0; a pool with no fresh location publishes 0). None: feeds never go stale.
    stale_after: float | None = Field(default=None, gt=0)
    location_id: int | None = None  # Shopify: the location whose level is set
    items: dict[str, int | StockItemRef] = Field(default_factory=dict)
    # Channels naming the same pool share its units (same locations and stale_after):
    # "exclusive" channels partition them (ratios summing to at most 1, served in
    # `priority` order), "shared" ones all advertise what the exclusive ones left.
    # None: the channel is a pool of its own.
    pool: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    promise: Literal["shared", "exclusive"] = "shared"
    priority: int = 0  # exclusive channels with lower priority are served first

    @model_validator(mode="after")
    def _consistent(self) -> StockPublishingConfig:
        if self.cap is not None and self.cap < self.floor:
            raise ValueError(f"cap {self.cap} is below floor {self.floor}")
        if self.max_wait < self.debounce:
            raise ValueError("max_wait must be at least debounce")
        return self


STOCK_PUBLISHING_KINDS = ("shopify", "woocommerce", "taobao", "jd", "douyin")


class _ChannelBase(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    pull: PullConfig | None = None
    # Overrides of the connector's default status table, keyed by platform status.
    statuses: dict[str, StatusRuleConfig] = Field(default_factory=dict)
    writeback: WritebackConfig | None = None
    stock_publishing: StockPublishingConfig | None = None

    @model_validator(mode="after")
    def _stock_publishing_possible(self) -> _ChannelBase:
        sp = self.stock_publishing
        if sp is None or not sp.enabled:
            return self
        kind = getattr(self, "kind", "")
        if kind not in STOCK_PUBLISHING_KINDS:
            raise ValueError(
                f"stock_publishing is not supported for {kind!r} channels"
                f" (supported: {', '.join(STOCK_PUBLISHING_KINDS)})"
            )
        if kind == "shopify":
            if getattr(self, "access_token", None) is None:
                raise ValueError("stock_publishing needs access_token")
            if sp.location_id is None:
                raise ValueError("stock_publishing needs location_id (the Shopify location)")
            if getattr(self, "admin_url", None) is None and (
                getattr(self, "shop_domain", None) is None
            ):
                raise ValueError("stock_publishing needs shop_domain (or admin_url)")
        if kind == "woocommerce" and (
            getattr(self, "consumer_key", None) is None
            or getattr(self, "consumer_secret", None) is None
        ):
            raise ValueError("stock_publishing needs consumer_key and consumer_secret")
        if kind in ("taobao", "jd", "douyin"):  # the seller's authorization, as write-back
            missing = [k for k in _WRITEBACK_NEEDS[kind] if getattr(self, k, None) is None]
            if missing:
                raise ValueError(f"stock_publishing needs {' and '.join(missing)}")
        _check_stock_items(kind, sp.items)
        return self

    @model_validator(mode="after")
    def _writeback_possible(self) -> _ChannelBase:
        if self.writeback is None or not self.writeback.enabled:
            return self
        kind = getattr(self, "kind", "")
        if kind not in WRITEBACK_KINDS:
            raise ValueError(
                f"writeback is not supported for {kind!r} channels"
                f" (supported: {', '.join(WRITEBACK_KINDS)})"
            )
        missing = [k for k in _WRITEBACK_NEEDS[kind] if getattr(self, k, None) is None]
        if missing:
            raise ValueError(f"writeback needs {' and '.join(missing)}")
        if kind == "shopify" and getattr(self, "admin_base", None) is None:
            raise ValueError("writeback needs shop_domain (or admin_url)")
        return self

    @property
    def writeback_id(self) -> str | None:
        """The id of this channel's write-back destination, if it has one."""
        if self.writeback is None or not self.writeback.enabled:
            return None
        return f"writeback.{self.id}"


class ShopifyChannel(_ChannelBase):
    kind: Literal["shopify"]
    secret: SecretStr
    shop_domain: str | None = None  # when set, X-Shopify-Shop-Domain must match
    access_token: SecretStr | None = None  # Admin API token (X-Shopify-Access-Token), for pull
    api_version: str = Field(default="2025-01", pattern=r"^(\d{4}-\d{2}|unstable)$")
    # Where pulls go; default https://{shop_domain}. Set for a simulator or a proxy.
    admin_url: str | None = Field(default=None, pattern=r"^https?://")

    @model_validator(mode="after")
    def _token_for_pull(self) -> ShopifyChannel:
        if self.pull is not None:
            if self.access_token is None:
                raise ValueError("pull needs access_token")
            if self.shop_domain is None and self.admin_url is None:
                raise ValueError("pull needs shop_domain (or admin_url)")
        return self

    @property
    def admin_base(self) -> str:
        """The shop's Admin API origin, without a trailing slash."""
        if self.admin_url is not None:
            return self.admin_url.rstrip("/")
        return f"https://{self.shop_domain}"


class WooCommerceChannel(_ChannelBase):
    kind: Literal["woocommerce"]
    secret: SecretStr  # the webhook secret (X-WC-Webhook-Signature)
    store_url: str = Field(pattern=r"^https?://")  # also X-WC-Webhook-Source, when it is sent
    consumer_key: SecretStr | None = None  # REST API keys, needed for pull
    consumer_secret: SecretStr | None = None

    @model_validator(mode="after")
    def _keys_for_pull(self) -> WooCommerceChannel:
        if self.pull is not None and (self.consumer_key is None or self.consumer_secret is None):
            raise ValueError("pull needs consumer_key and consumer_secret")
        return self


class TaobaoChannel(_ChannelBase):
    kind: Literal["taobao"]
    app_key: str = Field(min_length=1)
    app_secret: SecretStr
    session: SecretStr | None = None  # the seller's authorization, needed for trade calls
    sign_method: Literal["md5", "hmac", "hmac-sha256"] = "md5"
    format: Literal["json", "xml"] = "json"
    gateway: str = Field(default="https://eco.taobao.com/router/rest", pattern=r"^https?://")

    @property
    def secret(self) -> SecretStr:
        return self.app_secret


class JdChannel(_ChannelBase):
    """JD (京东) POP shop through the JOS open platform: signed calls, orders pulled."""

    kind: Literal["jd"]
    app_key: str = Field(min_length=1)
    app_secret: SecretStr
    access_token: SecretStr | None = None  # the seller's authorization
    gateway: str = Field(default="https://api.jd.com/routerjson", pattern=r"^https?://")

    @property
    def secret(self) -> SecretStr:
        return self.app_secret


class DouyinChannel(_ChannelBase):
    """Douyin shop (抖店): signed open API calls (pull) and signed message pushes."""

    kind: Literal["douyin"]
    app_key: str = Field(min_length=1)
    app_secret: SecretStr
    access_token: SecretStr | None = None  # the shop's authorization, needed for pull
    sign_method: Literal["md5", "hmac-sha256"] = "hmac-sha256"
    gateway: str = Field(default="https://openapi-fxg.jinritemai.com", pattern=r"^https?://")

    @property
    def secret(self) -> SecretStr:
        return self.app_secret


class GenericChannel(_ChannelBase):
    """An in-house system described by a declarative mapping file (no code)."""

    kind: Literal["generic"]
    mapping: Path  # YAML or JSON: format, field paths, value maps, transforms
    secret: SecretStr | None = None  # webhook HMAC-SHA256 key; None: pushes are refused
    signature_header: str = "x-signature"


CHANNEL_KINDS = ("shopify", "woocommerce", "taobao", "jd", "douyin", "generic")
PLUGIN_GROUP = "ordersync.channels"  # entry points of third-party connectors


def plugin_kinds() -> list[str]:
    """Kinds that installed packages offer (names only; nothing is imported)."""
    return sorted({ep.name for ep in entry_points(group=PLUGIN_GROUP)} - set(CHANNEL_KINDS))


class PluginChannel(_ChannelBase):
    """A channel served by a third-party connector; its settings are the plugin's own."""

    kind: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    secret: SecretStr | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _installed(cls, v: str) -> str:
        installed = plugin_kinds()
        if v not in installed:
            raise ValueError(
                f"unknown channel kind {v!r} (built in: {', '.join(CHANNEL_KINDS)};"
                f" installed plugins: {', '.join(installed) or 'none'})"
            )
        return v


def _channel_tag(value: Any) -> str:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in CHANNEL_KINDS else "plugin"


ChannelConfig = Annotated[
    Annotated[ShopifyChannel, Tag("shopify")]
    | Annotated[WooCommerceChannel, Tag("woocommerce")]
    | Annotated[TaobaoChannel, Tag("taobao")]
    | Annotated[JdChannel, Tag("jd")]
    | Annotated[DouyinChannel, Tag("douyin")]
    | Annotated[GenericChannel, Tag("generic")]
    | Annotated[PluginChannel, Tag("plugin")],
    Discriminator(_channel_tag),
]


class BackoffConfig(_Model):
    """Exponential backoff with equal jitter after the quick retries, up to `max_age`."""

    base: float = Field(default=30.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1)
    max_delay: float = Field(default=3600.0, gt=0)
    max_age: float = Field(default=86400.0, ge=0)  # seconds since the first attempt


class BreakerConfig(_Model):
    failure_threshold: int = Field(default=20, ge=1)  # consecutive failures to open
    cooldown: float = Field(default=30.0, gt=0)  # seconds open before a half-open probe
    max_cooldown: float = Field(default=600.0, gt=0)


class DestinationConfig(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str = Field(pattern=r"^https?://")
    secret: SecretStr
    events: list[str] = Field(default_factory=lambda: ["order.*"], min_length=1)
    retry_schedule: list[float] = Field(default_factory=lambda: [5.0, 5.0, 5.0])
    retry_backoff: BackoffConfig | None = Field(default_factory=BackoffConfig)
    timeout: float = Field(default=10.0, gt=0)
    max_in_flight: int = Field(default=64, ge=1, le=1024)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)

    @field_validator("secret")
    @classmethod
    def _whsec(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith("whsec_"):
            raise ValueError("must be a Standard Webhooks secret: whsec_<base64>")
        return v

    @field_validator("retry_schedule")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(x < 0 for x in v):
            raise ValueError("delays must be >= 0 seconds")
        return v


class ApiKeyConfig(_Model):
    id: str
    key: SecretStr
    scopes: list[Scope]


class IngestConfig(_Model):
    max_batch: int = Field(default=256, ge=1, le=10_000)  # messages per group commit
    writers: int | None = Field(default=None, ge=1, le=64)  # None: 1 on SQLite, 4 otherwise


class BrokerConfig(_Model):
    """RabbitMQ tuning (used when `broker_url` is set)."""

    # Prefix of the exchanges and queues, so several hubs (or test runs) share one broker.
    namespace: str = Field(default="ordersync", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    lanes: int = Field(default=8, ge=1, le=256)  # quorum queues an order id hashes onto
    prefetch: int = Field(default=32, ge=1, le=65_535)  # unacked messages per worker
    events_per_message: int = Field(default=100, ge=1, le=10_000)  # a lane's events batched
    delivery_limit: int = Field(default=20, ge=1)  # redeliveries before dead-lettering
    # Seconds a first attempt is left to the broker's consumers before the database
    # sweeper takes it (it takes retries and anything a message did not bring at once).
    sweep_grace: float = Field(default=2.0, ge=0)


class WorkerConfig(_Model):
    # A killed worker's delivery and lane leases expire after this; live workers renew
    # theirs every quarter of it. Shorter means faster takeover but more renewals and, on
    # an overloaded box, more leases lost to a stalled event loop (receivers then dedupe
    # the second send by webhook-id).
    lease_seconds: float = Field(default=2.5, gt=0.5)
    relay_lease_seconds: float = Field(default=3.0, gt=0.5)
    relay_batch: int = Field(default=1000, ge=1, le=50_000)


class LocationConfig(_Model):
    """A place stock is held and orders are fulfilled from."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    kind: Literal["warehouse", "store", "factory"]
    region: str = Field(min_length=1, max_length=64)
    priority: int = Field(default=100, ge=0)  # lower is preferred
    capacity: int | None = Field(default=None, ge=0)  # orders per day; None: unlimited
    # Routing (domain/routing.py): where it is (distance scoring) and what shipping costs.
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    cost_per_unit: Decimal = Field(default=Decimal(0), ge=0)
    cost_per_shipment: Decimal = Field(default=Decimal(0), ge=0)

    @model_validator(mode="after")
    def _both_coordinates(self) -> LocationConfig:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon go together")
        return self


class RoutingConfig(_Model):
    """Which location(s) fulfil an order (domain/routing.py; used with `locations`)."""

    allow_split: bool = True  # several shipments when no one location has everything
    max_shipments: int = Field(default=3, ge=1, le=32)
    prefer_single_location: bool = True
    backorder_allowed: bool = False  # False: a shortage holds the order (stock_shortage)
    preorder_skus: list[str] = Field(default_factory=list)  # always wait for stock
    # Channel id -> the only locations allowed to fulfil its orders.
    channel_locations: dict[str, list[str]] = Field(default_factory=dict)
    # Address "CC-REGION" or "CC" -> a location region; unmapped countries: their code.
    regions: dict[str, str] = Field(default_factory=dict)


class FraudConfig(_Model):
    """`suspected_fraud` (domain/holds.py): more than `max_orders_per_address` (or
    `..._per_phone`) orders, this one included, placed within `window_hours` to one
    normalized shipping address (from one phone), or billing and shipping countries that
    differ. A limit of null is not checked. Each order's address and phone are kept as
    keyed hashes (HMAC-SHA256 under `fingerprint_key`, e.g. `env:ORDERSYNC_FINGERPRINT_KEY`;
    without one plain SHA-256, which a list of phone numbers can be matched against).
    Changing the key restarts the counts. The hold is released by a person (the API)."""

    window_hours: float = Field(default=24.0, gt=0)
    max_orders_per_address: int | None = Field(default=3, ge=1)
    max_orders_per_phone: int | None = Field(default=3, ge=1)
    country_mismatch: bool = True  # billing and shipping countries differ
    fingerprint_key: SecretStr | None = None

    @field_validator("fingerprint_key")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (a random secret)")
        return v


class HoldsConfig(_Model):
    """Audit rules checked on order create and update (domain/holds.py); a rule that
    fires holds the order, and the hold is released once every cause has cleared."""

    incomplete_address: bool = True
    # Currency -> the total above which an order is held; currencies absent: never.
    amount_above: dict[str, Decimal] = Field(default_factory=dict)
    buyer_note: bool = False
    suspected_fraud: FraudConfig | None = None
    stock_shortage: bool = True  # cleared only when routing succeeds again

    @field_validator("amount_above")
    @classmethod
    def _currencies(cls, v: dict[str, Decimal]) -> dict[str, Decimal]:
        for cur, limit in v.items():
            if not re.fullmatch(r"[A-Z]{3}", cur):
                raise ValueError(f"{cur!r} is not an ISO 4217 currency code")
            if limit < 0:
                raise ValueError(f"{cur}: the threshold must not be negative")
        return v


class InventoryConfig(_Model):
    """Reservations (used when `locations` is not empty)."""

    # When a channel's orders reserve stock: "accepted" (on arrival, expiring if unpaid)
    # or "paid". Keyed by channel id; channels not listed use `default_reserve_on`.
    reserve_on: dict[str, Literal["accepted", "paid"]] = Field(default_factory=dict)
    default_reserve_on: Literal["accepted", "paid"] = "accepted"
    unpaid_ttl: float | None = Field(default=1800.0, gt=0)  # seconds; None: never lapse
    expiry_interval: float = Field(default=1.0, gt=0)  # seconds between timer sweeps
    writers: int | None = Field(default=None, ge=1, le=64)  # None: 1 on SQLite, 8 otherwise
    max_batch: int = Field(default=512, ge=1, le=10_000)  # reservations per transaction
    # PostgreSQL: a SKU's writer decides and builds its next batch of reservations while the
    # last one commits, from the state that one left (a compare-and-swap guards the write:
    # ADR 10). Off by default: on a 2-core machine with PostgreSQL beside the hub it measured
    # within noise of the plain writer and costs more CPU (BENCHMARKS.md); it is meant for
    # a database across a network, where each batch's round trips are worth hiding.
    pipeline: bool = False
    # inventory.low fires when a SKU's available across all locations falls to or below
    # this (once per crossing). None: per location, when available reaches its safety stock.
    low_stock_threshold: int | None = Field(default=None, ge=0)
    # Stock events (stock.reserved, stock.released, stock.shortage, inventory.low) that no
    # destination subscribes to are not stored: the ledger records every movement, and an
    # outbox row nobody delivers is a third of a flash-sale reservation's write. True:
    # store them in `events` all the same (an event log to query in SQL).
    record_unrouted_events: bool = False
    publish_poll_interval: float = Field(default=0.5, gt=0)  # seconds; stock changes -> channels


class MergeConfig(_Model):
    """Merging orders of one buyer to one address into one shipment (issue 5)."""

    window: float = Field(default=7200.0, gt=0)  # seconds between the first and last order
    same_channel: bool = True  # only orders of one channel are merged
    auto: bool = False  # merge candidate sets by themselves (a sweep, one process at a time)
    auto_interval: float = Field(default=30.0, gt=0)  # seconds between auto-merge sweeps


CARRIER_KINDS = ("kdniao", "kuaidi100", "generic")


class CarrierPollConfig(_Model):
    """Tracking by polling, for carriers (or accounts) without push (service/tracking_poll.py)."""

    interval: float = Field(default=1800.0, gt=0)  # seconds between two polls of one parcel
    batch: int = Field(default=20, ge=1, le=1000)  # parcels looked at per round
    rate: float = Field(default=1.0, gt=0)  # carrier queries per second (token bucket)
    burst: int = Field(default=2, ge=1)
    max_age: float = Field(default=30 * 86400.0, gt=0)  # seconds after booking: then expired


class CarrierConfig(_Model):
    """A carrier account (issue 6): booking, tracking subscriptions and signed callbacks.

    `credentials` are the connector's own names: kdniao `ebusiness_id`, `app_key`;
    kuaidi100 `key`, `secret`, `salt` (and optional `partner_id`); generic `api_key`,
    `webhook_secret`. `mapping` overrides the connector's raw code -> status table.
    """

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    kind: Literal["kdniao", "kuaidi100", "generic"]
    endpoint: str = Field(pattern=r"^https?://")
    credentials: dict[str, SecretStr] = Field(default_factory=dict)
    mapping: dict[str, ShipmentStatus] = Field(default_factory=dict)
    carrier_code: str = ""  # the aggregator's code of the real carrier used for bookings
    poll: CarrierPollConfig | None = None  # None: tracking comes by push only


class CarrierRuleConfig(_Model):
    """One carrier-choice rule (domain/carrier_choice.py); empty conditions match anything."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    carrier: str = Field(min_length=1)
    fallback: list[str] = Field(default_factory=list)
    countries: list[str] = Field(default_factory=list)  # ISO 3166-1 alpha-2
    regions: list[str] = Field(default_factory=list)
    channels: list[str] = Field(default_factory=list)
    services: list[str] = Field(default_factory=list)  # "standard", "express", ...
    min_weight_kg: Decimal | None = Field(default=None, ge=0)
    max_weight_kg: Decimal | None = Field(default=None, gt=0)
    min_total: Decimal | None = Field(default=None, ge=0)
    max_total: Decimal | None = Field(default=None, gt=0)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    cost: Decimal | None = Field(default=None, ge=0)  # tie-break among equal priorities
    priority: int | None = Field(default=None, ge=0)  # None: the rule's position


class AlertRuleConfig(_Model):
    """One anomaly rule: on or off, and its threshold in hours."""

    enabled: bool = True
    hours: float = Field(ge=0)


class DeliveryOverdueConfig(_Model):
    """Late against the promised date (the booking's or the order's) plus `hours` of grace;
    a shipment promised nothing is held to `default_transit_hours` after booking (None:
    no alert without a promise)."""

    enabled: bool = True
    hours: float = Field(default=0.0, ge=0)
    default_transit_hours: float | None = Field(default=None, gt=0)


class ToggleConfig(_Model):
    enabled: bool = True


class AlertsConfig(_Model):
    """Shipment anomaly rules, evaluated by the durable timer (issue 6)."""

    no_pickup: AlertRuleConfig = AlertRuleConfig(hours=48)  # no pickup after booking
    no_update: AlertRuleConfig = AlertRuleConfig(hours=72)  # no tracking event since
    delivery_overdue: DeliveryOverdueConfig = DeliveryOverdueConfig()
    pickup_point_wait: AlertRuleConfig = AlertRuleConfig(hours=72)  # at a locker / pickup point
    tracking_corrected: ToggleConfig = ToggleConfig()  # carrier code / number corrected


class ReviewReminderConfig(_Model):
    """`order.review_requested` once every shipment of an order is delivered, after
    `delay_hours` (a durable timer, so a restart neither loses nor repeats it)."""

    enabled: bool = True
    delay_hours: float = Field(default=0.0, ge=0)


class CallbackRetryConfig(_Model):
    """When a shipment's carrier callbacks that failed to apply are tried again: after
    `base_seconds`, doubling per failure up to `cap_seconds`; after `max_attempts` failures
    they are parked for an operator (`GET /v1/carrier-callbacks/parked`, replay). The upper
    bounds keep every computed retry time within what a datetime can hold."""

    max_attempts: int = Field(default=10, ge=1)
    base_seconds: float = Field(default=5.0, gt=0, le=3600)
    cap_seconds: float = Field(default=600.0, gt=0, le=7 * 86400)  # longer: park it instead

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> CallbackRetryConfig:
        if self.cap_seconds < self.base_seconds:
            raise ValueError(
                f"cap_seconds ({self.cap_seconds:g}) must not be below base_seconds"
                f" ({self.base_seconds:g})"
            )
        return self

    def policy(self) -> CallbackRetry:
        return CallbackRetry(
            max_attempts=self.max_attempts,
            base=timedelta(seconds=self.base_seconds),
            cap=timedelta(seconds=self.cap_seconds),
        )


class TrackingConfig(_Model):
    """Applying carrier tracking callbacks (service/shipments.py; used with `carriers`)."""

    callback_retry: CallbackRetryConfig = Field(default_factory=CallbackRetryConfig)


class Settings(_Model):
    # repr=False: URLs may carry passwords, and settings get logged in tracebacks.
    database_url: str = Field(default="sqlite:///var/ordersync.db", repr=False)
    broker_url: str | None = Field(default=None, repr=False)
    public_url: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    channels: list[ChannelConfig] = Field(default_factory=list)
    destinations: list[DestinationConfig] = Field(default_factory=list)
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    locations: list[LocationConfig] = Field(default_factory=list)
    inventory: InventoryConfig = Field(default_factory=InventoryConfig)
    carriers: list[CarrierConfig] = Field(default_factory=list)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    review_reminder: ReviewReminderConfig = Field(default_factory=ReviewReminderConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    carrier_rules: list[CarrierRuleConfig] = Field(default_factory=list)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    holds: HoldsConfig | None = None  # None: orders are not audited

    @model_validator(mode="after")
    def _routing_names_locations(self) -> Settings:
        known = {loc.id for loc in self.locations}
        for ch, locs in self.routing.channel_locations.items():
            unknown = sorted(set(locs) - known)
            if unknown:
                raise ValueError(f"routing.channel_locations.{ch}: unknown locations {unknown}")
        return self

    @field_validator("broker_url")
    @classmethod
    def _amqp(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// or amqps:// URL (RabbitMQ)")
        return v or None

    @field_validator(
        "channels", "destinations", "api_keys", "locations", "carriers", "carrier_rules"
    )
    @classmethod
    def _unique_ids(cls, v: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for item in v:
            if item.id in seen:
                raise ValueError(f"duplicate id {item.id!r}")
            seen.add(item.id)
        return v

    @model_validator(mode="after")
    def _writeback_ids_free(self) -> Settings:
        taken = {d.id for d in self.destinations}
        for c in self.channels:
            if c.writeback_id is not None and c.writeback_id in taken:
                raise ValueError(
                    f"destination id {c.writeback_id!r} is reserved for channel {c.id!r}'s"
                    " write-back"
                )
        return self

    @model_validator(mode="after")
    def _stock_publishing_locations(self) -> Settings:
        known = {loc.id for loc in self.locations}
        for c in self.channels:
            sp = c.stock_publishing
            if sp is None or not sp.enabled:
                continue
            if not known:
                raise ValueError(f"channel {c.id!r}: stock_publishing needs locations")
            unknown = sorted(set(sp.locations or ()) - known)
            if unknown:
                raise ValueError(
                    f"channel {c.id!r}: stock_publishing.locations has unknown {unknown}"
                )
        pools: dict[str, list[StockPublishingConfig]] = {}
        for c in self.channels:
            sp = c.stock_publishing
            if sp is not None and sp.enabled and sp.pool is not None:
                pools.setdefault(sp.pool, []).append(sp)
        for name, members in pools.items():
            shapes = {(tuple(sorted(m.locations or known)), m.stale_after) for m in members}
            if len(shapes) > 1:
                raise ValueError(
                    f"stock pool {name!r}: its channels must pool the same locations"
                    " with the same stale_after"
                )
            exclusive = sum((m.ratio for m in members if m.promise == "exclusive"), Decimal(0))
            if exclusive > 1:
                raise ValueError(
                    f"stock pool {name!r}: exclusive ratios sum to {exclusive}, above 1"
                )
        return self

    @model_validator(mode="after")
    def _broker_needs_postgres(self) -> Settings:
        if self.broker_url and not self.database_url.startswith(("postgresql", "postgres")):
            raise ValueError(
                "broker_url needs a PostgreSQL database_url: several processes share the"
                " outbox and the delivery leases"
            )
        return self

    def channel(self, channel_id: str) -> ChannelConfig | None:
        return next((c for c in self.channels if c.id == channel_id), None)

    @model_validator(mode="after")
    def _rules_name_carriers(self) -> Settings:
        known = {c.id for c in self.carriers}
        for i, rule in enumerate(self.carrier_rules):
            for name in (rule.carrier, *rule.fallback):
                if name not in known:
                    raise ValueError(
                        f"carrier_rules[{i}] ({rule.id}): unknown carrier {name!r}"
                        f" (configured: {', '.join(sorted(known)) or 'none'})"
                    )
        return self

    def carrier(self, carrier_id: str) -> CarrierConfig | None:
        return next((c for c in self.carriers if c.id == carrier_id), None)


_ENV_REF = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")


def _resolve_env_refs(node: Any, path: str, env: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            k: _resolve_env_refs(v, f"{path}.{k}" if path else str(k), env) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_resolve_env_refs(v, f"{path}[{i}]", env) for i, v in enumerate(node)]
    if isinstance(node, str) and (m := _ENV_REF.match(node)):
        name = m.group(1)
        if name not in env:
            raise ConfigError(f"{path}: environment variable {name} is not set")
        return env[name]
    return node


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def settings_from_mapping(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    data = dict(_resolve_env_refs(dict(raw), "", env))
    for key in ENV_OVERRIDES:
        if (value := env.get(ENV_PREFIX + key.upper())) is not None:
            data[key] = value
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        lines = [f"{_format_loc(err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping: PyYAML would keep the
    last silently, so `carriers[0].mapping` could map one raw code to two statuses."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    mark = key_node.start_mark
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (line {mark.line + 1}, column {mark.column + 1})",
                        mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (or $ORDERSYNC_CONFIG); with neither, defaults plus environment."""
    env = os.environ if env is None else env
    path = path or env.get(ENV_PREFIX + "CONFIG")
    raw: Any = {}
    if path:
        try:
            content = Path(path).read_text(encoding="utf-8")
            raw = yaml.load(content, _StrictLoader) or {}  # noqa: S506 - a SafeLoader subclass
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
    return settings_from_mapping(raw, env)
