"""The ONE wiring point: builds the hub's parts from settings. Nothing connects at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from ordersync.adapters.bus.rabbitmq import RabbitBus
from ordersync.adapters.carriers.base import CarrierAccount, connector_for
from ordersync.adapters.carriers.http import CarrierHttp
from ordersync.adapters.channels.pulling import HttpFetch, puller_for
from ordersync.adapters.channels.stock_sync import stock_sync_from_settings
from ordersync.adapters.db import migrate
from ordersync.adapters.db.buyer_fingerprints import FingerprintDigest
from ordersync.adapters.db.carrier_rules import SqlOverrideStore, SqlPollStore
from ordersync.adapters.db.database import Database
from ordersync.adapters.db.deliveries import SqlDeliveryStore
from ordersync.adapters.db.inventory import SqlInventoryStore, StockCarry, sql_carrying
from ordersync.adapters.db.lanes import SqlLaneStore
from ordersync.adapters.db.pull_cursors import SqlCursorStore
from ordersync.adapters.db.relay import SqlRelayStore
from ordersync.adapters.db.returns import SqlReturnStore
from ordersync.adapters.db.shipment_groups import SqlGroupingStore
from ordersync.adapters.db.shipments import SqlShipmentStore
from ordersync.adapters.db.unit_of_work import SqlUnitOfWork
from ordersync.adapters.destinations.channel_writeback import (
    WritebackHttp,
    writeback_destination,
    writeback_subscriptions,
)
from ordersync.adapters.destinations.webhooks import HttpSender
from ordersync.adapters.metrics import Metrics
from ordersync.config import AlertRuleConfig, CarrierConfig, DestinationConfig, Settings
from ordersync.domain.alerts import Rule, build_rules
from ordersync.domain.delivery import Backoff, RetryPolicy
from ordersync.domain.holds import (
    AmountAboveThreshold,
    AuditRule,
    BuyerNotePresent,
    HoldPolicy,
    IncompleteAddress,
    StockShortage,
    SuspectedFraud,
)
from ordersync.domain.inventory import InventoryPolicy, Location, LocationKind, ReserveOn
from ordersync.domain.merge_split import MergePolicy
from ordersync.domain.routing import Coordinates, RoutingPolicy, RoutingSetup, Site
from ordersync.service.bus_consumer import BusConsumer
from ordersync.service.carrier_booking import CarrierRules, rules_from_config
from ordersync.service.dispatcher import Destination, Dispatcher
from ordersync.service.grouping import GroupingService
from ordersync.service.inventory import InventoryService
from ordersync.service.lanes import LaneAssigner
from ordersync.service.messagebus import MessageBus
from ordersync.service.outbox import EventRouter, Subscription
from ordersync.service.pull import ChannelPuller
from ordersync.service.relay import OutboxRelay
from ordersync.service.returns import ReturnService
from ordersync.service.shipments import Carrier, ShipmentService
from ordersync.service.singleton import SingletonTask, cancel_and_wait
from ordersync.service.stock_sync import StockSync
from ordersync.service.tracking_poll import TrackingPoller, policies_from_config

log = logging.getLogger(__name__)


async def _stop_within(what: str, stopping: Awaitable[None], seconds: float = 15.0) -> None:
    """Await a component's stop for at most `seconds`, then cancel it and log an error."""
    task = asyncio.ensure_future(stopping)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if done:
        task.result()
        return
    log.error("%s did not stop within %.0f s: abandoned", what, seconds)
    task.cancel()
    await asyncio.wait({task}, timeout=seconds)


def destination_from_config(c: DestinationConfig) -> Destination:
    b = c.retry_backoff
    return Destination(
        id=c.id,
        url=c.url,
        secret=c.secret.get_secret_value(),
        policy=RetryPolicy(
            schedule=tuple(c.retry_schedule),
            backoff=Backoff(b.base, b.multiplier, b.max_delay, b.max_age) if b else None,
        ),
        timeout=c.timeout,
        max_in_flight=c.max_in_flight,
        breaker_threshold=c.breaker.failure_threshold,
        breaker_cooldown=c.breaker.cooldown,
        breaker_max_cooldown=c.breaker.max_cooldown,
    )


