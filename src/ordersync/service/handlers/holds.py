"""The audit hook the order handlers call: configured hold rules, in the order's own unit
of work, after its stock has followed it (so a routing shortage is known).

New causes put the order on hold (`order.held`, a history entry naming each cause), a
hold whose causes all cleared is released (`order.released`), and a hold whose causes
changed keeps holding with the new reasons. Reasons no rule manages (`manual`,
`payment_review`) stay until a person releases them through the API.
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
    ctx = holds.AuditContext(now=at, stock_short=short)
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
