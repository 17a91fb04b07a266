"""Fakes and factories for testing ordersync and code built on it (no I/O anywhere)."""

from ordersync.testing.factories import make_line, make_order, make_snapshot
from ordersync.testing.fakes import (
    FakeDatabase,
    FakeDelivery,
    FakeDeliveryStore,
    FakeIdempotencyStore,
    FakeInbox,
    FakeIntegrityError,
    FakeOrderRepository,
    FakeSender,
    FakeStoreError,
    FakeUnitOfWork,
    SentRequest,
    delivered,
    failed,
    wait_until,
)

__all__ = [
    "FakeDatabase",
    "FakeDelivery",
    "FakeDeliveryStore",
    "FakeIdempotencyStore",
    "FakeInbox",
    "FakeIntegrityError",
    "FakeOrderRepository",
    "FakeSender",
    "FakeStoreError",
    "FakeUnitOfWork",
    "SentRequest",
    "delivered",
    "failed",
    "make_line",
    "make_order",
    "make_snapshot",
    "wait_until",
]
