"""Shipments service (issue 6): book waybills, apply carrier callbacks, sweep anomaly timers.

Every change is ONE transaction (`ShipmentTx`, backed by the SQL unit of work): the
carrier-inbox record, the shipment row, the order's status change with its history, and
the outbox entries (`shipment.created`, `shipment.updated`, `alert.raised`, and the order's
own `order.shipped` / `order.delivered`) commit together or not at all.

Callbacks are verified in the carrier's own scheme, recorded in `carrier_inbox` as
`received` and answered in the carrier's acknowledgement format at once; callbacks arriving
together share one recording transaction (group commit; each is answered after the commit
holding it). The in-process processor (woken by the insert, never waiting for the sweep)
then applies them per shipment in order of arrival, marking each `applied` in the
transaction of its effect: up to `apply_batch_size` shipments per transaction (their rows
read with one query per table), by `callback_workers` workers (one on SQLite, where the
single writer makes batches the win; a few on PostgreSQL), never one shipment by two at
once. A push that arrives before its booking has committed is re-queued by that commit.
Rows a crash left `received` are applied by the sweep (one process, under the
"shipments-sweep" lease; it leaves alone what this process's processor has queued); row
locks make a second processor find nothing left to do. `inline_callbacks` applies before
answering (tests). Locks are taken orders first (in id order), shipments second, inbox rows
third. A shipment whose callbacks fail to apply is retried with backoff (`callback_retry`;
the sweep skips it until then) and, after `max_attempts` failures, its callbacks are
parked: a `shipment.callback_parked` alert, `GET /v1/carrier-callbacks/parked`, and a
replay that applies one once.

An order may leave in several parcels: each outbound shipment records the units of the
order's lines it carries (`ShipmentRecord.lines`; one booked before parcels existed carries
the whole order). A booking names its lines or takes every unit not yet in an active parcel;
active parcels never hold more than the order (checked before the carrier is asked, and
again under the order's lock when the booking is stored: a booking that lost a race is
refused and its unused waybill cancelled). Re-booking (`replaces`, or naming another carrier
for an order held by one parcel) cancels only the parcel replaced. `shipment.created`
carries what a channel write-back needs: the parcel's `lines` when it holds part of the
order, `completes_order`, and `replaces` ([{id, carrier_id, carrier_code, tracking_number}]).

An order follows its active outbound shipments (`fulfillment_of`): some picked up emits
`order.partially_shipped`; every unit in a parcel and every parcel picked up moves it to
shipped; every unit in a parcel and every parcel delivered, to delivered, and schedules
`order.review_requested` (a durable reminder in `order_reminders`). Its stock follows in
the same transaction (`on_order_change`, as for a status change through the API): shipped
commits the order's reservations (so a partial parcel commits nothing on its own).

The anomaly timer is the shipment row's `due_us`: the earliest time a rule not yet raised
for it could fire. The sweep asks the database only for due rows, so a restart loses no
timer, and the `alerts` unique key (shipment, rule) means none is raised twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

import orjson

from ordersync.adapters.carriers.base import (
    Ack,
    Booking,
    BookingResult,
    CallbackRejected,
    CarrierAccount,
    CarrierConnector,
    CarrierError,
    CarrierRequest,
    CarrierResponse,
    Item,
    Party,
    Waybill,
    callback_id,
)
from ordersync.clock import utcnow
from ordersync.domain.alerts import Alert, AlertKind, Rule, default_rules
from ordersync.domain.carrier_choice import NoCarrierMatched, explicit
from ordersync.domain.codec import fmt_time, order_to_dict
from ordersync.domain.errors import InvalidTransition, OrderNotFound
from ordersync.domain.order_status import OrderStatus, check_transition, is_behind
from ordersync.domain.orders import Order
from ordersync.domain.shipments import (
    CallbackRetry,
    FulfillmentStatus,
    MappingTable,
    ParcelLine,
    ParcelRefused,
    Shipment,
    ShipmentStatus,
    TrackingUpdate,
    covers,
    delivered_at,
    fulfillment_of,
    is_whole,
    line_key,
    pick_lines,
    remaining,
    rest_of,
    update_from_dict,
    update_to_dict,
)
from ordersync.ids import new_id
from ordersync.service.carrier_booking import (
    AllCarriersFailed,
    CarrierRules,
    book_first,
    cancel_waybill,
    facts_of,
)
from ordersync.service.handlers.inventory import on_order_change
from ordersync.service.outbox import EventRouter, OutboxEntry
from ordersync.service.singleton import cancel_and_wait, cancelling
from ordersync.service.unit_of_work import OrderRepository, UnitOfWork

log = logging.getLogger(__name__)

SHIPMENT_CREATED = "shipment.created"
SHIPMENT_UPDATED = "shipment.updated"
SHIPMENT_TRACKING_EXPIRED = "shipment.tracking_expired"  # polled to max_age, never final
ALERT_RAISED = "alert.raised"
ORDER_PARTIALLY_SHIPPED = "order.partially_shipped"
ORDER_REVIEW_REQUESTED = "order.review_requested"
RETURN_DIRECTION = "return"
# The most parked callbacks one bulk replay puts back (`replay_parked`), and its default.
REPLAY_PARKED_MAX = 10_000
REPLAY_PARKED_DEFAULT = 1000


class ShipmentError(Exception):
    """A request about shipments that cannot be served: `status` and `code` for the API."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.extra = extra  # more problem members (e.g. the booking `attempts`)


