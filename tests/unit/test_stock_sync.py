"""StockSync: durable "stock changed" markers become channel pushes; a marker is dropped only
once every channel has a value read after it, and staleness alone triggers a publication."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from fractions import Fraction

from ordersync.domain.inventory import Location, LocationKind, StockLevel
from ordersync.domain.stock_publishing import PromiseKind, PublishingRule, StockPool
from ordersync.service.stock_publisher import PublisherSettings
from ordersync.service.stock_sync import ChannelStock, StockSync

NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
BERLIN = Location("berlin-dc", LocationKind.WAREHOUSE, "eu", 1)
PARIS = Location("paris-store", LocationKind.STORE, "eu", 2)
IMMEDIATE = PublisherSettings(debounce=0.0, max_wait=0.0, rate=1000, burst=100, max_attempts=1)


class FakeStore:
    """The markers and stock rows as the database would hold them."""

    def __init__(self) -> None:
        self.stock: dict[str, list[tuple[StockLevel, datetime | None]]] = {}
        self.markers: dict[str, int] = {}
        self.settled: list[tuple[str, int]] = []

    def change(self, sku: str, location: str, on_hand: int, fed: datetime | None = NOW) -> None:
        rows = [r for r in self.stock.get(sku, []) if r[0].location_id != location]
        self.stock[sku] = [*rows, (StockLevel(sku, location, on_hand), fed)]
        self.markers[sku] = self.markers.get(sku, 0) + 1

    async def levels(self, sku: str) -> list[tuple[StockLevel, datetime | None]]:
        return list(self.stock.get(sku, []))

    async def dirty(self, limit: int = 1000) -> list[tuple[str, int]]:
        return sorted(self.markers.items())[:limit]

    async def settle(self, markers: Sequence[tuple[str, int]]) -> None:
        for sku, seq in markers:
            if self.markers.get(sku) == seq:
                del self.markers[sku]
                self.settled.append((sku, seq))

    async def fed_between(self, after: datetime | None, until: datetime) -> list[str]:
        return sorted(
            sku
            for sku, rows in self.stock.items()
            if any(
                (at is None and after is None)
                or (at is not None and (after is None or at > after) and at <= until)
                for _, at in rows
            )
        )


class Port:
    def __init__(self, failing: bool = False) -> None:
        self.failing = failing
        self.pushes: list[tuple[str, str, int]] = []

    async def push(self, channel_id: str, sku: str, quantity: int) -> None:
        if self.failing:
            raise ConnectionError("the shop is down")
        self.pushes.append((channel_id, sku, quantity))


def channel(
    channel_id: str,
    *,
    locations: tuple[Location, ...] = (BERLIN, PARIS),
    ratio: str = "1",
    skus: tuple[str, ...] = ("BLUE-TEAPOT",),
    stale_after: timedelta | None = None,
) -> ChannelStock:
    rule = PublishingRule(channel_id, ratio=Fraction(ratio))
    pool = StockPool(
        channel_id, locations, (rule,), **({"max_feed_age": stale_after} if stale_after else {})
    )
    return ChannelStock(channel_id, pool, frozenset(skus), IMMEDIATE, stale_after)


def make(*channels: ChannelStock, failing: bool = False) -> tuple[StockSync, FakeStore, Port]:
    store, port = FakeStore(), Port(failing)
    sync = StockSync(store, channels, port, clock=lambda: NOW)
    return sync, store, port


async def test_a_change_is_pushed_to_every_channel_then_its_marker_is_dropped() -> None:
    """Berlin 7 + Paris 3: the shop gets 10, the half-ratio marketplace 5; the marker goes."""
    sync, store, port = make(channel("shop"), channel("market", ratio="1/2"))
    store.change("BLUE-TEAPOT", "berlin-dc", 7)
    store.change("BLUE-TEAPOT", "paris-store", 3)

    await sync.step()
    await sync.poll_once()

    assert sorted(port.pushes) == [("market", "BLUE-TEAPOT", 5), ("shop", "BLUE-TEAPOT", 10)]
    assert store.markers == {}
    assert store.settled == [("BLUE-TEAPOT", 2)]


async def test_a_change_during_the_push_keeps_its_marker_and_is_published_next() -> None:
    """A marker bumped after it was read survives the settle and brings a second push."""
    sync, store, port = make(channel("shop"))
    store.change("BLUE-TEAPOT", "berlin-dc", 7)
    await sync.step()
    store.change("BLUE-TEAPOT", "berlin-dc", 4)  # committed while the push was made

    await sync.step()  # the stale seq does not settle; the new one is notified and pushed
    await sync.poll_once()

    assert port.pushes == [("shop", "BLUE-TEAPOT", 7), ("shop", "BLUE-TEAPOT", 4)]
    assert store.markers == {}


async def test_a_push_that_fails_keeps_the_marker_for_the_next_holder() -> None:
    """The shop is down: nothing is settled, so a restarted publisher still publishes it."""
    sync, store, _ = make(channel("shop"), failing=True)
    store.change("BLUE-TEAPOT", "berlin-dc", 7)

    await sync.step()
    await sync.poll_once()
    restarted = StockSync(store, list(sync.channels.values()), Port(), clock=lambda: NOW)
    await restarted.step()
    await restarted.poll_once()

    assert store.markers == {}
    assert store.settled == [("BLUE-TEAPOT", 1)]


async def test_a_sku_no_channel_lists_is_settled_without_a_push() -> None:
    """Stock of a SKU no channel sells is nobody's business: its marker is simply dropped."""
    sync, store, port = make(channel("shop"))
    store.change("GREEN-CUP", "berlin-dc", 40)

    await sync.step()

    assert port.pushes == []
    assert store.markers == {}


