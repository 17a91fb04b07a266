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
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Self

from ordersync.domain.orders import Order


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


class UnitOfWork(abc.ABC):
    orders: OrderRepository
    inbox: Inbox
    idempotency: IdempotencyStore

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
