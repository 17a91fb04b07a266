"""Audit holds as specifications: each rule holds an order, and lets it go when the cause clears."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from ordersync.adapters.db.buyer_fingerprints import FingerprintDigest
from ordersync.bootstrap import buyer_fingerprints, hold_policy
from ordersync.config import ConfigError, settings_from_mapping
from ordersync.domain import commands
from ordersync.domain.holds import (
    AmountAboveThreshold,
    AuditContext,
    BuyerActivity,
    BuyerFingerprint,
    BuyerNotePresent,
    HoldAction,
    HoldPolicy,
    IncompleteAddress,
    StockShortage,
    SuspectedFraud,
    apply,
    buyer_fingerprint,
    default_rules,
    evaluate,
    normalized_address,
    normalized_phone,
)
from ordersync.domain.order_status import HoldReason, OrderStatus, PaymentStatus
from ordersync.domain.orders import Address, Customer, Order, Totals
from ordersync.service.handlers.orders import change_order_status
from ordersync.service.unit_of_work import BuyerFingerprints
from ordersync.testing import FakeDatabase, FakeUnitOfWork, make_snapshot
from ordersync.testing.factories import PLACED_AT, make_order, push_snapshot

NOW = PLACED_AT + timedelta(minutes=5)
CTX = AuditContext(now=NOW)
AMSTERDAM = Address(
    name="Mei Lin",
    line1="Keizersgracht 123",
    city="Amsterdam",
    postal_code="1015 CJ",
    country_code="NL",
    phone="+31 6 1234 5678",
)


def clean_order(order_id: str = "ord_TEAPOT", **overrides: object) -> Order:
    """Two blue teapots to a full Amsterdam address, no note: nothing to audit."""
    fields: dict[str, object] = {"note": None, "shipping_address": AMSTERDAM}
    fields.update(overrides)
    return make_order(order_id, **fields)


def test_a_clean_order_is_not_held() -> None:
    """Full address, modest amount, no note, no burst: the audit changes nothing."""
    result = evaluate(clean_order(), default_rules({"EUR": Decimal(500)}), CTX)

    assert result.action is HoldAction.NONE
    assert result.reasons == ()


def test_an_address_without_a_street_is_held_as_incomplete() -> None:
    """No line1 and no postcode: held with incomplete_address, naming what is missing."""
    order = clean_order(shipping_address=dataclasses.replace(AMSTERDAM, line1="", postal_code=None))

    result = evaluate(order, (IncompleteAddress(),), CTX)

    assert result.action is HoldAction.HOLD
    assert result.reasons == (HoldReason.INCOMPLETE_ADDRESS,)
    assert (
        result.details[HoldReason.INCOMPLETE_ADDRESS] == "shipping address lacks line1, postal_code"
    )


def test_a_hong_kong_address_needs_no_postal_code() -> None:
    """Hong Kong has no postcodes, so a missing one is not incomplete."""
    hk = Address(name="陈小明", line1="皇后大道中 99 号", city="Hong Kong", country_code="HK")

    result = evaluate(clean_order(shipping_address=hk), (IncompleteAddress(),), CTX)

    assert result.action is HoldAction.NONE


def test_an_order_above_the_currency_threshold_is_held() -> None:
    """A 1,250 EUR order passes a 1,000 EUR limit; the same amount in JPY has no limit set."""
    big = Totals(Decimal("1250.00"), None, None, None, Decimal("1250.00"))
    rule = AmountAboveThreshold({"EUR": Decimal(1000)})

    eur = evaluate(clean_order(totals=big), (rule,), CTX)
    jpy = evaluate(clean_order(totals=big, currency="JPY"), (rule,), CTX)

    assert eur.reasons == (HoldReason.AMOUNT_ABOVE_THRESHOLD,)
    assert jpy.action is HoldAction.NONE


def test_a_buyer_note_holds_the_order_for_a_person_to_read() -> None:
    """'Please wrap it as a gift' is something a packer must see: buyer_note."""
    order = clean_order(note="Please wrap it as a gift")

    result = evaluate(order, (BuyerNotePresent(),), CTX)

    assert result.reasons == (HoldReason.BUYER_NOTE,)
    assert "wrap it as a gift" in result.details[HoldReason.BUYER_NOTE]


def test_a_fourth_order_to_one_address_over_a_limit_of_three_is_suspected_fraud() -> None:
    """Three other orders went to the same street within the day: the fourth is held,
    and the detail names the limit, the count and the window."""
    ctx = AuditContext(NOW, BuyerActivity(other_orders_to_address=3))

    result = evaluate(clean_order("ord_4"), (SuspectedFraud(),), ctx)

    assert result.reasons == (HoldReason.SUSPECTED_FRAUD,)
    assert result.details[HoldReason.SUSPECTED_FRAUD] == (
        "4 orders to one address within 24 h (limit 3)"
    )


def test_orders_up_to_the_limit_are_just_a_loyal_buyer() -> None:
    """Two earlier orders to the address and two from the phone: three each, not over."""
    ctx = AuditContext(NOW, BuyerActivity(other_orders_to_address=2, other_orders_from_phone=2))

    result = evaluate(clean_order(), (SuspectedFraud(),), ctx)

    assert result.action is HoldAction.NONE


def test_a_burst_from_one_phone_names_the_phone_limit() -> None:
    """One earlier order from the same mobile over a limit of one: the phone is the cause."""
    ctx = AuditContext(NOW, BuyerActivity(other_orders_to_address=0, other_orders_from_phone=1))
    rule = SuspectedFraud(window=timedelta(hours=6), max_orders_per_phone=1)

    result = evaluate(clean_order(), (rule,), ctx)

    assert result.details[HoldReason.SUSPECTED_FRAUD] == (
        "2 orders from one phone within 6 h (limit 1)"
    )


def test_a_limit_of_none_is_not_checked_and_without_limits_nothing_is_counted() -> None:
    """An address limit of None ignores a hundred orders; with no limit at all the policy
    asks for no counting (no fingerprint recorded, no query)."""
    only_phone = SuspectedFraud(max_orders_per_address=None)
    neither = SuspectedFraud(max_orders_per_address=None, max_orders_per_phone=None)
    ctx = AuditContext(NOW, BuyerActivity(other_orders_to_address=100))

    result = evaluate(clean_order(), (only_phone,), ctx)

    assert result.action is HoldAction.NONE
    assert HoldPolicy((only_phone,)).burst_window == timedelta(hours=24)
    assert HoldPolicy((neither,)).burst_window is None
    assert HoldPolicy((IncompleteAddress(), BuyerNotePresent())).burst_window is None


def test_a_suspected_fraud_hold_is_not_released_by_the_audit() -> None:
    """Held for a burst and a foreign billing address; the buyer changes the billing
    country: the suspicion stays until a person releases it."""
    billing = dataclasses.replace(AMSTERDAM, city="São Paulo", country_code="BR")
    order = clean_order(billing_address=billing)
    rules = (SuspectedFraud(),)
    burst = AuditContext(NOW, BuyerActivity(other_orders_to_address=5))
    apply(order, evaluate(order, rules, burst), at=NOW)
    order.billing_address = AMSTERDAM

    again = evaluate(order, rules, CTX)

    assert order.status is OrderStatus.ON_HOLD
    assert again.action is HoldAction.NONE
    assert again.remove == frozenset()
    assert again.reasons == (HoldReason.SUSPECTED_FRAUD,)


@pytest.mark.parametrize(
    ("written", "country"),
    [
        ("+86 138-0013-8000", None),
        ("0086 138 0013 8000", "DE"),
        ("8613800138000", "CN"),
        ("138 0013 8000", "CN"),
        ("\uff11\uff13\uff18\uff10\uff10\uff11\uff13\uff18\uff10\uff10\uff10", "CN"),
        ("(+86) 13800138000", "US"),
    ],
)
def test_a_chinese_mobile_is_one_phone_however_it_is_written(
    written: str, country: str | None
) -> None:
    """With or without +86, 0086, dashes, spaces or full-width digits: +8613800138000."""
    assert normalized_phone(written, country) == "+8613800138000"


@pytest.mark.parametrize(
    ("a", "b", "country"),
    [
        ("+31 6 1234 5678", "06-12345678", "NL"),
        ("+44 (0)20 7946 0958", "020 7946 0958", "GB"),
        ("(415) 555-0100", "+1 415 555 0100", "US"),
        ("1-415-555-0100", "001 415 555 0100", "US"),
        ("010-6552 9988", "+86 10 6552 9988", "CN"),
        ("06 1234 5678", "+39 06 1234 5678", "IT"),
    ],
)
def test_a_phone_is_the_same_with_or_without_its_country_code(a: str, b: str, country: str) -> None:
    """National and international spellings of one number, for the address's country."""
    assert normalized_phone(a, country) == normalized_phone(b, country) is not None


