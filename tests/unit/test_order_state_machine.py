"""The order state machine: explicit transitions, holds, and channel syncs, as specifications."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ordersync.domain.errors import DomainError, InvalidOrder, InvalidTransition
from ordersync.domain.events import EventType
from ordersync.domain.order_status import (
    ALLOWED_TRANSITIONS,
    INITIAL_STATUSES,
    HoldReason,
    OrderStatus,
    PaymentStatus,
)
from ordersync.domain.orders import Order
from ordersync.testing import make_order
from ordersync.testing.factories import PLACED_AT

S = OrderStatus
AT = PLACED_AT + timedelta(hours=1)
TERMINAL = frozenset({S.COMPLETED, S.CANCELLED})

# A path from a freshly created (pending) order to each status.
PATHS: dict[OrderStatus, tuple[OrderStatus, ...]] = {
    S.PENDING: (),
    S.PAID: (S.PAID,),
    S.ALLOCATED: (S.PAID, S.ALLOCATED),
    S.SHIPPED: (S.PAID, S.ALLOCATED, S.SHIPPED),
    S.DELIVERED: (S.PAID, S.ALLOCATED, S.SHIPPED, S.DELIVERED),
    S.COMPLETED: (S.PAID, S.ALLOCATED, S.SHIPPED, S.DELIVERED, S.COMPLETED),
    S.CANCELLED: (S.CANCELLED,),
    S.ON_HOLD: (S.PAID, S.ON_HOLD),
}

ALLOWED_PAIRS = [(a, b) for a, targets in ALLOWED_TRANSITIONS.items() for b in sorted(targets)]
REFUSED_PAIRS = [
    (a, b) for a in OrderStatus for b in OrderStatus if b not in ALLOWED_TRANSITIONS[a]
]


def reasons_for(target: OrderStatus) -> tuple[HoldReason, ...]:
    return (HoldReason.SUSPECTED_FRAUD,) if target is S.ON_HOLD else ()


def order_in(status: OrderStatus) -> Order:
    order = make_order()
    for step in PATHS[status]:
        order.transition_to(step, cause="test:setup", at=AT, hold_reasons=reasons_for(step))
    order.take_changes()
    assert order.status is status
    return order


def state_of(order: Order) -> Order:
    """Everything the order holds, minus the changes waiting to be collected."""
    return order.copy()


def test_every_pair_lists_a_path_to_its_start() -> None:
    """The helper paths reach every status (so the tables below cover all of them)."""

    assert set(PATHS) == set(OrderStatus)


@pytest.mark.parametrize(("current", "target"), ALLOWED_PAIRS)
def test_every_allowed_transition_moves_the_order_and_records_it(
    current: OrderStatus, target: OrderStatus
) -> None:
    """Each pair in ALLOWED_TRANSITIONS works, bumping the version and writing one entry."""
    order = order_in(current)
    version = order.version

    order.transition_to(target, cause="api:ops", at=AT, hold_reasons=reasons_for(target))

    assert order.status is target
    assert order.version == version + 1
    [entry] = order.new_history
    assert (entry.from_status, entry.to_status, entry.version) == (current, target, version + 1)
    assert entry.cause == "api:ops"
    assert all(e.version == order.version for e in order.new_events)
    assert EventType.ORDER_UPDATED in {e.type for e in order.new_events}


@pytest.mark.parametrize(("current", "target"), REFUSED_PAIRS)
def test_every_other_transition_is_refused_and_leaves_the_order_unchanged(
    current: OrderStatus, target: OrderStatus
) -> None:
    """Pairs not in ALLOWED_TRANSITIONS raise InvalidTransition and change nothing."""
    order = order_in(current)
    before = state_of(order)

    with pytest.raises(InvalidTransition) as refused:
        order.transition_to(target, cause="api:ops", at=AT, hold_reasons=reasons_for(target))

    assert (refused.value.current, refused.value.target) == (current.value, target.value)
    assert state_of(order) == before
    assert order.new_history == []
    assert order.new_events == []


def test_holding_without_a_reason_is_refused() -> None:
    """An order goes on hold only with at least one reason."""
    order = order_in(S.PAID)
    before = state_of(order)

    with pytest.raises(InvalidOrder):
        order.transition_to(S.ON_HOLD, cause="api:ops", at=AT)

    assert state_of(order) == before


def test_a_hold_remembers_its_reasons_and_where_it_came_from() -> None:
    """Holding a paid order for suspected fraud keeps the reason and the paid status."""
    order = order_in(S.PAID)

    order.transition_to(
        S.ON_HOLD, cause="api:fraud-desk", at=AT, hold_reasons=(HoldReason.SUSPECTED_FRAUD,)
    )

    assert order.status is S.ON_HOLD
    assert order.held_from is S.PAID
    assert order.hold_reasons == (HoldReason.SUSPECTED_FRAUD,)
    assert [e.type for e in order.new_events] == [EventType.ORDER_UPDATED, EventType.ORDER_HELD]


def test_releasing_a_hold_returns_the_order_to_where_it_was() -> None:
    """release_hold brings an allocated order back to allocated and clears the hold."""
    order = order_in(S.ALLOCATED)
    order.transition_to(S.ON_HOLD, cause="api:ops", at=AT, hold_reasons=(HoldReason.MANUAL,))
    order.take_changes()

    order.release_hold(cause="api:ops", at=AT)

    assert order.status is S.ALLOCATED
    assert order.held_from is None
    assert order.hold_reasons == ()
    assert [e.type for e in order.new_events] == [
        EventType.ORDER_UPDATED,
        EventType.ORDER_RELEASED,
    ]


def test_releasing_an_order_that_is_not_held_is_refused() -> None:
    """release_hold on a paid order raises and changes nothing."""
    order = order_in(S.PAID)
    before = state_of(order)

    with pytest.raises(InvalidOrder):
        order.release_hold(cause="api:ops", at=AT)

    assert state_of(order) == before


def test_a_channel_shipping_a_held_order_ends_the_hold() -> None:
    """A held order that Shopify fulfilled anyway is shipped: the goods are gone."""
    order = order_in(S.PAID)
    order.transition_to(
        S.ON_HOLD, cause="api:fraud-desk", at=AT, hold_reasons=(HoldReason.SUSPECTED_FRAUD,)
    )
    shipped = dataclasses.replace(
        order.snapshot(), status=S.SHIPPED, channel_updated_at=AT + timedelta(minutes=5)
    )

    order.sync(shipped, cause="shopify:orders/fulfilled", message_id="msg-ful", at=AT)

    assert (order.status, order.held_from, order.hold_reasons) == (S.SHIPPED, None, ())


def test_a_channel_never_puts_an_order_on_hold() -> None:
    """Holds are the hub's decision: a channel reporting on_hold changes nothing."""
    order = order_in(S.PAID)
    held = dataclasses.replace(order.snapshot(), status=S.ON_HOLD)

    changed = order.sync(held, cause="shopify:orders/updated", message_id="msg-hold", at=AT)

    assert changed is False
    assert (order.status, order.hold_reasons, order.held_from) == (S.PAID, (), None)


