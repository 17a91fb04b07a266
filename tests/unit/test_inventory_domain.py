"""Inventory as specifications: stock, reservations and the ledger that explains them."""

from __future__ import annotations

import contextlib
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ordersync.domain.errors import DomainError, InvalidTransition
from ordersync.domain.inventory import (
    Inventory,
    Location,
    LocationKind,
    MovementCause,
    ReservationState,
    StockConflict,
    StockEventType,
    UnknownLocation,
    replay,
)

AT = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
LOCATIONS = {
    "berlin-dc": Location("berlin-dc", LocationKind.WAREHOUSE, "eu", priority=1),
    "paris-store": Location("paris-store", LocationKind.STORE, "eu", priority=2),
    "shenzhen-factory": Location("shenzhen-factory", LocationKind.FACTORY, "cn", 3, 500),
}
SKUS = ("BLUE-TEAPOT", "MATCHA-TIN", "JADE-CUP")
_ids = itertools.count()


def new_id() -> str:
    return f"res_{next(_ids)}"


def stocked(**on_hand: int) -> Inventory:
    """An inventory with BLUE-TEAPOT stocked at the given locations (underscores for dashes)."""
    inv = Inventory(LOCATIONS)
    for loc, qty in on_hand.items():
        inv.set_on_hand("BLUE-TEAPOT", loc.replace("_", "-"), qty, at=AT)
    inv.take_changes()
    return inv


def test_reserving_takes_stock_from_the_preferred_location_that_can_serve_it_whole() -> None:
    """Priority decides first, but never at the price of splitting a line."""
    inv = stocked(berlin_dc=2, paris_store=10)

    made = inv.reserve("ord_1", {"BLUE-TEAPOT": 3}, at=AT, expires_at=None, new_id=new_id)

    assert made is not None
    assert [r.location_id for r in made] == ["paris-store"]
    assert inv.levels[("BLUE-TEAPOT", "paris-store")].available == 7
    assert inv.levels[("BLUE-TEAPOT", "berlin-dc")].available == 2


def test_reserving_more_than_available_records_a_shortage_and_reserves_nothing() -> None:
    """An order is served whole or not at all; the shortage says how much there was."""
    inv = stocked(berlin_dc=2)
    inv.set_on_hand("MATCHA-TIN", "berlin-dc", 50, at=AT)
    inv.take_changes()

    made = inv.reserve(
        "ord_2", {"BLUE-TEAPOT": 5, "MATCHA-TIN": 1}, at=AT, expires_at=None, new_id=new_id
    )
    ledger, events = inv.take_changes()

    assert made is None
    assert ledger == []
    assert [(e.type, e.sku, e.available) for e in events] == [
        (StockEventType.STOCK_SHORTAGE, "BLUE-TEAPOT", 2)
    ]
    assert inv.levels[("MATCHA-TIN", "berlin-dc")].reserved == 0


def test_shipping_a_reservation_takes_the_goods_out_of_on_hand_and_reserved() -> None:
    """Commit on shipment: available does not move, the shelf gets emptier."""
    inv = stocked(berlin_dc=10)
    (res,) = inv.reserve("ord_3", {"BLUE-TEAPOT": 4}, at=AT, expires_at=None, new_id=new_id) or []

    inv.commit(res, at=AT)

    level = inv.levels[("BLUE-TEAPOT", "berlin-dc")]
    assert (level.on_hand, level.reserved, level.available) == (6, 0, 6)
    assert res.state is ReservationState.COMMITTED


def test_a_released_reservation_cannot_be_shipped() -> None:
    """The reservation state machine refuses to ship what was given back."""
    inv = stocked(berlin_dc=10)
    (res,) = inv.reserve("ord_4", {"BLUE-TEAPOT": 1}, at=AT, expires_at=None, new_id=new_id) or []
    inv.release(res, MovementCause.CANCELLATION, at=AT)

    with pytest.raises(InvalidTransition):
        inv.commit(res, at=AT)

    assert inv.levels[("BLUE-TEAPOT", "berlin-dc")].reserved == 0


def test_a_count_below_what_is_reserved_is_refused() -> None:
    """A snapshot may not make available negative; the stock stays as it was."""
    inv = stocked(berlin_dc=10)
    inv.reserve("ord_5", {"BLUE-TEAPOT": 8}, at=AT, expires_at=None, new_id=new_id)

    with pytest.raises(StockConflict):
        inv.set_on_hand("BLUE-TEAPOT", "berlin-dc", 5, at=AT)

    assert inv.levels[("BLUE-TEAPOT", "berlin-dc")].on_hand == 10


def test_stock_at_an_unconfigured_location_is_refused() -> None:
    """Locations come from the configuration; a feed cannot invent one."""
    inv = Inventory(LOCATIONS)

    with pytest.raises(UnknownLocation):
        inv.set_on_hand("BLUE-TEAPOT", "atlantis", 5, at=AT)


def test_falling_to_safety_stock_raises_inventory_low_once() -> None:
    """inventory.low fires when available crosses down to the safety stock, not after."""
    inv = Inventory(LOCATIONS)
    inv.set_on_hand("BLUE-TEAPOT", "berlin-dc", 10, at=AT, safety_stock=3)
    inv.take_changes()

    inv.reserve("ord_6", {"BLUE-TEAPOT": 7}, at=AT, expires_at=None, new_id=new_id)
    inv.reserve("ord_7", {"BLUE-TEAPOT": 1}, at=AT, expires_at=None, new_id=new_id)
    _, events = inv.take_changes()

    assert [e.type for e in events].count(StockEventType.INVENTORY_LOW) == 1