@dataclass(slots=True)
class ShipmentRecord:
    """A stored shipment: the aggregate plus what the hub keeps beside it."""

    shipment: Shipment
    order_id: str
    active: bool = True  # False once cancelled (the order was re-booked elsewhere)
    cancelled_at: datetime | None = None
    subscribed: bool = False
    # "outbound" (to the buyer) or "return" (a reverse pickup back to the warehouse, see
    # service/returns.py): a return never drives the order's status nor is cancelled by
    # re-booking the order.
    direction: str = "outbound"
    # What the booking said beside the tracking number: `carrier_ref`, `label_url`, the
    # carrier `choice` (why this carrier) and, once re-booked elsewhere, `carrier_cancel`.
    booking: dict[str, Any] = field(default_factory=dict)
    # The order's units this parcel carries (None: the whole order; shipments booked before
    # parcels existed), whether that is only part of the order, whether the order's units
    # were all in parcels once it was booked, and the shipments a re-booking replaced.
    lines: tuple[ParcelLine, ...] | None = None
    partial: bool = False
    completes_order: bool = True
    replaces: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_return(self) -> bool:
        return self.direction == RETURN_DIRECTION

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
            "direction": self.direction,
            "booking": self.booking,
            "lines": None if self.lines is None else [p.to_dict() for p in self.lines],
            "partial": self.partial,
            "completes_order": self.completes_order,
            "replaces": self.replaces,
        }

    @classmethod
    def from_doc(cls, d: Mapping[str, Any]) -> ShipmentRecord:
        cancelled = d.get("cancelled_at")
        lines = d.get("lines")
        return cls(
            Shipment.from_dict(d),
            d["order_id"],
            bool(d.get("active", True)),
            None if cancelled is None else datetime.fromisoformat(cancelled),
            bool(d.get("subscribed", False)),
            direction=d.get("direction", "outbound"),
            booking=dict(d.get("booking") or {}),
            lines=None if lines is None else tuple(ParcelLine.from_dict(p) for p in lines),
            partial=bool(d.get("partial", False)),
            completes_order=bool(d.get("completes_order", True)),
            replaces=list(d.get("replaces") or []),
        )

    def view(self) -> dict[str, Any]:
        """The public JSON (API responses and event bodies)."""
        s = self.shipment
        return {
            "id": s.shipment_id,
            "order_id": self.order_id,
            "direction": self.direction,
            "carrier_id": s.carrier_id,
            "carrier_code": s.carrier_code,
            "tracking_number": s.tracking_number,
            "status": self.status,
            "active": self.active,
            "booked_at": fmt_time(s.booked_at),
            "promised_by": fmt_time(s.promised_by),
            "picked_up_at": fmt_time(s.picked_up_at),
            "cancelled_at": fmt_time(self.cancelled_at),
            # The label / print reference for the warehouse, and why this carrier.
            "carrier_ref": self.booking.get("carrier_ref") or None,
            "label_url": self.booking.get("label_url") or None,
            "choice": self.booking.get("choice"),
            "carrier_cancel": self.booking.get("carrier_cancel"),
            # A parcel with part of the order lists its lines (the platform's line id, SKU,
            # units); a parcel of the whole order lists none. `completes_order`: no unit of
            # the order was left outside a parcel once it was booked. `replaces`: the
            # shipments this re-booking superseded (a channel write-back updates them).
            "lines": [p.public() for p in self.lines or ()] if self.partial else [],
            "completes_order": self.completes_order,
            "replaces": self.replaces,
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
        self,
        carrier_id: str,
        callback_id: str,
        tracking_number: str,
        body: bytes,
        now: datetime,
        update_doc: str | None = None,
    ) -> bool:
        """Record the callback as `received` (its mapped update in `update_doc`, applied
        later); False if it was recorded before (a replay)."""
        ...

    async def pending_callbacks(
        self, carrier_id: str, tracking_number: str
    ) -> list[tuple[str, str | None, datetime]]:
        """(callback id, update doc, received at) still `received`, in order of arrival,
        locked."""
        ...

    async def finish_callback(
        self,
        carrier_id: str,
        callback_id: str,
        outcome: str,
        shipment_id: str | None,
        now: datetime | None = None,
    ) -> None: ...

    async def prefetch(self, order_ids: Sequence[str], keys: Sequence[tuple[str, str]]) -> None:
        """Load and lock the orders (in id order), their shipments, the pending callbacks
        of `keys` and the shipments' raised rules up front (a batch); the methods here
        then answer from them, and may buffer their writes until commit."""
        ...

    async def finish_callbacks(
        self, carrier_id: str, outcomes: Mapping[str, str], shipment_id: str, now: datetime
    ) -> None:
        """`finish_callback` for several callbacks of one shipment (outcome per id)."""
        ...

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

    async def alert(self, alert_id: str) -> dict[str, Any] | None:
        """The alert's public view, locked."""
        ...

    async def set_alert_state(
        self, alert_id: str, state: str, principal: str, now: datetime
    ) -> dict[str, Any]: ...

    async def schedule_reminder(
        self, order_id: str, kind: str, due: datetime, now: datetime, *, sent: bool
    ) -> bool:
        """A durable reminder per (order, kind); False if one was scheduled before."""
        ...

    async def fire_reminder(self, order_id: str, kind: str, now: datetime) -> bool:
        """Mark it sent; False if it was sent already (another sweep won)."""
        ...

    def emit(self, entry: OutboxEntry) -> None: ...

    @property
    def unit_of_work(self) -> UnitOfWork | None:
        """The unit of work the transaction rides on (its stock follows the order), or
        None where there is none (no inventory then)."""
        ...

    async def commit(self) -> None: ...


class ShipmentStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[ShipmentTx]: ...

    async def load_order(self, order_id: str) -> Order | None: ...

    async def order_of_tracking(self, carrier_id: str, tracking_number: str) -> str | None: ...

    async def orders_of_tracking(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """The order of each known (carrier id, tracking number), in one query."""
        ...

    async def order_of_shipment(self, shipment_id: str) -> str | None: ...

    async def parked_count(self) -> int:
        """Carrier callbacks parked after failing to apply `max_attempts` times."""
        ...

    async def due_shipments(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(shipment id, order id) of active shipments whose timer is due, earliest first."""
        ...

    async def list_for_order(self, order_id: str) -> list[ShipmentRecord]: ...

    async def alerts(self, states: tuple[str, ...], limit: int) -> list[dict[str, Any]]: ...

    async def order_of_alert(self, alert_id: str) -> str | None: ...

    async def open_alert_counts(self) -> dict[str, int]:
        """Unresolved alerts per rule."""
        ...

    async def received_callbacks(self, limit: int) -> list[tuple[str, str]]:
        """(carrier id, tracking number) with callbacks still `received`, oldest first."""
        ...

    async def due_reminders(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(order id, kind) of reminders due and not sent."""
        ...

    async def note_apply_failure(
        self,
        carrier_id: str,
        tracking_number: str,
        error: str,
        now: datetime,
        retry: CallbackRetry,
    ) -> list[str]:
        """Count a failed application against the shipment's `received` callbacks (each
        then waits for `retry.next_try`, or is parked); the callback ids parked now."""
        ...

    async def held_back(self, now: datetime) -> set[tuple[str, str]]:
        """(carrier id, tracking number) whose `received` callbacks wait for a retry."""
        ...

    async def parked_callbacks(self, limit: int) -> list[dict[str, Any]]: ...

    async def unpark_callback(
        self, carrier_id: str, callback_id: str
    ) -> tuple[str, str | None] | None:
        """Parked -> `received`, attempts reset; (outcome before, tracking number), or
        None if there is no such callback."""
        ...

    async def unpark_callbacks(
        self,
        carrier_ids: Sequence[str],
        *,
        parked_before: datetime | None = None,
        parked_after: datetime | None = None,
        error_contains: str | None = None,
        limit: int = 1000,
    ) -> list[tuple[str, str, str]]:
        """The oldest `limit` parked callbacks of `carrier_ids` matching the filters ->
        `received`, attempts reset, in one transaction; (carrier id, callback id, tracking
        number) of each, oldest first."""
        ...


class AlertObserver(Protocol):
    """Metrics: each alert raised, and the unresolved alerts per rule."""

    def raised(self, rule: str) -> None: ...

    def open_counts(self, counts: Mapping[str, int]) -> None: ...

    def parked_callbacks(self, count: int) -> None: ...


@dataclass(frozen=True)
class Carrier:
    """A configured carrier: its account, its connector and its (overridden) mapping."""

    account: CarrierAccount
    connector: CarrierConnector
    mapping: MappingTable
    carrier_code: str = ""


@dataclass(slots=True)
class _RecordRequest:
    carrier_id: str
    items: Sequence[tuple[str, TrackingUpdate]]
    body: bytes
    done: asyncio.Future[list[tuple[str, str]]]


Send = Callable[[CarrierRequest], Awaitable[CarrierResponse]]
ReturnHook = Callable[[ShipmentTx, Order, ShipmentRecord, datetime], Awaitable[None]]


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
    # Called in the callback's own transaction when a return shipment changes (set by
    # service/returns.py: the goods' receipt commits with the callback that reports it).
    on_return_update: ReturnHook | None = None
    # True: a callback is applied before it is answered (tests, debugging). The default
    # answers once it is recorded and applies it right after, in this process.
    inline_callbacks: bool = False
    # The review request after every shipment of an order is delivered (None: never).
    review_delay: timedelta | None = timedelta(0)
    observer: AlertObserver | None = None
    # How long a callback for a tracking number we do not know waits for its shipment.
    unknown_grace: timedelta = timedelta(minutes=5)
    # Which carrier books an order without a `carrier_id` (service/carrier_booking.py).
    carrier_rules: CarrierRules = field(default_factory=CarrierRules)
    # Recorded callbacks are applied by this many workers, each taking up to
    # `apply_batch_size` shipments into one transaction (one commit for all of them). SQLite
    # has one writer: one worker, batches do the work. PostgreSQL: a few in parallel.
    callback_workers: int = 1
    apply_batch_size: int = 64
    # Callbacks arriving together are recorded in one transaction (group commit: each is
    # still answered only after the commit that holds it).
    record_batch: int = 256
    # A shipment whose recorded callbacks keep failing to apply (a bug, a bad mapping) is
    # retried with backoff, then its callbacks are parked after `callback_retry.max_attempts`
    # failures (a `shipment.callback_parked` alert; `parked_callbacks`, `replay_callback`)
    # instead of being retried by every sweep forever.
    callback_retry: CallbackRetry = field(default_factory=CallbackRetry)
    _sweeper: asyncio.Task[None] | None = field(default=None, repr=False)
    _processor: asyncio.Task[None] | None = field(default=None, repr=False)
    _pending: set[tuple[str, str]] = field(default_factory=set, repr=False)
    _inflight: set[tuple[str, str]] = field(default_factory=set, repr=False)
    # Callbacks this process recorded before their shipment existed (a carrier may push
    # before the booking that subscribed us has committed): re-queued when it commits.
    _early: set[tuple[str, str]] = field(default_factory=set, repr=False)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _stopping: bool = field(default=False, repr=False)
    _records: list[_RecordRequest] = field(default_factory=list, repr=False)
    _recorder: asyncio.Task[None] | None = field(default=None, repr=False)

    # ---- lifecycle --------------------------------------------------------------------

    def start(self, *, sweep: bool = True) -> None:
        """The callback processor always (callbacks arrive wherever the API runs); the
        sweep (timers, reminders, callbacks left `received`) in one process only."""
        if self._processor is None:
            self._processor = asyncio.create_task(
                self._process_forever(), name="shipment-callbacks"
            )
        if sweep and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="shipment-timers")

    async def stop_sweep(self) -> None:
        # Cleared only once it has ended: a stop cancelled half-way is finished by the next.
        if self._sweeper is not None:
            await cancel_and_wait(self._sweeper)
            self._sweeper = None

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the sweep, then let the processor finish the shipment it is applying (what
        it has not started stays `received` for the next sweep)."""
        await self.stop_sweep()
        task, self._processor = self._processor, None
        if task is not None:
            self._stopping = True
            self._wakeup.set()
            done, _ = await asyncio.wait({task}, timeout=grace)
            if not done:
                await cancel_and_wait(task)
            self._stopping = False
        recorder = self._recorder
        if recorder is not None and not recorder.done():  # callbacks being recorded
            await asyncio.wait({recorder}, timeout=grace)

    async def _sweep_forever(self) -> None:
        await self.refresh_open_alerts()
        while True:
            try:
                await self.process_received()
                await self.sweep()
            except Exception as e:  # the timer must survive a database restart
                if cancelling():  # ... but not its stop (a cleanup failed while unwinding)
                    raise asyncio.CancelledError from e
                log.warning("shipment timer sweep failed", exc_info=True)
            await asyncio.sleep(self.sweep_interval)

    # ---- events -----------------------------------------------------------------------

    def _entry(self, type_: str, order: Order, data: dict[str, Any], at: datetime) -> OutboxEntry:
        # The order's channel and its id there: a channel write-back needs them to address
        # the platform's order, and routes by the channel (fields in `data` win).
        data = {"channel_id": order.channel_id, "external_id": order.external_id, **data}
        return OutboxEntry(
            event_id=new_id("evt"),
            type=type_,
            order_id=order.id,
            version=order.version,
            body=orjson.dumps({"type": type_, "timestamp": fmt_time(at), "data": data}),
            destinations=self.router.destinations_for(type_, order.channel_id),
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
        lines: Sequence[tuple[str | None, str | None, int]] | None = None,
        replaces: str | None = None,
    ) -> ShipmentRecord:
        """Book a waybill for a parcel of the order.

        `lines` ((line external id, SKU, units) each) names what the parcel carries; without
        them it takes every unit not yet in an active parcel. Parcels may coexist as long as
        they hold no more than the order (409 `parcel_exceeds_order` otherwise, before any
        carrier is asked). `replaces` re-books one parcel (its lines, unless `lines` say
        otherwise): only that shipment is cancelled (here and, where the connector can,
        with its carrier). A booking without lines for an order whose units are all in
        one parcel, naming another carrier, re-books that parcel (switching carriers).

        Without `carrier_id` the carrier rules choose, and the rule's fallbacks are tried in
        turn when a carrier fails; nothing is stored for a failed attempt."""
        named = None if carrier_id is None else self.carrier(carrier_id)
        named_id = None if named is None else named.account.carrier_id
        order = await self.store.load_order(order_id)
        if order is None:
            raise OrderNotFound(order_id)
        if order.status is OrderStatus.CANCELLED:
            raise ShipmentError(409, "order_cancelled", f"order {order_id} is cancelled")
        held = await self.store.list_for_order(order_id)
        plan = _plan(order, held, named_id, lines, replaces)
        if named is not None:
            choice = explicit(named.account.carrier_id)
        else:
            try:
                choice = await self.carrier_rules.choose(
                    facts_of(order, plan.lines, weight_kg, service), list(self.carriers)
                )
            except NoCarrierMatched as e:
                raise ShipmentError(422, e.code, str(e), explanation=list(e.explanation)) from None
        try:
            booked = await book_first(
                [self.carriers[c] for c in choice.carriers],
                lambda c: _booking(
                    order,
                    carrier_code or c.carrier_code,
                    weight_kg,
                    service,
                    plan.lines,
                    _order_ref(order_id, held, c.account.carrier_id),
                ),
                self.send,
                self.carrier_rules.observer,
            )
        except AllCarriersFailed as e:
            raise ShipmentError(
                502,
                "carrier_error",
                f"booking failed with every carrier tried: {e}",
                attempts=[a.to_dict() for a in e.attempts],
                choice=choice.to_dict(),
            ) from None
        carrier, result = booked.carrier, booked.result
        account = carrier.account
        order_ref = _order_ref(order_id, held, account.carrier_id)
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
            booking={
                "carrier_ref": result.carrier_ref,
                "label_url": result.label_url,
                "order_ref": order_ref,
                "choice": {
                    **choice.to_dict(account.carrier_id),
                    "failed_attempts": [a.to_dict() for a in booked.attempts],
                },
            },
            lines=plan.lines,
            partial=plan.partial,
            completes_order=plan.completes,
        )
        replaced: list[ShipmentRecord] = []
        try:
            async with self.store.transaction() as tx:
                locked = await tx.orders.get(order_id)
                if locked is None:  # pragma: no cover - orders are never deleted
                    raise OrderNotFound(order_id)
                current = await tx.shipments_of_order(order_id)
                # Another booking may have committed while the carrier was asked: the
                # parcel must still fit as planned, under the order's lock.
                if locked.status is OrderStatus.CANCELLED:
                    raise ShipmentError(409, "order_cancelled", f"order {order_id} is cancelled")
                if _plan(locked, current, named_id, lines, replaces) != plan:
                    raise ShipmentError(
                        409,
                        "parcels_changed",
                        f"the parcels of order {order_id} changed while booking; try again",
                    )
                for old in current:
                    if old.shipment.shipment_id in plan.replaced:
                        old.active, old.cancelled_at = False, now
                        await tx.update_shipment(old, None, now)
                        tx.emit(self._entry(SHIPMENT_UPDATED, locked, old.view(), now))
                        replaced.append(old)
                record.replaces = [
                    {
                        "id": old.shipment.shipment_id,
                        "carrier_id": old.shipment.carrier_id,
                        "carrier_code": old.shipment.carrier_code,
                        "tracking_number": old.shipment.tracking_number,
                    }
                    for old in replaced
                ]
                await tx.insert_shipment(record, next_due(record, self.rules, set()), now)
                tx.emit(self._entry(SHIPMENT_CREATED, locked, record.view(), now))
                await self._commit(tx)
        except ShipmentError:
            # Nothing was stored: the waybill just booked is not used.
            await self._cancel_unused(carrier, Waybill(order_ref, *_waybill_of(result)))
            raise
        self.shipment_committed(account.carrier_id, result.tracking_number)
        for old in replaced:  # the new booking stands; the old waybill is merely unused
            await self.cancel_with_carrier(old)
        return record

    async def _cancel_unused(self, carrier: Carrier, waybill: Waybill) -> None:
        """Cancel a waybill booked for a booking that was then refused (best effort: the
        refusal stands whatever the carrier says)."""
        try:
            outcome = await cancel_waybill(carrier, waybill, self.send, self.carrier_rules.observer)
        except Exception as e:
            if cancelling():
                raise asyncio.CancelledError from e
            log.warning("cancelling an unused waybill failed", exc_info=True)
            return
        log.info("unused waybill with %s: %s", carrier.account.carrier_id, outcome["state"])

    async def cancel_with_carrier(self, old: ShipmentRecord) -> None:
        """Cancel a waybill no longer needed (re-booked elsewhere, a return received by
        hand) with its carrier, after the change that dropped it has committed (a crash in
        between leaves an unused waybill, never an order without one), and keep the outcome
        with the shipment (`carrier_cancel`). A refusal or an unreachable carrier is logged
        and recorded as `failed`; nothing here fails the caller."""
        try:
            await self._cancel_with_carrier(old)
        except Exception as e:
            if cancelling():
                raise asyncio.CancelledError from e
            sid = old.shipment.shipment_id
            log.warning("recording the cancellation of %s failed", sid, exc_info=True)

    async def _cancel_with_carrier(self, old: ShipmentRecord) -> None:
        s = old.shipment
        carrier = self.carriers.get(s.carrier_id)
        if carrier is None:  # the carrier was removed from the config since
            outcome = {"state": "unsupported", "detail": f"carrier {s.carrier_id} is gone"}
        else:
            waybill = Waybill(
                # The order reference the carrier was booked with (a return's pickup: the
                # return's id), else the order's.
                str(old.booking.get("order_ref") or old.order_id),
                s.tracking_number,
                s.carrier_code,
                str(old.booking.get("carrier_ref") or ""),
            )
            outcome = await cancel_waybill(carrier, waybill, self.send, self.carrier_rules.observer)
        now = self.clock()
        async with self.store.transaction() as tx:
            if await tx.orders.get(old.order_id) is None:  # pragma: no cover
                return
            record = await tx.shipment(s.shipment_id)
            if record is None:  # pragma: no cover - shipments are never deleted
                return
            record.booking["carrier_cancel"] = {**outcome, "at": fmt_time(now)}
            await tx.update_shipment(record, None, now)
            await self._commit(tx)

    async def request_waybill(
        self, carrier: Carrier, booking: Booking
    ) -> tuple[BookingResult, bool]:
        """Book with the carrier and subscribe to its tracking (True if subscribed); stores
        nothing. Used for reverse pickups (service/returns.py)."""
        account, connector = carrier.account, carrier.connector
        try:
            result = connector.parse_booking_response(
                booking, await self.send(connector.build_booking_request(account, booking))
            )
        except (CarrierError, OSError, TimeoutError) as e:
            raise ShipmentError(502, "carrier_error", f"booking failed: {e}") from e
        subscribed = await self._subscribe(carrier, result.tracking_number, result.carrier_code)
        return result, subscribed

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
    #
    # A callback is answered as soon as it is durably recorded: verify in the carrier's
    # scheme (a forgery writes nothing), store the verified, mapped update in
    # `carrier_inbox` as `received` (one short transaction), ack. The processor applies the
    # recorded callbacks of one shipment in order of arrival, each in the transaction that
    # marks it done, so each takes effect exactly once; a crash before that leaves it
    # `received` for the periodic sweep.

    async def handle_callback(
        self, carrier_id: str, body: bytes, headers: Mapping[str, str]
    ) -> Ack:
        """Verify, record and answer a carrier push (applied after the answer)."""
        carrier = self.carrier(carrier_id)
        connector, account = carrier.connector, carrier.account
        try:
            updates = connector.parse_callback(account, body, headers, carrier.mapping)
        except CallbackRejected as e:
            log.info("carrier %s: callback rejected: %s", carrier_id, e.detail)
            ack = connector.ack(account, ok=False, reason=e.detail)
            return Ack(e.status, ack.content_type, ack.body)
        keys = await self._record(carrier_id, _sources(connector.kind, updates, body), body)
        if self.inline_callbacks:
            await self.apply_batch(keys)
        elif keys:
            self._queue(keys)
        return connector.ack(account)

    async def apply_tracking(
        self,
        carrier_id: str,
        update: TrackingUpdate,
        body: bytes = b"",
        source: str | None = None,
    ) -> str:
        """Record and apply one tracking update at once (the tracking poller's path), with
        the same inbox dedupe as a push. Returns `applied`, `unchanged`, `duplicate` (seen
        before), `received` (no such shipment yet), `failed` (recorded, not applied: retried
        later) or `unknown_tracking_number`."""
        carrier = self.carrier(carrier_id)
        if source is None:
            [(source, _)] = _sources(carrier.connector.kind, [update], body)
        keys = await self._record(carrier_id, [(source, update)], body)
        if not keys:
            return "duplicate"
        try:
            outcomes = await self.apply_pending(*keys[0])
        except Exception as e:  # recorded: retried with backoff by the sweep, or parked
            if cancelling():
                raise asyncio.CancelledError from e
            await self._apply_failed(keys[0], e)
            return "failed"
        return outcomes.get(source, "received")  # received: waiting for its shipment

    async def _record(
        self, carrier_id: str, items: Sequence[tuple[str, TrackingUpdate]], body: bytes
    ) -> list[tuple[str, str]]:
        """Store the callbacks not seen before; their (carrier, tracking number) keys.

        Concurrent calls share one transaction (group commit): while one commit is under
        way the next requests queue, and the recorder takes them all in the next one. Each
        caller resumes only after the commit holding its callbacks."""
        if self.record_batch <= 1:
            [keys] = await self._record_many([(carrier_id, items, body)])
            return keys
        done: asyncio.Future[list[tuple[str, str]]] = asyncio.get_running_loop().create_future()
        self._records.append(_RecordRequest(carrier_id, items, body, done))
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_queued(), name="carrier-inbox")
        return await done

    async def _record_queued(self) -> None:
        while self._records:
            batch = self._records[: self.record_batch]
            del self._records[: len(batch)]
            try:
                results = await self._record_many([(r.carrier_id, r.items, r.body) for r in batch])
            except Exception:  # one bad request must not fail the others: each alone
                log.warning("recording %d carrier callbacks failed", len(batch), exc_info=True)
                for r in batch:
                    try:
                        [keys] = await self._record_many([(r.carrier_id, r.items, r.body)])
                    except Exception as e:
                        if not r.done.done():
                            r.done.set_exception(e)
                    else:
                        if not r.done.done():
                            r.done.set_result(keys)
                continue
            for r, keys in zip(batch, results, strict=True):
                if not r.done.done():  # the caller may have gone (a client disconnect)
                    r.done.set_result(keys)

    async def _record_many(
        self, requests: Sequence[tuple[str, Sequence[tuple[str, TrackingUpdate]], bytes]]
    ) -> list[list[tuple[str, str]]]:
        now = self.clock()
        out: list[list[tuple[str, str]]] = []
        async with self.store.transaction() as tx:
            for carrier_id, items, body in requests:
                keys: dict[tuple[str, str], None] = {}
                for source, update in items:
                    doc = orjson.dumps(update_to_dict(update)).decode()
                    if await tx.claim_callback(
                        carrier_id, source, update.tracking_number, body, now, doc
                    ):
                        keys[(carrier_id, update.tracking_number)] = None
                out.append(list(keys))
            await self._commit(tx)
        return out

    def _queue(self, keys: Iterable[tuple[str, str]]) -> None:
        self._pending.update(keys)
        self._wakeup.set()

    def shipment_committed(self, carrier_id: str, tracking_number: str) -> None:
        """A shipment was stored: apply what its carrier pushed before (no sweep wait)."""
        key = (carrier_id, tracking_number)
        if key in self._early:
            self._early.discard(key)
            if self.inline_callbacks or self._processor is None:
                return  # the sweep (or the caller) applies it
            self._queue([key])

    async def _process_forever(self) -> None:
        """Apply what this process just recorded (woken on insert), with
        `callback_workers` workers, each a batch of shipments per transaction."""
        await asyncio.gather(*(self._apply_worker() for _ in range(max(1, self.callback_workers))))

    def _take(self) -> list[tuple[str, str]]:
        """The next batch: queued shipments not being applied right now (one shipment is
        never applied by two workers at once), a fair share of them per worker."""
        free = sorted(self._pending - self._inflight)
        if not free:
            return []
        share = -(-len(free) // max(1, self.callback_workers))
        keys = free[: max(1, min(self.apply_batch_size, share))]
        self._pending.difference_update(keys)
        self._inflight.update(keys)
        return keys

    async def _apply_worker(self) -> None:
        while not self._stopping:
            keys = self._take()
            if not keys:
                self._wakeup.clear()  # no await since _take: no wake can be lost here
                await self._wakeup.wait()
                continue
            try:
                await self._apply_keys(keys)
            finally:
                self._inflight.difference_update(keys)
                if self._pending:  # some waited while theirs were in flight
                    self._wakeup.set()

    async def _apply_keys(self, keys: Sequence[tuple[str, str]]) -> int:
        """Apply in one transaction; if that fails, each shipment alone (one bad shipment
        must not hold back the others). Returns how many callbacks were applied."""
        try:
            return sum(len(o) for o in (await self.apply_batch(keys)).values())
        except Exception as e:
            if cancelling():  # stopping: not a bad shipment (see singleton.cancelling)
                raise asyncio.CancelledError from e
            if len(keys) == 1:  # left `received`: retried later, or parked
                await self._apply_failed(keys[0], e)
                return 0
        done = 0
        for key in keys:
            try:
                done += len((await self.apply_batch([key])).get(key, {}))
            except Exception as e:
                if cancelling():
                    raise asyncio.CancelledError from e
                await self._apply_failed(key, e)
        return done

    async def _apply_failed(self, key: tuple[str, str], error: Exception) -> None:
        """Count the failure: the shipment's callbacks wait for their retry, or are parked
        (and an alert raised) once they have failed `callback_retry.max_attempts` times."""
        carrier_id, tracking_number = key
        log.warning("applying callbacks for %s failed", carrier_id, exc_info=error)
        now = self.clock()
        # The class and first line of the message only (never a traceback's locals).
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        try:
            parked = await self.store.note_apply_failure(
                carrier_id, tracking_number, reason[:300], now, self.callback_retry
            )
        except Exception as e:
            if cancelling():
                raise asyncio.CancelledError from e
            log.warning("counting the failure for %s failed", carrier_id, exc_info=True)
            return
        if not parked:
            return
        log.error(
            "carrier %s: callback(s) %s parked after %d failed attempts",
            carrier_id,
            ", ".join(parked),
            self.callback_retry.max_attempts,
        )
        detail = (
            f"{len(parked)} callback(s) parked after {self.callback_retry.max_attempts}"
            f" failed attempts to apply them ({reason[:120]})"
        )
        try:
            raised = await self._raise_for_tracking(key, AlertKind.CALLBACK_PARKED, detail, now)
        except Exception as e:  # the parking stands; the alert is the notice
            if cancelling():
                raise asyncio.CancelledError from e
            log.warning("raising the parked-callback alert failed", exc_info=True)
            return
        await self._observe(raised)

    async def _raise_for_tracking(
        self, key: tuple[str, str], kind: AlertKind, detail: str, now: datetime
    ) -> list[Alert]:
        """Raise one alert of `kind` for the shipment of `key`, once per (shipment, kind)."""
        order_id = await self.store.order_of_tracking(*key)
        if order_id is None:
            return []
        async with self.store.transaction() as tx:
            order = await tx.orders.get(order_id)
            record = await tx.shipment_by_tracking(*key)
            if order is None or record is None:  # pragma: no cover - never deleted
                return []
            alert = Alert(record.shipment.shipment_id, kind, now, now, detail)
            alert_id = new_id("alr")
            if not await tx.insert_alert(alert_id, alert, order.id):
                return []
            tx.emit(self._entry(ALERT_RAISED, order, alert_view(alert, alert_id, order.id), now))
            await self._commit(tx)
        return [alert]

    async def parked_callbacks(self, limit: int = 100) -> list[dict[str, Any]]:
        """Callbacks that failed to apply `callback_retry.max_attempts` times, oldest first."""
        return await self.store.parked_callbacks(limit)

    async def replay_callback(self, carrier_id: str, callback_id: str) -> dict[str, Any]:
        """Put a parked callback back and apply it now (with the others its shipment has
        waiting, in order of arrival). It takes effect once: the inbox row is marked in the
        transaction of its effect, and a second replay finds it no longer parked (409)."""
        self.carrier(carrier_id)
        found = await self.store.unpark_callback(carrier_id, callback_id)
        if found is None:
            raise ShipmentError(
                404, "callback_not_found", f"no callback {callback_id!r} from {carrier_id!r}"
            )
        before, tracking_number = found
        if before != "parked" or tracking_number is None:
            raise ShipmentError(
                409, "callback_not_parked", f"callback {callback_id!r} is {before}, not parked"
            )
        key = (carrier_id, tracking_number)
        if key in self._inflight:  # being applied here right now: the processor takes it next
            self._queue([key])
            outcome = "queued"
        else:
            self._inflight.add(key)
            try:
                # None: failed again; `received` once more, retried with backoff (its
                # attempts count from zero) and parked again if it keeps failing.
                outcomes = await self._apply_replayed(key)
                outcome = "failed" if outcomes is None else outcomes.get(callback_id, "received")
            finally:
                self._inflight.discard(key)
        log.info("carrier %s: parked callback %s replayed: %s", carrier_id, callback_id, outcome)
        return {"carrier_id": carrier_id, "callback_id": callback_id, "outcome": outcome}

    async def replay_parked(
        self,
        *,
        carrier_id: str | None = None,
        parked_before: datetime | None = None,
        parked_after: datetime | None = None,
        error_contains: str | None = None,
        limit: int = REPLAY_PARKED_DEFAULT,
        by: str | None = None,
    ) -> dict[str, Any]:
        """Put back every parked callback matching the filters (once the cause of an outage
        is mended): the oldest `limit` of them, of configured carriers only (as the single
        replay), parked in [`parked_after`, `parked_before`), their `last_error` holding
        `error_contains`. They go back to `received` with attempts reset, as a single
        replay puts one (`last_error` kept), in ONE transaction; the processor is woken and
        applies them as usual (failing again: retried with backoff, then parked anew).
        A repeat finds them no longer parked and replays nothing new."""
        if carrier_id is not None:
            self.carrier(carrier_id)  # 404 carrier_not_found, as the single replay
            carriers = [carrier_id]
        else:
            carriers = sorted(self.carriers)
        if not 1 <= limit <= REPLAY_PARKED_MAX:
            raise ShipmentError(
                422, "invalid_limit", f"limit must be within 1..{REPLAY_PARKED_MAX}, not {limit}"
            )
        if parked_before is not None and parked_after is not None and parked_after >= parked_before:
            raise ShipmentError(
                422, "invalid_window", "parked_after must be earlier than parked_before"
            )
        if error_contains == "":
            raise ShipmentError(422, "invalid_filter", "error_contains must not be empty")
        replayed = await self.store.unpark_callbacks(
            carriers,
            parked_before=None if parked_before is None else parked_before.astimezone(UTC),
            parked_after=None if parked_after is None else parked_after.astimezone(UTC),
            error_contains=error_contains,
            limit=limit,
        )
        if replayed and self._processor is not None:  # else the sweep applies them
            self._queue({(c, t) for c, _, t in replayed})
        log.info(
            "bulk replay of parked callbacks by %s: %d (carrier=%s, parked_before=%s,"
            " parked_after=%s, error_contains=%r, limit=%d)",
            by or "-",
            len(replayed),
            carrier_id or "*",
            fmt_time(parked_before),
            fmt_time(parked_after),
            error_contains,
            limit,
        )
        for c, i, _ in replayed:  # the single replay's audit line, for each
            log.info("carrier %s: parked callback %s replayed: %s", c, i, "queued")
        return {"replayed": len(replayed), "ids": [i for _, i, _ in replayed]}

    async def _apply_replayed(self, key: tuple[str, str]) -> dict[str, str] | None:
        try:
            return await self.apply_pending(*key)
        except Exception as e:
            if cancelling():
                raise asyncio.CancelledError from e
            await self._apply_failed(key, e)
            return None

    async def process_received(self, limit: int = 500) -> int:
        """Apply every callback still `received` (after a crash, or another process's);
        returns how many were applied. Safe to run in several processes at once.
        Shipments this process's processor has queued or is applying are left to it."""
        skip = set(self._inflight)
        if self._processor is not None:
            skip |= self._pending
        # Shipments whose callbacks failed to apply wait for their retry time.
        skip |= await self.store.held_back(self.clock())
        keys = [k for k in await self.store.received_callbacks(limit) if k not in skip]
        done = 0
        size = max(1, self.apply_batch_size)
        for i in range(0, len(keys), size):
            batch = [k for k in keys[i : i + size] if k not in self._inflight]
            self._inflight.update(batch)
            try:
                done += await self._apply_keys(batch)
            finally:
                self._inflight.difference_update(batch)
        return done

    async def apply_pending(self, carrier_id: str, tracking_number: str) -> dict[str, str]:
        """Apply the shipment's recorded callbacks in order of arrival, in one transaction
        that also marks them done (a second processor finds nothing left to do). Returns
        the outcome per callback id."""
        key = (carrier_id, tracking_number)
        return (await self.apply_batch([key])).get(key, {})

    async def apply_batch(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, str]]:
        """`apply_pending` for several shipments in ONE transaction (one commit): the
        outcome per callback id, per shipment."""
        if not keys:
            return {}
        owners = await self.store.orders_of_tracking(keys)
        now = self.clock()
        raised: list[Alert] = []
        results: dict[tuple[str, str], dict[str, str]] = {}
        touched = False
        async with self.store.transaction() as tx:
            # Locks: the orders first (in id order: two batches never wait in a cycle),
            # then their shipments, then the inbox rows.
            await tx.prefetch(sorted(set(owners.values())), keys)  # one query per table
            orders: dict[str, Order | None] = {}
            for owner in sorted(set(owners.values())):
                orders[owner] = await tx.orders.get(owner)
            for key in sorted(keys, key=lambda k: (owners.get(k, ""), k)):
                owner_id = owners.get(key)
                order = None if owner_id is None else orders.get(owner_id)
                found = await self._apply_in(tx, key, order, now)
                if found is None:
                    continue
                touched = True
                results[key], fresh = found
                raised += fresh
            if touched:
                await self._commit(tx)
        await self._observe(raised)
        return results

    async def _apply_in(
        self, tx: ShipmentTx, key: tuple[str, str], order: Order | None, now: datetime
    ) -> tuple[dict[str, str], list[Alert]] | None:
        """One shipment's recorded callbacks, in the caller's transaction (None: none)."""
        carrier_id, tracking_number = key
        shipments = [] if order is None else await tx.shipments_of_order(order.id)
        pending = await tx.pending_callbacks(carrier_id, tracking_number)
        if not pending:
            return None
        record = next(
            (
                r
                for r in shipments
                if r.shipment.carrier_id == carrier_id
                and r.shipment.tracking_number == tracking_number
            ),
            None,
        )
        if order is None or record is None:
            # A carrier may push before the booking that subscribed us has committed:
            # an unknown number waits `unknown_grace` for its shipment (re-queued when the
            # booking commits, else the sweep retries), then is recorded as unknown.
            given_up = [c for c, _, at in pending if now - at >= self.unknown_grace]
            for callback in given_up:
                await tx.finish_callback(carrier_id, callback, UNKNOWN, None, now)
            if len(given_up) < len(pending):
                self._early.add(key)
            else:
                self._early.discard(key)
            return dict.fromkeys(given_up, UNKNOWN), []
        before = _fulfillment(order, shipments)
        sid = record.shipment.shipment_id
        outcomes: dict[str, str] = {}
        for callback, doc, _ in pending:
            outcome = UNREADABLE
            if doc is not None:
                corrections = len(record.shipment.corrections)
                result = record.shipment.apply(update_from_dict(orjson.loads(doc)))
                changed = bool(result.added) or len(record.shipment.corrections) != corrections
                if changed:
                    tx.emit(self._entry(SHIPMENT_UPDATED, order, record.view(), now))
                outcome = "applied" if changed else "unchanged"
            outcomes[callback] = outcome
        await tx.finish_callbacks(carrier_id, outcomes, sid, now)  # one statement
        # Rules due now fire in the same transaction (a carrier's correction at once).
        raised = await self._raise_due(tx, order, record, now)
        if record.active and record.is_return:
            if self.on_return_update is not None:
                await self.on_return_update(tx, order, record, now)
        elif record.active:
            await self._drive_order(tx, order, shipments, before, now)
        return outcomes, raised

    async def _drive_order(
        self,
        tx: ShipmentTx,
        order: Order,
        shipments: Sequence[ShipmentRecord],
        before: FulfillmentStatus,
        now: datetime,
    ) -> None:
        """The order follows its outbound shipments: every unit in a parcel and every
        parcel picked up, shipped; and every one delivered, delivered (where the state
        machine allows; an order already further along is left alone). Some picked up but
        not that: `order.partially_shipped`."""
        after = _fulfillment(order, shipments)
        targets: list[OrderStatus] = []
        if after in (FulfillmentStatus.SHIPPED, FulfillmentStatus.DELIVERED):
            targets.append(OrderStatus.SHIPPED)
        if after is FulfillmentStatus.DELIVERED:
            targets.append(OrderStatus.DELIVERED)
        cause = "carrier:" + ",".join(
            sorted({r.shipment.carrier_id for r in shipments if r.active and not r.is_return})
        )
        for target in targets:
            if order.status == target or is_behind(target, order.status):
                continue
            try:
                check_transition(order.status, target)
            except InvalidTransition:
                log.info("order %s: %s -> %s not allowed", order.id, order.status, target)
                continue
            was = (order.status, order.payment_status)
            order.transition_to(target, cause=cause, at=now)
            # The stock follows in this transaction, as for a status change through the
            # API: shipping commits the order's reservations (the goods left).
            uow = tx.unit_of_work
            if uow is not None:
                await on_order_change(order, was, uow, cause=cause)
            # Saved per step: each step's events carry the order as of its own version
            # (picked up and delivered in one batch of callbacks are two versions).
            tx.orders.save(order)
        if after is before:
            return
        if after is FulfillmentStatus.PARTIALLY_SHIPPED:
            data = self._fulfillment_data(order, shipments, after)
            tx.emit(self._entry(ORDER_PARTIALLY_SHIPPED, order, data, now))
        if after is FulfillmentStatus.DELIVERED and self.review_delay is not None:
            outbound = [r.shipment for r in shipments if r.active and not r.is_return]
            # From the carrier's delivery time (never later than now: clocks drift).
            due = min(delivered_at(outbound) or now, now) + self.review_delay
            fire = due <= now and order.status is not OrderStatus.CANCELLED
            if await tx.schedule_reminder(order.id, REVIEW, due, now, sent=fire) and fire:
                tx.emit(self._review_entry(order, shipments, now))

    def _fulfillment_data(
        self, order: Order, shipments: Sequence[ShipmentRecord], status: FulfillmentStatus
    ) -> dict[str, Any]:
        return {
            **order_to_dict(order),
            "fulfillment_status": str(status),
            "shipments": [r.view() for r in shipments if r.active and not r.is_return],
        }

    def _review_entry(
        self, order: Order, shipments: Sequence[ShipmentRecord], now: datetime
    ) -> OutboxEntry:
        data = self._fulfillment_data(order, shipments, FulfillmentStatus.DELIVERED)
        return self._entry(ORDER_REVIEW_REQUESTED, order, data, now)

    async def _commit(self, tx: ShipmentTx) -> None:
        await tx.commit()

    # ---- timers -----------------------------------------------------------------------

    async def _raise_due(
        self, tx: ShipmentTx, order: Order, record: ShipmentRecord, now: datetime
    ) -> list[Alert]:
        """Raise the rules due at `now` not raised before, and store the next timer."""
        sid = record.shipment.shipment_id
        raised = await tx.raised_rules(sid)
        fresh: list[Alert] = []
        for rule in self.rules if record.active else ():
            if str(rule.kind) in raised:
                continue
            alert = rule.check(record.shipment, now)
            if alert is None:
                continue
            alert_id = new_id("alr")
            raised.add(str(rule.kind))
            if await tx.insert_alert(alert_id, alert, order.id):
                fresh.append(alert)
                data = alert_view(alert, alert_id, order.id)
                tx.emit(self._entry(ALERT_RAISED, order, data, now))
        await tx.update_shipment(record, next_due(record, self.rules, raised), now)
        return fresh

    async def sweep(self, now: datetime | None = None, limit: int = 500) -> list[Alert]:
        """Raise every alert due at `now`, each at most once per (shipment, rule); fire the
        reminders due (review requests)."""
        now = now or self.clock()
        raised_now: list[Alert] = []
        due = await self.store.due_shipments(now, limit)
        size = max(1, self.apply_batch_size)
        for i in range(0, len(due), size):
            # A batch of shipments per transaction (one commit: the writer stays free for
            # callbacks); if that fails, each alone.
            chunk = due[i : i + size]
            try:
                raised_now += await self._raise_due_batch(chunk, now)
            except Exception:
                if len(chunk) == 1:
                    raise
                for one in chunk:
                    raised_now += await self._raise_due_batch([one], now)
        await self._observe(raised_now)
        for order_id, kind in await self.store.due_reminders(now, limit):
            async with self.store.transaction() as tx:
                order = await tx.orders.get(order_id)
                if order is None or not await tx.fire_reminder(order_id, kind, now):
                    continue
                if kind == REVIEW and order.status is not OrderStatus.CANCELLED:
                    shipments = await tx.shipments_of_order(order_id)
                    tx.emit(self._review_entry(order, shipments, now))
                await self._commit(tx)
        return raised_now

    async def _raise_due_batch(self, due: Sequence[tuple[str, str]], now: datetime) -> list[Alert]:
        raised: list[Alert] = []
        async with self.store.transaction() as tx:
            orders = {o: await tx.orders.get(o) for o in sorted({o for _, o in due})}
            for shipment_id, order_id in sorted(due, key=lambda d: (d[1], d[0])):
                order = orders.get(order_id)
                record = await tx.shipment(shipment_id)
                if order is None or record is None:
                    continue
                raised += await self._raise_due(tx, order, record, now)
            await self._commit(tx)
        return raised

    async def _observe(self, raised: Sequence[Alert]) -> None:
        if self.observer is None or not raised:
            return
        for alert in raised:
            self.observer.raised(str(alert.kind))
        await self.refresh_open_alerts()

    async def refresh_open_alerts(self) -> None:
        """Publish the unresolved alerts per rule (the `ordersync_alerts_open` gauge) and
        the parked carrier callbacks (`ordersync_carrier_callbacks_parked`)."""
        if self.observer is None:
            return
        try:
            counts = await self.store.open_alert_counts()
            parked = await self.store.parked_count()
        except Exception as e:  # metrics must never fail the work they describe
            if cancelling():  # ... nor keep it from stopping
                raise asyncio.CancelledError from e
            log.debug("counting open alerts failed", exc_info=True)
            return
        self.observer.open_counts({str(k): 0 for k in AlertKind} | counts)
        self.observer.parked_callbacks(parked)

    async def tracking_expired(
        self, expired: Sequence[tuple[str, str]], max_age: timedelta, now: datetime
    ) -> list[Alert]:
        """Polled parcels that reached `max_age` without a final status, about to be polled
        no more: per (shipment id, order id) one `shipment.tracking_expired` event and one
        alert of that kind, in one transaction. The alert's unique key makes it once per
        shipment: a parcel told before (a crash before it was retired) is not told again."""
        raised: list[Alert] = []
        if not expired:
            return raised
        async with self.store.transaction() as tx:
            orders = {o: await tx.orders.get(o) for o in sorted({o for _, o in expired})}
            for shipment_id, order_id in sorted(expired, key=lambda e: (e[1], e[0])):
                order = orders.get(order_id)
                record = await tx.shipment(shipment_id)
                if order is None or record is None or not record.active:
                    continue
                s = record.shipment
                alert = Alert(
                    shipment_id,
                    AlertKind.TRACKING_EXPIRED,
                    s.booked_at + max_age,
                    now,
                    f"still {record.status} {max_age} after booking: no longer polled",
                    marks_exception=True,
                )
                alert_id = new_id("alr")
                if not await tx.insert_alert(alert_id, alert, order.id):
                    continue
                raised.append(alert)
                data = {**record.view(), "max_age_seconds": int(max_age.total_seconds())}
                tx.emit(self._entry(SHIPMENT_TRACKING_EXPIRED, order, data, now))
                tx.emit(
                    self._entry(ALERT_RAISED, order, alert_view(alert, alert_id, order.id), now)
                )
            if raised:
                await self._commit(tx)
        await self._observe(raised)
        return raised

    async def promise(self, shipment_id: str, promised_by: datetime) -> ShipmentRecord:
        """Set the delivery date promised for a shipment (`delivery_overdue` counts from
        it) and reschedule its timer; a promise already broken raises the alert at once."""
        if promised_by.tzinfo is None:
            raise ShipmentError(422, "naive_datetime", "promised_by needs a time zone")
        order_id = await self.store.order_of_shipment(shipment_id)
        if order_id is None:
            raise ShipmentError(404, "shipment_not_found", f"no shipment {shipment_id!r}")
        now = self.clock()
        async with self.store.transaction() as tx:
            order = await tx.orders.get(order_id)
            record = await tx.shipment(shipment_id)
            if order is None or record is None:  # pragma: no cover - never deleted
                raise ShipmentError(404, "shipment_not_found", f"no shipment {shipment_id!r}")
            record.shipment.promised_by = promised_by.astimezone(UTC)
            raised = await self._raise_due(tx, order, record, now)
            await self._commit(tx)
        await self._observe(raised)
        return record

    # ---- alert workflow ---------------------------------------------------------------

    async def set_alert_state(self, alert_id: str, action: str, principal: str) -> dict[str, Any]:
        """`acknowledge` (open -> acknowledged) or `resolve` (-> resolved). Repeating an
        action, or acknowledging a resolved alert, changes nothing and returns the alert."""
        target = ALERT_ACTIONS.get(action)
        if target is None:
            raise ShipmentError(422, "unknown_action", f"no alert action {action!r}")
        order_id = await self.store.order_of_alert(alert_id)
        if order_id is None:
            raise ShipmentError(404, "alert_not_found", f"no alert {alert_id!r}")
        now = self.clock()
        async with self.store.transaction() as tx:
            order = await tx.orders.get(order_id)  # the order first, as everywhere
            alert = await tx.alert(alert_id)
            if order is None or alert is None:  # pragma: no cover - never deleted
                raise ShipmentError(404, "alert_not_found", f"no alert {alert_id!r}")
            if alert["state"] == "resolved" or alert["state"] == target:
                return alert
            alert = await tx.set_alert_state(alert_id, target, principal, now)
            tx.emit(self._entry(f"alert.{target}", order, alert, now))
            await self._commit(tx)
        await self.refresh_open_alerts()
        return alert

    # ---- reading ----------------------------------------------------------------------

    async def list_for_order(self, order_id: str) -> list[dict[str, Any]]:
        if await self.store.load_order(order_id) is None:
            raise OrderNotFound(order_id)
        return [r.view() for r in await self.store.list_for_order(order_id)]

    async def fulfillment(self, order_id: str) -> FulfillmentStatus:
        """The order's fulfilment, derived from its active outbound shipments."""
        order = await self.store.load_order(order_id)
        if order is None:
            raise OrderNotFound(order_id)
        return _fulfillment(order, await self.store.list_for_order(order_id))

    async def open_alerts(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self.store.alerts(("open", "acknowledged"), limit)

    async def alerts(self, states: Sequence[str], limit: int = 100) -> list[dict[str, Any]]:
        return await self.store.alerts(tuple(states), limit)


UNKNOWN = "unknown_tracking_number"
UNREADABLE = "unreadable"
REVIEW = "review"
ALERT_ACTIONS = {"acknowledge": "acknowledged", "resolve": "resolved"}
ALERT_STATES = ("open", "acknowledged", "resolved")


def _sources(
    kind: str, updates: Sequence[TrackingUpdate], body: bytes
) -> list[tuple[str, TrackingUpdate]]:
    """The inbox key of each update: the callback's own id (or the hash of its bytes), per
    parcel when one push carries several."""
    out = []
    for update in updates:
        source = update.source_id or callback_id(kind, body)
        if len(updates) > 1:
            source = f"{source}:{update.tracking_number}"
        out.append((source, update))
    return out


def _fulfillment(order: Order, shipments: Iterable[ShipmentRecord]) -> FulfillmentStatus:
    """From the order's active outbound parcels, and whether they hold all of its units."""
    active = [r for r in shipments if r.active and not r.is_return]
    complete = covers(order.lines, [r.lines for r in active])
    return fulfillment_of((r.shipment for r in active), complete=complete)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a booking will store: the parcel's lines, the shipments it replaces."""

    lines: tuple[ParcelLine, ...]
    replaced: frozenset[str]
    partial: bool
    completes: bool


def _plan(
    order: Order,
    shipments: Sequence[ShipmentRecord],
    carrier_id: str | None,
    lines: Sequence[tuple[str | None, str | None, int]] | None,
    replaces: str | None,
) -> _Plan:
    """Check a booking against the order's parcels (ShipmentError: refused, nothing done)."""
    active = [r for r in shipments if r.active and not r.is_return]
    targets: list[ShipmentRecord] = []
    if replaces is not None:
        target = next(
            (r for r in shipments if r.shipment.shipment_id == replaces and not r.is_return), None
        )
        if target is None:
            raise ShipmentError(
                404, "shipment_not_found", f"order {order.id} has no shipment {replaces!r}"
            )
        if not target.active:
            raise ShipmentError(
                409, "shipment_not_active", f"shipment {replaces} was cancelled already"
            )
        targets = [target]
    others = [r for r in active if r.shipment.shipment_id != replaces]
    left = remaining(order.lines, [r.lines for r in others])
    try:
        if lines is not None:
            picked = pick_lines(order.lines, lines, left)
        elif targets:
            picked = rest_of(order.lines, remaining(order.lines, []))
            if targets[0].lines is not None:
                picked = targets[0].lines
        else:
            picked = rest_of(order.lines, left)
    except ParcelRefused as e:
        raise ShipmentError(e.status, e.code, e.detail) from None
    if lines is None and not targets and not picked and others:
        # Every unit is in a parcel already: naming another carrier switches the one
        # parcel there (a re-booking); several parcels need `replaces` to say which.
        one = others[0]
        if carrier_id is None or len(others) > 1 or one.shipment.carrier_id == carrier_id:
            where = (
                f"{len(others)} parcels; name the one to re-book in `replaces`"
                if len(others) > 1
                else f"{one.shipment.carrier_id} (tracking number"
                f" {one.shipment.tracking_number}); name a carrier_id to switch"
            )
            raise ShipmentError(
                409, "shipment_exists", f"order {order.id} is already booked with {where}"
            )
        targets, others = [one], []
        picked = (
            one.lines if one.lines is not None else rest_of(order.lines, remaining(order.lines, []))
        )
    return _Plan(
        picked,
        frozenset(r.shipment.shipment_id for r in targets),
        not is_whole(order.lines, picked),
        covers(order.lines, [*(r.lines for r in others), picked]),
    )


def _waybill_of(result: BookingResult) -> tuple[str, str, str]:
    return result.tracking_number, result.carrier_code, result.carrier_ref


def _order_ref(order_id: str, shipments: Sequence[ShipmentRecord], carrier_id: str) -> str:
    """The order reference a carrier books with: the order's id for its first waybill
    there; a later parcel (or re-booking) with the same carrier gets a suffix, since a
    carrier may take each reference once."""
    n = sum(1 for r in shipments if not r.is_return and r.shipment.carrier_id == carrier_id)
    return order_id if n == 0 else f"{order_id}-{n + 1}"


def _booking(
    order: Order,
    carrier_code: str,
    weight_kg: Decimal | None,
    service: str,
    lines: Sequence[ParcelLine] = (),
    order_ref: str | None = None,
) -> Booking:
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
    if lines:  # the parcel's units only
        names = {
            line_key(x.external_id, x.sku, i): x.name or x.sku for i, x in enumerate(order.lines)
        }
        items = tuple(Item(names.get(p.key) or p.sku or "item", p.quantity) for p in lines)
    return Booking(
        order_id=order_ref or order.id,
        carrier_code=carrier_code,
        sender=Party("", "", "", "", "", ""),
        recipient=recipient,
        items=items,
        weight_kg=weight_kg if weight_kg is not None else Decimal("1"),
        service=service,
        remark=order.name or "",
    )
