"""Inventory commands. Each is sharded by SKU, so one writer handles all of a SKU's
commands and a flash sale on one SKU is batched into few transactions (ADR 6)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from ordersync.domain.inventory import MovementCause


@dataclass(frozen=True, slots=True)
class SetStock:
    """A WMS/ERP count (or an operator's) replaces on_hand at one location."""

    sku: str
    location_id: str
    on_hand: int
    received_at: datetime
    principal: str
    safety_stock: int | None = None
    message_id: str | None = None  # feed message id / Idempotency-Key
    fingerprint: str | None = None

    @property
    def shard_key(self) -> str:
        return self.sku


@dataclass(frozen=True, slots=True)
class StockDelta:
    sku: str
    location_id: str
    delta: int
    cause: MovementCause = MovementCause.ADJUSTMENT


@dataclass(frozen=True, slots=True)
class AdjustStock:
    """Deltas applied together, all or none."""

    deltas: tuple[StockDelta, ...]
    received_at: datetime
    principal: str
    reference: str | None = None
    message_id: str | None = None
    fingerprint: str | None = None

    @property
    def shard_key(self) -> str:
        return min(d.sku for d in self.deltas)


class ReserveStock(NamedTuple):
    """Hold stock for `order_id` (an order, or a cart): all lines or none.

    A named tuple (immutable like the other commands, which are frozen dataclasses): one
    is made per buyer on the flash-sale path, and a frozen dataclass costs five times as
    much to build."""

    order_id: str
    lines: tuple[tuple[str, int], ...]  # (sku, quantity)
    received_at: datetime
    expires_at: datetime | None = None

    @property
    def shard_key(self) -> str:
        lines = self.lines
        return lines[0][0] if len(lines) == 1 else min(sku for sku, _ in lines)


@dataclass(frozen=True, slots=True)
class ReleaseReservations:
    """Give back what `order_id` holds (a cart abandoned, an order cancelled elsewhere)."""

    order_id: str
    sku: str  # the shard: any SKU the order holds
    received_at: datetime

    @property
    def shard_key(self) -> str:
        return self.sku


@dataclass(frozen=True, slots=True)
class ExpireReservation:
    reservation_id: str
    sku: str
    now: datetime

    @property
    def shard_key(self) -> str:
        return self.sku
