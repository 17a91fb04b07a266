"""An in-memory stock repository for handler tests: plug it into a `FakeUnitOfWork`
(`uow.stock = MemoryStockRepository(policy)`). It keeps one `Inventory` across units of
work, so what a handler changed is visible to the next; nothing is rolled back."""

from __future__ import annotations

from collections.abc import Iterable

from ordersync.domain.inventory import (
    Inventory,
    InventoryPolicy,
    Location,
    LocationKind,
    Reservation,
)
from ordersync.service.unit_of_work import StockRepository, StoredResponse

TEAHOUSE_LOCATIONS = {
    "amsterdam-dc": Location("amsterdam-dc", LocationKind.WAREHOUSE, "eu", priority=1),
    "utrecht-store": Location("utrecht-store", LocationKind.STORE, "eu", priority=2),
}


class MemoryStockRepository(StockRepository):
    def __init__(self, policy: InventoryPolicy | None = None) -> None:
        self.policy = policy or InventoryPolicy(TEAHOUSE_LOCATIONS)
        self.inventory = Inventory(self.policy.locations)
        self.feed: dict[tuple[str, str], StoredResponse] = {}

    async def load(self, skus: Iterable[str]) -> Inventory:
        return self.inventory

    async def held_for_order(self, order_id: str) -> list[Reservation]:
        return self.inventory.held_for(order_id)

    async def get_reservation(self, reservation_id: str) -> Reservation | None:
        return self.inventory.reservations.get(reservation_id)

    async def feed_get(self, source: str, message_id: str) -> StoredResponse | None:
        return self.feed.get((source, message_id))

    def feed_put(self, source: str, message_id: str, response: StoredResponse) -> None:
        self.feed[(source, message_id)] = response