class _BusObserver:
    def __init__(self, metrics: Metrics, wake: Callable[[set[str]], None]) -> None:
        self._metrics = metrics
        self._wake = wake

    def batch_committed(self, size: int, seconds: float, destinations: set[str]) -> None:
        self._metrics.batch_committed(size, seconds, destinations)
        if destinations:
            self._wake(destinations)


class Role(StrEnum):
    """What a process runs. Without a broker, `serve` is ALL (embedded); with one, `serve`
    is API and `ordersync worker` is WORKER. A WORKER without a broker shares the database
    queue with the other processes (PostgreSQL leases)."""

    ALL = "all"
    API = "api"
    WORKER = "worker"


@dataclass
class Hub:
    settings: Settings
    db: Database
    metrics: Metrics
    bus: MessageBus
    deliveries: SqlDeliveryStore
    dispatcher: Dispatcher
    sender: HttpSender
    role: Role = Role.ALL
    broker: RabbitBus | None = None
    relay: OutboxRelay | None = None
    consumer: BusConsumer | None = None
    lanes: LaneAssigner | None = None
    inventory: InventoryService | None = None  # None: no locations configured
    shipments: ShipmentService | None = None  # None: no carriers configured
    returns: ReturnService | None = None  # with shipments: reverse pickups (issue 6)
    # Channel stock publishing (issue 5): None unless a channel has `stock_publishing`.
    stock_sync: StockSync | None = None
    grouping: GroupingService | None = None  # shipment merges and splits (issue 5)
    # Tracking by polling for carriers with a `poll` block (service/tracking_poll.py).
    tracking_poll: TrackingPoller | None = None
    running: bool = False
    _gauge_task: asyncio.Task[None] | None = field(default=None, repr=False)
    # Pull loops of the channels with a `pull` block (ADR 5): in the embedded process, or
    # in the one worker holding the "pull" lease (ADR 4).
    pullers: list[ChannelPuller] = field(default_factory=list)
    _pull_fetch: HttpFetch | None = field(default=None, repr=False)
    # Fetches the orders that pushes only name (Douyin messages); its session opens on use.
    push_fetch: HttpFetch = field(default_factory=HttpFetch, repr=False)
    _pull_tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)
    # Work that runs in exactly one worker at a time, under named leases (ADR 4).
    singletons: list[SingletonTask] = field(default_factory=list, repr=False)
    # The HTTP pool of the channels' shipment write-backs (destinations `writeback.<id>`).
    writeback_http: WritebackHttp | None = field(default=None, repr=False)

    @property
    def dispatches(self) -> bool:
        return self.role is not Role.API

    async def start(
        self, *, run_migrations: bool = True, dispatch: bool = True, pull: bool = True
    ) -> None:
        if run_migrations:
            await migrate.upgrade(self.db)
        self.bus.start()
        if self.inventory is not None:
            await self.inventory.start()
        if self.broker is not None:
            await self.broker.connect()
        if dispatch and self.dispatches:
            await self.sender.start()
            w = self.settings.worker
            self.dispatcher.start(
                fresh_grace=self.settings.broker.sweep_grace if self.broker else 0.0,
                lease_renew_every=w.lease_seconds / 4 if self.deliveries.leased else None,
            )
            if self.relay is not None:
                self.relay.start()
            if self.broker is not None and self.consumer is not None:
                await self.broker.subscribe(self.consumer.handle, lanes=[])
                if self.lanes is not None:
                    await self.lanes.start()
        self._gauge_task = asyncio.create_task(self._refresh_gauges(), name="gauges")
        # The pull loops and the anomaly-timer sweep run in one process at a time. On
        # PostgreSQL that is whoever holds a named lease: a worker, or an embedded `serve`
        # sharing the database with extra workers. SQLite is one process by design.
        leased = self.role in (Role.WORKER, Role.ALL) and not self.db.is_sqlite
        if pull and self.role is Role.ALL and not leased:
            self._start_pulls()
        elif pull and leased and self._pull_channels():
            self._singleton("pull", self._start_pulls_async, self._stop_pulls)
        if self.grouping is not None and self.settings.merge.auto:
            grouping = self.grouping  # the auto-merge sweep: one process at a time
            if leased:

                async def start_auto_merge() -> None:
                    grouping.start()

                self._singleton("auto-merge", start_auto_merge, grouping.stop)
            elif self.role is Role.ALL:
                grouping.start()
        if self.shipments is not None:
            shipments = self.shipments
            if leased:
                shipments.start(sweep=False)

                async def start_sweep() -> None:
                    shipments.start(sweep=True)

                self._singleton("shipments-sweep", start_sweep, shipments.stop_sweep)
            else:
                shipments.start(sweep=self.role is Role.ALL)
        if self.tracking_poll is not None:  # one poller per hub: a singleton, as the sweep
            poller = self.tracking_poll
            if leased:

                async def start_poll() -> None:
                    poller.start()

                self._singleton("tracking-poll", start_poll, poller.stop)
            elif self.role is Role.ALL:
                poller.start()
        if self.stock_sync is not None:  # one publisher per hub: a singleton, as pulls
            if leased:
                self._singleton("stock-publish", self.stock_sync.start, self.stock_sync.stop)
            elif self.role is Role.ALL:
                await self.stock_sync.start()
        self.running = True

    def _singleton(
        self, name: str, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
    ) -> None:
        task = SingletonTask(
            name,
            SqlRelayStore(self.db, name),
            start,
            stop,
            ttl=self.settings.worker.relay_lease_seconds,
            owner=self.deliveries.owner,
        )
        task.start()
        self.singletons.append(task)

    def _pull_channels(self) -> list[Any]:
        return [c for c in self.settings.channels if c.pull is not None]

    async def _start_pulls_async(self) -> None:
        self._start_pulls()

    def _start_pulls(self) -> None:
        channels = self._pull_channels()
        if not channels:
            return
        self._pull_fetch = HttpFetch()
        cursors = SqlCursorStore(self.db)
        self.pullers = [puller_for(c, self._pull_fetch, cursors, self.bus.handle) for c in channels]
        self._pull_tasks = [
            asyncio.create_task(p.run(), name=f"pull-{p.source.channel_id}") for p in self.pullers
        ]

    async def _stop_pulls(self) -> None:
        for task in self._pull_tasks:
            task.cancel()
        await asyncio.gather(*self._pull_tasks, return_exceptions=True)
        self._pull_tasks = []
        if self._pull_fetch is not None:
            await self._pull_fetch.close()
            self._pull_fetch = None

    async def stop(self) -> None:
        """Drain: finish queued commands, let in-flight deliveries complete and be recorded."""
        self.running = False
        # Background jobs keep their work in the database (timers, inbox rows, markers), so
        # one that does not stop in time is abandoned rather than hold the shutdown forever.
        for singleton in self.singletons:  # stops its work, releases the lease at once
            await _stop_within(f"singleton {singleton.name}", singleton.stop())
        self.singletons = []
        if self.grouping is not None:
            await _stop_within("auto-merge", self.grouping.stop())
        await self._stop_pulls()  # a page half-ingested is read again after a restart
        await self.push_fetch.close()
        if self.tracking_poll is not None:
            await _stop_within("tracking poll", self.tracking_poll.stop())
        if self.shipments is not None:
            await _stop_within("shipments", self.shipments.stop())
        if self.stock_sync is not None:
            await _stop_within("stock publishing", self.stock_sync.stop())
        await self.bus.stop()
        if self.inventory is not None:
            await self.inventory.stop()
        if self.lanes is not None:
            await self.lanes.stop()  # its lanes' handlers finish and ack; leases released
        if self.broker is not None:
            await self.broker.unsubscribe()
        if self.relay is not None:
            await self.relay.stop()
        await self.dispatcher.stop()
        await self.sender.close()
        if self.writeback_http is not None:
            await self.writeback_http.close()
        if self.broker is not None:
            await self.broker.close()
        if self._gauge_task is not None:
            await cancel_and_wait(self._gauge_task)
        await self.db.dispose()

    async def handle(self, cmd: Any) -> Any:
        return await self.bus.handle(cmd)

    async def checks(self) -> dict[str, str]:
        """Readiness of each dependency: "ok" or a short error."""
        out: dict[str, str] = {"hub": "ok" if self.running else "starting"}
        try:
            await self.db.ping()
            out["database"] = "ok"
        except Exception as e:  # report, do not crash the probe
            out["database"] = f"error: {type(e).__name__}"
        if self.broker is not None:
            try:
                await self.broker.ping()
                out["broker"] = "ok"
            except Exception as e:
                out["broker"] = f"error: {type(e).__name__}"
        return out

    async def _refresh_gauges(self) -> None:
        while True:
            try:
                for dest, states in (await self.deliveries.summary()).items():
                    for state, n in states.items():
                        self.metrics.deliveries.labels(dest, state).set(n)
                if self.shipments is not None:
                    await self.shipments.refresh_open_alerts()
                if self.broker is not None and self.role is not Role.API:
                    for queue, n in (await self.broker.queue_depths()).items():
                        self.metrics.queue_depth.labels(queue).set(n)
            except Exception:  # metrics must never take the hub down
                log.debug("refreshing gauges failed", exc_info=True)
            await asyncio.sleep(5)