def test_different_phones_and_fragments_are_not_confused() -> None:
    """Another mobile differs; an Italian leading 0 is part of the number; 5 digits are no phone."""
    assert normalized_phone("138 0013 8001", "CN") != normalized_phone("138 0013 8000", "CN")
    assert normalized_phone("+39 06 1234 5678") != normalized_phone("+39 6 1234 5678")
    assert normalized_phone("12345", "NL") is None
    assert normalized_phone(None) is None


def test_an_address_is_the_same_whatever_its_case_spacing_and_punctuation() -> None:
    """Teestraße 12 and 'TEESTRASSE 12.' in 10 115 are one door; number 14 is another;
    full-width digits and Chinese punctuation do not count either."""
    berlin = Address(name="Mira", line1="Teestraße 12", postal_code="10115", country_code="DE")
    shouted = Address(
        name="M. L.", line1=" TEESTRASSE  12.", postal_code="10 115", country_code="de"
    )
    full_width = "建国路\uff18\uff18号\uff0c\uff13号楼"  # 88, a comma, 3: all full-width
    beijing = Address(line1=full_width, postal_code="100022", country_code="CN")
    beijing_ascii = Address(line1="建国路88号 3号楼", postal_code="100022", country_code="CN")

    assert normalized_address(berlin) == normalized_address(shouted)
    assert normalized_address(berlin) != normalized_address(
        dataclasses.replace(berlin, line1="Teestraße 14")
    )
    assert normalized_address(beijing) == normalized_address(beijing_ascii)
    assert normalized_address(dataclasses.replace(berlin, line1=None)) is None


