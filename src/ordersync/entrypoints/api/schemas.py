"""Request and response models (and so the OpenAPI document) for the native API.

Money travels as a decimal string ("19.90"), never a JSON float, so no amount is ever
rounded on the way in; an integer is accepted too.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

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
    location_id: str
    quantity: int


class RoutingOut(BaseModel):
    """The order's last routing decision: why these locations, what waits for stock."""

    outcome: str  # routed | backordered | unroutable
    locations: list[str]
    backordered: dict[str, int]  # sku -> units waiting (backorder or preorder)
    explanation: dict[str, Any]  # candidates, scores, steps, and `text` for people
    decided_at: str


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
    # With inventory on: where its units are held or shipped from (one order, not lists).
    allocations: list[AllocationOut] = []


class OrderOut(BaseModel):
    id: str
    channel_id: str
    external_id: str | None
    name: str | None
    status: OrderStatus
    payment_status: PaymentStatus
    hold_reasons: list[HoldReason]
    held_from: OrderStatus | None
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
    routing: RoutingOut | None = None  # with inventory on; one order, not lists


class OrderPage(BaseModel):
    data: list[OrderOut]
    next_cursor: str | None


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
