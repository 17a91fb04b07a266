"""Builds the hub's `StockSync` (service/stock_sync.py) from the channels' `stock_publishing`
blocks: one pool and rule per channel, the real request builders (Shopify, WooCommerce,
Taobao/Tmall, JD, Douyin: adapters/channels/stock_push.py), one HTTP session, and the
observer counting every push attempt (`ordersync_stock_pushes_total`)."""

from __future__ import annotations

from datetime import timedelta
from fractions import Fraction

from ordersync.adapters.channels.stock_push import (
    HttpStockSend,
    RequestBuilder,
    RequestStockPush,
    Send,
    builder_for,
)
from ordersync.adapters.db.database import Database
from ordersync.adapters.db.stock_publishing import SqlStockPublishingStore
from ordersync.config import Settings
from ordersync.domain.inventory import InventoryPolicy
from ordersync.domain.stock_publishing import PromiseKind, PublishingRule, StockPool
from ordersync.service.stock_publisher import PublisherSettings, StockPushObserver
from ordersync.service.stock_sync import ChannelStock, StockSync


def channel_stock(settings: Settings, policy: InventoryPolicy) -> list[ChannelStock]:
    """One entry per publishing channel; channels naming the same `pool` share one
    `StockPool` holding all their rules (config.py checked they agree on its shape)."""
    publishing = [
        (c.id, c.stock_publishing)
        for c in settings.channels
        if c.stock_publishing is not None and c.stock_publishing.enabled
    ]
    members: dict[str, list[str]] = {}
    for channel_id, sp in publishing:
        members.setdefault(sp.pool or f"channel:{channel_id}", []).append(channel_id)
    rules = {
        channel_id: PublishingRule(
            channel_id,
            ratio=Fraction(sp.ratio),
            fixed=sp.fixed,
            floor=sp.floor,
            cap=sp.cap,
            safety_stock=sp.safety_stock,
            kind=PromiseKind(sp.promise),
            priority=sp.priority,
        )
        for channel_id, sp in publishing
    }
    pools: dict[str, StockPool] = {}
    out = []
    for channel_id, sp in publishing:
        name = sp.pool or f"channel:{channel_id}"
        stale = timedelta(seconds=sp.stale_after) if sp.stale_after is not None else None
        if name not in pools:
            pooled = sp.locations if sp.locations is not None else sorted(policy.locations)
            pools[name] = StockPool(
                name,
                tuple(policy.locations[loc] for loc in pooled),
                tuple(rules[ch] for ch in members[name]),
                **({"max_feed_age": stale} if stale is not None else {}),
            )
        out.append(
            ChannelStock(
                channel_id,
                pools[name],
                frozenset(sp.items),
                PublisherSettings(
                    debounce=sp.debounce, max_wait=sp.max_wait, rate=sp.rate, burst=sp.burst
                ),
                stale,
            )
        )
    return out


def stock_sync_from_settings(
    settings: Settings,
    db: Database,
    policy: InventoryPolicy | None,
    send: Send | None = None,
    *,
    observer: StockPushObserver | None = None,
) -> StockSync | None:
    """None when inventory is off or no channel publishes stock."""
    if policy is None:
        return None
    channels = channel_stock(settings, policy)
    if not channels:
        return None
    builders: dict[str, RequestBuilder] = {}
    for c in settings.channels:
        if (builder := builder_for(c)) is not None:
            builders[c.id] = builder
    http = None
    if send is None:
        send = http = HttpStockSend()
    return StockSync(
        SqlStockPublishingStore(db),
        channels,
        RequestStockPush(builders, send, observer=observer),
        poll_interval=settings.inventory.publish_poll_interval,
        close=http.close if http is not None else None,
    )
