"""Order handlers against the shipped FakeUnitOfWork: what each command leaves committed."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from ordersync.domain import commands
from ordersync.domain.errors import (
    IdempotencyKeyReused,
    InvalidTransition,
    OrderAlreadyExists,
    OrderNotFound,
)
from ordersync.domain.order_status import HoldReason, OrderStatus, PaymentStatus
from ordersync.domain.orders import OrderSnapshot
from ordersync.service.handlers.orders import (
    IngestResult,
    change_order_status,
    create_order,
    ingest_channel_order,
)
from ordersync.service.outbox import EventRouter
from ordersync.service.unit_of_work import StoredResponse
from ordersync.testing import FakeDatabase, FakeUnitOfWork, make_snapshot
from ordersync.testing.factories import CHANNEL_ID, EXTERNAL_ID, PLACED_AT

S, P = OrderStatus, PaymentStatus


def ingest_cmd(
    message_id: str, snapshot: OrderSnapshot | None, topic: str = "orders/updated"
) -> commands.IngestChannelOrder:
    return commands.IngestChannelOrder(
        channel_id=CHANNEL_ID,
        kind="shopify",
        message_id=message_id,
        topic=topic,
        snapshot=snapshot,
        received_at=PLACED_AT + timedelta(seconds=30),
        headers=orjson.dumps({"x-shopify-topic": topic}).decode(),
        body=b'{"id": 820982911946154508}',
    )


def at(minutes: int) -> OrderSnapshot:
    """The teapot order as Shopify reports it `minutes` after it was placed."""
    return make_snapshot(channel_updated_at=PLACED_AT + timedelta(minutes=minutes))


async def ingest(db: FakeDatabase, cmd: commands.IngestChannelOrder) -> IngestResult:
    async with db.unit_of_work() as uow:
        result = await ingest_channel_order(cmd, uow)
        await uow.commit()
    return result


def create_cmd(
    key: str | None = None, fingerprint: str | None = None, **snapshot: object
) -> commands.CreateOrder:
    return commands.CreateOrder(
        snapshot=make_snapshot(channel_id="api-wholesale", **snapshot),
        received_at=PLACED_AT,
        principal="ops",
        idempotency_key=key,
        fingerprint=fingerprint,
    )


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase(
        router=EventRouter(
            [("warehouse-erp", ["order.paid", "order.cancelled"]), ("crm", ["order.*"])]
        )
    )


# ---- ingest ----------------------------------------------------------------------------------


async def test_ingesting_a_new_order_creates_it_with_history_events_and_inbox_record(
    db: FakeDatabase,
) -> None:
    """orders/create for a paid teapot order commits the order, its events and the message."""
    snap = make_snapshot(status=S.PAID, payment_status=P.PAID)

    result = await ingest(db, ingest_cmd("msg-create", snap, topic="orders/create"))

    assert (result.outcome, result.version) == ("created", 1)
    order = db.orders[result.order_id or ""]
    assert (order.channel_id, order.external_id, order.status) == (CHANNEL_ID, EXTERNAL_ID, S.PAID)
    assert [h.cause for h in db.history_of(order.id)] == ["shopify:orders/create"]
    assert [(e.type, e.destinations) for e in db.events_of(order.id)] == [
        ("order.created", ("crm",)),
        ("order.paid", ("warehouse-erp", "crm")),
    ]
    [record] = db.inbox.values()
    assert (record.message_id, record.outcome, record.order_id) == (
        "msg-create",
        "created",
        order.id,
    )
    assert record.body == b'{"id": 820982911946154508}'


async def test_ingesting_a_later_snapshot_updates_the_order(db: FakeDatabase) -> None:
    """orders/paid after orders/create moves the same order to paid, version 2."""
    created = await ingest(db, ingest_cmd("msg-create", at(0), topic="orders/create"))
    paid = make_snapshot(
        status=S.PAID, payment_status=P.PAID, channel_updated_at=PLACED_AT + timedelta(minutes=3)
    )

    result = await ingest(db, ingest_cmd("msg-paid", paid, topic="orders/paid"))

    assert (result.outcome, result.order_id, result.version) == ("updated", created.order_id, 2)
    order = db.orders[created.order_id or ""]
    assert (order.status, order.version) == (S.PAID, 2)
    assert [e.type for e in db.events_of(order.id)] == [
        "order.created",
        "order.updated",
        "order.paid",
    ]
    body = orjson.loads(db.events_of(order.id)[-1].body)
    assert (body["type"], body["data"]["status"], body["data"]["version"]) == (
        "order.paid",
        "paid",
        2,
    )


async def test_the_same_message_twice_is_a_duplicate_with_no_second_effect(
    db: FakeDatabase,
) -> None:
    """Shopify retrying msg-paid is acknowledged as a duplicate and changes nothing."""
    await ingest(db, ingest_cmd("msg-create", at(0)))
    paid = make_snapshot(
        status=S.PAID, payment_status=P.PAID, channel_updated_at=PLACED_AT + timedelta(minutes=3)
    )
    await ingest(db, ingest_cmd("msg-paid", paid))
    events, history = len(db.outbox), len(db.history)

    again = await ingest(db, ingest_cmd("msg-paid", paid))

    assert again.outcome == "duplicate"
    assert (len(db.outbox), len(db.history), len(db.inbox)) == (events, history, 2)


async def test_a_message_repeated_within_one_batch_is_a_duplicate(db: FakeDatabase) -> None:
    """Two deliveries of msg-create in the same transaction create one order."""
    async with db.unit_of_work() as uow:
        first = await ingest_channel_order(ingest_cmd("msg-create", at(0)), uow)
        second = await ingest_channel_order(ingest_cmd("msg-create", at(0)), uow)
        await uow.commit()

    assert (first.outcome, second.outcome) == ("created", "duplicate")
    assert len(db.orders) == 1


async def test_a_stale_snapshot_is_recorded_as_stale_and_changes_nothing(
    db: FakeDatabase,
) -> None:
    """An orders/updated from minute 2 arriving after minute 5's is not applied."""
    await ingest(db, ingest_cmd("msg-create", at(5)))
    before = dict(db.orders)
    old = make_snapshot(note="An older note", channel_updated_at=PLACED_AT + timedelta(minutes=2))

    result = await ingest(db, ingest_cmd("msg-old", old))

    assert result.outcome == "stale"
    assert db.orders == before
    assert len(db.outbox) == 1
    assert db.inbox[(CHANNEL_ID, "msg-old")].outcome == "stale"