def build_hub(settings: Settings, role: Role | None = None) -> Hub:
    """`role` None: ALL without a broker, API with one (what `serve` runs)."""
    if role is None:
        role = Role.API if settings.broker_url else Role.ALL
    db = Database(settings.database_url)
    metrics = Metrics()
    subscriptions: list[Subscription] = [(d.id, d.events) for d in settings.destinations]
    router = EventRouter(subscriptions + writeback_subscriptions(settings.channels))
    store = SqlDeliveryStore(db, lease_seconds=settings.worker.lease_seconds)
    sender = HttpSender()
    # Channels with an enabled write-back get a destination of their own (ADR: shipment
    # write-back), sending through the platform's API instead of Standard Webhooks.
    writeback_http = WritebackHttp()
    writebacks = [
        writeback_destination(c, writeback_http) for c in settings.channels if c.writeback_id
    ]
    dispatcher = Dispatcher(
        [destination_from_config(d) for d in settings.destinations] + writebacks,
        store,
        sender,
        metrics,
    )
    broker = relay = consumer = lanes = None
    if settings.broker_url:
        b = settings.broker
        broker = RabbitBus(
            settings.broker_url,
            lanes=b.lanes,
            prefetch=b.prefetch,
            events_per_message=b.events_per_message,
            delivery_limit=b.delivery_limit,
            namespace=b.namespace,
            name=f"ordersync-{role.value}",
        )
        if role is not Role.API:
            relay = OutboxRelay(
                SqlRelayStore(db),
                broker,
                batch=settings.worker.relay_batch,
                ttl=settings.worker.relay_lease_seconds,
                observer=metrics.relay_observer(),
            )
            consumer = BusConsumer(dispatcher, store)
            lanes = LaneAssigner(
                SqlLaneStore(db, b.namespace, b.lanes),
                broker,
                lanes=b.lanes,
                owner=store.owner,
                ttl=settings.worker.lease_seconds,
                every=settings.worker.lease_seconds / 4,
            )

    def wake(destinations: set[str]) -> None:
        # Embedded: new deliveries wake this process's dispatcher. With a broker the relay
        # runs in the workers (woken by NOTIFY), so there is nothing to wake here.
        if role is Role.ALL:
            dispatcher.wake(destinations)

    writers = settings.ingest.writers or (1 if db.is_sqlite else 4)
    relayed = broker is not None
    policy = inventory_policy(settings)

    holds = hold_policy(settings)
    fingerprints = buyer_fingerprints(settings, holds)

    def uow(carry: StockCarry | None = None) -> SqlUnitOfWork:
        u = SqlUnitOfWork(
            db,
            router,
            relay=relayed,
            inventory=policy,
            fingerprints=fingerprints,
            stock_carry=carry,
        )
        u.holds = holds
        if u.stock is not None:
            u.stock.low_stock_threshold = settings.inventory.low_stock_threshold
            u.stock.record_unrouted_events = settings.inventory.record_unrouted_events
        return u

    bus = MessageBus(
        uow,
        writers=writers,
        max_batch=settings.ingest.max_batch,
        observer=_BusObserver(metrics, wake),
    )
    inventory = None
    if policy is not None:
        inv = settings.inventory
        inventory = InventoryService(
            policy,
            uow,
            SqlInventoryStore(db),
            writers=inv.writers or (1 if db.is_sqlite else 8),
            max_batch=inv.max_batch,
            expiry_interval=inv.expiry_interval,
            carrying=sql_carrying(uow) if inv.pipeline and not db.is_sqlite else None,
        )
    shipments = None
    if settings.carriers:
        shipments = ShipmentService(
            {c.id: carrier_from_config(c) for c in settings.carriers},
            SqlShipmentStore(db, uow, on_commit=wake),
            router,
            CarrierHttp().send,
            public_url=settings.public_url,
            rules=alert_rules(settings),
            review_delay=(
                timedelta(hours=settings.review_reminder.delay_hours)
                if settings.review_reminder.enabled
                else None
            ),
            observer=metrics.alert_observer(),
            # SQLite has one writer: one worker applies callbacks, in batches.
            callback_workers=1 if db.is_sqlite else 4,
            callback_retry=settings.tracking.callback_retry.policy(),
            carrier_rules=CarrierRules(
                rules_from_config(settings.carrier_rules),
                SqlOverrideStore(db),
                metrics.carrier_call_observer(),
            ),
        )
    tracking_poll = None
    if shipments is not None and (policies := policies_from_config(settings.carriers)):
        tracking_poll = TrackingPoller(
            shipments, SqlPollStore(db), policies, observer=metrics.carrier_call_observer()
        )
    returns = None
    if shipments is not None:
        returns = ReturnService(shipments, SqlReturnStore(db, uow, on_commit=wake), router)
        returns.attach()
    return Hub(
        settings,
        db,
        metrics,
        bus,
        store,
        dispatcher,
        sender,
        role,
        broker,
        relay,
        consumer,
        lanes,
        inventory,
        shipments,
        returns=returns,
        writeback_http=writeback_http,
        stock_sync=stock_sync_from_settings(
            settings, db, policy, observer=metrics.stock_push_observer()
        ),
        grouping=GroupingService(
            SqlGroupingStore(db, uow, on_commit=wake),
            router,
            merge_policy(settings),
            auto_interval=settings.merge.auto_interval,
        ),
        tracking_poll=tracking_poll,
    )


