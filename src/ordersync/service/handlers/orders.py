"""Order handlers: small async functions, message first, unit of work after."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import orjson

from ordersync.domain import commands
from ordersync.domain.codec import order_to_dict, routing_doc, with_fulfilment
from ordersync.domain.errors import (
    DomainError,
    IdempotencyKeyReused,
    OrderAlreadyExists,
    OrderNotFound,
)
from ordersync.domain.orders import Order
from ordersync.ids import new_id
from ordersync.service.grouping import ARRIVALS, follow_groups
from ordersync.service.handlers.holds import audit_order
from ordersync.service.handlers.inventory import on_order_change
from ordersync.service.unit_of_work import InboxRecord, StoredResponse, UnitOfWork


@dataclass(frozen=True, slots=True)
class IngestResult:
    outcome: str  # created | updated | unchanged | stale | rejected | ignored | duplicate
    order_id: str | None = None
    version: int | None = None
    detail: str | None = None


async def ingest_channel_order(cmd: commands.IngestChannelOrder, uow: UnitOfWork) -> IngestResult:
    if await uow.inbox.seen(cmd.channel_id, cmd.message_id):
        return IngestResult("duplicate")
    result = await _apply_snapshot(cmd, uow)
    uow.inbox.record(
        InboxRecord(
            source=cmd.channel_id,
            message_id=cmd.message_id,
            topic=cmd.topic,
            received_at=cmd.received_at,
            outcome=result.outcome,
            order_id=result.order_id,
            detail=result.detail,
            headers=cmd.headers,
            body=cmd.body,
        )
    )
    return result


async def _apply_snapshot(cmd: commands.IngestChannelOrder, uow: UnitOfWork) -> IngestResult:
    snap = cmd.snapshot
    if snap is None or snap.external_id is None:
        return IngestResult("ignored", detail=f"topic {cmd.topic!r} carries no order to apply")
    cause = f"{cmd.kind}:{cmd.topic}"
    order = await uow.orders.get_by_external(snap.channel_id, snap.external_id)
    if order is None:
        order = Order.create(
            new_id("ord"), snap, cause=cause, message_id=cmd.message_id, at=cmd.received_at
        )
        decision = await on_order_change(order, None, uow, cause=cause)
        await audit_order(order, uow, cause=cause, decision=decision)
        uow.orders.add(order)
        ARRIVALS.created(order)  # wakes the auto-merge pass (merge.auto), if one listens
        return IngestResult("created", order.id, order.version)
    if order.is_stale(snap.channel_updated_at):
        return IngestResult(
            "stale", order.id, order.version, detail="older than the order's channel_updated_at"
        )
    watermark = order.channel_updated_at
    before = (order.status, order.payment_status)
    try:
        changed = order.sync(snap, cause=cause, message_id=cmd.message_id, at=cmd.received_at)
    except DomainError as e:
        # Acknowledged (the channel retrying would not help) but recorded, with the reason.
        return IngestResult("rejected", order.id, order.version, detail=str(e))
    if not changed:
        if order.channel_updated_at != watermark:
            # No new version, but remember how recent the channel's view is, so an older
            # snapshot arriving later is recognised as stale.
            uow.orders.save(order)
        return IngestResult("unchanged", order.id, order.version)
    decision = await on_order_change(order, before, uow, cause=cause)
    await audit_order(order, uow, cause=cause, decision=decision)
    uow.orders.save(order)
    await follow_groups(order, before, uow)  # a merged group follows (same transaction)
    return IngestResult("updated", order.id, order.version)


async def create_order(cmd: commands.CreateOrder, uow: UnitOfWork) -> StoredResponse:
    """Returns the response to send (and, under an Idempotency-Key, to send again)."""
    if cmd.idempotency_key is not None:
        stored = await uow.idempotency.get(cmd.principal, cmd.idempotency_key)
        if stored is not None:
            if stored.fingerprint != (cmd.fingerprint or ""):
                raise IdempotencyKeyReused("this Idempotency-Key was used with a different request")
            return dataclasses.replace(stored, replayed=True)
    snap = cmd.snapshot
    if snap.external_id is not None:
        existing = await uow.orders.get_by_external(snap.channel_id, snap.external_id)
        if existing is not None:
            raise OrderAlreadyExists(existing.id)
    order = Order.create(
        new_id("ord"), snap, cause="api:create", message_id=cmd.idempotency_key, at=cmd.received_at
    )
    decision = await on_order_change(order, None, uow, cause="api:create")
    await audit_order(order, uow, cause="api:create", decision=decision)
    uow.orders.add(order)
    ARRIVALS.created(order)  # wakes the auto-merge pass (merge.auto), if one listens
    body = order_to_dict(order)
    if uow.stock is not None:  # as GET shows it: where each line's units come from, and why
        inv = uow.stock.inventory
        record = inv.new_decisions.get(order.id) if decision is not None else None
        body = with_fulfilment(
            body,
            [(r.sku, r.location_id, r.quantity) for r in inv.held_for(order.id)],
            routing_doc(record) if record is not None else None,
        )
    response = StoredResponse(cmd.fingerprint or "", 201, orjson.dumps(body))
    if cmd.idempotency_key is not None:
        uow.idempotency.put(cmd.principal, cmd.idempotency_key, response)
    return response


async def change_order_status(cmd: commands.ChangeOrderStatus, uow: UnitOfWork) -> Order:
    order = await uow.orders.get(cmd.order_id)
    if order is None:
        raise OrderNotFound(cmd.order_id)
    cause = f"api:{cmd.principal}"
    before = (order.status, order.payment_status)
    if cmd.target is None:
        order.release_hold(cause=cause, at=cmd.received_at)
    else:
        order.transition_to(
            cmd.target, cause=cause, at=cmd.received_at, hold_reasons=cmd.hold_reasons
        )
    await on_order_change(order, before, uow, cause=cause)
    uow.orders.save(order)
    await follow_groups(order, before, uow)  # a merged group follows (same transaction)
    return order
