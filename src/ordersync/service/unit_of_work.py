"""The unit of work: one transaction's worth of reads and buffered writes.

Handlers load aggregates through it and hand back what they changed; nothing reaches the
database until `commit()`, which writes the orders, their history, the outbox (events and
one delivery per matching destination) and the inbox record in ONE transaction. So a crash
can lose only work that was never acknowledged, and every acknowledged change has its
events. Writes are buffered so that a group commit of many messages costs a handful of
`executemany` round trips instead of several statements per message.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

from ordersync.domain.codec import order_to_dict
from ordersync.domain.holds import BuyerActivity, BuyerFingerprint, HoldPolicy
from ordersync.domain.inventory import Inventory, InventoryPolicy, Reservation
from ordersync.domain.orders import HistoryEntry, Order
from ordersync.service.outbox import EventRouter, OutboxEntry, outbox_entries


@dataclass(frozen=True, slots=True)
class InboxRecord:
    source: str
    message_id: str
    topic: str | None
    received_at: datetime
    outcome: str  # created | updated | unchanged | stale | rejected | ignored
    order_id: str | None = None
    detail: str | None = None
    headers: str | None = None
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response kept for an Idempotency-Key (Stripe semantics)."""

    fingerprint: str
    status: int
    body: bytes
    replayed: bool = False  # True when returned again for a repeated key


class OrderRepository(abc.ABC):
    @abc.abstractmethod
    async def get(self, order_id: str) -> Order | None: ...

    @abc.abstractmethod
    async def get_by_external(self, channel_id: str, external_id: str) -> Order | None: ...

    async def preload_external(  # noqa: B027 - optional hook, a no-op by default
        self, channel_id: str, external_ids: list[str]
    ) -> None:
        """Optional bulk prefetch before a batch; a no-op by default."""

    @abc.abstractmethod
    def add(self, order: Order) -> None:
        """A new order: inserted at commit, with its history and events."""

    @abc.abstractmethod
    def save(self, order: Order) -> None:
        """A changed order: updated at commit, with its new history and events."""


class BufferedOrderRepository(OrderRepository):
    """The identity map and write buffer every backend shares: what `add` and `save` mean.

    A backend only supplies the loading (`get`, `get_by_external`, `preload_external`), feeds
    what it loads through `_remember`, and writes `new`, `dirty`, `history` and `outbox` at
    commit. Events are turned into outbox entries at once, from the order at that version.
    """

    def __init__(self, router: EventRouter) -> None:
        self._router = router
        self._by_id: dict[str, Order] = {}
        self._by_ext: dict[tuple[str, str], Order | None] = {}  # None: known to be absent
        self.new: dict[str, Order] = {}
        self.dirty: dict[str, Order] = {}
        self.history: list[tuple[str, HistoryEntry]] = []
        self.outbox: list[OutboxEntry] = []
        self.docs: dict[str, dict[str, Any]] = {}  # canonical JSON per order, built once

    def _remember(self, order: Order) -> Order:
        self._by_id[order.id] = order
        if order.external_id is not None:
            self._by_ext[(order.channel_id, order.external_id)] = order
        return order

    def add(self, order: Order) -> None:
        self.new[order.id] = self._remember(order)
        self._collect(order)

    def save(self, order: Order) -> None:
        if order.id not in self.new:
            self.dirty[order.id] = order
        self._collect(order)

    def _collect(self, order: Order) -> None:
        history, events = order.take_changes()
        self.history.extend((order.id, h) for h in history)
        doc = self.docs[order.id] = order_to_dict(order)
        self.outbox.extend(outbox_entries(order, events, self._router, doc))

    def forget(self) -> None:
        """Drop everything loaded and buffered (after a commit or rollback)."""
        for buffer in (self._by_id, self._by_ext, self.new, self.dirty, self.docs):
            buffer.clear()
        self.history.clear()
        self.outbox.clear()


class Inbox(abc.ABC):
    @abc.abstractmethod
    async def seen(self, source: str, message_id: str) -> bool: ...

    async def preload(  # noqa: B027 - optional hook, a no-op by default
        self, source: str, message_ids: list[str]
    ) -> None:
        """Optional bulk prefetch before a batch; a no-op by default."""

    @abc.abstractmethod
    def record(self, record: InboxRecord) -> None: ...


class IdempotencyStore(abc.ABC):
    @abc.abstractmethod
    async def get(self, principal: str, key: str) -> StoredResponse | None: ...

    @abc.abstractmethod
    def put(self, principal: str, key: str, response: StoredResponse) -> None: ...


class StockRepository(abc.ABC):
    """Stock, reservations and feed dedupe, loaded under lock into one `Inventory` whose
    changes are written at commit, with their events in the same outbox as the orders'."""

    policy: InventoryPolicy
    inventory: Inventory

    @abc.abstractmethod
    async def load(self, skus: Iterable[str]) -> Inventory:
        """Every location's stock of `skus` (locked until commit where the database can)."""

    @abc.abstractmethod
    async def held_for_order(self, order_id: str) -> list[Reservation]:
        """The order's held reservations, with their stock loaded."""

    async def preload_orders(  # noqa: B027 - optional hook, a no-op by default
        self, order_ids: Iterable[str]
    ) -> None:
        """Optional bulk prefetch of held reservations before a batch."""

    @abc.abstractmethod
    async def get_reservation(self, reservation_id: str) -> Reservation | None: ...

    async def capacity_use(self, day: str) -> dict[str, int]:
        """Shipments routed to each location on `day` (UTC ISO date), as far as known.
        The default counts what this repository's inventory routed (the in-memory one)."""
        return {loc: n for (loc, d), n in self.inventory.assigned.items() if d == day}

    async def orders_short_of(self, skus: Iterable[str], limit: int) -> list[str]:
        """Orders on hold whose last routing found one of `skus` short, oldest first.
        The default knows none (the in-memory repository keeps no such index)."""
        return []

    @abc.abstractmethod
    async def feed_get(self, source: str, message_id: str) -> StoredResponse | None: ...

    @abc.abstractmethod
    def feed_put(self, source: str, message_id: str, response: StoredResponse) -> None: ...

    def mark_fed(self, sku: str, location_id: str) -> None:  # noqa: B027 - optional hook
        """A WMS/ERP feed reported this stock row (a snapshot, a delta, a CSV import): its
        feed is fresh again for channel stock publishing. Reservations never call this."""


class BuyerFingerprints(abc.ABC):
    """Each order's buyer fingerprints (normalized address and phone, stored only as keyed
    hashes) with the time it was placed, for the fraud burst rules (domain/holds.py)."""

    @abc.abstractmethod
    async def record(
        self,
        order_id: str,
        placed_at: datetime,
        fingerprint: BuyerFingerprint,
        window: timedelta | None,
    ) -> BuyerActivity:
        """Remember the order's fingerprints (written at commit) and, given a `window`,
        count the other orders placed within it before `placed_at` that share each
        fingerprint, for the fingerprints that are new or changed for this order (one
        already recorded was judged when it was: `None` for it)."""


class UnitOfWork(abc.ABC):
    orders: OrderRepository
    inbox: Inbox
    idempotency: IdempotencyStore
    stock: StockRepository | None = None  # None: no locations configured, inventory is off
    holds: HoldPolicy | None = None  # None: no `holds` configured, orders are not audited
    fingerprints: BuyerFingerprints | None = None  # None: no burst rule, nothing recorded

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.rollback()

    @abc.abstractmethod
    async def commit(self) -> None: ...

    @abc.abstractmethod
    async def rollback(self) -> None:
        """Discard anything not committed; safe to call after commit."""
