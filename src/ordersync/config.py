"""Settings: one YAML file plus environment overrides. No I/O at import time.

Secrets may be written as `env:NAME`; they are resolved when the file is loaded and kept
as `SecretStr`, so they never show in reprs or logs. A bad file fails at start-up with the
path of the bad key (`destinations[0].retry_schedule[1]: ...`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
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
from ordersync.domain.shipments import ShipmentStatus

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


class _ChannelBase(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    pull: PullConfig | None = None
    # Overrides of the connector's default status table, keyed by platform status.
    statuses: dict[str, StatusRuleConfig] = Field(default_factory=dict)


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


CARRIER_KINDS = ("kdniao", "kuaidi100", "generic")


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

    @field_validator("broker_url")
    @classmethod
    def _amqp(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// or amqps:// URL (RabbitMQ)")
        return v or None

    @field_validator("channels", "destinations", "api_keys", "locations", "carriers")
    @classmethod
    def _unique_ids(cls, v: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for item in v:
            if item.id in seen:
                raise ValueError(f"duplicate id {item.id!r}")
            seen.add(item.id)
        return v

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


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (or $ORDERSYNC_CONFIG); with neither, defaults plus environment."""
    env = os.environ if env is None else env
    path = path or env.get(ENV_PREFIX + "CONFIG")
    raw: Any = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
    return settings_from_mapping(raw, env)
