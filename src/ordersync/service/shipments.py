"""Shipments service (issue 6): book waybills, apply carrier callbacks, sweep anomaly timers.

Every change is ONE transaction (`ShipmentTx`, backed by the SQL unit of work): the
carrier-inbox record, the shipment row, the order's status change with its history, and
the outbox entries (`shipment.created`, `shipment.updated`, `alert.raised`, and the order's
own `order.shipped` / `order.delivered`) commit together or not at all.

Callbacks are verified in the carrier's own scheme, then applied synchronously inside the
request, and answered in the carrier's acknowledgement format once the commit is done.
Locks are taken order first, shipment second, everywhere.

The anomaly timer is the shipment row's `due_us`: the earliest time a rule not yet raised
for it could fire. The sweep asks the database only for due rows, so a restart loses no
timer, and the `alerts` unique key (shipment, rule) means none is raised twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import orjson

from ordersync.adapters.carriers.base import (
    Ack,
    Booking,
    CallbackRejected,
    CarrierAccount,
    CarrierConnector,
    CarrierError,
    CarrierRequest,
    CarrierResponse,
    Item,
    Party,
    callback_id,
)
from ordersync.clock import utcnow
from ordersync.domain.alerts import Alert, Rule, default_rules
from ordersync.domain.codec import fmt_time
from ordersync.domain.errors import InvalidTransition, OrderNotFound
from ordersync.domain.order_status import OrderStatus, check_transition, is_behind
from ordersync.domain.orders import Order
from ordersync.domain.shipments import MappingTable, Shipment, ShipmentStatus, TrackingUpdate
from ordersync.ids import new_id
from ordersync.service.outbox import EventRouter, OutboxEntry
from ordersync.service.unit_of_work import OrderRepository

log = logging.getLogger(__name__)

SHIPMENT_CREATED = "shipment.created"
SHIPMENT_UPDATED = "shipment.updated"
ALERT_RAISED = "alert.raised"


class ShipmentError(Exception):
    """A request about shipments that cannot be served: `status` and `code` for the API."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass(slots=True)
class ShipmentRecord:
    """A stored shipment: the aggregate plus what the hub keeps beside it."""

    shipment: Shipment
    order_id: str
    active: bool = True  # False once cancelled (the order was re-booked elsewhere)
    cancelled_at: datetime | None = None
    subscribed: bool = False

    @property
    def status(self) -> str:
        return str(self.shipment.status) if self.active else str(ShipmentStatus.CANCELLED)

    def to_doc(self) -> dict[str, Any]:
        return {
            **self.shipment.to_dict(),
            "order_id": self.order_id,
            "active": self.active,
            "cancelled_at": fmt_time(self.cancelled_at),
            "subscribed": self.subscribed,
        }

    @classmethod
    def from_doc(cls, d: Mapping[str, Any]) -> ShipmentRecord:
        cancelled = d.get("cancelled_at")
        return cls(
            Shipment.from_dict(d),
            d["order_id"],
            bool(d.get("active", True)),
            None if cancelled is None else datetime.fromisoformat(cancelled),
            bool(d.get("subscribed", False)),
        )

    def view(self) -> dict[str, Any]:
        """The public JSON (API responses and event bodies)."""
        s = self.shipment
        return {
            "id": s.shipment_id,
            "order_id": self.order_id,
            "carrier_id": s.carrier_id,
            "carrier_code": s.carrier_code,
            "tracking_number": s.tracking_number,
            "status": self.status,
            "active": self.active,
            "booked_at": fmt_time(s.booked_at),
            "picked_up_at": fmt_time(s.picked_up_at),
            "cancelled_at": fmt_time(self.cancelled_at),
            "corrections": [c.to_dict() for c in s.corrections],
            "events": [
                {
                    "carrier_time": fmt_time(e.carrier_time),
                    "raw_code": e.raw_code,
                    "raw_text": e.raw_text,
                    "status": None if e.status is None else str(e.status),
                    "location": e.location,
                }
                for e in s.events
            ],
        }


def alert_view(alert: Alert, alert_id: str, order_id: str, state: str = "open") -> dict[str, Any]:
    return {
        "id": alert_id,
        "shipment_id": alert.shipment_id,
        "order_id": order_id,
        "rule": str(alert.kind),
        "state": state,
        "due_at": fmt_time(alert.due_at),
        "raised_at": fmt_time(alert.raised_at),
        "detail": alert.detail,
        "marks_exception": alert.marks_exception,
    }


