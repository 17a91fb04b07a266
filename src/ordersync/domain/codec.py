"""The canonical JSON form of an order: what events carry, the API returns and the DB stores.

Money is a decimal *string* (never a float) next to the order's ISO 4217 `currency`;
times are RFC 3339 in UTC with a `Z`; ids are strings, so 64-bit channel ids keep every digit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ordersync.domain.events import EventType, OrderEvent
from ordersync.domain.inventory import RoutingRecord
from ordersync.domain.order_status import HoldReason, OrderStatus, PaymentStatus
from ordersync.domain.orders import Address, Customer, HoldRelease, Order, OrderLine, Totals


def fmt_time(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(s: str | None) -> datetime | None:
    if s is None:
        return None
    t = datetime.fromisoformat(s)
    if t.tzinfo is None:
        raise ValueError(f"time without a UTC offset: {s!r}")
    return t.astimezone(UTC)


def _money(d: Decimal | None) -> str | None:
    return None if d is None else str(d)


def _dec(s: Any) -> Decimal | None:
    return None if s is None else Decimal(str(s))


def totals_to_dict(t: Totals) -> dict[str, Any]:
    return {
        "subtotal": _money(t.subtotal),
        "shipping": _money(t.shipping),
        "tax": _money(t.tax),
        "discount": _money(t.discount),
        "total": _money(t.total),
    }


def _flat(obj: Address | Customer | None) -> dict[str, Any] | None:
    # Not dataclasses.asdict: that deep-copies recursively and is the slowest part of encoding.
    if obj is None:
        return None
    return {name: getattr(obj, name) for name in obj.__slots__}


def line_to_dict(line: OrderLine) -> dict[str, Any]:
    return {
        "sku": line.sku,
        "name": line.name,
        "quantity": line.quantity,
        "unit_price": _money(line.unit_price),
        "discount": _money(line.discount),
        "total": _money(line.total),
        "external_id": line.external_id,
        "product_id": line.product_id,
        "variant_id": line.variant_id,
    }


def order_to_dict(o: Order) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": o.id,
        "channel_id": o.channel_id,
        "external_id": o.external_id,
        "name": o.name,
        "status": o.status.value,
        "payment_status": o.payment_status.value,
        "hold_reasons": [r.value for r in o.hold_reasons],
        "held_from": o.held_from.value if o.held_from else None,
        "currency": o.currency,
        "totals": totals_to_dict(o.totals),
        "lines": [line_to_dict(line) for line in o.lines],
        "customer": _flat(o.customer),
        "shipping_address": _flat(o.shipping_address),
        "billing_address": _flat(o.billing_address),
        "note": o.note,
        "placed_at": fmt_time(o.placed_at),
        "created_at": fmt_time(o.created_at),
        "updated_at": fmt_time(o.updated_at),
        "channel_updated_at": fmt_time(o.channel_updated_at),
        "version": o.version,
    }
    if o.released_holds:  # only once a person released a hold (older documents lack it)
        doc["released_holds"] = [_release_to_dict(r) for r in o.released_holds]
    return doc


def _release_to_dict(r: HoldRelease) -> dict[str, Any]:
    return {"reason": r.reason.value, "fact": r.fact, "by": r.by, "at": fmt_time(r.at)}


def _release_from_dict(d: dict[str, Any]) -> HoldRelease:
    return HoldRelease(HoldReason(d["reason"]), d.get("fact"), d["by"], _required_time(d["at"]))


def routing_doc(record: RoutingRecord) -> dict[str, Any]:
    """A stored routing decision as the order API shows it (`routing`)."""
    return {
        "outcome": record.outcome,
        "locations": list(record.locations),
        "backordered": dict(record.backordered),
        "explanation": dict(record.explanation),
        "decided_at": fmt_time(record.decided_at),
    }


def _record_summary(record: RoutingRecord) -> dict[str, Any]:
    """`routing_summary(routing_doc(record))` without copying the explanation."""
    return {
        "outcome": record.outcome,
        "locations": list(record.locations),
        "backordered": dict(record.backordered),
        "decided_at": fmt_time(record.decided_at),
    }


def with_fulfilment(
    doc: dict[str, Any],
    allocations: Iterable[tuple[str, str, int]],
    routing: dict[str, Any] | None,
) -> dict[str, Any]:
    """The order JSON plus where each line's units come from and why.

    `allocations`: (sku, location id, units) the order holds or shipped; they are dealt to
    the order's lines in line order (two lines of one SKU share its allocations).
    `routing`: the last routing decision (`routing_doc`), or None if none was made.
    """
    return {**doc, "lines": allocation_lines(doc["lines"], allocations), "routing": routing}


def allocation_lines(
    lines: Iterable[dict[str, Any]], allocations: Iterable[tuple[str, str, int]]
) -> list[dict[str, Any]]:
    """Each line (canonical JSON) with `allocations`: [{location_id, quantity}], dealt from
    the (sku, location id, units) the order holds in line order; a line without a SKU, or
    whose units nothing holds (backordered, short), gets fewer units or none."""
    left: dict[str, list[list[Any]]] = {}
    for sku, loc, qty in allocations:
        queue = left.setdefault(sku, [])
        for slot in queue:
            if slot[0] == loc:
                slot[1] += qty
                break
        else:
            queue.append([loc, qty])
    out = []
    for line in lines:
        need, allocs = int(line["quantity"]), []
        queue = left.get(line["sku"], [])
        while need > 0 and queue:
            loc, have = queue[0]
            take = min(need, have)
            allocs.append({"location_id": loc, "quantity": take})
            need -= take
            if take == have:
                queue.pop(0)
            else:
                queue[0][1] = have - take
        out.append({**line, "allocations": allocs})
    return out


_SUMMARY_KEYS = ("outcome", "locations", "backordered", "decided_at")


def routing_summary(routing: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A routing decision (`routing_doc`) without its explanation: what lists and events
    carry (the explanation, candidates and scores, is on `GET /v1/orders/{id}`)."""
    if routing is None:
        return None
    return {key: routing[key] for key in _SUMMARY_KEYS}


