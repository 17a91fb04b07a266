"""Fakes and factories for testing ordersync and code built on it (no I/O anywhere).

The submodules `cluster` (a whole deployment of real processes) and `faultproxy` (a
fault-injecting TCP proxy) do real I/O and are imported explicitly by the tests using them.
"""

from ordersync.testing.factories import make_line, make_order, make_snapshot
from ordersync.testing.fake_bus import (
    FakeBus,
    FakeBusError,
    FakeLaneStore,
    FakeLeaseStore,
    FakeRelayStore,
    RecordingLaneConsumer,
)
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
    "FakeBus",
    "FakeBusError",
    "FakeDatabase",
    "FakeDelivery",
    "FakeDeliveryStore",
    "FakeIdempotencyStore",
    "FakeInbox",
    "FakeIntegrityError",
    "FakeLaneStore",
    "FakeLeaseStore",
    "FakeOrderRepository",
    "FakeRelayStore",
    "FakeSender",
    "FakeStoreError",
    "FakeUnitOfWork",
    "RecordingLaneConsumer",
    "SentRequest",
    "delivered",
    "failed",
    "make_line",
    "make_order",
    "make_snapshot",
    "wait_until",
]