def test_the_fingerprint_takes_the_customer_phone_when_the_address_has_none() -> None:
    """No phone on the address: the customer's, read in the shipping country (NL)."""
    order = clean_order(customer=Customer(name="Mei Lin", phone="06-12345678"))

    fp = buyer_fingerprint(order)

    assert fp.phone == "+31612345678"
    assert fp.address == normalized_address(AMSTERDAM)


def test_billing_in_another_country_than_shipping_is_suspected_fraud() -> None:
    """Billed in Brazil, shipped to Amsterdam: held for a look."""
    billing = dataclasses.replace(AMSTERDAM, city="São Paulo", country_code="BR")

    result = evaluate(clean_order(billing_address=billing), (SuspectedFraud(),), CTX)

    assert result.details[HoldReason.SUSPECTED_FRAUD] == "billing country BR, shipping to NL"


def test_a_stock_shortage_from_routing_holds_the_order() -> None:
    """Routing found no location with the teapots: held with stock_shortage."""
    result = evaluate(clean_order(), (StockShortage(),), AuditContext(NOW, stock_short=True))

    assert result.reasons == (HoldReason.STOCK_SHORTAGE,)


def test_a_held_order_is_released_once_its_only_cause_clears() -> None:
    """The teapots arrive: the shortage clears and the order goes back to pending."""
    order = clean_order()
    rules = (StockShortage(),)
    apply(order, evaluate(order, rules, AuditContext(NOW, stock_short=True)), at=NOW)
    assert order.status is OrderStatus.ON_HOLD

    again = evaluate(order, rules, AuditContext(NOW, stock_short=False))
    changed = apply(order, again, at=NOW + timedelta(hours=1))

    assert again.action is HoldAction.RELEASE
    assert again.remove == frozenset({HoldReason.STOCK_SHORTAGE})
    assert changed
    assert (order.status, order.hold_reasons) == (OrderStatus.PENDING, ())


def test_a_hold_stays_while_another_cause_remains() -> None:
    """Address fixed but the shortage persists: only incomplete_address is removed."""
    order = clean_order(shipping_address=dataclasses.replace(AMSTERDAM, city=None))
    rules = (IncompleteAddress(), StockShortage())
    short = AuditContext(NOW, stock_short=True)
    apply(order, evaluate(order, rules, short), at=NOW)
    order.shipping_address = AMSTERDAM  # the buyer corrected the city

    again = evaluate(order, rules, short)

    assert again.action is HoldAction.UPDATE
    assert again.remove == frozenset({HoldReason.INCOMPLETE_ADDRESS})
    assert again.add == frozenset()
    assert again.reasons == (HoldReason.STOCK_SHORTAGE,)


