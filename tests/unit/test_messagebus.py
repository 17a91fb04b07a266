"""The message bus: group commit, per-order ordering, and isolation of poisoned messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from ordersync.domain import commands
from ordersync.domain.errors import InvalidTransition
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.orders import OrderSnapshot
from ordersync.service.handlers import HANDLERS
from ordersync.service.handlers.orders import IngestResult
from ordersync.service.messagebus import MessageBus
from ordersync.service.unit_of_work import UnitOfWork
from ordersync.testing import FakeDatabase, FakeUnitOfWork, make_snapshot
from ordersync.testing.factories import CHANNEL_ID, PLACED_AT

S, P = OrderStatus, PaymentStatus


def teapot_order(n: int, minutes: int = 0, **changes: Any) -> OrderSnapshot:
    """Order #100n for blue teapots, as Shopify reports it `minutes` after placing."""
    return make_snapshot(
        external_id=f"82098291194615{n:04d}",
        name=f"#{1000 + n}",
        channel_updated_at=PLACED_AT + timedelta(minutes=minutes),
        **changes,
    )


def ingest(message_id: str, snapshot: OrderSnapshot) -> commands.IngestChannelOrder:
    return commands.IngestChannelOrder(
        channel_id=CHANNEL_ID,
        kind="shopify",
        message_id=message_id,
        topic="orders/updated",
        snapshot=snapshot,
        received_at=PLACED_AT + timedelta(hours=1),
    )


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase()


@contextlib.asynccontextmanager
async def running(bus: MessageBus) -> AsyncIterator[MessageBus]:
    bus.start()
    try:
        yield bus
    finally:
        await bus.stop()


@pytest.fixture
async def bus(db: FakeDatabase) -> AsyncIterator[MessageBus]:
    async with running(MessageBus(db.unit_of_work)) as b:
        yield b


async def test_concurrent_commands_share_transactions(db: FakeDatabase) -> None:
    """Forty webhooks arriving together are committed in far fewer than forty transactions."""
    db.commit_delay = 0.005  # like an fsync: later callers queue up behind it
    async with running(MessageBus(db.unit_of_work, max_batch=8)) as bus:
        cmds = [ingest(f"msg-{n}", teapot_order(n)) for n in range(40)]

        results = await asyncio.gather(*(bus.handle(c) for c in cmds))

    assert 5 <= db.commits < 40
    assert [r.outcome for r in results] == ["created"] * 40
    for n, result in enumerate(results):
        order = db.order_by_external(CHANNEL_ID, f"82098291194615{n:04d}")
        assert order is not None
        assert result.order_id == order.id


async def test_a_caller_gets_its_result_only_once_it_is_committed(
    bus: MessageBus, db: FakeDatabase
) -> None:
    """When handle() returns, the order is already in the database."""

    result: IngestResult = await bus.handle(ingest("msg-1", teapot_order(1)))

    assert result.order_id in db.orders
    assert db.inbox[(CHANNEL_ID, "msg-1")].outcome == "created"


async def test_a_domain_error_fails_only_its_own_command(db: FakeDatabase) -> None:
    """An illegal status change in a batch raises for its caller; its neighbours commit."""
    async with db.unit_of_work() as uow:
        await HANDLERS[commands.IngestChannelOrder](ingest("msg-0", teapot_order(0)), uow)
        await uow.commit()
    [existing] = db.orders
    illegal = commands.ChangeOrderStatus(existing, S.DELIVERED, PLACED_AT, principal="ops")
    commits = db.commits

    async with running(MessageBus(db.unit_of_work)) as bus:
        results = await asyncio.gather(
            bus.handle(ingest("msg-1", teapot_order(1))),
            bus.handle(illegal),
            bus.handle(ingest("msg-2", teapot_order(2))),
            return_exceptions=True,
        )

    assert results[0].outcome == "created"  # type: ignore[union-attr]
    assert isinstance(results[1], InvalidTransition)
    assert results[2].outcome == "created"  # type: ignore[union-attr]
    assert db.commits == commits + 1
    assert db.orders[existing].status is S.PENDING


