"""Commands: imperative requests, each handled in one unit of work. They carry ids and the
time they were received, so handling is deterministic and safe to repeat."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ordersync.domain.order_status import HoldReason, OrderStatus
from ordersync.domain.orders import OrderSnapshot


@dataclass(frozen=True, slots=True)
class IngestChannelOrder:
    """A channel told us about an order (webhook push or poll). `snapshot` is None for a
    topic we record but do not act on."""

    channel_id: str
    kind: str  # connector kind, e.g. "shopify"
    message_id: str
    topic: str | None
    snapshot: OrderSnapshot | None
    received_at: datetime
    body: bytes | None = None
    headers: str | None = None

    @property
    def shard_key(self) -> str:
        ext = self.snapshot.external_id if self.snapshot else self.message_id
        return f"{self.channel_id}/{ext}"


@dataclass(frozen=True, slots=True)
class CreateOrder:
    """The native API creates an order, optionally under an Idempotency-Key."""

    snapshot: OrderSnapshot
    received_at: datetime
    principal: str
    idempotency_key: str | None = None
    fingerprint: str | None = None

    @property
    def shard_key(self) -> str:
        return f"{self.snapshot.channel_id}/{self.snapshot.external_id}"


@dataclass(frozen=True, slots=True)
class ChangeOrderStatus:
    order_id: str
    target: OrderStatus | None  # None: release a hold back to where it was
    received_at: datetime
    principal: str
    hold_reasons: tuple[HoldReason, ...] = ()

    @property
    def shard_key(self) -> str:
        return self.order_id
