"""Request and response models (and so the OpenAPI document) for the native API.

Money travels as a decimal string ("19.90"), never a JSON float, so no amount is ever
rounded on the way in; an integer is accepted too.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ordersync.domain.order_status import HoldReason, OrderStatus, PaymentStatus
from ordersync.domain.orders import Address, Customer, OrderLine, OrderSnapshot, Totals


def _no_float(v: Any) -> Any:
    if isinstance(v, float):
        raise ValueError('money must be a decimal string such as "19.90", not a JSON number')
    return v


Money = Annotated[Decimal, BeforeValidator(_no_float), Field(allow_inf_nan=False)]
OptMoney = Annotated[Decimal | None, BeforeValidator(_no_float), Field(allow_inf_nan=False)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AddressIn(_In):
    name: str | None = None
    company: str | None = None
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    region: str | None = None
    postal_code: str | None = None
    country_code: str | None = Field(default=None, min_length=2, max_length=2)
    phone: str | None = None


class CustomerIn(_In):
    external_id: str | None = None
    email: str | None = None
    name: str | None = None
    phone: str | None = None


class TotalsIn(_In):
    subtotal: OptMoney = None
    shipping: OptMoney = None
    tax: OptMoney = None
    discount: OptMoney = None
    total: Money


class LineIn(_In):
    sku: str | None = None
    name: str | None = None
    quantity: int = Field(ge=0)
    unit_price: Money
    discount: Money = Decimal("0")
    total: OptMoney = Field(
        default=None, description="defaults to unit_price * quantity - discount"
    )
    external_id: str | None = None
    product_id: str | None = None
    variant_id: str | None = None


class OrderIn(_In):
    channel_id: str = Field(default="native", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # No control characters: PostgreSQL text cannot hold NUL, and ids should be printable.
    external_id: str | None = Field(default=None, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")
    name: str | None = None
    status: OrderStatus = OrderStatus.PENDING
    payment_status: PaymentStatus = PaymentStatus.PENDING
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    totals: TotalsIn
    lines: list[LineIn] = Field(min_length=1)
    customer: CustomerIn | None = None
    shipping_address: AddressIn | None = None
    billing_address: AddressIn | None = None
    note: str | None = None
    placed_at: datetime | None = None

    @field_validator("placed_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("times need a UTC offset (RFC 3339), e.g. 2026-11-22T10:00:00Z")
        return v

    def to_snapshot(self) -> OrderSnapshot:
        def addr(a: AddressIn | None) -> Address | None:
            return Address(**a.model_dump()) if a else None

        return OrderSnapshot(
            channel_id=self.channel_id,
            external_id=self.external_id,
            name=self.name,
            currency=self.currency,
            status=self.status,
            payment_status=self.payment_status,
            totals=Totals(**self.totals.model_dump()),
            lines=tuple(
                OrderLine(
                    sku=x.sku,
                    name=x.name,
                    quantity=x.quantity,
                    unit_price=x.unit_price,
                    discount=x.discount,
                    total=x.total
                    if x.total is not None
                    else x.unit_price * x.quantity - x.discount,
                    external_id=x.external_id,
                    product_id=x.product_id,
                    variant_id=x.variant_id,
                )
                for x in self.lines
            ),
            customer=Customer(**self.customer.model_dump()) if self.customer else None,
            shipping_address=addr(self.shipping_address),
            billing_address=addr(self.billing_address),
            note=self.note,
            placed_at=self.placed_at,
        )


class StatusChangeIn(_In):
    status: OrderStatus
    hold_reasons: list[HoldReason] = Field(default_factory=list)


# ---- responses (documentation only: handlers return stored canonical JSON as is) ------
class TotalsOut(BaseModel):
    subtotal: str | None
    shipping: str | None
    tax: str | None
    discount: str | None
    total: str


class AllocationOut(BaseModel):
    """Units of one order line held at (or shipped from) one location."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"location_id": "berlin-dc", "quantity": 2}]}
    )

    location_id: str = Field(
        description="The location (`locations[].id` in the config) that picks and ships"
        " these units",
        examples=["berlin-dc"],
    )
    quantity: int = Field(ge=1, description="Units of the line from this location", examples=[2])


