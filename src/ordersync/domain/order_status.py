"""The order and payment state machines, as data.

Every status change anywhere in ordersync goes through `check_transition` /
`check_payment_transition`; no other module compares status strings.
"""

from __future__ import annotations

from enum import StrEnum

from ordersync.domain.errors import InvalidTransition


class OrderStatus(StrEnum):
    PENDING = "pending"  # placed, awaiting payment
    PAID = "paid"  # payment secured (authorized or captured)
    ALLOCATED = "allocated"  # stock allocated to a fulfilment location
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ON_HOLD = "on_hold"  # see HoldReason; remembers the status it was held from


class PaymentStatus(StrEnum):
    PENDING = "pending"
    AUTHORIZED = "authorized"
    PARTIALLY_PAID = "partially_paid"
    PAID = "paid"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    VOIDED = "voided"


class HoldReason(StrEnum):
    INCOMPLETE_ADDRESS = "incomplete_address"
    AMOUNT_ABOVE_THRESHOLD = "amount_above_threshold"
    BUYER_NOTE = "buyer_note"
    SUSPECTED_FRAUD = "suspected_fraud"
    STOCK_SHORTAGE = "stock_shortage"
    PAYMENT_REVIEW = "payment_review"
    MANUAL = "manual"


S = OrderStatus
ALLOWED_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    # Cash-on-delivery orders ship before they are paid, hence pending -> shipped.
    S.PENDING: frozenset({S.PAID, S.SHIPPED, S.CANCELLED, S.ON_HOLD}),
    S.PAID: frozenset({S.ALLOCATED, S.SHIPPED, S.CANCELLED, S.ON_HOLD}),
    S.ALLOCATED: frozenset({S.PAID, S.SHIPPED, S.CANCELLED, S.ON_HOLD}),
    S.SHIPPED: frozenset({S.DELIVERED, S.COMPLETED}),
    S.DELIVERED: frozenset({S.COMPLETED}),
    # A hold stops the hub from fulfilling; if the channel shipped anyway, the goods are gone.
    S.ON_HOLD: frozenset({S.PENDING, S.PAID, S.ALLOCATED, S.SHIPPED, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.CANCELLED: frozenset(),
}

# Statuses an order may be created in. An order first seen after the platform finished it
# (a backfill reading last month's trades) starts where the platform says it is, delivered
# or completed included; ALLOCATED is the hub's own doing, so nothing arrives in it.
INITIAL_STATUSES = frozenset(
    {S.PENDING, S.PAID, S.ON_HOLD, S.SHIPPED, S.DELIVERED, S.COMPLETED, S.CANCELLED}
)

# What a channel may report beyond ALLOWED_TRANSITIONS: a later point of the happy path
# than the next one. The platform went through the steps between (a pull every few minutes
# sees an order paid, then already finished); they happened, we just did not see them.
# Operators and the API still move one allowed step at a time.
_SKIPPED_AHEAD = frozenset({S.DELIVERED, S.COMPLETED})
CHANNEL_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    current: targets | _SKIPPED_AHEAD
    if current in (S.PENDING, S.PAID, S.ALLOCATED, S.ON_HOLD)
    else targets
    for current, targets in ALLOWED_TRANSITIONS.items()
}

# Forward progress along the happy path. A channel that reports a status *behind* the
# hub's (the hub allocated stock, the channel still says "paid") does not move it back.
PROGRESS: dict[OrderStatus, int] = {
    S.PENDING: 0,
    S.PAID: 1,
    S.ALLOCATED: 2,
    S.SHIPPED: 3,
    S.DELIVERED: 4,
    S.COMPLETED: 5,
}

P = PaymentStatus
ALLOWED_PAYMENT_TRANSITIONS: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    P.PENDING: frozenset({P.AUTHORIZED, P.PARTIALLY_PAID, P.PAID, P.VOIDED}),
    # An authorization can lapse uncaptured (Shopify "expired"): back to awaiting payment.
    P.AUTHORIZED: frozenset({P.PENDING, P.PARTIALLY_PAID, P.PAID, P.VOIDED}),
    P.PARTIALLY_PAID: frozenset({P.PAID, P.PARTIALLY_REFUNDED, P.REFUNDED, P.VOIDED}),
    P.PAID: frozenset({P.PARTIALLY_REFUNDED, P.REFUNDED}),
    P.PARTIALLY_REFUNDED: frozenset({P.REFUNDED}),
    P.REFUNDED: frozenset(),
    P.VOIDED: frozenset(),
}

# Payment states in which the merchant may fulfil the order.
PAYMENT_SECURED = frozenset({P.AUTHORIZED, P.PAID, P.PARTIALLY_REFUNDED})


def check_transition(current: OrderStatus, target: OrderStatus) -> None:
    if target not in ALLOWED_TRANSITIONS[current]:
        raise InvalidTransition(current.value, target.value)


def check_channel_transition(current: OrderStatus, reported: OrderStatus) -> None:
    """A status change a channel reports (see CHANNEL_TRANSITIONS)."""
    if reported not in CHANNEL_TRANSITIONS[current]:
        raise InvalidTransition(current.value, reported.value)


def check_payment_transition(current: PaymentStatus, target: PaymentStatus) -> None:
    if target not in ALLOWED_PAYMENT_TRANSITIONS[current]:
        raise InvalidTransition(current.value, target.value, what="payment_status")


def is_behind(reported: OrderStatus, current: OrderStatus) -> bool:
    """True when a channel reports an earlier point of the happy path than the hub holds."""
    return reported in PROGRESS and current in PROGRESS and PROGRESS[reported] < PROGRESS[current]