def allocated_event(
    order: Order,
    allocations: Iterable[tuple[str, str, int]],
    record: RoutingRecord | None,
    at: datetime,
) -> OrderEvent:
    """`order.allocated`: routing reserved `allocations` (sku, location id, units) for
    `order`. Its body is the order plus each line's `allocations` and the `routing`
    summary, so a WMS knows which location picks how many of which line."""
    return OrderEvent(
        EventType.ORDER_ALLOCATED,
        order.id,
        order.version,
        at,
        fields={
            "lines": allocation_lines((line_to_dict(x) for x in order.lines), allocations),
            "routing": _record_summary(record) if record is not None else None,
        },
    )


def event_data(doc: dict[str, Any], event: OrderEvent) -> dict[str, Any]:
    """The `data` of an order event's body: the order's canonical JSON (`doc`, at the
    event's version) with the fields the event adds (`OrderEvent.fields`)."""
    return doc if event.fields is None else {**doc, **event.fields}


def totals_from_dict(d: dict[str, Any]) -> Totals:
    total = _dec(d["total"])
    assert total is not None
    return Totals(
        subtotal=_dec(d.get("subtotal")),
        shipping=_dec(d.get("shipping")),
        tax=_dec(d.get("tax")),
        discount=_dec(d.get("discount")),
        total=total,
    )


def line_from_dict(d: dict[str, Any]) -> OrderLine:
    return OrderLine(
        sku=d.get("sku"),
        name=d.get("name"),
        quantity=int(d["quantity"]),
        unit_price=Decimal(str(d["unit_price"])),
        discount=Decimal(str(d.get("discount") or "0")),
        total=Decimal(str(d["total"])),
        external_id=d.get("external_id"),
        product_id=d.get("product_id"),
        variant_id=d.get("variant_id"),
    )


def order_from_dict(d: dict[str, Any]) -> Order:
    return Order(
        id=d["id"],
        channel_id=d["channel_id"],
        external_id=d.get("external_id"),
        name=d.get("name"),
        status=OrderStatus(d["status"]),
        payment_status=PaymentStatus(d["payment_status"]),
        hold_reasons=tuple(HoldReason(r) for r in d.get("hold_reasons") or ()),
        held_from=OrderStatus(d["held_from"]) if d.get("held_from") else None,
        released_holds=tuple(_release_from_dict(r) for r in d.get("released_holds") or ()),
        currency=d["currency"],
        totals=totals_from_dict(d["totals"]),
        lines=tuple(line_from_dict(x) for x in d["lines"]),
        customer=Customer(**d["customer"]) if d.get("customer") else None,
        shipping_address=Address(**d["shipping_address"]) if d.get("shipping_address") else None,
        billing_address=Address(**d["billing_address"]) if d.get("billing_address") else None,
        note=d.get("note"),
        placed_at=parse_time(d.get("placed_at")),
        created_at=_required_time(d["created_at"]),
        updated_at=_required_time(d["updated_at"]),
        channel_updated_at=parse_time(d.get("channel_updated_at")),
        version=int(d["version"]),
    )


def _required_time(s: str) -> datetime:
    t = parse_time(s)
    assert t is not None
    return t