def carrier_from_config(c: CarrierConfig) -> Carrier:
    connector = connector_for(c.kind)
    account = CarrierAccount(
        c.id, c.kind, c.endpoint, {k: v.get_secret_value() for k, v in c.credentials.items()}
    )
    mapping = connector.mapping.with_overrides(c.mapping) if c.mapping else connector.mapping
    return Carrier(account, connector, mapping, c.carrier_code)


def alert_rules(settings: Settings) -> tuple[Rule, ...]:
    """The shipment anomaly rules of the `alerts` block (disabled ones left out)."""
    a = settings.alerts

    def hours(rule: AlertRuleConfig) -> timedelta | None:
        return timedelta(hours=rule.hours) if rule.enabled else None

    overdue = a.delivery_overdue
    transit = overdue.default_transit_hours
    return build_rules(
        no_pickup=hours(a.no_pickup),
        no_update=hours(a.no_update),
        overdue_grace=timedelta(hours=overdue.hours) if overdue.enabled else None,
        default_transit=None if transit is None else timedelta(hours=transit),
        pickup_point_wait=hours(a.pickup_point_wait),
        tracking_corrected=a.tracking_corrected.enabled,
    )


def merge_policy(settings: Settings) -> MergePolicy:
    m = settings.merge
    return MergePolicy(window=timedelta(seconds=m.window), same_channel=m.same_channel)