def next_due(record: ShipmentRecord, rules: Iterable[Rule], raised: set[str]) -> datetime | None:
    """The durable timer: earliest due time over the rules not yet raised (None: none)."""
    if not record.active:
        return None
    dues = [d for r in rules if str(r.kind) not in raised and (d := r.due_at(record.shipment))]
    return min(dues, default=None)


class ShipmentTx(Protocol):
    """One transaction over orders, shipments, the carrier inbox, alerts and the outbox."""

    @property
    def orders(self) -> OrderRepository: ...

    async def claim_callback(
        self, carrier_id: str, callback_id: str, tracking_number: str, body: bytes, now: datetime
    ) -> bool:
        """Record the callback; False if it was recorded before (a replay)."""
        ...

    async def finish_callback(
        self, carrier_id: str, callback_id: str, outcome: str, shipment_id: str | None
    ) -> None: ...

    async def shipment(self, shipment_id: str) -> ShipmentRecord | None:
        """Loaded under lock."""
        ...

    async def shipment_by_tracking(
        self, carrier_id: str, tracking_number: str
    ) -> ShipmentRecord | None: ...

    async def shipments_of_order(self, order_id: str) -> list[ShipmentRecord]: ...

    async def insert_shipment(
        self, record: ShipmentRecord, due: datetime | None, now: datetime
    ) -> None: ...

    async def update_shipment(
        self, record: ShipmentRecord, due: datetime | None, now: datetime
    ) -> None: ...

    async def raised_rules(self, shipment_id: str) -> set[str]: ...

    async def insert_alert(self, alert_id: str, alert: Alert, order_id: str) -> bool:
        """False if this (shipment, rule) was raised before (the unique key)."""
        ...

    def emit(self, entry: OutboxEntry) -> None: ...

    async def commit(self) -> None: ...


class ShipmentStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[ShipmentTx]: ...

    async def load_order(self, order_id: str) -> Order | None: ...

    async def order_of_tracking(self, carrier_id: str, tracking_number: str) -> str | None: ...

    async def order_of_shipment(self, shipment_id: str) -> str | None: ...

    async def due_shipments(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(shipment id, order id) of active shipments whose timer is due, earliest first."""
        ...

    async def list_for_order(self, order_id: str) -> list[ShipmentRecord]: ...

    async def open_alerts(self, limit: int) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Carrier:
    """A configured carrier: its account, its connector and its (overridden) mapping."""

    account: CarrierAccount
    connector: CarrierConnector
    mapping: MappingTable
    carrier_code: str = ""


Send = Callable[[CarrierRequest], Awaitable[CarrierResponse]]


@dataclass
class ShipmentService:
    carriers: Mapping[str, Carrier]
    store: ShipmentStore
    router: EventRouter
    send: Send
    public_url: str | None = None  # where carriers push (Kuaidi100 subscriptions need it)
    rules: Sequence[Rule] = field(default_factory=default_rules)
    clock: Callable[[], datetime] = utcnow
    sweep_interval: float = 5.0
    on_commit: Callable[[set[str]], None] | None = None  # wakes the dispatcher
    _sweeper: asyncio.Task[None] | None = field(default=None, repr=False)

    # ---- lifecycle --------------------------------------------------------------------

    def start(self, *, sweep: bool = True) -> None:
        if sweep and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="shipment-timers")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # the timer must survive a database restart
                log.warning("shipment timer sweep failed", exc_info=True)
            await asyncio.sleep(self.sweep_interval)

    # ---- events -----------------------------------------------------------------------

    def _entry(self, type_: str, order: Order, data: dict[str, Any], at: datetime) -> OutboxEntry:
        return OutboxEntry(
            event_id=new_id("evt"),
            type=type_,
            order_id=order.id,
            version=order.version,
            body=orjson.dumps({"type": type_, "timestamp": fmt_time(at), "data": data}),
            destinations=self.router.destinations_for(type_),
        )

    # ---- booking ----------------------------------------------------------------------

    def carrier(self, carrier_id: str | None) -> Carrier:
        if carrier_id is None:
            if not self.carriers:
                raise ShipmentError(409, "no_carrier", "no carrier is configured")
            return next(iter(self.carriers.values()))
        found = self.carriers.get(carrier_id)
        if found is None:
            raise ShipmentError(404, "carrier_not_found", f"no carrier {carrier_id!r}")
        return found

    async def book(
        self,
        order_id: str,
        *,
        carrier_id: str | None = None,
        carrier_code: str | None = None,
        weight_kg: Decimal | None = None,
        service: str = "",
    ) -> ShipmentRecord:
        """Book a waybill for the order; an active shipment with another carrier is cancelled."""
        carrier = self.carrier(carrier_id)
        order = await self.store.load_order(order_id)
        if order is None:
            raise OrderNotFound(order_id)
        if order.status is OrderStatus.CANCELLED:
            raise ShipmentError(409, "order_cancelled", f"order {order_id} is cancelled")
        for held in await self.store.list_for_order(order_id):
            if held.active and held.shipment.carrier_id == carrier.account.carrier_id:
                raise ShipmentError(
                    409,
                    "shipment_exists",
                    f"order {order_id} is already booked with {carrier.account.carrier_id}"
                    f" (tracking number {held.shipment.tracking_number})",
                )
        booking = _booking(order, carrier_code or carrier.carrier_code, weight_kg, service)
        account, connector = carrier.account, carrier.connector
        try:
            result = connector.parse_booking_response(
                booking, await self.send(connector.build_booking_request(account, booking))
            )
        except (CarrierError, OSError, TimeoutError) as e:
            raise ShipmentError(502, "carrier_error", f"booking failed: {e}") from e
        subscribed = await self._subscribe(carrier, result.tracking_number, result.carrier_code)
        now = self.clock()
        record = ShipmentRecord(
            Shipment(
                new_id("shp"),
                account.carrier_id,
                result.tracking_number,
                booked_at=now,
                carrier_code=result.carrier_code,
            ),
            order_id,
            subscribed=subscribed,
        )
        async with self.store.transaction() as tx:
            locked = await tx.orders.get(order_id)
            if locked is None:  # pragma: no cover - orders are never deleted
                raise OrderNotFound(order_id)
            for old in await tx.shipments_of_order(order_id):
                if old.active:
                    old.active, old.cancelled_at = False, now
                    await tx.update_shipment(old, None, now)
                    tx.emit(self._entry(SHIPMENT_UPDATED, locked, old.view(), now))
            await tx.insert_shipment(record, next_due(record, self.rules, set()), now)
            tx.emit(self._entry(SHIPMENT_CREATED, locked, record.view(), now))
            await self._commit(tx)
        return record

    async def _subscribe(self, carrier: Carrier, tracking_number: str, carrier_code: str) -> bool:
        if not self.public_url:
            return False
        url = f"{self.public_url.rstrip('/')}/v1/carriers/{carrier.account.carrier_id}/callbacks"
        c = carrier.connector
        try:
            c.parse_subscription_response(
                await self.send(
                    c.build_subscription_request(
                        carrier.account, tracking_number, carrier_code, url
                    )
                )
            )
        except (CarrierError, OSError, TimeoutError) as e:
            log.warning("subscribing %s with %s failed: %s", tracking_number, carrier.account, e)
            return False
        return True

    # ---- callbacks --------------------------------------------------------------------

    async def handle_callback(
        self, carrier_id: str, body: bytes, headers: Mapping[str, str]
    ) -> Ack:
        """Verify, apply and answer a carrier push; a forgery changes nothing."""
        carrier = self.carrier(carrier_id)
        connector, account = carrier.connector, carrier.account
        try:
            updates = connector.parse_callback(account, body, headers, carrier.mapping)
        except CallbackRejected as e:
            log.info("carrier %s: callback rejected: %s", carrier_id, e.detail)
            ack = connector.ack(account, ok=False, reason=e.detail)
            return Ack(e.status, ack.content_type, ack.body)
        for update in updates:
            # The inbox key: the callback's own id (or the hash of its bytes), per parcel
            # when one push carries several.
            source = update.source_id or callback_id(connector.kind, body)
            if len(updates) > 1:
                source = f"{source}:{update.tracking_number}"
            await self._apply(carrier, update, body, source)
        return connector.ack(account)

    async def _apply(
        self, carrier: Carrier, update: TrackingUpdate, body: bytes, source: str
    ) -> str:
        carrier_id = carrier.account.carrier_id
        order_id = await self.store.order_of_tracking(carrier_id, update.tracking_number)
        now = self.clock()
        async with self.store.transaction() as tx:
            if not await tx.claim_callback(carrier_id, source, update.tracking_number, body, now):
                return "duplicate"
            order = None if order_id is None else await tx.orders.get(order_id)
            record = await tx.shipment_by_tracking(carrier_id, update.tracking_number)
            if order is None or record is None:
                await tx.finish_callback(carrier_id, source, "unknown_tracking_number", None)
                await self._commit(tx)
                return "unknown_tracking_number"
            corrections = len(record.shipment.corrections)
            result = record.shipment.apply(update)
            changed = bool(result.added) or len(record.shipment.corrections) != corrections
            raised = await tx.raised_rules(record.shipment.shipment_id)
            await tx.update_shipment(record, next_due(record, self.rules, raised), now)
            if changed:
                tx.emit(self._entry(SHIPMENT_UPDATED, order, record.view(), now))
            if record.active:
                await self._drive_order(tx, order, record.shipment, now)
            outcome = "applied" if changed else "unchanged"
            await tx.finish_callback(carrier_id, source, outcome, record.shipment.shipment_id)
            await self._commit(tx)
            return outcome

    async def _drive_order(
        self, tx: ShipmentTx, order: Order, shipment: Shipment, now: datetime
    ) -> None:
        """Picked up: the order is shipped; delivered: delivered (where the state machine
        allows; an order already further along is left alone)."""
        targets: list[OrderStatus] = []
        if shipment.picked_up_at is not None or shipment.status is ShipmentStatus.DELIVERED:
            targets.append(OrderStatus.SHIPPED)
        if shipment.status is ShipmentStatus.DELIVERED:
            targets.append(OrderStatus.DELIVERED)
        changed = False
        cause = f"carrier:{shipment.carrier_id}"
        for target in targets:
            if order.status == target or is_behind(target, order.status):
                continue
            try:
                check_transition(order.status, target)
            except InvalidTransition:
                log.info("order %s: %s -> %s not allowed", order.id, order.status, target)
                continue
            order.transition_to(target, cause=cause, at=now)
            changed = True
        if changed:
            tx.orders.save(order)

    async def _commit(self, tx: ShipmentTx) -> None:
        await tx.commit()

    # ---- timers -----------------------------------------------------------------------

    async def sweep(self, now: datetime | None = None, limit: int = 500) -> list[Alert]:
        """Raise every alert due at `now`, each at most once per (shipment, rule)."""
        now = now or self.clock()
        raised_now: list[Alert] = []
        for shipment_id, order_id in await self.store.due_shipments(now, limit):
            async with self.store.transaction() as tx:
                order = await tx.orders.get(order_id)
                record = await tx.shipment(shipment_id)
                if order is None or record is None:
                    continue
                raised = await tx.raised_rules(shipment_id)
                for rule in self.rules if record.active else ():
                    if str(rule.kind) in raised:
                        continue
                    alert = rule.check(record.shipment, now)
                    if alert is None:
                        continue
                    alert_id = new_id("alr")
                    raised.add(str(rule.kind))
                    if await tx.insert_alert(alert_id, alert, order_id):
                        raised_now.append(alert)
                        data = alert_view(alert, alert_id, order_id)
                        tx.emit(self._entry(ALERT_RAISED, order, data, now))
                await tx.update_shipment(record, next_due(record, self.rules, raised), now)
                await self._commit(tx)
        return raised_now

    # ---- reading ----------------------------------------------------------------------

    async def list_for_order(self, order_id: str) -> list[dict[str, Any]]:
        if await self.store.load_order(order_id) is None:
            raise OrderNotFound(order_id)
        return [r.view() for r in await self.store.list_for_order(order_id)]

    async def open_alerts(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self.store.open_alerts(limit)


def _booking(order: Order, carrier_code: str, weight_kg: Decimal | None, service: str) -> Booking:
    a = order.shipping_address
    customer = order.customer
    recipient = Party(
        name=(a.name if a and a.name else None) or (customer.name if customer else None) or "",
        phone=(a.phone if a else None) or (customer.phone if customer else None) or "",
        province=(a.region if a else None) or "",
        city=(a.city if a else None) or "",
        district="",
        address=" ".join(x for x in ((a.line1, a.line2) if a else ()) if x),
        postcode=(a.postal_code if a else None) or "",
        country=(a.country_code if a else None) or "CN",
    )
    items = tuple(Item(line.name or line.sku or "item", line.quantity) for line in order.lines)
    return Booking(
        order_id=order.id,
        carrier_code=carrier_code,
        sender=Party("", "", "", "", "", ""),
        recipient=recipient,
        items=items,
        weight_kg=weight_kg if weight_kg is not None else Decimal("1"),
        service=service,
        remark=order.name or "",
    )
