"""Pull cursors in the database (migration 0004), one row per (channel, purpose)."""

from __future__ import annotations

from sqlalchemy import text

from ordersync.adapters.db.database import Database
from ordersync.clock import from_us, to_us, utcnow
from ordersync.service.pull import Cursor, Window

_SAVE = text(
    "INSERT INTO channel_cursors"
    " (channel_id, name, watermark_us, window_start_us, window_end_us, page, updated_us)"
    " VALUES (:channel_id, :name, :watermark_us, :start_us, :end_us, :page, :now_us)"
    " ON CONFLICT (channel_id, name) DO UPDATE SET"
    " watermark_us = EXCLUDED.watermark_us, window_start_us = EXCLUDED.window_start_us,"
    " window_end_us = EXCLUDED.window_end_us, page = EXCLUDED.page,"
    " updated_us = EXCLUDED.updated_us"
)
_LOAD = text(
    "SELECT watermark_us, window_start_us, window_end_us, page FROM channel_cursors"
    " WHERE channel_id = :channel_id AND name = :name"
)


class SqlCursorStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def load(self, channel_id: str, name: str) -> Cursor | None:
        async with self.db.read() as conn:
            row = (await conn.execute(_LOAD, {"channel_id": channel_id, "name": name})).first()
        if row is None:
            return None
        watermark_us, start_us, end_us, page = row
        window = None if start_us is None else Window(from_us(start_us), from_us(end_us))
        return Cursor(from_us(watermark_us), window, int(page))

    async def save(self, channel_id: str, name: str, cursor: Cursor) -> None:
        w = cursor.window
        async with self.db.write() as conn:
            await conn.execute(
                _SAVE,
                {
                    "channel_id": channel_id,
                    "name": name,
                    "watermark_us": to_us(cursor.watermark),
                    "start_us": None if w is None else to_us(w.start),
                    "end_us": None if w is None else to_us(w.end),
                    "page": cursor.page if w is not None else 0,
                    "now_us": to_us(utcnow()),
                },
            )