def test_a_manual_hold_is_never_released_by_the_audit() -> None:
    """An operator's manual hold stays even when every audit rule passes."""
    order = clean_order()
    order.transition_to(
        OrderStatus.ON_HOLD, cause="api:hold", at=NOW, hold_reasons=(HoldReason.MANUAL,)
    )

    result = evaluate(order, default_rules(), CTX)

    assert result.action is HoldAction.NONE
    assert result.reasons == (HoldReason.MANUAL,)


def test_shipped_orders_are_past_auditing() -> None:
    """An order the channel already shipped is not put on hold for its note."""
    order = make_order(status=OrderStatus.SHIPPED)

    result = evaluate(order, (BuyerNotePresent(),), CTX)

    assert result.action is HoldAction.NONE


# ---- the burst rule in the order flow (fake unit of work, in-memory fingerprints) ------


class MemoryFingerprints(BuyerFingerprints):
    """The SQL store's semantics in memory: rows (order, kind, value, placed) never removed,
    counts over [placed - window, placed] for fingerprints new to the order."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], datetime] = {}
        self.counts_asked = 0

    async def record(
        self,
        order_id: str,
        placed_at: datetime,
        fingerprint: BuyerFingerprint,
        window: timedelta | None,
    ) -> BuyerActivity:
        mine = {"address": fingerprint.address, "phone": fingerprint.phone}
        new = {k: v for k, v in mine.items() if v is not None and (order_id, k, v) not in self.rows}
        for kind, value in new.items():
            self.rows[(order_id, kind, value)] = placed_at
        if window is None or not new:
            return BuyerActivity()
        self.counts_asked += 1

        def others(kind: str) -> int | None:
            if kind not in new:
                return None
            return sum(
                1
                for (o, k, v), at in self.rows.items()
                if o != order_id and (k, v) == (kind, new[kind])
                if placed_at - window <= at <= placed_at
            )

        return BuyerActivity(others("address"), others("phone"))


class Shop:
    """A fake database, a burst limit of two orders per address, and the store it counts."""

    def __init__(self, rules: tuple[SuspectedFraud, ...] | None = None) -> None:
        self.db = FakeDatabase()
        self.holds = HoldPolicy(rules or (SuspectedFraud(max_orders_per_address=2),))
        self.fingerprints = MemoryFingerprints()
        self.seq = 0

    def uow(self) -> FakeUnitOfWork:
        uow = FakeUnitOfWork(self.db)
        uow.holds, uow.fingerprints = self.holds, self.fingerprints
        return uow

    async def push(self, external_id: str, hours_ago: float = 0, **snapshot: object) -> Order:
        """The channel sends the order as it is now (create, then updates)."""
        self.seq += 1
        uow = self.uow()
        snap = make_snapshot(
            external_id=external_id,
            note=None,
            placed_at=PLACED_AT - timedelta(hours=hours_ago),
            channel_updated_at=PLACED_AT + timedelta(seconds=self.seq),
            **snapshot,
        )
        return self.db.orders[await push_snapshot(uow, snap, f"msg-{self.seq}", NOW)]


async def test_a_third_order_to_one_address_within_a_day_is_held() -> None:
    """Orders 30 h ago, 3 h ago and now to one address, a limit of two: only two in the
    window, so nothing is held; a fourth now makes three and is held."""
    shop = Shop()

    old = await shop.push("1001", hours_ago=30)
    recent = await shop.push("1002", hours_ago=3)
    second = await shop.push("1003")
    third = await shop.push("1004")

    assert [o.status for o in (old, recent, second)] == [OrderStatus.PENDING] * 3
    assert third.status is OrderStatus.ON_HOLD
    assert third.hold_reasons == (HoldReason.SUSPECTED_FRAUD,)
    held = [h for o, h in shop.db.history if o == third.id][-1]
    assert "3 orders to one address within 24 h (limit 2)" in held.cause


async def test_a_released_burst_hold_is_not_undone_by_the_next_channel_update() -> None:
    """An operator releases the held order; the channel then reports it paid: still
    released, and the unchanged address is not counted again."""
    shop = Shop()
    await shop.push("2001")
    await shop.push("2002")
    held = await shop.push("2003")
    uow = shop.uow()
    await change_order_status(commands.ChangeOrderStatus(held.id, None, NOW, principal="ops"), uow)
    await uow.commit()
    counted = shop.fingerprints.counts_asked

    paid = await shop.push("2003", status=OrderStatus.PAID, payment_status=PaymentStatus.PAID)

    assert held.status is OrderStatus.ON_HOLD
    assert paid.status is OrderStatus.PAID
    assert paid.hold_reasons == ()
    assert shop.fingerprints.counts_asked == counted


async def test_a_released_billing_abroad_hold_returns_only_when_an_address_changes() -> None:
    """Billed in Brazil: held; released by a person; paid: stays released; the billing
    address then moves to Argentina: a new fact, held again."""
    shop = Shop((SuspectedFraud(max_orders_per_address=None, max_orders_per_phone=None),))
    brazil = dataclasses.replace(AMSTERDAM, city="São Paulo", country_code="BR")
    held = await shop.push("5001", billing_address=brazil)
    uow = shop.uow()
    await change_order_status(commands.ChangeOrderStatus(held.id, None, NOW, "ops"), uow)
    await uow.commit()

    paid = await shop.push(
        "5001", billing_address=brazil, status=OrderStatus.PAID, payment_status=PaymentStatus.PAID
    )
    moved = await shop.push(
        "5001",
        billing_address=dataclasses.replace(brazil, country_code="AR"),
        status=OrderStatus.PAID,
        payment_status=PaymentStatus.PAID,
    )

    assert held.status is OrderStatus.ON_HOLD
    assert paid.status is OrderStatus.PAID
    assert moved.status is OrderStatus.ON_HOLD
    assert moved.hold_reasons == (HoldReason.SUSPECTED_FRAUD,)


async def test_moving_a_released_order_to_a_busy_address_holds_it_again() -> None:
    """A new address is a new fact: the order moved to a door with two orders today."""
    shop = Shop()
    busy = dataclasses.replace(AMSTERDAM, line1="Prinsengracht 7")
    await shop.push("3001", shipping_address=busy)
    await shop.push("3002", shipping_address=busy)
    own = await shop.push("3003")

    moved = await shop.push("3003", shipping_address=busy)

    assert own.status is OrderStatus.PENDING
    assert moved.status is OrderStatus.ON_HOLD
    assert moved.hold_reasons == (HoldReason.SUSPECTED_FRAUD,)


async def test_without_a_burst_limit_the_order_flow_records_and_counts_nothing() -> None:
    """Country mismatch only: no fingerprint is stored, no count is asked."""
    shop = Shop((SuspectedFraud(max_orders_per_address=None, max_orders_per_phone=None),))

    for n in range(4):
        await shop.push(f"400{n}")

    assert shop.fingerprints.rows == {}
    assert shop.fingerprints.counts_asked == 0


# ---- wiring and settings ------------------------------------------------------------------


def test_fingerprints_are_wired_only_when_a_burst_limit_is_configured() -> None:
    """No holds, holds without fraud, fraud with no limits: no store (no query, no write)."""
    base = {"database_url": "sqlite:///x.db"}

    def digest(holds: object) -> FingerprintDigest | None:
        settings = settings_from_mapping({**base, "holds": holds}, env={})
        return buyer_fingerprints(settings, hold_policy(settings))

    no_limits = {"max_orders_per_address": None, "max_orders_per_phone": None}

    assert digest(None) is None
    assert digest({"buyer_note": True}) is None
    assert digest({"suspected_fraud": no_limits}) is None
    assert digest({"suspected_fraud": {}}) is not None


def test_a_fingerprint_key_is_a_secret_from_the_environment_and_makes_keyed_hashes() -> None:
    """`env:` resolves it; it never shows in a repr; a short key fails at start-up."""
    raw = {"holds": {"suspected_fraud": {"fingerprint_key": "env:FRAUD_KEY"}}}
    key = "k3y-for-the-blue-teapot-shop-0001"
    settings = settings_from_mapping(raw, env={"FRAUD_KEY": key})
    keyed = buyer_fingerprints(settings, hold_policy(settings))
    plain = FingerprintDigest(None)

    assert keyed is not None
    assert keyed.keyed
    assert key not in repr(settings) + repr(keyed)
    assert keyed("phone", "+8613800138000") != plain("phone", "+8613800138000")
    assert len(keyed("phone", "+8613800138000")) == 64
    assert "8613800138000" not in keyed("phone", "+8613800138000")
    with pytest.raises(ConfigError, match=r"holds\.suspected_fraud\.fingerprint_key"):
        settings_from_mapping(raw, env={"FRAUD_KEY": "short"})