async def test_a_feed_growing_stale_publishes_zero_without_any_change() -> None:
    """Berlin was last counted 20 minutes ago; with `stale_after` 15 min the scan finds it
    and the channel is told 0, although no stock moved."""
    sync, store, port = make(channel("shop", stale_after=timedelta(minutes=15)))
    store.stock["BLUE-TEAPOT"] = [
        (StockLevel("BLUE-TEAPOT", "berlin-dc", 9), NOW - timedelta(minutes=20))
    ]

    notified = await sync.scan_stale()
    await sync.publisher.publish_due()

    assert notified == 1
    assert port.pushes == [("shop", "BLUE-TEAPOT", 0)]


async def test_only_pooled_fresh_locations_count() -> None:
    """A channel pooling Berlin only ignores Paris; a stale Paris counts 0 for the other."""
    sync, store, _ = make(
        channel("berlin-only", locations=(BERLIN,)),
        channel("everywhere", stale_after=timedelta(minutes=15)),
    )
    store.change("BLUE-TEAPOT", "berlin-dc", 6)
    store.change("BLUE-TEAPOT", "paris-store", 5, fed=NOW - timedelta(hours=1))

    ats = await sync.ats("BLUE-TEAPOT")

    assert ats == {"berlin-only": 6, "everywhere": 6}


async def test_channels_of_one_pool_split_it_exclusive_first() -> None:
    """A marketplace promised 30 % exclusively gets 3 of 10; the shared shop sees the 7 left."""
    exclusive = PublishingRule("market", ratio=Fraction(3, 10), kind=PromiseKind.EXCLUSIVE)
    pool = StockPool("eu", (BERLIN, PARIS), (exclusive, PublishingRule("shop")))
    skus = frozenset({"BLUE-TEAPOT"})
    sync, store, _ = make(
        ChannelStock("market", pool, skus, IMMEDIATE, None),
        ChannelStock("shop", pool, skus, IMMEDIATE, None),
    )
    store.change("BLUE-TEAPOT", "berlin-dc", 10)

    ats = await sync.ats("BLUE-TEAPOT")

    assert ats == {"market": 3, "shop": 7}