async def test_an_unchanged_snapshot_is_acknowledged_without_events(db: FakeDatabase) -> None:
    """The same teapot order reported again records 'unchanged' and emits nothing."""
    await ingest(db, ingest_cmd("msg-create", at(0)))

    result = await ingest(db, ingest_cmd("msg-again", at(1)))

    assert (result.outcome, result.version) == ("unchanged", 1)
    assert len(db.outbox) == 1


async def test_a_refused_transition_is_recorded_in_the_inbox_with_its_reason(
    db: FakeDatabase,
) -> None:
    """A cancelled order that the channel calls paid is 'rejected', and the inbox says why."""
    cancelled = make_snapshot(status=S.CANCELLED, payment_status=P.VOIDED)
    created = await ingest(db, ingest_cmd("msg-create", cancelled))
    paid = make_snapshot(
        status=S.PAID, payment_status=P.VOIDED, channel_updated_at=PLACED_AT + timedelta(minutes=9)
    )

    result = await ingest(db, ingest_cmd("msg-paid", paid))

    assert (result.outcome, result.order_id) == ("rejected", created.order_id)
    record = db.inbox[(CHANNEL_ID, "msg-paid")]
    assert record.outcome == "rejected"
    assert record.detail == "cannot change status from 'cancelled' to 'paid'"
    assert db.orders[created.order_id or ""].status is S.CANCELLED


async def test_a_topic_without_an_order_is_recorded_as_ignored(db: FakeDatabase) -> None:
    """A message carrying no snapshot is kept in the inbox and applies nothing."""

    result = await ingest(db, ingest_cmd("msg-other", None, topic="orders/edited"))

    assert result.outcome == "ignored"
    assert db.orders == {}
    assert db.inbox[(CHANNEL_ID, "msg-other")].outcome == "ignored"


async def test_nothing_is_visible_before_commit() -> None:
    """A unit of work that is left without commit() leaves the database untouched."""
    db = FakeDatabase()

    async with db.unit_of_work() as uow:
        await ingest_channel_order(ingest_cmd("msg-create", at(0)), uow)

    assert (db.orders, db.outbox, db.inbox, db.commits) == ({}, [], {}, 0)
    assert uow.committed is False


# ---- create via the API ----------------------------------------------------------------------


async def create(
    db: FakeDatabase, cmd: commands.CreateOrder
) -> tuple[StoredResponse, FakeUnitOfWork]:
    async with db.unit_of_work() as uow:
        response = await create_order(cmd, uow)
        await uow.commit()
    return response, uow


