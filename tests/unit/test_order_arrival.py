"""Orders that arrive late in their life: created delivered or completed (a backfill meets
finished trades first), and channels reporting a later point of the happy path than the next
step, while operators still move one allowed step at a time."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from ordersync.domain.errors import InvalidTransition
from ordersync.domain.events import EventType as E
from ordersync.domain.order_status import (
    ALLOWED_TRANSITIONS,
    CHANNEL_TRANSITIONS,
    HoldReason,
    OrderStatus,
    PaymentStatus,
)
from ordersync.domain.orders import Order
from ordersync.testing import make_order
from ordersync.testing.factories import PLACED_AT, make_snapshot

S, P = OrderStatus, PaymentStatus
LATER = PLACED_AT + timedelta(days=9)


def created(status: OrderStatus, payment: PaymentStatus = P.PAID) -> Order:
    snap = make_snapshot(status=status, payment_status=payment)
    return Order.create("ord_TEAPOT", snap, cause="taobao:pull", message_id="m-1", at=PLACED_AT)


def report(order: Order, status: OrderStatus) -> bool:
    snap = dataclasses.replace(order.snapshot(), status=status, channel_updated_at=LATER)
    return order.sync(snap, cause="taobao:pull", message_id="m-2", at=LATER)


def events(order: Order) -> list[E]:
    return [e.type for e in order.take_changes()[1]]


@pytest.mark.parametrize(
    ("status", "announced"),
    [(S.DELIVERED, E.ORDER_DELIVERED), (S.COMPLETED, E.ORDER_COMPLETED)],
)
def test_an_order_first_seen_finished_is_created_where_it_arrived(
    status: OrderStatus, announced: E
) -> None:
    """A teapot order the backfill reads weeks later starts delivered or completed."""
    order = created(status)

    history, announced_events = order.take_changes()
    assert order.status is status
    assert [h.to_status for h in history] == [status]
    assert [e.type for e in announced_events] == [E.ORDER_CREATED, E.ORDER_PAID, announced]


def test_a_channel_may_report_an_order_finished_between_two_reads() -> None:
    """Paid at one pull, finished at the next: the steps between happened on the platform."""
    order = make_order(status=S.PAID, payment_status=P.PAID)

    changed = report(order, S.COMPLETED)

    assert changed is True
    assert order.status is S.COMPLETED
    assert events(order) == [E.ORDER_UPDATED, E.ORDER_COMPLETED]


def test_an_operator_still_moves_one_step_at_a_time() -> None:
    """The API cannot jump a paid order to completed; the order is untouched."""
    order = make_order(status=S.PAID, payment_status=P.PAID)

    with pytest.raises(InvalidTransition):
        order.transition_to(S.COMPLETED, cause="api:ops", at=LATER)

    assert (order.status, order.version) == (S.PAID, 1)


def test_a_held_order_finished_on_the_platform_is_released_and_completed() -> None:
    """The platform finished the order despite the hub's hold: the goods are gone."""
    order = make_order(status=S.PAID, payment_status=P.PAID)
    order.transition_to(S.ON_HOLD, cause="api:ops", at=LATER, hold_reasons=(HoldReason.BUYER_NOTE,))
    order.take_changes()

    report(order, S.COMPLETED)

    assert (order.status, order.hold_reasons, order.held_from) == (S.COMPLETED, (), None)
    assert events(order) == [E.ORDER_UPDATED, E.ORDER_RELEASED, E.ORDER_COMPLETED]


def test_finished_orders_never_move_and_a_cancellation_of_one_is_refused() -> None:
    """Completed and cancelled stay terminal for channels too."""
    order = created(S.COMPLETED)
    order.take_changes()

    with pytest.raises(InvalidTransition):
        report(order, S.CANCELLED)

    assert order.status is S.COMPLETED
    assert CHANNEL_TRANSITIONS[S.COMPLETED] == frozenset()
    assert CHANNEL_TRANSITIONS[S.CANCELLED] == frozenset()


def test_channel_transitions_only_add_skips_ahead_to_the_operator_table() -> None:
    """What a channel may do beyond an operator is only jumping to delivered or completed."""
    for current, allowed in ALLOWED_TRANSITIONS.items():
        extra = CHANNEL_TRANSITIONS[current] - allowed
        assert allowed <= CHANNEL_TRANSITIONS[current]
        assert extra <= {S.DELIVERED, S.COMPLETED}, current