# ---- a random walk through the state machine ---------------------------------------------------

# Channels never report ON_HOLD in this walk: test_a_channel_never_puts_an_order_on_hold covers it.
REPORTED_STATUSES = sorted(set(OrderStatus) - {S.ON_HOLD})
STARTING_STATUSES = sorted(INITIAL_STATUSES - {S.ON_HOLD})


class OrderLifecycle(RuleBasedStateMachine):
    """Random transitions, holds, releases and channel syncs against one order."""

    order: Order
    tick: int
    terminal: OrderStatus | None

    @initialize(
        status=st.sampled_from(STARTING_STATUSES),
        payment=st.sampled_from(list(PaymentStatus)),
    )
    def create(self, status: OrderStatus, payment: PaymentStatus) -> None:
        self.order = make_order(status=status, payment_status=payment)
        self.tick = 0
        self.terminal = status if status in TERMINAL else None

    def _attempt(self, change: Callable[..., object], *args: object, **kwargs: object) -> None:
        """Apply a change; a refusal must leave the order untouched, success must record it."""
        before = state_of(self.order)
        self.order.take_changes()
        self.tick += 1
        try:
            result = change(*args, **kwargs)
        except DomainError:
            assert state_of(self.order) == before
            assert self.order.new_history == []
            assert self.order.new_events == []
            return
        if result is False:  # a sync that found nothing new
            assert self.order.version == before.version
            assert self.order.status is before.status
            assert self.order.new_history == []
            assert self.order.new_events == []
            return
        assert self.order.version == before.version + 1
        [entry] = self.order.new_history
        assert entry.version == self.order.version
        assert entry.from_status is before.status
        assert entry.to_status is self.order.status
        assert entry.from_payment_status is before.payment_status
        assert entry.to_payment_status is self.order.payment_status
        assert self.order.new_events, "every change announces itself"
        assert all(e.version == self.order.version for e in self.order.new_events)

    def _at(self) -> datetime:
        return AT + timedelta(seconds=self.tick)

    @rule(to=st.sampled_from(list(OrderStatus)))
    def transition(self, to: OrderStatus) -> None:
        self._attempt(
            self.order.transition_to,
            to,
            cause="api:ops",
            at=self._at(),
            hold_reasons=reasons_for(to),
        )

    @rule(reasons=st.lists(st.sampled_from(list(HoldReason)), min_size=1, max_size=3, unique=True))
    def hold(self, reasons: list[HoldReason]) -> None:
        self._attempt(
            self.order.transition_to,
            S.ON_HOLD,
            cause="api:ops",
            at=self._at(),
            hold_reasons=tuple(reasons),
        )

    @rule()
    def release(self) -> None:
        self._attempt(self.order.release_hold, cause="api:ops", at=self._at())

    @rule(
        status=st.sampled_from(REPORTED_STATUSES),
        payment=st.sampled_from(list(PaymentStatus)),
        note=st.sampled_from([None, "Please wrap it as a gift", "Leave at the door"]),
    )
    def channel_sync(self, status: OrderStatus, payment: PaymentStatus, note: str | None) -> None:
        snap = dataclasses.replace(
            self.order.snapshot(),
            status=status,
            payment_status=payment,
            note=note,
            channel_updated_at=self._at(),
        )
        self._attempt(
            self.order.sync, snap, cause="shopify:orders/updated", message_id=None, at=self._at()
        )

    @invariant()
    def status_is_a_known_status(self) -> None:
        assert self.order.status in OrderStatus
        assert self.order.payment_status in PaymentStatus

    @invariant()
    def held_orders_know_why_and_where_from(self) -> None:
        if self.order.status is S.ON_HOLD:
            assert self.order.hold_reasons
            assert self.order.held_from is not None
        else:
            assert self.order.hold_reasons == ()
            assert self.order.held_from is None

    @invariant()
    def terminal_orders_never_move(self) -> None:
        if self.terminal is not None:
            assert self.order.status is self.terminal
        elif self.order.status in TERMINAL:
            self.terminal = self.order.status


TestOrderLifecycle = OrderLifecycle.TestCase
TestOrderLifecycle.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