_ROUTING_EXAMPLE: dict[str, Any] = {
    "outcome": "routed",
    "locations": ["berlin-dc", "paris-store"],
    "backordered": {},
    "decided_at": "2026-11-22T09:00:00.125000Z",
}


class RoutingSummaryOut(BaseModel):
    """The order's last routing decision, without its explanation (lists and events)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ROUTING_EXAMPLE]})

    outcome: str = Field(
        description="`routed` (everything allocated), `backordered` (part waits for stock, see"
        " `backordered`) or `unroutable` (nothing allocated: the order is held for"
        " `stock_shortage`)",
        examples=["routed"],
    )
    locations: list[str] = Field(
        description="The locations allocated, preferred first (two or more: a split order)",
        examples=[["berlin-dc", "paris-store"]],
    )
    backordered: dict[str, int] = Field(
        description="SKU -> units waiting for stock (backorder or preorder)",
        examples=[{"BLUE-TEAPOT": 2}],
    )
    decided_at: str = Field(
        description="When the decision was made (RFC 3339, UTC)",
        examples=["2026-11-22T09:00:00.125000Z"],
    )


class RoutingOut(RoutingSummaryOut):
    """The order's last routing decision: why these locations, what waits for stock."""

    explanation: dict[str, Any] = Field(
        description="Candidates, scores and steps of the decision, and `text` for people"
    )


class LineOut(BaseModel):
    sku: str | None
    name: str | None
    quantity: int
    unit_price: str
    discount: str
    total: str
    external_id: str | None
    product_id: str | None
    variant_id: str | None
    allocations: list[AllocationOut] = Field(
        default_factory=list,
        description="With inventory on (`locations` configured): where the line's units are"
        " held or were shipped from. Fewer units than `quantity` when part is backordered or"
        " short; empty for a line without a tracked SKU. Two lines of one SKU share its"
        " allocations in line order.",
        examples=[[{"location_id": "berlin-dc", "quantity": 1}]],
    )


class HoldReleaseOut(BaseModel):
    reason: HoldReason
    fact: str | None = Field(
        description="What the reason's rule judged when the hold was released (the total,"
        " or a digest of the note or address); the channel's updates hold the order for"
        " this reason again only once it differs."
    )
    by: str = Field(description="Who released it: the cause, e.g. `api:<key id>`.")
    at: datetime


class _OrderFields(BaseModel):
    id: str
    channel_id: str
    external_id: str | None
    name: str | None
    status: OrderStatus
    payment_status: PaymentStatus
    hold_reasons: list[HoldReason]
    held_from: OrderStatus | None
    released_holds: list[HoldReleaseOut] = Field(
        default_factory=list,
        description="Hold reasons a person released, one entry per reason; absent until"
        " there is one.",
    )
    currency: str
    totals: TotalsOut
    lines: list[LineOut]
    customer: dict[str, Any] | None
    shipping_address: dict[str, Any] | None
    billing_address: dict[str, Any] | None
    note: str | None
    placed_at: str | None
    created_at: str
    updated_at: str
    channel_updated_at: str | None
    version: int


class OrderOut(_OrderFields):
    routing: RoutingOut | None = Field(
        default=None,
        description="With inventory on: the last routing decision with its explanation;"
        " null when the order was never routed",
    )


class OrderListItemOut(_OrderFields):
    routing: RoutingSummaryOut | None = Field(
        default=None,
        description="With inventory on: the last routing decision's summary (no"
        " `explanation`: `GET /v1/orders/{id}` has it); null when never routed",
    )


class OrderPage(BaseModel):
    data: list[OrderListItemOut]
    next_cursor: str | None


class OrderAllocatedData(_OrderFields):
    """The order at the event's version, each line with its `allocations`."""

    routing: RoutingSummaryOut | None = Field(
        description="The decision that made these allocations (summary, no `explanation`)"
    )