def inventory_policy(settings: Settings) -> InventoryPolicy | None:
    """None without locations: the hub then tracks no stock and reserves nothing."""
    if not settings.locations:
        return None
    inv = settings.inventory
    return InventoryPolicy(
        locations={
            c.id: Location(c.id, LocationKind(c.kind), c.region, c.priority, c.capacity)
            for c in settings.locations
        },
        reserve_on={ch: ReserveOn(v) for ch, v in inv.reserve_on.items()},
        default_reserve_on=ReserveOn(inv.default_reserve_on),
        unpaid_ttl=timedelta(seconds=inv.unpaid_ttl) if inv.unpaid_ttl is not None else None,
        routing=routing_setup(settings),
    )


def routing_setup(settings: Settings) -> RoutingSetup:
    r = settings.routing
    sites = {
        c.id: Site(
            Location(c.id, LocationKind(c.kind), c.region, c.priority, c.capacity),
            Coordinates(c.lat, c.lon) if c.lat is not None and c.lon is not None else None,
            c.cost_per_unit,
            c.cost_per_shipment,
        )
        for c in settings.locations
    }
    policy = RoutingPolicy(
        allow_split=r.allow_split,
        max_shipments=r.max_shipments,
        prefer_single_location=r.prefer_single_location,
        backorder_allowed=r.backorder_allowed,
        preorder_skus=frozenset(r.preorder_skus),
        channel_locations={ch: frozenset(locs) for ch, locs in r.channel_locations.items()},
    )
    regions = {k.upper(): v for k, v in r.regions.items()}
    return RoutingSetup(policy, sites, regions)