def test_an_unpaid_reservation_is_due_only_after_it_expires() -> None:
    """Expiry is a time written on the reservation; paying removes it."""
    inv = stocked(berlin_dc=10)
    expires = AT + timedelta(minutes=30)
    (res,) = (
        inv.reserve("ord_8", {"BLUE-TEAPOT": 1}, at=AT, expires_at=expires, new_id=new_id) or []
    )

    due_before, due_after = res.is_due(AT), res.is_due(expires)
    inv.confirm(res)

    assert (due_before, due_after) == (False, True)
    assert not res.is_due(expires + timedelta(days=1))


class InventoryMachine(RuleBasedStateMachine):
    """Random orders, cancellations, expiries, adjustments, snapshots, returns, shipments."""

    def __init__(self) -> None:
        super().__init__()
        self.inv = Inventory(LOCATIONS)
        self.ledger: list = []  # type: ignore[type-arg]
        self.clock = AT
        self.orders = 0

    def _tick(self) -> datetime:
        self.clock += timedelta(minutes=1)
        return self.clock

    def _collect(self) -> None:
        ledger, _ = self.inv.take_changes()
        self.ledger.extend(ledger)

    @rule(
        sku=st.sampled_from(SKUS),
        loc=st.sampled_from(sorted(LOCATIONS)),
        on_hand=st.integers(0, 30),
    )
    def snapshot(self, sku: str, loc: str, on_hand: int) -> None:
        try:
            self.inv.set_on_hand(sku, loc, on_hand, at=self._tick(), reference="wms")
        except StockConflict:
            level = self.inv.levels[(sku, loc)]
            assert on_hand < level.reserved
        self._collect()

    @rule(
        sku=st.sampled_from(SKUS),
        loc=st.sampled_from(sorted(LOCATIONS)),
        delta=st.integers(-10, 10),
        returned=st.booleans(),
    )
    def adjust(self, sku: str, loc: str, delta: int, returned: bool) -> None:
        cause = MovementCause.RETURN if returned else MovementCause.ADJUSTMENT
        with contextlib.suppress(StockConflict):
            self.inv.adjust(sku, loc, delta, at=self._tick(), cause=cause)
        self._collect()

    @rule(
        lines=st.dictionaries(st.sampled_from(SKUS), st.integers(1, 8), min_size=1, max_size=3),
        expiring=st.booleans(),
    )
    def order(self, lines: dict[str, int], expiring: bool) -> None:
        at = self._tick()
        self.orders += 1
        before = {k: lv.available for k, lv in self.inv.levels.items()}
        made = self.inv.reserve(
            f"ord_{self.orders}",
            lines,
            at=at,
            expires_at=at + timedelta(minutes=5) if expiring else None,
            new_id=new_id,
        )
        if made is None:
            assert any(
                all(lv.available < qty for lv in self.inv.levels_of(sku))
                for sku, qty in lines.items()
            )
            assert before == {k: lv.available for k, lv in self.inv.levels.items()}
        self._collect()

    def _held(self) -> list:  # type: ignore[type-arg]
        return [r for r in self.inv.reservations.values() if r.state is ReservationState.HELD]

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        held = self._held()
        if held:
            res = data.draw(st.sampled_from(held))
            self.inv.release(res, MovementCause.CANCELLATION, at=self._tick())
        self._collect()

    @rule(data=st.data())
    def ship(self, data: st.DataObject) -> None:
        held = self._held()
        if held:
            self.inv.commit(data.draw(st.sampled_from(held)), at=self._tick())
        self._collect()

    @rule(minutes=st.integers(0, 10))
    def expire_due(self, minutes: int) -> None:
        now = self._tick() + timedelta(minutes=minutes)
        for res in [r for r in self._held() if r.is_due(now)]:
            self.inv.release(res, MovementCause.EXPIRY, at=now)
        self._collect()

    @rule(data=st.data())
    def release_twice_is_refused(self, data: st.DataObject) -> None:
        done = [r for r in self.inv.reservations.values() if r.state is not ReservationState.HELD]
        if done:
            res = data.draw(st.sampled_from(done))
            with pytest.raises(DomainError):
                self.inv.release(res, MovementCause.CANCELLATION, at=self._tick())

    @invariant()
    def available_is_on_hand_minus_reserved_and_never_negative(self) -> None:
        for level in self.inv.levels.values():
            assert level.available == level.on_hand - level.reserved
            assert level.available >= 0
            assert level.reserved >= 0

    @invariant()
    def reserved_is_the_sum_of_held_reservations(self) -> None:
        held: dict[tuple[str, str], int] = {}
        for r in self._held():
            held[(r.sku, r.location_id)] = held.get((r.sku, r.location_id), 0) + r.quantity
        for key, level in self.inv.levels.items():
            assert level.reserved == held.get(key, 0)

    @invariant()
    def replaying_the_ledger_reproduces_the_stock(self) -> None:
        rebuilt = replay(self.ledger)
        for key, level in self.inv.levels.items():
            assert rebuilt.get(key, (0, 0)) == (level.on_hand, level.reserved)


InventoryMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_inventory_state_machine = InventoryMachine.TestCase