_ALLOCATED_EXAMPLE: dict[str, Any] = {
    "type": "order.allocated",
    "timestamp": "2026-11-22T09:00:00.125000Z",
    "data": {
        "id": "ord_01JDZK4W1T8Q5M7V2C9X3B6N0A",
        "channel_id": "shop-eu",
        "external_id": "5001234567890",
        "name": "#1042",
        "status": "pending",
        "payment_status": "paid",
        "hold_reasons": [],
        "held_from": None,
        "currency": "EUR",
        "totals": {
            "subtotal": "49.00",
            "shipping": "4.90",
            "tax": "9.31",
            "discount": None,
            "total": "53.90",
        },
        "lines": [
            {
                "sku": "BLUE-TEAPOT",
                "name": "Blue teapot",
                "quantity": 1,
                "unit_price": "21.00",
                "discount": "0",
                "total": "21.00",
                "external_id": "13001",
                "product_id": "801",
                "variant_id": "9001",
                "allocations": [{"location_id": "berlin-dc", "quantity": 1}],
            },
            {
                "sku": "MATCHA-CUP",
                "name": "Matcha cup",
                "quantity": 4,
                "unit_price": "7.00",
                "discount": "0",
                "total": "28.00",
                "external_id": "13002",
                "product_id": "802",
                "variant_id": "9002",
                "allocations": [{"location_id": "paris-store", "quantity": 4}],
            },
        ],
        "customer": {
            "external_id": "77",
            "email": "mira.lindqvist@example.com",
            "name": "Mira Lindqvist",
            "phone": None,
        },
        "shipping_address": {
            "name": "Mira Lindqvist",
            "company": None,
            "line1": "Teestraße 12",
            "line2": None,
            "city": "Berlin",
            "region": None,
            "postal_code": "10115",
            "country_code": "DE",
            "phone": None,
        },
        "billing_address": None,
        "note": None,
        "placed_at": "2026-11-22T08:59:58Z",
        "created_at": "2026-11-22T09:00:00.125000Z",
        "updated_at": "2026-11-22T09:00:00.125000Z",
        "channel_updated_at": "2026-11-22T08:59:58Z",
        "version": 1,
        "routing": _ROUTING_EXAMPLE,
    },
}


class OrderAllocatedEvent(BaseModel):
    """Body of `order.allocated` (Standard Webhooks): routing reserved stock for an order.

    Sent in the transaction that reserved the stock, once per routing that allocates (an
    order held for `stock_shortage` sends it when stock arrives and it is routed). A WMS
    picks at each `lines[].allocations[].location_id` the `quantity` given there.
    """

    model_config = ConfigDict(json_schema_extra={"examples": [_ALLOCATED_EXAMPLE]})

    type: Literal["order.allocated"]
    timestamp: str = Field(description="When the stock was reserved (RFC 3339, UTC)")
    data: OrderAllocatedData


class HistoryOut(BaseModel):
    version: int
    from_status: str | None
    to_status: str
    from_payment_status: str | None
    to_payment_status: str
    cause: str
    source_message_id: str | None
    changed: list[str]
    at: str


class DeliveryOut(BaseModel):
    id: str
    destination_id: str
    order_id: str
    event_id: str
    event_type: str
    order_version: int
    state: str
    attempts: int
    next_attempt_at: str | None
    created_at: str
    updated_at: str
    delivered_at: str | None
    last_status: int | None
    last_error: str | None


class DeliveryPage(BaseModel):
    data: list[DeliveryOut]
    next_cursor: str | None


class WebhookAck(BaseModel):
    outcome: str
    order_id: str | None = None


# ---- shipments ----------------------------------------------------------------------------


class ParcelLineIn(_In):
    """Units of one order line in a parcel: the line's id on the platform, or its SKU."""

    external_id: str | None = Field(default=None, min_length=1, max_length=200)
    sku: str | None = Field(default=None, min_length=1, max_length=200)
    quantity: int = Field(gt=0, le=1_000_000)

    @model_validator(mode="after")
    def _named(self) -> ParcelLineIn:
        if self.external_id is None and self.sku is None:
            raise ValueError("a parcel line needs its external_id or its sku")
        return self

    def as_tuple(self) -> tuple[str | None, str | None, int]:
        return (self.external_id, self.sku, self.quantity)
