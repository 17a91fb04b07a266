"""Domain errors. The API turns each into a problem response; see entrypoints/api/errors.py."""

from __future__ import annotations


class DomainError(Exception):
    """A business rule refused a change."""

    code = "domain_error"


class InvalidTransition(DomainError):
    """The order's state machine does not allow this change."""

    code = "invalid_transition"

    def __init__(self, current: str, target: str, what: str = "status") -> None:
        super().__init__(f"cannot change {what} from {current!r} to {target!r}")
        self.current = current
        self.target = target
        self.what = what


class InvalidOrder(DomainError):
    """The order data breaks an invariant (e.g. a negative quantity)."""

    code = "invalid_order"


class OrderNotFound(DomainError):
    code = "order_not_found"


class OrderAlreadyExists(DomainError):
    code = "order_exists"

    def __init__(self, order_id: str) -> None:
        super().__init__(f"an order with this channel_id and external_id exists: {order_id}")
        self.order_id = order_id


class IdempotencyKeyReused(DomainError):
    """Same Idempotency-Key, different request (Stripe semantics: 422)."""

    code = "idempotency_key_reused"


class DeliveryNotFound(DomainError):
    code = "delivery_not_found"


class DeliveryNotReplayable(DomainError):
    code = "delivery_not_replayable"
