"""In-memory fakes of the hub's ports, shipped with the package so every layer tests alike.

`FakeUnitOfWork` behaves like the SQL unit of work: reads see what was committed (plus what
this unit of work buffered), writes are buffered and reach the shared `FakeDatabase` only on
`commit()`, and the uniqueness rules the schema enforces are enforced here too, so a handler
that would break them in production breaks them in a unit test. `FakeDeliveryStore` and
`FakeSender` stand in for the dispatcher's store and HTTP sender.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ordersync.domain.delivery import DeliveryState
from ordersync.domain.orders import HistoryEntry, Order
from ordersync.service.delivery_ports import AttemptOutcome, AttemptRecord, DueDelivery
from ordersync.service.outbox import EventRouter, OutboxEntry
from ordersync.service.unit_of_work import (
    BufferedOrderRepository,
    IdempotencyStore,
    Inbox,
    InboxRecord,
    StoredResponse,
    UnitOfWork,
)

# One destination that hears every event, unless a test routes otherwise.
DEFAULT_SUBSCRIPTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (("warehouse-erp", ("order.*",)),)


class FakeIntegrityError(Exception):
    """A commit broke a uniqueness rule that the real schema enforces."""


class FakeStoreError(Exception):
    """An injected failure of a fake store (the database is down, a deadlock, ...)."""


# ---- the unit of work ------------------------------------------------------------------------


@dataclass
class FakeDatabase:
    """What fake units of work have committed; shared by every unit of work made from it.

    `fail_commit` may return an exception for a unit of work about to commit (fault
    injection); `commit_delay` makes each commit yield to the event loop for that long, as
    a real fsync does, so that concurrent callers can queue up behind it.
    """

    router: EventRouter = field(
        default_factory=lambda: EventRouter(DEFAULT_SUBSCRIPTIONS), repr=False
    )
    orders: dict[str, Order] = field(default_factory=dict, repr=False)
    history: list[tuple[str, HistoryEntry]] = field(default_factory=list, repr=False)
    outbox: list[OutboxEntry] = field(default_factory=list, repr=False)
    inbox: dict[tuple[str, str], InboxRecord] = field(default_factory=dict, repr=False)
    idempotency: dict[tuple[str, str], StoredResponse] = field(default_factory=dict, repr=False)
    commits: int = 0
    failed_commits: int = 0
    fail_commit: Callable[[FakeUnitOfWork], Exception | None] | None = field(
        default=None, repr=False
    )
    commit_delay: float = 0.0
    by_external: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    def unit_of_work(self) -> FakeUnitOfWork:
        """A new unit of work over this database: pass `db.unit_of_work` as a factory."""
        return FakeUnitOfWork(self)

    def order_by_external(self, channel_id: str, external_id: str) -> Order | None:
        order_id = self.by_external.get((channel_id, external_id))
        return None if order_id is None else self.orders[order_id]

    def history_of(self, order_id: str) -> list[HistoryEntry]:
        return [h for oid, h in self.history if oid == order_id]

    def events_of(self, order_id: str) -> list[OutboxEntry]:
        return [e for e in self.outbox if e.order_id == order_id]


class FakeOrderRepository(BufferedOrderRepository):
    def __init__(self, db: FakeDatabase) -> None:
        super().__init__(db.router)
        self._db = db

    async def get(self, order_id: str) -> Order | None:
        if order_id in self._by_id:
            return self._by_id[order_id]
        stored = self._db.orders.get(order_id)
        # A copy, as a fresh row would be: changes reach the database only through commit.
        return None if stored is None else self._remember(stored.copy())

    async def get_by_external(self, channel_id: str, external_id: str) -> Order | None:
        key = (channel_id, external_id)
        if key in self._by_ext:
            return self._by_ext[key]
        stored = self._db.order_by_external(channel_id, external_id)
        return None if stored is None else self._remember(stored.copy())


class FakeInbox(Inbox):
    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        self.records: list[InboxRecord] = []

    async def seen(self, source: str, message_id: str) -> bool:
        key = (source, message_id)
        return key in self._db.inbox or any((r.source, r.message_id) == key for r in self.records)

    def record(self, record: InboxRecord) -> None:
        self.records.append(record)


class FakeIdempotencyStore(IdempotencyStore):
    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        self.pending: dict[tuple[str, str], StoredResponse] = {}

    async def get(self, principal: str, key: str) -> StoredResponse | None:
        if (principal, key) in self.pending:
            return self.pending[(principal, key)]
        return self._db.idempotency.get((principal, key))

    def put(self, principal: str, key: str, response: StoredResponse) -> None:
        self.pending[(principal, key)] = response


class FakeUnitOfWork(UnitOfWork):
    """An in-memory unit of work with the SQL one's semantics (see the module docstring)."""

    def __init__(self, db: FakeDatabase | None = None) -> None:
        self.db = db if db is not None else FakeDatabase()
        self.orders: FakeOrderRepository = FakeOrderRepository(self.db)
        self.inbox: FakeInbox = FakeInbox(self.db)
        self.idempotency: FakeIdempotencyStore = FakeIdempotencyStore(self.db)
        self.committed = False
        # Destinations that received deliveries in the last commit (wakes the dispatcher).
        self.committed_destinations: set[str] = set()

    # ---- what is committed, for assertions ---------------------------------------------------
    @property
    def committed_orders(self) -> dict[str, Order]:
        return self.db.orders

    @property
    def committed_history(self) -> list[tuple[str, HistoryEntry]]:
        return self.db.history

    @property
    def committed_outbox(self) -> list[OutboxEntry]:
        return self.db.outbox

    @property
    def committed_inbox(self) -> list[InboxRecord]:
        return list(self.db.inbox.values())

    # ---- UnitOfWork ------------------------------------------------------------------------
    async def commit(self) -> None:
        db, repo = self.db, self.orders
        if db.commit_delay > 0:
            await asyncio.sleep(db.commit_delay)
        injected = db.fail_commit(self) if db.fail_commit is not None else None
        if injected is not None:
            db.failed_commits += 1
            raise injected
        self._check_constraints()
        for order in (*repo.new.values(), *repo.dirty.values()):
            db.orders[order.id] = order.copy()
            if order.external_id is not None:
                db.by_external[(order.channel_id, order.external_id)] = order.id
        db.history.extend(repo.history)
        db.outbox.extend(repo.outbox)
        db.inbox.update(((r.source, r.message_id), r) for r in self.inbox.records)
        db.idempotency.update(self.idempotency.pending)
        db.commits += 1
        self.committed = True
        self.committed_destinations = {d for e in repo.outbox for d in e.destinations}
        # Applied: nothing is left to discard, so a later rollback() changes nothing.
        repo.new.clear()
        repo.dirty.clear()
        repo.history.clear()
        repo.outbox.clear()
        self.inbox.records.clear()
        self.idempotency.pending.clear()

    async def rollback(self) -> None:
        self.orders.forget()
        self.inbox.records.clear()
        self.idempotency.pending.clear()

    def _check_constraints(self) -> None:
        """The schema's primary keys and unique constraints, checked before anything applies."""
        db, repo = self.db, self.orders
        externals: set[tuple[str, str]] = set()
        for order in repo.new.values():
            if order.id in db.orders:
                raise FakeIntegrityError(f"orders.id {order.id!r} exists")
            if order.external_id is not None:
                key = (order.channel_id, order.external_id)
                if key in db.by_external or key in externals:
                    raise FakeIntegrityError(f"uq_orders_channel_external {key!r}")
                externals.add(key)
        for order in repo.dirty.values():
            if order.id not in db.orders:
                raise FakeIntegrityError(f"update of a missing order {order.id!r}")
        inbox_keys: set[tuple[str, str]] = set()
        for r in self.inbox.records:
            key = (r.source, r.message_id)
            if key in db.inbox or key in inbox_keys:
                raise FakeIntegrityError(f"inbox {key!r} exists")
            inbox_keys.add(key)
        for key in self.idempotency.pending:
            if key in db.idempotency:
                raise FakeIntegrityError(f"idempotency_keys {key!r} exists")
        event_ids = {e.event_id for e in db.outbox}
        for e in repo.outbox:
            if e.event_id in event_ids:
                raise FakeIntegrityError(f"events.id {e.event_id!r} exists")
            event_ids.add(e.event_id)


