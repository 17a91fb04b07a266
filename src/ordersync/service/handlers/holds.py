"""The audit hook the order handlers call: configured hold rules, in the order's own unit
of work, after its stock has followed it (so a routing shortage is known).

New causes put the order on hold (`order.held`, a history entry naming each cause), a
hold whose causes all cleared is released (`order.released`), and a hold whose causes
changed keeps holding with the new reasons. Reasons no rule manages (`manual`,
`payment_review`) and `suspected_fraud` stay until a person releases them through the API.

`suspected_fraud` judges facts once, when they are new: with a burst limit configured,
each order's buyer fingerprints are recorded in the same unit of work and counted (one
indexed query) only when new to the order, and a billing/shipping country mismatch only
when the order is created or its addresses change. So a person's release is not undone
by the channel's next update of the order (a payment, a fulfilment).

The rules that release themselves would fire again on that update (the amount, the note,
the incomplete address are still there): the order remembers what a person released and
the fact its rule judged then (`Order.released_holds`, kept in the order's document), and
the audit holds it for that reason again only once the fact changed: another total above
the threshold, another note, another shipping address (`holds.still_released`).
"""

from __future__ import annotations

from ordersync.domain import holds
from ordersync.domain.order_status import HoldReason, OrderStatus, PaymentStatus
from ordersync.domain.orders import Order
from ordersync.domain.routing import RoutingDecision, RoutingOutcome
from ordersync.service.handlers.inventory import on_order_change
from ordersync.service.unit_of_work import UnitOfWork


async def audit_order(
    order: Order, uow: UnitOfWork, *, cause: str, decision: RoutingDecision | None
) -> holds.HoldAction:
    """Hold, re-reason or release the order per the configured rules; returns what it did.

    `decision`: the routing decision this change made, if any. Without one, a
    `stock_shortage` the order carries stands: only routing again can clear it.
    """
    policy = uow.holds
    if policy is None or not policy.rules:
        return holds.HoldAction.NONE
    if decision is not None:
        short = decision.outcome is RoutingOutcome.UNROUTABLE
    else:
        short = HoldReason.STOCK_SHORTAGE in order.hold_reasons
    at = order.updated_at
    buyer = await _buyer_activity(order, policy, uow)
    ctx = holds.AuditContext(
        now=at, buyer=buyer, stock_short=short, addresses_new=_addresses_new(order)
    )
    result = holds.evaluate(order, policy.rules, ctx)
    if result.action is holds.HoldAction.NONE:
        return result.action
    why = _why(result)
    if result.action is holds.HoldAction.UPDATE:
        order.change_hold_reasons(result.reasons, cause=f"audit:{cause}: {why}", at=at)
        return result.action
    before = (order.status, order.payment_status)
    holds.apply(order, result, at=at, cause=f"audit:{cause}: {why}")
    if result.action is holds.HoldAction.RELEASE:
        await _after_release(order, before, uow, cause)
    return result.action


async def _buyer_activity(
    order: Order, policy: holds.HoldPolicy, uow: UnitOfWork
) -> holds.BuyerActivity | None:
    window = policy.burst_window
    if window is None or uow.fingerprints is None:
        return None
    # Orders past auditing (arrived shipped, cancelled) still count for the others.
    audited = order.status is OrderStatus.ON_HOLD or order.status in holds.AUDITED
    return await uow.fingerprints.record(
        order.id,
        order.placed_at or order.created_at,
        holds.buyer_fingerprint(order),
        window if audited else None,
    )


def _addresses_new(order: Order) -> bool:
    """Created, or an address changed, in the change being audited (not yet taken)."""
    return any(
        h.from_status is None or _ADDRESSES.intersection(h.changed) for h in order.new_history
    )


_ADDRESSES = frozenset({"shipping_address", "billing_address"})


async def _after_release(
    order: Order, before: tuple[OrderStatus, PaymentStatus], uow: UnitOfWork, cause: str
) -> None:
    # An order held before it reserved (say it arrived on hold) reserves now, like any
    # released hold; one that reserved at creation keeps its reservation.
    await on_order_change(order, before, uow, cause=cause)


def _why(result: holds.AuditResult) -> str:
    parts = [f"{r.value} ({result.details[r]})" for r in result.reasons if r in result.add]
    if result.remove:
        parts.append("cleared " + ", ".join(sorted(r.value for r in result.remove)))
    return "; ".join(parts)