async def test_an_idempotency_key_with_the_same_request_replays_the_stored_response(
    db: FakeDatabase,
) -> None:
    """POST /orders twice with key K and the same body: one order, the same 201 body."""
    first, _ = await create(db, create_cmd("key-teapot-1", "sha256:aaa"))

    again, uow = await create(db, create_cmd("key-teapot-1", "sha256:aaa"))

    assert again == StoredResponse("sha256:aaa", 201, first.body, replayed=True)
    assert orjson.loads(again.body)["id"] in db.orders
    assert len(db.orders) == 1
    assert uow.committed_destinations == set()


async def test_an_idempotency_key_reused_for_another_request_is_refused(
    db: FakeDatabase,
) -> None:
    """Key K with a different body is an IdempotencyKeyReused error (422)."""
    await create(db, create_cmd("key-teapot-1", "sha256:aaa"))

    with pytest.raises(IdempotencyKeyReused):
        await create(db, create_cmd("key-teapot-1", "sha256:bbb", external_id="other-order"))

    assert len(db.orders) == 1


async def test_a_keyed_request_without_a_fingerprint_replays_too(db: FakeDatabase) -> None:
    """The same keyed request (no body hash supplied) twice is a replay, not a reuse."""
    await create(db, create_cmd("key-teapot-2"))

    again, _ = await create(db, create_cmd("key-teapot-2"))

    assert again.replayed


async def test_creating_an_order_that_exists_is_refused(db: FakeDatabase) -> None:
    """A second order with the same channel and external id is OrderAlreadyExists."""
    await create(db, create_cmd())
    [existing] = db.orders

    with pytest.raises(OrderAlreadyExists) as refused:
        await create(db, create_cmd(note="Second try"))

    assert refused.value.order_id == existing
    assert len(db.orders) == 1


async def test_a_created_order_is_announced_to_its_subscribers(db: FakeDatabase) -> None:
    """POST /orders for a paid order queues order.created and order.paid."""

    _, uow = await create(db, create_cmd(status=S.PAID, payment_status=P.PAID))

    assert [e.type for e in db.outbox] == ["order.created", "order.paid"]
    assert uow.committed_destinations == {"crm", "warehouse-erp"}


# ---- status changes --------------------------------------------------------------------------


async def change(db: FakeDatabase, cmd: commands.ChangeOrderStatus) -> None:
    async with db.unit_of_work() as uow:
        await change_order_status(cmd, uow)
        await uow.commit()


def status_cmd(
    order_id: str, target: OrderStatus | None, *reasons: HoldReason
) -> commands.ChangeOrderStatus:
    return commands.ChangeOrderStatus(
        order_id=order_id,
        target=target,
        received_at=PLACED_AT + timedelta(hours=1),
        principal="ops",
        hold_reasons=reasons,
    )


async def test_an_illegal_status_change_is_refused_and_nothing_is_committed(
    db: FakeDatabase,
) -> None:
    """A pending teapot order cannot be delivered before it ships."""
    created = await ingest(db, ingest_cmd("msg-create", at(0)))
    order_id = created.order_id or ""

    with pytest.raises(InvalidTransition):
        await change(db, status_cmd(order_id, S.DELIVERED))

    assert db.orders[order_id].status is S.PENDING
    assert db.orders[order_id].version == 1


async def test_a_hold_and_its_release_are_committed_with_history(db: FakeDatabase) -> None:
    """The fraud desk holds a paid order, then releases it back to paid."""
    paid = make_snapshot(status=S.PAID, payment_status=P.PAID)
    order_id = (await ingest(db, ingest_cmd("msg-create", paid))).order_id or ""

    await change(db, status_cmd(order_id, S.ON_HOLD, HoldReason.SUSPECTED_FRAUD))
    held = db.orders[order_id]
    await change(db, status_cmd(order_id, None))

    assert (held.status, held.hold_reasons) == (S.ON_HOLD, (HoldReason.SUSPECTED_FRAUD,))
    assert db.orders[order_id].status is S.PAID
    assert [h.to_status for h in db.history_of(order_id)] == [S.PAID, S.ON_HOLD, S.PAID]
    assert [h.cause for h in db.history_of(order_id)][1:] == ["api:ops", "api:ops"]


async def test_changing_an_unknown_order_is_order_not_found(db: FakeDatabase) -> None:
    """ord_NOPE does not exist."""

    with pytest.raises(OrderNotFound):
        await change(db, status_cmd("ord_NOPE", S.CANCELLED))