# ---- deliveries ------------------------------------------------------------------------------


@dataclass
class FakeDelivery:
    """One event for one destination, as the deliveries table holds it."""

    seq: int
    destination_id: str
    order_id: str
    event_id: str
    event_type: str
    body: bytes
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    next_attempt_us: int = 0
    first_attempt_us: int | None = None
    last_status: int | None = None
    last_error: str | None = None
    delivered_us: int | None = None
    created_us: int = 0
    claimed: bool = False  # by a bus consumer's claim, until its outcome is recorded

    def due(self) -> DueDelivery:
        return DueDelivery(
            seq=self.seq,
            destination_id=self.destination_id,
            order_id=self.order_id,
            event_id=self.event_id,
            event_type=self.event_type,
            attempts=self.attempts,
            first_attempt_us=self.first_attempt_us,
            body=self.body,
        )


class FakeDeliveryStore:
    """An in-memory `DeliveryStore` with the SQL store's lane-head rule.

    A delivery is due when it is pending, its time has come, and no earlier delivery of the
    same (destination, order) is still pending. `fail_fetches` / `fail_records` make the
    next N calls raise `FakeStoreError`; `fetch_latency` makes a fetch return its rows that
    long after reading them, as a slow query would, so results recorded meanwhile race it.
    """

    def __init__(self, *, fetch_latency: float = 0.0) -> None:
        self.deliveries: dict[int, FakeDelivery] = {}
        self.attempts: list[AttemptRecord] = []
        self.fetches = 0
        self.claims = 0
        self.fail_fetches = 0
        self.fail_records = 0
        self.fetch_latency = fetch_latency
        self._next_seq = 1

    def add(
        self,
        destination_id: str,
        order_id: str,
        event_id: str | None = None,
        *,
        event_type: str = "order.updated",
        body: bytes = b"{}",
        next_attempt_us: int = 0,
    ) -> FakeDelivery:
        seq = self._next_seq
        self._next_seq += 1
        delivery = FakeDelivery(
            seq=seq,
            destination_id=destination_id,
            order_id=order_id,
            event_id=event_id or f"evt_{seq}",
            event_type=event_type,
            body=body,
            next_attempt_us=next_attempt_us,
        )
        self.deliveries[seq] = delivery
        return delivery

    def enqueue(self, entries: Iterable[OutboxEntry]) -> list[FakeDelivery]:
        """One delivery per routed destination of each outbox entry, as commit creates them."""
        return [
            self.add(d, e.order_id, e.event_id, event_type=e.type, body=e.body)
            for e in entries
            for d in e.destinations
        ]

    def by_event(self, event_id: str, destination_id: str | None = None) -> FakeDelivery:
        for d in self.deliveries.values():
            if d.event_id == event_id and destination_id in (None, d.destination_id):
                return d
        raise KeyError(event_id)

    def in_state(self, state: DeliveryState) -> list[FakeDelivery]:
        return [d for d in self.deliveries.values() if d.state is state]

    def all_settled(self) -> bool:
        """True when no delivery is pending any more."""
        return not self.in_state(DeliveryState.PENDING)

    leased = False  # claims live in the dispatcher's memory, as on SQLite

    # ---- DeliveryStore ---------------------------------------------------------------------
    async def fetch_due(
        self, destination_id: str, now_us: int, limit: int, fresh_before_us: int | None = None
    ) -> list[DueDelivery]:
        self.fetches += 1
        fresh = now_us if fresh_before_us is None else fresh_before_us
        if self.fail_fetches > 0:
            self.fail_fetches -= 1
            raise FakeStoreError("fetch_due failed (injected)")
        lane_heads: set[str] = set()
        rows: list[DueDelivery] = []
        for d in sorted(self.deliveries.values(), key=lambda d: d.seq):
            if d.destination_id != destination_id or d.state is not DeliveryState.PENDING:
                continue
            if d.order_id in lane_heads:
                continue  # an earlier event of this order is still pending
            lane_heads.add(d.order_id)
            if d.attempts == 0 and d.created_us > fresh:
                continue  # a broker consumer takes first attempts during the grace period
            if d.next_attempt_us <= now_us and len(rows) < limit:
                rows.append(d.due())
        if self.fetch_latency > 0:
            await asyncio.sleep(self.fetch_latency)
        return rows

    async def renew(self, seqs: list[int], now_us: int) -> None:
        """Leases only matter across processes; the fake serves one."""

    async def claim(self, seqs: list[int], now_us: int) -> list[DueDelivery]:
        """Claim by id, as a bus consumer does: pending, due, not claimed, heading its lane."""
        self.claims += 1
        out: list[DueDelivery] = []
        for seq in sorted(seqs):
            d = self.deliveries.get(seq)
            if d is None or d.state is not DeliveryState.PENDING or d.claimed:
                continue
            if d.next_attempt_us > now_us or self._behind_pending(d):
                continue
            d.claimed = True
            out.append(d.due())
        return out

    async def states(self, seqs: list[int]) -> dict[int, str]:
        return {s: self.deliveries[s].state.value for s in seqs if s in self.deliveries}

    def _behind_pending(self, d: FakeDelivery) -> bool:
        return any(
            p.seq < d.seq
            and p.destination_id == d.destination_id
            and p.order_id == d.order_id
            and p.state is DeliveryState.PENDING
            for p in self.deliveries.values()
        )

    async def record(self, records: list[AttemptRecord]) -> None:
        if self.fail_records > 0:
            self.fail_records -= 1
            raise FakeStoreError("record failed (injected)")
        for r in records:
            d = self.deliveries[r.delivery.seq]
            d.claimed = False
            d.state = r.state
            d.attempts = r.attempt
            d.next_attempt_us = r.next_attempt_us
            if d.first_attempt_us is None:
                d.first_attempt_us = r.started_us
            d.last_status = r.outcome.status
            d.last_error = r.outcome.error
            d.delivered_us = r.started_us if r.outcome.ok else None
        self.attempts.extend(records)


