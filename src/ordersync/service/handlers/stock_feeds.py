"""The CSV stock feed handler: every row checked on copies first, then applied at once.

Idempotent by the feed's message id (`Idempotency-Key`), stored with the response in the
transaction of the change, like `SetStock`. A feed with a bad row changes nothing and
stores nothing: the sender may fix it and send it again under the same id.
"""

from __future__ import annotations

import dataclasses

import orjson

from ordersync.domain.errors import DomainError, IdempotencyKeyReused
from ordersync.domain.inventory import Inventory, StockConflict, StockLevel, UnknownLocation
from ordersync.domain.stock_feeds import FeedMode, FeedRow, ImportStockFeed, InvalidFeed, RowError
from ordersync.service.unit_of_work import StoredResponse, UnitOfWork


class StockFeedsDisabled(DomainError):
    code = "inventory_disabled"


def _apply(inv: Inventory, row: FeedRow, mode: FeedMode, cmd: ImportStockFeed) -> StockLevel:
    reference = cmd.message_id or "csv-feed"
    if mode is FeedMode.SNAPSHOT:
        return inv.set_on_hand(
            row.sku,
            row.location_id,
            row.quantity,
            at=cmd.received_at,
            reference=reference,
            safety_stock=row.safety_stock,
        )
    level = inv.adjust(
        row.sku, row.location_id, row.quantity, at=cmd.received_at, reference=reference
    )
    if row.safety_stock is not None:  # the safety stock is always absolute
        inv.set_on_hand(
            row.sku,
            row.location_id,
            level.on_hand,
            at=cmd.received_at,
            safety_stock=row.safety_stock,
        )
    return level


async def import_stock_feed(cmd: ImportStockFeed, uow: UnitOfWork) -> StoredResponse:
    stock = uow.stock
    if stock is None:
        raise StockFeedsDisabled("no locations are configured: inventory is off")
    if cmd.message_id is not None:
        stored = await stock.feed_get(cmd.principal, cmd.message_id)
        if stored is not None:
            if stored.fingerprint != (cmd.fingerprint or ""):
                raise IdempotencyKeyReused("this Idempotency-Key was used with a different feed")
            return dataclasses.replace(stored, replayed=True)
    inv = await stock.load({r.sku for r in cmd.rows})
    # All or none: every row on copies first, so a bad row leaves the real stock alone.
    trial = Inventory(inv.locations, {k: dataclasses.replace(v) for k, v in inv.levels.items()})
    errors: list[RowError] = []
    for row in cmd.rows:
        try:
            _apply(trial, row, cmd.mode, cmd)
        except (StockConflict, UnknownLocation) as e:
            column = "on_hand" if cmd.mode is FeedMode.SNAPSHOT else "delta"
            errors.append(RowError(row.line, column, e.code, str(e)))
    if errors:
        raise InvalidFeed(errors)
    levels: dict[tuple[str, str], StockLevel] = {}
    for row in cmd.rows:
        level = _apply(inv, row, cmd.mode, cmd)
        levels[(level.sku, level.location_id)] = level
        stock.mark_fed(row.sku, row.location_id)
    body = {
        "mode": cmd.mode.value,
        "rows": len(cmd.rows),
        "data": [
            {
                "sku": lv.sku,
                "location_id": lv.location_id,
                "on_hand": lv.on_hand,
                "reserved": lv.reserved,
                "available": lv.available,
                "safety_stock": lv.safety_stock,
            }
            for lv in levels.values()
        ],
    }
    response = StoredResponse(cmd.fingerprint or "", 200, orjson.dumps(body))
    if cmd.message_id is not None:
        stock.feed_put(cmd.principal, cmd.message_id, response)
    return response
