"""What may come back from an order, and how much money goes back (Decimal, exact)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from ordersync.domain.events import EventType
from ordersync.domain.order_status import OrderStatus, PaymentStatus
from ordersync.domain.orders import Order, OrderLine
from ordersync.domain.returns import (
    ReceivedBy,
    Return,
    ReturnLine,
    ReturnRefused,
    check_request,
    payment_after_refund,
    record_refund,
    refund_amounts,
)
from ordersync.testing.factories import make_line, make_order

AT = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def cups(total: str = "10.00", quantity: int = 3) -> OrderLine:
    """Three sake cups whose line total does not split evenly (10.00 / 3)."""
    return make_line(sku="SAKE-CUP", name="Sake cup", quantity=quantity, total=Decimal(total))


def shipped_order(*lines: OrderLine, payment: PaymentStatus = PaymentStatus.PAID) -> Order:
    return make_order(status=OrderStatus.SHIPPED, payment_status=payment, lines=lines or (cups(),))


def received(sku: str, quantity: int, amount: str) -> Return:
    ret = Return("ret_EARLIER", "ord_BLUETEAPOT", "", "EUR", (ReturnLine(sku, quantity),), AT)
    ret.receive(
        [ReturnLine(sku, quantity, True, "berlin-dc", Decimal(amount))], by=ReceivedBy.MANUAL, at=AT
    )
    return ret


def test_units_share_the_line_total_and_the_last_one_takes_what_is_left() -> None:
    """10.00 for three cups: 3.33, then 3.33, then the last cup gets 3.34, never a cent more."""
    order = shipped_order()

    first = refund_amounts(order, {"SAKE-CUP": 1}, [])
    second = refund_amounts(order, {"SAKE-CUP": 1}, [received("SAKE-CUP", 1, "3.33")])
    last = refund_amounts(
        order,
        {"SAKE-CUP": 1},
        [received("SAKE-CUP", 1, "3.33"), received("SAKE-CUP", 1, "3.33")],
    )

    assert (first, second, last) == (
        {"SAKE-CUP": Decimal("3.33")},
        {"SAKE-CUP": Decimal("3.33")},
        {"SAKE-CUP": Decimal("3.34")},
    )


def test_a_currency_without_cents_is_refunded_in_whole_units() -> None:
    """2000 yen for three cups: 667 for one (half-even rounding to the total's precision)."""
    order = shipped_order(cups(total="2000"))

    assert refund_amounts(order, {"SAKE-CUP": 1}, []) == {"SAKE-CUP": Decimal("667")}


def test_returns_may_not_take_back_more_than_shipped_minus_already_claimed() -> None:
    """Two of three cups are on their way back: one more is fine, two more are refused."""
    order = shipped_order()
    earlier = Return("ret_A", order.id, "", "EUR", (ReturnLine("SAKE-CUP", 2),), AT)

    assert check_request(order, [("SAKE-CUP", 1)], [earlier]) == {"SAKE-CUP": 1}
    with pytest.raises(ReturnRefused) as refused:
        check_request(order, [("SAKE-CUP", 2)], [earlier])
    assert (refused.value.status, refused.value.code) == (422, "return_quantity_exceeded")


@pytest.mark.parametrize(
    ("status", "code"),
    [(OrderStatus.PAID, "order_not_shipped"), (OrderStatus.CANCELLED, "order_cancelled")],
)
def test_goods_that_never_left_cannot_come_back(status: OrderStatus, code: str) -> None:
    order = make_order(status=status, lines=(cups(),))

    with pytest.raises(ReturnRefused) as refused:
        check_request(order, [("SAKE-CUP", 1)], [])

    assert (refused.value.status, refused.value.code) == (409, code)


def test_the_order_is_refunded_only_once_every_line_total_went_back() -> None:
    order = shipped_order()

    assert payment_after_refund(order, Decimal("6.66")) is PaymentStatus.PARTIALLY_REFUNDED
    assert payment_after_refund(order, Decimal("10.00")) is PaymentStatus.REFUNDED
    unpaid = shipped_order(payment=PaymentStatus.PENDING)  # cash on delivery, not collected
    assert payment_after_refund(unpaid, Decimal("10.00")) is None


def test_recording_a_refund_moves_the_payment_and_leaves_the_announcement_to_the_caller() -> None:
    """History and order.updated as usual; order.refunded is published with its amount."""
    order = shipped_order()

    record_refund(order, PaymentStatus.PARTIALLY_REFUNDED, cause="return:ret_A", at=AT)

    assert order.payment_status is PaymentStatus.PARTIALLY_REFUNDED
    assert order.status is OrderStatus.SHIPPED
    assert [h.cause for h in order.new_history] == ["return:ret_A"]
    assert [e.type for e in order.new_events] == [EventType.ORDER_UPDATED]


def test_a_second_partial_refund_is_still_a_new_version_of_the_order() -> None:
    """Partially refunded twice: the status stays, the version and history move on."""
    order = shipped_order(payment=PaymentStatus.PARTIALLY_REFUNDED)
    version = order.version

    record_refund(order, PaymentStatus.PARTIALLY_REFUNDED, cause="return:ret_B", at=AT)

    assert order.version == version + 1
    assert order.payment_status is PaymentStatus.PARTIALLY_REFUNDED
    assert [h.cause for h in order.new_history] == ["return:ret_B"]
    assert [e.type for e in order.new_events] == [EventType.ORDER_UPDATED]
