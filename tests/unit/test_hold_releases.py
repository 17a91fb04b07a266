"""A person's release of a hold stands until what caused it changes materially.

The rules that release themselves (`amount_above_threshold`, `buyer_note`,
`incomplete_address`) fire again on the channel's next update, since the amount, the note
or the address a person looked at is still there; the order remembers the release and the
fact it was made at, and only a new fact holds it again."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal

from ordersync.domain import commands
from ordersync.domain.codec import order_from_dict, order_to_dict
from ordersync.domain.holds import (
    AmountAboveThreshold,
    AuditContext,
    AuditRule,
    BuyerNotePresent,
    HoldAction,
    HoldPolicy,
    IncompleteAddress,
    apply,
    evaluate,
)
from ordersync.domain.order_status import HoldReason, OrderStatus, PaymentStatus
from ordersync.domain.orders import Address, HoldRelease, Order, Totals, release_fact
from ordersync.service.handlers.orders import change_order_status
from ordersync.testing import FakeDatabase, FakeUnitOfWork, make_snapshot
from ordersync.testing.factories import PLACED_AT, make_order, push_snapshot

NOW = PLACED_AT + timedelta(minutes=5)
LATER = NOW + timedelta(minutes=5)
CTX = AuditContext(now=NOW)
AMSTERDAM = Address(
    name="Mei Lin",
    line1="Keizersgracht 123",
    city="Amsterdam",
    postal_code="1015 CJ",
    country_code="NL",
    phone="+31 6 1234 5678",
)
RULES: tuple[AuditRule, ...] = (
    IncompleteAddress(),
    AmountAboveThreshold({"EUR": Decimal(1000)}),
    BuyerNotePresent(),
)


def total(amount: str) -> Totals:
    return Totals(Decimal(amount), None, None, None, Decimal(amount))


def held(**overrides: object) -> Order:
    """A clean order, audited and held for whatever `overrides` make it carry."""
    fields: dict[str, object] = {"note": None, "shipping_address": AMSTERDAM}
    fields.update(overrides)
    order = make_order("ord_TEAPOT", **fields)
    assert apply(order, evaluate(order, RULES, CTX), at=NOW, cause="audit:create")
    assert order.status is OrderStatus.ON_HOLD
    return order


def released(order: Order, by: str = "api:ops") -> Order:
    order.release_hold(cause=by, at=NOW)
    return order


def audit(order: Order) -> HoldAction:
    """The next audit, as after a channel update."""
    result = evaluate(order, RULES, AuditContext(now=LATER))
    apply(order, result, at=LATER, cause="audit:update")
    if result.action is HoldAction.UPDATE:
        order.change_hold_reasons(result.reasons, cause="audit:update", at=LATER)
    return result.action


# ---- the rule logic ---------------------------------------------------------------------


def test_a_released_amount_is_not_held_again_while_the_total_is_the_same() -> None:
    """1,250 EUR held; a person releases it: the same total (written 1250.0) stays released."""
    order = released(held(totals=total("1250.00")))
    order.totals = total("1250.0")

    result = evaluate(order, RULES, CTX)

    assert order.status is OrderStatus.PENDING
    assert result.action is HoldAction.NONE
    assert result.released == frozenset({HoldReason.AMOUNT_ABOVE_THRESHOLD})
    assert result.details[HoldReason.AMOUNT_ABOVE_THRESHOLD]  # the rule still sees it


def test_another_total_above_the_threshold_holds_again_and_spends_the_release() -> None:
    order = released(held(totals=total("1250.00")))
    order.totals = total("1400.00")

    action = audit(order)

    assert action is HoldAction.HOLD
    assert order.hold_reasons == (HoldReason.AMOUNT_ABOVE_THRESHOLD,)
    assert order.released_holds == ()


def test_a_total_in_another_currency_is_another_fact() -> None:
    order = released(held(totals=total("1250.00")))

    assert release_fact(order, HoldReason.AMOUNT_ABOVE_THRESHOLD) == "EUR 1250"
    order.currency = "USD"
    assert release_fact(order, HoldReason.AMOUNT_ABOVE_THRESHOLD) == "USD 1250"


def test_a_released_note_stays_released_until_its_text_changes() -> None:
    """Spacing is not a change of the note; other words are."""
    order = released(held(note="Please wrap it as a gift"))
    order.note = "  Please wrap it  as a gift\n"
    same = audit(order)
    order.note = "Please wrap it as a gift, and ring twice"
    other = audit(order)

    assert same is HoldAction.NONE
    assert other is HoldAction.HOLD
    assert order.hold_reasons == (HoldReason.BUYER_NOTE,)


def test_a_released_incomplete_address_returns_only_when_the_address_changes() -> None:
    """No postcode, released (the packer knows the door); the same address again: released;
    another street still without a postcode: held again."""
    order = released(held(shipping_address=dataclasses.replace(AMSTERDAM, postal_code=None)))
    same = audit(order)
    order.shipping_address = dataclasses.replace(
        AMSTERDAM, line1="Prinsengracht 7", postal_code=None
    )
    moved = audit(order)

    assert same is HoldAction.NONE
    assert moved is HoldAction.HOLD
    assert order.hold_reasons == (HoldReason.INCOMPLETE_ADDRESS,)


def test_each_released_reason_is_judged_on_its_own_fact() -> None:
    """Held for amount and note, both released; the note changes: held for the note only."""
    order = released(held(totals=total("1250.00"), note="gift"))
    order.note = "no gift after all"

    audit(order)

    assert order.hold_reasons == (HoldReason.BUYER_NOTE,)
    assert [r.reason for r in order.released_holds] == [HoldReason.AMOUNT_ABOVE_THRESHOLD]


def test_a_release_by_the_audit_itself_is_not_a_person_s_and_is_not_remembered() -> None:
    """The total fell below the threshold: released by the rules; back up to the same
    total later: held again (no person approved it)."""
    order = held(totals=total("1250.00"))
    order.totals = total("900.00")
    cleared = audit(order)
    order.totals = total("1250.00")
    again = audit(order)

    assert cleared is HoldAction.RELEASE
    assert again is HoldAction.HOLD
    assert order.released_holds == ()


def test_a_release_records_who_and_when_per_reason() -> None:
    order = released(held(totals=total("1250.00"), note="gift"), by="api:ops")

    assert order.released_holds == (
        HoldRelease(HoldReason.AMOUNT_ABOVE_THRESHOLD, "EUR 1250", "api:ops", NOW),
        HoldRelease(
            HoldReason.BUYER_NOTE,
            release_fact(order, HoldReason.BUYER_NOTE),
            "api:ops",
            NOW,
        ),
    )
    assert "gift" not in str(order.released_holds)  # the note is kept as a digest


def test_a_stock_shortage_release_is_not_remembered() -> None:
    """Routing sets and clears stock_shortage; a person's release of it keeps nothing."""
    order = make_order("ord_TEAPOT", note=None, shipping_address=AMSTERDAM)
    order.transition_to(
        OrderStatus.ON_HOLD, cause="inventory:x", at=NOW, hold_reasons=(HoldReason.STOCK_SHORTAGE,)
    )

    released(order)

    assert order.released_holds == ()