async def test_a_failing_commit_is_retried_one_by_one_so_only_the_poisoned_message_fails(
    db: FakeDatabase,
) -> None:
    """A message the database refuses fails alone; the other four are committed."""

    def poisoned(uow: FakeUnitOfWork) -> Exception | None:
        if any(r.message_id == "msg-poison" for r in uow.inbox.records):
            return RuntimeError("value too long for column headers")
        return None

    db.fail_commit = poisoned
    cmds = [ingest(f"msg-{n}", teapot_order(n)) for n in range(4)]
    cmds.insert(2, ingest("msg-poison", teapot_order(99)))

    async with running(MessageBus(db.unit_of_work)) as bus:
        results = await asyncio.gather(*(bus.handle(c) for c in cmds), return_exceptions=True)

    assert isinstance(results[2], RuntimeError)
    assert [r.outcome for i, r in enumerate(results) if i != 2] == ["created"] * 4  # type: ignore[union-attr]
    assert len(db.orders) == 4
    assert (CHANNEL_ID, "msg-poison") not in db.inbox
    assert db.failed_commits == 2  # the batch, then the poisoned message alone


async def test_an_unexpected_handler_error_fails_only_its_own_caller(db: FakeDatabase) -> None:
    """A bug tripped by one message does not take the rest of its batch down."""
    ingest_handler = HANDLERS[commands.IngestChannelOrder]

    async def buggy(cmd: commands.IngestChannelOrder, uow: UnitOfWork) -> Any:
        if cmd.message_id == "msg-bug":
            raise KeyError("line_items")
        return await ingest_handler(cmd, uow)

    handlers = {**HANDLERS, commands.IngestChannelOrder: buggy}
    cmds = [ingest(f"msg-{n}", teapot_order(n)) for n in range(3)]
    cmds.append(ingest("msg-bug", teapot_order(7)))

    async with running(MessageBus(db.unit_of_work, handlers=handlers)) as bus:
        results = await asyncio.gather(*(bus.handle(c) for c in cmds), return_exceptions=True)

    assert isinstance(results[3], KeyError)
    assert [r.outcome for r in results[:3]] == ["created"] * 3  # type: ignore[union-attr]
    assert len(db.orders) == 3


async def test_commands_for_one_order_are_applied_in_arrival_order(db: FakeDatabase) -> None:
    """create, paid, shipped for order #1001 apply in that order across batches and lanes."""
    db.commit_delay = 0.002
    lifecycle = [
        ingest("msg-create", teapot_order(1, minutes=0)),
        ingest("msg-paid", teapot_order(1, minutes=1, status=S.PAID, payment_status=P.PAID)),
        ingest(
            "msg-shipped",
            teapot_order(1, minutes=2, status=S.SHIPPED, payment_status=P.PAID),
        ),
    ]
    others = [ingest(f"msg-other-{n}", teapot_order(n)) for n in range(10, 19)]
    cmds = [*others[:3], lifecycle[0], *others[3:6], lifecycle[1], *others[6:], lifecycle[2]]

    async with running(MessageBus(db.unit_of_work, writers=4, max_batch=2)) as bus:
        results = await asyncio.gather(*(bus.handle(c) for c in cmds))

    order = db.order_by_external(CHANNEL_ID, "820982911946150001")
    assert order is not None
    assert [h.to_status for h in db.history_of(order.id)] == [S.PENDING, S.PAID, S.SHIPPED]
    assert [h.source_message_id for h in db.history_of(order.id)] == [
        "msg-create",
        "msg-paid",
        "msg-shipped",
    ]
    assert all(r.outcome in ("created", "updated") for r in results)


async def test_the_bus_refuses_commands_before_it_is_started(db: FakeDatabase) -> None:
    """handle() on a bus that is not running fails at once instead of hanging."""
    bus = MessageBus(db.unit_of_work)

    with pytest.raises(RuntimeError, match="not running"):
        await bus.handle(ingest("msg-1", teapot_order(1)))


async def test_stopping_the_bus_finishes_what_is_queued(db: FakeDatabase) -> None:
    """Commands already accepted are committed before stop() returns."""
    db.commit_delay = 0.002
    bus = MessageBus(db.unit_of_work, max_batch=4)
    bus.start()
    pending = [
        asyncio.ensure_future(bus.handle(ingest(f"msg-{n}", teapot_order(n)))) for n in range(12)
    ]
    await asyncio.sleep(0)

    await bus.stop()

    assert len(db.orders) == 12
    assert [r.outcome for r in await asyncio.gather(*pending)] == ["created"] * 12