# ---- sending ---------------------------------------------------------------------------------


def delivered(status: int = 200) -> AttemptOutcome:
    """The outcome of a send the destination accepted."""
    return AttemptOutcome(True, status, None, 1.0)


def failed(status: int | None = 503, error: str | None = None) -> AttemptOutcome:
    """The outcome of a send the destination refused (or, with status None, never answered)."""
    return AttemptOutcome(False, status, error or f"HTTP {status}", 1.0)


@dataclass(frozen=True, slots=True)
class SentRequest:
    url: str
    secret: str
    event_id: str
    body: bytes
    timeout: float


Responder = Callable[[SentRequest], Awaitable[AttemptOutcome]]


class FakeSender:
    """A `Sender` that records every call, in order, and answers from a script.

    For each call: the next scripted outcome for its event id if any is left, else what
    `respond` returns (it may await, to hold a send open), else `default`.
    """

    def __init__(
        self,
        script: Mapping[str, Iterable[AttemptOutcome]] | None = None,
        *,
        respond: Responder | None = None,
        default: AttemptOutcome | None = None,
    ) -> None:
        self.calls: list[SentRequest] = []
        self._script: dict[str, deque[AttemptOutcome]] = {
            event_id: deque(outcomes) for event_id, outcomes in (script or {}).items()
        }
        self._respond = respond
        self.default = default if default is not None else delivered()

    def script(self, event_id: str, *outcomes: AttemptOutcome) -> None:
        self._script.setdefault(event_id, deque()).extend(outcomes)

    def sent_event_ids(self) -> list[str]:
        return [c.event_id for c in self.calls]

    def calls_for(self, event_id: str) -> list[SentRequest]:
        return [c for c in self.calls if c.event_id == event_id]

    async def send(
        self, url: str, secret: str, event_id: str, body: bytes, timeout: float
    ) -> AttemptOutcome:
        request = SentRequest(url, secret, event_id, body, timeout)
        self.calls.append(request)
        queued = self._script.get(event_id)
        if queued:
            return queued.popleft()
        if self._respond is not None:
            return await self._respond(request)
        return self.default


# ---- waiting ---------------------------------------------------------------------------------


async def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float = 5.0,
    poke: Callable[[], object] | None = None,
    interval: float = 0.005,
) -> None:
    """Yield to the event loop until `predicate()` holds; `poke` runs on every round
    (e.g. `dispatcher.wake`, standing in for the commits that wake it in production)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        if poke is not None:
            poke()
        await asyncio.sleep(interval)