def test_a_status_change_out_of_the_hold_is_a_release_too_but_a_cancellation_is_not() -> None:
    paid = held(totals=total("1250.00"))
    paid.transition_to(OrderStatus.PAID, cause="api:ops", at=NOW)
    cancelled = held(totals=total("1250.00"))
    cancelled.transition_to(OrderStatus.CANCELLED, cause="api:ops", at=NOW)

    assert [r.reason for r in paid.released_holds] == [HoldReason.AMOUNT_ABOVE_THRESHOLD]
    assert cancelled.released_holds == ()


# ---- the order document -----------------------------------------------------------------


def test_the_release_survives_the_order_document() -> None:
    order = released(held(totals=total("1250.00"), note="gift"))

    doc = order_to_dict(order)
    back = order_from_dict(doc)

    assert doc["released_holds"][0] == {
        "reason": "amount_above_threshold",
        "fact": "EUR 1250",
        "by": "api:ops",
        "at": NOW.isoformat().replace("+00:00", "Z"),
    }
    assert back.released_holds == order.released_holds


def test_an_order_without_releases_has_no_such_key_and_old_documents_load() -> None:
    order = make_order("ord_TEAPOT")
    doc = order_to_dict(order)

    assert "released_holds" not in doc
    assert order_from_dict(doc).released_holds == ()
    assert order_from_dict({**doc, "released_holds": None}).released_holds == ()


# ---- through the order flow (fake unit of work) -----------------------------------------


class Shop:
    def __init__(self) -> None:
        self.db = FakeDatabase()
        self.holds = HoldPolicy(RULES)
        self.seq = 0

    def uow(self) -> FakeUnitOfWork:
        uow = FakeUnitOfWork(self.db)
        uow.holds = self.holds
        return uow

    async def push(self, external_id: str, **snapshot: object) -> Order:
        self.seq += 1
        uow = self.uow()
        fields: dict[str, object] = {"note": None, "shipping_address": AMSTERDAM}
        fields.update(snapshot)
        snap = make_snapshot(
            external_id=external_id,
            channel_updated_at=PLACED_AT + timedelta(seconds=self.seq),
            **fields,
        )
        return self.db.orders[await push_snapshot(uow, snap, f"msg-{self.seq}", NOW)]

    async def release(self, order: Order) -> None:
        uow = self.uow()
        await change_order_status(commands.ChangeOrderStatus(order.id, None, NOW, "ops"), uow)
        await uow.commit()


async def test_a_released_note_survives_the_channel_s_payment_and_a_new_note_holds() -> None:
    shop = Shop()
    order = await shop.push("7001", note="gift wrap")
    await shop.release(order)

    paid = await shop.push(
        "7001", note="gift wrap", status=OrderStatus.PAID, payment_status=PaymentStatus.PAID
    )
    paid_status = paid.status
    edited = await shop.push(
        "7001",
        note="gift wrap, blue paper",
        status=OrderStatus.PAID,
        payment_status=PaymentStatus.PAID,
    )

    assert paid_status is OrderStatus.PAID
    assert (edited.status, edited.hold_reasons) == (OrderStatus.ON_HOLD, (HoldReason.BUYER_NOTE,))
    assert edited.held_from is OrderStatus.PAID