def hold_policy(settings: Settings) -> HoldPolicy | None:
    """None without a `holds` block: orders are not audited (no cost on the hot path)."""
    h = settings.holds
    if h is None:
        return None
    rules: list[AuditRule] = []
    if h.incomplete_address:
        rules.append(IncompleteAddress())
    if h.amount_above:
        rules.append(AmountAboveThreshold(dict(h.amount_above)))
    if h.buyer_note:
        rules.append(BuyerNotePresent())
    if (f := h.suspected_fraud) is not None:
        rules.append(
            SuspectedFraud(
                timedelta(hours=f.window_hours),
                f.max_orders_per_address,
                f.max_orders_per_phone,
                f.country_mismatch,
            )
        )
    if h.stock_shortage:
        rules.append(StockShortage())
    return HoldPolicy(tuple(rules))


def buyer_fingerprints(settings: Settings, holds: HoldPolicy | None) -> FingerprintDigest | None:
    """The digest of buyer fingerprints when a fraud burst rule counts them; else None,
    and orders record and query nothing for it."""
    if holds is None or holds.burst_window is None or settings.holds is None:
        return None
    fraud = settings.holds.suspected_fraud
    key = fraud.fingerprint_key if fraud is not None else None
    return FingerprintDigest(key.get_secret_value().encode() if key is not None else None)
